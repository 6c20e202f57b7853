"""Batches callers run themselves: the native Batch API's records and watcher, callers' own Message Batches.

Imports `deferred` (its Redis store and leases), `providers`, `telemetry` and `core`; never the web framework.
"""
