"""The deferred lane: its entry, the Redis store in parts and its Lua scripts, the loops, waiting, holding.
May import `providers`, `telemetry` and `core`; never a web framework.
"""
