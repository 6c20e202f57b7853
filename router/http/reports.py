"""What the router reports about itself, one function per route: the models list (`GET /v1/models`), one model,
a tenant's day (`GET /v1/usage`) and readiness (`GET /readyz`). `/metrics` is `exposition.Exposition`."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from router.core.errors import BadRequest, RouterError, UpstreamError
from router.core.schema import encoder
from router.telemetry.accounting import LEVERS

if TYPE_CHECKING:
    from router.deferred.store.client import RedisClient
    from router.deferred.store.totals import RealtimeTotals, TotalsStore
    from router.deferred.tenants import Tenants
    from router.passthrough.native_batches import NativeStore
    from router.providers.upstreams import Upstreams

log = logging.getLogger(__name__)
_models_decoder = msgspec.json.Decoder(dict[str, Any])
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def savings_by_lever(lanes: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """A day's savings split by lever, from its lanes: the model route's and the prompt cache's parts of each lane,
    and the rest to the lane's price tier (batch and native: `batch`; `flex`; the answer cache's lane `cache`:
    `answer_cache`); the levers add up to the lanes' savings exactly."""
    out = dict.fromkeys(LEVERS, 0.0)
    for lane, fields in lanes.items():
        route, cached = fields.get("route_usd", 0.0), fields.get("prompt_cache_usd", 0.0)
        out["route"] += route
        out["prompt_cache"] += cached
        tier = fields.get("savings_usd", 0.0) - route - cached
        if lane in ("batch", "native"):
            out["batch"] += tier
        elif lane == "flex":
            out["flex"] += tier
        elif lane == "cache":
            out["answer_cache"] += tier
    return out


class Reports:
    """The router's reports about itself, from the upstreams, the totals in Redis and the tenants' limits."""

    def __init__(
        self,
        upstreams: Upstreams,
        totals: TotalsStore,
        realtime: RealtimeTotals,
        native: NativeStore,
        tenants: Tenants,
        redis: RedisClient,
    ) -> None:
        self.upstreams = upstreams
        self.totals = totals
        self.realtime = realtime
        self.native = native
        self.tenants = tenants
        self.redis = redis

    async def list_models(self) -> bytes:
        """Models of every upstream (OpenAI's shape), filtered by the patterns that route to it."""
        upstreams = self.upstreams
        data: list[Any] = []
        errors: list[RouterError] = []
        for cfg in upstreams.configs:
            provider = upstreams.providers[cfg.name]
            try:
                answer = await provider.get("/models")
            except RouterError as exc:
                errors.append(exc)
                continue
            if answer.status != 200:
                continue
            try:
                items = _models_decoder.decode(answer.body).get("data", [])
            except (msgspec.DecodeError, RecursionError):
                log.warning("upstream %s answered /models with something that is not a model list", cfg.name)
                continue
            for item in items if isinstance(items, list) else []:
                model_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(model_id, str) and upstreams.for_model_or_none(model_id) is provider:
                    data.append(item)
        if not data and errors:
            raise errors[0]
        return msgspec.json.encode({"object": "list", "data": data})

    async def describe_model(self, model_id: str) -> bytes:
        """One model as its upstream describes it (`GET /v1/models/{id}`); the upstream's error passes through."""
        provider = self.upstreams.for_model(model_id)
        upstream = await provider.get(f"/models/{quote(model_id, safe='')}")
        if upstream.status >= 400:
            raise UpstreamError(upstream.status, upstream.body)
        return upstream.body

    async def usage(self, tenant: str, day: str | None) -> bytes:
        """`GET /v1/usage`: the tenant's totals for one UTC day, per lane (from Redis, so they outlive restarts), and
        today what it may still use."""
        day = day or time.strftime("%Y-%m-%d", time.gmtime())
        if not _DAY.match(day):
            raise BadRequest("`day` must be a UTC date like 2026-11-27.", param="day", code="invalid_value")
        lanes = await self.day_lanes(tenant, day)
        report: dict[str, Any] = {
            "object": "router.usage",
            "tenant": tenant,
            "day": day,
            "lanes": lanes,
            "savings_by_lever": savings_by_lever(lanes),
        }
        if day == time.strftime("%Y-%m-%d", time.gmtime()):
            report["limits"] = await self.tenants.headroom(tenant)  # what the tenant may still use, now
        return encoder.encode(report)

    async def day_lanes(self, tenant: str, day: str) -> dict[str, dict[str, float]]:
        """A tenant's totals of one UTC day by lane (`/v1/usage`'s `lanes`; the status page reads the same)."""
        lanes: dict[str, dict[str, float]] = {}
        for field, value in (await self.day_totals(tenant, day)).items():
            lane, _, name = field.partition(":")
            lanes.setdefault(lane, {})[name] = value
        return lanes

    async def day_savings(self, tenant: str, day: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """A tenant's day by lane and its savings by lever, as `/v1/usage` reports them (the status page)."""
        lanes = await self.day_lanes(tenant, day)
        return lanes, savings_by_lever(lanes)

    async def readiness(self) -> dict[str, bool]:
        """Redis and each upstream: reachable or not."""
        checks: dict[str, bool] = {}
        try:
            checks["redis"] = bool(await self.redis.ping())
        except Exception:
            checks["redis"] = False
        for name, provider in self.upstreams.providers.items():
            checks[f"upstream:{name}"] = await provider.ping()
        return checks

    async def day_totals(self, tenant: str, day: str) -> dict[str, float]:
        """A tenant's totals of one UTC day as `lane:name` fields: real-time calls (this process's written first),
        deferred calls and native batches (their lanes never overlap)."""
        await self.realtime.flush()
        return await self.totals.totals(tenant, day) | await self.native.totals(tenant, day)
