"""The pure core: settings, errors, deadlines, policies, prices, the lane decision, turnaround, states, keys,
wire views.

Imports nothing else of the router, and no web framework, HTTP client or Redis client.
"""
