"""Deferred delivery: a call deferred to the batch lane is enqueued (or re-attached to), then answered in one of
three ways: the connection held until its result (`router.deferred.holding` keeps it alive); `202` with a call id to
poll; and with `X-Webhook-URL`, that `202` and a signed event when it ends (`router.deferred.webhooks` sends it). A
stored call is fetched with `GET /v1/deferred/{id}` (`Delivery.fetch`).

Nothing here reads a request: `admission` reads what the caller asked for into an `Asked`, and the disconnect
racing gets the request's ASGI `receive`.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

import msgspec
from litestar import Response
from litestar.response import Stream
from redis.exceptions import RedisError

from router.core import background
from router.core.deadline import format_deadline
from router.core.errors import (
    IdempotencyKeyReused,
    NotFound,
    RouterError,
    ServiceUnavailable,
    TooManyRequests,
    UpstreamTimeout,
)
from router.core.schema import encoder
from router.core.states import EnqueueOutcome
from router.deferred.replay import cost_comment, error_answer, result_note, set_cost_headers, sse_chunks, with_note
from router.deferred.store.records import ASYNC_HOLDER, deferred_object, escalated
from router.http.disconnect import unless_disconnected
from router.http.error_handlers import JSON
from router.telemetry import metrics
from router.telemetry.tracing import OFF, Tracing

if TYPE_CHECKING:
    from litestar.types import Receive

    from router.core.schema import RequestView
    from router.core.settings import Settings
    from router.deferred.holding import Holds
    from router.deferred.lane import DeferredLane
    from router.deferred.store.records import CallRecord, Result
    from router.deferred.store.results import ResultStore
    from router.deferred.waiters import ResultWaiter
    from router.providers.upstreams import Upstreams

log = logging.getLogger(__name__)
_CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Asked(msgspec.Struct, frozen=True, kw_only=True):
    """How the caller wants a deferred answer, read from its headers by `admission.delivery_asked`."""

    held: bool = True
    """Hold the connection until the answer; False: `Prefer: respond-async`, answer 202 at once."""
    webhook: str | None = None
    """`X-Webhook-URL`, checked: where a signed event goes when the call ends."""
    idempotency_key: str | None = None
    retry: bool = False
    """The client says this request retries an earlier attempt (`X-Stainless-Retry-Count` > 0)."""
    reattach: bool = True
    """A held request identical to a call whose caller is gone may take that call over (`X-Router-Reattach`)."""
    asked_model: str | None = None
    """The model the caller asked for, when a model route has a cheaper one answer (the call's cost baseline)."""
    identity: bytes | None = None
    """The body before the router's prompt-cache marks, which identical requests are told by (a retry may be
    marked where its first attempt was not)."""
    traceparent: str | None = None
    """The caller's W3C `traceparent`: the admission span continues its trace (when tracing is on)."""
    answer_key: str | None = None
    """Where the answer cache keeps the call's answer (the poller or the guard keeps it); None: not kept."""
    background: bool = False
    """`responses.create(background=True)`: answered at once with a queued `Response` (`core.background`)."""


def result_response(
    call: CallRecord, result: Result, headers: dict[str, str], *, replay: bool
) -> Response[bytes] | Stream:
    """A finished deferred call as the caller's endpoint would have answered it."""
    headers["x-router-lane"] = result.origin.lane.value
    if escalated(result.origin):
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
    if result.status >= 400:
        body = error_answer(call.meta.endpoint, result.status, result.body)
    else:
        body = with_note(result.body, result_note(call.id, call.meta.model, result))
    return Response(body, status_code=result.status, headers=headers, media_type=JSON)


class Delivery:
    """Deferred delivery: a call stored (or re-attached to), then held, answered 202, or fetched later."""

    def __init__(
        self,
        lane: DeferredLane,
        results: ResultStore,
        waiter: ResultWaiter,
        holds: Holds,
        upstreams: Upstreams,
        settings: Settings,
        tracing: Tracing = OFF,
    ) -> None:
        self.tracing = tracing
        self.lane = lane
        self.results = results
        self.waiter = waiter
        self.holds = holds
        self.upstreams = upstreams
        self.settings = settings

    async def respond(
        self,
        receive: Receive,
        *,
        endpoint: str,
        body: bytes,
        view: RequestView,
        upstream: str,
        tenant: str,
        deadline: float,
        rule: str | None,
        headers: dict[str, str],
        asked: Asked,
    ) -> Response[bytes] | Stream:
        """Enqueue a call in the batch lane (or re-attach a retry to it), then answer 202 (async) or hold the
        connection until its result (`router.deferred.holding`)."""
        holds = self.holds
        held = asked.held
        if holds.draining.is_set():
            raise ServiceUnavailable("The router is restarting; retry shortly.", retry_after=1.0, should_retry=True)
        if held:
            if holds.full():
                metrics.held_refused.inc()
                raise TooManyRequests(
                    f"The router holds as many connections as it may ({holds.cap}); retry shortly, or send "
                    "`Prefer: respond-async` to get a call id to poll.",
                    code="too_many_held_calls",
                    retry_after=2.0,
                )
            # Take the slot before the first await: a burst of arrivals must not all pass the check above while
            # each waits on Redis. `_hold` keeps it; every other way out gives it back.
            holds.enter()
        holder = holds.new_holder() if held else ASYNC_HOLDER
        kept = False
        span = self.tracing.start(
            "router.deferred.admit",
            asked.traceparent,
            {"router.lane": "batch", "router.endpoint": endpoint, "gen_ai.request.model": view.model,
             "router.tenant": tenant, "router.deadline": deadline, "router.held": held},
            server=True,
        )  # fmt: skip
        try:
            call_id, outcome = await self.lane.enqueue(
                endpoint=endpoint,
                body=body,
                view=view,
                upstream=upstream,
                tenant=tenant,
                deadline=deadline,
                rule=rule,
                idempotency_key=asked.idempotency_key,
                webhook=asked.webhook,
                holder=holder,
                retry=asked.retry,
                reattach=asked.reattach,
                asked_model=asked.asked_model,
                identity=asked.identity,
                trace=span.traceparent,
                answer_key=asked.answer_key,
            )
            if outcome == EnqueueOutcome.REUSED:
                raise IdempotencyKeyReused(call_id)
            span.end({"router.call_id": call_id, "router.enqueue": str(outcome)})
            kept = held
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            if held and not kept:
                holds.give_back()
        headers["x-router-request-id"] = call_id
        headers["x-router-lane"] = "batch"
        if outcome == EnqueueOutcome.ATTACHED:
            headers["x-router-reattached"] = "true"
        if asked.background:
            rid = background.response_id(call_id)
            content = background.shell(rid, asked.asked_model or view.model or "", int(time.time()), "queued")
            return Response(content, status_code=200, headers=headers, media_type=JSON)
        if not held:
            return await self._respond_async(call_id, headers)
        return await self._hold(receive, call_id, holder, upstream, headers)

    async def _hold(
        self, receive: Receive, call_id: str, holder: str, upstream: str, headers: dict[str, str]
    ) -> Response[bytes] | Stream:
        """Hold the connection for a stored call (its held slot already taken): its answer within one keep-alive
        interval, else a held body."""
        holds = self.holds
        handed_off = delivered = False
        try:
            call = await self.results.get_call(call_id)
            if call is None:
                raise ServiceUnavailable(
                    f"The deferred call {call_id} expired before it could be held.", call_id=call_id
                )
            headers["x-router-deadline"] = format_deadline(call.meta.deadline)  # a re-attached retry keeps the original
            # Held until the deadline, plus the guard's margin and the time an escalated call may take upstream.
            slack = self.settings.batch.margin_s + self.upstreams.timeout_s(upstream)
            hold = max(1.0, min(self.settings.batch.hold_s, call.meta.deadline - time.time() + slack))
            if call.meta.stream:
                headers["cache-control"] = "no-cache"
                handed_off = True
                return Stream(holds.sse_body(call, holder, hold), status_code=200, headers=headers,
                              media_type="text/event-stream")  # fmt: skip
            first = min(hold, self.settings.batch.keepalive_s)
            started = time.monotonic()
            result = await unless_disconnected(receive, holds.first_wait(call_id, first))
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

    async def _respond_async(self, call_id: str, headers: dict[str, str]) -> Response[bytes]:
        """`202` with the `deferred.call` object and where to fetch the answer."""
        try:
            call = await self.results.get_call(call_id)
            result = await self.results.get_result(call_id) if call is not None else None
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
        content = encoder.encode(deferred_object(call, result))
        return Response(content, status_code=202, headers=headers, media_type=JSON)

    async def fetch(self, receive: Receive, call_id: str, tenant: str, wait: float) -> Response[bytes] | Stream:
        """`GET /v1/deferred/{id}`: 202 with the call object while pending, the upstream's answer when done."""
        call = await self.results.get_call(call_id) if _CALL_ID.match(call_id) else None
        if call is None or call.meta.tenant != tenant:
            raise NotFound(f"No deferred call with id '{call_id}'.", param="id", code="deferred_call_not_found")
        wait = min(max(wait, 0.0), self.settings.limits.max_wait_s)
        if wait > 0:
            result = await unless_disconnected(receive, self.waiter.wait(call_id, wait))
        else:
            result = await self.results.get_result(call_id)
        headers = {"x-router-request-id": call_id}
        if result is None:
            call = await self.results.get_call(call_id) or call
            content = encoder.encode(deferred_object(call, None))
            return Response(content, status_code=202, headers=headers, media_type=JSON)
        if result.status == background.CANCELLED_STATUS:  # no answer: the call object, `cancelled`
            return Response(encoder.encode(deferred_object(call, result)), headers=headers, media_type=JSON)
        return result_response(call, result, headers, replay=False)
