"""Every Redis key name of the router, in one place.

A queue is one (upstream, endpoint, model); its tag `{q}` is a Redis Cluster hash tag, so every key of one
queue (its calls, results and batches) lives in one slot and each atomic step (one Lua script) stays inside it.
A call id starts with its queue's tag, so every key of a call derives from the id alone. Anthropic Messages
calls (`/messages`) share the queue of `/chat/completions` (`queue_endpoint`): both become requests of the same
Message Batches.

Owners and lifetimes:
- `P:queues` (set of queue tags): the queues the loops walk. Added at deferred admission (at most
  `limits.max_queues` of them, and only for known models: `catalog.py`); a queue with nothing waiting, in flight,
  escalating or awaiting a webhook is pruned from it (`scripts.PRUNE`), so it holds the queues that have work.
- `P:{q}:queue` (hash: upstream, endpoint, model): written at admission, deleted when the queue is pruned.
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
- `P:{q}:provider_batches` (zset of provider batch ids by the time they were recorded): written with the id by
  MARK_SUBMITTED, which drops entries older than `PROVIDER_BATCHES_KEEP_S` and gives the key that TTL; crash
  recovery reads it (over every queue) to tell batches the router accounts for from orphans.
- `P:{q}:turnaround` (list, capped): recent batches' `turnaround.Observation`s (seconds, when, lines, cut); kept
  30 days after the last batch.
- `P:{q}:totals:<tenant>:<day>` (hash): per-tenant, per-day cost totals of deferred calls, kept 400 days.
- `P:usage:<tenant>:<day>` (set of queue tags): the queues whose totals a tenant's day has, so reading it does not
  depend on `P:queues` (which forgets idle queues); added before each stored result, kept 400 days.
- `P:totals:<tenant>:<day>` (hash): the same for real-time calls (written once a second), kept 400 days.
- `P:{q}:idem:<sha256(tenant, key)>`: Idempotency-Key → call id, idempotency TTL (under the queue's tag: a
  retry is the same request, so the same queue, and admission stays one atomic step).
- `P:{q}:digest:<sha256(tenant, endpoint, body)>` (zset of call ids by arrival): identical calls, so an SDK
  retry whose first attempt lost its connection re-attaches to that call instead of queuing it again; call TTL.
- `P:tenant:<tenant>:rate` (string, the GCRA theoretical arrival time in ms): a tenant's real-time `rpm`
  allowance; expires when the bucket is full again.
- `P:tenant:<tenant>:deferred` (zset of call ids by reservation expiry): a tenant's deferred calls queued or in flight,
  for `max_deferred`; an entry leaves when its result is stored, or lapses at its call's deadline plus the upstream's
  timeout; the key expires with its last entry.
- `P:pcache:<tenant>:<digest>` (string): a prompt prefix the tenant sent within the prompt cache's lifetime
  (`prompt_cache.ttl_s`, refreshed at each sight); `http/prompt_cache.py` marks a prefix seen again.
- `P:{b:<tenant>}:budget` (hash: `reserved`, the sum, and `r:<call id>`, each reservation's USD) and
  `P:{b:<tenant>}:budget:holds` (zset of reserved ids by expiry): worst-case costs of a tenant's calls admitted and
  not yet settled, for `daily_budget_usd` (`scripts.RESERVE_BUDGET`); a reservation leaves when its call settles
  (`SETTLE_BUDGET`) or lapses at its expiry; both keys expire with the last one. `P:{b:<tenant>}:budget:spent:<day>`
  (string, USD): the settled costs of the day, kept two days.
- `P:replica:<id>` (string, 2 s TTL, renewed every half second): a live router process; a held call whose holder's
  replica key is gone is orphaned.
- `P:{q}:webhooks` (zset of call ids by next delivery time): added by STORE_RESULT when the call has a
  `webhook` URL in its hash; the webhook sender removes an entry once delivered, dropped after its last
  attempt, or when the call hash expired.
- `P:{q}:lease:flush`, `P:{q}:lease:batch:<bid>`, `P:{q}:lease:webhook:<id>`: short leases (SET NX PX) so
  one replica works a thing.
- Pub/sub channel `P:done`: ids of calls that just got a result.

Native Batch API (`/v1/files`, `/v1/batches` passed through; `passthrough/native_batches.py`). Every key of one tenant
carries the tag `{n:<tenant>}`, so booking a batch (its lines, the tenant's totals, the batch record) is one step:
- `P:native:tenants` (set): tenants that ever created a native batch; the watcher walks it. Never pruned (bounded
  by the configured tenants).
- `P:{n:<t>}:file:<id>` / `P:{n:<t>}:batch:<id>` (hash: upstream, object JSON, a batch's budget `reservation`
  id, ...): the tenant owns the file or batch. A file expires with the provider's copy (`expires_at`, else
  `NATIVE_FILE_TTL_S`); a batch, its output and error files after `NATIVE_BATCH_TTL_S` (the 24 h window plus the
  30 days its output is kept). Deleting a file deletes its hash only.
- `P:{n:<t>}:files` / `P:{n:<t>}:batches` (zsets of ids by `created_at`, ties in the order recorded, numbered by
  the counter `P:{n:<t>}:seq`, which is never pruned): the tenant's lists, paged by rank, with `...:files:ends` /
  `...:batches:ends` (zsets of the same ids by the time their hash expires): an entry leaves both when that time
  passed (pruned at each new record), so `after=<a deleted id>` still pages on.
- `P:{n:<t>}:watch` (zset of batch ids by next poll time): batches not yet booked; left when booked or gone.
- `P:{n:<t>}:booked:<id>` (set of custom_ids): lines of a batch booked so far; deleted once the whole batch is
  booked (`booked` = 1 in the batch hash), else it expires with the batch.
- `P:{n:<t>}:totals:<day>` (hash): the tenant's native batch costs per UTC day, kept 400 days.
- `P:{n:<t>}:lease:<id>`: one replica polls and books a batch at a time.

Answer cache (`deferred/answers.py`, `core/answers.py`). Every key of one tenant carries the tag `{a:<tenant>}`, so a
look-up or a store with its evictions is one step; the tenant is also in each digest, and no key is shared:
- `P:{a:<t>}:answers` (hash: digest -> a stored answer, msgpack): the tenant's answers.
- `P:{a:<t>}:answers:used` (zset of digests by last use, a logical clock): least recently used first out, past
  `answer_cache.max_entries` or `max_bytes`.
- `P:{a:<t>}:answers:ends` (zset of digests by expiry, ms): an answer past its TTL is never served, and is dropped
  by the look-up that finds it or by the next store.
- `P:{a:<t>}:answers:bytes` (string): the bytes of the tenant's answers.
  All four expire `answer_cache.ttl_s` after the tenant's last store (every answer has expired by then).

- Message Batches callers create through `/v1/messages/batches` (`router/passthrough/message_batches.py`), outside the
  queues: `P:mbatch:<id>` (hash: tenant, upstream, created_at, booked) and `P:mbatches:tenant:<tenant>` (zset of the
  tenant's batch ids by creation), kept `MESSAGE_BATCH_TTL_S` (Anthropic keeps results 29 days), deleted with
  the batch; `P:mbatches:open` (zset of batch ids by next check): batches whose usage is not booked yet, left
  once booked or when their record is gone; `P:mbatch:<id>:lease`: one replica checks a batch at a time.
"""

from __future__ import annotations

import hashlib

TAG_LEN = 10
TOTALS_TTL_S = 400 * 24 * 3600
TURNAROUND_SAMPLES = 100
PROVIDER_BATCHES_KEEP_S = 7 * 24 * 3600
"""How long a recorded provider batch id is remembered: longer than any batch can run (24 h) or wait to be found."""
NATIVE_FILE_TTL_S = 400 * 24 * 3600
"""Ownership of an uploaded file the provider keeps without an `expires_at` (purposes other than `batch`)."""
NATIVE_BATCH_TTL_S = 31 * 24 * 3600
"""Ownership of a native batch and its output files: the 24 h window, then 30 days of output retention."""
MESSAGE_BATCH_TTL_S = 30 * 24 * 3600
REPLICA_TTL_S = 2.0
"""How long a replica counts as alive after its last heartbeat (`P:replica:<id>`): a killed one, seen dead after at
most this long, no longer holds its calls, and an identical request takes them over (`Intake.reattachable`)."""
HEARTBEAT_S = 0.5
"""How often a replica that holds connections says it is alive (`holding.Holds.heartbeat`)."""
RESERVATION_SLACK_S = 60.0
"""A reservation lapses this long after its call's deadline plus the upstream's timeout (a crash kept its release)."""


QUEUE_ENDPOINTS = {"/messages": "/chat/completions"}
"""Endpoints whose calls wait in another endpoint's queue: one provider batch carries both kinds of line."""


def queue_endpoint(endpoint: str) -> str:
    """The endpoint whose queue a call of `endpoint` joins."""
    return QUEUE_ENDPOINTS.get(endpoint, endpoint)


TURNAROUND_TTL_S = 30 * 24 * 3600


def queue_tag(upstream: str, endpoint: str, model: str) -> str:
    """The short, stable tag of one queue (the same for endpoints that share a queue)."""
    return hashlib.sha256(f"{upstream}|{queue_endpoint(endpoint)}|{model}".encode()).hexdigest()[:TAG_LEN]


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

    def provider_batches(self, tag: str) -> str:
        return f"{self.q(tag)}:provider_batches"

    def turnaround(self, tag: str) -> str:
        return f"{self.q(tag)}:turnaround"

    def totals_prefix(self, tag: str) -> str:
        return f"{self.q(tag)}:totals:"

    def usage_index(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:usage:{tenant}:{day}"

    def realtime_totals(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:totals:{tenant}:{day}"

    def idempotency(self, tag: str, tenant: str, key: str) -> str:
        digest = hashlib.sha256(f"{tenant}\n{key}".encode()).hexdigest()[:32]
        return f"{self.q(tag)}:idem:{digest}"

    def digest(self, tag: str, digest: str) -> str:
        return f"{self.q(tag)}:digest:{digest}"

    def tenant_rate(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:rate"

    def tenant_deferred(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:deferred"

    def prompt_prefix(self, tenant: str, digest: str) -> str:
        return f"{self.prefix}:pcache:{tenant}:{digest}"

    def budget(self, tenant: str) -> str:
        return f"{self.prefix}:{{b:{tenant}}}:budget"

    def budget_holds(self, tenant: str) -> str:
        return f"{self.prefix}:{{b:{tenant}}}:budget:holds"

    def budget_spent(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:{{b:{tenant}}}:budget:spent:{day}"

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

    # --- the native Batch API, per tenant ----------------------------------------------------------

    def native_tenants(self) -> str:
        return f"{self.prefix}:native:tenants"

    def n(self, tenant: str) -> str:
        """The common start of every native-batch key of `tenant`."""
        return f"{self.prefix}:{{n:{tenant}}}"

    def native_object(self, tenant: str, kind: str, object_id: str) -> str:
        """`kind` is `file` or `batch`."""
        return f"{self.n(tenant)}:{kind}:{object_id}"

    def native_index(self, tenant: str, kind: str) -> str:
        return f"{self.n(tenant)}:{kind}s"

    def native_ends(self, tenant: str, kind: str) -> str:
        return f"{self.n(tenant)}:{kind}s:ends"

    def native_seq(self, tenant: str) -> str:
        return f"{self.n(tenant)}:seq"

    def native_watch(self, tenant: str) -> str:
        return f"{self.n(tenant)}:watch"

    def native_booked(self, tenant: str, batch_id: str) -> str:
        return f"{self.n(tenant)}:booked:{batch_id}"

    def native_totals(self, tenant: str, day: str) -> str:
        return f"{self.n(tenant)}:totals:{day}"

    def native_lease(self, tenant: str, batch_id: str) -> str:
        return f"{self.n(tenant)}:lease:{batch_id}"

    # --- the answer cache, per tenant ----------------------------------------------------------------

    def answers(self, tenant: str) -> str:
        """The tenant's answer cache (hash); its other keys add `:used`, `:ends` and `:bytes`."""
        return f"{self.prefix}:{{a:{tenant}}}:answers"

    def message_batch(self, batch_id: str) -> str:
        return f"{self.prefix}:mbatch:{batch_id}"

    def message_batch_lease(self, batch_id: str) -> str:
        return f"{self.prefix}:mbatch:{batch_id}:lease"

    def tenant_message_batches(self, tenant: str) -> str:
        return f"{self.prefix}:mbatches:tenant:{tenant}"

    @property
    def open_message_batches(self) -> str:
        return f"{self.prefix}:mbatches:open"
