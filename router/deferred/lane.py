"""The lanes: pick the upstream for a model, forward real-time calls, hand deferred ones to the accumulator."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import msgspec
from redis.exceptions import RedisError

from router.core.deadline import format_deadline
from router.core.errors import NotFound, TooManyRequests
from router.core.keys import queue_tag
from router.core.lanes import Capabilities, Outlook, Planner
from router.core.schema import DeferredCall, RequestView, decode_body
from router.core.settings import Settings, Upstream
from router.core.states import CallState
from router.deferred.accumulator import (
    ASYNC_HOLDER,
    Accumulator,
    Admission,
    CallMeta,
    CallRecord,
    Result,
    new_call_id,
)
from router.deferred.tenants import RESERVATION_SLACK_S, Tenants
from router.deferred.waiters import Waiters, Watch
from router.providers.base import Provider, UpstreamResponse
from router.telemetry import metrics

log = logging.getLogger(__name__)
NEVER_FORWARDED = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "anthropic-version", "host",
     "content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive", "te",
     "upgrade", "accept-encoding"}
)  # fmt: skip
"""Credentials and framing: whatever `forward_headers` says, the router sets these itself."""
_DEFERRED_STATUS: dict[str, str] = {
    CallState.QUEUED: "queued",
    CallState.SUBMITTED: "submitted",
    CallState.ESCALATED: "escalated",
}
"""The `deferred.call` status of a call that has no result yet, by its state."""


def _globs(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns) or "(?!)")


QUEUES_FULL_RETRY_S = 60.0
HEARTBEAT_S = 0.5
"""How often a replica that holds connections says it is alive (`holding.Holds.heartbeat`)."""
HEARTBEAT_TTL_S = 2.0
"""How long a replica counts as alive after its last heartbeat: a killed one, seen dead after at most this long,
no longer holds its calls, and an identical request takes them over (`Accumulator.reattachable`)."""
"""`Retry-After` of a call refused for `limits.max_queues`: idle queues are pruned every few seconds, but a queue
empties only when its batch is answered."""


class Upstreams:
    """The configured upstreams in order; a model goes to the first whose patterns match it."""

    def __init__(
        self, configs: Sequence[Upstream], providers: dict[str, Provider], settings: Settings | None = None
    ) -> None:
        """`settings` decide which client headers pass (by tenant and auth mode; default: the built-in lists)."""
        self.configs = list(configs)
        self.providers = providers
        self._patterns = [
            (re.compile("|".join(fnmatch.translate(p) for p in cfg.models)), providers[cfg.name]) for cfg in configs
        ]
        self._cache: dict[str, Provider] = {}
        settings = settings or Settings(upstreams=self.configs)
        tenants = {key.tenant for key in settings.keys if key.forward_headers is not None}
        self._forward: dict[tuple[str, str | None], re.Pattern[str]] = {
            (cfg.name, tenant): _globs(settings.forward_headers(cfg, tenant))
            for cfg in configs
            for tenant in (None, *tenants)
        }

    def passed_headers(self, upstream: str, headers: Mapping[str, str], tenant: str | None = None) -> dict[str, str]:
        """The client headers this upstream is configured to receive from this tenant."""
        pattern = self._forward.get((upstream, tenant)) or self._forward[(upstream, None)]
        return {
            name: value
            for name, value in headers.items()
            if (lower := name.lower()) not in NEVER_FORWARDED and pattern.match(lower)
        }

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
        status = _DEFERRED_STATUS.get(call.state, "queued")
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

    def __init__(
        self,
        acc: Accumulator,
        waiters: Waiters,
        settings: Settings,
        planner: Planner,
        known: Callable[[str, str], bool],
        tenants: Tenants,
    ) -> None:
        self.acc = acc
        self.waiters = waiters
        self.settings = settings
        self.planner = planner
        self.known = known
        """Whether (upstream, model) names a model the upstream surely serves (`catalog.ModelCatalog.known`)."""
        self.tenants = tenants

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
        """What the upstream offers this kind of call (`routing.Catalog`). A batch only for a known model: any
        other name would open a queue in Redis, while in real time the upstream answers it and nothing is stored."""
        caps = self.planner.catalog.of(upstream, endpoint, model, stream=stream)
        if caps.batch and not self.known(upstream, model):
            metrics.unknown_model.labels(upstream).inc()
            return msgspec.structs.replace(caps, batch=False)
        return caps

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
        tag = queue_tag(upstream, endpoint, meta.model)
        attach_to = None
        if reattach and holder != ASYNC_HOLDER and self.settings.batch.reattach:
            replica = holder.partition("/")[0]
            attach_to = await self.acc.reattachable(tag, digest, retry=retry, replica=replica, settle_s=HEARTBEAT_TTL_S)
        new_id = new_call_id(tag)
        expires_at = deadline + self._timeout(upstream) + RESERVATION_SLACK_S
        refusal = await self.tenants.reserve_deferred(tenant, new_id, expires_at)
        if refusal is not None and idempotency_key is None and attach_to is None:
            raise self.tenants.refuse(tenant, refusal)
        try:
            call_id, outcome = await self.acc.admit(
                meta, batch_body(body, view), idempotency_key, digest=digest, holder=holder, attach_to=attach_to,
                call_id=new_id, attach_only=refusal is not None,
            )  # fmt: skip
        except BaseException:
            if refusal is None:  # best effort: an unreleased reservation lapses at `expires_at`
                with contextlib.suppress(Exception):
                    await self.tenants.release_deferred(tenant, new_id)
            raise
        if refusal is None and outcome != "new":
            await self.tenants.release_deferred(tenant, new_id)  # the reservation made no new call
        if refusal is not None and outcome == "over_limit":
            raise self.tenants.refuse(tenant, refusal)
        if outcome == "full":
            metrics.queues_refused.inc()
            raise TooManyRequests(
                f"The router has as many deferred queues as it may ({self.acc.max_queues}, `limits.max_queues`); "
                "a new model can be deferred once queues drain. Send the call without `X-Deadline` to answer it in "
                "real time now.",
                code="too_many_queues",
                retry_after=QUEUES_FULL_RETRY_S,
                should_retry=False,
            )
        if outcome == "new":
            metrics.admitted.labels(upstream, meta.model, tenant).inc()
        elif outcome == "attached":
            metrics.reattached.inc()
        return call_id, outcome

    async def call(self, call_id: str) -> CallRecord | None:
        """A stored call, or None (unknown, malformed or expired id)."""
        return await self.acc.get_call(call_id)

    async def result(self, call_id: str) -> Result | None:
        """A call's result, if it has one now (no waiting: `wait` waits)."""
        return await self.acc.get_result(call_id)

    async def call_and_result(self, call_id: str) -> tuple[CallRecord | None, Result | None]:
        """A stored call and, if it has one, its result (None, None once the call expired)."""
        call = await self.acc.get_call(call_id)
        return call, (await self.acc.get_result(call_id) if call is not None else None)

    async def unhold(self, call_id: str, holder: str, *, delivered: bool) -> None:
        """A connection stops holding a call; `delivered`: its caller has the answer (see `scripts.RELEASE`)."""
        await self.acc.unhold(call_id, holder, delivered=delivered)

    async def heartbeat(self, replica_id: str, ttl_s: float) -> None:
        """Say a replica is alive for `ttl_s` more seconds: the calls it holds are not orphans to re-attach to."""
        await self.acc.heartbeat(replica_id, ttl_s)

    async def retire(self, replica_id: str) -> None:
        """A replica is stopping: the calls it held are orphaned from now on (a retry may re-attach to them)."""
        await self.acc.retire(replica_id)

    def wake_all(self) -> None:
        """Wake every local waiter now (the drain: held waiters see it at once, not at their next keep-alive)."""
        self.waiters.wake_all()

    def _timeout(self, upstream: str) -> float:
        return next((u.timeout_s for u in self.settings.upstreams if u.name == upstream), 600.0)

    @contextlib.contextmanager
    def watching(self, call_id: str) -> Iterator[ResultWatch]:
        """Watch one call's result for the duration of the block (`ResultWatch.result` waits for it)."""
        with self.waiters.watching(call_id) as watch:
            yield ResultWatch(self.acc, watch)

    async def wait(self, call_id: str, seconds: float, stop: asyncio.Event | None = None) -> Result | None:
        """The call's result, waiting up to `seconds` for it, or until `stop` is set."""
        with self.watching(call_id) as watch:
            return await watch.result(seconds, stop)


class ResultWatch:
    """A call's result as one waiter sees it: read when the watch starts, then only when woken
    (`router.deferred.waiters`), so waiting costs Redis nothing between reads."""

    def __init__(self, acc: Accumulator, watch: Watch) -> None:
        self.acc = acc
        self.watch = watch
        self._read = True

    async def result(self, seconds: float, stop: asyncio.Event | None = None) -> Result | None:
        """The result, waiting up to `seconds` for it, or None (also at once when `stop` is set).

        While Redis is away the read is retried with backoff: a stored call stays stored, so its waiter waits
        rather than answering an error.
        """
        until = time.monotonic() + seconds
        pause = 0.1
        while stop is None or not stop.is_set():
            left = until - time.monotonic()
            if self._read:
                try:
                    result = await self.acc.get_result(self.watch.call_id)
                except (RedisError, OSError) as exc:
                    log.debug("reading the result of %s failed, will retry: %s", self.watch.call_id, exc)
                    pause = min(pause * 2, 5.0)
                    if left <= 0:
                        return None
                    await asyncio.sleep(min(pause, left))
                    continue
                if result is not None:
                    return result
                self._read = False
            if left <= 0:
                return None
            self._read = await self.watch.woken(left)
        return None


def call_digest(tenant: str, endpoint: str, body: bytes) -> str:
    """What identifies identical requests: the tenant, the endpoint and the body's bytes."""
    h = hashlib.sha256(tenant.encode())
    h.update(b"\n" + endpoint.encode() + b"\n")
    h.update(body)
    return h.hexdigest()[:32]
