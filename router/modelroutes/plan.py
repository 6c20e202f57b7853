"""A route's plan: which share of each task's calls each candidate answers, made from the evidence off the call path.

`per_task` (the default): a task moves wholly to the cheapest candidate whose own lower bound meets the target;
every other task, and every task without evidence, stays with the asked-for model. The guarantee is per task.

`budget`: the target holds for the route's traffic as a whole, so a task the candidate answers as well as the
asked-for model leaves room to move part of one it answers slightly worse. The route's quality is
Q = 1 - sum_t v_t f_t d_t / sum_t v_t m_t (v: a task's traffic, f: the share moved, m: the asked-for model's mean
score, d = m (1 - R) the score lost per moved call), and the plan maximises the money saved, sum v_t f_t s_t,
subject to Q's lower bound, Q - z sqrt(sum (v_t f_t m_t se_t)^2) / sum v_t m_t, meeting the target. It is a
fractional (multiple-choice) knapsack: the LP optimum takes tasks in order of score lost per dollar saved, along
each task's convex hull of candidates, and splits at most one. Picking the tasks whose estimates look best favours
estimates that are lucky, so the ratios are first shrunk towards their common mean (empirical Bayes, normal
model: the between-task variance by moments) and their standard errors shrink with them; held-out tests in
bench/routing.py show the plan keeps its stated bound where unshrunk estimates fall short. Only tasks with at
least `min_evidence` calls take part.

Money saved per moved call comes from a price function (model, input tokens, output tokens) -> USD, so this module
needs no price table: the proxy passes one over router.pricing. In `cascade` mode the candidate has already
answered when the plan is consulted, so keeping its answer saves the whole asked-for call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import TYPE_CHECKING

import msgspec

from router.modelroutes.evidence import Estimate, Stats, decayed, estimate

if TYPE_CHECKING:
    from router.core.model_routes import Route

PriceFn = Callable[[str, float, float], float | None]
"""USD of one call of `model` with that many input and output tokens; None when the model has no price."""

_DEFAULT_TOKENS = (1000.0, 0.0)  # evidence recorded without token counts: compare prices per 1000 input tokens


class TaskPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One task's shares of calls per candidate (the rest go to the asked-for model) and their evidence."""

    shares: list[tuple[str, float]]
    estimates: dict[str, Estimate]


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """What a route does now: per task, the candidates' shares; and the quality it expects, with its bound."""

    route: str
    made_at: float
    allocation: str
    target: float
    tasks: dict[str, TaskPlan]
    """Every task with evidence; one the plan leaves with the asked-for model has no shares."""
    quality: float
    """Expected quality of the route's traffic under the plan (1: everything stays)."""
    quality_lower: float
    """Its lower bound at the route's confidence: the stated margin is quality - quality_lower."""
    moved_share: float
    """Share of the route's calls (by evidence weight) that the plan moves to a candidate."""


class _Option(msgspec.Struct, frozen=True):
    model: str | None  # None: the asked-for model
    loss: float  # score lost over the task's traffic (v * m * (1 - R))
    sd: float  # its standard error (v * m * se)
    saving: float  # USD saved over the task's traffic


def _saving(route: Route, model: str, est: Estimate, price: PriceFn, cascade: bool) -> float | None:
    tokens = (est.tokens_in, est.tokens_out) if est.tokens_in or est.tokens_out else _DEFAULT_TOKENS
    asked = price(route.source, *tokens)
    if asked is None:
        return None
    if cascade:
        return asked
    cheap = price(model, *tokens)
    return None if cheap is None else asked - cheap


def _shrunk(estimates: Mapping[str, Estimate]) -> dict[str, tuple[float, float]]:
    """Each task's ratio and standard error shrunk towards the weighted mean of all tasks (empirical Bayes)."""
    usable = {task: e for task, e in estimates.items() if math.isfinite(e.ratio) and math.isfinite(e.se)}
    if len(usable) < 3:
        return {task: (e.ratio, e.se) for task, e in usable.items()}
    total = sum(e.calls for e in usable.values())
    mean = sum(e.calls * e.ratio for e in usable.values()) / total
    spread = sum(e.calls * (e.ratio - mean) ** 2 for e in usable.values()) / total
    noise = sum(e.calls * e.se * e.se for e in usable.values()) / total
    between = max(spread - noise, 1e-6)
    shrunk = {}
    for task, e in usable.items():
        keep = between / (between + e.se * e.se)
        pulled = mean + keep * (e.ratio - mean)
        # One-sided: a task that looks better than the others is pulled down (the winner's curse), one that looks
        # worse keeps its own estimate. Tasks are not exchangeable (the ones that save most, the long prompts,
        # are often the hardest), so lifting a poor task towards the mean would be optimism the guarantee cannot
        # afford.
        shrunk[task] = (pulled, math.sqrt(keep) * e.se) if pulled < e.ratio else (e.ratio, e.se)
    return shrunk


def _estimates(route: Route, evidence: Mapping[str, Mapping[str, Stats]], now: float) -> dict[str, dict[str, Estimate]]:
    out: dict[str, dict[str, Estimate]] = {}
    for task, per_model in evidence.items():
        out[task] = {
            model: estimate(decayed(per_model[model], now, route.half_life_s), route.prior, route.confidence)
            for model in route.to
            if model in per_model
        }
    return out


Shrunk = dict[str, dict[str, tuple[float, float]]]
"""Candidate model -> task -> (ratio, standard error) as the plan weighs them."""


def _quality(
    route: Route, estimates: Mapping[str, Mapping[str, Estimate]], tasks: Mapping[str, TaskPlan], shrunk: Shrunk
) -> tuple[float, float, float]:
    """Expected quality, its lower bound and the moved share of the route's traffic under `tasks`."""
    z = NormalDist().inv_cdf(route.confidence)
    base = lost = var = moved = traffic = 0.0
    for task, per_model in estimates.items():
        usable = [e for e in per_model.values() if e.asked_mean > 0]
        if not usable:
            continue
        reference = max(usable, key=lambda e: e.calls)
        v, m = reference.calls, reference.asked_mean
        base += v * m
        traffic += v
        plan = tasks.get(task)
        for model, share in plan.shares if plan else []:
            e = per_model[model]
            ratio, se = shrunk.get(model, {}).get(task, (e.ratio, e.se))
            lost += v * share * m * (1 - ratio)
            var += (v * share * m * se) ** 2
            moved += v * share
    if base <= 0:
        return 1.0, 1.0, 0.0
    quality = 1 - lost / base
    return quality, quality - z * math.sqrt(var) / base, moved / traffic


def _per_task(route: Route, estimates: Mapping[str, Mapping[str, Estimate]]) -> dict[str, TaskPlan]:
    tasks = {}
    for task, per_model in estimates.items():
        tasks[task] = TaskPlan(shares=[], estimates=dict(per_model))
        for model in route.to:  # cheapest first
            e = per_model.get(model)
            if e is not None and e.lower >= route.quality_target:
                tasks[task] = TaskPlan(shares=[(model, 1.0)], estimates=dict(per_model))
                break
    return tasks


def _hull(options: list[_Option]) -> list[_Option]:
    """The options on the lower convex hull of loss against saving, by increasing saving, from staying put."""
    points = sorted(options, key=lambda o: (o.saving, o.loss))
    hull: list[_Option] = [points[0]]
    for option in points[1:]:
        if option.saving <= hull[-1].saving or option.loss >= math.inf:
            continue
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = (hull[-2].saving, hull[-2].loss), (hull[-1].saving, hull[-1].loss)
            # Drop the last point if it lies on or above the segment from the one before it to the new one.
            if (y2 - y1) * (option.saving - x1) >= (option.loss - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(option)
    return hull


def _hulls(
    route: Route, estimates: Mapping[str, Mapping[str, Estimate]], shrunk: Shrunk, price: PriceFn, cascade: bool
) -> tuple[float, dict[str, list[_Option]]]:
    """The route's total asked-for score (the quality's denominator) and each eligible task's options."""
    candidates = route.to[:1] if cascade else route.to
    base = 0.0
    hulls: dict[str, list[_Option]] = {}
    for task, per_model in estimates.items():
        usable = [e for e in per_model.values() if e.asked_mean > 0]
        if not usable:
            continue
        reference = max(usable, key=lambda e: e.calls)
        v, m = reference.calls, reference.asked_mean
        base += v * m
        options = [_Option(None, 0.0, 0.0, 0.0)]
        for model in candidates:
            e = per_model.get(model)
            if e is None or e.calls < route.min_evidence or task not in shrunk.get(model, {}):
                continue
            saving = _saving(route, model, e, price, cascade)
            if saving is None or saving <= 0:
                continue
            ratio, se = shrunk[model][task]
            options.append(_Option(model, v * m * (1 - ratio), v * m * se, v * saving))
        if len(options) > 1:
            hulls[task] = _hull(options)
    return base, hulls


def _allocate(route: Route, base: float, hulls: Mapping[str, list[_Option]]) -> dict[str, dict[str, float]]:
    """Task -> option model ("" for the asked-for one) -> share: the greedy LP optimum under the bound."""
    z = NormalDist().inv_cdf(route.confidence)
    steps = [
        (task, i, hull[i + 1].loss - hull[i].loss, hull[i + 1].saving - hull[i].saving)
        for task, hull in hulls.items()
        for i in range(len(hull) - 1)
    ]
    steps.sort(key=lambda s: s[2] / s[3])
    mix: dict[str, dict[str, float]] = {}

    def lower(trial: Mapping[str, Mapping[str, float]]) -> float:
        lost = var = 0.0
        for task, shares in trial.items():
            for option in hulls[task]:
                share = shares.get(option.model or "", 0.0)
                lost += share * option.loss
                var += (share * option.sd) ** 2
        return 1 - lost / base - z * math.sqrt(var) / base

    def moved(task: str, i: int, fraction: float) -> dict[str, dict[str, float]]:
        hull = hulls[task]
        shares = {(o.model or ""): 0.0 for o in hull}
        shares[hull[i].model or ""] = 1.0 - fraction
        shares[hull[i + 1].model or ""] += fraction
        return {**mix, task: shares}

    for task, i, _, _ in steps:
        full = moved(task, i, 1.0)
        if lower(full) >= route.quality_target:
            mix = full
            continue
        low, high = 0.0, 1.0
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if lower(moved(task, i, mid)) >= route.quality_target else (low, mid)
        if low > 1e-9:
            mix = moved(task, i, low)
        break
    return mix


def _budget(
    route: Route, estimates: Mapping[str, Mapping[str, Estimate]], shrunk: Shrunk, price: PriceFn, cascade: bool
) -> dict[str, TaskPlan]:
    stay = {task: TaskPlan(shares=[], estimates=dict(per_model)) for task, per_model in estimates.items()}
    base, hulls = _hulls(route, estimates, shrunk, price, cascade)
    if base <= 0:
        return stay
    for task, shares in _allocate(route, base, hulls).items():
        moved_shares = [(model, share) for model, share in shares.items() if model and share > 1e-12]
        stay[task] = TaskPlan(shares=moved_shares, estimates=dict(estimates[task]))
    return stay


def make_plan(
    route: Route,
    evidence: Mapping[str, Mapping[str, Stats]],
    *,
    now: float,
    price: PriceFn,
    cascade: bool = False,
) -> Plan:
    """The route's plan from its evidence (task -> candidate model -> Stats) as of `now`.

    `cascade`: plan which (task, answer bucket) keys may keep the first candidate's answer (cascade.py) rather
    than which calls to send to a candidate.
    """
    estimates = _estimates(route, evidence, now)
    shrunk: Shrunk = {}
    if route.allocation == "per_task":
        tasks = _per_task(route, estimates)
    else:
        shrunk = {
            model: _shrunk({t: pm[model] for t, pm in estimates.items() if model in pm and pm[model].calls > 0})
            for model in route.to
        }
        tasks = _budget(route, estimates, shrunk, price, cascade)
    quality, lower, moved = _quality(route, estimates, tasks, shrunk)
    return Plan(
        route=route.key,
        made_at=now,
        allocation=route.allocation,
        target=route.quality_target,
        tasks=tasks,
        quality=quality,
        quality_lower=lower,
        moved_share=moved,
    )


def sample_margin(route: Route, plan: Plan, calls: Mapping[str, float]) -> float:
    """How far the quality observed over `calls` (task -> number of calls) can fall below the plan's expected
    quality from sampling alone, at the route's confidence.

    The plan's own margin (quality - quality_lower) is the uncertainty of the expected quality; a finite sample of
    calls adds its own: each moved call's residual (its per-call variance, from the evidence) and, in a split
    task, which calls the draw moved. A quality measured over those calls is expected within
    sqrt(plan margin^2 + sample margin^2) of the plan's quality, at the route's confidence.
    """
    z = NormalDist().inv_cdf(route.confidence)
    base = var = 0.0
    for task, count in calls.items():
        task_plan = plan.tasks.get(task)
        usable = [e for e in task_plan.estimates.values() if e.asked_mean > 0] if task_plan else []
        if task_plan is None or not usable:
            continue
        m = max(usable, key=lambda e: e.calls).asked_mean
        base += count * m
        for model, share in task_plan.shares:
            e = task_plan.estimates[model]
            per_call = e.se * e.se * e.calls * m * m
            var += count * share * per_call + count * share * (1 - share) * (m * (1 - e.ratio)) ** 2
    return z * math.sqrt(var) / base if base > 0 else 0.0
