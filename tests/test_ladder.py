"""A late batch is cut and harvested, and its calls climb the ladder batch → flex → standard, billed once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai

from tests.helpers.servers import RouterFactory, Sim, upstream
from tests.helpers.waiting import wait_until

# Flushed at once (max_wait 0.2 s); cut 1 s before the margin; flex tried for up to 2 s before it.
LADDER = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0,
          "cancel_lead_s": 1.0, "flex_s": 2.0, "probe": False}  # fmt: skip
# Cut 3 s before the margin: the cancel, the provider's end of the batch and the harvest then finish before any
# call of it escalates, even on a loaded machine (a line escalated before its batch ended could still be billed).
HARVEST = LADDER | {"cancel_lead_s": 3.0}


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarise incident report {i}."}]


async def held_calls(base: str, model: str, n: int, deadline: str) -> list[Any]:
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="dev", timeout=60, max_retries=0) as c:
        return await asyncio.gather(
            *(c.chat.completions.with_raw_response.create(model=model, messages=prompt(i),  # type: ignore[arg-type]
                                                         extra_headers={"X-Deadline": deadline}) for i in range(n))
        )  # fmt: skip


def lanes_of(base: str, raws: list[Any]) -> list[tuple[str, str | None]]:
    """(lane, escalated) of each answer, from the stored result: a held call's headers go out when the router
    commits to holding it (after `keepalive_s`), before the call knows how it will end."""
    out = []
    for raw in raws:
        headers = raw.headers
        if headers["x-router-lane"] == "batch":
            headers = httpx.get(f"{base}/v1/deferred/{headers['x-router-request-id']}").headers
        out.append((headers["x-router-lane"], headers.get("x-router-escalated")))
    return out


def metric(base: str, series: str) -> float:
    return metric_in(httpx.get(base + "/metrics").text, series)


def metric_in(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_late_batch_is_cut_its_finished_lines_harvested_and_only_the_rest_escalated(
    start_router: RouterFactory, sim: Sim
) -> None:
    # A 20 s batch runs its lines from 2 s to 16 s; cut about 8 s in, some of them are done.
    sim.configure(batch_turnaround_s=20.0)
    n = 10
    harvested_series = 'hybrid_router_harvested_lines_total{upstream="openai"}'
    cut_series = 'hybrid_router_batches_cut_total{upstream="openai"}'
    with start_router(batch=HARVEST) as base:
        # The metrics live in this process's registry, shared with earlier tests: count what this test adds.
        harvested_before, cut_before = metric(base, harvested_series), metric(base, cut_series)
        raws = asyncio.run(held_calls(base, "gpt-4o-mini", n, "12s"))
        lanes = lanes_of(base, raws)
        from_batch = lanes.count(("batch", None))
        # A harvested line is counted after its result is stored, which is what answers its caller: wait for it.
        wait_until(lambda: metric(base, harvested_series) - harvested_before >= from_batch, 10, "the harvest counted")
        harvested = metric(base, harvested_series) - harvested_before
        cut = metric(base, cut_series) - cut_before
    assert 0 < from_batch < n, lanes
    assert lanes.count(("realtime", "true")) == n - from_batch  # gpt-4o-mini has no flex price: standard tier
    # One batch, or two when the calls arrived across a flush (a loaded machine): each is cut, none runs on.
    stats = sim.stats()
    assert harvested == from_batch and cut == stats["batches_created"] >= 1
    assert stats["batches_cancelled"] == stats["batches_created"]
    assert stats["batch_lines_billed"] == from_batch
    assert stats["realtime_calls_billed"] == n - from_batch  # billed once each: nothing paid twice
    assert max(stats["batch_lines_billed_by_custom_id"].values()) == 1


def test_an_escalation_takes_the_flex_tier_where_offered(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=120.0)  # still validating when cut: nothing to harvest
    tiers = [f'hybrid_router_deadline_escalations_total{{reason="submitted",tier="{t}"}}' for t in ("flex", "standard")]
    with start_router(batch=LADDER, upstreams=[upstream(sim.v1, flex=True)]) as base:
        before = [metric(base, series) for series in tiers]  # the registry is the process's: count what is added
        flex, standard = asyncio.run(held_calls(base, "gpt-5-mini", 1, "8s"))[0], None
        standard = asyncio.run(held_calls(base, "gpt-4o-mini", 1, "8s"))[0]

        def added() -> list[float]:
            return [metric(base, series) - was for series, was in zip(tiers, before, strict=True)]

        # The guard counts an escalation after it stored the answer that woke the caller: wait for the counts.
        wait_until(lambda: min(added()) >= 1, 10, "both escalations counted")
        escalations = added()
    assert escalations == [1, 1]  # one escalation answered by each tier
    assert (flex.headers["x-router-lane"], flex.headers["x-router-escalated"]) == ("flex", "true")
    assert flex.parse().service_tier == "flex"
    assert float(flex.headers["x-router-savings-usd"]) > 0  # flex costs the batch price
    assert (standard.headers["x-router-lane"], standard.headers["x-router-escalated"]) == ("realtime", "true")
    stats = sim.stats()
    assert (stats["batch_lines_billed"], stats["realtime_calls_billed"], stats["batches_cancelled"]) == (0, 2, 2)


def test_a_flex_shortage_during_an_escalation_falls_back_to_the_standard_tier(
    start_router: RouterFactory, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=120.0, flex_unavailable=True)
    with start_router(batch=LADDER, upstreams=[upstream(sim.v1, flex=True)]) as base:
        [raw] = asyncio.run(held_calls(base, "gpt-5-mini", 1, "8s"))
    assert (raw.headers["x-router-lane"], raw.headers["x-router-escalated"]) == ("realtime", "true")
    assert raw.parse().service_tier == "default"
    assert float(raw.headers["x-router-savings-usd"]) == 0
    assert sim.stats()["realtime_calls_billed"] == 1  # the flex 429 is not billed


def test_turnaround_metrics_are_exported(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=0.5)
    with start_router(batch=LADDER) as base:
        asyncio.run(held_calls(base, "gpt-4o-mini", 2, "1h"))
        queue = "openai/gpt-4o-mini/chat/completions"

        def finished() -> str | None:
            text = httpx.get(base + "/metrics").text
            return text if metric_in(text, "hybrid_router_batches_inflight") == 0 else None

        # A batch's turnaround is recorded as it leaves the batches in flight, after its results are stored (which
        # answered the calls): wait for that, then read the gauges of the same scrape (set from this router's Redis).
        scrape = wait_until(finished, 10, "the batches to be finished")
        admit = metric_in(scrape, f'hybrid_router_turnaround_estimate_seconds{{quantile="admit",queue="{queue}"}}')
        evidence = metric_in(scrape, f'hybrid_router_turnaround_evidence_batches{{queue="{queue}"}}')
    assert 0.99 <= evidence <= 2.01  # one batch, or two when the calls arrived across a flush (a busy host)
    # Four parts prior (1 s), one part the batch seen (0.5 s plus polling, longer on a busy host).
    assert 1.0 <= admit <= 10.0


def test_a_late_message_batch_is_cut_and_its_succeeded_results_harvested(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=20.0)
    anthropic = {"name": "anthropic", "kind": "anthropic", "base_url": sim.base, "api_key_env": "SIM_KEY",
                 "models": ["claude-*"]}  # fmt: skip
    n = 10
    with start_router(batch=HARVEST, upstreams=[anthropic, upstream(sim.v1)]) as base:
        raws = asyncio.run(held_calls(base, "claude-sonnet-4-5", n, "12s"))
        lanes = lanes_of(base, raws)
    from_batch = lanes.count(("batch", None))
    assert 0 < from_batch < n, lanes
    assert lanes.count(("realtime", "true")) == n - from_batch
    stats = sim.stats()
    assert stats["message_batch_requests_billed"] == from_batch
    assert stats["realtime_calls_billed"] == n - from_batch  # billed once each
