"""Admission: one call of the OpenAI routes (or Anthropic's `/v1/messages`) from its arrival to its lane.

`Admission.admit` reads the routing fields and the headers that steer a call (`X-Deadline`, `Prefer`, `X-Webhook-URL`,
`Idempotency-Key`, `X-Stainless-Retry-Count`, `X-Router-Reattach`), asks the policies and `lanes.choose_lane` for the
lane, then hands the call to deferred delivery (`delivery.py`) or the real-time relay (`relay.py`); a call the answer
cache answers (`answer_cache.py`) goes to neither. It takes
plain facts (an `Arrival`: tenant, endpoint, body, headers), not a request; the request's ASGI `receive` only
passes through, for the disconnect racing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from router.core import background, validation
from router.core.deadline import parse_deadline
from router.core.errors import BadRequest
from router.core.lanes import NO_OUTLOOK, Lane, LaneChoice, choose_lane
from router.core.policy import Decision, Facts, decide
from router.core.schema import RequestView, decode_body, decode_view, encoder, with_fields
from router.http.delivery import Asked
from router.http.model_router import Routed, force_of
from router.providers.base import Provider
from router.telemetry import metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Response
    from litestar.response import Stream
    from litestar.types import Receive

    from router.core.policy import PolicyStore
    from router.core.settings import Settings
    from router.deferred.lane import DeferredLane
    from router.http.answer_cache import AnswerCache
    from router.http.cascade import Cascade
    from router.http.delivery import Delivery
    from router.http.prompt_cache import PromptCaching
    from router.http.relay import Relay
    from router.providers.upstreams import Upstreams


class Arrival(msgspec.Struct, frozen=True, kw_only=True):
    """A call as it reached the router, authenticated and read (header names lower-case)."""

    tenant: str
    endpoint: str
    """The route without `/v1`: `/chat/completions`, `/completions`, `/embeddings`, `/responses`, `/messages`."""
    body: bytes
    headers: Mapping[str, str] = msgspec.field(default_factory=dict)
    started: float = msgspec.field(default_factory=time.perf_counter)
    """`time.perf_counter()` when the call arrived: the router's own overhead is measured from here."""


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """Where a call goes: its upstream, what the policies decided, the model that answers it (its body and view
    name that model), and the lane `lanes.choose_lane` chose."""

    provider: Provider
    decision: Decision
    choice: LaneChoice
    body: bytes
    view: RequestView
    routed: Routed | None = None


def new_request_id() -> str:
    """An unguessable id for a real-time call."""
    return "req_" + secrets.token_urlsafe(16)


def read_deadline(headers: Mapping[str, str], now: float, max_seconds: float) -> tuple[float | None, bool]:
    """`X-Deadline` as (absolute deadline, urgent); (None, False) when absent."""
    raw = headers.get("x-deadline")
    if raw is None:
        return None, False
    deadline = parse_deadline(raw, now=now, max_seconds=max_seconds)
    return deadline, deadline is None


def prefers_async(headers: Mapping[str, str]) -> bool:
    """`Prefer: respond-async` (RFC 7240)."""
    prefer = headers.get("prefer", "")
    return any(token.strip().lower() == "respond-async" for token in prefer.split(","))


def refuse_typed_async(headers: Mapping[str, str], *, anthropic: bool) -> None:
    """A 400 for `Prefer: respond-async` from a typed SDK call, which would read the 202 `deferred.call` object as
    an empty completion: the official SDKs send `X-Stainless-Lang`, and `with_raw_response` (Python) adds
    `X-Stainless-Raw-Response`, the sign that the caller reads the raw answer."""
    if "x-stainless-lang" not in headers or headers.get("x-stainless-raw-response"):  # `true`, or `stream`
        return
    ways = (
        "`client.messages.with_raw_response.create(...)` (Python) or a plain HTTP client"
        if anthropic
        else "`client.chat.completions.with_raw_response.create(...)` (Python), "
        "`client.responses.create(..., background=True)`, or a plain HTTP client"
    )
    raise BadRequest(
        "`Prefer: respond-async` answers 202 with a `deferred.call` object, which a typed SDK call cannot read "
        f"(it would look like an empty answer). Use {ways}, and fetch the answer with GET /v1/deferred/{{id}}.",
        param="Prefer",
        code="respond_async_needs_raw_response",
    )


def is_retry(headers: Mapping[str, str]) -> bool:
    """Whether the client says this request retries an earlier attempt (the OpenAI and Anthropic SDKs send
    `X-Stainless-Retry-Count`, 0 on the first attempt)."""
    count = headers.get("x-stainless-retry-count", "0").strip()
    return count.isdigit() and int(count) > 0


def reattach_allowed(headers: Mapping[str, str]) -> bool:
    """Whether a held request may take over an identical call whose caller is gone (`X-Router-Reattach`)."""
    return headers.get("x-router-reattach", "").lower() not in ("never", "off", "false", "0")


def delivery_asked(
    headers: Mapping[str, str], webhook: str | None, routed: Routed | None = None, answer_key: str | None = None
) -> Asked:
    """How the caller wants a deferred answer, from its headers (`webhook` already checked); a routed call keeps
    the model it asked for, its cost baseline; `answer_key`: where the answer cache keeps its answer."""
    return Asked(
        held=not prefers_async(headers),
        webhook=webhook,
        idempotency_key=headers.get("idempotency-key"),
        retry=is_retry(headers),
        reattach=reattach_allowed(headers),
        traceparent=headers.get("traceparent"),
        asked_model=routed.asked if routed is not None and routed.moved else None,
        answer_key=answer_key,
    )


CASCADE_ENDPOINTS = frozenset({"/chat/completions"})
"""Where a cascade can check an answer before the caller sees it (non-streamed)."""


class Admission:
    """Admits the calls of the OpenAI routes and `/v1/messages`: reads what steers a call, decides its lane, and hands
    it to deferred delivery or the real-time relay."""

    def __init__(
        self,
        settings: Settings,
        policies: PolicyStore,
        upstreams: Upstreams,
        lane: DeferredLane,
        check_webhook: Callable[[str], str],
        relay: Relay,
        delivery: Delivery,
        cascade: Cascade,
        answers: AnswerCache,
        caching: PromptCaching,
    ) -> None:
        self.settings = settings
        self.policies = policies
        self.upstreams = upstreams
        self.lane = lane
        self.check_webhook = check_webhook
        """The caller's webhook URL if this router may deliver to it, else a 400 (`WebhookSender.check`)."""
        self.relay = relay
        self.delivery = delivery
        self.cascade = cascade
        self.model_router = cascade.router
        self.answers = answers
        self.caching = caching

    def webhook_url(self, headers: Mapping[str, str]) -> str | None:
        """`X-Webhook-URL`, checked: only with `Prefer: respond-async`, only to an allowed http(s) host."""
        url = headers.get("x-webhook-url")
        if url is None:
            return None
        if not prefers_async(headers):
            raise BadRequest(
                "`X-Webhook-URL` needs `Prefer: respond-async`; a held call gets its answer on the open connection.",
                param="X-Webhook-URL",
                code="webhook_requires_respond_async",
            )
        return self.check_webhook(url)

    def routing_view(self, body: bytes) -> RequestView:
        """The routing fields of a body (a 400 without `model`)."""
        view = decode_view(body, self.settings.limits.max_json_depth)
        if not view.model:
            raise BadRequest("you must provide a model parameter", param="model", code="missing_required_parameter")
        return view

    def decide(self, arrival: Arrival, view: RequestView, now: float) -> Decision:
        """What `X-Deadline` and the policies decide for a call."""
        header_deadline, urgent = read_deadline(arrival.headers, now, self.settings.limits.max_deadline_s)
        facts = Facts(
            path="/v1" + arrival.endpoint,
            model=view.model,
            tenant=arrival.tenant,
            headers=arrival.headers,
            metadata={k: str(v) for k, v in view.metadata.items()} if view.metadata else {},
            user=view.user,
        )
        return decide(self.policies.current, facts, header_deadline, urgent, now)

    async def plan(self, arrival: Arrival, view: RequestView, now: float, decision: Decision | None = None) -> Plan:
        """The upstream and lane for a call: `X-Deadline` and the policies decide (unless `decision` is given),
        `lanes.choose_lane` places it (reading the queue's turnaround outlook from Redis only when a batch is
        possible)."""
        assert view.model
        provider = self.upstreams.for_model(view.model)
        if decision is None:
            decision = self.decide(arrival, view, now)
        body, routed = arrival.body, None
        if self.model_router.active:
            body, view, routed = self.model_route(arrival, view, decision)
            provider = self.upstreams.for_model(view.model or "")
        model = view.model or ""
        lane = self.lane
        stream = bool(view.stream)
        caps = lane.capabilities(provider.name, arrival.endpoint, model, stream=stream)
        outlook = NO_OUTLOOK
        if decision.mode == "deferred" and caps.batch:
            outlook = await lane.outlook(provider.name, arrival.endpoint, model, now)
        chosen = choose_lane(
            decision,
            endpoint=arrival.endpoint,
            stream=stream,
            caps=caps,
            outlook=outlook,
            timing=lane.planner.timing,
            now=now,
        )
        return Plan(provider=provider, decision=decision, choice=chosen, body=body, view=view, routed=routed)

    def model_route(
        self, arrival: Arrival, view: RequestView, decision: Decision
    ) -> tuple[bytes, RequestView, Routed | None]:
        """The body and view of the model that answers (a cheaper one where the model route's evidence allows)."""
        router = self.model_router
        route = router.route_for(view.model or "", decision)
        if route is None:
            return arrival.body, view, None
        obj = decode_body(arrival.body)
        force = force_of(arrival.headers)
        task = router.task_of(route, decision, arrival.headers, obj, arrival.tenant)
        key = arrival.headers.get("idempotency-key") or arrival.body
        cascade = (
            decision.mode == "realtime" and not view.stream and arrival.endpoint in CASCADE_ENDPOINTS and force is None
        )
        routed = router.choose(route, task, key, force, cascade=cascade)
        if not routed.moved:
            return arrival.body, view, routed
        obj["model"] = routed.model
        return encoder.encode(obj), msgspec.structs.replace(view, model=routed.model), routed

    async def admit(self, arrival: Arrival, receive: Receive) -> Response[bytes] | Stream:
        """Decode the routing fields, decide the lane, and answer: deferred delivery, or the real-time relay."""
        webhook = self.webhook_url(arrival.headers)
        body = arrival.body
        view = self.routing_view(body)
        now = time.time()
        decision = self.decide(arrival, view, now)
        headers = {"x-router-request-id": new_request_id(), "x-router-lane": "realtime"}
        if decision.rule:
            headers["x-router-rule"] = decision.rule
        cached = await self.answers.lookup(
            arrival.tenant, arrival.endpoint, body, view, arrival.headers, decision,
            respond_async=prefers_async(arrival.headers),
        )  # fmt: skip
        if cached.status is not None:
            headers["x-router-cache"] = cached.status
        if cached.answer is not None:  # an identical deterministic call was answered lately: no upstream, no lane
            return self.answers.respond(cached, tenant=arrival.tenant, endpoint=arrival.endpoint, view=view,
                                        headers=headers)  # fmt: skip
        chosen = await self.plan(arrival, view, now, decision)
        provider, body, view, routed = chosen.provider, chosen.body, chosen.view, chosen.routed
        if routed is not None:
            headers.update(
                {"x-router-model": routed.model, "x-router-task": routed.task, "x-router-route": routed.reason}
            )
            if routed.reason == "cascade":
                key = arrival.headers.get("idempotency-key") or headers["x-router-request-id"]
                return await self.cascade.respond(
                    receive, provider, endpoint=arrival.endpoint, body=body, asked_body=arrival.body,
                    tenant=arrival.tenant, client_headers=arrival.headers, headers=headers, routed=routed, call_key=key,
                )  # fmt: skip
            metrics.route_decisions.labels(routed.route.key, routed.model, routed.reason).inc()
        # Marked before the lane: a batch line carries the same breakpoints as a real-time call.
        unmarked = body
        body = await self.caching.apply(
            body, kind=provider.kind, endpoint=arrival.endpoint, tenant=arrival.tenant, allowed=decision.prompt_cache
        )
        if chosen.choice.lane == Lane.BATCH:
            assert decision.deadline is not None
            # What real time would refuse is refused now, not when the batch line errors after the wait.
            validation.check(arrival.endpoint, body)
            provider.check(arrival.endpoint, body)
            asked = msgspec.structs.replace(
                delivery_asked(arrival.headers, webhook, routed, cached.digest), identity=unmarked
            )
            if arrival.endpoint == "/responses" and view.background is True:  # the SDK's own asynchronous way
                body = background.without_background(body)
                asked = msgspec.structs.replace(asked, held=False, background=True)
            elif prefers_async(arrival.headers):
                refuse_typed_async(arrival.headers, anthropic=arrival.endpoint == "/messages")
            return await self.delivery.respond(
                receive,
                endpoint=arrival.endpoint,
                body=body,
                view=view,
                upstream=provider.name,
                tenant=arrival.tenant,
                deadline=decision.deadline,
                rule=decision.rule,
                headers=headers,
                asked=asked,
            )
        flex = chosen.choice.lane == Lane.FLEX
        if chosen.choice.reason == "too_soon":
            metrics.escalations.labels("admission", "flex" if flex else "standard").inc()
        if flex:
            # No batch for it, but it can wait minutes: the flex tier costs the batch price, synchronously.
            body, view = with_fields(body, service_tier="flex"), msgspec.structs.replace(view, service_tier="flex")
        return await self.relay.respond(
            receive,
            provider,
            endpoint=arrival.endpoint,
            body=body,
            view=view,
            tenant=arrival.tenant,
            client_headers=arrival.headers,
            headers=headers,
            started=arrival.started,
            flex_fallback=flex,
            routed=routed,
            asked_body=arrival.body,
            keep=self.answers.keeper(cached, arrival.tenant),
        )
