"""The Lua scripts behind the store's atomic steps, each followed by its typed wrapper; each touches the keys of one
queue (or one tenant) only.

Python runs a script only through its wrapper (`Scripts` holds one of each): named keyword arguments in, a typed
result out. The wrapper names the script's KEYS and ARGV in the order its Lua reads them, by the Lua's own local
names, and derives every key from one queue's tag or one tenant; `tests/test_scripts.py` checks the count and the
names against the Lua and that one call's keys share a slot. Keys a script builds from a prefix argument (a call's
hash) carry the same `{q}` hash tag as its declared keys, so every script stays inside one Redis Cluster slot.

The states a script writes or compares, and the outcomes it answers, come from their enums in `router.core.states`
(`${CALL_QUEUED}` in the source is `CallState.QUEUED`), never from copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from string import Template
from typing import Any, ClassVar, NamedTuple

from redis.typing import EncodableT

from router.core.keys import Keys, tag_of
from router.core.states import BatchState, CallState, EnqueueOutcome, StoreOutcome
from router.deferred.store.client import RedisClient
from router.deferred.store.records import text

_enum_values = (
    {f"CALL_{s.name}": s.value for s in CallState}
    | {f"BATCH_{s.name}": s.value for s in BatchState}
    | {f"ENQUEUE_{o.name}": o.value for o in EnqueueOutcome}
    | {f"STORE_{o.name}": str(o.value) for o in StoreOutcome}
)


def _lua(source: str) -> str:
    """A script's source with its states and outcomes filled in from their enums (`${CALL_DONE}`: `CallState.DONE`)."""
    return Template(source).substitute(_enum_values)


class Script:
    """One Lua script, registered on a client, called by name.

    A subclass names the script's KEYS and ARGV in the order its Lua reads them (the one place that order is
    written; `tests/test_scripts.py` checks it against the names the Lua gives them and the highest index it reads)
    and its `__call__` passes every one of them by name to `_run`, after deriving the keys from the ids it is given:
    all keys of one call share a hash tag, so the script runs inside one Redis Cluster slot.
    """

    LUA: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]] = ()
    ARGV: ClassVar[tuple[str, ...]] = ()
    MORE_KEYS: ClassVar[bool] = False
    """The Lua reads further KEYS after the named ones (`#KEYS`), passed as `_run`'s first argument."""
    MORE_ARGV: ClassVar[bool] = False
    """The Lua reads further ARGV after the named ones (`#ARGV`, `unpack(ARGV, n)`), passed as `_run`'s second."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.keys = keys
        self._script = redis.register_script(self.LUA)

    async def _run(
        self, more_keys: Sequence[str] = (), more_args: Sequence[EncodableT] = (), /, **named: EncodableT
    ) -> Any:
        """Run the script with `named` laid out as KEYS and ARGV in the declared order, then the variadic rest."""
        if named.keys() != {*self.KEYS, *self.ARGV}:
            raise TypeError(f"{type(self).__name__} takes {self.KEYS + self.ARGV}, was given {tuple(named)}")
        if (more_keys and not self.MORE_KEYS) or (more_args and not self.MORE_ARGV):
            raise TypeError(f"{type(self).__name__} reads no more KEYS or ARGV than it names")
        keys: list[Any] = [named[name] for name in self.KEYS]
        args: list[Any] = [named[name] for name in self.ARGV]
        return await self._script(keys=[*keys, *more_keys], args=[*args, *more_args])


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _pairs(fields: Mapping[str, str | bytes]) -> list[EncodableT]:
    return [item for pair in fields.items() for item in pair]


# Enqueue a call, or attach the request to a live call it repeats; returns {outcome, call id} and,
# for a new call, whether it created the queue's descriptor (1: the queue was new or had been pruned, see PRUNE).
# Outcomes: `new`; `attached` (an Idempotency-Key matched a live call with the same body, or `attach` names
# an identical call whose caller is gone); `reused` (an Idempotency-Key matched a call with another body:
# nothing is stored); `over_limit` (with `attach_only`, set when the tenant may not add a call: nothing to attach
# to, so nothing is stored).
# Races closed: two requests with one key (a client retry racing its original) never queue two calls, and a
# retry never attaches to a call whose answer was already delivered; the key and the digest index live under
# the queue's tag (a retry is the same request, so the same queue), so each is one step.
ENQUEUE = _lua("""
local idem, call, pending, arrivals, bytes, queue, digests = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6],
  KEYS[7]
local id, meta, body, deadline, received_at, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local idem_ttl, upstream, endpoint, model = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local has_idem, call_prefix, webhook, digest, holder, attach = ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15],
  ARGV[16]
local attach_only = ARGV[17] == '1'
if has_idem == '1' then
  local existing = redis.call('GET', idem)
  if existing and redis.call('EXISTS', call_prefix .. existing) == 1 then
    local known = redis.call('HGET', call_prefix .. existing, 'digest')
    if known and known ~= digest then return {'${ENQUEUE_REUSED}', existing} end
    if holder ~= '' then redis.call('HSET', call_prefix .. existing, 'holder', holder) end
    return {'${ENQUEUE_ATTACHED}', existing}
  end
end
if attach ~= '' then
  local other = call_prefix .. attach
  if redis.call('HGET', other, 'digest') == digest and redis.call('HGET', other, 'delivered') ~= '1' then
    redis.call('HSET', other, 'holder', holder)
    return {'${ENQUEUE_ATTACHED}', attach}
  end
end
if attach_only then return {'${ENQUEUE_OVER_LIMIT}', ''} end
redis.call('HSET', call, 'meta', meta, 'body', body, 'state', '${CALL_QUEUED}', 'batch', '', 'deadline', deadline,
  'received_at', received_at, 'attempts', 0, 'digest', digest, 'holder', holder)
if webhook ~= '' then redis.call('HSET', call, 'webhook', webhook) end
redis.call('EXPIRE', call, ttl)
redis.call('ZADD', pending, deadline, id)
redis.call('ZADD', arrivals, received_at, id)
redis.call('INCRBY', bytes, string.len(body))
local created = redis.call('EXISTS', queue) == 0 and 1 or 0
redis.call('HSET', queue, 'upstream', upstream, 'endpoint', endpoint, 'model', model)
if has_idem == '1' then redis.call('SET', idem, id, 'EX', idem_ttl) end
redis.call('ZADD', digests, received_at, id)
redis.call('EXPIRE', digests, ttl)
return {'${ENQUEUE_NEW}', id, created}
""")


class Enqueued(NamedTuple):
    """What ENQUEUE answers: the outcome, the call enqueued or attached to (empty when none), and for a new call
    whether it created the queue's descriptor."""

    outcome: EnqueueOutcome
    call_id: str
    created: bool


class Enqueue(Script):
    """ENQUEUE, with its keys derived from the queue's tag and the call id (one slot)."""

    LUA = ENQUEUE
    KEYS = ("idem", "call", "pending", "arrivals", "bytes", "queue", "digests")
    ARGV = (
        "id",
        "meta",
        "body",
        "deadline",
        "received_at",
        "ttl",
        "idem_ttl",
        "upstream",
        "endpoint",
        "model",
        "has_idem",
        "call_prefix",
        "webhook",
        "digest",
        "holder",
        "attach",
        "attach_only",
    )

    async def __call__(
        self,
        *,
        tag: str,
        call_id: str,
        tenant: str,
        idempotency_key: str | None,
        digest: str,
        meta: bytes,
        body: bytes,
        deadline: float,
        received_at: float,
        ttl: int,
        idempotency_ttl: int,
        upstream: str,
        endpoint: str,
        model: str,
        webhook: str | None,
        holder: str,
        attach_to: str | None,
        attach_only: bool,
    ) -> Enqueued:
        k = self.keys
        idem = k.idempotency(tag, tenant, idempotency_key) if idempotency_key is not None else k.queue(tag)
        outcome, enqueued, *created = await self._run(
            idem=idem,
            call=k.call(call_id),
            pending=k.pending(tag),
            arrivals=k.arrivals(tag),
            bytes=k.bytes(tag),
            queue=k.queue(tag),
            digests=k.digest(tag, digest),
            id=call_id,
            meta=meta,
            body=body,
            deadline=repr(deadline),
            received_at=repr(received_at),
            ttl=ttl,
            idem_ttl=idempotency_ttl,
            upstream=upstream,
            endpoint=endpoint,
            model=model,
            has_idem=_flag(idempotency_key is not None),
            call_prefix=k.call_prefix(tag),
            webhook=webhook or "",
            digest=digest,
            holder=holder,
            attach=attach_to or "",
            attach_only=_flag(attach_only),
        )
        return Enqueued(EnqueueOutcome(text(outcome)), text(enqueued), bool(created and int(created[0])))


# Enter a queue's tag in the set of queues the loops walk, unless the set is full; returns 1 when the tag is in it.
# One key, so one step on any server or cluster: concurrent admissions of new queues never pass the cap.
ENROL = """
local queues, tag, cap = KEYS[1], ARGV[1], tonumber(ARGV[2])
if redis.call('SISMEMBER', queues, tag) == 1 then return 1 end
if redis.call('SCARD', queues) >= cap then return 0 end
redis.call('SADD', queues, tag)
return 1
"""


class Enrol(Script):
    """ENROL: True when the queue's tag is in the set of queues (it was, or it fit under `cap`)."""

    LUA = ENROL
    KEYS = ("queues",)
    ARGV = ("tag", "cap")

    async def __call__(self, *, tag: str, cap: int) -> bool:
        return bool(await self._run(queues=self.keys.queues, tag=tag, cap=cap))


# Forget an idle queue: when nothing waits, flies, escalates or awaits a webhook in it, drop its descriptor and
# byte count and return 1; the caller then removes the tag from `P:queues` (another slot, so not in this step) and
# looks at the descriptor once more (`Queues.prune`). Calls, results and idempotency keys keep their own TTLs;
# the turnaround samples stay (known models only, so bounded).
# Race closed: an admission racing the prune never leaves a call in a queue the loops cannot find. Only ENQUEUE puts
# work into an idle queue, and it re-creates the descriptor and says so; its caller then adds the tag again after
# storing the call, while the pruner, after removing the tag, adds it back when the descriptor exists again. In any
# order of those four steps, a queue that holds a call ends in the set.
PRUNE = """
local queue, bytes = KEYS[1], KEYS[2]
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
redis.call('DEL', queue, bytes)
return 1
"""


class Prune(Script):
    """PRUNE: True when the queue was idle and its descriptor is dropped."""

    LUA = PRUNE
    KEYS = ("queue", "bytes")
    MORE_KEYS = True  # every key whose existence keeps the queue

    async def __call__(self, *, tag: str) -> bool:
        k = self.keys
        busy = [k.pending(tag), k.arrivals(tag), k.inflight(tag), k.escalating(tag), k.batches(tag), k.webhooks(tag)]
        return bool(await self._run(busy, (), queue=k.queue(tag), bytes=k.bytes(tag)))


# A held connection lets go of its call: clear the holder if it is still this one (a retry may have attached
# since), and mark the call delivered when its answer went out, so later identical calls are new calls.
# Race closed: an old connection ending after its retry attached must not make the call look orphaned.
RELEASE = """
local call, holder, delivered = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', call) == 0 then return 0 end
if redis.call('HGET', call, 'holder') == holder then redis.call('HSET', call, 'holder', '') end
if delivered == '1' then redis.call('HSET', call, 'delivered', '1') end
return 1
"""


class Release(Script):
    """RELEASE: False when the call is gone."""

    LUA = RELEASE
    KEYS = ("call",)
    ARGV = ("holder", "delivered")

    async def __call__(self, *, call_id: str, holder: str, delivered: bool) -> bool:
        return bool(await self._run(call=self.keys.call(call_id), holder=holder, delivered=_flag(delivered)))


# Claim the earliest-deadline queued calls into a `building` batch, one chunk per call (a 50,000-call batch
# is claimed in chunks so no single script blocks Redis for long); returns {bytes used, ids...}. The deadlines
# choose which calls a chunk takes; the chunk's lines keep the order the calls arrived in, so calls sharing a
# prompt prefix stay in order (the first one seen is the first line, the ones marked after it follow).
# Race closed: two replicas flushing one queue at once never put a call into two batches, because moving a
# call from `pending` to a batch list is one step.
CLAIM = _lua("""
local pending, arrivals, bytes, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batches, batch, calls = KEYS[5], KEYS[6], KEYS[7]
local max_n, max_bytes, line_overhead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local bid, owner, now, lease_until, call_prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local first_chunk = ARGV[9] == '1'
local ids = redis.call('ZRANGE', pending, 0, max_n - 1, 'WITHSCORES')
local taken, total, arrived = {}, 0, {}
for i = 1, #ids, 2 do
  local id, deadline = ids[i], ids[i + 1]
  local size = redis.call('HSTRLEN', call_prefix .. id, 'body') + line_overhead
  -- The first call of a batch always fits (a body over the limit still has to go somewhere).
  if (#taken > 0 or not first_chunk) and total + size > max_bytes then break end
  total = total + size
  arrived[id] = tonumber(redis.call('ZSCORE', arrivals, id)) or 0
  redis.call('ZREM', pending, id)
  redis.call('ZREM', arrivals, id)
  redis.call('HSET', call_prefix .. id, 'state', '${CALL_SUBMITTED}', 'batch', bid)
  redis.call('ZADD', inflight, deadline, id)
  taken[#taken + 1] = id
end
if #taken == 0 then return {0} end
table.sort(taken, function(a, b)
  if arrived[a] ~= arrived[b] then return arrived[a] < arrived[b] end
  return a < b
end)
redis.call('DECRBY', bytes, total - #taken * line_overhead)
for i = 1, #taken, 1000 do
  redis.call('RPUSH', calls, unpack(taken, i, math.min(i + 999, #taken)))
end
if first_chunk then
  redis.call('HSET', batch, 'state', '${BATCH_BUILDING}', 'owner', owner, 'created_at', now, 'n', #taken, 'polls', 0)
else
  redis.call('HINCRBY', batch, 'n', #taken)
end
redis.call('ZADD', batches, lease_until, bid)
table.insert(taken, 1, total)
return taken
""")


class Claimed(NamedTuple):
    """What one CLAIM chunk took: the bytes its lines use, and the call ids (none when nothing fit or waited)."""

    used: int
    ids: list[str]


class Claim(Script):
    """CLAIM, one chunk of a batch of queue `tag`."""

    LUA = CLAIM
    KEYS = ("pending", "arrivals", "bytes", "inflight", "batches", "batch", "calls")
    ARGV = ("max_n", "max_bytes", "line_overhead", "bid", "owner", "now", "lease_until", "call_prefix", "first_chunk")

    async def __call__(
        self,
        *,
        tag: str,
        bid: str,
        max_n: int,
        max_bytes: int,
        line_overhead: int,
        owner: str,
        now: float,
        lease_until: float,
        first_chunk: bool,
    ) -> Claimed:
        k = self.keys
        used, *ids = await self._run(
            pending=k.pending(tag),
            arrivals=k.arrivals(tag),
            bytes=k.bytes(tag),
            inflight=k.inflight(tag),
            batches=k.batches(tag),
            batch=k.batch(tag, bid),
            calls=k.batch_calls(tag, bid),
            max_n=max_n,
            max_bytes=max_bytes,
            line_overhead=line_overhead,
            bid=bid,
            owner=owner,
            now=repr(now),
            lease_until=repr(lease_until),
            call_prefix=k.call_prefix(tag),
            first_chunk=_flag(first_chunk),
        )
        return Claimed(int(used), [text(i) for i in ids])


# Record the provider's batch id, but only if the batch is still ours and still building; the id also goes into
# the queue's set of recorded provider batches (pruned to `keep` seconds), which crash recovery reads.
# Races closed: a replica whose lease lapsed (and whose batch another replica recovered) cannot overwrite; a
# provider id is never recorded without entering that set. A builder whose lease lapsed while recovery adopted the
# very batch it created gets 1 (recorded already), so it does not cancel the adopted batch as an orphan.
MARK_SUBMITTED = _lua("""
local batch, batches, recorded = KEYS[1], KEYS[2], KEYS[3]
local bid, owner, provider_id, now, next_poll, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('HGET', batch, 'provider_id') == provider_id then return 1 end
if redis.call('HGET', batch, 'state') ~= '${BATCH_BUILDING}' or redis.call('HGET', batch, 'owner') ~= owner then
  return 0
end
redis.call('HSET', batch, 'state', '${BATCH_SUBMITTED}', 'provider_id', provider_id, 'submitted_at', now)
redis.call('ZADD', batches, next_poll, bid)
redis.call('ZADD', recorded, now, provider_id)
redis.call('ZREMRANGEBYSCORE', recorded, '-inf', tonumber(now) - tonumber(keep))
redis.call('EXPIRE', recorded, keep)
return 1
""")


class MarkSubmitted(Script):
    """MARK_SUBMITTED: True when the provider's id is recorded (now, or before)."""

    LUA = MARK_SUBMITTED
    KEYS = ("batch", "batches", "recorded")
    ARGV = ("bid", "owner", "provider_id", "now", "next_poll", "keep")

    async def __call__(
        self, *, tag: str, bid: str, owner: str, provider_id: str, now: float, next_poll: float, keep_s: int
    ) -> bool:
        k = self.keys
        done = await self._run(
            batch=k.batch(tag, bid),
            batches=k.batches(tag),
            recorded=k.provider_batches(tag),
            bid=bid,
            owner=owner,
            provider_id=provider_id,
            now=repr(now),
            next_poll=repr(next_poll),
            keep=keep_s,
        )
        return bool(done)


# Keep a lease while the work it guards is still running (an upload or a real-time call can outlast it).
# Race closed: without renewal a slow owner loses its batch or escalation to a second replica that then
# does the same work again; the owner check makes a renewal by a replica that already lost it a no-op.
RENEW_BATCH = _lua("""
local batch, batches = KEYS[1], KEYS[2]
local bid, owner, expiry = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', batch, 'state') ~= '${BATCH_BUILDING}' or redis.call('HGET', batch, 'owner') ~= owner then
  return 0
end
redis.call('ZADD', batches, 'XX', expiry, bid)
return 1
""")


class RenewBatch(Script):
    """RENEW_BATCH: True when the `building` batch is still this owner's and its lease now ends at `until`."""

    LUA = RENEW_BATCH
    KEYS = ("batch", "batches")
    ARGV = ("bid", "owner", "expiry")

    async def __call__(self, *, tag: str, bid: str, owner: str, until: float) -> bool:
        k = self.keys
        return bool(
            await self._run(batch=k.batch(tag, bid), batches=k.batches(tag), bid=bid, owner=owner, expiry=repr(until))
        )


RENEW_LEASE = """
local lease, owner, ms = KEYS[1], ARGV[1], ARGV[2]
if redis.call('GET', lease) == owner then return redis.call('PEXPIRE', lease, ms) end
return 0
"""


class RenewLease(Script):
    """RENEW_LEASE: True when the lease at `key` is still `owner`'s and now lasts `ms` more."""

    LUA = RENEW_LEASE
    KEYS = ("lease",)
    ARGV = ("owner", "ms")

    async def __call__(self, *, key: str, owner: str, ms: int) -> bool:
        return bool(await self._run(lease=key, owner=owner, ms=ms))


# Take a lease from a holder whose replica is dead (the caller read its heartbeat lapsed): only if `dead` still
# holds it, so two replicas adopting one lease at once never both get it.
TAKE_LEASE = """
local lease, dead, owner, ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', lease) ~= dead then return 0 end
redis.call('SET', lease, owner, 'PX', ms)
return 1
"""


class TakeLease(Script):
    """TAKE_LEASE: True when the lease at `key` passed from `dead` to `owner` for `ms`."""

    LUA = TAKE_LEASE
    KEYS = ("lease",)
    ARGV = ("dead", "owner", "ms")

    async def __call__(self, *, key: str, dead: str, owner: str, ms: int) -> bool:
        return bool(await self._run(lease=key, dead=dead, owner=owner, ms=ms))


RENEW_ESCALATION = _lua("""
local call, escalating = KEYS[1], KEYS[2]
local id, expiry, owner = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', call, 'state') ~= '${CALL_ESCALATED}' then return 0 end
if owner ~= '' and redis.call('HGET', call, 'escalator') ~= owner then return 0 end
redis.call('ZADD', escalating, 'XX', expiry, id)
return 1
""")


class RenewEscalation(Script):
    """RENEW_ESCALATION: True when the call is still escalated and its lease now ends at `until`."""

    LUA = RENEW_ESCALATION
    KEYS = ("call", "escalating")
    ARGV = ("id", "expiry", "owner")

    async def __call__(self, *, call_id: str, until: float, owner: str = "") -> bool:
        k = self.keys
        done = await self._run(
            call=k.call(call_id), escalating=k.escalating(tag_of(call_id)), id=call_id, expiry=repr(until),
            owner=owner,
        )  # fmt: skip
        return bool(done)


# Take over a `building` batch whose lease lapsed (its builder crashed between claim and record), or whose owner is
# `dead` (the caller read its replica's heartbeat lapsed) while the lease still runs.
TAKE_OVER = _lua("""
local batch, batches = KEYS[1], KEYS[2]
local bid, owner, now, lease_until, dead = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
if redis.call('HGET', batch, 'state') ~= '${BATCH_BUILDING}' then return 0 end
local score = redis.call('ZSCORE', batches, bid)
if not score then return 0 end
if tonumber(score) > now and (dead == '' or redis.call('HGET', batch, 'owner') ~= dead) then return 0 end
redis.call('HSET', batch, 'owner', owner)
redis.call('ZADD', batches, lease_until, bid)
return 1
""")


class TakeOver(Script):
    """TAKE_OVER: True when this owner adopted the lapsed `building` batch."""

    LUA = TAKE_OVER
    KEYS = ("batch", "batches")
    ARGV = ("bid", "owner", "now", "lease_until", "dead")

    async def __call__(self, *, tag: str, bid: str, owner: str, now: float, lease_until: float, dead: str = "") -> bool:
        k = self.keys
        done = await self._run(
            batch=k.batch(tag, bid),
            batches=k.batches(tag),
            bid=bid,
            owner=owner,
            now=repr(now),
            lease_until=repr(lease_until),
            dead=dead,
        )
        return bool(done)


# Store a call's final result exactly once, with its cost added to the tenant's daily totals, and schedule
# its webhook (if it has one) to go out now.
# Returns 1 when stored, 2 when this batch's result was already stored (re-ingest), 0 when the call ended
# another way or moved on (a late batch result), -1 when unknown.
# Race closed: a batch result and a real-time escalation of the same call can both finish; only the first
# to arrive stores and is billed in the totals, the other is counted as waste. Scheduling the webhook in the
# same step means a crash can neither lose the event of a stored result nor send one for a result not stored.
STORE_RESULT = _lua("""
local call, result, inflight, escalating, totals, webhooks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, from_batch, status, body, origin, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local cost, baseline, savings, now, tenant_ttl, route = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local prompt_cache = ARGV[13]
local state = redis.call('HGET', call, 'state')
if not state then return ${STORE_UNKNOWN} end
if state == '${CALL_DONE}' then
  -- 2: this very result was stored before (the batch is being ingested again after a crash), not a late one.
  local same_batch = from_batch ~= '' and redis.call('HGET', call, 'batch') == from_batch
  if same_batch and redis.call('HGET', call, 'lane') == origin then
    return ${STORE_REPEATED}
  end
  return ${STORE_LATE}
end
if from_batch ~= '' then
  if state ~= '${CALL_SUBMITTED}' or redis.call('HGET', call, 'batch') ~= from_batch then return ${STORE_LATE} end
elseif state ~= '${CALL_ESCALATED}' then
  return ${STORE_LATE}
end
redis.call('HSET', result, 'status', status, 'body', body, 'lane', origin, 'cost', cost, 'baseline', baseline,
  'savings', savings, 'route', route, 'prompt_cache', prompt_cache, 'finished_at', now)
redis.call('EXPIRE', result, ttl)
redis.call('HSET', call, 'state', '${CALL_DONE}', 'lane', origin, 'finished_at', now)
redis.call('HDEL', call, 'body')
redis.call('EXPIRE', call, ttl)
redis.call('ZREM', inflight, id)
redis.call('ZREM', escalating, id)
redis.call('HINCRBY', totals, origin .. ':requests', 1)
if cost ~= '' then
  redis.call('HINCRBYFLOAT', totals, origin .. ':cost_usd', cost)
  redis.call('HINCRBYFLOAT', totals, origin .. ':baseline_usd', baseline)
  redis.call('HINCRBYFLOAT', totals, origin .. ':savings_usd', savings)
  if route ~= '' then redis.call('HINCRBYFLOAT', totals, origin .. ':route_usd', route) end
  if prompt_cache ~= '' then redis.call('HINCRBYFLOAT', totals, origin .. ':prompt_cache_usd', prompt_cache) end
end
redis.call('EXPIRE', totals, tenant_ttl)
if redis.call('HEXISTS', call, 'webhook') == 1 then redis.call('ZADD', webhooks, now, id) end
return ${STORE_STORED}
""")


class StoreResult(Script):
    """STORE_RESULT, its answer a `StoreOutcome`; `cost` is (cost, baseline, savings) in USD, None when unpriced."""

    LUA = STORE_RESULT
    KEYS = ("call", "result", "inflight", "escalating", "totals", "webhooks")
    ARGV = (
        "id", "from_batch", "status", "body", "origin", "ttl", "cost", "baseline", "savings", "now", "tenant_ttl",
        "route", "prompt_cache",
    )  # fmt: skip

    async def __call__(
        self,
        *,
        call_id: str,
        tenant: str,
        day: str,
        from_batch: str,
        status: int,
        body: bytes,
        origin: str,
        ttl: int,
        cost: tuple[float, float, float] | None,
        now: float,
        totals_ttl: int,
        route_usd: float = 0.0,
        prompt_cache_usd: float = 0.0,
    ) -> StoreOutcome:
        k = self.keys
        tag = tag_of(call_id)
        actual, baseline, savings = (repr(c) for c in cost) if cost else ("", "", "")
        raw = await self._run(
            call=k.call(call_id),
            result=k.result(call_id),
            inflight=k.inflight(tag),
            escalating=k.escalating(tag),
            totals=f"{k.totals_prefix(tag)}{tenant}:{day}",
            webhooks=k.webhooks(tag),
            id=call_id,
            from_batch=from_batch,
            status=status,
            body=body,
            origin=origin,
            ttl=ttl,
            cost=actual,
            baseline=baseline,
            savings=savings,
            now=repr(now),
            tenant_ttl=totals_ttl,
            route=repr(route_usd) if route_usd else "",
            prompt_cache=repr(prompt_cache_usd) if prompt_cache_usd else "",
        )
        return StoreOutcome(int(raw))


# Put a submitted call back on its queue after its batch gave it no result (expired, cancelled, failed).
REQUEUE = _lua("""
local call, pending, arrivals, bytes, inflight = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, bid = ARGV[1], ARGV[2]
if redis.call('HGET', call, 'state') ~= '${CALL_SUBMITTED}' or redis.call('HGET', call, 'batch') ~= bid then
  return 0
end
local deadline = redis.call('HGET', call, 'deadline')
redis.call('HSET', call, 'state', '${CALL_QUEUED}', 'batch', '')
redis.call('HINCRBY', call, 'attempts', 1)
redis.call('ZREM', inflight, id)
redis.call('ZADD', pending, deadline, id)
redis.call('ZADD', arrivals, redis.call('HGET', call, 'received_at'), id)
redis.call('INCRBY', bytes, redis.call('HSTRLEN', call, 'body'))
return 1
""")


class Requeue(Script):
    """REQUEUE: True when the call was still submitted in batch `bid` and is queued again."""

    LUA = REQUEUE
    KEYS = ("call", "pending", "arrivals", "bytes", "inflight")
    ARGV = ("id", "bid")

    async def __call__(self, *, call_id: str, bid: str) -> bool:
        k = self.keys
        tag = tag_of(call_id)
        done = await self._run(
            call=k.call(call_id),
            pending=k.pending(tag),
            arrivals=k.arrivals(tag),
            bytes=k.bytes(tag),
            inflight=k.inflight(tag),
            id=call_id,
            bid=bid,
        )
        return bool(done)


# Take a call out of the batch lane to answer it in real time; returns its body, or false.
# A queued call leaves its queue; a submitted one stays in its batch (a late result is dropped); an
# escalation whose lease lapsed (its replica crashed), or whose escalator is `dead` (the caller read its replica's
# heartbeat lapsed) while its lease still runs, is taken over.
# Race closed: the guard on two replicas never sends the same call to real time twice while a lease holds.
ESCALATE = _lua("""
local call, pending, arrivals, bytes, inflight, escalating = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, now, lease_until, owner, dead = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', call, 'state')
if state == '${CALL_QUEUED}' then
  redis.call('ZREM', pending, id)
  redis.call('ZREM', arrivals, id)
  redis.call('DECRBY', bytes, redis.call('HSTRLEN', call, 'body'))
elseif state == '${CALL_SUBMITTED}' then
  redis.call('ZREM', inflight, id)
elseif state == '${CALL_ESCALATED}' then
  local score = redis.call('ZSCORE', escalating, id)
  if score and tonumber(score) > now and (dead == '' or redis.call('HGET', call, 'escalator') ~= dead) then
    return false
  end
else
  return false
end
redis.call('HSET', call, 'state', '${CALL_ESCALATED}', 'escalator', owner)
redis.call('ZADD', escalating, lease_until, id)
return redis.call('HGET', call, 'body')
""")


class Escalate(Script):
    """ESCALATE: the call's body, or None when it is not this caller's to answer."""

    LUA = ESCALATE
    KEYS = ("call", "pending", "arrivals", "bytes", "inflight", "escalating")
    ARGV = ("id", "now", "lease_until", "owner", "dead")

    async def __call__(
        self, *, call_id: str, now: float, lease_until: float, owner: str = "", dead: str = ""
    ) -> bytes | None:
        k = self.keys
        tag = tag_of(call_id)
        body = await self._run(
            call=k.call(call_id),
            pending=k.pending(tag),
            arrivals=k.arrivals(tag),
            bytes=k.bytes(tag),
            inflight=k.inflight(tag),
            escalating=k.escalating(tag),
            id=call_id,
            now=repr(now),
            lease_until=repr(lease_until),
            owner=owner,
            dead=dead,
        )
        return body if isinstance(body, bytes) else None


# Cancel a call its caller gave up on (`POST /v1/responses/{id}/cancel`); returns 1 when cancelled now, 0 when it
# had ended already (cancelled, answered or failed), -1 when unknown. A queued call leaves its queue and is never
# sent; a submitted one stays in its batch (the provider runs and bills its line) and its late result is dropped,
# as is an escalation's; its result is the cancellation, booked nowhere.
# Race closed: a cancel racing the batch result or the escalation of the same call: whichever step comes first
# ends the call (STORE_RESULT stores only for a submitted or escalated call of that batch, so never after this).
CANCEL = _lua("""
local call, result, pending, arrivals, bytes, inflight, escalating = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
  KEYS[6], KEYS[7]
local id, status, body, origin, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local state = redis.call('HGET', call, 'state')
if not state then return -1 end
if state == '${CALL_DONE}' then return 0 end
if state == '${CALL_QUEUED}' then
  redis.call('ZREM', pending, id)
  redis.call('ZREM', arrivals, id)
  redis.call('DECRBY', bytes, redis.call('HSTRLEN', call, 'body'))
  redis.call('HDEL', call, 'body')
end
redis.call('ZREM', inflight, id)
redis.call('ZREM', escalating, id)
redis.call('HSET', result, 'status', status, 'body', body, 'lane', origin, 'finished_at', now)
redis.call('EXPIRE', result, ttl)
redis.call('HSET', call, 'state', '${CALL_DONE}', 'lane', origin, 'batch', '', 'finished_at', now)
redis.call('EXPIRE', call, ttl)
return 1
""")


class Cancel(Script):
    """CANCEL: 1 cancelled now, 0 ended before, -1 unknown."""

    LUA = CANCEL
    KEYS = ("call", "result", "pending", "arrivals", "bytes", "inflight", "escalating")
    ARGV = ("id", "status", "body", "origin", "ttl", "now")

    async def __call__(self, *, call_id: str, status: int, body: bytes, origin: str, ttl: int, now: float) -> int:
        k = self.keys
        tag = tag_of(call_id)
        done = await self._run(
            call=k.call(call_id), result=k.result(call_id), pending=k.pending(tag), arrivals=k.arrivals(tag),
            bytes=k.bytes(tag), inflight=k.inflight(tag), escalating=k.escalating(tag), id=call_id, status=status,
            body=body, origin=origin, ttl=ttl, now=repr(now),
        )  # fmt: skip
        return int(done)


# Record that a tenant owns a native file or batch: its hash (expiring with the provider's copy), its place in
# the tenant's list (kept if already there) and when that place ends; entries whose end passed leave the list
# first. The place is created_at (seconds) * 10^6 plus a per-tenant counter, so objects created in the same
# second keep the order they were recorded in (exact in a double up to the year 2255).
# Race closed: a list entry is never added without its end, so every entry is eventually pruned, and a record
# is never half written (a list page never meets a listed id whose hash was not yet set by this step).
NATIVE_RECORD = """
local hash, index, ends, counter = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id, created, expire_at, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local gone = redis.call('ZRANGEBYSCORE', ends, '-inf', now, 'LIMIT', 0, 100)
for _, old in ipairs(gone) do
  redis.call('ZREM', index, old)
  redis.call('ZREM', ends, old)
end
redis.call('HSET', hash, unpack(ARGV, 5))
redis.call('EXPIREAT', hash, expire_at)
if not redis.call('ZSCORE', index, id) then
  local place = created * 1000000 + redis.call('INCR', counter) % 1000000
  redis.call('ZADD', index, string.format('%.0f', place), id)
end
redis.call('ZADD', ends, expire_at, id)
return 1
"""


class NativeRecord(Script):
    """NATIVE_RECORD; `fields` are the hash's fields."""

    LUA = NATIVE_RECORD
    KEYS = ("hash", "index", "ends", "counter")
    ARGV = ("id", "created", "expire_at", "now")
    MORE_ARGV = True  # the hash's fields and values

    async def __call__(
        self,
        *,
        tenant: str,
        kind: str,
        object_id: str,
        created_at: int,
        expire_at: int,
        now: float,
        fields: Mapping[str, str | bytes],
    ) -> None:
        k = self.keys
        await self._run(
            (),
            _pairs(fields),
            hash=k.native_object(tenant, kind, object_id),
            index=k.native_index(tenant, kind),
            ends=k.native_ends(tenant, kind),
            counter=k.native_seq(tenant),
            id=object_id,
            created=created_at,
            expire_at=expire_at,
            now=repr(now),
        )


# Update fields of a native record only while it exists.
# Race closed: a retrieve racing a delete (or the record's expiry) must not recreate the hash without its TTL.
NATIVE_UPDATE = """
local hash = KEYS[1]
if redis.call('EXISTS', hash) == 0 then return 0 end
redis.call('HSET', hash, unpack(ARGV))
return 1
"""


class NativeUpdate(Script):
    """NATIVE_UPDATE: False when the record is gone (nothing written)."""

    LUA = NATIVE_UPDATE
    KEYS = ("hash",)
    MORE_ARGV = True  # the fields and values to set

    async def __call__(self, *, tenant: str, kind: str, object_id: str, fields: Mapping[str, str | bytes]) -> bool:
        return bool(await self._run((), _pairs(fields), hash=self.keys.native_object(tenant, kind, object_id)))


# Book a chunk of a native batch's result lines, each line once: a line joins the batch's booked set and adds
# to the tenant's daily totals in the same step. ARGV after the first three: (custom_id, cost, baseline,
# savings, prompt_cache) per line, costs empty when unpriced (the prompt cache's part too when 0). Returns the
# 1-based positions of the lines booked now.
# Race closed: a replica that crashed mid-booking (or lost its lease) and the one that books the batch again
# never count a line twice, and a batch whose booking finished books nothing more.
NATIVE_BOOK = """
local booked, totals, batch = KEYS[1], KEYS[2], KEYS[3]
local origin, ttl, totals_ttl = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', batch) == 0 or redis.call('HGET', batch, 'booked') == '1' then return {} end
local new = {}
for i = 4, #ARGV, 5 do
  if redis.call('SADD', booked, ARGV[i]) == 1 then
    new[#new + 1] = (i - 4) / 5 + 1
    redis.call('HINCRBY', totals, origin .. ':requests', 1)
    if ARGV[i + 1] ~= '' then
      redis.call('HINCRBYFLOAT', totals, origin .. ':cost_usd', ARGV[i + 1])
      redis.call('HINCRBYFLOAT', totals, origin .. ':baseline_usd', ARGV[i + 2])
      redis.call('HINCRBYFLOAT', totals, origin .. ':savings_usd', ARGV[i + 3])
    end
    if ARGV[i + 4] ~= '' then redis.call('HINCRBYFLOAT', totals, origin .. ':prompt_cache_usd', ARGV[i + 4]) end
  end
end
redis.call('EXPIRE', booked, ttl)
if #new > 0 then redis.call('EXPIRE', totals, totals_ttl) end
return new
"""


class NativeBook(Script):
    """NATIVE_BOOK; `lines` are (custom_id, (cost, baseline, savings) or None when unpriced, the prompt cache's part
    of the savings). Returns the positions (from 0) of the lines booked by this call."""

    LUA = NATIVE_BOOK
    KEYS = ("booked", "totals", "batch")
    ARGV = ("origin", "ttl", "totals_ttl")
    MORE_ARGV = True  # five per line: custom_id, cost, baseline, savings, prompt_cache

    async def __call__(
        self,
        *,
        tenant: str,
        batch_id: str,
        day: str,
        origin: str,
        ttl: int,
        totals_ttl: int,
        lines: Sequence[tuple[str, tuple[float, float, float] | None, float]],
    ) -> list[int]:
        k = self.keys
        more: list[EncodableT] = []
        for custom_id, cost, cached in lines:
            more += [custom_id, *((repr(c) for c in cost) if cost else ("", "", "")), repr(cached) if cached else ""]
        new = await self._run(
            (),
            more,
            booked=k.native_booked(tenant, batch_id),
            totals=k.native_totals(tenant, day),
            batch=k.native_object(tenant, "batch", batch_id),
            origin=origin,
            ttl=ttl,
            totals_ttl=totals_ttl,
        )
        return [int(i) - 1 for i in new]


# Take one real-time call from a tenant's `rpm` allowance: a token bucket of `burst` calls refilled one per
# `interval` ms, kept as GCRA's theoretical arrival time (ms) in one key; returns {1, calls left now} when taken,
# or {0, ms until one is}.
# One key per tenant, so one step on a server or a cluster node: replicas share the allowance and never both take
# its last call.
TAKE_CALL = """
local key, now, interval, burst = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', key) or now)
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if allow_at > now then return {0, math.ceil(allow_at - now)} end
redis.call('SET', key, string.format('%.3f', tat + interval), 'PX', math.ceil(tat + interval - now) + 1)
return {1, math.floor((now - allow_at) / interval)}
"""


class Taken(NamedTuple):
    """A limit's answer: whether the call was taken, and a number (TAKE_CALL: calls left, or ms until one is;
    RESERVE_DEFERRED: calls counted)."""

    taken: bool
    value: int


class TakeCall(Script):
    """TAKE_CALL, the clock passed in (ms)."""

    LUA = TAKE_CALL
    KEYS = ("key",)
    ARGV = ("now", "interval", "burst")

    async def __call__(self, *, tenant: str, now_ms: float, interval_ms: float, burst: int) -> Taken:
        taken, value = await self._run(
            key=self.keys.tenant_rate(tenant), now=repr(now_ms), interval=repr(interval_ms), burst=burst
        )
        return Taken(bool(taken), int(value))


# Count a deferred call against its tenant's `max_deferred`: drop reservations past their expiry, refuse when the
# tenant is at the limit, else add this call; returns {1 or 0, calls counted}. The key expires with its last entry.
# One key per tenant, so one step: concurrent admissions on any replicas never pass the limit together.
RESERVE_DEFERRED = """
local key, id, now, expiry, cap = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local n = redis.call('ZCARD', key)
if n >= cap then return {0, n} end
redis.call('ZADD', key, expiry, id)
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', key, math.ceil(tonumber(last[2])) + 1)
return {1, n + 1}
"""


class ReserveDeferred(Script):
    """RESERVE_DEFERRED."""

    LUA = RESERVE_DEFERRED
    KEYS = ("key",)
    ARGV = ("id", "now", "expiry", "cap")

    async def __call__(self, *, tenant: str, call_id: str, now: float, expires_at: float, cap: int) -> Taken:
        taken, count = await self._run(
            key=self.keys.tenant_deferred(tenant), id=call_id, now=repr(now), expiry=repr(expires_at), cap=cap
        )
        return Taken(bool(taken), int(count))


# Reserve a call's worst-case cost against its tenant's daily budget: drop reservations past their expiry (their
# process died before settling), then refuse when what is spent today (the larger of the settled amounts and the
# `floor` read from the totals) plus what is reserved leaves no room for `amount`, else hold it under `id`; returns
# {1 or 0, spent plus reserved, as text}. Every key carries the tenant's tag `{b:<tenant>}`: one step on a server or
# a cluster node, so concurrent admissions on any replicas never pass the budget together.
RESERVE_BUDGET = """
local ledger, holds, spent_key = KEYS[1], KEYS[2], KEYS[3]
local id, amount, budget, floor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, expiry, ttl = ARGV[5], ARGV[6], tonumber(ARGV[7])
for _, lapsed in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now)) do
  local held = tonumber(redis.call('HGET', ledger, 'r:' .. lapsed) or '0')
  redis.call('HINCRBYFLOAT', ledger, 'reserved', -held)
  redis.call('HDEL', ledger, 'r:' .. lapsed)
  redis.call('ZREM', holds, lapsed)
end
local reserved = math.max(0, tonumber(redis.call('HGET', ledger, 'reserved') or '0'))
local spent = math.max(tonumber(redis.call('GET', spent_key) or '0'), floor)
if spent + reserved >= budget or spent + reserved + amount > budget then
  return {0, tostring(spent + reserved)}
end
if redis.call('HEXISTS', ledger, 'r:' .. id) == 0 then
  redis.call('HSET', ledger, 'r:' .. id, amount)
  redis.call('HINCRBYFLOAT', ledger, 'reserved', amount)
  redis.call('ZADD', holds, expiry, id)
end
local last = redis.call('ZRANGE', holds, -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', ledger, math.ceil(tonumber(last[2])) + 1)
redis.call('EXPIREAT', holds, math.ceil(tonumber(last[2])) + 1)
return {1, tostring(spent + reserved + amount)}
"""


class ReserveBudget(Script):
    """RESERVE_BUDGET: (taken, spent plus reserved in USD)."""

    LUA = RESERVE_BUDGET
    KEYS = ("ledger", "holds", "spent_key")
    ARGV = ("id", "amount", "budget", "floor", "now", "expiry", "ttl")

    async def __call__(
        self,
        *,
        tenant: str,
        day: str,
        call_id: str,
        amount: float,
        budget: float,
        floor: float,
        now: float,
        expires_at: float,
        ttl: int,
    ) -> tuple[bool, float]:
        k = self.keys
        taken, total = await self._run(
            ledger=k.budget(tenant), holds=k.budget_holds(tenant), spent_key=k.budget_spent(tenant, day), id=call_id,
            amount=repr(amount), budget=repr(budget), floor=repr(floor), now=repr(now), expiry=repr(expires_at),
            ttl=ttl,
        )  # fmt: skip
        return bool(taken), float(text(total))


# Settle a reservation with the call's real cost (0 when it failed, was refused or became no new call): drop the
# reservation, if it still stands, and add `cost` to the day's settled spend. A settled id is never held again.
# Same tag as RESERVE_BUDGET: one step.
SETTLE_BUDGET = """
local ledger, holds, spent_key = KEYS[1], KEYS[2], KEYS[3]
local id, cost, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HGET', ledger, 'r:' .. id)
if held then
  redis.call('HINCRBYFLOAT', ledger, 'reserved', -tonumber(held))
  redis.call('HDEL', ledger, 'r:' .. id)
  redis.call('ZREM', holds, id)
end
if cost > 0 then
  redis.call('INCRBYFLOAT', spent_key, cost)
  redis.call('EXPIRE', spent_key, ttl)
end
return held and 1 or 0
"""


class SettleBudget(Script):
    """SETTLE_BUDGET: True when a reservation stood and was settled."""

    LUA = SETTLE_BUDGET
    KEYS = ("ledger", "holds", "spent_key")
    ARGV = ("id", "cost", "ttl")

    async def __call__(self, *, tenant: str, day: str, call_id: str, cost: float, ttl: int) -> bool:
        k = self.keys
        return bool(
            await self._run(
                ledger=k.budget(tenant), holds=k.budget_holds(tenant), spent_key=k.budget_spent(tenant, day),
                id=call_id, cost=repr(cost), ttl=ttl,
            )
        )  # fmt: skip


# Cut a submitted batch: mark it (once) and make it due for the poller, which cancels it at the provider and
# harvests the lines it finished; returns 1 when this call cut it.
# Race closed: two guards cutting one batch do it once, and a cut never puts a batch that was ingested meanwhile
# back on the poll schedule (ZADD XX).
CUT = _lua("""
local batch, batches = KEYS[1], KEYS[2]
local bid, now = ARGV[1], ARGV[2]
if redis.call('HGET', batch, 'state') ~= '${BATCH_SUBMITTED}' or redis.call('HEXISTS', batch, 'cut_at') == 1 then
  return 0
end
redis.call('HSET', batch, 'cut_at', now)
redis.call('ZADD', batches, 'XX', now, bid)
return 1
""")


class Cut(Script):
    """CUT: True when this call cut the batch."""

    LUA = CUT
    KEYS = ("batch", "batches")
    ARGV = ("bid", "now")

    async def __call__(self, *, tag: str, bid: str, now: float) -> bool:
        k = self.keys
        return bool(await self._run(batch=k.batch(tag, bid), batches=k.batches(tag), bid=bid, now=repr(now)))


# The answer cache of one tenant (KEYS: its answers, their order of last use, expiries and byte count; one hash tag).
# `drop` removes one answer from all four and returns its size.
_drop_answer = """
local function drop(d)
  local n = redis.call('HSTRLEN', entries, d)
  redis.call('HDEL', entries, d)
  redis.call('ZREM', used, d)
  redis.call('ZREM', ends, d)
  redis.call('DECRBY', size, n)
  return n
end
-- Mark an answer used: one past the latest use (a logical clock, so uses within one millisecond keep their order).
local function touch(d)
  local last = redis.call('ZREVRANGE', used, 0, 0, 'WITHSCORES')[2]
  redis.call('ZADD', used, (tonumber(last) or 0) + 1, d)
end
"""

# Look an answer up: the stored answer, marked as used now, or nil (none, or past its TTL: then dropped).
# One step: a store evicting the tenant's least recently used answer never evicts one a look-up just marked.
ANSWER_GET = (
    """
local entries, used, ends, size = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local digest, now = ARGV[1], tonumber(ARGV[2])
"""
    + _drop_answer
    + """
local ends_at = redis.call('ZSCORE', ends, digest)
if not ends_at then return false end
if tonumber(ends_at) <= now then
  drop(digest)
  return false
end
touch(digest)
return redis.call('HGET', entries, digest)
"""
)


class AnswerGet(Script):
    """ANSWER_GET: the stored answer's bytes, or None."""

    LUA = ANSWER_GET
    KEYS = ("entries", "used", "ends", "size")
    ARGV = ("digest", "now")

    async def __call__(self, *, tenant: str, digest: str, now_ms: int) -> bytes | None:
        key = self.keys.answers(tenant)
        found = await self._run(
            entries=key, used=f"{key}:used", ends=f"{key}:ends", size=f"{key}:bytes", digest=digest, now=now_ms
        )
        return bytes(found) if found is not None else None


# Store an answer: drop expired answers (up to 100 a call) and the one it replaces, add it, then evict the least
# recently used while the tenant is over `max_entries` or `max_bytes`; returns {1, answers evicted}, or {0, 0} when
# the answer alone is over `max_bytes`. Every key then expires `ttl` after this store.
# One step per tenant: concurrent stores on any replicas never leave the count or the bytes over their bounds, nor
# the byte count out of step with the answers.
ANSWER_PUT = (
    """
local entries, used, ends, size = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local digest, answer, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local max_entries, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[6])
"""
    + _drop_answer
    + """
if #answer > max_bytes then return {0, 0} end
for _, d in ipairs(redis.call('ZRANGEBYSCORE', ends, '-inf', now, 'LIMIT', 0, 100)) do drop(d) end
if redis.call('HEXISTS', entries, digest) == 1 then drop(digest) end
redis.call('HSET', entries, digest, answer)
touch(digest)
redis.call('ZADD', ends, now + ttl, digest)
local total = redis.call('INCRBY', size, #answer)
local count = redis.call('HLEN', entries)
local evicted = 0
while count > max_entries or total > max_bytes do
  local oldest = redis.call('ZRANGE', used, 0, 0)[1]
  if not oldest or oldest == digest then break end
  total = total - drop(oldest)
  count = count - 1
  evicted = evicted + 1
end
for _, key in ipairs({entries, used, ends, size}) do redis.call('PEXPIRE', key, ttl) end
return {1, evicted}
"""
)


class AnswerPut(Script):
    """ANSWER_PUT: (stored, answers evicted)."""

    LUA = ANSWER_PUT
    KEYS = ("entries", "used", "ends", "size")
    ARGV = ("digest", "answer", "now", "ttl", "max_entries", "max_bytes")

    async def __call__(
        self, *, tenant: str, digest: str, answer: bytes, now_ms: int, ttl_ms: int, max_entries: int, max_bytes: int
    ) -> tuple[bool, int]:
        key = self.keys.answers(tenant)
        stored, evicted = await self._run(
            entries=key, used=f"{key}:used", ends=f"{key}:ends", size=f"{key}:bytes", digest=digest, answer=answer,
            now=now_ms, ttl=ttl_ms, max_entries=max_entries, max_bytes=max_bytes,
        )  # fmt: skip
        return bool(stored), int(evicted)


class Scripts:
    """Every script, registered on one client, its keys under one prefix; each attribute is a typed wrapper."""

    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self.enqueue = Enqueue(redis, keys)
        self.enrol = Enrol(redis, keys)
        self.prune = Prune(redis, keys)
        self.release = Release(redis, keys)
        self.claim = Claim(redis, keys)
        self.mark_submitted = MarkSubmitted(redis, keys)
        self.renew_batch = RenewBatch(redis, keys)
        self.renew_lease = RenewLease(redis, keys)
        self.take_lease = TakeLease(redis, keys)
        self.renew_escalation = RenewEscalation(redis, keys)
        self.take_over = TakeOver(redis, keys)
        self.store_result = StoreResult(redis, keys)
        self.requeue = Requeue(redis, keys)
        self.escalate = Escalate(redis, keys)
        self.cancel = Cancel(redis, keys)
        self.native_record = NativeRecord(redis, keys)
        self.native_update = NativeUpdate(redis, keys)
        self.native_book = NativeBook(redis, keys)
        self.take_call = TakeCall(redis, keys)
        self.reserve_deferred = ReserveDeferred(redis, keys)
        self.cut = Cut(redis, keys)
        self.answer_get = AnswerGet(redis, keys)
        self.answer_put = AnswerPut(redis, keys)
        self.reserve_budget = ReserveBudget(redis, keys)
        self.settle_budget = SettleBudget(redis, keys)
