"""Savings at the physical limit: the issue's targets on a reduced trace, and `estimate` agreeing with `serve`.

The targets run `bench/savings.py` itself (the real router in front of the simulator, heavy-tailed batches) at a
third of the benchmark's size; the full runs are in `bench/RESULTS.md`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from bench.savings import Result, Scenario, run
from router.core.policy import load_policies
from router.core.pricing import load_pricing
from router.ops.estimate import LaneChooser, LogLine
from tests.helpers.servers import ROOT, RouterFactory, Sim, router_settings, upstream

TURNAROUND = "lognormal:median=5,p95=30,max=300"
PRICES = ROOT / "config" / "pricing.yaml"


def check(result: Result, floor: float) -> None:
    assert result.errors == 0
    assert result.missed == 0, result
    assert result.paid_twice <= 0.01 * result.calls, result
    assert result.savings_share >= floor, result
    # The simulator billed every call once, plus the double payments counted per call.
    assert result.batch_lines_billed + result.realtime_calls_billed == result.calls + result.paid_twice


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_savings_targets_hold_on_a_reduced_trace(redis_url: str) -> None:
    prices = load_pricing(PRICES)
    base = Scenario("base", TURNAROUND, (60.0, 150.0), calls=60, span_s=10.0, seed=1)
    relaxed = Scenario("relaxed", TURNAROUND, (78.0, 138.0), calls=60, span_s=10.0, seed=1)  # reserve + 2-4x p95

    async def both() -> list[Result]:
        runs = (run(base, "router", redis_url, prices), run(relaxed, "router", redis_url, prices))
        return list(await asyncio.gather(*runs))

    got_base, got_relaxed = asyncio.run(both())
    check(got_base, 0.90)
    check(got_relaxed, 0.97)


# --- estimate and serve on the same calls ---------------------------------------------------------------------------

CALLS: list[dict[str, Any]] = [
    {"model": "gpt-4o-mini", "deadline": "2h"},  # fits the prior: batch
    {"model": "gpt-5-mini", "deadline": "2h"},
    {"model": "gpt-4o-mini", "deadline": "5m"},  # too soon for the prior: real time
    {"model": "gpt-5-mini", "deadline": "5m"},  # ... or flex, where the model has a flex price
    {"model": "gpt-5-mini", "deadline": "now"},  # urgent
    {"model": "gpt-4o-mini"},  # no deadline, no rule
    {"model": "gpt-4o-mini", "headers": {"x-workload": "eval"}},  # a rule's default deadline (6h)
    {"model": "gpt-5-mini", "headers": {"x-workload": "interactive"}, "deadline": "2h"},  # forbid_deferral
    {"model": "gpt-5-mini", "headers": {"x-workload": "eval"}, "deadline": "3m"},
    {"model": "text-embedding-3-small", "path": "/v1/embeddings", "deadline": "2h"},
    {"model": "text-embedding-3-small", "path": "/v1/embeddings", "deadline": "5m"},
    {"model": "gpt-4o-mini", "path": "/v1/completions", "deadline": "2h"},
    {"model": "gpt-5-mini", "path": "/v1/responses", "deadline": "10m"},
]


def body_of(call: dict[str, Any]) -> dict[str, Any]:
    path = call.get("path", "/v1/chat/completions")
    if path == "/v1/embeddings":
        return {"model": call["model"], "input": "hello"}
    if path == "/v1/completions":
        return {"model": call["model"], "prompt": "hello"}
    if path == "/v1/responses":
        return {"model": call["model"], "input": "hello"}
    return {"model": call["model"], "messages": [{"role": "user", "content": "hello"}]}


def test_estimate_agrees_with_serve_on_the_same_calls(start_router: RouterFactory, sim: Sim, redis_url: str,
                                                      key_prefix: str) -> None:  # fmt: skip
    # `estimate` has no batch history: serve's queues are fresh too, and its probes (which estimate does not
    # send) are off, so both decide from the prior alone.
    tree: dict[str, Any] = {
        "upstreams": [upstream(sim.v1, flex=True)],
        "policies_dir": str(ROOT / "policies"),
        "batch": {"turnaround_prior_s": 600.0, "probe": False},
    }
    served: list[str] = []
    log: list[LogLine] = []
    with start_router(**tree) as base:
        for call in CALLS:
            headers = {"prefer": "respond-async"} | call.get("headers", {})
            if "deadline" in call:
                headers["x-deadline"] = call["deadline"]
            at = time.time()
            response = httpx.post(base + call.get("path", "/v1/chat/completions"), json=body_of(call), headers=headers)
            assert response.status_code in (200, 202), response.text
            served.append(response.headers["x-router-lane"])
            log.append(
                LogLine(
                    timestamp=at,
                    model=call["model"],
                    input_tokens=10,
                    output_tokens=10,
                    path=call.get("path"),
                    deadline=call.get("deadline"),
                    headers=call.get("headers"),
                )
            )
    settings = router_settings(sim, redis_url, key_prefix, **tree)

    chooser = LaneChooser(load_policies(ROOT / "policies"), settings, load_pricing(PRICES))
    estimated = [chooser.choose_lane(line, float(line.timestamp)).lane for line in log]
    assert estimated == served
    assert set(served) == {"batch", "flex", "realtime"}
