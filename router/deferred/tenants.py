"""Per-tenant limits (`tenants:` in the settings): real-time calls a minute, deferred calls at once, spend a day.

Each limit lives in one Redis key per tenant and is taken in one Lua step (`scripts.TAKE_CALL`,
`scripts.RESERVE_DEFERRED`), so replicas share it exactly, on one server or a cluster. Spend is the day's totals
that `GET /v1/usage` reports, read at most every `SPEND_REFRESH_S` per process, plus this process's own real-time
calls not yet written. A refusal is a 429 shaped as OpenAI's (`rate_limit_exceeded`, `insufficient_quota`) with
`Retry-After`, sent before anything is stored.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

from router.core.errors import QuotaExceeded, RouterError, TenantRateLimited
from router.deferred.store.scripts import Scripts
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.core.settings import Settings, TenantLimits
    from router.deferred.store.client import RedisClient
    from router.deferred.store.totals import RealtimeTotals, TotalsStore

SPEND_REFRESH_S = 2.0
"""How stale a tenant's spend read from Redis may be before the next check reads it again."""
DEFERRED_RETRY_S = (1.0, 60.0)
"""Bounds of `Retry-After` for `max_deferred`: a place frees when a batch is answered, so a poll interval is a guess."""
Limit = Literal["rpm", "max_deferred", "daily_budget_usd"]
Headroom = dict[str, dict[str, float]]


class Refusal(NamedTuple):
    """A limit the tenant is over, and the 429 that says so."""

    limit: Limit
    error: RouterError


def utc_day(now: float) -> str:
    """The UTC day of `now`, as totals are keyed."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def until_midnight(now: float) -> float:
    """Seconds from `now` to the next 00:00 UTC, when daily budgets start again."""
    day = time.gmtime(now)
    return calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)) + 86400 - now


def spend_of(totals: Mapping[str, float]) -> float:
    """What a day's totals cost at the rates paid, every lane."""
    return sum(value for field, value in totals.items() if field.endswith(":cost_usd"))


class Tenants:
    """Checks and takes each tenant's limits; counts refusals and shows headroom."""

    def __init__(
        self, redis: RedisClient, keys: Keys, settings: Settings, totals: TotalsStore, realtime: RealtimeTotals
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.totals = totals
        self.realtime = realtime
        self._scripts = Scripts(redis, keys)
        self._spend: dict[tuple[str, str], tuple[float, float]] = {}  # (tenant, day) -> (spent in Redis, read at)
        self._locks: dict[str, asyncio.Lock] = {}

    def limits(self, tenant: str) -> TenantLimits | None:
        """The limits that apply to `tenant`, if any."""
        return self.settings.tenant_limits(tenant)

    def limited(self) -> list[str]:
        """The tenants with limits that the settings name (bounded: they come from the config)."""
        named = [t for t in self.settings.tenants if t != "*"]
        if "*" in self.settings.tenants:
            named += self.settings.known_tenants()
        return sorted(set(named))

    # --- checks --------------------------------------------------------------------------------------

    async def take_realtime(self, tenant: str) -> None:
        """Take one real-time call from the tenant's `rpm`, or raise the 429 that refuses it (budget first)."""
        limits = self.limits(tenant)
        if limits is None:
            return
        refusal = await self._budget_refusal(tenant, limits)
        if refusal is None and limits.rpm is not None:
            refusal = await self._take_call(tenant, limits.rpm)
        if refusal is not None:
            raise self.refuse(tenant, refusal)

    async def reserve_deferred(self, tenant: str, call_id: str, expires_at: float) -> Refusal | None:
        """Count a new deferred call against the tenant's `max_deferred` (budget first); the refusal if it may not
        add one. Not raised here: a retry of a call already stored may still re-attach to it."""
        limits = self.limits(tenant)
        if limits is None:
            return None
        refusal = await self._budget_refusal(tenant, limits)
        if refusal is not None or limits.max_deferred is None:
            return refusal
        cap = limits.max_deferred
        taken, count = await self._scripts.reserve_deferred(
            tenant=tenant, call_id=call_id, now=time.time(), expires_at=expires_at, cap=cap
        )
        if taken:
            return None
        retry = min(max(self.settings.batch.poll_interval_s, DEFERRED_RETRY_S[0]), DEFERRED_RETRY_S[1])
        message = (
            f"Rate limit reached for tenant {tenant} on deferred calls queued or in flight: limit {cap}, in use "
            f"{count}. Please try again once some of them are answered."
        )
        return Refusal("max_deferred", TenantRateLimited(message, code="rate_limit_exceeded", retry_after=retry))

    async def release_deferred(self, tenant: str, call_id: str) -> None:
        """A reservation that became no new call (the request re-attached, or was refused after all)."""
        if self.limits(tenant) is not None:
            await self.redis.zrem(self.keys.tenant_deferred(tenant), call_id)

    def refuse(self, tenant: str, refusal: Refusal) -> RouterError:
        """Count a refusal sent to the caller; the error to raise."""
        metrics.tenant_refused.labels(tenant, refusal.limit).inc()
        return refusal.error

    async def _take_call(self, tenant: str, rpm: int) -> Refusal | None:
        taken, value = await self._scripts.take_call(
            tenant=tenant, now_ms=time.time() * 1000, interval_ms=60_000 / rpm, burst=rpm
        )
        if taken:
            return None
        wait_s = int(value) / 1000
        headers = {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": "0",
                   "x-ratelimit-reset-requests": f"{wait_s:.3f}s"}  # fmt: skip
        message = (
            f"Rate limit reached for tenant {tenant} on requests per min (RPM): Limit {rpm}. Please try again in "
            f"{wait_s:.3f}s."
        )
        error = TenantRateLimited(message, code="rate_limit_exceeded", retry_after=max(wait_s, 1.0), headers=headers)
        return Refusal("rpm", error)

    async def _budget_refusal(self, tenant: str, limits: TenantLimits) -> Refusal | None:
        budget = limits.daily_budget_usd
        if budget is None:
            return None
        now = time.time()
        spent = await self.spent(tenant, now)
        if spent < budget:
            return None
        message = (
            f"Tenant {tenant} has spent its daily budget: ${spent:.4f} of ${budget:.2f} on {utc_day(now)} (UTC). "
            "It starts again at 00:00 UTC."
        )
        error = QuotaExceeded(message, code="insufficient_quota", retry_after=until_midnight(now), should_retry=False)
        return Refusal("daily_budget_usd", error)

    async def spent(self, tenant: str, now: float | None = None) -> float:
        """The tenant's spend today (UTC): Redis' totals (read at most every `SPEND_REFRESH_S`) plus this
        process's real-time calls not yet written there."""
        day = utc_day(time.time() if now is None else now)
        cached = self._spend.get((tenant, day))
        if self._stale(tenant, cached):
            async with self._locks.setdefault(tenant, asyncio.Lock()):  # one read for a burst of calls
                cached = self._spend.get((tenant, day))
                if cached is None or self._stale(tenant, cached):
                    cached = (spend_of(await self.totals.totals(tenant, day)), time.monotonic())
                    self._spend = {k: v for k, v in self._spend.items() if k[1] == day} | {(tenant, day): cached}
        assert cached is not None
        return cached[0] + self.realtime.unflushed_cost(tenant, day)

    def _stale(self, tenant: str, cached: tuple[float, float] | None) -> bool:
        """Whether a spend read from Redis must be read again: too old, or this process's real-time totals of the
        tenant were written since (Redis has them now, and they are no longer counted as unflushed)."""
        return (
            cached is None
            or time.monotonic() - cached[1] >= SPEND_REFRESH_S
            or self.realtime.flushed_at(tenant) >= cached[1]
        )

    # --- headroom ------------------------------------------------------------------------------------

    async def headroom(self, tenant: str) -> Headroom:
        """Each limit of the tenant with what is used and what is left now (empty when it has none)."""
        limits = self.limits(tenant)
        out: Headroom = {}
        if limits is None:
            return out
        now = time.time()
        if limits.rpm is not None:
            left = await self._calls_left(tenant, limits.rpm, now)
            out["rpm"] = {"limit": limits.rpm, "remaining": left}
        if limits.max_deferred is not None:
            in_use = int(await self.redis.zcount(self.keys.tenant_deferred(tenant), f"({now!r}", "+inf"))
            out["max_deferred"] = {"limit": limits.max_deferred, "in_use": in_use,
                                   "remaining": max(0, limits.max_deferred - in_use)}  # fmt: skip
        if limits.daily_budget_usd is not None:
            spent = await self.spent(tenant, now)
            out["daily_budget_usd"] = {"limit": limits.daily_budget_usd, "spent": spent,
                                       "remaining": max(0.0, limits.daily_budget_usd - spent)}  # fmt: skip
        return out

    async def _calls_left(self, tenant: str, rpm: int, now: float) -> int:
        """Real-time calls the tenant could make at once now (the bucket's level), without taking any."""
        raw = await self.redis.get(self.keys.tenant_rate(tenant))
        interval, now_ms = 60_000 / rpm, now * 1000
        tat = max(float(raw), now_ms) if raw is not None else now_ms
        return max(0, min(rpm, math.floor((now_ms - (tat - rpm * interval)) / interval)))

    async def publish_metrics(self) -> None:
        """Set the limit and headroom gauges of every tenant with limits (called at scrape)."""
        for tenant in self.limited():
            for limit, values in (await self.headroom(tenant)).items():
                metrics.tenant_limit.labels(tenant, limit).set(values["limit"])
                metrics.tenant_headroom.labels(tenant, limit).set(values["remaining"])
