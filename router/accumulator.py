"""Every Redis operation of the deferred lane: admit, claim, record, store results (waiters wait in `waiters.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal, TypeVar

import msgspec

from router import scripts
from router.keys import (
    PROVIDER_BATCHES_KEEP_S,
    TOTALS_TTL_S,
    TURNAROUND_SAMPLES,
    TURNAROUND_TTL_S,
    Keys,
    queue_endpoint,
    queue_tag,
    tag_of,
)
from router.redis_client import RedisClient
from router.states import BatchState, CallState, StoreOutcome
from router.turnaround import Observation

log = logging.getLogger("router.accumulator")

ASYNC_HOLDER = "async"
"""The holder of a call answered `202` (its caller polls or gets a webhook): never re-attached by digest."""
Admission = Literal["new", "attached", "reused", "full", "over_limit"]
"""`full`: the call would open a queue past `max_queues`; `over_limit`: `attach_only` and nothing to attach to.
Neither stored anything."""
LINE_OVERHEAD = 128  # bytes a JSONL line adds around a body: custom_id, method, url
CLAIM_CHUNK = 2000  # calls moved per CLAIM script run: bounds how long one script holds Redis
TotalsKey = tuple[str, str]  # tenant, UTC day
T = TypeVar("T")


class CallMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What the router remembers about a deferred call besides its body."""

    tenant: str
    upstream: str
    endpoint: str
    model: str
    deadline: float
    received_at: float
    stream: bool = False
    include_usage: bool = False
    rule: str | None = None
    webhook: str | None = None


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A deferred call as stored."""

    id: str
    meta: CallMeta
    state: str
    """A `CallState` value."""
    batch: str
    lane: str
    attempts: int


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A finished call's answer and price."""

    status: int
    body: bytes
    lane: str
    cost_usd: float | None
    baseline_usd: float | None
    savings_usd: float | None
    finished_at: float


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """What waits in one queue."""

    tag: str
    upstream: str
    endpoint: str
    model: str
    count: int
    bytes: int
    oldest_arrival: float | None
    earliest_deadline: float | None


class BatchRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One of our batches."""

    tag: str
    id: str
    state: str
    """A `BatchState` value."""
    provider_id: str
    owner: str
    created_at: float
    submitted_at: float
    polls: int
    n: int
    cut_at: float | None = None
    """When the guard cut the batch (it is being cancelled and harvested), if it did."""


_observation_encoder = msgspec.json.Encoder()
_observation_decoder = msgspec.json.Decoder(Observation)
_meta_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(CallMeta)


def new_call_id(tag: str) -> str:
    """An unguessable call id that starts with its queue's tag; valid as an OpenAI and Anthropic custom_id."""
    return f"{tag}_{secrets.token_urlsafe(18)}"


def _s(value: object) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _f(value: object) -> float | None:
    text = _s(value)
    return float(text) if text else None


class Accumulator:
    """The deferred lane's state, all of it in Redis under one key prefix."""

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        *,
        result_ttl_s: float,
        idempotency_ttl_s: float,
        max_queues: int = 1000,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.result_ttl = int(result_ttl_s)
        self.idempotency_ttl = int(idempotency_ttl_s)
        self.max_queues = max_queues
        self._indexed: set[tuple[str, str, str]] = set()  # (tenant, day, tag) entered in the usage index lately
        self._admit = redis.register_script(scripts.ADMIT)
        self._enrol = redis.register_script(scripts.ENROL)
        self._prune = redis.register_script(scripts.PRUNE)
        self._release = redis.register_script(scripts.RELEASE)
        self._claim = redis.register_script(scripts.CLAIM)
        self._mark_submitted = redis.register_script(scripts.MARK_SUBMITTED)
        self._take_over = redis.register_script(scripts.TAKE_OVER)
        self._renew_batch = redis.register_script(scripts.RENEW_BATCH)
        self._renew_escalation = redis.register_script(scripts.RENEW_ESCALATION)
        self._renew_lease = redis.register_script(scripts.RENEW_LEASE)
        self._store = redis.register_script(scripts.STORE_RESULT)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._escalate = redis.register_script(scripts.ESCALATE)
        self._cut = redis.register_script(scripts.CUT)

    # --- admission -----------------------------------------------------------------------------------

    async def admit(
        self,
        meta: CallMeta,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        digest: str = "",
        holder: str = "",
        attach_to: str | None = None,
        call_id: str | None = None,
        attach_only: bool = False,
    ) -> tuple[str, Admission]:
        """Queue a call, or attach to the live call this request repeats; (call id, outcome).

        `digest` identifies identical requests (tenant, endpoint, body); `holder` names the connection that waits
        for the answer (empty for none, `async` for a 202 call); `attach_to` is an identical call whose caller is
        gone (found by `reattachable`), which this request takes over if it still can. `call_id` is the id a new
        call gets (made here if not given); with `attach_only` the request may attach but not queue a new call.
        """
        k = self.keys
        tag = queue_tag(meta.upstream, meta.endpoint, meta.model)
        call_id = call_id or new_call_id(tag)
        ttl = int(max(0.0, meta.deadline - time.time()) + self.result_ttl)
        # The set of queues first: a call is never in a queue the batcher cannot find (and a full set refuses it).
        if not await self._enrol(keys=[k.queues], args=[tag, self.max_queues]):
            return "", "full"
        idem = k.idempotency(tag, meta.tenant, idempotency_key) if idempotency_key is not None else k.queue(tag)
        outcome, admitted, *created = await self._admit(
            keys=[idem, k.call(call_id), k.pending(tag), k.arrivals(tag), k.bytes(tag), k.queue(tag),
                  k.digest(tag, digest)],
            args=[call_id, _meta_encoder.encode(meta), body, repr(meta.deadline), repr(meta.received_at), ttl,
                  self.idempotency_ttl, meta.upstream, queue_endpoint(meta.endpoint), meta.model,
                  "1" if idempotency_key is not None else "0", k.call_prefix(tag), meta.webhook or "", digest,
                  holder, attach_to or "", "1" if attach_only else "0"],
        )  # fmt: skip
        if created and int(created[0]):
            # The queue was pruned (or is new) since the tag was entered above: enter it again (see scripts.PRUNE).
            await self.redis.sadd(k.queues, tag)
        return _s(admitted), _s(outcome)  # type: ignore[return-value]

    async def reattachable(self, tag: str, digest: str, *, retry: bool, limit: int = 10) -> str | None:
        """The live, undelivered held call with this digest whose caller is gone, or None.

        Gone: no connection holds it, or the replica that held it is dead. With `retry` (the client says this is
        a retry of an earlier attempt) the newest such call is taken even if its old connection still looks
        held: the router may not have seen that connection drop yet.
        """
        k = self.keys
        ids = [_s(i) for i in await self.redis.zrevrange(k.digest(tag, digest), 0, limit - 1)]
        if not ids:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(k.call(call_id), ["holder", "delivered", "digest"])
            rows = await pipe.execute()
        candidates = [
            (cid, _s(row[0]))
            for cid, row in zip(ids, rows, strict=True)
            if row[2] is not None and _s(row[1]) != "1" and _s(row[0]) != ASYNC_HOLDER
        ]
        replicas = {holder.partition("/")[0] for _, holder in candidates if holder}
        alive = await self.replicas_alive(replicas)
        for call_id, holder in candidates:
            if not holder or holder.partition("/")[0] not in alive:
                return call_id
        return candidates[0][0] if retry and candidates else None

    async def unhold(self, call_id: str, holder: str, *, delivered: bool) -> None:
        """A connection stops holding a call (see `scripts.RELEASE`)."""
        await self._release(keys=[self.keys.call(call_id)], args=[holder, "1" if delivered else "0"])

    async def heartbeat(self, replica_id: str, ttl_s: float) -> None:
        """Say this replica is alive for `ttl_s` more seconds."""
        await self.redis.set(self.keys.replica(replica_id), "1", px=int(ttl_s * 1000))

    async def retire(self, replica_id: str) -> None:
        """This replica is stopping: the calls it held are orphaned from now on."""
        await self.redis.delete(self.keys.replica(replica_id))

    async def replicas_alive(self, replica_ids: set[str]) -> set[str]:
        """The replicas among `replica_ids` whose heartbeat has not lapsed."""
        ordered = sorted(replica_ids)
        if not ordered:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for replica_id in ordered:
                pipe.exists(self.keys.replica(replica_id))
            found = await pipe.execute()
        return {rid for rid, there in zip(ordered, found, strict=True) if there}

    # --- queues and batches --------------------------------------------------------------------------

    async def queue_tags(self) -> list[str]:
        """The queues that have work (and idle ones not pruned yet)."""
        return sorted(_s(t) for t in await self.redis.smembers(self.keys.queues))

    async def prune(self, tag: str) -> bool:
        """Take an idle queue out of the set the loops walk; True when it was idle (see `scripts.PRUNE`)."""
        k = self.keys
        keys = [k.queue(tag), k.bytes(tag), k.pending(tag), k.arrivals(tag), k.inflight(tag), k.escalating(tag),
                k.batches(tag), k.webhooks(tag)]  # fmt: skip
        if not await self._prune(keys=keys, args=[]):
            return False
        await self.redis.srem(k.queues, tag)
        if await self.redis.exists(k.queue(tag)):  # an admission re-created it meanwhile: keep the queue
            await self.redis.sadd(k.queues, tag)
            return False
        return True

    async def prune_idle(self) -> int:
        """Prune every idle queue; returns how many were pruned."""
        return sum([await self.prune(tag) for tag in await self.queue_tags()])

    async def stats(self, tag: str) -> QueueStats | None:
        """Count, bytes, oldest arrival and earliest deadline of what waits in one queue."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.queue(tag))
            pipe.zcard(k.pending(tag))
            pipe.get(k.bytes(tag))
            pipe.zrange(k.arrivals(tag), 0, 0, withscores=True)
            pipe.zrange(k.pending(tag), 0, 0, withscores=True)
            info, count, size, oldest, earliest = await pipe.execute()
        if not info:
            return None
        return QueueStats(
            tag=tag,
            upstream=_s(info[b"upstream"]),
            endpoint=_s(info[b"endpoint"]),
            model=_s(info[b"model"]),
            count=int(count),
            bytes=int(size or 0),
            oldest_arrival=oldest[0][1] if oldest else None,
            earliest_deadline=earliest[0][1] if earliest else None,
        )

    async def lease(self, key: str, owner: str, seconds: float) -> bool:
        """Take a short exclusive lease (SET NX PX); it lapses by itself if the owner dies."""
        return bool(await self.redis.set(key, owner, nx=True, px=int(seconds * 1000)))

    async def renew(self, key: str, owner: str, seconds: float) -> bool:
        """Extend a lease we still hold."""
        return bool(await self._renew_lease(keys=[key], args=[owner, int(seconds * 1000)]))

    async def release(self, key: str, owner: str) -> None:
        """Give a lease back early, if it is still ours."""
        if _s(await self.redis.get(key)) == owner:
            await self.redis.delete(key)

    async def claim(
        self, tag: str, *, max_requests: int, max_bytes: int, owner: str, lease_s: float
    ) -> tuple[str, list[str]] | None:
        """Move the earliest-deadline queued calls into a new `building` batch; return (batch id, call ids)."""
        k = self.keys
        bid = "b" + secrets.token_hex(12)
        keys = [k.pending(tag), k.arrivals(tag), k.bytes(tag), k.inflight(tag), k.batches(tag), k.batch(tag, bid),
                k.batch_calls(tag, bid)]  # fmt: skip
        taken: list[str] = []
        budget = max_bytes
        while len(taken) < max_requests:
            now = time.time()
            want = min(CLAIM_CHUNK, max_requests - len(taken))
            first = "0" if taken else "1"
            args: list[str | int] = [want, budget, LINE_OVERHEAD, bid, owner, repr(now), repr(now + lease_s),
                                     k.call_prefix(tag), first]  # fmt: skip
            used, *ids = await self._claim(keys=keys, args=args)
            taken += [_s(i) for i in ids]
            budget -= int(used)
            if len(ids) < want:  # the queue ran dry or the byte limit was reached
                break
        return (bid, taken) if taken else None

    async def bodies(self, call_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        """(id, body, the caller's endpoint) of calls that still have a body (a call answered meanwhile has none);
        calls of endpoints that share a queue need telling apart when their batch is built."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hmget(self.keys.call(call_id), ["body", "meta"])
            found = await pipe.execute()
        return [
            (cid, body, _meta_decoder.decode(meta).endpoint)
            for cid, (body, meta) in zip(call_ids, found, strict=True)
            if body is not None and meta is not None
        ]

    async def mark_submitted(self, tag: str, bid: str, owner: str, provider_id: str, next_poll: float) -> bool:
        """Record the provider's id for a batch we still own."""
        k = self.keys
        done = await self._mark_submitted(
            keys=[k.batch(tag, bid), k.batches(tag), k.provider_batches(tag)],
            args=[bid, owner, provider_id, repr(time.time()), repr(next_poll), PROVIDER_BATCHES_KEEP_S],
        )
        return bool(done)

    async def recorded(self, provider_ids: Sequence[str]) -> set[str]:
        """The provider batch ids, among these, that some queue has recorded (crash recovery's orphan test)."""
        if not provider_ids:
            return set()
        tags = await self.queue_tags()
        async with self.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.zmscore(self.keys.provider_batches(tag), list(provider_ids))
            rows = await pipe.execute()
        return {pid for row in rows for pid, score in zip(provider_ids, row, strict=True) if score is not None}

    async def building(self) -> list[tuple[str, BatchRecord, float]]:
        """Every batch still being built, over all queues: (upstream, record, lease expiry)."""
        k = self.keys
        found: list[tuple[str, BatchRecord, float]] = []
        for tag in await self.queue_tags():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(k.queue(tag), "upstream")
                pipe.zrange(k.batches(tag), 0, -1, withscores=True)
                upstream, scored = await pipe.execute()
            if not scored:
                continue
            async with self.redis.pipeline(transaction=False) as pipe:
                for bid, _ in scored:
                    pipe.hmget(k.batch(tag, _s(bid)), ["state", "owner", "created_at", "n"])
                rows = await pipe.execute()
            for (bid, until), row in zip(scored, rows, strict=True):
                if _s(row[0]) != BatchState.BUILDING:
                    continue
                created_at, n = _f(row[2]) or 0.0, int(row[3] or 0)
                record = BatchRecord(tag=tag, id=_s(bid), state=BatchState.BUILDING, provider_id="", owner=_s(row[1]),
                                     created_at=created_at, submitted_at=0.0, polls=0, n=n)  # fmt: skip
                found.append((_s(upstream), record, float(until)))
        return found

    async def lapsed_at(self, tag: str, bid: str) -> float:
        """When recovery first found this submission attempt of a batch lapsed (kept while it looks again)."""
        key = self.keys.batch(tag, bid)
        field = f"lapsed_at:{int(await self.redis.hget(key, 'submit_attempts') or 0)}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, field, repr(time.time()))
            pipe.hget(key, field)
            _, first = await pipe.execute()
        return float(first)

    async def take_over(self, tag: str, bid: str, owner: str, lease_s: float) -> bool:
        """Adopt a `building` batch whose builder's lease lapsed."""
        now = time.time()
        k = self.keys
        done = await self._take_over(
            keys=[k.batch(tag, bid), k.batches(tag)], args=[bid, owner, repr(now), repr(now + lease_s)]
        )
        return bool(done)

    async def renew_batch(self, tag: str, bid: str, owner: str, lease_s: float) -> bool:
        """Extend the lease of a `building` batch we still own."""
        k = self.keys
        until = repr(time.time() + lease_s)
        return bool(await self._renew_batch(keys=[k.batch(tag, bid), k.batches(tag)], args=[bid, owner, until]))

    async def renew_escalation(self, call_id: str, lease_s: float) -> bool:
        """Extend the lease of a call being answered in real time."""
        k = self.keys
        until = repr(time.time() + lease_s)
        return bool(
            await self._renew_escalation(keys=[k.call(call_id), k.escalating(tag_of(call_id))], args=[call_id, until])
        )

    async def forget(self, call_id: str) -> None:
        """Drop the index entries of a call whose hash expired (nothing is left to answer it with)."""
        k = self.keys
        tag = tag_of(call_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for index in (k.pending(tag), k.arrivals(tag), k.inflight(tag), k.escalating(tag)):
                pipe.zrem(index, call_id)
            await pipe.execute()

    async def due_batches(self, tag: str, now: float, limit: int = 100) -> list[BatchRecord]:
        """Batches whose next action (poll, or recovery of a lapsed build) is due."""
        k = self.keys
        bids = [_s(b) for b in await self.redis.zrangebyscore(k.batches(tag), "-inf", now, start=0, num=limit)]
        if not bids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hgetall(k.batch(tag, bid))
            rows = await pipe.execute()
        return [
            BatchRecord(
                tag=tag,
                id=bid,
                state=_s(row.get(b"state")),
                provider_id=_s(row.get(b"provider_id")),
                owner=_s(row.get(b"owner")),
                created_at=_f(row.get(b"created_at")) or 0.0,
                submitted_at=_f(row.get(b"submitted_at")) or 0.0,
                polls=int(row.get(b"polls") or 0),
                n=int(row.get(b"n") or 0),
                cut_at=_f(row.get(b"cut_at")),
            )
            for bid, row in zip(bids, rows, strict=True)
            if row
        ]

    async def reschedule(self, tag: str, bid: str, at: float) -> None:
        """Set a batch's next poll time and count the poll."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(k.batch(tag, bid), "polls", 1)
            pipe.zadd(k.batches(tag), {bid: at}, xx=True)
            await pipe.execute()

    async def count_submit_attempt(self, tag: str, bid: str) -> int:
        """Count one more attempt to submit a batch; returns the count."""
        return int(await self.redis.hincrby(self.keys.batch(tag, bid), "submit_attempts", 1))

    async def batch_calls(self, tag: str, bid: str) -> list[str]:
        """The ids claimed into a batch."""
        return [_s(i) for i in await self.redis.lrange(self.keys.batch_calls(tag, bid), 0, -1)]

    async def finish_batch(
        self,
        tag: str,
        bid: str,
        provider_status: str,
        turnaround: float | None,
        lines: int = 1,
        *,
        censored: bool = False,
    ) -> None:
        """Mark a batch ingested, drop it from the poll schedule and record its turnaround (an `Observation`;
        `censored` for a batch cut before it finished, whose `turnaround` is its age at the cut)."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.batch(tag, bid), mapping={"state": BatchState.INGESTED, "provider_status": provider_status})
            pipe.expire(k.batch(tag, bid), self.result_ttl)
            pipe.expire(k.batch_calls(tag, bid), self.result_ttl)
            pipe.zrem(k.batches(tag), bid)
            if turnaround is not None:
                observation = Observation(seconds=turnaround, at=time.time(), lines=max(1, lines), censored=censored)
                pipe.lpush(k.turnaround(tag), _observation_encoder.encode(observation))
                pipe.ltrim(k.turnaround(tag), 0, TURNAROUND_SAMPLES - 1)
                pipe.expire(k.turnaround(tag), TURNAROUND_TTL_S)
            await pipe.execute()

    async def observations(self, tag: str) -> list[Observation]:
        """The recent batch turnarounds of a queue, newest first."""
        return _observations(await self.redis.lrange(self.keys.turnaround(tag), 0, -1))

    async def outlook(self, tag: str) -> tuple[list[Observation], int, int]:
        """What admission reads of a queue, in one round trip: (observations, calls waiting, batches in flight)."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(k.turnaround(tag), 0, -1)
            pipe.zcard(k.pending(tag))
            pipe.zcard(k.batches(tag))
            raw, waiting, batches = await pipe.execute()
        return _observations(raw), int(waiting), int(batches)

    async def batches_holding(self, tag: str, cutoff: float, limit: int = 500) -> set[str]:
        """The batches that hold a submitted call whose deadline is before `cutoff`."""
        k = self.keys
        ids = [_s(i) for i in await self.redis.zrangebyscore(k.inflight(tag), "-inf", cutoff, start=0, num=limit)]
        if not ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(k.call(call_id), ["state", "batch"])
            rows = await pipe.execute()
        return {_s(row[1]) for row in rows if _s(row[0]) == CallState.SUBMITTED and row[1]}

    async def cut(self, tag: str, bid: str) -> bool:
        """Mark a running batch cut and make it due for the poller now (which cancels and harvests it)."""
        k = self.keys
        return bool(await self._cut(keys=[k.batch(tag, bid), k.batches(tag)], args=[bid, repr(time.time())]))

    async def turnarounds(self) -> dict[str, list[Observation]]:
        """Every queue's turnaround observations, by queue name (`upstream/model/endpoint`)."""
        out: dict[str, list[Observation]] = {}
        for tag in await self.queue_tags():
            info = await self.redis.hgetall(self.keys.queue(tag))
            if info:
                name = f"{_s(info[b'upstream'])}/{_s(info[b'model'])}{_s(info[b'endpoint'])}"
                out[name] = await self.observations(tag)
        return out

    async def counts(self) -> tuple[dict[str, int], int]:
        """Queued calls per queue (`upstream/model/endpoint`) and batches in flight, over all queues."""
        depth: dict[str, int] = {}
        inflight = 0
        for tag in await self.queue_tags():
            k = self.keys
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(k.queue(tag))
                pipe.zcard(k.pending(tag))
                pipe.zcard(k.batches(tag))
                info, count, batches = await pipe.execute()
            if info:
                depth[f"{_s(info[b'upstream'])}/{_s(info[b'model'])}{_s(info[b'endpoint'])}"] = int(count)
            inflight += int(batches)
        return depth, inflight

    # --- calls and results ---------------------------------------------------------------------------

    async def get_call(self, call_id: str) -> CallRecord | None:
        """A call as stored, or None (unknown, malformed or expired id)."""
        return (await self.get_calls([call_id]))[0]

    async def get_calls(self, call_ids: Sequence[str]) -> list[CallRecord | None]:
        """Several calls in one round trip (a batch's results are read hundreds at a time)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hmget(self.keys.call(call_id), ["meta", "state", "batch", "lane", "attempts"])
            rows = await pipe.execute()
        return [
            self._record(cid, row) if len(cid) > len(tag_of(cid)) else None
            for cid, row in zip(call_ids, rows, strict=True)
        ]

    def _record(self, call_id: str, row: list[bytes | None]) -> CallRecord | None:
        if row[0] is None:
            return None
        return CallRecord(
            id=call_id,
            meta=_meta_decoder.decode(row[0]),
            state=_s(row[1]),
            batch=_s(row[2]),
            lane=_s(row[3]),
            attempts=int(row[4] or 0),
        )

    async def results_stored(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls have a result stored (one pipelined existence check each)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.exists(self.keys.result(call_id))
            found = await pipe.execute()
        return {cid for cid, there in zip(call_ids, found, strict=True) if there}

    async def get_result(self, call_id: str) -> Result | None:
        """A finished call's result, if stored and not expired."""
        row: dict[bytes, bytes] = await self.redis.hgetall(self.keys.result(call_id))  # type: ignore[assignment]
        if not row:
            return None
        return Result(
            status=int(row[b"status"]),
            body=row[b"body"],
            lane=_s(row[b"lane"]),
            cost_usd=_f(row.get(b"cost")),
            baseline_usd=_f(row.get(b"baseline")),
            savings_usd=_f(row.get(b"savings")),
            finished_at=float(row[b"finished_at"]),
        )

    async def store_result(
        self,
        call_id: str,
        meta: CallMeta,
        *,
        from_batch: str,
        status: int,
        body: bytes,
        lane: str,
        cost: tuple[float, float, float] | None,
    ) -> StoreOutcome:
        """Store a final result once, or say why not (`StoreOutcome`); wakes waiters when stored."""
        k = self.keys
        tag = tag_of(call_id)
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        await self._index_usage(meta.tenant, day, tag)
        actual, baseline, savings = (repr(c) for c in cost) if cost else ("", "", "")
        raw = await self._store(
            keys=[k.call(call_id), k.result(call_id), k.inflight(tag), k.escalating(tag),
                  f"{k.totals_prefix(tag)}{meta.tenant}:{day}", k.webhooks(tag)],
            args=[call_id, from_batch, status, body, lane, self.result_ttl, actual, baseline, savings, repr(now),
                  TOTALS_TTL_S],
        )  # fmt: skip
        stored = StoreOutcome(int(raw))
        if stored == StoreOutcome.STORED:
            # Side by side, not pipelined: a cluster pipeline refuses PUBLISH.
            await asyncio.gather(
                self.redis.publish(k.done_channel, call_id),
                self.redis.zrem(k.tenant_deferred(meta.tenant), call_id),  # no longer counts for `max_deferred`
            )
        return stored

    async def requeue(self, call_id: str, bid: str) -> bool:
        """Put a call its batch did not answer back on its queue."""
        k = self.keys
        tag = tag_of(call_id)
        done = await self._requeue(
            keys=[k.call(call_id), k.pending(tag), k.arrivals(tag), k.bytes(tag), k.inflight(tag)], args=[call_id, bid]
        )
        return bool(done)

    async def expedite(self, call_id: str) -> None:
        """Make a submitted call due for escalation at the guard's next pass."""
        await self.redis.zadd(self.keys.inflight(tag_of(call_id)), {call_id: 0}, xx=True)

    async def escalation_due(self, tag: str, cutoff: float, now: float, limit: int = 500) -> list[str]:
        """Calls whose deadline is before `cutoff` (queued or submitted), and escalations whose lease lapsed."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(k.pending(tag), "-inf", cutoff, start=0, num=limit)
            pipe.zrangebyscore(k.inflight(tag), "-inf", cutoff, start=0, num=limit)
            pipe.zrangebyscore(k.escalating(tag), "-inf", now, start=0, num=limit)
            rows = await pipe.execute()
        return [_s(i) for row in rows for i in row]

    async def escalate(self, call_id: str, lease_s: float) -> bytes | None:
        """Take a call out of the batch lane for real-time handling; its body, or None if someone else has it."""
        k = self.keys
        tag = tag_of(call_id)
        now = time.time()
        body = await self._escalate(
            keys=[k.call(call_id), k.pending(tag), k.arrivals(tag), k.bytes(tag), k.inflight(tag), k.escalating(tag)],
            args=[call_id, repr(now), repr(now + lease_s)],
        )
        return body if isinstance(body, bytes) else None

    # --- webhooks ------------------------------------------------------------------------------------

    async def webhooks_due(self, tag: str, now: float, limit: int = 100) -> list[str]:
        """Calls of one queue whose webhook delivery is due."""
        due = await self.redis.zrangebyscore(self.keys.webhooks(tag), "-inf", now, start=0, num=limit)
        return [_s(i) for i in due]

    async def webhook_due_at(self, call_id: str) -> float | None:
        """When a call's webhook is next due, or None when it is not scheduled."""
        score = await self.redis.zscore(self.keys.webhooks(tag_of(call_id)), call_id)
        return float(score) if score is not None else None

    async def count_webhook_attempt(self, call_id: str) -> int:
        """Count one more delivery attempt of a call's webhook; returns the count."""
        return int(await self.redis.hincrby(self.keys.call(call_id), "webhook_attempts", 1))

    async def reschedule_webhook(self, call_id: str, at: float) -> None:
        """Make a call's webhook due again at `at` (XX: an entry already removed stays removed)."""
        await self.redis.zadd(self.keys.webhooks(tag_of(call_id)), {call_id: at}, xx=True)

    async def end_webhook(self, call_id: str) -> None:
        """Take a call's webhook off the schedule (delivered, given up, or its call expired)."""
        await self.redis.zrem(self.keys.webhooks(tag_of(call_id)), call_id)

    async def add_totals(self, pending: Mapping[TotalsKey, Mapping[str, float]]) -> None:
        """Add real-time calls, summed in memory, to their tenants' daily totals (one pipeline for them all)."""
        # Not a transaction: tenants' keys live in different cluster slots. Not per queue either: any model
        # name a caller sends would otherwise become a queue for the loops to walk.
        async with self.redis.pipeline(transaction=False) as pipe:
            for (tenant, day), fields in pending.items():
                key = self.keys.realtime_totals(tenant, day)
                for name, value in fields.items():
                    if name.endswith(":requests"):
                        pipe.hincrby(key, name, int(value))
                    else:
                        pipe.hincrbyfloat(key, name, value)
                pipe.expire(key, TOTALS_TTL_S)
            await pipe.execute()

    async def _index_usage(self, tenant: str, day: str, tag: str) -> None:
        """Enter a queue in a tenant's usage index for `day`, before its totals there are written, so a crash
        in between cannot hide them; once per process and (tenant, day, queue)."""
        if (tenant, day, tag) in self._indexed:
            return
        key = self.keys.usage_index(tenant, day)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, tag)
            pipe.expire(key, TOTALS_TTL_S)
            await pipe.execute()
        if len(self._indexed) >= 100_000:
            self._indexed.clear()
        self._indexed.add((tenant, day, tag))

    async def totals(self, tenant: str, day: str) -> dict[str, float]:
        """A tenant's cost totals for one UTC day (`YYYY-MM-DD`): real-time calls plus every queue's it used."""
        k = self.keys
        tags = {_s(t) for t in await self.redis.smembers(k.usage_index(tenant, day))}
        keys = [k.realtime_totals(tenant, day)] + [f"{k.totals_prefix(tag)}{tenant}:{day}" for tag in sorted(tags)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = await pipe.execute()
        out: dict[str, float] = {}
        for row in rows:
            for field, value in row.items():
                out[_s(field)] = out.get(_s(field), 0.0) + float(value)
        return out


def _observations(raw: Sequence[bytes | str]) -> list[Observation]:
    """Decode stored observations; a bare number (as older routers wrote) counts as seen now, with one line."""
    out = []
    for item in raw:
        try:
            out.append(_observation_decoder.decode(item))
        except msgspec.ValidationError:
            out.append(Observation(seconds=float(item), at=time.time(), lines=1))
    return out


class LeaseLost(Exception):
    """The lease guarding some work lapsed or was taken over: the work was stopped so it is not done twice."""


async def while_leased(work: Awaitable[T], renew: Callable[[], Awaitable[bool]], lease_s: float) -> T:
    """Await `work`, renewing its lease every third of `lease_s`; stop it cleanly when the lease is lost.

    A renewal that fails because Redis is briefly away is retried; only when the lease is known to be someone
    else's (the renewal says so) or has surely lapsed (no renewal for a whole lease) is `work` cancelled and
    `LeaseLost` raised. A renewal error never replaces the result of work that succeeded.
    """
    task = asyncio.ensure_future(work)
    renewed_at = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lease_s / 3)
            if done:
                return task.result()
            try:
                held = await renew()
            except Exception as exc:  # Redis away: keep working while the lease may still hold
                log.warning("renewing a lease failed, will retry: %s", exc)
                held = time.monotonic() - renewed_at < lease_s
            else:
                renewed_at = time.monotonic() if held else renewed_at
            if not held and not task.done():
                raise LeaseLost()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
