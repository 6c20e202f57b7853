"""Litestar handlers: admit, decide, answer (errors become JSON in `error_handlers`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream
from litestar.types import Receive
from redis.exceptions import RedisError

from router import metrics
from router.accounting import Lane, Priced
from router.accumulator import ASYNC_HOLDER, CallRecord, Result
from router.deadline import format_deadline, parse_deadline
from router.error_handlers import JSON, ClientDisconnected
from router.errors import (
    AuthenticationFailed,
    BadRequest,
    IdempotencyKeyReused,
    NotFound,
    RouterError,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamError,
    UpstreamTimeout,
)
from router.lanes import deferred_object, escalated, forward_realtime, lane_name
from router.policy import Decision, Facts, decide
from router.pricing import Usage
from router.providers.base import Provider
from router.replay import cost_comment, error_answer, sse_chunks
from router.routing import NO_OUTLOOK, route
from router.schema import RequestView, decode_body, decode_view, encoder, with_fields
from router.sse import tap_usage

if TYPE_CHECKING:
    from router.gateway import Gateway

log = logging.getLogger("router.api")
T = TypeVar("T")

_CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def new_request_id() -> str:
    """An unguessable id for a real-time call."""
    return "req_" + secrets.token_urlsafe(16)


def bearer(request: Request[Any, Any, Any]) -> str | None:
    """The key from `Authorization: Bearer ...` (or `api-key`, as Azure clients send it, or `x-api-key`, as the
    `anthropic` SDKs do)."""
    value = request.headers.get("authorization")
    if value:
        scheme, _, key = value.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("api-key") or request.headers.get("x-api-key")


def authenticate(gateway: Gateway, request: Request[Any, Any, Any]) -> str:
    """The caller's tenant, or a 401."""
    tenant = gateway.settings.tenant_for_key(bearer(request), gateway.key_index)
    if tenant is None:
        raise AuthenticationFailed()
    return tenant


def authorize_metrics(gateway: Gateway, request: Request[Any, Any, Any]) -> None:
    """A 401 unless `/metrics` is open or the caller sent its bearer token."""
    expected = gateway.metrics_token
    if expected is not None and not hmac.compare_digest((bearer(request) or "").encode(), expected.encode()):
        raise AuthenticationFailed("`/metrics` needs the bearer token named by `metrics_token_env`.")


async def until_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (so the upstream call is dropped too)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left, or this handler itself was cancelled (shutdown)
            task.cancel()
            # Let the work see its cancellation through (an upstream call is dropped, its connection freed).
            await asyncio.wait((task,))
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


def prefers_async(request: Request[Any, Any, Any]) -> bool:
    """`Prefer: respond-async` (RFC 7240)."""
    prefer = request.headers.get("prefer", "")
    return any(token.strip().lower() == "respond-async" for token in prefer.split(","))


def webhook_url(gateway: Gateway, request: Request[Any, Any, Any]) -> str | None:
    """`X-Webhook-URL`, checked: only with `Prefer: respond-async`, only to an allowed http(s) host."""
    url = request.headers.get("x-webhook-url")
    if url is None:
        return None
    if not prefers_async(request):
        raise BadRequest(
            "`X-Webhook-URL` needs `Prefer: respond-async`; a held call gets its answer on the open connection.",
            param="X-Webhook-URL",
            code="webhook_requires_respond_async",
        )
    return gateway.webhooks.check(url)


def set_cost_headers(headers: dict[str, str], cost_usd: float, savings_usd: float) -> None:
    """`X-Router-Cost-USD` and `X-Router-Savings-USD`, precise enough to add up to the metrics."""
    headers["x-router-cost-usd"] = f"{cost_usd:.12f}"
    headers["x-router-savings-usd"] = f"{savings_usd:.12f}"


def result_response(
    call: CallRecord, result: Result, headers: dict[str, str], *, replay: bool
) -> Response[bytes] | Stream:
    """A finished deferred call as the caller's endpoint would have answered it."""
    headers["x-router-lane"] = lane_name(result.lane)
    if escalated(result.lane):
        headers["x-router-escalated"] = "true"
    if result.cost_usd is not None:
        set_cost_headers(headers, result.cost_usd, result.savings_usd or 0.0)
    if result.status >= 400:
        # The router already retried what it could (escalations until the deadline); an SDK retry would queue
        # the whole call again behind another batch.
        headers["x-should-retry"] = "false"
    if replay and call.meta.stream and result.status == 200:
        headers["cache-control"] = "no-cache"
        cost = cost_comment(result.cost_usd, result.savings_usd)
        chunks = sse_chunks(call.meta.endpoint, result.body, include_usage=call.meta.include_usage, cost=cost)
        return Stream(chunks, status_code=200, headers=headers, media_type="text/event-stream")
    body = error_answer(call.meta.endpoint, result.status, result.body) if result.status >= 400 else result.body
    return Response(body, status_code=result.status, headers=headers, media_type=JSON)


async def respond_deferred(
    gateway: Gateway,
    request: Request[Any, Any, Any],
    *,
    endpoint: str,
    body: bytes,
    view: RequestView,
    upstream: str,
    tenant: str,
    decision: Decision,
    headers: dict[str, str],
    webhook: str | None,
) -> Response[bytes] | Stream:
    """Admit a call to the batch lane (or re-attach a retry to it), then answer 202 (async) or hold the
    connection until its result (`router.holding`)."""
    assert decision.deadline is not None
    holds = gateway.holds
    held = not prefers_async(request)
    if holds.draining.is_set():
        raise ServiceUnavailable("The router is restarting; retry shortly.", retry_after=1.0, should_retry=True)
    if held and holds.full():
        metrics.held_refused.inc()
        raise TooManyRequests(
            f"The router holds as many connections as it may ({holds.cap}); retry shortly, or send "
            "`Prefer: respond-async` to get a call id to poll.",
            code="too_many_held_calls",
            retry_after=2.0,
        )
    holder = holds.new_holder() if held else ASYNC_HOLDER
    call_id, outcome = await gateway.deferred.admit(
        endpoint=endpoint,
        body=body,
        view=view,
        upstream=upstream,
        tenant=tenant,
        deadline=decision.deadline,
        rule=decision.rule,
        idempotency_key=request.headers.get("idempotency-key"),
        webhook=webhook,
        holder=holder,
        retry=is_retry(request),
        reattach=request.headers.get("x-router-reattach", "").lower() not in ("never", "off", "false", "0"),
    )
    if outcome == "reused":
        raise IdempotencyKeyReused(call_id)
    headers["x-router-request-id"] = call_id
    headers["x-router-lane"] = "batch"
    if outcome == "attached":
        headers["x-router-reattached"] = "true"
    if not held:
        return await _respond_async(gateway, call_id, headers)
    return await _hold(gateway, request, call_id, holder, upstream, headers)


async def _hold(
    gateway: Gateway, request: Request[Any, Any, Any], call_id: str, holder: str, upstream: str, headers: dict[str, str]
) -> Response[bytes] | Stream:
    """Hold the connection for a stored call: its answer within one keep-alive interval, else a held body."""
    holds = gateway.holds
    holds.enter()
    handed_off = delivered = False
    try:
        call = await gateway.deferred.acc.get_call(call_id)
        if call is None:
            raise ServiceUnavailable(f"The deferred call {call_id} expired before it could be held.", call_id=call_id)
        headers["x-router-deadline"] = format_deadline(call.meta.deadline)  # a re-attached retry keeps the original
        # Held until the deadline, plus the guard's margin and the time an escalated call may take upstream.
        slack = gateway.settings.batch.margin_s + gateway.upstreams.config(upstream).timeout_s
        hold = max(1.0, min(gateway.settings.batch.hold_s, call.meta.deadline - time.time() + slack))
        if call.meta.stream:
            headers["cache-control"] = "no-cache"
            handed_off = True
            return Stream(holds.sse_body(call, holder, hold), status_code=200, headers=headers,
                          media_type="text/event-stream")  # fmt: skip
        first = min(hold, gateway.settings.batch.keepalive_s)
        started = time.monotonic()
        result = await unless_disconnected(request, holds.first_wait(call_id, first))
        if result is not None:
            delivered = True
            return result_response(call, result, headers, replay=True)
        if holds.draining.is_set():
            raise ServiceUnavailable(
                f"The router is restarting; the deferred call {call_id} is kept. Send the same request again to "
                "re-attach to it.",
                code="router_restarting",
                retry_after=1.0,
                call_id=call_id,
                should_retry=True,
            )
        if hold - (time.monotonic() - started) <= 0:
            raise UpstreamTimeout(
                f"The deferred call {call_id} has no result yet; fetch it with GET /v1/deferred/{call_id}.",
                code="deferred_pending",
                headers=headers,
                call_id=call_id,
                should_retry=False,
            )
        handed_off = True
        body_iter = holds.json_body(call, holder, hold - (time.monotonic() - started))
        return Stream(body_iter, status_code=200, headers=headers, media_type=JSON)
    except (RedisError, OSError) as exc:
        # The call is stored: say which, and let the SDK retry, which re-attaches to it.
        log.warning("holding %s failed: %s", call_id, exc)
        raise ServiceUnavailable(
            f"The router could not hold the deferred call {call_id}; send the same request again to re-attach to "
            f"it, or fetch it with GET /v1/deferred/{call_id}.",
            retry_after=1.0,
            call_id=call_id,
            should_retry=True,
        ) from exc
    except RouterError as exc:
        exc.call_id = exc.call_id or call_id
        raise
    finally:
        if not handed_off:
            holds.leave(call_id, holder, delivered=delivered)


async def _respond_async(gateway: Gateway, call_id: str, headers: dict[str, str]) -> Response[bytes]:
    """`202` with the `deferred.call` object and where to fetch the answer."""
    try:
        call = await gateway.deferred.acc.get_call(call_id)
        result = await gateway.deferred.acc.get_result(call_id) if call is not None else None
    except RedisError as exc:
        raise ServiceUnavailable(
            f"The deferred call {call_id} is stored; fetch it with GET /v1/deferred/{call_id}.",
            retry_after=1.0,
            call_id=call_id,
            should_retry=True,
        ) from exc
    if call is None:
        raise ServiceUnavailable(f"The deferred call {call_id} expired before it could be shown.", call_id=call_id)
    headers["x-router-deadline"] = format_deadline(call.meta.deadline)
    headers["location"] = f"/v1/deferred/{call_id}"
    return Response(encoder.encode(deferred_object(call, result)), status_code=202, headers=headers, media_type=JSON)


def is_retry(request: Request[Any, Any, Any]) -> bool:
    """Whether the client says this request retries an earlier attempt (the OpenAI and Anthropic SDKs send
    `X-Stainless-Retry-Count`, 0 on the first attempt)."""
    count = request.headers.get("x-stainless-retry-count", "0").strip()
    return count.isdigit() and int(count) > 0


async def fetch_deferred(
    gateway: Gateway, request: Request[Any, Any, Any], call_id: str, tenant: str, wait: float
) -> Response[bytes] | Stream:
    """`GET /v1/deferred/{id}`: 202 with the call object while pending, the upstream's answer when done."""
    call = await gateway.deferred.acc.get_call(call_id) if _CALL_ID.match(call_id) else None
    if call is None or call.meta.tenant != tenant:
        raise NotFound(f"No deferred call with id '{call_id}'.", param="id", code="deferred_call_not_found")
    wait = min(max(wait, 0.0), gateway.settings.limits.max_wait_s)
    if wait > 0:
        result = await unless_disconnected(request, gateway.deferred.wait(call_id, wait))
    else:
        result = await gateway.deferred.acc.get_result(call_id)
    headers = {"x-router-request-id": call_id}
    if result is None:
        call = await gateway.deferred.acc.get_call(call_id) or call
        content = encoder.encode(deferred_object(call, None))
        return Response(content, status_code=202, headers=headers, media_type=JSON)
    return result_response(call, result, headers, replay=False)


def read_deadline(gateway: Gateway, request: Request[Any, Any, Any], now: float) -> tuple[float | None, bool]:
    """`X-Deadline` as (absolute deadline, urgent); (None, False) when absent."""
    raw = request.headers.get("x-deadline")
    if raw is None:
        return None, False
    deadline = parse_deadline(raw, now=now, max_seconds=gateway.settings.limits.max_deadline_s)
    return deadline, deadline is None


async def admit(gateway: Gateway, request: Request[Any, Any, Any], endpoint: str) -> Response[bytes] | Stream:
    """Authenticate, decode the routing fields, decide the lane, and answer."""
    started = time.perf_counter()
    tenant = authenticate(gateway, request)
    webhook = webhook_url(gateway, request)
    body = await request.body()
    view = decode_view(body, gateway.settings.limits.max_json_depth)
    if not view.model:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
    provider = gateway.upstreams.for_model(view.model)
    now = time.time()
    header_deadline, urgent = read_deadline(gateway, request, now)
    facts = Facts(
        path="/v1" + endpoint,
        model=view.model,
        tenant=tenant,
        headers=request.headers,
        metadata={k: str(v) for k, v in view.metadata.items()} if view.metadata else {},
        user=view.user,
    )
    decision = decide(gateway.policies.current, facts, header_deadline, urgent, now)
    headers = {"x-router-request-id": new_request_id(), "x-router-lane": "realtime"}
    if decision.rule:
        headers["x-router-rule"] = decision.rule
    lane = gateway.deferred
    stream = bool(view.stream)
    caps = lane.capabilities(provider.name, endpoint, view.model, stream=stream)
    outlook = NO_OUTLOOK
    if decision.lane == "deferred" and caps.batch:
        outlook = await lane.outlook(provider.name, endpoint, view.model, now)
    chosen = route(
        decision, endpoint=endpoint, stream=stream, caps=caps, outlook=outlook, timing=lane.planner.timing, now=now
    )
    if chosen.lane == "batch":
        provider.check(endpoint, body)  # what real time would refuse is refused now, not at flush time
        return await respond_deferred(
            gateway,
            request,
            endpoint=endpoint,
            body=body,
            view=view,
            upstream=provider.name,
            tenant=tenant,
            decision=decision,
            headers=headers,
            webhook=webhook,
        )
    if chosen.reason == "too_soon":
        metrics.escalations.labels("admission").inc()
    if chosen.lane == "flex":
        # No batch for it, but it can wait minutes: the flex tier costs the batch price, synchronously.
        body, view = with_fields(body, service_tier="flex"), msgspec.structs.replace(view, service_tier="flex")
        return await respond_realtime(
            gateway, request, provider, endpoint, body, view, tenant, headers, started, flex_fallback=True
        )
    return await respond_realtime(gateway, request, provider, endpoint, body, view, tenant, headers, started)


async def respond_realtime(
    gateway: Gateway,
    request: Request[Any, Any, Any],
    provider: Provider,
    endpoint: str,
    body: bytes,
    view: RequestView,
    tenant: str,
    headers: dict[str, str],
    started: float,
    *,
    flex_fallback: bool = False,
) -> Response[bytes] | Stream:
    """Forward now; stream SSE through unbuffered; pass upstream errors through; price what comes back.

    `flex_fallback`: the router chose the flex tier, so a flex 429 may be retried on the standard tier (a
    caller who asked for flex itself gets the 429, as from the upstream).
    """
    await gateway.tenants.admit_realtime(tenant)  # its budget and `rpm`, before the upstream sees the call
    model = view.model or ""
    stream = bool(view.stream)
    strip_usage = False
    if (
        stream
        and endpoint in USAGE_OPTION_ENDPOINTS
        and not (view.stream_options and view.stream_options.include_usage)
    ):
        body, strip_usage = with_usage_requested(body), True  # priced from the usage chunk, hidden again below
    passed = gateway.upstreams.passed_headers(provider.name, request.headers, tenant)
    lane: Lane = "flex" if view.service_tier == "flex" else "realtime"

    def count(outcome: str) -> None:
        gateway.record_realtime(Priced(None, None), lane=lane, upstream=provider.name, model=model, tenant=tenant,
                                outcome=outcome)  # fmt: skip

    try:
        upstream = await unless_disconnected(
            request, forward_realtime(provider, endpoint, body, stream=stream, headers=passed)
        )
        if flex_fallback and upstream.status == 429:
            # Flex capacity is short ("resource unavailable", not billed): the standard tier keeps the promise.
            body, lane = with_fields(body, service_tier=None), "realtime"
            forward = forward_realtime(provider, endpoint, body, stream=stream, headers=passed)
            upstream = await unless_disconnected(request, forward)
    except ClientDisconnected:
        count("cancelled")
        raise
    except RouterError as exc:
        count("timeout" if isinstance(exc, UpstreamTimeout) else "unavailable")
        raise
    headers.update(upstream.headers)
    headers["x-router-lane"] = lane
    metrics.proxy_overhead.observe(max(0.0, time.perf_counter() - started - upstream.elapsed))
    if upstream.stream is not None:
        headers["cache-control"] = "no-cache"

        def book(usage: Usage | None, completed: bool) -> None:
            priced = gateway.accounting.price(model, lane, b"", usage) if usage else Priced(None, None)
            gateway.record_realtime(priced, lane=lane, upstream=provider.name, model=model, tenant=tenant,
                                    outcome="ok" if completed else "cancelled")  # fmt: skip

        def comment(usage: Usage) -> bytes:
            priced = gateway.accounting.price(model, lane, b"", usage)
            return cost_comment(priced.cost.actual_usd, priced.cost.savings_usd) if priced.cost else b""

        relay = tap_usage(upstream.stream, strip_usage_chunk=strip_usage, on_done=book, comment=comment)
        return Stream(relay, status_code=upstream.status, headers=headers, media_type="text/event-stream")
    if upstream.status >= 400:
        count("error")
        raise UpstreamError(upstream.status, upstream.body, headers=headers)
    priced = gateway.accounting.price(model, lane, upstream.body)
    gateway.record_realtime(priced, lane=lane, upstream=provider.name, model=model, tenant=tenant, outcome="ok")
    if priced.cost is not None:
        set_cost_headers(headers, priced.cost.actual_usd, priced.cost.savings_usd)
    return Response(upstream.body, status_code=upstream.status, headers=headers, media_type=JSON)


USAGE_OPTION_ENDPOINTS = frozenset({"/chat/completions", "/completions"})


def with_usage_requested(body: bytes) -> bytes:
    """The body with `stream_options.include_usage` set, so a stream reports what it used."""
    start = body.find(b"{")
    if start >= 0 and b'"stream_options"' not in body:
        # The common case, spliced: decoding and re-encoding a large prompt would cost milliseconds.
        return body[: start + 1] + b'"stream_options":{"include_usage":true},' + body[start + 1 :]
    obj = decode_body(body)
    options = obj.get("stream_options")
    obj["stream_options"] = (options if isinstance(options, dict) else {}) | {"include_usage": True}
    return encoder.encode(obj)


async def usage_report(gateway: Gateway, tenant: str, day: str | None) -> bytes:
    """`GET /v1/usage`: the tenant's totals for one UTC day, per lane (from Redis, so they outlive restarts)."""
    day = day or time.strftime("%Y-%m-%d", time.gmtime())
    if not _DAY.match(day):
        raise BadRequest("`day` must be a UTC date like 2026-11-27.", param="day", code="invalid_value")
    await gateway.flush_totals()
    lanes: dict[str, dict[str, float]] = {}
    totals = await gateway.deferred.acc.totals(tenant, day)
    for field, value in (totals | await gateway.native.store.totals(tenant, day)).items():  # lanes never overlap
        lane, _, name = field.partition(":")
        lanes.setdefault(lane, {})[name] = value
    report: dict[str, Any] = {"object": "router.usage", "tenant": tenant, "day": day, "lanes": lanes}
    if day == time.strftime("%Y-%m-%d", time.gmtime()):
        report["limits"] = await gateway.tenants.headroom(tenant)  # what the tenant may still use, now
    return encoder.encode(report)


def make_handlers(gateway: Gateway) -> list[Any]:
    """The route handlers, closed over the gateway they serve (Anthropic's own routes: `router.messages_api`)."""
    from router import messages_api  # it builds on this module

    @post(["/v1/chat/completions", "/chat/completions"], status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(gateway, request, "/chat/completions")

    @post(["/v1/completions", "/completions"], status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(gateway, request, "/completions")

    @post(["/v1/embeddings", "/embeddings"], status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(gateway, request, "/embeddings")

    @post(["/v1/responses", "/responses"], status_code=200)
    async def responses(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(gateway, request, "/responses")

    @get(["/v1/models", "/models"])
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        authenticate(gateway, request)
        return Response(await gateway.list_models(), media_type=JSON)

    @get(["/v1/models/{model_id:str}", "/models/{model_id:str}"])
    async def model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
        authenticate(gateway, request)
        provider = gateway.upstreams.for_model(model_id)
        upstream = await provider.get(f"/models/{quote(model_id, safe='')}")
        if upstream.status >= 400:
            raise UpstreamError(upstream.status, upstream.body)
        return Response(upstream.body, media_type=JSON)

    @get(["/v1/deferred/{call_id:str}"])
    async def deferred(
        request: Request[Any, Any, Any], call_id: FromPath[str], wait: FromQuery[float] = 0.0
    ) -> Response[bytes] | Stream:
        tenant = authenticate(gateway, request)
        return await fetch_deferred(gateway, request, call_id, tenant, wait)

    @get(["/v1/usage"])
    async def usage(request: Request[Any, Any, Any], day: FromQuery[str | None] = None) -> Response[bytes]:
        tenant = authenticate(gateway, request)
        return Response(await usage_report(gateway, tenant, day), media_type=JSON)

    @get("/healthz")
    async def healthz() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        checks = await gateway.readiness()
        ok = all(checks.values())
        body = msgspec.json.encode({"status": "ok" if ok else "unavailable", "checks": checks})
        return Response(body, status_code=200 if ok else 503, media_type=JSON)

    @get("/metrics")
    async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize_metrics(gateway, request)
        body, content_type = await gateway.metrics_text()
        return Response(body, media_type=content_type)

    return [
        chat_completions,
        completions,
        embeddings,
        responses,
        models,
        model,
        deferred,
        healthz,
        readyz,
        metrics_endpoint,
        usage,
        *messages_api.make_handlers(gateway),
    ]
