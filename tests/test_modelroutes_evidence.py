"""The evidence math of model routes: decayed paired statistics, the quality ratio and its small-sample bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.model_routes import Prior
from router.modelroutes.evidence import Stats, decayed, estimate, factor, merge, observe, score
from router.modelroutes.tdist import t_cdf, t_quantile

DAY = 86_400.0
PRIOR = Prior()


def stats_of(pairs: list[tuple[float | bool, float | bool]], now: float = 0.0, half_life: float = DAY) -> Stats:
    stats = None
    for a, b in pairs:
        stats = observe(stats, a, b, now=now, half_life_s=half_life)
    assert stats is not None
    return stats


def lower(pairs: list[tuple[float | bool, float | bool]], confidence: float = 0.95) -> float:
    return estimate(stats_of(pairs), PRIOR, confidence).lower


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.95, 1, 6.3138), (0.95, 2, 2.9200), (0.95, 4, 2.1318), (0.95, 10, 1.8125), (0.95, 30, 1.6973),
     (0.975, 5, 2.5706), (0.99, 20, 2.5280), (0.05, 3, -2.3534), (0.5, 7, 0.0), (0.95, 1e9, 1.6449)],
)  # fmt: skip
def test_t_quantiles_match_the_tables(p: float, df: float, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-4)


@given(st.floats(0.01, 0.99), st.floats(0.5, 200))
def test_t_quantile_inverts_the_distribution_function(p: float, df: float) -> None:
    df = round(df * 64) / 64  # the quantile is cached at 1/64 of a degree
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-7)


@pytest.mark.parametrize(
    ("case", "pairs", "routes"),
    [
        ("five agreeing right/wrong outcomes", [(True, True)] * 5, True),
        ("four agreeing are too few", [(True, True)] * 4, False),
        ("two agreeing are thin", [(True, True)] * 2, False),
        ("closely agreeing grades", [(8, 8.2), (9, 8.8), (7.5, 7.6), (8, 8), (9, 9.1)], True),
        ("spread grades", [(8, 6), (9, 9.5), (7.5, 4), (8, 8), (9, 10)], False),
        ("one miss in five", [(True, True)] * 4 + [(True, False)], False),
        ("one win in five is still mixed", [(True, True)] * 4 + [(False, True)], False),
        ("97 of 100 kept is not 95% with confidence", [(True, True)] * 97 + [(True, False)] * 3, False),
        ("199 of 200 kept", [(True, True)] * 199 + [(True, False)], True),
        ("both wrong everywhere says nothing", [(False, False)] * 20, False),
    ],
)
def test_a_handful_of_agreeing_pairs_meets_the_target_and_mixed_or_thin_evidence_does_not(
    case: str, pairs: list[tuple[float | bool, float | bool]], routes: bool
) -> None:
    assert (lower(pairs) >= 0.95) is routes, case


def test_the_ratio_is_the_ratio_of_means_on_the_same_calls() -> None:
    e = estimate(stats_of([(True, True), (True, False), (False, True), (True, True)]), PRIOR, 0.95)
    assert e.asked_mean == pytest.approx(0.75)
    assert e.candidate_mean == pytest.approx(0.75)
    assert e.ratio == pytest.approx(1.0)
    assert e.calls == pytest.approx(4)


def test_no_evidence_has_no_bound() -> None:
    e = estimate(None, PRIOR, 0.95)
    assert math.isnan(e.ratio)
    assert e.lower == -math.inf


def test_a_score_is_a_bool_or_a_finite_number_not_below_zero() -> None:
    assert score(True) == 1.0
    assert score(False) == 0.0
    assert score(7) == 7.0
    for bad in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match="score"):
            score(bad)


def test_evidence_halves_its_weight_in_a_half_life() -> None:
    stats = stats_of([(True, True)] * 8)
    later = decayed(stats, 3 * DAY, DAY)
    assert later.w == pytest.approx(1.0)
    assert later.w2 == pytest.approx(8 / 64)
    assert later.effective_calls == pytest.approx(1.0)  # old evidence is thin evidence
    assert decayed(stats, -5, DAY) is stats  # never moved back in time
    assert factor(DAY, DAY) == pytest.approx(0.5)


def test_new_evidence_outweighs_old_evidence() -> None:
    old = stats_of([(True, False)] * 20, now=0)
    new = observe(old, True, True, now=10 * DAY, half_life_s=DAY)
    for _ in range(19):
        new = observe(new, True, True, now=10 * DAY, half_life_s=DAY)
    assert estimate(new, PRIOR, 0.95).ratio > 0.97


pair = st.tuples(st.one_of(st.booleans(), st.floats(0, 10)), st.one_of(st.booleans(), st.floats(0, 10)))


@settings(max_examples=60)
@given(st.lists(pair, min_size=1, max_size=30), st.lists(pair, min_size=1, max_size=30))
def test_merging_two_sets_of_evidence_equals_observing_them_in_turn(
    left: list[tuple[float, float]], right: list[tuple[float, float]]
) -> None:
    merged = merge(stats_of(left, now=0), stats_of(right, now=DAY), DAY)
    both = None
    for a, b in left:
        both = observe(both, a, b, now=0, half_life_s=DAY)
    for a, b in right:
        both = observe(both, a, b, now=DAY, half_life_s=DAY)
    assert both is not None
    for name in ("w", "w2", "a", "b", "aa", "bb", "ab"):
        assert getattr(merged, name) == pytest.approx(getattr(both, name), rel=1e-9, abs=1e-9)


@settings(max_examples=60)
@given(st.lists(pair, min_size=2, max_size=40), st.floats(0.1, 100))
def test_the_ratio_and_its_bound_do_not_depend_on_the_scale_of_scores(
    pairs: list[tuple[float, float]], scale: float
) -> None:
    base = estimate(stats_of(pairs), PRIOR, 0.95)
    scaled = estimate(stats_of([(float(a) * scale, float(b) * scale) for a, b in pairs]), PRIOR, 0.95)
    if math.isnan(base.ratio) or base.asked_mean < 1e-6:
        return
    assert scaled.ratio == pytest.approx(base.ratio, rel=1e-6)
    assert scaled.lower == pytest.approx(base.lower, rel=1e-6, abs=1e-9)


@settings(max_examples=60)
@given(st.lists(pair, min_size=1, max_size=40))
def test_the_bound_is_below_the_estimate_and_loosens_with_confidence(pairs: list[tuple[float, float]]) -> None:
    stats = stats_of(pairs)
    e90, e99 = estimate(stats, PRIOR, 0.90), estimate(stats, PRIOR, 0.99)
    if math.isnan(e90.ratio):
        return
    assert e99.lower <= e90.lower <= e90.ratio


@given(st.integers(5, 300))
def test_more_agreeing_evidence_only_tightens_the_bound(n: int) -> None:
    assert lower([(True, True)] * (n + 1)) >= lower([(True, True)] * n)
