"""What the router counts and logs: every Prometheus metric, usage priced and booked by origin, logs.
May import `core` only.
"""
