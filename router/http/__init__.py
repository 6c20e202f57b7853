"""The web side: the app wiring, handlers, auth, the services that answer a call, error mapping, the gateway.

Imports every package below it (`passthrough`, `deferred`, `providers`, `telemetry`, `core`); only `app` wires them.
"""
