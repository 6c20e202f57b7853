"""`hybrid-router estimate`: monthly what-if savings from a request log replayed through the policies and prices.

Both halves of the bill: the calls that can wait go to the batch (or flex) lane, and model routes (`--route`, or the
config's `routes`) answer a share of the asked-for model's calls with a cheaper one. Savings are split by lever
(batch, flex, route) the way the router books them in its headers, `/v1/usage` and `/metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from router.core.deadline import ACCEPTED_FORMS, format_deadline, parse_deadline
from router.core.errors import InvalidDeadline
from router.core.lanes import Capabilities, Catalog, Lane, LaneChoice, Outlook, Planner, choose_lane
from router.core.model_routes import Mode, parse_route
from router.core.model_routes import Route as ModelRoute
from router.core.policy import Decision, Facts, Policies, RouteOverride, decide, load_policies
from router.core.pricing import Cost, PriceTable, Usage, load_pricing
from router.core.settings import DEFAULT_CONFIG, Settings, load_settings

DAYS_PER_MONTH = 30.0
MIN_SPAN_S = 3600.0  # a shorter log says too little about a month to be scaled by its own span
ASSUMED_PERIOD_DAYS = 1.0
MAX_PROBLEMS = 100  # malformed lines kept with their numbers; the rest are only counted
PROGRESS_BYTES = 10 * 1024 * 1024  # about 50,000 lines of a typical log
DEFAULT_PATH = "/v1/chat/completions"

Tokens = Annotated[int, msgspec.Meta(ge=0)]
PeriodSource = Literal["measured", "flag", "assumed"]
Lever = Literal["batch", "flex", "route"]
LEVERS: tuple[Lever, ...] = ("batch", "flex", "route")

DEFAULT_MOVED_SHARE: dict[Mode, float] = {"predict": 0.39, "cascade": 0.41, "shadow": 0.0}
"""The share of a route's calls a cheaper model answers when `--moved-share` is not given, as measured by
`bench/routing.py` on public data (docs/routing.md, five seeds, quality target 0.95, budget allocation): predict on
MMLU by subject sends 61.1% of the calls to the strong model, so 38.9% move; a cascade with checks and evidence on
GSM8K escalates 59.3%, so 40.7% of its cheap answers are kept. A shadow route moves nothing: it only learns."""
CASCADE_ENDPOINTS = frozenset({"/chat/completions"})
"""Where the router can cascade a call (non-streamed chat calls in real time; router/http/admission.py)."""


class LogLine(msgspec.Struct, frozen=True, kw_only=True):
    """One logged call; other fields are ignored, so any log that carries these will do."""

    timestamp: str | float  # RFC 3339 (no zone: UTC) or Unix seconds
    model: str
    input_tokens: Tokens
    output_tokens: Tokens
    cached_tokens: Tokens = 0
    endpoint: str | None = None
    path: str | None = None
    deadline: str | None = None  # an X-Deadline value, relative to `timestamp`
    headers: dict[str, str] | None = None
    metadata: dict[str, Any] | None = None  # values are compared as strings, as the router does
    user: str | None = None
    tenant: str | None = None  # the router's tenant without proxy keys: "default"


_DECODER = msgspec.json.Decoder(LogLine)


class Problem(msgspec.Struct, frozen=True):
    """A malformed line: its 1-based number and what is wrong with it."""

    line: int
    problem: str


class ModelEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One model: counts as logged, dollars per month (None when the model has no price)."""

    model: str
    calls: int
    deferred_calls: int
    tokens: int
    deferred_tokens: int
    cost_now_usd_month: float | None
    cost_batch_usd_month: float | None
    savings_usd_month: float | None


class LeverEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One lever's savings per month, and the real-time price of the calls it acts on."""

    lever: Lever
    savings_usd_month: float
    applies_to_usd_month: float
    """Batch, flex: the real-time price of the calls answered in that lane. Route: of the calls its routes cover."""
    savings_pct: float
    """Savings as a percentage of `applies_to_usd_month`: what the lever takes off the part of the bill it acts on."""
    bill_pct: float
    """Savings as a percentage of the whole bill (`cost_now_usd_month`)."""


class RouteEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One model route over the log: the calls it covers, the share a cheaper model answers, what it saves."""

    route: str
    """`<asked-for model>><candidate>`, as the router's metrics name it."""
    mode: Mode
    moved_share: float
    """The share of the calls it can move that a cheaper model answers (`--moved-share`, or its mode's default)."""
    calls: int
    """Priced calls of the asked-for model the route covers (neither a policy rule nor `X-Router-Route` turned it
    off)."""
    moved_calls: float
    """Calls the cheaper model is expected to answer: `moved_share` of those it can take (a cascade: real-time chat
    calls; forced calls always), plus the forced ones."""
    cost_now_usd_month: float
    """The real-time price of the calls it covers: the part of the bill the route lever acts on."""
    savings_usd_month: float
    """The route lever: the asked-for model's real-time price less the cheaper model's, on the moved calls (a
    cascade's escalated calls lose the cheap call they paid for)."""
    learning_usd_month: float
    """Shadow calls to the cheaper model (`shadow_rate` of the real-time calls): the price of learning, not in the
    savings."""


class Estimate(msgspec.Struct, frozen=True, kw_only=True, tag_field="mode", tag="log"):
    """A log's traffic per month, now and with batch routing; unpriced models are left out of the dollars."""

    cost_now_usd_month: float
    cost_batch_usd_month: float
    savings_usd_month: float
    savings_pct: float
    calls: int
    tokens: int
    deferred_calls: int
    deferred_tokens: int
    deferred_calls_pct: float
    deferred_tokens_pct: float
    unpriced_calls: int
    unpriced_tokens: int
    models: list[ModelEstimate]
    unpriced_models: list[ModelEstimate]
    first_timestamp: str | None
    last_timestamp: str | None
    period_days: float
    period_source: PeriodSource
    month_factor: float
    malformed_lines: int
    problems: list[Problem]
    levers: list[LeverEstimate] = msgspec.field(default_factory=list)
    """Savings by lever (batch, flex, route): they add up to `savings_usd_month`."""
    routes: list[RouteEstimate] = msgspec.field(default_factory=list)
    learning_usd_month: float = 0.0


class WhatIf(msgspec.Struct, frozen=True, kw_only=True, tag_field="mode", tag="what-if"):
    """The headline number without a log: spend x batch-eligible share x (1 - batch price ratio)."""

    cost_now_usd_month: float
    cost_batch_usd_month: float
    savings_usd_month: float
    savings_pct: float
    batch_share: float
    batch_ratio: float


class _Tally(msgspec.Struct):
    calls: int = 0
    deferred_calls: int = 0
    tokens: int = 0
    deferred_tokens: int = 0
    now_usd: float = 0.0
    batch_usd: float = 0.0
    priced: bool = True


class _Levers(msgspec.Struct):
    """Each lever's savings and the real-time price of the calls it acts on, over the log (not yet per month)."""

    saved: dict[str, float] = msgspec.field(default_factory=lambda: dict.fromkeys(LEVERS, 0.0))
    applies_to: dict[str, float] = msgspec.field(default_factory=lambda: dict.fromkeys(LEVERS, 0.0))


class _RouteTally(msgspec.Struct):
    route: ModelRoute
    calls: int = 0
    moved: float = 0.0
    now_usd: float = 0.0
    saved_usd: float = 0.0
    learning_usd: float = 0.0


class Part(msgspec.Struct, frozen=True):
    """One way a logged call is answered: with probability `weight`, by `model` in `lane`; `wasted` is a cascade's
    cheap call paid for and thrown away before it."""

    weight: float
    model: str
    lane: Lane
    wasted: str | None = None


class Answered(msgspec.Struct, frozen=True):
    """How the router would answer one logged call: the lane it places the asked-for model in, the ways it is
    answered (in expectation), the model route covering it (None: none does), and whether it is shadowed."""

    lane: LaneChoice
    parts: list[Part]
    route: ModelRoute | None = None
    shadowed: bool = False


class LaneChooser:
    """The router's lane for a logged call: `lanes.choose_lane`, as `serve` decides it, with each queue's turnaround
    model at its prior (a log has no batch history) and no probes."""

    def __init__(self, policies: Policies, settings: Settings, prices: PriceTable) -> None:
        self.policies = policies
        self.max_deadline_s = settings.limits.max_deadline_s
        catalog = Catalog(settings.upstreams, lambda model: prices.rates(model, "flex") is not None)
        self.planner = Planner(settings.batch, catalog)
        self.outlook = Outlook(quantile_s=self.planner.model.quantile([], 0.0))

    def choose_lane(self, line: LogLine, at: float) -> LaneChoice:
        """Where the router would send this call; InvalidDeadline where it would have answered 400."""
        decision, endpoint = self.decide(line, at)
        return self.place(decision, endpoint, line.model, at)

    def decide(self, line: LogLine, at: float) -> tuple[Decision, str]:
        """The policies' decision for this call (made on the model it asks for) and its endpoint."""
        headers = {name.lower(): value for name, value in (line.headers or {}).items()}
        raw = line.deadline if line.deadline is not None else headers.get("x-deadline")
        header = None if raw is None else parse_deadline(raw, now=at, max_seconds=self.max_deadline_s)
        path = _path(line.endpoint or line.path or DEFAULT_PATH)
        metadata = {key: str(value) for key, value in (line.metadata or {}).items()}
        tenant = line.tenant or "default"
        facts = Facts(path=path, model=line.model, tenant=tenant, headers=headers, metadata=metadata, user=line.user)
        return decide(self.policies, facts, header, raw is not None and header is None, at), path.removeprefix("/v1")

    def place(self, decision: Decision, endpoint: str, model: str, at: float) -> LaneChoice:
        """The lane of a call answered by `model` (a model route's candidate is placed on its own upstream)."""
        upstream = self.planner.catalog.upstream_for(model)
        caps = (
            self.planner.catalog.of(upstream.name, endpoint, model)
            if upstream is not None
            else Capabilities(batch=False, flex=False)
        )
        timing, outlook = self.planner.timing, self.outlook
        return choose_lane(decision, endpoint=endpoint, stream=False, caps=caps, outlook=outlook, timing=timing, now=at)


def _override(route_: ModelRoute, change: RouteOverride) -> ModelRoute:
    """A route as a policy rule changes it (router/http/model_router.py does the same at serve time)."""
    fields = {name: getattr(change, name) for name in ("mode", "quality_target", "to", "shadow_rate")}
    return msgspec.structs.replace(route_, **{k: v for k, v in fields.items() if v is not None})


def _force(headers: dict[str, str] | None) -> Literal["asked", "route"] | None:
    """`X-Router-Route` among a logged call's headers, read as the router reads it (a bad value is a 400)."""
    value = next((v for k, v in (headers or {}).items() if k.lower() == "x-router-route"), "").strip().lower()
    if value in ("off", "false", "0", "never"):
        return "asked"
    if value in ("force", "always"):
        return "route"
    if value in ("", "on", "auto"):
        return None
    raise ValueError(f"X-Router-Route {value!r} must be `off`, `on` or `force`")


def answer(
    line: LogLine, at: float, chooser: LaneChooser, routes: dict[str, ModelRoute], moved_share: float | None
) -> Answered:
    """How the router would answer one call: the policies decide on the model it asks for; where a model route
    covers it, a cheaper model answers `moved_share` of such calls (in expectation; default: the route's mode's
    measured share), in the lane that model gets. A cascade covers real-time chat calls only (non-streamed: a log
    line is taken as one); its escalated calls pay for the cheap call too. A shadow route moves nothing and shadows
    `shadow_rate` of the calls answered in real time. InvalidDeadline or ValueError where the router answers 400."""
    force = _force(line.headers)
    decision, endpoint = chooser.decide(line, at)
    asked = chooser.place(decision, endpoint, line.model, at)
    as_asked = [Part(1.0, line.model, asked.lane)]
    model_route = routes.get(line.model)
    if model_route is None or decision.route == "off" or force == "asked":
        return Answered(asked, as_asked)
    if isinstance(decision.route, RouteOverride):
        model_route = _override(model_route, decision.route)
    cheap = model_route.to[0]
    if force == "route":
        return Answered(asked, [Part(1.0, cheap, chooser.place(decision, endpoint, cheap, at).lane)], model_route)
    share = DEFAULT_MOVED_SHARE[model_route.mode] if moved_share is None else moved_share
    if model_route.mode == "shadow":
        return Answered(asked, as_asked, model_route, shadowed=asked.lane != Lane.BATCH)
    if model_route.mode == "cascade":
        if decision.mode != "realtime" or endpoint not in CASCADE_ENDPOINTS:
            return Answered(asked, as_asked, model_route)
        # The cheap answer is kept on `share` of the calls; the others pay for it, then for the asked-for model.
        kept, escalated = Part(share, cheap, Lane.REALTIME), Part(1.0 - share, line.model, Lane.REALTIME, wasted=cheap)
        return Answered(asked, [kept, escalated], model_route)
    moved = Part(share, cheap, chooser.place(decision, endpoint, cheap, at).lane)
    return Answered(asked, [moved, Part(1.0 - share, line.model, asked.lane)], model_route)


def _path(endpoint: str) -> str:
    """A request path as the policies see it: `/chat/completions` is `/v1/chat/completions`."""
    path = endpoint if endpoint.startswith("/") else "/" + endpoint
    return path if path.startswith("/v1/") else "/v1" + path


def _timestamp(value: str | float) -> float:
    if isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"timestamp {value!r} is neither RFC 3339 nor Unix seconds") from None
        return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp {value!r} is not a finite number")
    return value


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _model(name: str, t: _Tally, factor: float) -> ModelEstimate:
    now, batch = (t.now_usd * factor, t.batch_usd * factor) if t.priced else (None, None)
    saved = None if now is None or batch is None else now - batch
    return ModelEstimate(
        model=name,
        calls=t.calls,
        deferred_calls=t.deferred_calls,
        tokens=t.tokens,
        deferred_tokens=t.deferred_tokens,
        cost_now_usd_month=now,
        cost_batch_usd_month=batch,
        savings_usd_month=saved,
    )


def check_routes(routes: Iterable[ModelRoute], prices: PriceTable) -> None:
    """ValueError naming the first route whose asked-for model or cheapest candidate has no price."""
    for model_route in routes:
        for model in (model_route.source, model_route.to[0]):
            if prices.lookup(model) is None:
                raise ValueError(f"route {model_route.key}: {model} has no price in the pricing table")


def estimate(
    lines: Iterable[bytes | str | LogLine],
    policies: Policies,
    prices: PriceTable,
    settings: Settings,
    *,
    period_days: float | None = None,
    routes: Sequence[ModelRoute] | None = None,
    moved_share: float | None = None,
) -> Estimate:
    """Replay each logged call through admission, price it now and as the router would answer it, and scale the
    totals to 30 days. `routes`: the model routes (default: the settings'); `moved_share`: the share of a route's
    calls a cheaper model answers (default: DEFAULT_MOVED_SHARE of its mode)."""
    chooser = LaneChooser(policies, settings, prices)
    by_source = {r.source: r for r in (settings.routes if routes is None else routes)}
    check_routes(by_source.values(), prices)
    route_tallies = {source: _RouteTally(r) for source, r in by_source.items()}
    levers = _Levers()
    tallies: dict[str, _Tally] = {}
    problems: list[Problem] = []
    malformed = 0
    times: list[float] = []  # [first, last]: a log need not be sorted
    for number, item in enumerate(lines, 1):
        if not isinstance(item, LogLine) and not item.strip():
            continue
        try:
            line = item if isinstance(item, LogLine) else _DECODER.decode(item)
            at = _timestamp(line.timestamp)
            if line.cached_tokens > line.input_tokens:
                raise ValueError("cached_tokens exceeds input_tokens (cached tokens are part of the input)")
            answered = answer(line, at, chooser, by_source, moved_share)
        except (msgspec.DecodeError, ValueError, InvalidDeadline, RecursionError) as exc:
            malformed += 1
            if len(problems) < MAX_PROBLEMS:
                # The accepted X-Deadline forms, once per line, would drown the report: the docs list them.
                problems.append(Problem(number, str(exc).removesuffix(f"; {ACCEPTED_FORMS}.")))
            continue
        times[:] = [min(at, times[0]), max(at, times[1])] if times else [at, at]
        tally = tallies.setdefault(line.model, _Tally())
        tokens = line.input_tokens + line.output_tokens
        tally.calls, tally.tokens = tally.calls + 1, tally.tokens + tokens
        if answered.lane.lane != Lane.REALTIME:
            tally.deferred_calls, tally.deferred_tokens = tally.deferred_calls + 1, tally.deferred_tokens + tokens
        usage = Usage(line.input_tokens, line.cached_tokens, line.output_tokens)
        now = prices.cost(line.model, usage, "realtime")
        if now is None:
            tally.priced = False  # never guessed: counted, and left out of every dollar figure
            continue
        tally.now_usd += now.baseline_usd
        tally.batch_usd += _book(answered, line.model, usage, prices, levers)
        if answered.route is not None:
            covered = route_tallies[line.model]
            covered.calls += 1
            covered.now_usd += now.baseline_usd
            covered.moved += sum(part.weight for part in answered.parts if part.model != line.model)
            levers.applies_to["route"] += now.baseline_usd
            for part in answered.parts:
                covered.saved_usd += part.weight * _route_usd(part, line.model, usage, prices)
            if answered.shadowed:
                twin = prices.cost(answered.route.to[0], usage, "realtime")
                covered.learning_usd += answered.route.shadow_rate * (twin.actual_usd if twin else 0.0)
    calls = sum(t.calls for t in tallies.values())
    days, source = _period(times, calls, period_days)
    result = _summarise(tallies, times, days, source, malformed, problems)
    return _with_levers(result, levers, route_tallies, moved_share)


def _cost(model: str, usage: Usage, lane: Lane, prices: PriceTable, asked: str) -> Cost:
    """What `model` costs in `lane` (its real-time rate where the lane has no price), against `asked`'s baseline."""
    cost = prices.cost(model, usage, lane.price_tier, asked) or prices.cost(model, usage, "realtime", asked)
    assert cost is not None  # the asked-for model is priced, and check_routes saw to the candidates
    return cost


def _book(answered: Answered, asked: str, usage: Usage, prices: PriceTable, levers: _Levers) -> float:
    """What one call is expected to cost as the router answers it; its savings booked by lever as the router books
    them (accounting.levers): the route's part, then the price tier's part of the answering model."""
    paid = 0.0
    for part in answered.parts:
        cost = _cost(part.model, usage, part.lane, prices, asked)
        paid += part.weight * cost.actual_usd
        levers.saved["route"] += part.weight * cost.route_usd
        if part.lane != Lane.REALTIME:
            levers.saved[part.lane.price_tier] += part.weight * (cost.savings_usd - cost.route_usd)
            levers.applies_to[part.lane.price_tier] += part.weight * cost.baseline_usd
        if part.wasted is not None:
            thrown = _cost(part.wasted, usage, Lane.REALTIME, prices, part.wasted).actual_usd
            paid += part.weight * thrown
            levers.saved["route"] -= part.weight * thrown
    return paid


def _route_usd(part: Part, asked: str, usage: Usage, prices: PriceTable) -> float:
    """The route lever's savings of one way of answering a call (negative: a cascade's wasted cheap call)."""
    saved = _cost(part.model, usage, part.lane, prices, asked).route_usd
    if part.wasted is not None:
        saved -= _cost(part.wasted, usage, Lane.REALTIME, prices, part.wasted).actual_usd
    return saved


def _with_levers(
    result: Estimate, levers: _Levers, routes: dict[str, _RouteTally], moved_share: float | None
) -> Estimate:
    """The estimate with its savings by lever and by route, per month."""
    factor, bill = result.month_factor, result.cost_now_usd_month
    by_lever = [
        LeverEstimate(
            lever=lever,
            savings_usd_month=levers.saved[lever] * factor,
            applies_to_usd_month=levers.applies_to[lever] * factor,
            savings_pct=_pct(levers.saved[lever], levers.applies_to[lever]),
            bill_pct=_pct(levers.saved[lever] * factor, bill),
        )
        for lever in LEVERS
    ]
    by_route = [
        RouteEstimate(
            route=t.route.key,
            mode=t.route.mode,
            moved_share=DEFAULT_MOVED_SHARE[t.route.mode] if moved_share is None else moved_share,
            calls=t.calls,
            moved_calls=t.moved,
            cost_now_usd_month=t.now_usd * factor,
            savings_usd_month=t.saved_usd * factor,
            learning_usd_month=t.learning_usd * factor,
        )
        for t in routes.values()
    ]
    learning = sum(r.learning_usd_month for r in by_route)
    return msgspec.structs.replace(result, levers=by_lever, routes=by_route, learning_usd_month=learning)


def _period(times: list[float], calls: int, days: float | None) -> tuple[float, PeriodSource]:
    if days is not None:
        return days, "flag"
    if calls > 1 and times[1] - times[0] >= MIN_SPAN_S:
        return (times[1] - times[0]) / 86400.0, "measured"
    return ASSUMED_PERIOD_DAYS, "assumed"


def _summarise(
    tallies: dict[str, _Tally],
    times: list[float],
    days: float,
    source: PeriodSource,
    malformed: int,
    problems: list[Problem],
) -> Estimate:
    factor = DAYS_PER_MONTH / days
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].now_usd, -kv[1].calls, kv[0]))
    priced = [_model(name, t, factor) for name, t in ranked if t.priced]
    unpriced = [_model(name, t, factor) for name, t in ranked if not t.priced]
    now = sum(t.now_usd for t in tallies.values()) * factor  # an unpriced model's tally has no dollars
    batch = sum(t.batch_usd for t in tallies.values()) * factor
    calls, tokens = sum(t.calls for t in tallies.values()), sum(t.tokens for t in tallies.values())
    deferred_calls = sum(t.deferred_calls for t in tallies.values())
    deferred_tokens = sum(t.deferred_tokens for t in tallies.values())
    return Estimate(
        cost_now_usd_month=now,
        cost_batch_usd_month=batch,
        savings_usd_month=now - batch,
        savings_pct=_pct(now - batch, now),
        calls=calls,
        tokens=tokens,
        deferred_calls=deferred_calls,
        deferred_tokens=deferred_tokens,
        deferred_calls_pct=_pct(deferred_calls, calls),
        deferred_tokens_pct=_pct(deferred_tokens, tokens),
        unpriced_calls=sum(m.calls for m in unpriced),
        unpriced_tokens=sum(m.tokens for m in unpriced),
        models=priced,
        unpriced_models=unpriced,
        first_timestamp=format_deadline(times[0]) if times else None,
        last_timestamp=format_deadline(times[1]) if times else None,
        period_days=days,
        period_source=source,
        month_factor=factor,
        malformed_lines=malformed,
        problems=problems,
    )


def what_if(monthly_spend: float, share: float, batch_ratio: float = 0.5) -> WhatIf:
    """Savings when `share` of `monthly_spend` moves to a lane that costs `batch_ratio` of the real-time price."""
    saved = monthly_spend * share * (1.0 - batch_ratio)
    return WhatIf(
        cost_now_usd_month=monthly_spend,
        cost_batch_usd_month=monthly_spend - saved,
        savings_usd_month=saved,
        savings_pct=_pct(saved, monthly_spend),
        batch_share=share,
        batch_ratio=batch_ratio,
    )


def _usd(value: float | None) -> str:
    return "-" if value is None else f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def _table(title: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]], **options: Any) -> Table:
    table = Table(*columns, title=title, box=box.SIMPLE_HEAD, **options)
    table.columns[0].no_wrap = True
    for column in table.columns[1:]:
        column.overflow, column.justify = "fold", "right"  # a cut number ("$3,1…") is a wrong one: wrap it
    for row in rows:
        table.add_row(*row)
    return table


def render(result: Estimate | WhatIf, console: Console) -> None:
    """Print `result` as rich tables."""
    routed = isinstance(result, Estimate) and bool(result.routes)
    rows = [
        ("Cost now (all real time)", _usd(result.cost_now_usd_month)),
        ("Cost with the router" if routed else "Cost with batch routing", _usd(result.cost_batch_usd_month)),
        ("Savings", f"{_usd(result.savings_usd_month)} ({result.savings_pct:.1f}%)"),
    ]
    if isinstance(result, WhatIf):
        note = f"{result.batch_share:.0%} of the spend at {result.batch_ratio:g}x the real-time price"
        console.print(_table("Estimated monthly cost", ("", ""), rows, show_header=False, caption=note))
        return
    rows.append(("Calls deferred", f"{result.deferred_calls:,} of {result.calls:,} ({result.deferred_calls_pct:.1f}%)"))
    rows.append(
        ("Tokens deferred", f"{result.deferred_tokens:,} of {result.tokens:,} ({result.deferred_tokens_pct:.1f}%)")
    )
    basis = {"measured": "its time span", "flag": "--period-days", "assumed": "assumed"}[result.period_source]
    note = f"log: {result.period_days:.4g} day(s) ({basis}), scaled x{result.month_factor:.4g} to 30 days"
    console.print(_table("Estimated monthly cost", ("", ""), rows, show_header=False, caption=note))
    _render_levers(result, console)
    columns = ("Model", "Calls", "Deferred", "Now", "Router" if routed else "Batch", "Saved")  # tokens: see --json
    by_model = [
        (
            escape(m.model),
            f"{m.calls:,}",
            f"{_pct(m.deferred_calls, m.calls):.0f}%",
            *map(_usd, (m.cost_now_usd_month, m.cost_batch_usd_month, m.savings_usd_month)),
        )
        for m in result.models
    ]
    if by_model:
        console.print(
            _table("By model, per month", columns, by_model, caption="calls as logged; deferred: share of the calls")
        )
    notes = []
    if result.unpriced_models:
        unpriced = [(escape(m.model), f"{m.calls:,}", f"{m.tokens:,}") for m in result.unpriced_models]
        console.print(_table("Not priced", ("Model", "Calls", "Tokens"), unpriced))
        notes.append(f"{result.unpriced_calls:,} calls of models with no price are left out of every dollar figure.")
    if result.period_source == "assumed":
        notes.append("The log spans under an hour: assumed it covers 1 day; set it with --period-days.")
    if result.malformed_lines:
        notes.append(f"{result.malformed_lines:,} malformed line(s) skipped.")
    for line in notes:
        console.print(line, style="yellow", markup=False, highlight=False)


def _share(part: float, whole: float) -> str:
    return f"{_pct(part, whole):.1f}%" if whole else "-"


def _render_levers(result: Estimate, console: Console) -> None:
    """Savings by lever, each against the part of the bill it acts on, then each model route's projection."""
    columns = ("Lever", "Saved", "Of the bill", "Acts on", "Off that")
    rows: list[tuple[str, ...]] = [
        (
            lever.lever,
            _usd(lever.savings_usd_month),
            _share(lever.savings_usd_month, result.cost_now_usd_month),
            _usd(lever.applies_to_usd_month) if lever.applies_to_usd_month else "-",
            _share(lever.savings_usd_month, lever.applies_to_usd_month),
        )
        for lever in result.levers
    ]
    total = sum(lever.savings_usd_month for lever in result.levers)
    rows.append(("total", _usd(total), _share(total, result.cost_now_usd_month), _usd(result.cost_now_usd_month), ""))
    caption = "acts on: what its calls cost in real time"
    console.print(_table("Savings by lever, per month", columns, rows, caption=caption))
    if not result.routes:
        return
    route_columns = ("Route", "Calls", "Moved", "Acts on", "Saved", "Off that")
    by_route = [
        (
            escape(r.route.replace(">", "\n-> ", 1) + f" ({r.mode})"),
            f"{r.calls:,}",
            f"{r.moved_calls:,.1f}",
            _usd(r.cost_now_usd_month),
            _usd(r.savings_usd_month),
            _share(r.savings_usd_month, r.cost_now_usd_month),
        )
        for r in result.routes
    ]
    shares = sorted({(r.mode, r.moved_share) for r in result.routes})
    caption = (
        "moved: calls a cheaper model answers, at "
        + ", ".join(f"{share:.0%} ({mode})" for mode, share in shares)
        + " of those it can take; defaults measured on public data (docs/routing.md)"
    )
    console.print(_table("Model routes, per month", route_columns, by_route, caption=caption))
    if result.learning_usd_month:
        console.print(
            f"Shadow calls cost {_usd(result.learning_usd_month)} a month to learn (not in the savings).",
            style="yellow",
            markup=False,
            highlight=False,
        )


def _tracked(file: IO[bytes], progress: Progress, task: TaskID) -> Iterator[bytes]:
    done = 0
    for count, line in enumerate(file, 1):
        done += len(line)
        if count % 8192 == 0:  # each update takes rich's lock: advance in strides, not per line
            progress.update(task, completed=done)
        yield line


@contextlib.contextmanager
def _open_log(name: str, show_progress: bool) -> Iterator[Iterable[bytes]]:
    """The log's lines, streamed; with a progress bar on stderr when the file is large."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with Path(name).open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if not (show_progress and size > PROGRESS_BYTES):
            yield file
            return
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            yield _tracked(file, progress, progress.add_task(f"reading {name}", total=size))


def _usage_error(args: argparse.Namespace) -> str | None:
    flags = (args.what_if_share is not None, args.monthly_spend is not None)
    if any(flags) and not all(flags):
        return "--what-if-share and --monthly-spend go together"
    if all(flags) and args.log is not None:
        return "give a request log or --what-if-share/--monthly-spend, not both"
    if not any(flags) and args.log is None:
        return "give a request log (JSONL), or --what-if-share FRACTION --monthly-spend USD"
    if args.batch_ratio is not None and args.log is not None:
        return "--batch-ratio is for --what-if-share; a log is priced with the pricing table"
    if args.log is None and (args.route or args.moved_share is not None):
        return "--route and --moved-share need a request log"
    return None


def route_flag(text: str) -> ModelRoute:
    """An argparse type: `--route FROM=TO[,TO2...]`, a predict route (candidates cheapest first)."""
    source, sep, targets = text.partition("=")
    try:
        if not sep:
            raise msgspec.ValidationError("expected FROM=TO, e.g. gpt-4o=gpt-4o-mini")
        return parse_route({"from": source.strip(), "to": [t.strip() for t in targets.split(",")]})
    except msgspec.ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def routes_of(settings: Settings, flags: Sequence[ModelRoute]) -> list[ModelRoute]:
    """The config's model routes, with `--route` flags added (a flag replaces the config's route of its model)."""
    by_source = {r.source: r for r in settings.routes}
    by_source.update((flag.source, flag) for flag in flags)
    return list(by_source.values())


def _from_log(args: argparse.Namespace) -> Estimate | int:
    """The estimate for `args.log`, or an exit code once the problem is reported."""
    config = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    settings = load_settings(config, os.environ)
    policies = load_policies(Path(args.policies or settings.policies_dir))
    prices = load_pricing(Path(args.pricing or settings.pricing_file))
    routes = routes_of(settings, args.route or [])
    try:
        check_routes(routes, prices)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with _open_log(args.log, not args.json and sys.stderr.isatty()) as lines:
            result = estimate(
                lines, policies, prices, settings, period_days=args.period_days, routes=routes,
                moved_share=args.moved_share,
            )  # fmt: skip
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for bad in result.problems:
        print(f"{args.log}:{bad.line}: {bad.problem}", file=sys.stderr)
    if result.malformed_lines > len(result.problems):
        print(f"... and {result.malformed_lines - len(result.problems):,} more malformed lines", file=sys.stderr)
    if args.strict and result.malformed_lines:
        print(f"error: {result.malformed_lines:,} malformed line(s) in {args.log} (--strict)", file=sys.stderr)
        return 2
    return result


def run(args: argparse.Namespace) -> int:
    """Run `hybrid-router estimate`: 0 on success; 2 on a usage error, an unreadable log or (--strict) a bad line."""
    if problem := _usage_error(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    result: Estimate | WhatIf | int
    if args.log is None:
        result = what_if(args.monthly_spend, args.what_if_share, 0.5 if args.batch_ratio is None else args.batch_ratio)
    elif isinstance(result := _from_log(args), int):
        return result
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result), indent=2).decode() + "\n")
    else:
        render(result, Console())
    return 0


def _number(low: float, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] when `open_low`); else a usage error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every comparison below
        if not math.isfinite(value) or not (low < value <= high if open_low else low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if open_low else '['}{low:g}, {high:g}]")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `estimate` and its flags on the CLI's subcommands."""
    p = sub.add_parser("estimate", help="what-if monthly savings from a request log", description=__doc__)
    p.add_argument("log", nargs="?", help="JSONL request log, one call per line (- reads stdin)")
    p.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--policies", metavar="DIR", help="policy directory (default: the config's policies_dir)")
    p.add_argument("--pricing", metavar="FILE", help="pricing file (default: the config's pricing_file)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--period-days", type=_number(0, open_low=True), metavar="N", help="days the log covers")
    p.add_argument("--what-if-share", type=_number(0, 1), metavar="FRACTION", help="no log: batch-eligible share")
    p.add_argument("--monthly-spend", type=_number(0), metavar="USD", help="no log: real-time spend per month")
    p.add_argument("--batch-ratio", type=_number(0, 1), metavar="RATIO", help="batch/real-time price (default 0.5)")
    p.add_argument("--strict", action="store_true", help="exit 2 when any line is malformed")
    p.add_argument(
        "--route",
        action="append",
        type=route_flag,
        metavar="FROM=TO",
        help="a model route in predict mode, e.g. gpt-4o=gpt-4o-mini (repeatable; adds to the config's routes)",
    )
    p.add_argument(
        "--moved-share",
        type=_number(0, 1),
        metavar="FRACTION",
        help="share of a route's calls a cheaper model answers (default: measured on public data, docs/routing.md: "
        f"predict {DEFAULT_MOVED_SHARE['predict']:g}, cascade {DEFAULT_MOVED_SHARE['cascade']:g})",
    )
    p.set_defaults(func=run)
