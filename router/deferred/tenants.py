"""Per-tenant limits (`tenants:` in the settings): real-time calls a minute, deferred calls at once, spend a day.

Each limit lives in one Redis key per tenant and is taken in one Lua step (`scripts.TAKE_CALL`,
`scripts.RESERVE_DEFERRED`), so replicas share it exactly, on one server or a cluster. Spend is the day's totals
that `GET /v1/usage` reports, read at most every `SPEND_REFRESH_S` per process, plus this process's own real-time
calls not yet written. A refusal is a 429 shaped as OpenAI's (`rate_limit_exceeded`, `insufficient_quota`) with
`Retry-After`, sent before anything is stored.

A daily budget also holds under concurrency: each call reserves its worst-case cost (its `max_tokens`, or
`limits.budget_output_tokens` where it sets none, and its body's bytes as input tokens, at the asked model's rate
in its lane's price tier) at admission, atomically in Redis (`scripts.RESERVE_BUDGET`), and settles it with its
real cost when it ends (`SETTLE_BUDGET`: answered, failed or cancelled; a deferred call when its result is
stored). A reservation expires (its process died), so none leaks. A burst thus overshoots the budget by at most
what its calls' real costs exceed their reservations.
"""

from __future__ import annotations

import asyncio
import calendar
import math
import time
from collections.abc import AsyncIterable, Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple

import msgspec

from router.core import schema
from router.core.errors import QuotaExceeded, RouterError, TenantRateLimited
from router.core.pricing import Usage
from router.core.schema import decode_view
from router.deferred.store.scripts import Scripts
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.core.pricing import PriceTable, PriceTier
    from router.core.settings import Settings, TenantLimits
    from router.deferred.store.client import RedisClient
    from router.deferred.store.totals import RealtimeTotals, TotalsStore

BUDGET_SPENT_TTL_S = 2 * 24 * 3600
"""How long a day's settled spend (`P:{b:<tenant>}:budget:spent:<day>`) is kept."""
REALTIME_HOLD_S = 3600.0
"""A real-time call's reservation lapses this long after its upstream timeout (its process died before settling)."""
BYTES_PER_TOKEN = 4
"""Input tokens a body is taken to hold, per byte (the JSON around the prompt makes it an over-estimate)."""
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
        self,
        redis: RedisClient,
        keys: Keys,
        settings: Settings,
        totals: TotalsStore,
        realtime: RealtimeTotals,
        prices: PriceTable | None = None,
    ) -> None:
        self.prices = prices
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

    def budgeted(self, tenant: str) -> bool:
        """Whether the tenant's calls reserve against a daily budget."""
        limits = self.limits(tenant)
        return limits is not None and limits.daily_budget_usd is not None

    def worst_case(self, model: str, tier: PriceTier, body: bytes, view: schema.RequestView) -> float:
        """A call's worst-case cost in USD: its body as input, its output cap (or the configured estimate) as output,
        at `model`'s rate in `tier` (0 when unpriced: only what is already spent or reserved can refuse it)."""
        if self.prices is None:
            return 0.0
        caps = [c for c in (view.max_tokens, view.max_completion_tokens, view.max_output_tokens) if _count(c)]
        output = min(caps) if caps else self.settings.limits.budget_output_tokens
        cost = self.prices.cost(model, Usage(len(body) // BYTES_PER_TOKEN + 1, 0, output), tier)
        return 0.0 if cost is None else cost.actual_usd

    async def worst_case_lines(self, lines: AsyncIterable[bytes], max_depth: int) -> float:
        """The worst-case cost of a native batch's input file (its JSONL lines), at the batch rate of each line's
        model; a line that cannot be read reserves nothing (the provider refuses it)."""
        total = 0.0
        async for raw in lines:
            try:
                body = bytes(_input_line.decode(raw).body)
                view = decode_view(body, max_depth)
            except (msgspec.DecodeError, RecursionError, RouterError):
                continue
            total += self.worst_case(view.model or "", "batch", body, view)
        return total

    def worst_case_requests(self, body: bytes, max_depth: int) -> float:
        """The worst-case cost of a Message Batches body (`requests[].params`), at the batch rate of each model."""
        try:
            requests = _batch_requests.decode(body).requests
        except (msgspec.DecodeError, RecursionError):
            return 0.0  # the upstream refuses it
        total = 0.0
        for request in requests:
            params = bytes(request.params)
            try:
                view = decode_view(params, max_depth)
            except RouterError:
                continue
            total += self.worst_case(view.model or "", "batch", params, view)
        return total

    async def take_realtime(self, tenant: str, call_id: str = "", amount: float = 0.0) -> bool:
        """Take one real-time call from the tenant's budget (reserving `amount` under `call_id`) and `rpm`, or raise
        the 429 that refuses it; True when a reservation was made, which `settle` must end."""
        limits = self.limits(tenant)
        if limits is None:
            return False
        reserved = False
        refusal = await self._budget_refusal(tenant, limits)
        if refusal is None and limits.daily_budget_usd is not None and call_id:
            refusal = await self.reserve_budget(tenant, call_id, amount, time.time() + REALTIME_HOLD_S)
            reserved = refusal is None
        if refusal is None and limits.rpm is not None:
            refusal = await self._take_call(tenant, limits.rpm)
            if refusal is not None and reserved:
                await self.settle(tenant, call_id, 0.0)
                reserved = False
        if refusal is not None:
            raise self.refuse(tenant, refusal)
        return reserved

    async def reserve_budget(self, tenant: str, call_id: str, amount: float, expires_at: float) -> Refusal | None:
        """Reserve `amount` of the tenant's daily budget for one call until it settles (or `expires_at`); the
        refusal when the day's spend and reservations leave no room for it."""
        limits = self.limits(tenant)
        budget = limits.daily_budget_usd if limits is not None else None
        if budget is None:
            return None
        now = time.time()
        taken, total = await self._scripts.reserve_budget(
            tenant=tenant, day=utc_day(now), call_id=call_id, amount=amount, budget=budget,
            floor=await self.spent(tenant, now), now=now, expires_at=expires_at, ttl=BUDGET_SPENT_TTL_S,
        )  # fmt: skip
        if taken:
            return None
        message = (
            f"Tenant {tenant} has spent or reserved its daily budget: ${total:.4f} of ${budget:.2f} on "
            f"{utc_day(now)} (UTC), and this call may cost up to ${amount:.4f}. It starts again at 00:00 UTC."
        )
        error = QuotaExceeded(message, code="insufficient_quota", retry_after=until_midnight(now), should_retry=False)
        return Refusal("daily_budget_usd", error)

    async def settle(self, tenant: str, call_id: str, cost: float) -> None:
        """End a call's reservation with its real cost (0 when it cost nothing)."""
        await self._scripts.settle_budget(
            tenant=tenant, day=utc_day(time.time()), call_id=call_id, cost=cost, ttl=BUDGET_SPENT_TTL_S
        )

    async def reserve_deferred(
        self, tenant: str, call_id: str, expires_at: float, amount: float = 0.0
    ) -> Refusal | None:
        """Count a new deferred call against the tenant's budget (reserving `amount`) and `max_deferred`; the
        refusal if it may not add one. Not raised here: a retry of a call already stored may still re-attach to it."""
        limits = self.limits(tenant)
        if limits is None:
            return None
        refusal = await self._budget_refusal(tenant, limits)
        if refusal is None:
            refusal = await self.reserve_budget(tenant, call_id, amount, expires_at)
        if refusal is not None or limits.max_deferred is None:
            return refusal
        cap = limits.max_deferred
        taken, count = await self._scripts.reserve_deferred(
            tenant=tenant, call_id=call_id, now=time.time(), expires_at=expires_at, cap=cap
        )
        if taken:
            return None
        if limits.daily_budget_usd is not None:
            await self.settle(tenant, call_id, 0.0)
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
        if self.budgeted(tenant):
            await self.settle(tenant, call_id, 0.0)

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


def _count(value: object) -> bool:
    """Whether a body's token cap is a usable count (a bad one is the upstream's to refuse)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _InputLine(msgspec.Struct):
    """A line of a native batch's input file, as far as its reservation reads it."""

    body: msgspec.Raw = msgspec.Raw(b"{}")


_input_line = msgspec.json.Decoder(_InputLine)


class _BatchRequest(msgspec.Struct):
    params: msgspec.Raw = msgspec.Raw(b"{}")


class _BatchRequests(msgspec.Struct):
    """A Message Batches body, as far as its reservation reads it."""

    requests: list[_BatchRequest] = msgspec.field(default_factory=list)


_batch_requests = msgspec.json.Decoder(_BatchRequests)
