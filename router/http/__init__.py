"""The web side: the app wiring, the handlers, the services that answer a call, error mapping, the gateway.
May import `passthrough`, `deferred`, `providers`, `telemetry` and `core`; only `app` wires them.
"""
