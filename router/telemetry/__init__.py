"""What the router counts and logs: every Prometheus metric, usage priced and booked once, throttled logs.

Imports only `core`.
"""
