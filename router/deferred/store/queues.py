"""The set of queues the loops walk (pruned when idle), and what waits in each queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.deferred.store.records import QueueStats, queue_name, text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext


class Queues:
    """Which queues have work, and what waits in them."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def queue_tags(self) -> list[str]:
        """The queues that have work (and idle ones not pruned yet)."""
        return sorted(text(t) for t in await self.ctx.redis.smembers(self.ctx.keys.queues))

    async def prune(self, tag: str) -> bool:
        """Take an idle queue out of the set the loops walk; True when it was idle (see `scripts.PRUNE`)."""
        redis, k = self.ctx.redis, self.ctx.keys
        if not await self.ctx.scripts.prune(tag=tag):
            return False
        await redis.srem(k.queues, tag)
        if await redis.exists(k.queue(tag)):  # an admission re-created it meanwhile: keep the queue
            await redis.sadd(k.queues, tag)
            return False
        return True

    async def prune_idle(self) -> int:
        """Prune every idle queue; returns how many were pruned."""
        return sum([await self.prune(tag) for tag in await self.queue_tags()])

    async def stats(self, tag: str) -> QueueStats | None:
        """Count, bytes, oldest arrival and earliest deadline of what waits in one queue."""
        k = self.ctx.keys
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
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
            upstream=text(info[b"upstream"]),
            endpoint=text(info[b"endpoint"]),
            model=text(info[b"model"]),
            count=int(count),
            bytes=int(size or 0),
            oldest_arrival=oldest[0][1] if oldest else None,
            earliest_deadline=earliest[0][1] if earliest else None,
        )

    async def counts(self) -> tuple[dict[str, int], int]:
        """Queued calls per queue (`upstream/model/endpoint`) and batches in flight, over all queues."""
        depth: dict[str, int] = {}
        inflight = 0
        k = self.ctx.keys
        for tag in await self.queue_tags():
            async with self.ctx.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(k.queue(tag))
                pipe.zcard(k.pending(tag))
                pipe.zcard(k.batches(tag))
                info, count, batches = await pipe.execute()
            if info:
                depth[queue_name(info)] = int(count)
            inflight += int(batches)
        return depth, inflight
