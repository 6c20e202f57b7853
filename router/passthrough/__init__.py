"""Batches callers run themselves: native Batch API records and watcher, callers' own Message Batches.
May import `deferred` (its Redis store and leases), `providers`, `telemetry` and `core`.
"""
