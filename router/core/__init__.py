"""Pure: settings, errors, deadlines, policies, prices, lanes and the lane decision, turnaround, states, keys.
May import nothing else of the router, nor a web framework, an HTTP client or a Redis client.
"""
