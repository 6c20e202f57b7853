"""The demo end to end, small: the metrics' savings equal the sum of the per-call savings headers."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from router.core.settings import load_settings
from router.ops.demo import WORKLOAD, Group, run_demo

pytestmark = pytest.mark.integration


def test_demo_savings_match_the_headers(redis_url: str, key_prefix: str) -> None:
    small = [Group(g.label, max(2, g.count // 25), g.kind, g.model, g.headers) for g in WORKLOAD]
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
    text = out.getvalue()
    assert "Calls per lane" in text and "saved (%)" in text and "structured extractions parsed" in text
