"""The demo end to end, small: the metrics' savings equal the sum of the per-call savings headers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from router.core.settings import load_settings
from router.ops.demo import WORKLOAD, Group, run_demo

pytestmark = pytest.mark.integration


def test_demo_savings_match_the_headers(redis_url: str, key_prefix: str) -> None:
    # Routed groups keep enough items for their evidence to decide (a handful of agreeing examples moves a task).
    small = [
        Group(
            g.label, 8 if g.weak_right is not None else max(2, g.count // 25), g.kind, g.model, g.headers, g.weak_right
        )
        for g in WORKLOAD
    ]
    out = io.StringIO()
    settings = load_settings(None, {}, {"redis_url": redis_url, "key_prefix": key_prefix})
    result = run_demo(settings, Console(file=out, width=120), small)
    header_savings = sum(result.tally.savings.values())
    assert result.saved_usd > 0
    calls = sum(result.tally.calls.values())
    assert result.saved_usd == pytest.approx(header_savings, rel=1e-9, abs=calls * 5e-13)  # headers: 12 decimals
    assert result.tally.calls["batch"] >= sum(g.count for g in small if "X-Deadline" in g.headers) - 2
    assert result.tally.calls["realtime"] >= 2
    assert result.batches >= 1
    assert result.tally.parsed == sum(g.count for g in small if g.kind == "extract") > 0  # parse() in the batch lane
    # Both halves of the bill: the urgent task whose evidence meets the target went to the cheaper model, the
    # other kept the model it asked for; the levers add up to what the metrics saved.
    assert result.tally.routed == sum(g.count for g in small if g.weak_right == 1.0) > 0
    assert result.levers["route"] > 0 and result.levers["batch"] > 0
    # The eval re-run: each call's repeat is answered by the answer cache, on its lever.
    reruns = sum(g.count for g in small if g.kind == "rerun")
    assert result.tally.calls["answer cache"] == reruns > 0 and result.levers["answer_cache"] > 0
    # The support chat's shared system prompt: read from the provider's prompt cache past its first call.
    assert result.levers["prompt_cache"] > 0
    assert set(result.levers) == {"batch", "flex", "route", "prompt_cache", "answer_cache"}  # every lever, even at 0
    assert sum(result.levers.values()) == pytest.approx(result.saved_usd, rel=1e-9)
    text = out.getvalue()
    assert "Calls per lane" in text and "saved (%)" in text and "structured extractions parsed" in text
    assert "Savings by lever" in text
    assert "Status page (live while the demo runs): http://127.0.0.1:" in text and "/ui\n" in text
