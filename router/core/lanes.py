"""Lanes and origins (the words of the glossary in docs/architecture.md), and the lane decision, in one place: which
lane a call takes (`choose_lane`), when a queue flushes, when a late batch is cut, and which rung of the ladder answers
an escalation. Pure (no I/O): `serve` (`Admission.admit`), `estimate`, the batcher, the poller and the guard all decide
with these functions.

A deferred call's time is split, from its deadline backwards (`Timing`):
- `margin_s`: the standard tier's answer. A call still without a result is escalated at `deadline - lead`.
- `flex_s` (queues whose upstream and model offer flex): a flex attempt before that; `lead = margin_s + flex_s`.
- `cancel_lead_s`: cancelling a late batch and reading what it finished (the harvest) before its calls escalate;
  `reserve = lead + cancel_lead_s` is when a batch must be back.
- the turnaround quantile of the queue (`router.core.turnaround`), and the batcher's pass (`flush_wait_s`).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from router.core.turnaround import TurnaroundModel

if TYPE_CHECKING:
    from router.core.policy import Decision
    from router.core.pricing import PriceTier
    from router.core.settings import BatchSettings, Upstream

ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages")
"""What a batch can carry (OpenAI's Batch API endpoints, less the ones the router does not proxy; Anthropic's
Messages, which share the chat queue of their model)."""
REPLAYABLE = frozenset({"/chat/completions", "/completions", "/responses", "/messages"})
"""Endpoints whose finished result can be replayed as SSE, so a deferred `stream: true` call can wait for a batch."""
FLEX_ENDPOINTS = frozenset({"/chat/completions", "/responses"})
"""Endpoints that take `service_tier: "flex"`."""


class Lane(StrEnum):
    """How a call is served in time: relayed now, on the flex tier (slower, at the batch price), or in a batch."""

    REALTIME = "realtime"
    FLEX = "flex"
    BATCH = "batch"

    @property
    def price_tier(self) -> PriceTier:
        """The price tier a call served in this lane pays (each lane has its own)."""
        tiers: dict[Lane, PriceTier] = {Lane.REALTIME: "realtime", Lane.FLEX: "flex", Lane.BATCH: "batch"}
        return tiers[self]


class Origin(StrEnum):
    """Where a finished call's answer came from, as it is stored and booked (the `lane` label of the metrics and the
    lanes of `/v1/usage` carry it; the Redis field of a result is `lane` too)."""

    REALTIME = "realtime"
    """Relayed now, on the standard tier."""
    FLEX = "flex"
    """The flex tier: a call sent there at admission, or a deferred call the guard escalated to it."""
    BATCH = "batch"
    """A line of one of the router's batches."""
    ESCALATED = "escalated"
    """A deferred call the guard answered in real time on the standard tier."""
    NATIVE = "native"
    """A line of a batch a tenant ran through the native Batch API (`/v1/batches`)."""
    CACHE = "cache"
    """The answer cache: an identical deterministic call's stored answer, served now at no cost."""

    @property
    def lane(self) -> Lane:
        """The lane the answer was served in (what `X-Router-Lane` and `deferred.call.lane` show)."""
        return {Origin.ESCALATED: Lane.REALTIME, Origin.NATIVE: Lane.BATCH, Origin.CACHE: Lane.REALTIME}.get(
            self
        ) or Lane(self.value)


LEVERS = ("batch", "flex", "route", "prompt_cache", "answer_cache")
"""Where savings come from; each call's savings split over them adds up to its `savings_usd` exactly."""


def lever_split(
    origin: Origin, savings_usd: float, route_usd: float, prompt_cache_usd: float = 0.0
) -> dict[str, float]:
    """A call's savings by lever: the model route's part, the prompt cache's, and its price tier's (batch, flex); an
    answer from the answer cache saves all it would have cost on `answer_cache`."""
    if origin is Origin.CACHE:
        return {"answer_cache": savings_usd} if savings_usd else {}
    out: dict[str, float] = {}
    if route_usd:
        out["route"] = route_usd
    if prompt_cache_usd:
        out["prompt_cache"] = prompt_cache_usd
    tier = savings_usd - route_usd - prompt_cache_usd
    if tier and origin.lane.price_tier != "realtime":
        out[origin.lane.price_tier] = tier
    return out


Reason = Literal["policy", "no_batch", "endpoint", "stream", "fits", "probe", "too_soon"]
Rung = Literal["flex", "standard"]
"""A rung of the escalation ladder: the flex tier, then the standard tier."""


class Capabilities(msgspec.Struct, frozen=True):
    """What an upstream offers one kind of call: a batch, and the flex tier at the batch price."""

    batch: bool
    flex: bool


class Catalog:
    """Capabilities per (upstream, endpoint, model), from the upstreams' settings and the price table."""

    def __init__(self, upstreams: Sequence[Upstream], flex_priced: Callable[[str], bool]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self._patterns = [(re.compile("|".join(fnmatch.translate(p) for p in u.models)), u) for u in upstreams]
        self.flex_priced = flex_priced

    def upstream_for(self, model: str) -> Upstream | None:
        """The first upstream whose model patterns match (the order `providers.upstreams.Upstreams` routes in)."""
        return next((u for pattern, u in self._patterns if pattern.match(model)), None)

    def of(self, upstream: str, endpoint: str, model: str, *, stream: bool = False) -> Capabilities:
        """What `upstream` offers a call to `endpoint` with `model` (a stream can wait only where it replays)."""
        cfg = self.upstreams.get(upstream)
        if cfg is None:
            return Capabilities(batch=False, flex=False)
        batch = cfg.batch and endpoint in ENDPOINTS and (not stream or endpoint in REPLAYABLE)
        flex = cfg.flex and endpoint in FLEX_ENDPOINTS and self.flex_priced(model)
        return Capabilities(batch=batch, flex=flex)


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """The deadline budget of a deferred call (see the module docstring)."""

    margin_s: float
    flex_s: float
    cancel_lead_s: float
    flush_wait_s: float

    @classmethod
    def of(cls, s: BatchSettings) -> Timing:
        """The timing the settings give; an unset `cancel_lead_s` is half the margin."""
        cancel = s.cancel_lead_s if s.cancel_lead_s is not None else s.margin_s / 2
        return cls(margin_s=s.margin_s, flex_s=s.flex_s, cancel_lead_s=cancel, flush_wait_s=flush_wait(s))

    def lead(self, caps: Capabilities) -> float:
        """How long before its deadline a call without a result is escalated."""
        return self.margin_s + (self.flex_s if caps.flex else 0.0)

    def reserve(self, caps: Capabilities) -> float:
        """How long before a call's deadline its batch must be back; a batch still running then is cut."""
        return self.lead(caps) + self.cancel_lead_s


def flush_wait(s: BatchSettings) -> float:
    """The batcher's pass interval: the longest a due queue waits to be flushed."""
    return max(0.05, min(1.0, s.max_wait_s / 4))


class Outlook(msgspec.Struct, frozen=True, kw_only=True):
    """What a queue's turnaround model says now: the admission quantile, and whether a probe may go."""

    quantile_s: float
    may_probe: bool = False


NO_OUTLOOK = Outlook(quantile_s=math.inf)
"""The outlook where none is needed (a call no batch can take)."""


class LaneChoice(msgspec.Struct, frozen=True, kw_only=True):
    """The lane of one call, why, and its deadline when it was deferred."""

    lane: Lane
    reason: Reason
    deadline: float | None = None
    rule: str | None = None


def fits(deadline: float, now: float, caps: Capabilities, quantile_s: float, timing: Timing) -> bool:
    """Whether a batch flushed now can be expected back (at the admission quantile) before the call's reserve."""
    return deadline - now >= quantile_s + timing.flush_wait_s + timing.reserve(caps)


def choose_lane(
    decision: Decision,
    *,
    endpoint: str,
    stream: bool,
    caps: Capabilities,
    outlook: Outlook,
    timing: Timing,
    now: float,
) -> LaneChoice:
    """The lane of one call, from the policy's decision, what the upstream offers and the queue's outlook.

    A deferred call goes to a batch when one can be back before its reserve (`fits`), or as a probe when its
    queue has too little evidence and nothing in flight (a learning queue is never shut out by its prior: the
    escalation ladder still keeps the deadline). Otherwise it takes the flex tier where offered, else real time.
    """
    rule = decision.rule
    if decision.mode != "deferred" or decision.deadline is None:
        return LaneChoice(lane=Lane.REALTIME, reason="policy", rule=rule)
    deadline = decision.deadline
    if caps.batch:
        if fits(deadline, now, caps, outlook.quantile_s, timing):
            return LaneChoice(lane=Lane.BATCH, reason="fits", deadline=deadline, rule=rule)
        if outlook.may_probe and deadline - now > timing.flush_wait_s + timing.reserve(caps):
            return LaneChoice(lane=Lane.BATCH, reason="probe", deadline=deadline, rule=rule)
        reason: Reason = "too_soon"
    elif endpoint not in ENDPOINTS:
        reason = "endpoint"
    else:
        reason = "stream" if stream and endpoint not in REPLAYABLE else "no_batch"
    lane = Lane.FLEX if caps.flex else Lane.REALTIME
    return LaneChoice(lane=lane, reason=reason, deadline=deadline, rule=rule)


def flush_due(earliest_deadline: float, now: float, caps: Capabilities, quantile_s: float, timing: Timing) -> bool:
    """Whether a queue must flush now so that its earliest call still gets its quantile of turnaround.

    Waiting later packs more calls into the batch (fewer batches); waiting one more pass here would leave the
    earliest call less than the quantile before its reserve.
    """
    return earliest_deadline - timing.reserve(caps) - quantile_s <= now + timing.flush_wait_s


def next_flush(
    stats: QueueOutlook, now: float, caps: Capabilities, quantile_s: float, timing: Timing, batch: BatchSettings
) -> float | None:
    """When the batcher will flush a queue, as `Batcher.due` decides it: at once when it is full, else at the
    first of its oldest call's `max_wait_s` and the time `flush_due` turns true; None when nothing waits. A
    flush is seen up to one batcher pass later."""
    if stats.count == 0:
        return None
    if stats.count >= batch.max_requests or stats.bytes >= batch.max_bytes:
        return now
    times = []
    if stats.oldest_arrival is not None:
        times.append(stats.oldest_arrival + batch.max_wait_s)
    if stats.earliest_deadline is not None:
        times.append(stats.earliest_deadline - timing.reserve(caps) - quantile_s - timing.flush_wait_s)
    return max(now, min(times)) if times else None


class QueueOutlook(Protocol):
    """What `next_flush` reads of a queue (the store's `QueueStats`)."""

    @property
    def count(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def oldest_arrival(self) -> float | None: ...
    @property
    def earliest_deadline(self) -> float | None: ...


def cut_cutoff(now: float, caps: Capabilities, timing: Timing) -> float:
    """A running batch holding a call whose deadline is before this is cut (cancelled and harvested)."""
    return now + timing.reserve(caps)


def escalation_cutoff(now: float, caps: Capabilities, timing: Timing) -> float:
    """A call without a result whose deadline is before this is escalated."""
    return now + timing.lead(caps)


def escalation_rung(deadline: float, now: float, caps: Capabilities, timing: Timing) -> tuple[Rung, float]:
    """The first rung of the ladder for an escalation now, and how long it may take.

    Flex (the batch price, synchronous) where offered and at least half of `flex_s` is left before the margin,
    with the time up to the margin; otherwise the standard tier, with whatever is left.
    """
    room = deadline - now - timing.margin_s
    if caps.flex and timing.flex_s > 0 and room >= timing.flex_s / 2:
        return "flex", room
    return "standard", max(0.0, deadline - now)


class Planner:
    """The routing inputs that come from settings, built once: capabilities, timing and the turnaround model."""

    def __init__(self, batch: BatchSettings, catalog: Catalog | None = None) -> None:
        self.catalog = catalog if catalog is not None else Catalog([], lambda _: False)
        self.timing = Timing.of(batch)
        self.model = TurnaroundModel(
            batch.turnaround_prior_s,
            quantile=batch.admit_quantile,
            min_observations=batch.turnaround_min_observations,
            half_life_s=batch.turnaround_half_life_s,
        )
        self.probe = batch.probe
