"""Model routes on the real-time relay: a cascade (the cheaper model first, its answer checked, the asked-for model
when the check fails) and shadow pairs (the asked-for model answers; a sampled share also asks the cheaper one, and
the pair is judged into evidence).

A cascade's wasted cheap call is booked as a call of its own that saved a negative amount on the `route` lever, so
every lever still adds up; the latency it added to an escalated call is the `route_cascade_seconds` histogram.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response

from router.core.errors import UpstreamError
from router.core.lanes import Origin
from router.core.pricing import Cost
from router.core.schema import RequestView, decode_body, encoder
from router.deferred.replay import priced_note, set_cost_headers, with_note
from router.http.disconnect import unless_disconnected
from router.http.error_handlers import JSON
from router.http.forward import forward_realtime
from router.http.model_router import ModelRouter, Routed, judge_body, judge_verdict, same_answer
from router.telemetry import metrics
from router.telemetry.accounting import Priced
from router.telemetry.tracing import OFF, Tracing

if TYPE_CHECKING:
    from litestar.types import Receive

    from router.deferred.store.totals import RealtimeTotals
    from router.deferred.tenants import Tenants
    from router.providers.base import Provider
    from router.providers.upstreams import Upstreams
    from router.telemetry.accounting import Accounting


def wasted(priced: Priced) -> Priced:
    """A cheap answer the cascade threw away: no baseline of its own, its whole cost lost on the `route` lever."""
    if priced.cost is None:
        return priced
    paid = priced.cost.actual_usd
    return Priced(priced.usage, Cost(baseline_usd=0.0, actual_usd=paid, savings_usd=-paid, route_usd=-paid))


_HARD_FAILURES = frozenset({"finish_reason", "json", "json_schema", "tool_arguments", "refusal", "final_answer"})


class Cascade:
    """Model routes on the real-time relay: the cascade, and the shadow twins and judges that teach the routes."""

    def __init__(
        self,
        upstreams: Upstreams,
        tenants: Tenants,
        accounting: Accounting,
        realtime: RealtimeTotals,
        model_router: ModelRouter,
        tracing: Tracing = OFF,
    ) -> None:
        self.tracing = tracing
        self.upstreams = upstreams
        self.tenants = tenants
        self.accounting = accounting
        self.realtime = realtime
        self.router = model_router

    def _book(self, priced: Priced, provider: str, model: str, tenant: str, outcome: str = "ok") -> None:
        self.realtime.record(priced, origin=Origin.REALTIME, upstream=provider, model=model, tenant=tenant,
                             outcome=outcome)  # fmt: skip

    async def respond(
        self,
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
        """Ask the cheaper model; keep its answer when the checks and the evidence allow, else ask the asked-for one.
        Traced as one real-time call's span (`router.realtime`), with the route's outcome and the answer's cost.

        The tenant's budget reserves the worst case of both calls (the cheaper model's, then perhaps the asked-for
        one's) and is settled with what the answer cost, the thrown-away cheap call included."""
        view, asked_view = _view(body), _view(asked_body)
        worst = self.tenants.worst_case(routed.model, "realtime", body, view) + self.tenants.worst_case(
            routed.asked, "realtime", asked_body, asked_view
        )
        hold = "rt_" + secrets.token_hex(10)
        reserved = await self.tenants.take_realtime(tenant, hold, worst)
        spent: list[float] = []  # what the calls cost, as they are priced
        span = self.tracing.start(
            "router.realtime",
            client_headers.get("traceparent"),
            {"router.endpoint": endpoint, "gen_ai.request.model": routed.asked, "router.tenant": tenant,
             "router.upstream": provider.name, "router.stream": False},
            server=True,
        )  # fmt: skip
        try:
            answer = await self._respond(
                receive, provider, endpoint=endpoint, body=body, asked_body=asked_body, tenant=tenant,
                client_headers=client_headers, headers=headers, routed=routed, call_key=call_key, spent=spent,
            )  # fmt: skip
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            if reserved:
                await asyncio.shield(self.tenants.settle(tenant, hold, sum(spent)))
        cost, savings = headers.get("x-router-cost-usd"), headers.get("x-router-savings-usd")
        span.end(
            {"router.lane": "realtime", "http.response.status_code": answer.status_code,
             "router.route": headers.get("x-router-route"), "gen_ai.response.model": headers.get("x-router-model"),
             "router.cost_usd": float(cost) if cost else None,
             "router.savings_usd": float(savings) if savings else None,
             "router.baseline_usd": float(cost) + float(savings) if cost and savings else None}
        )  # fmt: skip
        return answer

    async def _respond(
        self,
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
        spent: list[float],
    ) -> Response[bytes]:
        router, route = self.router, routed.route
        passed = self.upstreams.passed_headers(provider.name, client_headers, tenant)
        started = time.perf_counter()
        forward = forward_realtime(provider, endpoint, body, stream=False, headers=passed)
        cheap = await unless_disconnected(receive, forward)
        request: dict[str, Any] = decode_body(body)
        response: dict[str, Any] | None = decode_body(cheap.body) if cheap.status == 200 else None
        verdict = None if response is None else router.cascade_verdict(routed, request, response, call_key)
        if response is not None and verdict is not None and verdict.verdict == "keep":
            priced = self.accounting.price(routed.model, Origin.REALTIME, cheap.body, asked=routed.asked)
            self._book(priced, provider.name, routed.model, tenant)
            spent.append(priced.cost.actual_usd if priced.cost else 0.0)
            metrics.route_decisions.labels(route.key, routed.model, "cascade_kept").inc()
            headers.update(cheap.headers)
            headers.update({"x-router-lane": "realtime", "x-router-model": routed.model,
                            "x-router-route": "cascade_kept"})  # fmt: skip
            if priced.cost is not None:
                set_cost_headers(headers, priced.cost.actual_usd, priced.cost.savings_usd)
            router.spawn(router.note(headers["x-router-request-id"], routed, tenant, priced.usage))
            note = priced_note(origin=Origin.REALTIME, call_id=headers["x-router-request-id"], model=routed.model,
                               priced=priced)  # fmt: skip
            return Response(with_note(cheap.body, note), status_code=200, headers=headers, media_type=JSON)
        # Escalate: the cheap call was paid for nothing, and the asked-for model answers.
        cheap_priced = None
        if response is not None:
            cheap_priced = self.accounting.price(routed.model, Origin.REALTIME, cheap.body)
            self._book(wasted(cheap_priced), provider.name, routed.model, tenant, "cascade_escalated")
            spent.append(cheap_priced.cost.actual_usd if cheap_priced.cost else 0.0)
        asked_provider = self.upstreams.for_model(routed.asked)
        passed = self.upstreams.passed_headers(asked_provider.name, client_headers, tenant)
        metrics.route_cascade_seconds.labels(route.key).observe(time.perf_counter() - started)
        forward = forward_realtime(asked_provider, endpoint, asked_body, stream=False, headers=passed)
        strong = await unless_disconnected(receive, forward)
        metrics.route_decisions.labels(route.key, routed.asked, "cascade_escalated").inc()
        headers.update(strong.headers)
        headers.update({"x-router-lane": "realtime", "x-router-model": routed.asked,
                        "x-router-route": "cascade_escalated"})  # fmt: skip
        if strong.status >= 400:
            self._book(Priced(None, None), asked_provider.name, routed.asked, tenant, "error")
            raise UpstreamError(strong.status, strong.body, headers=headers)
        priced = self.accounting.price(routed.asked, Origin.REALTIME, strong.body)
        self._book(priced, asked_provider.name, routed.asked, tenant)
        spent.append(priced.cost.actual_usd if priced.cost else 0.0)
        if priced.cost is not None:
            # The answer's cost includes the cheap call thrown away, lost on the `route` lever.
            lost = cheap_priced.cost.actual_usd if cheap_priced and cheap_priced.cost else 0.0
            cost = priced.cost
            total = Cost(baseline_usd=cost.baseline_usd, actual_usd=cost.actual_usd + lost,
                         savings_usd=cost.savings_usd - lost, route_usd=cost.route_usd - lost,
                         prompt_cache_usd=cost.prompt_cache_usd)  # fmt: skip
            priced = Priced(priced.usage, total)
            set_cost_headers(headers, total.actual_usd, total.savings_usd)
        if response is not None and verdict is not None and verdict.reason not in _HARD_FAILURES:
            # Both answers exist: judged, they teach the plan whether this check bucket can be trusted next time.
            key = router.cascade_key(routed, request, response)
            router.spawn(self.judge(routed, key, request, strong.body, response, client_headers, tenant))
        router.spawn(router.note(headers["x-router-request-id"], routed, tenant, priced.usage))
        note = priced_note(origin=Origin.REALTIME, call_id=headers["x-router-request-id"], model=routed.asked,
                           priced=priced)  # fmt: skip
        return Response(with_note(strong.body, note), status_code=strong.status, headers=headers, media_type=JSON)

    def learn(
        self,
        routed: Routed,
        endpoint: str,
        body: bytes,
        answer: bytes,
        client_headers: Mapping[str, str],
        tenant: str,
        headers: Mapping[str, str],
        priced: Priced,
    ) -> None:
        """After a routed real-time call: note it for feedback, and in shadow mode ask its cheaper twin (both in the
        background, so the caller never waits for them)."""
        router, call_id = self.router, headers["x-router-request-id"]
        router.spawn(router.note(call_id, routed, tenant, priced.usage))
        if router.should_shadow(routed, call_id):
            twin = self.shadow(routed, endpoint=endpoint, body=body, answer=answer, client_headers=client_headers,
                               tenant=tenant)  # fmt: skip
            router.spawn(twin)

    async def shadow(
        self, routed: Routed, *, endpoint: str, body: bytes, answer: bytes, client_headers: Mapping[str, str],
        tenant: str,
    ) -> None:  # fmt: skip
        """Ask the cheaper model the same call in the background, judge its answer against the asked-for model's,
        and book the pair as evidence; what it cost is the route's price of learning."""
        request: dict[str, Any] = decode_body(body)
        candidate = routed.route.to[0]
        provider = self.upstreams.for_model(candidate)
        passed = self.upstreams.passed_headers(provider.name, client_headers, tenant)
        twin_body = encoder.encode({**request, "model": candidate, "stream": False})
        twin = await forward_realtime(provider, endpoint, twin_body, stream=False, headers=passed)
        if twin.status != 200:
            return
        priced = self.accounting.price(candidate, Origin.REALTIME, twin.body)
        if priced.cost is not None:
            metrics.route_learning_cost.labels(routed.route.key, "shadow").inc(priced.cost.actual_usd)
        metrics.route_decisions.labels(routed.route.key, candidate, "shadowed").inc()
        await self.judge(routed, routed.task, request, answer, decode_body(twin.body), client_headers, tenant)

    async def judge(
        self,
        routed: Routed,
        task: str,
        request: Mapping[str, Any],
        asked_answer: bytes,
        candidate_answer: Mapping[str, Any],
        client_headers: Mapping[str, str],
        tenant: str,
    ) -> None:
        """Score the candidate's answer against the asked-for model's and book the pair under `task`: equal answers
        score 1; free texts that differ go to the route's judge model, or score 0 without one (a conservative
        reading: the lower bound then never credits the cheaper model with more than its agreement rate)."""
        asked = decode_body(asked_answer)
        score: float | None = None
        agreed = same_answer(request, asked, candidate_answer)
        if agreed is not None:
            score = 1.0 if agreed else 0.0
        elif routed.route.judge is None:
            score = 0.0
        else:
            judge = routed.route.judge
            provider = self.upstreams.for_model(judge)
            passed = self.upstreams.passed_headers(provider.name, client_headers, tenant)
            asking = judge_body(judge, request, asked, candidate_answer)
            reply = await forward_realtime(provider, "/chat/completions", asking, stream=False, headers=passed)
            if reply.status == 200:
                judged = self.accounting.price(judge, Origin.REALTIME, reply.body)
                if judged.cost is not None:
                    metrics.route_learning_cost.labels(routed.route.key, "judge").inc(judged.cost.actual_usd)
                score = judge_verdict(decode_body(reply.body))
        if score is None:
            return
        usage = self.accounting.price(routed.asked, Origin.REALTIME, asked_answer).usage
        await self.router.observe_pair(routed, task, routed.route.to[0], score, usage)


def _view(body: bytes) -> RequestView:
    """The routing fields of a body admission already checked (for its output cap)."""
    try:
        return msgspec.json.decode(body, type=RequestView)
    except (msgspec.DecodeError, RecursionError):
        return RequestView()
