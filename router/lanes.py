"""The lanes: pick the upstream for a model, forward real-time calls, hand deferred ones to the accumulator."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError

from router import metrics
from router.accumulator import ASYNC_HOLDER, Accumulator, Admission, CallMeta, CallRecord, Result, Waiters
from router.deadline import format_deadline
from router.errors import NotFound
from router.keys import queue_tag
from router.providers.base import Provider, UpstreamResponse
from router.routing import Capabilities, Outlook, Planner
from router.schema import DeferredCall, RequestView, decode_body
from router.settings import Settings, Upstream

log = logging.getLogger("router.lanes")


class Upstreams:
    """The configured upstreams in order; a model goes to the first whose patterns match it."""

    def __init__(self, configs: Sequence[Upstream], providers: dict[str, Provider]) -> None:
        self.configs = list(configs)
        self.providers = providers
        self._patterns = [
            (re.compile("|".join(fnmatch.translate(p) for p in cfg.models)), providers[cfg.name]) for cfg in configs
        ]
        self._cache: dict[str, Provider] = {}
        self._forward = {
            cfg.name: re.compile("|".join(fnmatch.translate(p.lower()) for p in cfg.forward_headers) or "(?!)")
            for cfg in configs
        }

    def passed_headers(self, upstream: str, headers: Mapping[str, str]) -> dict[str, str]:
        """The client headers this upstream is configured to receive."""
        pattern = self._forward[upstream]
        return {name: value for name, value in headers.items() if pattern.match(name.lower())}

    def for_model_or_none(self, model: str) -> Provider | None:
        """The provider serving `model`, if any."""
        provider = self._cache.get(model)
        if provider is not None:
            return provider
        for pattern, candidate in self._patterns:
            if pattern.match(model):
                if len(self._cache) < 4096:  # model names come from callers: bound the memo
                    self._cache[model] = candidate
                return candidate
        return None

    def for_model(self, model: str) -> Provider:
        """The provider serving `model`, or a 404 naming the model."""
        provider = self.for_model_or_none(model)
        if provider is not None:
            return provider
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def config(self, name: str) -> Upstream:
        """The settings of one upstream."""
        return next(cfg for cfg in self.configs if cfg.name == name)

    async def aclose(self) -> None:
        """Close every provider's pool."""
        for provider in self.providers.values():
            await provider.aclose()


async def forward_realtime(
    provider: Provider, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None = None
) -> UpstreamResponse:
    """Send one call upstream now, timing the upstream's part of it."""
    started = time.perf_counter()
    try:
        response = await provider.forward(endpoint, body, stream=stream, headers=headers)
    finally:
        elapsed = time.perf_counter() - started
        metrics.upstream_latency.labels(provider.name).observe(elapsed)
    response.elapsed = elapsed
    return response


def lane_name(lane: str) -> str:
    """The lane a caller is shown for a stored result (an escalated call was answered in real time, or by flex)."""
    return "realtime" if lane == "escalated" else lane


def escalated(lane: str) -> bool:
    """Whether a stored result came from an escalation (a deferred call answered by flex was escalated too)."""
    return lane in ("escalated", "flex")


def deferred_object(call: CallRecord, result: Result | None) -> DeferredCall:
    """The `deferred.call` object for a call and, if it ended, its result."""
    if result is not None:
        status = "completed" if result.status < 400 else "failed"
    else:
        status = {"queued": "queued", "submitted": "submitted", "escalated": "escalated"}.get(call.state, "queued")
    return DeferredCall(
        id=call.id,
        status=status,  # type: ignore[arg-type]
        lane=lane_name(result.lane) if result else "batch",
        deadline=format_deadline(call.meta.deadline),
        created=int(call.meta.received_at),
        cost_usd=result.cost_usd if result else None,
        savings_usd=result.savings_usd if result else None,
        webhook=call.meta.webhook is not None,
    )


_body_encoder = msgspec.json.Encoder()


def batch_body(body: bytes, view: RequestView) -> bytes:
    """The body as a batch line may carry it: valid as a whole (one bad line must not fail a whole batch)
    and without `stream`/`stream_options` (batch APIs refuse them)."""
    obj = decode_body(body)
    if "stream" not in obj and "stream_options" not in obj:
        return body
    obj.pop("stream", None)
    obj.pop("stream_options", None)
    return _body_encoder.encode(obj)


class DeferredLane:
    """Admission to the batch lane and waiting for a deferred call's result."""

    def __init__(self, acc: Accumulator, waiters: Waiters, settings: Settings, planner: Planner) -> None:
        self.acc = acc
        self.waiters = waiters
        self.settings = settings
        self.planner = planner

    async def outlook(self, upstream: str, endpoint: str, model: str, now: float) -> Outlook:
        """What the queue's turnaround model says now (read from Redis): its admission quantile for a batch one
        call larger than what waits, and whether a probe may go."""
        tag = queue_tag(upstream, endpoint, model)
        turnaround = self.planner.model
        observations, waiting, batches = await self.acc.outlook(tag)
        quantile = turnaround.quantile(observations, now, lines=waiting + 1)
        probe = self.planner.probe and not waiting and not batches and not turnaround.enough(observations, now)
        return Outlook(quantile_s=quantile, may_probe=probe)

    def capabilities(self, upstream: str, endpoint: str, model: str, *, stream: bool = False) -> Capabilities:
        """What the upstream offers this kind of call (`routing.Catalog`)."""
        return self.planner.catalog.of(upstream, endpoint, model, stream=stream)

    async def admit(
        self,
        *,
        endpoint: str,
        body: bytes,
        view: RequestView,
        upstream: str,
        tenant: str,
        deadline: float,
        rule: str | None,
        idempotency_key: str | None,
        webhook: str | None = None,
        holder: str = "",
        retry: bool = False,
        reattach: bool = True,
    ) -> tuple[str, Admission]:
        """Queue the call, or attach to the live call it repeats (see `Accumulator.admit`); (call id, outcome).

        With `reattach`, a held request identical to a call whose caller is gone takes that call over; `retry`
        (the client says this request retries an earlier attempt) also takes over a call whose old connection
        has not been seen to drop yet.
        """
        meta = CallMeta(
            tenant=tenant,
            upstream=upstream,
            endpoint=endpoint,
            model=view.model or "",
            deadline=deadline,
            received_at=time.time(),
            stream=bool(view.stream),
            include_usage=bool(view.stream_options and view.stream_options.include_usage),
            rule=rule,
            webhook=webhook,
        )
        digest = call_digest(tenant, endpoint, body)
        attach_to = None
        if reattach and holder != ASYNC_HOLDER and self.settings.batch.reattach:
            tag = queue_tag(upstream, endpoint, meta.model)
            attach_to = await self.acc.reattachable(tag, digest, retry=retry)
        call_id, outcome = await self.acc.admit(
            meta, batch_body(body, view), idempotency_key, digest=digest, holder=holder, attach_to=attach_to
        )
        if outcome == "new":
            metrics.admitted.labels(upstream, meta.model, tenant).inc()
        elif outcome == "attached":
            metrics.reattached.inc()
        return call_id, outcome

    async def wait(self, call_id: str, seconds: float, stop: asyncio.Event | None = None) -> Result | None:
        """The call's result, waiting up to `seconds` for it, or until `stop` is set.

        Woken by pub/sub and re-checked every 5 s. While Redis is away the reads are retried with backoff: a
        stored call stays stored, so its waiter waits rather than answering an error.
        """
        until = time.monotonic() + seconds
        pause = 0.1
        with self.waiters.waiting(call_id) as woken:
            while True:
                try:
                    result = await self.acc.get_result(call_id)
                    pause = 0.1
                except (RedisError, OSError) as exc:
                    log.debug("reading the result of %s failed, will retry: %s", call_id, exc)
                    result, pause = None, min(pause * 2, 5.0)
                left = until - time.monotonic()
                if result is not None or left <= 0 or (stop is not None and stop.is_set()):
                    return result
                if woken.done():  # woken, yet nothing stored: a wake-up for a result that has since expired
                    await asyncio.sleep(min(left, 0.25))
                    continue
                waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.shield(woken))}
                if stop is not None:
                    waits.add(asyncio.ensure_future(stop.wait()))
                try:
                    await asyncio.wait(
                        waits, timeout=min(left, 5.0 if pause <= 0.1 else pause), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for waiting in waits:
                        waiting.cancel()


def call_digest(tenant: str, endpoint: str, body: bytes) -> str:
    """What identifies identical requests: the tenant, the endpoint and the body's bytes."""
    h = hashlib.sha256(tenant.encode())
    h.update(b"\n" + endpoint.encode() + b"\n")
    h.update(body)
    return h.hexdigest()[:32]
