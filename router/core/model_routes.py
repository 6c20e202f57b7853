"""A model route: calls for one model that cheaper ones may answer, at a quality target, in one mode (pure).

`config/router.yaml` declares `routes: [{from: gpt-4o, to: [gpt-4o-mini], mode: predict, quality_target: 0.95}]`;
a policy rule may override a route per rule. The decoding of the file is the settings' job: this module only
defines the shape, its defaults and the name a route's evidence is kept under.

Quality is the answering model's mean score divided by the asked-for model's mean score on the same calls (for
right/wrong outcomes, the ratio of accuracies). `quality_target` is that ratio. `confidence` is the one-sided level
of every lower bound the route is held to: a task moves (`per_task`) or the route's traffic as a whole keeps the
target (`budget`) only when the bound at this level meets the target.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Mode = Literal["predict", "cascade", "shadow"]
Allocation = Literal["per_task", "budget"]

ModelName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")]
Fraction = Annotated[float, msgspec.Meta(gt=0, le=1)]
Share = Annotated[float, msgspec.Meta(ge=0, le=1)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]

DAY_S = 86_400.0


class Prior(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the lower bound assumes before any evidence: `weight` pseudo-calls whose relative residual has `sd`.

    The residual of one call is (candidate score - ratio x asked-for score) / asked-for mean, so `sd` is scale free
    (0.1: a candidate's score is expected to stray by about a tenth of the asked-for model's mean). It only matters
    while evidence is thin: a handful of closely agreeing calls then bounds the ratio near 1 instead of exactly 1,
    and the empirical spread takes over as calls accumulate. With the defaults, five calls that agree exactly give
    a lower bound of 0.96 at 95% confidence; four give 0.947.
    """

    weight: NonNegative = 1.0
    sd: NonNegative = 0.1


class CascadeChecks(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Checks on a cheap answer in `cascade` mode (see checks.py); a failed hard check always escalates."""

    final_answer: str | None = None
    """A regular expression the answer must match (GSM8K: `####\\s*-?[\\d,]+\\s*$`); None: no such check."""
    refusal: bool = True
    """Escalate an answer that refuses (the API's `refusal` field, or a refusal phrase opening the answer)."""
    logprob_quantile: Fraction = 0.1
    """Which low quantile of the answer's token logprobs is its confidence signal (Gupta et al., 2024)."""
    logprob_edges: list[float] = msgspec.field(default_factory=lambda: [-2.0, -0.5])
    """Bucket edges of that quantile: evidence is kept per bucket, so the plan learns which buckets to trust."""
    length_edges: list[int] = msgspec.field(default_factory=list)
    """Bucket edges of the answer's length in characters (longer worked answers are wrong more often)."""
    prompt_length_edges: list[int] = msgspec.field(default_factory=list)
    """Bucket edges of the prompt's length in characters (longer problems are harder)."""
    arithmetic: bool = False
    """Check worked arithmetic in the answer (`<<6*7=42>>` annotations, `a x b = c`) and that its final answer is
    the last result it computed; failures become a bucket of their own."""


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One declared route: calls asked for `source` may be answered by the models of `to` (cheapest first)."""

    source: ModelName = msgspec.field(name="from")
    to: Annotated[list[ModelName], msgspec.Meta(min_length=1)]
    mode: Mode = "predict"
    quality_target: Fraction = 0.95
    allocation: Allocation = "per_task"
    """`per_task`: a task moves to the cheapest candidate whose own lower bound meets the target. `budget`: the
    route spends its quality budget across tasks (a share of a borderline task too) while the lower bound of the
    quality of all its traffic meets the target; see plan.py."""
    confidence: Annotated[float, msgspec.Meta(ge=0.5, lt=1)] = 0.95
    half_life_s: Positive = 14 * DAY_S
    """Evidence loses half its weight in this time, so a model that changes is re-learned."""
    min_evidence: NonNegative = 5.0
    """In `budget` allocation, a task with less (decayed) evidence than this many calls stays where it is."""
    prior: Prior = Prior()
    shadow_rate: Share = 0.05
    """In `shadow` mode, the share of calls also sent to the cheaper model to learn."""
    judge: ModelName | None = None
    """A model that judges whether a cheaper model's free-text answer is as good as the asked-for model's (shadow
    pairs, escalated cascades). None: only exact or JSON equality of the two answers is judged."""
    cascade: CascadeChecks = CascadeChecks()

    @property
    def key(self) -> str:
        """The name the route's evidence is kept under: one asked-for model and its candidates."""
        return f"{self.source}>{','.join(self.to)}"


def parse_route(raw: object) -> Route:
    """A route from a decoded YAML or JSON mapping (msgspec.ValidationError names the field that is wrong)."""
    route = msgspec.convert(raw, Route, strict=False)
    if route.source in route.to:
        raise msgspec.ValidationError(f"a route cannot send `{route.source}` to itself - at `$.to`")
    if len(set(route.to)) != len(route.to):
        raise msgspec.ValidationError("a model is listed twice - at `$.to`")
    return route
