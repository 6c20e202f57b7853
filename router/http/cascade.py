"""Model routes on the real-time relay: a cascade (the cheaper model first, its answer checked, the asked-for model
when the check fails) and shadow pairs (the asked-for model answers; a sampled share also asks the cheaper one, and
the pair is judged into evidence).

A cascade's wasted cheap call is booked as a call of its own that saved a negative amount on the `route` lever, so
every lever still adds up; the latency it added to an escalated call is the `route_cascade_seconds` histogram.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from litestar import Response
from litestar.types import Receive

from router.core.errors import UpstreamError
from router.core.pricing import Cost
from router.core.schema import decode_body, encoder
from router.deferred.lane import forward_realtime
from router.http.delivery import set_cost_headers
from router.http.disconnect import unless_disconnected
from router.http.error_handlers import JSON
from router.http.model_router import Routed, judge_body, judge_verdict, same_answer
from router.providers.base import Provider
from router.telemetry import metrics
from router.telemetry.accounting import Priced

if TYPE_CHECKING:
    from router.http.gateway import Gateway


def wasted(priced: Priced) -> Priced:
    """A cheap answer the cascade threw away: no baseline of its own, its whole cost lost on the `route` lever."""
    if priced.cost is None:
        return priced
    paid = priced.cost.actual_usd
    return Priced(priced.usage, Cost(baseline_usd=0.0, actual_usd=paid, savings_usd=-paid, route_usd=-paid))


async def respond_cascade(
    gateway: Gateway,
    receive: Receive,
    provider: Provider,
    *,
    endpoint: str,
    body: bytes,
    asked_body: bytes,
    tenant: str,
    client_headers: Mapping[str, str],
    headers: dict[str, str],
    routed: Routed,
    call_key: str,
) -> Response[bytes]:
    """Ask the cheaper model; keep its answer when the checks and the evidence allow, else ask the asked-for one."""
    await gateway.tenants.admit_realtime(tenant)
    router = gateway.model_router
    route = routed.route
    passed = gateway.upstreams.passed_headers(provider.name, client_headers, tenant)
    started = time.perf_counter()
    cheap = await unless_disconnected(receive, forward_realtime(provider, endpoint, body, stream=False, headers=passed))
    request: dict[str, Any] = decode_body(body)
    response: dict[str, Any] | None = decode_body(cheap.body) if cheap.status == 200 else None
    verdict = None if response is None else router.cascade_verdict(routed, request, response, call_key)
    if response is not None and verdict is not None and verdict.verdict == "keep":
        priced = gateway.accounting.price(routed.model, "realtime", cheap.body, asked=routed.asked)
        gateway.record_realtime(priced, lane="realtime", upstream=provider.name, model=routed.model, tenant=tenant,
                                outcome="ok")  # fmt: skip
        metrics.route_decisions.labels(route.key, routed.model, "cascade_kept").inc()
        headers.update(cheap.headers)
        headers.update({"x-router-lane": "realtime", "x-router-model": routed.model, "x-router-route": "cascade_kept"})
        if priced.cost is not None:
            set_cost_headers(headers, priced.cost.actual_usd, priced.cost.savings_usd)
        router.spawn(router.note(headers["x-router-request-id"], routed, tenant, priced.usage))
        return Response(cheap.body, status_code=200, headers=headers, media_type=JSON)
    # Escalate: the cheap call was paid for nothing, and the asked-for model answers.
    cheap_priced = gateway.accounting.price(routed.model, "realtime", cheap.body) if response is not None else None
    if cheap_priced is not None:
        gateway.record_realtime(wasted(cheap_priced), lane="realtime", upstream=provider.name, model=routed.model,
                                tenant=tenant, outcome="cascade_escalated")  # fmt: skip
    asked_provider = gateway.upstreams.for_model(routed.asked)
    passed = gateway.upstreams.passed_headers(asked_provider.name, client_headers, tenant)
    metrics.route_cascade_seconds.labels(route.key).observe(time.perf_counter() - started)
    strong = await unless_disconnected(
        receive, forward_realtime(asked_provider, endpoint, asked_body, stream=False, headers=passed)
    )
    metrics.route_decisions.labels(route.key, routed.asked, "cascade_escalated").inc()
    headers.update(strong.headers)
    headers.update({"x-router-lane": "realtime", "x-router-model": routed.asked, "x-router-route": "cascade_escalated"})
    if strong.status >= 400:
        gateway.record_realtime(Priced(None, None), lane="realtime", upstream=asked_provider.name, model=routed.asked,
                                tenant=tenant, outcome="error")  # fmt: skip
        raise UpstreamError(strong.status, strong.body, headers=headers)
    priced = gateway.accounting.price(routed.asked, "realtime", strong.body)
    gateway.record_realtime(priced, lane="realtime", upstream=asked_provider.name, model=routed.asked, tenant=tenant,
                            outcome="ok")  # fmt: skip
    if priced.cost is not None:
        wasted_usd = cheap_priced.cost.actual_usd if cheap_priced and cheap_priced.cost else 0.0
        set_cost_headers(headers, priced.cost.actual_usd + wasted_usd, priced.cost.savings_usd - wasted_usd)
    if response is not None and verdict is not None and verdict.reason not in _HARD_FAILURES:
        # Both answers exist: judged, they teach the plan whether this check bucket can be trusted next time.
        key = router.cascade_key(routed, request, response)
        router.spawn(judge_and_observe(gateway, routed, key, request, strong.body, response, client_headers, tenant))
    router.spawn(router.note(headers["x-router-request-id"], routed, tenant, priced.usage))
    return Response(strong.body, status_code=strong.status, headers=headers, media_type=JSON)


_HARD_FAILURES = frozenset({"finish_reason", "json", "json_schema", "tool_arguments", "refusal", "final_answer"})


async def shadow(
    gateway: Gateway,
    routed: Routed,
    *,
    endpoint: str,
    body: bytes,
    answer: bytes,
    client_headers: Mapping[str, str],
    tenant: str,
) -> None:
    """Ask the cheaper model the same call in the background, judge its answer against the asked-for model's, and
    book the pair as evidence; what it cost is the route's price of learning."""
    request: dict[str, Any] = decode_body(body)
    candidate = routed.route.to[0]
    provider = gateway.upstreams.for_model(candidate)
    passed = gateway.upstreams.passed_headers(provider.name, client_headers, tenant)
    shadow_body = encoder.encode({**request, "model": candidate, "stream": False})
    twin = await forward_realtime(provider, endpoint, shadow_body, stream=False, headers=passed)
    priced = gateway.accounting.price(candidate, "realtime", twin.body) if twin.status == 200 else None
    if priced is not None and priced.cost is not None:
        metrics.route_learning_cost.labels(routed.route.key, "shadow").inc(priced.cost.actual_usd)
    if twin.status != 200:
        return
    metrics.route_decisions.labels(routed.route.key, candidate, "shadowed").inc()
    await judge_and_observe(gateway, routed, routed.task, request, answer, decode_body(twin.body), client_headers,
                            tenant, candidate=candidate)  # fmt: skip


async def judge_and_observe(
    gateway: Gateway,
    routed: Routed,
    task: str,
    request: Mapping[str, Any],
    asked_answer: bytes,
    candidate_answer: Mapping[str, Any],
    client_headers: Mapping[str, str],
    tenant: str,
    *,
    candidate: str | None = None,
) -> None:
    """Score the candidate's answer against the asked-for model's and book the pair under `task`: equal answers
    score 1; free texts that differ go to the route's judge model, or score 0 without one (a conservative reading:
    the lower bound then never credits the cheaper model with more than its agreement rate)."""
    asked = decode_body(asked_answer)
    score: float | None = None
    agreed = same_answer(request, asked, candidate_answer)
    if agreed is not None:
        score = 1.0 if agreed else 0.0
    elif routed.route.judge is None:
        score = 0.0
    else:
        judge = routed.route.judge
        provider = gateway.upstreams.for_model(judge)
        passed = gateway.upstreams.passed_headers(provider.name, client_headers, tenant)
        asking = judge_body(judge, request, asked, candidate_answer)
        reply = await forward_realtime(provider, "/chat/completions", asking, stream=False, headers=passed)
        if reply.status == 200:
            judged = gateway.accounting.price(judge, "realtime", reply.body)
            if judged.cost is not None:
                metrics.route_learning_cost.labels(routed.route.key, "judge").inc(judged.cost.actual_usd)
            score = judge_verdict(decode_body(reply.body))
    if score is None:
        return
    usage = gateway.accounting.price(routed.asked, "realtime", asked_answer).usage
    await gateway.model_router.observe_pair(routed, task, candidate or routed.route.to[0], score, usage)
