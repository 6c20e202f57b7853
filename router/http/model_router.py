"""Model routes at serve time: which model answers a call, the cascade's second opinion, shadow pairs, feedback.

The gateway builds one `ModelRouter` from the settings' routes (none: every call keeps its model, at no cost).
Plans are made off the call path: `run` re-reads each route's evidence from Redis every `REFRESH_S` and makes its
plan; a call only reads the plan (`choose`: a dictionary look-up, and a hash when a task is split). Evidence comes
from `hybrid-router routes learn`, from shadow pairs judged here, and from `POST /v1/feedback`.

A call's task: the policy rule's `task`, else `X-Router-Task`, else `metadata.task`, else the tenant (with `auth:
keys`), else the prompt's shape (`auto:text`, `auto:json`, `auto:tools`, with an embedding cluster when the
`embeddings` extra is installed and the route learned clusters). `X-Router-Route: off` keeps the asked-for model,
`force` takes the cheapest candidate whatever the evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from router.core.errors import BadRequest, NotFound
from router.core.model_routes import Route
from router.core.policy import Decision as PolicyDecision
from router.core.policy import RouteOverride
from router.core.pricing import PriceTable, Usage
from router.core.schema import decode_body
from router.modelroutes.cascade import CascadeDecision, decide_cascade, evidence_key
from router.modelroutes.checks import answer_text, check_answer
from router.modelroutes.decision import decide, shadowed
from router.modelroutes.embeddings import ClusterIndex, Embedder, load_embedder
from router.modelroutes.plan import Plan, TaskPlan, make_plan
from router.modelroutes.store import EvidenceStore, Observation
from router.modelroutes.tasks import auto_task, features, metadata_task, resolve_task
from router.telemetry import metrics

log = logging.getLogger(__name__)

REFRESH_S = 5.0
"""How often each route's plan is remade from the evidence in Redis."""
NOTE_TTL_S = 86_400
"""How long a routed call can receive feedback (a note is about 200 bytes of Redis per routed call)."""
MAX_EXPORTED_TASKS = 50
"""Tasks per route exported as metrics (the ones with the most evidence): labels stay bounded."""

Force = Literal["asked", "route"]


# Feedback for one model of a task waits in a pool until a score for the other model of the same route and task
# arrives; the two then form a pair. Random pairing of independent scores estimates the same ratio of means.
_PAIR = """
local other = redis.call('RPOP', KEYS[2])
if other then return other end
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, 999)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return false
"""


class Routed(msgspec.Struct, frozen=True, kw_only=True):
    """The model route of one call: which model answers it and why."""

    route: Route
    task: str
    asked: str
    model: str
    reason: str

    @property
    def moved(self) -> bool:
        """Whether a model other than the one asked for answers."""
        return self.model != self.asked


class Note(msgspec.Struct, frozen=True, kw_only=True):
    """What feedback on a routed call needs to know of it."""

    source: str
    task: str
    asked: str
    model: str
    tenant: str
    tokens_in: int = 0
    tokens_out: int = 0


class Feedback(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /v1/feedback`: a score (higher is better) for the answer of a call, by its `x-router-request-id`."""

    call_id: str
    score: float | bool | None = None
    scores: dict[str, float | bool] | None = None
    """Scores per model, when both models of a pair were seen (a shadowed or cascaded call)."""


_FEEDBACK = msgspec.json.Decoder(Feedback)


def decode_feedback(body: bytes) -> Feedback:
    """A `POST /v1/feedback` body, or a 400 naming what is wrong."""
    try:
        return _FEEDBACK.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadRequest(f"Invalid feedback: {exc}", code="invalid_feedback") from exc


def _score(value: float | bool) -> float:
    return 1.0 if value is True else 0.0 if value is False else float(value)


def _override(route: Route, change: RouteOverride) -> Route:
    fields = {name: getattr(change, name) for name in ("mode", "quality_target", "to", "shadow_rate")}
    return msgspec.structs.replace(route, **{k: v for k, v in fields.items() if v is not None})


def force_of(headers: Mapping[str, str]) -> Force | None:
    """`X-Router-Route`: `off` keeps the asked-for model, `force` takes the cheapest candidate; else None."""
    value = headers.get("x-router-route", "").strip().lower()
    if value in ("off", "false", "0", "never"):
        return "asked"
    if value in ("force", "always"):
        return "route"
    if value in ("", "on", "auto"):
        return None
    raise BadRequest("`X-Router-Route` must be `off`, `on` or `force`.", param="X-Router-Route", code="invalid_value")


class ModelRouter:
    """The settings' model routes, their current plans, and the evidence they learn from."""

    def __init__(self, routes: list[Route], store: EvidenceStore, prices: PriceTable, *, tenant_tasks: bool) -> None:
        self.routes = {route.source: route for route in routes}
        self.store = store
        self.prices = prices
        self.tenant_tasks = tenant_tasks
        self._variants: dict[bytes, Route] = {msgspec.json.encode(r): r for r in routes}
        self._plans: dict[bytes, Plan] = {}
        self._clusters: dict[str, ClusterIndex] = {}
        self._embedder: Embedder | None = None
        self._embedder_loaded = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._exported: dict[str, set[tuple[str, ...]]] = {}
        """The label sets of the route gauges set at the last refresh, per route, so stale ones are removed."""

    @property
    def active(self) -> bool:
        """Whether any route is declared."""
        return bool(self.routes)

    def route_for(self, model: str, decision: PolicyDecision) -> Route | None:
        """The route of a call asking for `model`, as its policy rule changes it (`off`: none)."""
        route = self.routes.get(model)
        if route is None or decision.route in ("off", False):
            return None
        if isinstance(decision.route, RouteOverride):
            route = _override(route, decision.route)
            self._variants.setdefault(msgspec.json.encode(route), route)
        return route

    def task_of(
        self, route: Route, decision: PolicyDecision, headers: Mapping[str, str], body: Mapping[str, Any], tenant: str
    ) -> str:
        """The call's task (see the module docstring for the order)."""
        named = resolve_task(
            rule=decision.task,
            header=headers.get("x-router-task"),
            metadata=metadata_task(body),
            tenant=tenant if self.tenant_tasks else None,
        )
        if named is not None:
            return named
        feats = features(body)
        index = self._clusters.get(route.key)
        if index is not None and feats.shape == "text" and (embedder := self._embedder) is not None:
            return auto_task(feats, int(index.nearest(embedder.embed_one(feats.text))[0]))  # about 0.2 ms
        return auto_task(feats)

    def choose(
        self, route: Route, task: str, call_key: str | bytes, force: Force | None, *, cascade: bool = False
    ) -> Routed:
        """The model that answers one call of `task`, from the route's current plan. A cascade route asks its
        cheapest candidate first where the call can be cascaded (`cascade`), else keeps the asked-for model."""
        if route.mode == "cascade" and force is None:
            model, reason = (route.to[0], "cascade") if cascade else (route.source, "cascade_ineligible")
            return Routed(route=route, task=task, asked=route.source, model=model, reason=reason)
        plan = self._plans.get(msgspec.json.encode(route))
        if route.mode == "shadow" and force is None:
            force = "asked"  # shadow only learns; `force` still lets a caller try the route
        chosen = decide(route, plan, task, call_key, force=force)
        reason = "shadow" if route.mode == "shadow" and chosen.reason == "opt_out" else chosen.reason
        return Routed(route=route, task=task, asked=route.source, model=chosen.model, reason=reason)

    def cascade_verdict(
        self, routed: Routed, request: Mapping[str, Any], response: Mapping[str, Any], call_key: str
    ) -> CascadeDecision:
        """Keep or escalate a cheaper model's answer: its checks, then the evidence of its check bucket."""
        route = routed.route
        report = check_answer(request, response, route.cascade)
        plan = self._plans.get(msgspec.json.encode(route))
        return decide_cascade(route, plan, routed.task, report, call_key)

    def cascade_key(self, routed: Routed, request: Mapping[str, Any], response: Mapping[str, Any]) -> str:
        """The evidence key of a cheaper answer in a cascade (its task and check bucket)."""
        return evidence_key(routed.task, check_answer(request, response, routed.route.cascade), routed.route.cascade)

    async def refresh(self, now: float | None = None) -> None:
        """Remake every route's plan from the evidence in Redis, and export what the evidence says."""
        now = time.time() if now is None else now
        for key, route in list(self._variants.items()):
            evidence = await self.store.evidence(route)
            plan = make_plan(route, evidence, now=now, price=self.prices.realtime_usd, cascade=route.mode == "cascade")
            self._plans[key] = plan
            metrics.route_moved_share.labels(route.key).set(plan.moved_share)
            clusters = await self.store.clusters(route)
            if clusters is not None:
                if not self._embedder_loaded:  # loaded once, off the event loop, before any call needs it
                    self._embedder_loaded = True
                    self._embedder = await asyncio.to_thread(load_embedder)
                self._clusters[route.key] = ClusterIndex(clusters)

            def calls(item: tuple[str, TaskPlan]) -> float:
                return max((e.calls for e in item[1].estimates.values()), default=0.0)

            for labels in self._exported.pop(route.key, set()):  # tasks no longer exported leave no stale series
                with contextlib.suppress(KeyError):
                    (metrics.route_evidence if len(labels) == 2 else metrics.route_quality).remove(*labels)
            shown = self._exported.setdefault(route.key, set())
            for task, task_plan in sorted(plan.tasks.items(), key=calls, reverse=True)[:MAX_EXPORTED_TASKS]:
                shown.add((route.key, task))
                metrics.route_evidence.labels(route.key, task).set(calls((task, task_plan)))
                for model, estimate in task_plan.estimates.items():
                    if math.isfinite(estimate.lower):
                        metrics.route_quality.labels(route.key, task, model).set(estimate.lower)
                        shown.add((route.key, task, model))

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the plans every `REFRESH_S` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.refresh()
            except Exception as exc:  # a Redis outage: keep the last plans, try again later
                log.warning("model routes: cannot refresh the plans: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, work: Any) -> None:
        """Run learning work (a shadow pair, a note) in the background; it never delays or fails the call."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("model routes: learning step failed: %s", exc)

    def should_shadow(self, routed: Routed, call_key: str | bytes) -> bool:
        """Whether this call's cheaper twin is also asked (a `shadow_rate` share of a shadow route's calls)."""
        return routed.route.mode == "shadow" and routed.reason == "shadow" and shadowed(routed.route, call_key)

    # --- notes and feedback --------------------------------------------------------------------------------------

    def _note_key(self, call_id: str) -> str:
        return f"{self.store.prefix}:mr:note:{call_id}"

    async def note(self, call_id: str, routed: Routed, tenant: str, usage: Usage | None) -> None:
        """Remember a routed call for `NOTE_TTL_S`, so feedback on it can be booked as evidence."""
        note = Note(
            source=routed.route.source,
            task=routed.task,
            asked=routed.asked,
            model=routed.model,
            tenant=tenant,
            tokens_in=usage.input_tokens if usage else 0,
            tokens_out=usage.output_tokens if usage else 0,
        )
        await self.store.client.set(self._note_key(call_id), msgspec.msgpack.encode(note), ex=NOTE_TTL_S)

    async def feedback(self, tenant: str, feedback: Feedback, now: float | None = None) -> dict[str, Any]:
        """Book a caller's score of a routed call as evidence; 404 for a call that is not its own or not routed."""
        now = time.time() if now is None else now
        raw = await self.store.client.get(self._note_key(feedback.call_id))
        note = None if raw is None else msgspec.msgpack.decode(raw.encode() if isinstance(raw, str) else raw, type=Note)
        if note is None or note.tenant != tenant or note.source not in self.routes:
            raise NotFound(f"No routed call found with id '{feedback.call_id}'.", param="call_id")
        route = self.routes[note.source]
        scores = dict(feedback.scores or {})
        if feedback.score is not None:
            scores[note.model] = feedback.score
        if not scores:
            raise BadRequest("Send `score` (or `scores` by model).", param="score", code="missing_required_parameter")
        unknown = [m for m in scores if m != route.source and m not in route.to]
        if unknown:
            raise BadRequest(f"{unknown[0]!r} is not a model of this call's route.", param="scores")
        paired = 0
        asked = scores.pop(route.source, None)
        for model, value in scores.items():
            if asked is not None:
                paired += await self._observe(route, note, model, _score(asked), _score(value), now)
            else:
                paired += await self._pool(route, note, model, _score(value), now, asked_side=False)
        if asked is not None and not scores:
            for model in route.to:
                paired += await self._pool(route, note, model, _score(asked), now, asked_side=True)
        return {"object": "feedback", "call_id": feedback.call_id, "task": note.task, "pairs": paired}

    async def _observe(self, route: Route, note: Note, model: str, asked: float, value: float, now: float) -> int:
        observation = Observation(model, asked, value, tokens_in=note.tokens_in, tokens_out=note.tokens_out)
        return await self.store.observe(route, note.task, [observation], now=now)

    async def _pool(self, route: Route, note: Note, model: str, score: float, now: float, *, asked_side: bool) -> int:
        """Wait for the other side's score of the same route, task and candidate; pair them when it is there."""
        base = self.store.evidence_key(route, note.task)
        mine, theirs = (f"{base}:fb:asked:{model}", f"{base}:fb:{model}")
        if not asked_side:
            mine, theirs = theirs, mine
        other = await self.store.client.eval(_PAIR, 2, mine, theirs, repr(score), int(route.half_life_s))
        if other is None:
            return 0
        partner = float(other.decode() if isinstance(other, bytes) else other)
        asked, value = (score, partner) if asked_side else (partner, score)
        return await self._observe(route, note, model, asked, value, now)

    # --- judging pairs -------------------------------------------------------------------------------------------

    async def observe_pair(self, routed: Routed, task: str, model: str, score: float, usage: Usage | None) -> None:
        """Book one judged pair: the asked-for model's answer scores 1, the candidate's `score`."""
        tokens_in, tokens_out = (usage.input_tokens, usage.output_tokens) if usage else (0, 0)
        observation = Observation(model, 1.0, score, tokens_in=tokens_in, tokens_out=tokens_out)
        await self.store.observe(routed.route, task, [observation], now=time.time())


def same_answer(request: Mapping[str, Any], asked: Mapping[str, Any], candidate: Mapping[str, Any]) -> bool | None:
    """Whether two answers agree: JSON equality for structured output and tool calls, exact text otherwise; None
    when they differ in free text (a judge model may still call them equivalent)."""
    a, b = answer_text(asked), answer_text(candidate)
    calls = [_tool_calls(asked), _tool_calls(candidate)]
    if calls[0] or calls[1]:
        return calls[0] == calls[1]
    structured = isinstance(request.get("response_format"), Mapping) or isinstance(request.get("tools"), list)
    if structured:
        try:
            return bool(decode_body(a.encode()) == decode_body(b.encode()))
        except BadRequest:
            return a.strip() == b.strip()
    if a.strip() == b.strip():
        return True
    return None


def _tool_calls(response: Mapping[str, Any]) -> list[tuple[str, Any]]:
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return []
    message = choices[0].get("message")
    calls = message.get("tool_calls") if isinstance(message, Mapping) else None
    out: list[tuple[str, Any]] = []
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            try:
                arguments = msgspec.json.decode(str(function.get("arguments", "")))
            except msgspec.DecodeError:
                arguments = function.get("arguments")
            out.append((str(function.get("name")), arguments))
    return out


JUDGE_PROMPT = (
    "You compare two answers to the same request. Reply with one word: YES if the second answer is as good as the "
    "first for the request (same facts, same conclusion, same format), otherwise NO.\n\n"
    "Request:\n{request}\n\nFirst answer:\n{first}\n\nSecond answer:\n{second}"
)


def judge_body(model: str, request: Mapping[str, Any], asked: Mapping[str, Any], candidate: Mapping[str, Any]) -> bytes:
    """The chat request that asks a judge model whether the candidate's answer is as good as the asked-for one."""
    messages = request.get("messages")
    shown = msgspec.json.encode(messages if isinstance(messages, list) else request.get("input", "")).decode()
    first, second = answer_text(asked)[:4000], answer_text(candidate)[:4000]
    prompt = JUDGE_PROMPT.format(request=shown[:8000], first=first, second=second)
    return msgspec.json.encode(
        {"model": model, "temperature": 0, "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
    )


def judge_verdict(response: Mapping[str, Any]) -> float | None:
    """A judge's YES (1.0) or NO (0.0); None when it said neither."""
    word = answer_text(response).strip().strip(".!").upper()
    return 1.0 if word.startswith("YES") else 0.0 if word.startswith("NO") else None
