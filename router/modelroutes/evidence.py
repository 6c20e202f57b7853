"""Evidence of one (route, task, candidate): decayed sufficient statistics of paired scores, and what they say.

A pair is the asked-for model's score `a` and the candidate's score `b` on the same prompt (a number >= 0 or a
bool, higher is better). The statistics are weighted sums, each call weighing 2^(-age / half-life), so old
evidence fades: w = sum of weights, w2 = sum of squared weights (for the effective count), and the weighted sums
of a, b, a^2, b^2, ab, plus the asked-for call's tokens (what moving a call saves). Adding a pair or merging two
sets of statistics is exact; the Redis store applies the same update in Lua (store.py).

Quality is R = mean(b) / mean(a). Its lower bound treats R - R_true ~ mean of the residuals b - R a divided by
mean(a) (the delta method for a ratio), whose spread is estimated from the pairs with a conjugate prior on the
variance (`route.Prior`: `weight` pseudo-calls of relative spread `sd`), and takes Student's t quantile with the
matching degrees of freedom: lower = R - t(confidence, df) * se. Closely agreeing pairs give a tight bound quickly;
mixed or few pairs do not. A task with no evidence has no estimate: it stays with the asked-for model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from router.modelroutes.tdist import t_quantile

if TYPE_CHECKING:
    from router.core.model_routes import Prior


class Stats(msgspec.Struct, frozen=True, kw_only=True):
    """Decayed weighted sums of paired scores, expressed as of time `t` (Unix seconds)."""

    t: float
    w: float = 0.0
    w2: float = 0.0
    a: float = 0.0
    b: float = 0.0
    aa: float = 0.0
    bb: float = 0.0
    ab: float = 0.0
    tokens_in: float = 0.0
    tokens_out: float = 0.0

    @property
    def effective_calls(self) -> float:
        """How many calls the evidence is worth: its decayed weight, or Kish's effective sample size
        (sum w)^2 / sum w^2 when unequal weights make that smaller. Old evidence thus becomes thin evidence: ten
        agreeing calls ten half-lives ago count as 0.01 of a call, and no longer move a task."""
        if self.w2 <= 0:
            return 0.0
        return min(self.w, self.w * self.w / self.w2)


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    """What a task's evidence says of its candidate: the quality ratio and its one-sided lower bound."""

    calls: float
    """Effective number of calls behind the estimate."""
    asked_mean: float
    candidate_mean: float
    ratio: float
    """Candidate mean / asked-for mean (nan when the asked-for mean is not positive)."""
    se: float
    """Standard error of the ratio (with the prior's pseudo-calls)."""
    df: float
    lower: float
    """The ratio's lower bound at the confidence asked for; -inf when there is no usable evidence."""
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    """Mean tokens of the asked-for calls behind the evidence (0 when none were recorded)."""


def score(value: float | bool) -> float:
    """A score as a float: True 1, False 0; a number must be finite and >= 0 (ValueError otherwise)."""
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"a score must be a finite number >= 0 or a bool, got {value!r}")
    return number


def factor(elapsed_s: float, half_life_s: float) -> float:
    """The weight left after `elapsed_s` seconds (1 for none or a negative interval)."""
    return 1.0 if elapsed_s <= 0 else 2.0 ** (-elapsed_s / half_life_s)


def decayed(stats: Stats, now: float, half_life_s: float) -> Stats:
    """`stats` expressed as of `now` (never moved back in time)."""
    if now <= stats.t:
        return stats
    f = factor(now - stats.t, half_life_s)
    return Stats(
        t=now,
        w=stats.w * f,
        w2=stats.w2 * f * f,
        a=stats.a * f,
        b=stats.b * f,
        aa=stats.aa * f,
        bb=stats.bb * f,
        ab=stats.ab * f,
        tokens_in=stats.tokens_in * f,
        tokens_out=stats.tokens_out * f,
    )


def observe(
    stats: Stats | None,
    asked: float | bool,
    candidate: float | bool,
    *,
    now: float,
    half_life_s: float,
    tokens_in: int = 0,
    tokens_out: int = 0,
    weight: float = 1.0,
) -> Stats:
    """`stats` (or none yet) with one more pair of scores observed at `now`."""
    a, b = score(asked), score(candidate)
    base = Stats(t=now) if stats is None else decayed(stats, now, half_life_s)
    return Stats(
        t=base.t,
        w=base.w + weight,
        w2=base.w2 + weight * weight,
        a=base.a + weight * a,
        b=base.b + weight * b,
        aa=base.aa + weight * a * a,
        bb=base.bb + weight * b * b,
        ab=base.ab + weight * a * b,
        tokens_in=base.tokens_in + weight * tokens_in,
        tokens_out=base.tokens_out + weight * tokens_out,
    )


def merge(left: Stats, right: Stats, half_life_s: float) -> Stats:
    """Both sets of evidence together, as of the later of their times."""
    now = max(left.t, right.t)
    x, y = decayed(left, now, half_life_s), decayed(right, now, half_life_s)
    return Stats(
        t=now,
        w=x.w + y.w,
        w2=x.w2 + y.w2,
        a=x.a + y.a,
        b=x.b + y.b,
        aa=x.aa + y.aa,
        bb=x.bb + y.bb,
        ab=x.ab + y.ab,
        tokens_in=x.tokens_in + y.tokens_in,
        tokens_out=x.tokens_out + y.tokens_out,
    )


def estimate(stats: Stats | None, prior: Prior, confidence: float) -> Estimate:
    """The quality ratio of the candidate and its lower bound at `confidence` (one-sided)."""
    if stats is None or stats.w <= 0:
        return Estimate(calls=0, asked_mean=0, candidate_mean=0, ratio=math.nan, se=math.inf, df=0, lower=-math.inf)
    n = stats.effective_calls
    mean_a, mean_b = stats.a / stats.w, stats.b / stats.w
    tokens_in, tokens_out = stats.tokens_in / stats.w, stats.tokens_out / stats.w
    if mean_a * mean_a <= 0:  # no asked-for score above 0 (or one so small its square underflows)
        nan = math.nan
        return Estimate(
            calls=n, asked_mean=mean_a, candidate_mean=mean_b, ratio=nan, se=math.inf, df=0, lower=-math.inf
        )
    ratio = mean_b / mean_a
    # Weighted mean square of the residual b - R a (its weighted mean is 0 by the choice of R), relative to mean a.
    residual = (stats.bb - 2 * ratio * stats.ab + ratio * ratio * stats.aa) / stats.w
    relative = max(residual, 0.0) / (mean_a * mean_a)
    # Conjugate update of the variance: the prior's pseudo-calls plus the n - 1 degrees of freedom of the data.
    df = prior.weight + max(n - 1.0, 0.0)
    if df <= 0:
        return Estimate(
            calls=n,
            asked_mean=mean_a,
            candidate_mean=mean_b,
            ratio=ratio,
            se=math.inf,
            df=0,
            lower=-math.inf,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )
    variance = (prior.weight * prior.sd * prior.sd + n * relative) / df
    se = math.sqrt(variance / n)
    return Estimate(
        calls=n,
        asked_mean=mean_a,
        candidate_mean=mean_b,
        ratio=ratio,
        se=se,
        df=df,
        lower=ratio - t_quantile(confidence, df) * se,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )
