"""Every Redis key name of the router, in one place.

A queue is one (upstream, endpoint, model); its tag `{q}` is a Redis Cluster hash tag, so every key of one
queue (its calls, results and batches) lives in one slot and each atomic step (one Lua script) stays inside it.
A call id starts with its queue's tag, so every key of a call derives from the id alone.

Owners and lifetimes:
- `P:queues` (set of queue tags): added at deferred admission, never pruned (bounded by the models callers
  defer; an unknown model fails at the provider and stays a small, idle queue).
- `P:{q}:queue` (hash: upstream, endpoint, model): written at admission, refreshed with the queue.
- `P:{q}:call:<id>` (hash: meta, body, state, ..., `webhook` URL if any, `webhook_attempts`): created at
  admission; gets the result TTL when the call ends.
- `P:{q}:result:<id>` (hash: status, body, lane, costs): result TTL.
- `P:{q}:pending` / `P:{q}:arrivals` (zsets of queued call ids by deadline / by arrival) and `P:{q}:bytes`:
  the batcher's view of what waits; entries leave on claim or escalation (and are dropped if their call
  hash expired).
- `P:{q}:inflight` (zset of submitted call ids by deadline): the guard's view; entries leave with a result.
- `P:{q}:escalating` (zset of call ids by lease expiry): calls being answered in real time.
- `P:{q}:batches` (zset of batch ids by next action time) and `P:{q}:batch:<bid>` (hash; `cut_at` once the
  guard cut it) +
  `P:{q}:batch:<bid>:calls` (list): a batch's record; both get the result TTL once ingested.
- `P:{q}:turnaround` (list, capped): recent batches' `turnaround.Observation`s (seconds, when, lines, cut).
- `P:{q}:totals:<tenant>:<day>` (hash): per-tenant, per-day cost totals of deferred calls, kept 400 days.
- `P:totals:<tenant>:<day>` (hash): the same for real-time calls (written once a second), kept 400 days.
- `P:{q}:idem:<sha256(tenant, key)>`: Idempotency-Key → call id, idempotency TTL (under the queue's tag: a
  retry is the same request, so the same queue, and admission stays one atomic step).
- `P:{q}:digest:<sha256(tenant, endpoint, body)>` (zset of call ids by arrival): identical calls, so an SDK
  retry whose first attempt lost its connection re-attaches to that call instead of queuing it again; call TTL.
- `P:replica:<id>` (string, 2 s TTL, renewed every half second): a live router process; a held call whose holder's
  replica key is gone is orphaned.
- `P:{q}:webhooks` (zset of call ids by next delivery time): added by STORE_RESULT when the call has a
  `webhook` URL in its hash; the webhook sender removes an entry once delivered, dropped after its last
  attempt, or when the call hash expired.
- `P:{q}:lease:flush`, `P:{q}:lease:batch:<bid>`, `P:{q}:lease:webhook:<id>`: short leases (SET NX PX) so
  one replica works a thing.
- Pub/sub channel `P:done`: ids of calls that just got a result.
"""

from __future__ import annotations

import hashlib

TAG_LEN = 10
TOTALS_TTL_S = 400 * 24 * 3600
TURNAROUND_SAMPLES = 100


def queue_tag(upstream: str, endpoint: str, model: str) -> str:
    """The short, stable tag of one queue."""
    return hashlib.sha256(f"{upstream}|{endpoint}|{model}".encode()).hexdigest()[:TAG_LEN]


def tag_of(call_id: str) -> str:
    """The queue tag embedded in a call id."""
    return call_id[:TAG_LEN]


class Keys:
    """Key names under one prefix (one router deployment, or one test)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queues = f"{prefix}:queues"
        self.done_channel = f"{prefix}:done"

    def q(self, tag: str) -> str:
        """The common start of every key of queue `tag`."""
        return f"{self.prefix}:{{{tag}}}"

    def queue(self, tag: str) -> str:
        return f"{self.q(tag)}:queue"

    def call_prefix(self, tag: str) -> str:
        return f"{self.q(tag)}:call:"

    def call(self, call_id: str) -> str:
        return self.call_prefix(tag_of(call_id)) + call_id

    def result_prefix(self, tag: str) -> str:
        return f"{self.q(tag)}:result:"

    def result(self, call_id: str) -> str:
        return self.result_prefix(tag_of(call_id)) + call_id

    def pending(self, tag: str) -> str:
        return f"{self.q(tag)}:pending"

    def arrivals(self, tag: str) -> str:
        return f"{self.q(tag)}:arrivals"

    def bytes(self, tag: str) -> str:
        return f"{self.q(tag)}:bytes"

    def inflight(self, tag: str) -> str:
        return f"{self.q(tag)}:inflight"

    def escalating(self, tag: str) -> str:
        return f"{self.q(tag)}:escalating"

    def batches(self, tag: str) -> str:
        return f"{self.q(tag)}:batches"

    def batch(self, tag: str, bid: str) -> str:
        return f"{self.q(tag)}:batch:{bid}"

    def batch_calls(self, tag: str, bid: str) -> str:
        return f"{self.q(tag)}:batch:{bid}:calls"

    def turnaround(self, tag: str) -> str:
        return f"{self.q(tag)}:turnaround"

    def totals_prefix(self, tag: str) -> str:
        return f"{self.q(tag)}:totals:"

    def realtime_totals(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:totals:{tenant}:{day}"

    def idempotency(self, tag: str, tenant: str, key: str) -> str:
        digest = hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()[:32]
        return f"{self.q(tag)}:idem:{digest}"

    def digest(self, tag: str, digest: str) -> str:
        return f"{self.q(tag)}:digest:{digest}"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}:replica:{replica_id}"

    def webhooks(self, tag: str) -> str:
        return f"{self.q(tag)}:webhooks"

    def webhook_lease(self, call_id: str) -> str:
        return f"{self.q(tag_of(call_id))}:lease:webhook:{call_id}"

    def flush_lease(self, tag: str) -> str:
        return f"{self.q(tag)}:lease:flush"

    def batch_lease(self, tag: str, bid: str) -> str:
        return f"{self.q(tag)}:lease:batch:{bid}"
