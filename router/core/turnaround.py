"""The turnaround model of a queue: how long its batches take, as decayed quantiles of the batches it saw.

Pure: the observations come in (`Observation`s read from Redis by `BatchStore`), estimates go out.

- **Decay.** An observation weighs `0.5 ** (age / half_life_s)`: recent batches count more, and a queue that has
  been quiet for a few half-lives is back to its prior.
- **Prior.** The prior (`batch.turnaround_prior_s`) stands for `min_observations` batches that took exactly that
  long. Every observation takes one of those places, so the prior fades out as evidence comes in and comes back
  as the evidence decays; with `min_observations` of weight observed, the prior is gone.
- **Quantile.** A weighted quantile of the observations and what is left of the prior. A batch the router cut
  (cancelled because it was late) is *censored*: it says only that the turnaround was longer than its age then.
  The quantile is read off a weighted Kaplan-Meier curve, so cut batches push it up without inventing how long
  they would have taken; when the finished batches cannot reach the quantile, the longest age seen is the answer.
- **Size.** Recorded with each batch, used only when the data show it matters: a weighted least-squares fit of
  log(seconds) on log(lines) whose slope stands at least two standard errors from zero, over at least
  `SIZE_MIN_OBSERVATIONS` batches of at least two sizes. Then an estimate for `lines` is scaled by
  `(lines / typical lines) ** slope`. Without such a slope the model ignores size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

SIZE_MIN_OBSERVATIONS = 8
SIZE_T = 2.0  # the slope's distance from zero, in standard errors, before size counts
MIN_WEIGHT = 1e-3  # observations decayed below this weight are left out


class Observation(msgspec.Struct, frozen=True, array_like=True):
    """One batch: how long it took (seconds), when it ended (Unix seconds), how many lines it had, and whether it
    was cut before it finished (then `seconds` is its age at the cut, a lower bound)."""

    seconds: float
    at: float
    lines: int = 1
    censored: bool = False


class Summary(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's model at a glance (what the metrics export)."""

    median_s: float
    admit_s: float
    weight: float
    size_slope: float


class TurnaroundModel:
    """Quantiles of batch turnaround from decayed observations and a prior (see the module docstring)."""

    def __init__(
        self, prior_s: float, *, quantile: float = 0.95, min_observations: float = 5.0, half_life_s: float = 6 * 3600.0
    ) -> None:
        self.prior_s = prior_s
        self.admit_quantile = quantile
        self.min_observations = min_observations
        self.half_life_s = half_life_s

    def weighted(self, observations: Sequence[Observation], now: float) -> list[tuple[Observation, float]]:
        """Each observation with its decayed weight; those decayed to nothing are left out."""
        out = []
        for obs in observations:
            weight = 0.5 ** (max(0.0, now - obs.at) / self.half_life_s)
            if weight >= MIN_WEIGHT:
                out.append((obs, weight))
        return out

    def weight(self, observations: Sequence[Observation], now: float) -> float:
        """How many batches' worth of evidence the model has now (decayed)."""
        return sum(w for _, w in self.weighted(observations, now))

    def enough(self, observations: Sequence[Observation], now: float) -> bool:
        """Whether the observations alone carry the estimate (the prior has faded out)."""
        return self.weight(observations, now) >= self.min_observations

    def quantile(
        self, observations: Sequence[Observation], now: float, q: float | None = None, lines: int | None = None
    ) -> float:
        """The `q` quantile of turnaround (default: the admission quantile), for a batch of `lines` if given."""
        q = self.admit_quantile if q is None else q
        weighted = self.weighted(observations, now)
        points = [(obs.seconds, w, obs.censored) for obs, w in weighted]
        prior_weight = self.min_observations - sum(w for _, w in weighted)
        if prior_weight > 0:
            points.append((self.prior_s, prior_weight, False))
        value = weighted_quantile(points, q)
        if lines is not None:
            value *= self._size_factor(weighted, lines)
        return value

    def summary(self, observations: Sequence[Observation], now: float) -> Summary:
        """The median, the admission quantile, the evidence's weight and the size slope (0 when unused)."""
        weighted = self.weighted(observations, now)
        return Summary(
            median_s=self.quantile(observations, now, 0.5),
            admit_s=self.quantile(observations, now),
            weight=sum(w for _, w in weighted),
            size_slope=size_slope(weighted) or 0.0,
        )

    def _size_factor(self, weighted: list[tuple[Observation, float]], lines: int) -> float:
        slope = size_slope(weighted)
        if slope is None:
            return 1.0
        typical = math.exp(sum(w * math.log(max(1, o.lines)) for o, w in weighted) / sum(w for _, w in weighted))
        return float((max(1, lines) / typical) ** slope)


def weighted_quantile(points: Sequence[tuple[float, float, bool]], q: float) -> float:
    """The `q` quantile of (value, weight, censored) points: the smallest value where the weighted Kaplan-Meier
    distribution reaches `q` (without censored points, the plain weighted quantile); when it never does, the
    largest value seen."""
    ordered = sorted((v, w, c) for v, w, c in points if w > 0)
    if not ordered:
        raise ValueError("no points with weight")
    at_risk = sum(w for _, w, _ in ordered)
    survival = 1.0
    i = 0
    while i < len(ordered):
        value = ordered[i][0]
        events = removed = 0.0
        while i < len(ordered) and ordered[i][0] == value:  # ties: events before censoring, as usual
            events += 0.0 if ordered[i][2] else ordered[i][1]
            removed += ordered[i][1]
            i += 1
        if events:
            survival *= 1.0 - events / at_risk
            if 1.0 - survival >= q - 1e-12:
                return value
        at_risk -= removed
    return ordered[-1][0]


def size_slope(weighted: Sequence[tuple[Observation, float]]) -> float | None:
    """The slope of log(seconds) on log(lines) when the data show one (see the module docstring), else None."""
    if len(weighted) < SIZE_MIN_OBSERVATIONS:
        return None
    xs = [math.log(max(1, o.lines)) for o, _ in weighted]
    ys = [math.log(max(1e-3, o.seconds)) for o, _ in weighted]
    ws = [w for _, w in weighted]
    total = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    if sxx <= 1e-12:
        return None  # one size only: nothing to learn about size
    slope = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True)) / sxx
    residual = sum(w * (y - my - slope * (x - mx)) ** 2 for w, x, y in zip(ws, xs, ys, strict=True))
    # Kish's effective sample size keeps a few heavy recent points from passing for many.
    n_eff = total**2 / sum(w * w for w in ws)
    if n_eff <= 2:
        return None
    stderr = math.sqrt(residual / total * n_eff / (n_eff - 2) / (sxx / total) / n_eff)
    if stderr == 0.0 or abs(slope) >= SIZE_T * stderr:
        return slope
    return None
