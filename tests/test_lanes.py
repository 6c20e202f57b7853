"""The lane decision as a pure function, driven by tables."""

from __future__ import annotations

import math

import pytest

from router.core.lanes import (
    NO_OUTLOOK,
    Capabilities,
    Catalog,
    Lane,
    LaneChoice,
    Outlook,
    Timing,
    choose_lane,
    cut_cutoff,
    escalation_cutoff,
    escalation_rung,
    fits,
    flush_due,
    next_flush,
)
from router.core.policy import Decision
from router.core.settings import BatchSettings, Upstream

NOW = 1_000_000.0
TIMING = Timing(margin_s=10.0, flex_s=5.0, cancel_lead_s=3.0, flush_wait_s=1.0)
BATCH = Capabilities(batch=True, flex=False)
BOTH = Capabilities(batch=True, flex=True)
FLEX = Capabilities(batch=False, flex=True)
NONE = Capabilities(batch=False, flex=False)


def deferred(seconds: float, rule: str | None = "r") -> Decision:
    return Decision("deferred", NOW + seconds, rule)


# Room needed for a batch: quantile + flush wait (1) + reserve (margin 10 + cut 3, + flex 5 where offered).
@pytest.mark.parametrize(
    ("decision", "endpoint", "stream", "caps", "outlook", "lane", "reason"),
    [
        (Decision("realtime", None, None), "/chat/completions", False, BOTH, Outlook(quantile_s=1), "realtime",
         "policy"),
        (Decision("deferred", None, "r"), "/chat/completions", False, BOTH, Outlook(quantile_s=1), "realtime",
         "policy"),
        (deferred(34), "/chat/completions", False, BATCH, Outlook(quantile_s=20), "batch", "fits"),  # 20 + 1 + 13
        (deferred(33.9), "/chat/completions", False, BATCH, Outlook(quantile_s=20), "realtime", "too_soon"),
        (deferred(39), "/chat/completions", False, BOTH, Outlook(quantile_s=20), "batch", "fits"),  # flex: +5
        (deferred(38), "/chat/completions", False, BOTH, Outlook(quantile_s=20), "flex", "too_soon"),
        (deferred(15), "/chat/completions", False, BATCH, Outlook(quantile_s=600, may_probe=True), "batch", "probe"),
        (deferred(14), "/chat/completions", False, BATCH, Outlook(quantile_s=600, may_probe=True), "realtime",
         "too_soon"),  # a probe still needs a chance: more than flush wait + reserve
        (deferred(3600), "/chat/completions", False, FLEX, NO_OUTLOOK, "flex", "no_batch"),
        (deferred(3600), "/chat/completions", False, NONE, NO_OUTLOOK, "realtime", "no_batch"),
        (deferred(3600), "/moderations", False, NONE, NO_OUTLOOK, "realtime", "endpoint"),
        (deferred(3600), "/embeddings", True, NONE, NO_OUTLOOK, "realtime", "stream"),
        (deferred(3600), "/embeddings", True, FLEX, NO_OUTLOOK, "flex", "stream"),
    ],
)  # fmt: skip
def test_route(
    decision: Decision, endpoint: str, stream: bool, caps: Capabilities, outlook: Outlook, lane: str, reason: str
) -> None:
    chosen = choose_lane(decision, endpoint=endpoint, stream=stream, caps=caps, outlook=outlook, timing=TIMING, now=NOW)
    assert (chosen.lane, chosen.reason) == (lane, reason)
    assert chosen.rule == decision.rule
    assert chosen.deadline == (decision.deadline if decision.mode == "deferred" else None)


def test_a_batch_route_carries_the_deadline() -> None:
    chosen = choose_lane(
        deferred(100), endpoint="/embeddings", stream=False, caps=BATCH, outlook=Outlook(quantile_s=5), timing=TIMING,
        now=NOW,
    )  # fmt: skip
    assert chosen == LaneChoice(lane=Lane.BATCH, reason="fits", deadline=NOW + 100, rule="r")


@pytest.mark.parametrize(
    ("earliest_in", "caps", "quantile", "due"),
    [
        (34.0, BATCH, 20.0, True),  # 34 - 13 - 20 = 1 s to spare: waiting one more pass (1 s) would eat it
        (33.0, BATCH, 20.0, True),
        (34.1, BATCH, 20.0, False),
        (39.0, BOTH, 20.0, True),  # flex adds 5 s to the reserve
        (39.1, BOTH, 20.0, False),
        (-5.0, BATCH, 20.0, True),  # already late: flush now
    ],
)
def test_flush_leaves_the_earliest_call_its_quantile(earliest_in: float, caps: Capabilities, quantile: float,
                                                      due: bool) -> None:  # fmt: skip
    assert flush_due(NOW + earliest_in, NOW, caps, quantile, TIMING) is due


@pytest.mark.parametrize(
    ("deadline_in", "caps", "tier", "seconds"),
    [
        (15.0, BOTH, "flex", 5.0),  # escalated on time: flex until the margin
        (12.5, BOTH, "flex", 2.5),  # half of flex_s left: still worth a try
        (12.4, BOTH, "standard", 12.4),  # less: straight to the standard tier
        (15.0, BATCH, "standard", 15.0),  # no flex on this upstream or model
        (-1.0, BATCH, "standard", 0.0),
    ],
)
def test_escalation_tier(deadline_in: float, caps: Capabilities, tier: str, seconds: float) -> None:
    chosen, room = escalation_rung(NOW + deadline_in, NOW, caps, TIMING)
    assert chosen == tier
    assert room == pytest.approx(seconds)


def test_cut_comes_before_escalation_and_flex_escalates_earlier() -> None:
    assert escalation_cutoff(NOW, BATCH, TIMING) == NOW + 10
    assert escalation_cutoff(NOW, BOTH, TIMING) == NOW + 15
    assert cut_cutoff(NOW, BATCH, TIMING) == NOW + 13
    assert cut_cutoff(NOW, BOTH, TIMING) == NOW + 18


def test_fits_is_the_admission_threshold() -> None:
    assert fits(NOW + 34, NOW, BATCH, 20.0, TIMING)
    assert not fits(NOW + 33.99, NOW, BATCH, 20.0, TIMING)
    assert not fits(NOW + 1e9, NOW, BATCH, math.inf, TIMING)


def test_timing_from_settings() -> None:
    timing = Timing.of(BatchSettings(margin_s=60, flex_s=120, max_wait_s=300))
    assert timing == Timing(margin_s=60, flex_s=120, cancel_lead_s=30, flush_wait_s=1.0)  # cut: half the margin
    assert Timing.of(BatchSettings(margin_s=1, cancel_lead_s=0, max_wait_s=0.2)).flush_wait_s == 0.05


@pytest.mark.parametrize(
    ("upstream", "endpoint", "model", "stream", "caps"),
    [
        ("openai", "/chat/completions", "gpt-5-mini", False, BOTH),
        ("openai", "/chat/completions", "gpt-4o-mini", False, BATCH),  # no flex price
        ("openai", "/embeddings", "gpt-5-mini", False, BATCH),  # no flex endpoint
        ("openai", "/responses", "gpt-5-mini", True, BOTH),  # a /responses stream is replayed as its events
        ("openai", "/embeddings", "gpt-5-mini", True, NONE),  # nothing to replay an embeddings "stream" as
        ("openai", "/chat/completions", "gpt-5-mini", True, BOTH),  # a chat stream is replayed
        ("openai", "/moderations", "gpt-5-mini", False, NONE),
        ("local", "/chat/completions", "gpt-5-mini", False, NONE),  # batch: false, flex: false
        ("gone", "/chat/completions", "gpt-5-mini", False, NONE),
    ],
)
def test_catalog(upstream: str, endpoint: str, model: str, stream: bool, caps: Capabilities) -> None:
    catalog = Catalog(
        [
            Upstream(name="local", base_url="http://127.0.0.1:1/v1", models=["local-*"], batch=False),
            Upstream(name="openai", base_url="http://127.0.0.1:2/v1", flex=True),
        ],
        lambda model: model.startswith("gpt-5"),
    )
    assert catalog.of(upstream, endpoint, model, stream=stream) == caps


def test_catalog_finds_the_upstream_by_model_in_order() -> None:
    catalog = Catalog(
        [
            Upstream(name="claude", base_url="http://127.0.0.1:1", kind="anthropic", models=["claude-*"]),
            Upstream(name="openai", base_url="http://127.0.0.1:2/v1"),
        ],
        lambda _: False,
    )
    assert [catalog.upstream_for(m).name for m in ("claude-3", "gpt-4o")] == ["claude", "openai"]  # type: ignore[union-attr]


class _Waiting:
    """A queue as `next_flush` reads it."""

    def __init__(self, count: int, size: int, oldest: float | None, earliest: float | None) -> None:
        self.count, self.bytes, self.oldest_arrival, self.earliest_deadline = count, size, oldest, earliest


def test_next_flush_is_when_the_batchers_rule_turns_true() -> None:
    batch = BatchSettings(max_wait_s=600.0, max_requests=100, max_bytes=10_000)
    caps = Capabilities(batch=True, flex=False)
    now = 1000.0
    waiting = _Waiting(3, 300, oldest=now - 5, earliest=now + 400)
    at = next_flush(waiting, now, caps, 60.0, TIMING, batch)
    assert at is not None and now < at < now + 400
    assert flush_due(now + 400, at, caps, 60.0, TIMING)  # due then, by the rule the batcher applies
    assert not flush_due(now + 400, at - 0.01, caps, 60.0, TIMING)  # and not a moment before
    # The oldest call's max_wait_s comes first when it is sooner; a full queue flushes at once; an empty one never.
    assert next_flush(_Waiting(3, 300, now - 590, now + 4000), now, caps, 60.0, TIMING, batch) == now + 10
    assert next_flush(_Waiting(100, 300, now, now + 4000), now, caps, 60.0, TIMING, batch) == now
    assert next_flush(_Waiting(1, 10_000, now, now + 4000), now, caps, 60.0, TIMING, batch) == now
    assert next_flush(_Waiting(0, 0, None, None), now, caps, 60.0, TIMING, batch) is None
    # Already past: due now, not in the past.
    assert next_flush(_Waiting(1, 10, now - 700, None), now, caps, 60.0, TIMING, batch) == now
