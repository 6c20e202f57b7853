"""Hybrid routing on public data: RouteLLM's MMLU and GSM8K outcomes replayed through `router.modelroutes`.

Run from the repository root (needs the `bench` extra; no network, no Redis):

    python bench/routing.py [--seeds 5] [--markdown] [--plot docs/routing.png] [--json bench/results/routing.json]

The strong model (GPT-4-1106 in the data) is priced as gpt-4o and the weak one (Mixtral-8x7B) as gpt-4o-mini, at
the real-time prices of config/pricing.yaml, with o200k_base token counts (bench/routing_data.py). Each seed splits
the prompts in half at random: evidence and every threshold come from the training half, and the test half is
replayed through the same code the proxy calls (evidence.observe, plan.make_plan, decision.decide,
checks.check_answer, cascade.decide_cascade). Quality is the test half's accuracy over the strong model's on the
same prompts; cost reduction is 1 - paid / (every call to the strong model), in dollars.

Methods (target 0.95 unless swept):
- always strong, always weak; random (a share of calls chosen on the training half to reach the target);
  oracle (knows the test outcomes: moves every call the weak model answers as well, then the cheapest losses
  first up to the target), an upper bound;
- predict, task = MMLU subject, allocation `per_task` (each moved task's own bound meets the target) and `budget`
  (the route's bound meets the target); predict with no task: wordllama embedding clusters of the training
  prompts stand for tasks;
- cascade on GSM8K: the weak model answers first; hard checks (a final `#### <integer>`) escalate, passing
  answers fall in buckets (worked arithmetic consistent or not, answer length tertiles of the training half),
  and the plan keeps the buckets whose evidence meets the target. Every call pays the weak call; escalated calls
  pay the strong one too. "checks only" keeps every passing answer, with no evidence.

Learning: the evidence of the training half, collected in production by `shadow` mode, costs a weak call per
example (the strong answer is served anyway) and no judge call here (right/wrong is exact match). That cost is
reported beside each method as a share of the test half's baseline.

Also measured: the predict decision's latency (feature extraction included) against parsing the request body.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from routing_data import STRONG, WEAK, Item, Prices, load_gsm8k, load_mmlu

from router.core.model_routes import CascadeChecks, Route, parse_route
from router.modelroutes.cascade import decide_cascade, evidence_key
from router.modelroutes.checks import CheckReport, check_answer
from router.modelroutes.decision import decide, uniform
from router.modelroutes.embeddings import ClusterIndex, Embedder, default_k, fit_clusters, load_embedder
from router.modelroutes.evidence import Stats, observe
from router.modelroutes.plan import Plan, make_plan, sample_margin
from router.modelroutes.tasks import auto_task, features, resolve_task

NOW = 1_700_000_000.0
TARGETS = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
FINAL = r"####\s*\$?(-?[\d,]+)\s*$"  # GSM8K's answers are whole numbers
PRICES = Prices()


@dataclass
class Outcome:
    method: str
    target: float
    seed: int
    quality: float
    cost_reduction: float
    strong_share: float
    stated: float = math.nan
    stated_lower: float = math.nan
    sample_margin: float = math.nan
    learning: float = 0.0

    @property
    def held_out_margin(self) -> float:
        """The stated margin for a sample of the test half's size: the plan's, and the sample's own."""
        return math.hypot(self.stated - self.stated_lower, self.sample_margin)

    @property
    def within_stated(self) -> bool:
        """The held-out quality is not below the target by more than its stated margin."""
        return math.isnan(self.stated) or self.quality >= self.target - self.held_out_margin - 1e-12

    @property
    def within_plan_margin(self) -> bool:
        """The stricter reading: not below the target by more than the plan's own margin."""
        return math.isnan(self.stated) or self.quality >= self.target - (self.stated - self.stated_lower) - 1e-12


def outcome(
    method: str, target: float, seed: int, test: Sequence[Item], strong: Sequence[bool], weak_paid: Sequence[bool]
) -> Outcome:
    """Quality and cost of answering `test` with the strong model where `strong`, paying the weak one where
    `weak_paid` (a cascade pays it on every call)."""
    score = sum(i.strong if s else i.weak for i, s in zip(test, strong, strict=True))
    best = sum(i.strong for i in test)
    baseline = sum(PRICES.strong(i) for i in test)
    paid = sum(
        (PRICES.strong(i) if s else 0.0) + (PRICES.weak(i) if w else 0.0)
        for i, s, w in zip(test, strong, weak_paid, strict=True)
    )
    return Outcome(method, target, seed, score / best, 1 - paid / baseline, sum(strong) / len(test))


def route_for(target: float, allocation: str, mode: str = "predict", checks: CascadeChecks | None = None) -> Route:
    """The route gpt-4o -> gpt-4o-mini as config/router.yaml would declare it."""
    raw: dict[str, Any] = {"from": STRONG, "to": [WEAK], "quality_target": target, "allocation": allocation}
    raw["mode"] = mode
    if checks is not None:
        raw["cascade"] = msgspec.to_builtins(checks)
    return parse_route(raw)


def evidence_of(train: Sequence[Item], keys: Sequence[str], route: Route) -> dict[str, dict[str, Stats]]:
    """Task -> {weak: Stats} from the training half, as shadow pairs or a `routes learn` import would give."""
    evidence: dict[str, dict[str, Stats]] = {}
    for item, key in zip(train, keys, strict=True):
        per = evidence.setdefault(key, {})
        per[WEAK] = observe(
            per.get(WEAK),
            item.strong,
            item.weak,
            now=NOW,
            half_life_s=route.half_life_s,
            tokens_in=item.tokens_in,
            tokens_out=item.strong_out,
        )
    return evidence


def learning_cost(train: Sequence[Item], test: Sequence[Item]) -> float:
    """Shadow learning of the training half (one weak call each), as a share of the test half's baseline."""
    return sum(PRICES.weak(i) for i in train) / sum(PRICES.strong(i) for i in test)


def predict(
    name: str, route: Route, seed: int, train: Sequence[Item], test: Sequence[Item], task_of: Callable[[int], str]
) -> tuple[Outcome, Plan]:
    """Plan on the training half's evidence, then decide each test call as the proxy would."""
    n_train = len(train)
    plan = make_plan(route, evidence_of(train, [task_of(i) for i in range(n_train)], route), now=NOW, price=PRICES)
    strong = []
    for j, item in enumerate(test):
        decision = decide(route, plan, task_of(n_train + j), f"{seed}:{item.prompt}")
        strong.append(not decision.moved)
    result = outcome(name, route.quality_target, seed, test, strong, [not s for s in strong])
    result.stated, result.stated_lower = plan.quality, plan.quality_lower
    result.sample_margin = sample_margin(route, plan, Counter(task_of(n_train + j) for j in range(len(test))))
    result.learning = learning_cost(train, test)
    return result, plan


def random_share(name: str, target: float, seed: int, train: Sequence[Item], test: Sequence[Item]) -> Outcome:
    """Move a random share of calls, the share that reaches the target on the training half."""
    ratio = sum(i.weak for i in train) / sum(i.strong for i in train)
    share = 1.0 if ratio >= 1 else min(1.0, (1 - target) / (1 - ratio))
    strong = [uniform(f"{seed}:{i.prompt}", "random") >= share for i in test]
    return outcome(name, target, seed, test, strong, [not s for s in strong])


def oracle(target: float, seed: int, test: Sequence[Item]) -> Outcome:
    """Knowing the test outcomes: every call the weak model answers as well moves, then the cheapest losses."""
    best = sum(i.strong for i in test)
    gains = sum(i.weak and not i.strong for i in test)  # moving these raises the score, leaving room for losses
    budget = math.floor(gains + (1 - target) * best + 1e-9)
    losses = sorted((j for j, i in enumerate(test) if i.strong and not i.weak), key=lambda j: -PRICES.strong(test[j]))
    moved = {j for j, i in enumerate(test) if i.weak or not i.strong} | set(losses[:budget])
    strong = [j not in moved for j in range(len(test))]
    return outcome("oracle", target, seed, test, strong, [not s for s in strong])


def split(items: Sequence[Item], seed: int) -> tuple[list[Item], list[Item], list[int], list[int]]:
    mask = np.random.default_rng(seed).random(len(items)) < 0.5
    train_ix = [j for j in range(len(items)) if mask[j]]
    test_ix = [j for j in range(len(items)) if not mask[j]]
    return [items[j] for j in train_ix], [items[j] for j in test_ix], train_ix, test_ix


def clusters_of(vectors: Any, train_ix: Sequence[int], test_ix: Sequence[int], seed: int, k: int) -> list[str]:
    """Automatic tasks (k embedding clusters fitted on the training prompts) of the train then the test prompts."""
    clusters = fit_clusters(vectors[list(train_ix)], k, seed=seed)
    index = ClusterIndex(clusters)
    shape = features({"messages": [{"role": "user", "content": "x"}]})
    return [auto_task(shape, c) for c in index.nearest(vectors[[*train_ix, *test_ix]])]


def choose_k(items: Sequence[Item], vectors: Any, train_ix: Sequence[int], seed: int) -> int:
    """How many clusters, by 2-fold cross-validation inside the training half: the most savings at 0.95 among the
    counts whose held-out folds stayed within their stated margin (else the fewest clusters)."""
    mask = np.random.default_rng(2000 + seed).random(len(train_ix)) < 0.5
    folds = (
        [j for j, m in zip(train_ix, mask, strict=True) if m],
        [j for j, m in zip(train_ix, mask, strict=True) if not m],
    )
    candidates = sorted({max(1, min(64, len(folds[0]) // size)) for size in (50, 100, 200, 400)})
    scores: dict[int, float] = {}
    for k in candidates:
        results = []
        for fit, held in (folds, folds[::-1]):
            auto = clusters_of(vectors, fit, held, seed, k)
            route = route_for(0.95, "budget")
            result = predict("cv", route, seed, [items[j] for j in fit], [items[j] for j in held], auto.__getitem__)[0]
            results.append(result)
        if all(r.within_stated for r in results):
            scores[k] = statistics.fmean(r.cost_reduction for r in results)
    return max(scores, key=lambda k: scores[k]) if scores else candidates[0]


def run_mmlu(items: Sequence[Item], vectors: Any, seeds: int, chosen_k: list[int]) -> list[Outcome]:
    out: list[Outcome] = []
    for seed in range(seeds):
        train, test, train_ix, test_ix = split(items, seed)
        subjects = [i.subject for i in (*train, *test)]
        k = choose_k(items, vectors, train_ix, seed)
        chosen_k.append(k)
        auto = clusters_of(vectors, train_ix, test_ix, seed, min(64, 2 * k))  # the folds had half the prompts
        out.append(outcome("always strong", 1.0, seed, test, [True] * len(test), [False] * len(test)))
        out.append(outcome("always weak", 0.0, seed, test, [False] * len(test), [True] * len(test)))
        for target in TARGETS:
            out.append(random_share("random", target, seed, train, test))
            out.append(oracle(target, seed, test))
            out.append(
                predict(
                    "predict, subject, budget", route_for(target, "budget"), seed, train, test, subjects.__getitem__
                )[0]
            )
            out.append(
                predict(
                    "predict, embeddings, budget", route_for(target, "budget"), seed, train, test, auto.__getitem__
                )[0]
            )
        out.append(
            predict("predict, subject, per task", route_for(0.95, "per_task"), seed, train, test, subjects.__getitem__)[
                0
            ]
        )
        out.append(
            predict("predict, embeddings, per task", route_for(0.95, "per_task"), seed, train, test, auto.__getitem__)[
                0
            ]
        )
    return out


def _request(item: Item) -> dict[str, Any]:
    return {"model": STRONG, "messages": [{"role": "user", "content": item.prompt}]}


def _response(answer: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]}


def cascade(
    name: str, route: Route | None, seed: int, train: Sequence[Item], test: Sequence[Item], checks: CascadeChecks
) -> Outcome:
    """Weak first; keep its answer when the checks pass and (with a route) the bucket's evidence says so."""
    reports: list[CheckReport] = [check_answer(_request(i), _response(i.weak_answer), checks) for i in (*train, *test)]
    plan = None
    if route is not None:
        keys = [evidence_key("gsm8k", r, checks) for r in reports[: len(train)]]
        plan = make_plan(route, evidence_of(train, keys, route), now=NOW, price=PRICES, cascade=True)
    probe = route or route_for(0.95, "budget", "cascade", checks)
    strong = []
    for item, report in zip(test, reports[len(train) :], strict=True):
        verdict = decide_cascade(probe, plan, "gsm8k", report, f"{seed}:{item.prompt}").verdict
        strong.append(verdict == "escalate")
    result = outcome(name, probe.quality_target if plan else math.nan, seed, test, strong, [True] * len(test))
    if plan is not None:
        result.stated, result.stated_lower = plan.quality, plan.quality_lower
        test_keys = Counter(evidence_key("gsm8k", r, checks) for r in reports[len(train) :])
        result.sample_margin = sample_margin(probe, plan, test_keys)
        result.learning = learning_cost(train, test)
    return result


DESIGNS = ("answer length", "prompt length", "both lengths", "no length")


def tertiles(values: Sequence[int]) -> list[int]:
    ordered = sorted(values)
    return [ordered[len(ordered) // 3], ordered[2 * len(ordered) // 3]]


def checks_for(design: str, train: Sequence[Item]) -> CascadeChecks:
    """The cascade's checks with the bucket edges of a design, from the training items' lengths."""
    answers = tertiles([len(i.weak_answer) for i in train]) if design in ("answer length", "both lengths") else []
    prompts = tertiles([len(i.prompt) for i in train]) if design in ("prompt length", "both lengths") else []
    return CascadeChecks(final_answer=FINAL, arithmetic=True, length_edges=answers, prompt_length_edges=prompts)


def choose_design(train: Sequence[Item], seed: int) -> str:
    """The bucket design with the best cost reduction at 0.95 in a 2-fold cross-validation inside the training
    half (the test half is never looked at)."""
    mask = np.random.default_rng(1000 + seed).random(len(train)) < 0.5
    folds = ([i for i, m in zip(train, mask, strict=True) if m], [i for i, m in zip(train, mask, strict=True) if not m])
    scores = {}
    for design in DESIGNS:
        results = []
        for fit, held in (folds, folds[::-1]):
            checks = checks_for(design, fit)
            route = route_for(0.95, "budget", "cascade", checks)
            results.append(cascade("cv", route, seed, fit, held, checks).cost_reduction)
        scores[design] = statistics.fmean(results)
    return max(DESIGNS, key=lambda d: scores[d])


def run_gsm8k(items: Sequence[Item], vectors: Any, seeds: int, chosen_k: list[int]) -> tuple[list[Outcome], list[str]]:
    out: list[Outcome] = []
    chosen = []
    for seed in range(seeds):
        train, test, train_ix, test_ix = split(items, seed)
        design = choose_design(train, seed)
        chosen.append(design)
        checks = checks_for(design, train)
        k = choose_k(items, vectors, train_ix, seed)
        chosen_k.append(k)
        auto = clusters_of(vectors, train_ix, test_ix, seed, min(64, 2 * k))  # the folds had half the prompts
        out.append(outcome("always strong", 1.0, seed, test, [True] * len(test), [False] * len(test)))
        out.append(outcome("always weak", 0.0, seed, test, [False] * len(test), [True] * len(test)))
        out.append(cascade("cascade, checks only", None, seed, train, test, checks))
        for target in TARGETS:
            out.append(random_share("random", target, seed, train, test))
            out.append(oracle(target, seed, test))
            route = route_for(target, "budget", "cascade", checks)
            out.append(cascade("cascade, checks + evidence, budget", route, seed, train, test, checks))
            out.append(
                predict(
                    "predict, embeddings, budget", route_for(target, "budget"), seed, train, test, auto.__getitem__
                )[0]
            )
        route = route_for(0.95, "per_task", "cascade", checks)
        out.append(cascade("cascade, checks + evidence, per task", route, seed, train, test, checks))
    return out, chosen


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Clock:
    """Wall and CPU time (this thread's) of each timed step, in microseconds."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def time(self, name: str, step: Callable[[], object]) -> Any:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        result = step()
        self.cpu.setdefault(name, []).append((time.thread_time_ns() - cpu) / 1000)
        self.wall.setdefault(name, []).append((time.perf_counter_ns() - wall) / 1000)
        return result

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "p50_us": percentile(self.wall[name], 0.5),
                "p99_us": percentile(self.wall[name], 0.99),
                "cpu_p50_us": percentile(self.cpu[name], 0.5),
                "cpu_p99_us": percentile(self.cpu[name], 0.99),
            }
            for name in self.wall
        }


def latency(items: Sequence[Item], embedder: Embedder, vectors: Any, calls: int = 3000) -> dict[str, dict[str, float]]:
    """Per call: parsing the request body (the baseline every call pays), then each decision on top of it."""
    train, test, train_ix, _ = split(items, 0)
    route = route_for(0.95, "budget")
    plan = make_plan(route, evidence_of(train, [i.subject for i in train], route), now=NOW, price=PRICES)
    clusters = ClusterIndex(fit_clusters(vectors[list(train_ix)], default_k(len(train_ix))))
    nearest = clusters.nearest(vectors[list(train_ix)])
    auto = [auto_task(features(_request(i)), c) for i, c in zip(train, nearest, strict=True)]
    auto_plan = make_plan(route, evidence_of(train, auto, route), now=NOW, price=PRICES)
    clock = Clock()
    for n, item in enumerate(test[:calls]):
        raw = json.dumps(_request(item)).encode()
        body = clock.time("parse body (baseline)", lambda raw=raw: json.loads(raw))  # type: ignore[misc]

        def named(subject: str = item.subject, key: str = f"call-{n}") -> object:
            return decide(route, plan, resolve_task(header=subject) or "none", key)

        def embedded(body: dict[str, Any] = body, key: str = f"call-{n}") -> object:
            feats = features(body)
            cluster = clusters.nearest(embedder.embed_one(feats.text))[0]
            return decide(route, auto_plan, auto_task(feats, cluster), key)

        clock.time("predict, named task", named)
        clock.time("predict, no task (embeddings)", embedded)
    checks = CascadeChecks(final_answer=FINAL, arithmetic=True, length_edges=[400, 700])
    cascade_route = route_for(0.95, "budget", "cascade", checks)
    for item in load_gsm8k()[:calls]:

        def checked(item: Item = item) -> object:
            report = check_answer(_request(item), _response(item.weak_answer), checks)
            return decide_cascade(cascade_route, None, "gsm8k", report, item.prompt)

        clock.time("cascade checks + decision", checked)
    return clock.summary()


@dataclass
class Row:
    data: str
    method: str
    target: float
    quality: tuple[float, float]
    cost_reduction: tuple[float, float]
    strong_share: tuple[float, float]
    margin: float
    held_out_margin: float
    within: int
    within_plan_margin: int
    seeds: int
    learning: float


def _ms(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(data: str, outcomes: Sequence[Outcome]) -> list[Row]:
    groups: dict[tuple[str, float], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.method, o.target), []).append(o)
    rows = []
    for (method, target), group in groups.items():
        margins = [o.stated - o.stated_lower for o in group if not math.isnan(o.stated)]
        held_out = [o.held_out_margin for o in group if not math.isnan(o.stated)]
        rows.append(
            Row(
                data,
                method,
                target,
                _ms([o.quality for o in group]),
                _ms([o.cost_reduction for o in group]),
                _ms([o.strong_share for o in group]),
                statistics.fmean(margins) if margins else math.nan,
                statistics.fmean(held_out) if held_out else math.nan,
                sum(o.within_stated for o in group),
                sum(o.within_plan_margin for o in group),
                len(group),
                statistics.fmean(o.learning for o in group),
            )
        )
    return rows


def headline(rows: Sequence[Row]) -> list[Row]:
    """Each method at the 0.95 target (baselines at their own), in a fixed order."""
    keep = [r for r in rows if r.target in (0.95, 1.0, 0.0) or math.isnan(r.target)]
    return sorted(keep, key=lambda r: (r.data, -r.cost_reduction[0] if r.method != "oracle" else -9))


def markdown(rows: Sequence[Row], timings: dict[str, dict[str, float]]) -> str:
    def pm(x: tuple[float, float], scale: float = 100) -> str:
        return f"{x[0] * scale:.1f} ± {x[1] * scale:.1f}"

    lines = [
        "| data | method | target | quality, % of strong | cost reduction, % | strong calls, % | stated margin: plan "
        "/ held-out | seeds within target - held-out margin (plan margin) | learning cost, % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in headline(rows):
        target = "" if r.target in (0.0, 1.0) or math.isnan(r.target) else f"{r.target:.2f}"
        margin = "" if math.isnan(r.margin) else f"{r.margin * 100:.1f} / {r.held_out_margin * 100:.1f}"
        within = f"{r.within}/{r.seeds} ({r.within_plan_margin}/{r.seeds})" if margin else ""
        learning = f"{r.learning * 100:.1f}" if r.learning else ""
        lines.append(
            f"| {r.data} | {r.method} | {target} | {pm(r.quality)} | {pm(r.cost_reduction)} | {pm(r.strong_share)} "
            f"| {margin} | {within} | {learning} |"
        )
    curve_targets = (0.90, 0.94, 0.95, 0.96, 0.98)
    lines += [
        "",
        "| data | method | " + " | ".join(f"target {t:.2f}" for t in curve_targets) + " |",
        "|---|---|" + "---|" * len(curve_targets),
    ]
    swept = [r for r in rows if r.target in curve_targets]
    for data, method in dict.fromkeys((r.data, r.method) for r in swept):
        cells = []
        for level in curve_targets:
            match = [r for r in swept if (r.data, r.method, r.target) == (data, method, level)]
            cells.append(f"{match[0].quality[0] * 100:.1f} / {match[0].cost_reduction[0] * 100:.1f}" if match else "")
        lines.append(f"| {data} | {method} | " + " | ".join(cells) + " |")
    base = timings["parse body (baseline)"]
    lines += [
        "",
        "| per call | wall p50 µs | wall p99 µs | CPU p50 µs | CPU p99 µs | wall p50 / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in timings.items():
        lines.append(
            f"| {name} | {t['p50_us']:.1f} | {t['p99_us']:.1f} | {t['cpu_p50_us']:.1f} | {t['cpu_p99_us']:.1f} "
            f"| {t['p50_us'] / base['p50_us']:.1f} |"
        )
    return "\n".join(lines)


COLOURS = {
    "always strong": "black",
    "always weak": "grey",
    "random": "tab:orange",
    "oracle": "tab:green",
    "predict, subject, budget": "tab:blue",
    "predict, subject, per task": "tab:cyan",
    "predict, embeddings, budget": "tab:purple",
    "predict, embeddings, per task": "tab:pink",
    "cascade, checks only": "tab:olive",
    "cascade, checks + evidence, budget": "tab:red",
    "cascade, checks + evidence, per task": "tab:brown",
}


def plot(rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, data in zip(axes, ("MMLU", "GSM8K"), strict=True):
        mine = [r for r in rows if r.data == data]
        for method in dict.fromkeys(r.method for r in mine):
            points = sorted((r for r in mine if r.method == method), key=lambda r: r.target)
            xs = [100 * (1 - r.cost_reduction[0]) for r in points]
            ys = [100 * r.quality[0] for r in points]
            style = "o" if len(points) == 1 else ("--" if method in ("random", "oracle") else "-o")
            ax.plot(xs, ys, style, label=method, markersize=5 if len(points) == 1 else 3, color=COLOURS.get(method))
        ax.axhline(95, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{data}: held-out quality against cost (mean of seeds)")
        ax.set_xlabel("cost, % of always gpt-4o")
        ax.set_ylabel("quality, % of the strong model's accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    embedder = load_embedder()
    if embedder is None:
        print("bench/routing.py needs the `bench` extra (wordllama)", file=sys.stderr)
        return 2
    mmlu, gsm8k = load_mmlu(), load_gsm8k()
    mmlu_vectors = embedder.embed([features(_request(i)).text for i in mmlu])
    gsm_vectors = embedder.embed([features(_request(i)).text for i in gsm8k])
    mmlu_k: list[int] = []
    gsm_k: list[int] = []
    rows = summarise("MMLU", run_mmlu(mmlu, mmlu_vectors, args.seeds, mmlu_k))
    gsm_outcomes, designs = run_gsm8k(gsm8k, gsm_vectors, args.seeds, gsm_k)
    rows += summarise("GSM8K", gsm_outcomes)
    load_before = os.getloadavg()[0]
    timings = latency(mmlu, embedder, mmlu_vectors)
    load_after = os.getloadavg()[0]
    table = markdown(rows, timings)
    print(table if args.markdown else "\n".join(f"{asdict(r)}" for r in headline(rows)))
    print(f"\nLoad average (1 min) around the latency run: {load_before:.2f} before, {load_after:.2f} after.")
    print(f"\nEmbedding clusters chosen per seed (2-fold CV inside the training half): MMLU {mmlu_k}, GSM8K {gsm_k}")
    print(f"\nGSM8K cascade buckets chosen per seed (2-fold CV inside the training half): {', '.join(designs)}")
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        result = {
            "rows": [asdict(r) for r in rows],
            "latency": timings,
            "load_average": [load_before, load_after],
            "gsm8k_designs": designs,
            "clusters": {"MMLU": mmlu_k, "GSM8K": gsm_k},
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
