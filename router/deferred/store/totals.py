"""Tenants' daily cost totals: real-time calls added from memory, deferred ones by `STORE_RESULT` per queue, and
the per-day index of the queues a tenant's totals are in."""

from __future__ import annotations

from collections.abc import Mapping

from router.core.keys import TOTALS_TTL_S
from router.deferred.store.context import StoreContext
from router.deferred.store.records import TotalsKey, text


class TotalsStore:
    """Reads and adds to tenants' daily totals."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx
        self._indexed: set[tuple[str, str, str]] = set()  # (tenant, day, tag) entered in the usage index lately

    async def add_totals(self, pending: Mapping[TotalsKey, Mapping[str, float]]) -> None:
        """Add real-time calls, summed in memory, to their tenants' daily totals (one pipeline for them all)."""
        # Not a transaction: tenants' keys live in different cluster slots. Not per queue either: any model
        # name a caller sends would otherwise become a queue for the loops to walk.
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for (tenant, day), fields in pending.items():
                key = self.ctx.keys.realtime_totals(tenant, day)
                for name, value in fields.items():
                    if name.endswith(":requests"):
                        pipe.hincrby(key, name, int(value))
                    else:
                        pipe.hincrbyfloat(key, name, value)
                pipe.expire(key, TOTALS_TTL_S)
            await pipe.execute()

    async def index_usage(self, tenant: str, day: str, tag: str) -> None:
        """Enter a queue in a tenant's usage index for `day`, before its totals there are written, so a crash
        in between cannot hide them; once per process and (tenant, day, queue)."""
        if (tenant, day, tag) in self._indexed:
            return
        key = self.ctx.keys.usage_index(tenant, day)
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(key, tag)
            pipe.expire(key, TOTALS_TTL_S)
            await pipe.execute()
        if len(self._indexed) >= 100_000:
            self._indexed.clear()
        self._indexed.add((tenant, day, tag))

    async def totals(self, tenant: str, day: str) -> dict[str, float]:
        """A tenant's cost totals for one UTC day (`YYYY-MM-DD`): real-time calls plus every queue's it used."""
        redis, k = self.ctx.redis, self.ctx.keys
        tags = {text(t) for t in await redis.smembers(k.usage_index(tenant, day))}
        keys = [k.realtime_totals(tenant, day)] + [f"{k.totals_prefix(tag)}{tenant}:{day}" for tag in sorted(tags)]
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            rows = await pipe.execute()
        out: dict[str, float] = {}
        for row in rows:
            for field, value in row.items():
                out[text(field)] = out.get(text(field), 0.0) + float(value)
        return out
