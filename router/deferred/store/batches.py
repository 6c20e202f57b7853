"""Batches: claiming queued calls into one, recording its submission, recovery of lapsed builds, the poll schedule,
ingestion with its turnaround observation, cuts, and what admission reads of a queue's turnarounds."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from router.core.keys import PROVIDER_BATCHES_KEEP_S, TURNAROUND_SAMPLES, TURNAROUND_TTL_S
from router.core.states import BatchState, CallState
from router.core.turnaround import Observation
from router.deferred.store.records import BatchRecord, meta_decoder, number, queue_name, text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext
    from router.deferred.store.queues import Queues

LINE_OVERHEAD = 128  # bytes a JSONL line adds around a body: custom_id, method, url
CLAIM_CHUNK = 2000  # calls moved per CLAIM script run: bounds how long one script holds Redis

_observation_encoder = msgspec.json.Encoder()
_observation_decoder = msgspec.json.Decoder(Observation)


class BatchStore:
    """Our batches, from claim to ingestion, and the turnarounds they leave behind."""

    def __init__(self, ctx: StoreContext, queues: Queues) -> None:
        self.ctx = ctx
        self.queues = queues

    async def claim(
        self, tag: str, *, max_requests: int, max_bytes: int, owner: str, lease_s: float
    ) -> tuple[str, list[str]] | None:
        """Move the earliest-deadline queued calls into a new `building` batch; return (batch id, call ids)."""
        bid = "b" + secrets.token_hex(12)
        taken: list[str] = []
        budget = max_bytes
        while len(taken) < max_requests:
            now = time.time()
            want = min(CLAIM_CHUNK, max_requests - len(taken))
            claimed = await self.ctx.scripts.claim(
                tag=tag,
                bid=bid,
                max_n=want,
                max_bytes=budget,
                line_overhead=LINE_OVERHEAD,
                owner=owner,
                now=now,
                lease_until=now + lease_s,
                first_chunk=not taken,
            )
            taken += claimed.ids
            budget -= claimed.used
            if len(claimed.ids) < want:  # the queue ran dry or the byte limit was reached
                break
        return (bid, taken) if taken else None

    async def bodies(self, call_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        """(id, body, the caller's endpoint) of calls that still have a body (a call answered meanwhile has none);
        calls of endpoints that share a queue need telling apart when their batch is built."""
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hmget(self.ctx.keys.call(call_id), ["body", "meta"])
            found = await pipe.execute()
        return [
            (cid, body, meta_decoder.decode(meta).endpoint)
            for cid, (body, meta) in zip(call_ids, found, strict=True)
            if body is not None and meta is not None
        ]

    async def set_trace(self, tag: str, bid: str, traceparent: str) -> None:
        """Keep a batch's submit span with the batch, for its polls and ingest on any replica (tracing on only)."""
        await self.ctx.redis.hset(self.ctx.keys.batch(tag, bid), "trace", traceparent)

    async def batch_trace(self, tag: str, bid: str) -> str:
        """A batch's submit span (`traceparent`), "" when it has none (tracing on only)."""
        return text(await self.ctx.redis.hget(self.ctx.keys.batch(tag, bid), "trace"))

    async def call_traces(self, call_ids: Sequence[str]) -> list[str]:
        """The admission spans (`traceparent`s) of these calls, where they have one (tracing on only)."""
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hget(self.ctx.keys.call(call_id), "meta")
            metas = await pipe.execute()
        return [trace for meta in metas if meta is not None and (trace := meta_decoder.decode(meta).trace)]

    async def mark_submitted(self, tag: str, bid: str, owner: str, provider_id: str, next_poll: float) -> bool:
        """Record the provider's id for a batch we still own."""
        return await self.ctx.scripts.mark_submitted(
            tag=tag,
            bid=bid,
            owner=owner,
            provider_id=provider_id,
            now=time.time(),
            next_poll=next_poll,
            keep_s=PROVIDER_BATCHES_KEEP_S,
        )

    async def recorded(self, provider_ids: Sequence[str]) -> set[str]:
        """The provider batch ids, among these, that some queue has recorded (crash recovery's orphan test)."""
        if not provider_ids:
            return set()
        tags = await self.queues.queue_tags()
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for tag in tags:
                pipe.zmscore(self.ctx.keys.provider_batches(tag), list(provider_ids))
            rows = await pipe.execute()
        return {pid for row in rows for pid, score in zip(provider_ids, row, strict=True) if score is not None}

    async def building(self) -> list[tuple[str, BatchRecord, float]]:
        """Every batch still being built, over all queues: (upstream, record, lease expiry)."""
        redis, k = self.ctx.redis, self.ctx.keys
        found: list[tuple[str, BatchRecord, float]] = []
        for tag in await self.queues.queue_tags():
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hget(k.queue(tag), "upstream")
                pipe.zrange(k.batches(tag), 0, -1, withscores=True)
                upstream, scored = await pipe.execute()
            if not scored:
                continue
            async with redis.pipeline(transaction=False) as pipe:
                for bid, _ in scored:
                    pipe.hmget(k.batch(tag, text(bid)), ["state", "owner", "created_at", "n"])
                rows = await pipe.execute()
            for (bid, until), row in zip(scored, rows, strict=True):
                if text(row[0]) != BatchState.BUILDING:
                    continue
                created_at, n = number(row[2]) or 0.0, int(row[3] or 0)
                record = BatchRecord(
                    tag=tag,
                    id=text(bid),
                    state=BatchState.BUILDING,
                    provider_id="",
                    owner=text(row[1]),
                    created_at=created_at,
                    submitted_at=0.0,
                    polls=0,
                    n=n,
                )
                found.append((text(upstream), record, float(until)))
        return found

    async def lapsed_at(self, tag: str, bid: str) -> float:
        """When recovery first found this submission attempt of a batch lapsed (kept while it looks again)."""
        redis = self.ctx.redis
        key = self.ctx.keys.batch(tag, bid)
        field = f"lapsed_at:{int(await redis.hget(key, 'submit_attempts') or 0)}"
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, field, repr(time.time()))
            pipe.hget(key, field)
            _, first = await pipe.execute()
        return float(first)

    async def take_over(self, tag: str, bid: str, owner: str, lease_s: float, *, dead: str = "") -> bool:
        """Adopt a `building` batch whose builder's lease lapsed, or whose builder is `dead` (its replica's
        heartbeat lapsed) whatever is left of its lease."""
        now = time.time()
        return await self.ctx.scripts.take_over(
            tag=tag, bid=bid, owner=owner, now=now, lease_until=now + lease_s, dead=dead
        )

    async def leased_builds(self, tag: str, now: float, limit: int = 100) -> list[BatchRecord]:
        """`building` batches of a queue whose lease still runs (their builders' liveness decides if they wait)."""
        redis, k = self.ctx.redis, self.ctx.keys
        bids = [text(b) for b in await redis.zrangebyscore(k.batches(tag), f"({now!r}", "+inf", start=0, num=limit)]
        if not bids:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hmget(k.batch(tag, bid), ["state", "owner", "created_at", "n"])
            rows = await pipe.execute()
        return [
            BatchRecord(
                tag=tag,
                id=bid,
                state=BatchState.BUILDING,
                provider_id="",
                owner=text(row[1]),
                created_at=number(row[2]) or 0.0,
                submitted_at=0.0,
                polls=0,
                n=int(row[3] or 0),
            )
            for bid, row in zip(bids, rows, strict=True)
            if text(row[0]) == BatchState.BUILDING
        ]

    async def renew_batch(self, tag: str, bid: str, owner: str, lease_s: float) -> bool:
        """Extend the lease of a `building` batch we still own."""
        return await self.ctx.scripts.renew_batch(tag=tag, bid=bid, owner=owner, until=time.time() + lease_s)

    async def due_batches(self, tag: str, now: float, limit: int = 100) -> list[BatchRecord]:
        """Batches whose next action (poll, or recovery of a lapsed build) is due."""
        bids = await self.ctx.redis.zrangebyscore(self.ctx.keys.batches(tag), "-inf", now, start=0, num=limit)
        return await self._records(tag, [text(b) for b in bids])

    async def in_flight(self, tag: str, limit: int = 1000) -> list[BatchRecord]:
        """A queue's batches not ingested yet (being built, or at the provider), oldest first (the status page)."""
        bids = [text(b) for b in await self.ctx.redis.zrange(self.ctx.keys.batches(tag), 0, limit - 1)]
        return sorted(await self._records(tag, bids), key=lambda record: record.created_at)

    async def _records(self, tag: str, bids: list[str]) -> list[BatchRecord]:
        """The records of these batches of one queue (a batch gone meanwhile is left out)."""
        redis, k = self.ctx.redis, self.ctx.keys
        if not bids:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for bid in bids:
                pipe.hgetall(k.batch(tag, bid))
            rows = await pipe.execute()
        return [
            BatchRecord(
                tag=tag,
                id=bid,
                state=BatchState(text(row.get(b"state"))),
                provider_id=text(row.get(b"provider_id")),
                owner=text(row.get(b"owner")),
                created_at=number(row.get(b"created_at")) or 0.0,
                submitted_at=number(row.get(b"submitted_at")) or 0.0,
                polls=int(row.get(b"polls") or 0),
                n=int(row.get(b"n") or 0),
                cut_at=number(row.get(b"cut_at")),
                trace=text(row.get(b"trace")),
            )
            for bid, row in zip(bids, rows, strict=True)
            if row
        ]

    async def reschedule(self, tag: str, bid: str, at: float) -> None:
        """Set a batch's next poll time and count the poll."""
        k = self.ctx.keys
        async with self.ctx.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(k.batch(tag, bid), "polls", 1)
            pipe.zadd(k.batches(tag), {bid: at}, xx=True)
            await pipe.execute()

    async def count_submit_attempt(self, tag: str, bid: str) -> int:
        """Count one more attempt to submit a batch; returns the count."""
        return int(await self.ctx.redis.hincrby(self.ctx.keys.batch(tag, bid), "submit_attempts", 1))

    async def batch_calls(self, tag: str, bid: str) -> list[str]:
        """The ids claimed into a batch."""
        return [text(i) for i in await self.ctx.redis.lrange(self.ctx.keys.batch_calls(tag, bid), 0, -1)]

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
        k = self.ctx.keys
        result_ttl = self.ctx.result_ttl
        async with self.ctx.redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.batch(tag, bid), mapping={"state": BatchState.INGESTED, "provider_status": provider_status})
            pipe.expire(k.batch(tag, bid), result_ttl)
            pipe.expire(k.batch_calls(tag, bid), result_ttl)
            pipe.zrem(k.batches(tag), bid)
            if turnaround is not None:
                observation = Observation(seconds=turnaround, at=time.time(), lines=max(1, lines), censored=censored)
                pipe.lpush(k.turnaround(tag), _observation_encoder.encode(observation))
                pipe.ltrim(k.turnaround(tag), 0, TURNAROUND_SAMPLES - 1)
                pipe.expire(k.turnaround(tag), TURNAROUND_TTL_S)
            await pipe.execute()

    async def batches_holding(self, tag: str, cutoff: float, limit: int = 500) -> set[str]:
        """The batches that hold a submitted call whose deadline is before `cutoff`."""
        redis, k = self.ctx.redis, self.ctx.keys
        ids = [text(i) for i in await redis.zrangebyscore(k.inflight(tag), "-inf", cutoff, start=0, num=limit)]
        if not ids:
            return set()
        async with redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(k.call(call_id), ["state", "batch"])
            rows = await pipe.execute()
        return {text(row[1]) for row in rows if text(row[0]) == CallState.SUBMITTED and row[1]}

    async def cut(self, tag: str, bid: str) -> bool:
        """Mark a running batch cut and make it due for the poller now (which cancels and harvests it)."""
        return await self.ctx.scripts.cut(tag=tag, bid=bid, now=time.time())

    # --- turnarounds ---------------------------------------------------------------------------------

    async def observations(self, tag: str) -> list[Observation]:
        """The recent batch turnarounds of a queue, newest first."""
        return _observations(await self.ctx.redis.lrange(self.ctx.keys.turnaround(tag), 0, -1))

    async def outlook(self, tag: str) -> tuple[list[Observation], int, int]:
        """What admission reads of a queue, in one round trip: (observations, calls waiting, batches in flight)."""
        k = self.ctx.keys
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(k.turnaround(tag), 0, -1)
            pipe.zcard(k.pending(tag))
            pipe.zcard(k.batches(tag))
            raw, waiting, batches = await pipe.execute()
        return _observations(raw), int(waiting), int(batches)

    async def turnarounds(self) -> dict[str, list[Observation]]:
        """Every queue's turnaround observations, by queue name (`upstream/model/endpoint`)."""
        out: dict[str, list[Observation]] = {}
        for tag in await self.queues.queue_tags():
            info = await self.ctx.redis.hgetall(self.ctx.keys.queue(tag))
            if info:
                out[queue_name(info)] = await self.observations(tag)
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
