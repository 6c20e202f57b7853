"""The turnaround model: decayed, censored quantiles with a fading prior, and size only when the data show it."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.turnaround import Observation, TurnaroundModel, size_slope, weighted_quantile

NOW = 1_000_000.0
HOUR = 3600.0


def seen(*seconds: float, ago: float = 0.0, lines: int = 1) -> list[Observation]:
    return [Observation(seconds=s, at=NOW - ago, lines=lines) for s in seconds]


@pytest.mark.parametrize(
    ("observations", "q", "expected"),
    [
        ([], 0.95, 20.0),  # the prior alone
        (seen(4.0), 0.95, 20.0),  # one batch of evidence, four of prior: the prior's quantile still rules
        (seen(4.0, 5.0, 6.0, 7.0), 0.5, 6.0),  # four observed, one of prior: the median moves to the data
        (seen(1, 2, 3, 4, 5), 0.95, 5.0),  # enough evidence: the prior is gone
        (seen(1, 2, 3, 4, 5), 0.5, 3.0),
        (seen(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.95, 10.0),
        (seen(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.8, 8.0),
        (seen(100, 100, 100, 100, 100, ago=24 * HOUR), 0.9, 20.0),  # a day old at a 6 h half-life: 1/16 each
    ],
)
def test_quantile(observations: list[Observation], q: float, expected: float) -> None:
    assert TurnaroundModel(20.0).quantile(observations, NOW, q) == expected


def test_evidence_decays_and_the_prior_comes_back() -> None:
    model = TurnaroundModel(20.0, half_life_s=HOUR)
    fresh = seen(2, 2, 2, 2, 2, 2, 2, 2)
    assert model.enough(fresh, NOW) and model.quantile(fresh, NOW) == 2.0
    old = seen(2, 2, 2, 2, 2, 2, 2, 2, ago=2 * HOUR)  # weighs 8 / 4 = 2 batches now
    assert model.weight(old, NOW) == pytest.approx(2.0)
    assert not model.enough(old, NOW)
    assert model.quantile(old, NOW) == 20.0
    assert model.quantile(old, NOW, 0.3) == 2.0


def test_recent_batches_outweigh_old_ones() -> None:
    model = TurnaroundModel(20.0, half_life_s=HOUR, min_observations=1)
    observations = seen(100, 100, 100, 100, ago=4 * HOUR) + seen(10, 10)  # old: 4/16 = 0.25 of weight
    assert model.quantile(observations, NOW, 0.85) == 10.0
    assert model.quantile(observations, NOW, 0.95) == 100.0


def test_cut_batches_push_the_quantile_up_without_inventing_durations() -> None:
    model = TurnaroundModel(20.0, min_observations=1)
    done = seen(5, 5, 5, 5, 5, 5, 5, 5, 5)
    cut = [Observation(seconds=40.0, at=NOW, lines=1, censored=True)]
    assert model.quantile(done, NOW, 0.95) == 5.0
    assert model.quantile(done + cut, NOW, 0.9) == 5.0
    assert model.quantile(done + cut, NOW, 0.95) == 40.0  # unknown beyond: the longest age seen
    late_cut = [Observation(seconds=2.0, at=NOW, lines=1, censored=True)]  # cut before most finished
    assert model.quantile(seen(1, 3, 3, 3) + late_cut, NOW, 0.95) == 3.0


def test_kaplan_meier_matches_the_plain_quantile_without_censoring() -> None:
    rng = random.Random(7)
    for _ in range(50):
        values = [rng.lognormvariate(1.6, 1.1) for _ in range(rng.randint(1, 40))]
        q = rng.choice([0.5, 0.9, 0.95, 0.99])
        plain = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
        assert weighted_quantile([(v, 1.0, False) for v in values], q) == plain


@given(
    st.lists(st.tuples(st.floats(0.01, 1e5), st.floats(0.01, 10), st.booleans()), min_size=1, max_size=30),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
)
def test_quantiles_are_monotone_and_within_the_data(points: list[tuple[float, float, bool]], a: float,
                                                    b: float) -> None:  # fmt: skip
    low, high = sorted((a, b))
    lo, hi = weighted_quantile(points, low), weighted_quantile(points, high)
    assert lo <= hi
    values = [v for v, _, _ in points]
    assert min(values) <= lo and hi <= max(values)


def test_size_is_ignored_unless_the_data_show_it() -> None:
    model = TurnaroundModel(20.0, min_observations=1)
    rng = random.Random(3)
    flat = [Observation(seconds=rng.lognormvariate(1.6, 1.0), at=NOW, lines=rng.choice([1, 10, 100, 1000]))
            for _ in range(40)]  # fmt: skip
    assert size_slope([(o, 1.0) for o in flat]) is None
    assert model.quantile(flat, NOW, lines=1) == model.quantile(flat, NOW, lines=1000) == model.quantile(flat, NOW)
    # Turnaround proportional to size: the slope is found, and a batch 10x the typical size is expected 10x longer.
    sized = [Observation(seconds=0.1 * n * rng.uniform(0.9, 1.1), at=NOW, lines=n) for n in (10, 100, 1000) * 6]
    slope = size_slope([(o, 1.0) for o in sized])
    assert slope is not None and slope == pytest.approx(1.0, abs=0.05)
    typical = model.quantile(sized, NOW, 0.5, lines=100)
    assert model.quantile(sized, NOW, 0.5, lines=1000) == pytest.approx(10 * typical, rel=0.05)


def test_one_size_only_or_too_few_batches_say_nothing_about_size() -> None:
    assert size_slope([(o, 1.0) for o in seen(1, 2, 3, 4, 5, 6, 7, 8, 9, lines=50)]) is None
    few = [Observation(seconds=float(n), at=NOW, lines=n) for n in (1, 10, 100)]
    assert size_slope([(o, 1.0) for o in few]) is None


def test_summary() -> None:
    summary = TurnaroundModel(20.0).summary(seen(1, 2, 3, 4, 5), NOW)
    assert (summary.median_s, summary.admit_s, summary.weight, summary.size_slope) == (3.0, 5.0, 5.0, 0.0)
