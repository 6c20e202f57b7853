"""Calls out: reading calls and results, storing a result once, putting a call back on its queue, and taking a call
out of the batch lane to answer it in real time (escalation)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from router.core.background import CANCELLED_BODY, CANCELLED_STATUS
from router.core.keys import TOTALS_TTL_S, tag_of
from router.core.lanes import Origin
from router.core.states import CallState, StoreOutcome
from router.deferred.store.records import CallMeta, CallRecord, Result, meta_decoder, number, text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext
    from router.deferred.store.totals import TotalsStore


class ResultStore:
    """Deferred calls as stored, their results, and their escalations."""

    def __init__(self, ctx: StoreContext, totals: TotalsStore) -> None:
        self.ctx = ctx
        self.totals = totals

    async def get_call(self, call_id: str) -> CallRecord | None:
        """A call as stored, or None (unknown, malformed or expired id)."""
        return (await self.get_calls([call_id]))[0]

    async def get_calls(self, call_ids: Sequence[str]) -> list[CallRecord | None]:
        """Several calls in one round trip (a batch's results are read hundreds at a time)."""
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.hmget(self.ctx.keys.call(call_id), ["meta", "state", "batch", "lane", "attempts"])
            rows = await pipe.execute()
        return [
            _record(cid, row) if len(cid) > len(tag_of(cid)) else None for cid, row in zip(call_ids, rows, strict=True)
        ]

    async def results_stored(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls have a result stored (one pipelined existence check each)."""
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for call_id in call_ids:
                pipe.exists(self.ctx.keys.result(call_id))
            found = await pipe.execute()
        return {cid for cid, there in zip(call_ids, found, strict=True) if there}

    async def get_result(self, call_id: str) -> Result | None:
        """A finished call's result, if stored and not expired."""
        row: dict[bytes, bytes] = await self.ctx.redis.hgetall(self.ctx.keys.result(call_id))  # type: ignore[assignment]
        if not row:
            return None
        return Result(
            status=int(row[b"status"]),
            body=row[b"body"],
            origin=Origin(text(row[b"lane"])),
            cost_usd=number(row.get(b"cost")),
            baseline_usd=number(row.get(b"baseline")),
            savings_usd=number(row.get(b"savings")),
            finished_at=float(row[b"finished_at"]),
            route_usd=number(row.get(b"route")) or 0.0,
            prompt_cache_usd=number(row.get(b"prompt_cache")) or 0.0,
        )

    async def store_result(
        self,
        call_id: str,
        meta: CallMeta,
        *,
        from_batch: str,
        status: int,
        body: bytes,
        origin: Origin,
        cost: tuple[float, float, float] | None,
        route_usd: float = 0.0,
        prompt_cache_usd: float = 0.0,
    ) -> StoreOutcome:
        """Store a final result once, or say why not (`StoreOutcome`); wakes waiters when stored."""
        k = self.ctx.keys
        now = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        await self.totals.index_usage(meta.tenant, day, tag_of(call_id))
        stored = await self.ctx.scripts.store_result(
            call_id=call_id,
            tenant=meta.tenant,
            day=day,
            from_batch=from_batch,
            status=status,
            body=body,
            origin=origin,
            ttl=self.ctx.result_ttl,
            cost=cost,
            route_usd=route_usd,
            prompt_cache_usd=prompt_cache_usd,
            now=now,
            totals_ttl=TOTALS_TTL_S,
        )
        if stored == StoreOutcome.STORED:
            # Side by side, not pipelined: a cluster pipeline refuses PUBLISH.
            await asyncio.gather(
                self.ctx.redis.publish(k.done_channel, call_id),
                self.ctx.redis.zrem(k.tenant_deferred(meta.tenant), call_id),  # no longer counts for `max_deferred`
            )
            if meta.budget:  # its budget reservation ends with its real cost (a crash before: it lapses)
                await self.ctx.scripts.settle_budget(
                    tenant=meta.tenant, day=day, call_id=call_id, cost=cost[0] if cost else 0.0, ttl=2 * 24 * 3600
                )
        return stored

    async def cancel(self, call: CallRecord) -> bool:
        """End a call its caller cancelled (out of its queue, or its batch's result to be dropped); True when this
        cancelled it, False when it had ended before. Its budget reservation settles at nothing."""
        now = time.time()
        done = await self.ctx.scripts.cancel(
            call_id=call.id, status=CANCELLED_STATUS, body=CANCELLED_BODY, origin=Origin.BATCH, ttl=self.ctx.result_ttl,
            now=now,
        )  # fmt: skip
        if done != 1:
            return False
        meta = call.meta
        await asyncio.gather(
            self.ctx.redis.publish(self.ctx.keys.done_channel, call.id),
            self.ctx.redis.zrem(self.ctx.keys.tenant_deferred(meta.tenant), call.id),
        )
        if meta.budget:
            day = time.strftime("%Y-%m-%d", time.gmtime(now))
            await self.ctx.scripts.settle_budget(
                tenant=meta.tenant, day=day, call_id=call.id, cost=0.0, ttl=2 * 24 * 3600
            )
        return True

    async def requeue(self, call_id: str, bid: str) -> bool:
        """Put a call its batch did not answer back on its queue."""
        return await self.ctx.scripts.requeue(call_id=call_id, bid=bid)

    async def forget(self, call_id: str) -> None:
        """Drop the index entries of a call whose hash expired (nothing is left to answer it with)."""
        k = self.ctx.keys
        tag = tag_of(call_id)
        async with self.ctx.redis.pipeline(transaction=True) as pipe:
            for index in (k.pending(tag), k.arrivals(tag), k.inflight(tag), k.escalating(tag)):
                pipe.zrem(index, call_id)
            await pipe.execute()

    # --- escalation ----------------------------------------------------------------------------------

    async def expedite(self, call_id: str) -> None:
        """Make a submitted call due for escalation at the guard's next pass."""
        await self.ctx.redis.zadd(self.ctx.keys.inflight(tag_of(call_id)), {call_id: 0}, xx=True)

    async def escalation_due(self, tag: str, cutoff: float, now: float, limit: int = 500) -> list[str]:
        """Calls whose deadline is before `cutoff` (queued or submitted), and escalations whose lease lapsed."""
        k = self.ctx.keys
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(k.pending(tag), "-inf", cutoff, start=0, num=limit)
            pipe.zrangebyscore(k.inflight(tag), "-inf", cutoff, start=0, num=limit)
            pipe.zrangebyscore(k.escalating(tag), "-inf", now, start=0, num=limit)
            rows = await pipe.execute()
        return [text(i) for row in rows for i in row]

    async def escalate(self, call_id: str, lease_s: float, owner: str = "", *, dead: str = "") -> bytes | None:
        """Take a call out of the batch lane for real-time handling (as `owner`, taking it from a `dead` escalator
        whatever is left of its lease); its body, or None if someone else has it."""
        now = time.time()
        return await self.ctx.scripts.escalate(
            call_id=call_id, now=now, lease_until=now + lease_s, owner=owner, dead=dead
        )

    async def renew_escalation(self, call_id: str, lease_s: float, owner: str = "") -> bool:
        """Extend the lease of a call being answered in real time, if it is still `owner`'s."""
        return await self.ctx.scripts.renew_escalation(call_id=call_id, until=time.time() + lease_s, owner=owner)

    async def leased_escalations(self, tag: str, now: float, limit: int = 500) -> list[tuple[str, str]]:
        """(call id, escalator) of the calls being answered in real time whose lease still runs."""
        redis, k = self.ctx.redis, self.ctx.keys
        ids = [text(i) for i in await redis.zrangebyscore(k.escalating(tag), f"({now!r}", "+inf", start=0, num=limit)]
        if not ids:
            return []
        async with redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hget(k.call(call_id), "escalator")
            owners = await pipe.execute()
        return [(call_id, text(owner)) for call_id, owner in zip(ids, owners, strict=True) if owner]


def _record(call_id: str, row: list[bytes | None]) -> CallRecord | None:
    if row[0] is None:
        return None
    return CallRecord(
        id=call_id,
        meta=meta_decoder.decode(row[0]),
        state=CallState(text(row[1])),
        batch=text(row[2]),
        origin=Origin(text(row[3])) if row[3] else None,
        attempts=int(row[4] or 0),
    )
