"""How the router would answer a logged call, and what each lever saves on it: the pure half of `estimate`.

A logged call is placed as `serve` places it (`LaneChooser`: the policies decide on the model it asks for, the lane
decision places the model that answers). Where a model route covers it, a cheaper model answers a share of such
calls (`answer`, in expectation: a log says nothing of the evidence), in the lane that model gets. `Bill` prices the
ways a call is answered and books its savings by lever as the router books them (telemetry/accounting.py): a moved
call's `route` savings are the asked-for model's real-time price less the cheaper model's; its `batch` or `flex`
savings are the answering model's own discount; its `prompt_cache` savings what cached input took off the answering
tier's plain price (the baseline is uncached, so a log's own cache hits are on this lever; `prefixes.Prefixes` adds
the router's breakpoints). Where a log line carries its request `body`, `Repeats` plays the
answer cache: a repeat of a deterministic call answered in real time within the TTL costs nothing and saves its whole
real-time price on the `answer_cache` lever.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from router.core import answers
from router.core.deadline import parse_deadline
from router.core.lanes import Capabilities, Catalog, Lane, LaneChoice, Outlook, Planner, choose_lane
from router.core.model_routes import Mode
from router.core.model_routes import Route as ModelRoute
from router.core.policy import Decision, Facts, Policies, RouteOverride, decide
from router.core.pricing import Cost, PriceTable, Usage
from router.core.settings import Settings

DEFAULT_PATH = "/v1/chat/completions"

Tokens = Annotated[int, msgspec.Meta(ge=0)]
Lever = Literal["batch", "flex", "route", "prompt_cache", "answer_cache"]
LEVERS: tuple[Lever, ...] = ("batch", "flex", "route", "prompt_cache", "answer_cache")

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
    body: dict[str, Any] | None = None
    """The request body as sent (optional): with it, repeats of a deterministic call are found (`Repeats`)."""


class LeverEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One lever's savings per month, and the real-time price of the calls it acts on."""

    lever: Lever
    savings_usd_month: float
    applies_to_usd_month: float
    """Batch, flex: the real-time price of the calls answered in that lane. Route: of the calls its routes cover.
    Prompt cache: of the calls whose input it read or wrote (the log's cached tokens, the router's breakpoints).
    Answer cache: of the calls it looks up (deterministic calls of a known body, where a rule or the tenant turns
    it on)."""
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
    cache: answers.Status | None = None
    """The answer cache's say (`hit`: answered by it, no parts); None: it did not look the call up."""


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


class Repeats:
    """The answer cache over a log, per tenant: a deterministic call whose identical twin's answer was kept within
    `answer_cache.ttl_s` before it, and is still among the tenant's `max_entries` most recently used, is a hit. A
    twin answered in real time is kept at once, one answered in a batch from its deadline on (the latest the router
    answers it). The byte bound is not played (a log has no answer sizes)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._kept: dict[str, OrderedDict[str, float]] = {}

    def lookup(self, line: LogLine, decision: Decision, endpoint: str, at: float) -> tuple[answers.Status, str] | None:
        """`hit` or `miss` and the call's key; None where the cache does not look the call up."""
        tenant = line.tenant or "default"
        body = line.body
        if body is None or endpoint not in answers.CACHEABLE or not answers.enabled(self.settings, tenant, decision):
            return None
        if not answers.deterministic(endpoint, body) or not answers.directive(_lower(line.headers)).read:
            return None
        key = answers.digest(tenant, endpoint, line.model, body)
        kept = self._kept.setdefault(tenant, OrderedDict())
        stored = kept.get(key)
        if stored is not None and stored <= at < stored + self.settings.answer_cache.ttl_s:
            kept.move_to_end(key)
            return "hit", key
        return "miss", key

    def keep(self, line: LogLine, key: str, at: float) -> None:
        """A miss's answer, kept from `at` on; the tenant's least recently used past `max_entries` dropped."""
        kept = self._kept.setdefault(line.tenant or "default", OrderedDict())
        kept[key] = at
        kept.move_to_end(key)
        while len(kept) > self.settings.answer_cache.max_entries:
            kept.popitem(last=False)


def _lower(headers: dict[str, str] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in (headers or {}).items()}


def answer(
    line: LogLine,
    at: float,
    chooser: LaneChooser,
    routes: dict[str, ModelRoute],
    moved_share: float | None,
    repeats: Repeats | None = None,
) -> Answered:
    """`answer_as_routed`, after the answer cache (`repeats`) had its say: a hit is answered by it, in real time;
    a miss's answer (not a cascade's) is kept for the calls that repeat it: at once, or from its deadline on when a
    batch answers it."""
    decision, endpoint = chooser.decide(line, at)
    looked = repeats.lookup(line, decision, endpoint, at) if repeats is not None else None
    if looked is not None and looked[0] == "hit":
        return Answered(LaneChoice(lane=Lane.REALTIME, reason="policy", rule=decision.rule), [], cache="hit")
    answered = answer_as_routed(line, at, chooser, routes, moved_share)
    if looked is None:
        return answered
    cascade = answered.route is not None and any(part.wasted for part in answered.parts)
    if repeats is not None and not cascade:
        deadline = answered.lane.deadline if answered.lane.lane == Lane.BATCH else None
        repeats.keep(line, looked[1], at if deadline is None else deadline)
    return msgspec.structs.replace(answered, cache="miss")


def answer_as_routed(
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


def check_routes(routes: Iterable[ModelRoute], prices: PriceTable) -> None:
    """ValueError naming the first route whose asked-for model or cheapest candidate has no price."""
    for model_route in routes:
        for model in (model_route.source, model_route.to[0]):
            if prices.lookup(model) is None:
                raise ValueError(f"route {model_route.key}: {model} has no price in the pricing table")


def _cost(model: str, usage: Usage, lane: Lane, prices: PriceTable, asked: str) -> Cost:
    """What `model` costs in `lane` (its real-time rate where the lane has no price), against `asked`'s baseline."""
    # Against the uncached baseline, as the router books it: the cache's reads and writes are the prompt_cache lever.
    cost = prices.cost(model, usage, lane.price_tier, asked) or prices.cost(model, usage, "realtime", asked)
    assert cost is not None  # the asked-for model is priced, and check_routes saw to the candidates
    return cost


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


class _RouteTally(msgspec.Struct):
    route: ModelRoute
    calls: int = 0
    moved: float = 0.0
    now_usd: float = 0.0
    saved_usd: float = 0.0
    learning_usd: float = 0.0


class Bill:
    """What the calls of a log cost as the router would answer them, by lever and by model route (over the log: a
    month's figures come from `levers` and `routes` with the log's month factor)."""

    def __init__(self, routes: Iterable[ModelRoute], prices: PriceTable) -> None:
        self.prices = prices
        self.saved: dict[str, float] = dict.fromkeys(LEVERS, 0.0)
        self.applies_to: dict[str, float] = dict.fromkeys(LEVERS, 0.0)
        self._routes = {r.source: _RouteTally(r) for r in routes}
        self.prompt_cache = {"logged": 0.0, "added": 0.0}
        """The prompt_cache lever's parts: the log's own cached tokens, and the router's breakpoints (projected)."""

    def add(self, answered: Answered, asked: str, usage: Usage, baseline_usd: float, *, added: bool = False) -> float:
        """Book one priced call (`baseline_usd`: the asked-for model's real-time price, uncached); what it is expected
        to cost. `added`: `usage`'s cache reads and writes are the router's breakpoints', not the log's."""
        if answered.cache is not None:
            self.applies_to["answer_cache"] += baseline_usd
        if answered.cache == "hit":  # the answer cache: nothing paid, its whole real-time price saved
            self.saved["answer_cache"] += baseline_usd
            return 0.0
        paid = 0.0
        for part in answered.parts:
            cost = _cost(part.model, usage, part.lane, self.prices, asked)
            paid += part.weight * cost.actual_usd
            self.saved["route"] += part.weight * cost.route_usd
            self.saved["prompt_cache"] += part.weight * cost.prompt_cache_usd
            self.prompt_cache["added" if added else "logged"] += part.weight * cost.prompt_cache_usd
            if part.lane != Lane.REALTIME:
                tier = cost.savings_usd - cost.route_usd - cost.prompt_cache_usd
                self.saved[part.lane.price_tier] += part.weight * tier
                self.applies_to[part.lane.price_tier] += part.weight * cost.baseline_usd
            if part.wasted is not None:  # a cascade's cheap call, thrown away: lost on the route lever
                thrown = _cost(part.wasted, usage, Lane.REALTIME, self.prices, part.wasted).actual_usd
                paid += part.weight * thrown
                self.saved["route"] -= part.weight * thrown
        if usage.cached_tokens or usage.cache_write_tokens:
            self.applies_to["prompt_cache"] += baseline_usd
        if answered.route is not None:
            self._cover(answered, asked, usage, baseline_usd)
        return paid

    def _cover(self, answered: Answered, asked: str, usage: Usage, baseline_usd: float) -> None:
        assert answered.route is not None
        covered = self._routes[asked]
        covered.calls += 1
        covered.now_usd += baseline_usd
        self.applies_to["route"] += baseline_usd
        for part in answered.parts:
            if part.model != asked:
                covered.moved += part.weight
            saved = _cost(part.model, usage, part.lane, self.prices, asked).route_usd
            if part.wasted is not None:
                saved -= _cost(part.wasted, usage, Lane.REALTIME, self.prices, part.wasted).actual_usd
            covered.saved_usd += part.weight * saved
        if answered.shadowed:
            twin = self.prices.cost(answered.route.to[0], usage, "realtime")
            covered.learning_usd += answered.route.shadow_rate * (twin.actual_usd if twin else 0.0)

    def levers(self, factor: float, bill_usd: float) -> list[LeverEstimate]:
        """Savings by lever per month (`factor`: the log's month factor; `bill_usd`: the monthly bill now)."""
        return [
            LeverEstimate(
                lever=lever,
                savings_usd_month=self.saved[lever] * factor,
                applies_to_usd_month=self.applies_to[lever] * factor,
                savings_pct=_pct(self.saved[lever], self.applies_to[lever]),
                bill_pct=_pct(self.saved[lever] * factor, bill_usd),
            )
            for lever in LEVERS
        ]

    def routes(self, factor: float, moved_share: float | None) -> list[RouteEstimate]:
        """Each model route's projection per month."""
        return [
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
            for t in self._routes.values()
        ]


# --- tables ---------------------------------------------------------------------------------------------------


def usd(value: float | None) -> str:
    return "-" if value is None else f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def table(title: str, columns: tuple[str, ...], rows: Iterable[tuple[str, ...]], **options: Any) -> Table:
    table = Table(*columns, title=title, box=box.SIMPLE_HEAD, **options)
    table.columns[0].no_wrap = True
    for column in table.columns[1:]:
        column.overflow, column.justify = "fold", "right"  # a cut number ("$3,1…") is a wrong one: wrap it
    for row in rows:
        table.add_row(*row)
    return table


def _share(part: float, whole: float) -> str:
    return f"{_pct(part, whole):.1f}%" if whole else "-"


def render_levers(
    levers: list[LeverEstimate], routes: list[RouteEstimate], bill_usd: float, learning_usd: float, console: Console
) -> None:
    """Savings by lever, each against the part of the bill it acts on, then each model route's projection."""
    columns = ("Lever", "Saved", "Of the bill", "Acts on", "Off that")
    rows: list[tuple[str, ...]] = [
        (
            lever.lever,
            usd(lever.savings_usd_month),
            _share(lever.savings_usd_month, bill_usd),
            usd(lever.applies_to_usd_month) if lever.applies_to_usd_month else "-",
            _share(lever.savings_usd_month, lever.applies_to_usd_month),
        )
        for lever in levers
    ]
    total = sum(lever.savings_usd_month for lever in levers)
    rows.append(("total", usd(total), _share(total, bill_usd), usd(bill_usd), ""))
    caption = "acts on: what its calls cost in real time"
    console.print(table("Savings by lever, per month", columns, rows, caption=caption))
    if not routes:
        return
    route_columns = ("Route", "Calls", "Moved", "Acts on", "Saved", "Off that")
    by_route = [
        (
            escape(r.route.replace(">", "\n-> ", 1) + f" ({r.mode})"),
            f"{r.calls:,}",
            f"{r.moved_calls:,.1f}",
            usd(r.cost_now_usd_month),
            usd(r.savings_usd_month),
            _share(r.savings_usd_month, r.cost_now_usd_month),
        )
        for r in routes
    ]
    shares = sorted({(r.mode, r.moved_share) for r in routes})
    caption = (
        "moved: calls a cheaper model answers, at "
        + ", ".join(f"{share:.0%} ({mode})" for mode, share in shares)
        + " of those it can take; defaults measured on public data (docs/routing.md)"
    )
    console.print(table("Model routes, per month", route_columns, by_route, caption=caption))
    if learning_usd:
        console.print(
            f"Shadow calls cost {usd(learning_usd)} a month to learn (not in the savings).",
            style="yellow",
            markup=False,
            highlight=False,
        )
