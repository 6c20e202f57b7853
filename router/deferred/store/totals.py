"""Tenants' daily cost totals: deferred calls' added by `STORE_RESULT` per queue (with the per-day index of the
queues a tenant's totals are in), real-time calls' summed in memory (`RealtimeTotals`) and written once a second."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.core.keys import TOTALS_TTL_S
from router.deferred.store.records import TotalsKey, text
from router.telemetry.logs import Throttle, kind_of

if TYPE_CHECKING:
    from router.core.lanes import Origin
    from router.deferred.store.context import StoreContext
    from router.telemetry.accounting import Accounting, Priced

log = logging.getLogger(__name__)
_throttle = Throttle(log)
FLUSH_S = 1.0
"""Real-time totals reach Redis in one pipeline per second, not one round trip per call."""


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


class RealtimeTotals:
    """Real-time calls, booked in the metrics at once and summed in memory for Redis, written in one pipeline a
    second: one round trip per call would cost the hot path more than it is worth (a crash can lose at most a
    second of real-time totals; the Prometheus counters are exact either way)."""

    def __init__(self, store: TotalsStore, accounting: Accounting) -> None:
        self.store = store
        self.accounting = accounting
        self._totals: dict[TotalsKey, dict[str, float]] = {}
        self._flushing: list[dict[TotalsKey, dict[str, float]]] = []
        self._flushed_at: dict[str, float] = {}  # tenant -> monotonic time of the last write that included it
        self._writing = asyncio.Lock()
        """One write at a time: a reader's flush (`GET /v1/usage`) waits for the periodic one still writing, so the
        calls that write carries are in Redis when the reader reads."""

    def record(self, priced: Priced, *, origin: Origin, upstream: str, model: str, tenant: str, outcome: str) -> None:
        """Book a finished real-time call in the metrics now, and in memory for the next write to Redis."""
        if outcome != "ok" and not self.accounting.prices.listed(model):
            model = "other"  # a failed call's model is whatever the caller typed: keep label values bounded
        self.accounting.book(priced, origin=origin, upstream=upstream, model=model, tenant=tenant, outcome=outcome)
        fields = self._totals.setdefault((tenant, time.strftime("%Y-%m-%d", time.gmtime())), {})
        lane = origin.value  # the totals' fields are named by origin: `/v1/usage` shows them as its lanes
        fields[f"{lane}:requests"] = fields.get(f"{lane}:requests", 0.0) + 1
        if priced.cost is not None:
            for name, value in zip(("cost_usd", "baseline_usd", "savings_usd"), priced.as_tuple() or (), strict=True):
                fields[f"{lane}:{name}"] = fields.get(f"{lane}:{name}", 0.0) + value
            if priced.cost.route_usd:  # the model route's part of the savings (`/v1/usage` splits them by lever)
                fields[f"{lane}:route_usd"] = fields.get(f"{lane}:route_usd", 0.0) + priced.cost.route_usd
            if priced.cost.prompt_cache_usd:  # the prompt cache's part
                cached = fields.get(f"{lane}:prompt_cache_usd", 0.0) + priced.cost.prompt_cache_usd
                fields[f"{lane}:prompt_cache_usd"] = cached

    def unflushed_cost(self, tenant: str, day: str) -> float:
        """What this process's real-time calls of a tenant's day cost that Redis may not show yet."""
        rows = [totals.get((tenant, day), {}) for totals in (self._totals, *self._flushing)]
        return sum(value for fields in rows for name, value in fields.items() if name.endswith(":cost_usd"))

    def flushed_at(self, tenant: str) -> float:
        """When (`time.monotonic()`) Redis last took this process's real-time totals of the tenant; 0 if never."""
        return self._flushed_at.get(tenant, 0.0)

    async def flush(self) -> None:
        """Write the totals summed since the last flush (after any write still under way); on failure keep them for
        the next one."""
        async with self._writing:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._totals = self._totals, {}
        if not pending:
            return
        self._flushing.append(pending)  # still counted for budgets while being written
        try:
            await self.store.add_totals(pending)
        except Exception as exc:
            _throttle.warning(kind_of("totals", exc), "could not write real-time totals to Redis, will retry: %s", exc)
            for key, fields in pending.items():
                merged = self._totals.setdefault(key, {})
                for name, value in fields.items():
                    merged[name] = merged.get(name, 0.0) + value
        else:
            now = time.monotonic()
            self._flushed_at.update((tenant, now) for tenant, _ in pending)
        finally:
            self._flushing = [batch for batch in self._flushing if batch is not pending]

    async def run(self, stop: asyncio.Event) -> None:
        """Flush once a second until `stop`, and once more then."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=FLUSH_S)
            await self.flush()
