"""The real-time relay: a call forwarded now (or on the flex tier), raced against the caller's disconnect, its
stream passed through chunk by chunk with usage read on the way, and its cost booked once and shown in headers.

Nothing here reads a request: `admission` hands over the body, the routing view, the caller's headers and the
request's ASGI `receive`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING

from litestar import Response
from litestar.response import Stream

from router.core.errors import RouterError, UpstreamError, UpstreamTimeout
from router.core.lanes import Origin
from router.core.schema import decode_body, encoder, with_fields
from router.deferred.replay import cost_comment, priced_note, set_cost_headers, with_note
from router.http.disconnect import ClientDisconnected, unless_disconnected
from router.http.error_handlers import JSON
from router.http.forward import forward_realtime
from router.http.sse import tap_usage
from router.telemetry import metrics
from router.telemetry.accounting import Priced
from router.telemetry.tracing import OFF, Span, Tracing, cost_attributes

if TYPE_CHECKING:
    from litestar.types import Receive

    from router.core.pricing import Usage
    from router.core.schema import RequestView
    from router.deferred.store.totals import RealtimeTotals
    from router.deferred.tenants import Tenants
    from router.http.answer_cache import Keeper
    from router.http.model_router import Routed

    Learn = Callable[[Routed, str, bytes, bytes, Mapping[str, str], str, Mapping[str, str], Priced], None]
    from router.providers.base import Provider
    from router.providers.upstreams import Upstreams
    from router.telemetry.accounting import Accounting

USAGE_OPTION_ENDPOINTS = frozenset({"/chat/completions", "/completions"})
"""Endpoints whose streams report usage only when asked (`stream_options.include_usage`)."""


log = logging.getLogger(__name__)


class Relay:
    """Answers a call in real time: forwarded, its tenant's limits taken first, booked once when it ends."""

    def __init__(
        self,
        upstreams: Upstreams,
        tenants: Tenants,
        accounting: Accounting,
        realtime: RealtimeTotals,
        learn: Learn | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.tracing = tracing
        self.upstreams = upstreams
        self.tenants = tenants
        self.accounting = accounting
        self.realtime = realtime
        self._settling: set[asyncio.Task[None]] = set()
        self.learn = learn
        """What a routed call teaches its model route once answered (`Cascade.learn`: a note for feedback, a shadow
        twin); None: no model routes."""

    async def respond(
        self,
        receive: Receive,
        provider: Provider,
        *,
        endpoint: str,
        body: bytes,
        view: RequestView,
        tenant: str,
        client_headers: Mapping[str, str],
        headers: dict[str, str],
        started: float,
        flex_fallback: bool = False,
        routed: Routed | None = None,
        asked_body: bytes | None = None,
        keep: Keeper | None = None,
    ) -> Response[bytes] | Stream:
        """Forward now; stream SSE through unbuffered; pass upstream errors through; price what comes back.

        `client_headers` are the caller's (those its upstream is configured to receive are passed on); `headers` are
        the answer's, begun by admission; `started` is when the call arrived (`time.perf_counter()`).
        `flex_fallback`: the router chose the flex tier, so a flex 429 may be retried on the standard tier (a
        caller who asked for flex itself gets the 429, as from the upstream).
        `routed`: the call's model route (a cheaper model may answer: the asked-for one is the baseline);
        `asked_body`: the body as the caller sent it, for a shadow twin.
        `keep`: keeps a 200 answer in the answer cache for the next identical call (a stream: a copy of it, folded
        into its answer once it ended).
        """
        asked = routed.asked if routed is not None else None
        model = view.model or ""
        origin = Origin.FLEX if view.service_tier == "flex" else Origin.REALTIME
        hold = "rt_" + secrets.token_hex(10)
        worst = self.tenants.worst_case(asked or model, origin.lane.price_tier, body, view)
        # Its budget (the worst case reserved) and `rpm`, before the upstream sees the call.
        reserved = await self.tenants.take_realtime(tenant, hold, worst)
        span = self.tracing.start(
            "router.realtime",
            client_headers.get("traceparent"),
            {"router.endpoint": endpoint, "gen_ai.request.model": model, "router.tenant": tenant,
             "router.upstream": provider.name, "router.stream": bool(view.stream)},
            server=True,
        )  # fmt: skip
        try:
            return await self._respond(
                receive, provider, span=span, endpoint=endpoint, body=body, view=view, tenant=tenant,
                client_headers=client_headers, headers=headers, started=started, flex_fallback=flex_fallback,
                routed=routed, asked_body=asked_body, keep=keep, origin=origin, hold=hold if reserved else "",
            )  # fmt: skip
        except BaseException as exc:
            span.fail(exc)
            if reserved:  # failed or cancelled: nothing was billed
                await asyncio.shield(self._settle(tenant, hold, 0.0))
            raise

    async def _settle(self, tenant: str, hold: str, cost: float) -> None:
        """End a call's budget reservation (best effort: an unsettled one lapses)."""
        try:
            await self.tenants.settle(tenant, hold, cost)
        except Exception as exc:
            log.warning("settling a budget reservation failed; it lapses by itself: %s", exc)

    def _settle_later(self, tenant: str, hold: str, priced: Priced) -> None:
        if hold:
            task = asyncio.get_running_loop().create_task(
                self._settle(tenant, hold, priced.cost.actual_usd if priced.cost else 0.0)
            )
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _finish(
        self,
        tenant: str,
        hold: str,
        priced: Priced,
        headers: dict[str, str],
        keep: Keeper | None,
        status: int,
        body: bytes,
        model: str,
    ) -> None:
        """A whole answer's last steps: settle its budget reservation, show its cost, keep it for the answer cache."""
        if hold:
            await self._settle(tenant, hold, priced.cost.actual_usd if priced.cost else 0.0)
        if priced.cost is not None:
            set_cost_headers(headers, priced.cost.actual_usd, priced.cost.savings_usd)
        if keep is not None and status == 200:
            await keep.body(body, model)

    async def _respond(
        self,
        receive: Receive,
        provider: Provider,
        *,
        span: Span,
        endpoint: str,
        body: bytes,
        view: RequestView,
        tenant: str,
        client_headers: Mapping[str, str],
        headers: dict[str, str],
        started: float,
        flex_fallback: bool,
        routed: Routed | None,
        asked_body: bytes | None,
        keep: Keeper | None,
        origin: Origin,
        hold: str,
    ) -> Response[bytes] | Stream:
        asked = routed.asked if routed is not None else None
        model = view.model or ""
        stream = bool(view.stream)
        strip_usage = False
        if (
            stream
            and endpoint in USAGE_OPTION_ENDPOINTS
            and not (view.stream_options and view.stream_options.include_usage)
        ):
            body, strip_usage = with_usage_requested(body), True  # priced from the usage chunk, hidden again below
        passed = self.upstreams.passed_headers(provider.name, client_headers, tenant)

        def count(outcome: str) -> None:
            self.realtime.record(Priced(None, None), origin=origin, upstream=provider.name, model=model, tenant=tenant,
                                 outcome=outcome)  # fmt: skip

        try:
            upstream = await unless_disconnected(
                receive, forward_realtime(provider, endpoint, body, stream=stream, headers=passed)
            )
            if flex_fallback and upstream.status == 429:
                # Flex capacity is short ("resource unavailable", not billed): the standard tier keeps the promise.
                body, origin = with_fields(body, service_tier=None), Origin.REALTIME
                forward = forward_realtime(provider, endpoint, body, stream=stream, headers=passed)
                upstream = await unless_disconnected(receive, forward)
        except ClientDisconnected:
            count("cancelled")
            raise
        except RouterError as exc:
            count("timeout" if isinstance(exc, UpstreamTimeout) else "unavailable")
            raise
        headers.update(upstream.headers)
        headers["x-router-lane"] = origin.lane.value
        metrics.proxy_overhead.observe(max(0.0, time.perf_counter() - started - upstream.elapsed))
        if upstream.stream is not None:
            headers["cache-control"] = "no-cache"

            def book(usage: Usage | None, completed: bool) -> None:
                priced = self.accounting.price(model, origin, b"", usage, asked=asked) if usage else Priced(None, None)
                self.realtime.record(priced, origin=origin, upstream=provider.name, model=model, tenant=tenant,
                                     outcome="ok" if completed else "cancelled")  # fmt: skip
                span.end(cost_attributes(origin, upstream.status, priced))
                self._settle_later(tenant, hold, priced)

            def comment(usage: Usage) -> bytes:
                priced = self.accounting.price(model, origin, b"", usage, asked=asked)
                return cost_comment(priced.cost.actual_usd, priced.cost.savings_usd) if priced.cost else b""

            source = kept(keep, upstream.status, upstream.stream, endpoint, model)
            relay = tap_usage(source, strip_usage_chunk=strip_usage, on_done=book, comment=comment)
            return Stream(relay, status_code=upstream.status, headers=headers, media_type="text/event-stream")
        if upstream.status >= 400:
            count("error")
            span.set({"http.response.status_code": upstream.status})
            raise UpstreamError(upstream.status, upstream.body, headers=headers)
        priced = self.accounting.price(model, origin, upstream.body, asked=asked)
        span.end(cost_attributes(origin, upstream.status, priced))
        self.realtime.record(priced, origin=origin, upstream=provider.name, model=model, tenant=tenant, outcome="ok")
        await self._finish(tenant, hold, priced, headers, keep, upstream.status, upstream.body, model)
        if routed is not None and self.learn is not None:
            self.learn(routed, endpoint, asked_body or body, upstream.body, client_headers, tenant, headers, priced)
        note = priced_note(origin=origin, call_id=headers.get("x-router-request-id", ""), model=model, priced=priced)
        return Response(with_note(upstream.body, note), status_code=upstream.status, headers=headers, media_type=JSON)


def kept(
    keep: Keeper | None, status: int, stream: AsyncIterator[bytes], endpoint: str, model: str
) -> AsyncIterator[bytes]:
    """The upstream's stream, copied for the answer cache as it passes when its answer may be kept (a 200)."""
    return keep.stream(stream, endpoint, model) if keep is not None and status == 200 else stream


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
