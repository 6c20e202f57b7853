"""Plans and decisions of model routes: only tasks whose evidence meets the target move; shares; the budget."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.model_routes import Route, parse_route
from router.modelroutes.decision import decide, shadowed, uniform
from router.modelroutes.evidence import Stats, observe
from router.modelroutes.plan import Plan, make_plan

NOW = 1_000_000.0
PRICES = {"gpt-4o": 2.5, "gpt-4o-mini": 0.15, "gpt-4.1-nano": 0.10, "o3": 2.0}


def price(model: str, tokens_in: float, tokens_out: float) -> float | None:
    rate = PRICES.get(model)
    return None if rate is None else rate * (tokens_in + 4 * tokens_out) / 1e6


def route(**overrides: object) -> Route:
    return parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"], **overrides})


def stats(pairs: Sequence[tuple[float | bool, float | bool]], tokens: int = 500) -> Stats:
    s = None
    for a, b in pairs:
        s = observe(s, a, b, now=NOW, half_life_s=route().half_life_s, tokens_in=tokens)
    assert s is not None
    return s


def plan_of(r: Route, evidence: Mapping[str, Sequence[tuple[float | bool, float | bool]]]) -> Plan:
    return make_plan(r, {task: {r.to[0]: stats(pairs)} for task, pairs in evidence.items()}, now=NOW, price=price)


def test_a_route_parses_from_config_and_rejects_a_loop() -> None:
    r = route(mode="cascade", quality_target=0.9)
    assert (r.source, r.to, r.mode, r.quality_target, r.allocation) == ("gpt-4o", ["gpt-4o-mini"], "cascade", 0.9,
                                                                         "per_task")  # fmt: skip
    assert r.key == "gpt-4o>gpt-4o-mini"
    with pytest.raises(msgspec.ValidationError, match="itself"):
        route(to=["gpt-4o"])
    with pytest.raises(msgspec.ValidationError):
        route(quality_target=1.5)


def test_only_the_task_whose_evidence_meets_the_target_moves() -> None:
    r = route()
    plan = plan_of(
        r,
        {
            "extract": [(True, True)] * 6,  # a handful of agreeing examples
            "reason": [(True, True)] * 3 + [(True, False)] * 3,  # mixed
            "thin": [(True, True)] * 2,  # too few
        },
    )
    assert decide(r, plan, "extract", "call-1").model == "gpt-4o-mini"
    assert decide(r, plan, "extract", "call-1").reason == "evidence"
    for task in ("reason", "thin"):
        decision = decide(r, plan, task, "call-1")
        assert (decision.model, decision.reason) == ("gpt-4o", "below_target")
    new = decide(r, plan, "never-seen", "call-1")
    assert (new.model, new.reason, new.moved) == ("gpt-4o", "no_evidence", False)
    assert decide(r, None, "extract", "call-1").model == "gpt-4o"  # no plan yet: the asked-for model


def test_the_caller_can_opt_out_or_force_the_route() -> None:
    r = route()
    plan = plan_of(r, {"extract": [(True, True)] * 6})
    assert decide(r, plan, "extract", "k", force="asked").model == "gpt-4o"
    assert decide(r, plan, "unknown", "k", force="route").model == "gpt-4o-mini"


def test_the_cheapest_candidate_that_meets_the_target_answers() -> None:
    r = route(to=["gpt-4.1-nano", "gpt-4o-mini"])
    good, bad = stats([(True, True)] * 10), stats([(True, False)] * 5 + [(True, True)] * 5)
    plan = make_plan(r, {"a": {"gpt-4.1-nano": bad, "gpt-4o-mini": good}, "b": {"gpt-4.1-nano": good}},
                     now=NOW, price=price)  # fmt: skip
    assert decide(r, plan, "a", "k").model == "gpt-4o-mini"
    assert decide(r, plan, "b", "k").model == "gpt-4.1-nano"


def test_evidence_that_aged_away_no_longer_moves_a_task() -> None:
    r = route(half_life_s=3600)
    evidence = {"a": {"gpt-4o-mini": stats([(True, True)] * 6)}}
    assert make_plan(r, evidence, now=NOW, price=price).tasks["a"].shares == [("gpt-4o-mini", 1.0)]
    later = make_plan(r, evidence, now=NOW + 10 * 3600, price=price)
    assert later.tasks["a"].shares == []  # ten half-lives later the six calls count as 0.006 of a call


def test_budget_spends_the_room_a_task_leaves_on_part_of_a_borderline_one() -> None:
    r = route(allocation="budget")
    evidence = {
        "easy": [(True, True)] * 400,
        "hard": [(True, True)] * 360 + [(True, False)] * 40,  # 90%: below the target on its own
    }
    per_task = plan_of(route(), evidence)
    budget = plan_of(r, evidence)
    assert per_task.tasks["hard"].shares == []
    (model, share), = budget.tasks["hard"].shares  # fmt: skip
    assert model == "gpt-4o-mini" and 0 < share < 1
    assert budget.tasks["easy"].shares == [("gpt-4o-mini", 1.0)]
    assert budget.quality_lower >= 0.95 - 1e-9
    assert budget.moved_share > per_task.moved_share
    drawn = Counter(decide(r, budget, "hard", f"call-{i}").moved for i in range(20_000))
    assert drawn[True] / 20_000 == pytest.approx(share, abs=0.02)


def test_budget_never_moves_a_task_with_less_than_the_minimum_evidence() -> None:
    plan = plan_of(route(allocation="budget", min_evidence=5), {"big": [(True, True)] * 500, "tiny": [(1, 1)] * 4})
    assert plan.tasks["tiny"].shares == []


def test_a_model_without_a_price_is_never_a_budget_candidate() -> None:
    r = parse_route({"from": "gpt-4o", "to": ["unpriced-model"], "allocation": "budget"})
    plan = make_plan(r, {"a": {"unpriced-model": stats([(True, True)] * 50)}}, now=NOW, price=price)
    assert plan.tasks["a"].shares == []


outcomes = st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), outcomes, min_size=1, max_size=8), st.floats(0.8, 0.99))
def test_a_budget_plan_states_a_lower_bound_that_meets_its_target(
    evidence: dict[str, list[tuple[bool, bool]]], target: float
) -> None:
    plan = plan_of(route(allocation="budget", quality_target=target), evidence)
    if plan.moved_share > 0:
        assert plan.quality_lower >= target - 1e-6
    assert plan.quality_lower <= plan.quality + 1e-12
    for task_plan in plan.tasks.values():
        assert sum(share for _, share in task_plan.shares) <= 1 + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), outcomes, min_size=1, max_size=8))
def test_per_task_moves_exactly_the_tasks_whose_own_bound_meets_the_target(
    evidence: dict[str, list[tuple[bool, bool]]],
) -> None:
    plan = plan_of(route(), evidence)
    for task, task_plan in plan.tasks.items():
        moved = bool(task_plan.shares)
        assert moved == (task_plan.estimates["gpt-4o-mini"].lower >= 0.95), task


def test_draws_are_uniform_and_fixed_by_the_call_key() -> None:
    draws = [uniform(f"call-{i}") for i in range(10_000)]
    assert all(0 <= d < 1 for d in draws)
    assert sum(d < 0.25 for d in draws) / 10_000 == pytest.approx(0.25, abs=0.02)
    assert uniform("same") == uniform(b"same")
    assert uniform("same", "route") != uniform("same", "shadow")


def test_shadow_mode_samples_its_rate_of_calls() -> None:
    r = route(mode="shadow", shadow_rate=0.1)
    share = sum(shadowed(r, f"c{i}") for i in range(20_000)) / 20_000
    assert share == pytest.approx(0.1, abs=0.01)
    assert not any(shadowed(route(), f"c{i}") for i in range(100))  # predict mode never shadows


def test_an_empty_route_plan_expects_full_quality() -> None:
    plan = make_plan(route(), {}, now=NOW, price=price)
    assert (plan.quality, plan.quality_lower, plan.moved_share, plan.tasks) == (1.0, 1.0, 0.0, {})
    assert not math.isnan(plan.made_at)
