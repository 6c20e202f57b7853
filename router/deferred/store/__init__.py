"""The deferred lane's Redis state, split by concern; `router.deferred.accumulator.Accumulator` composes the parts.

`records` (the structs), `context` (what the parts share), `admission` (calls in, queues, replicas), `batches`,
`results` (calls out: results, requeue, escalation), `webhooks` (the delivery schedule), `leases`, `totals`.
"""
