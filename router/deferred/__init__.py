"""The deferred lane: its Redis store and Lua scripts, the loops (batcher, poller, guard, webhooks), waiting and
holding.

Imports `core`, `telemetry` and `providers`; never the web framework.
"""
