"""Daily budgets hold under concurrency: each call reserves its worst-case cost at admission (atomically in Redis)
and settles its real cost when it ends, so a burst of 100 calls to a slow upstream spends at most the budget plus
one call's reservation error, in real time, in the deferred lane and in native batches (reserved from the input
file's lines at creation, settled when the batch is booked). Before reservations, all 100 real-time calls
were admitted and spent 59 times the budget."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BUDGET = 0.001
CLAUDE = "claude-sonnet-4-5"
N = 100
MAX_TOKENS = 50
KEYS = [{"sha256": hashlib.sha256(b"sk-a").hexdigest(), "tenant": "a"}]
TREE: dict[str, Any] = {"auth": "keys", "keys": KEYS, "tenants": {"a": {"daily_budget_usd": BUDGET}}, "batch": FAST}


def body(i: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Summarise memo number {i}."}],
        "max_tokens": MAX_TOKENS,
    }


def spent(base: str) -> float:
    usage = httpx.get(base + "/v1/usage", headers={"authorization": "Bearer sk-a"}, timeout=30)
    usage.raise_for_status()
    value: float = usage.json()["limits"]["daily_budget_usd"]["spent"]
    return value


def check_refusal(error: object) -> None:
    """The budget's refusal as it always was: OpenAI's `insufficient_quota` 429."""
    assert isinstance(error, dict)
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert "daily budget" in error["message"]


async def realtime_burst(base: str) -> tuple[list[float], list[object]]:
    """N concurrent real-time calls through the SDK: the costs of those answered, the bodies of those refused."""
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-a", max_retries=0, timeout=120) as client:

        async def one(i: int) -> float | object:
            try:
                raw = await client.chat.completions.with_raw_response.create(**body(i))
            except openai.RateLimitError as exc:
                return exc.body
            assert raw.parse().choices[0].message.content
            return float(raw.headers["x-router-cost-usd"])

        results = await asyncio.gather(*(one(i) for i in range(N)))
    return [r for r in results if isinstance(r, float)], [r for r in results if not isinstance(r, float)]


def test_a_burst_of_real_time_calls_stays_within_the_budget(sim: Sim, start_router: RouterFactory) -> None:
    sim.configure(latency_ms=2000)  # every call is in flight while the others are admitted
    with start_router(**TREE) as base:
        costs, refused = asyncio.run(realtime_burst(base))
        total = spent(base)
    assert costs and refused, (len(costs), len(refused))
    for error in refused:
        check_refusal(error)
    assert sum(costs) == pytest.approx(total)
    # Each answer cost at most what it reserved (its max_tokens caps its output): no reservation error at all.
    assert total <= BUDGET
    assert sim.stats()["realtime_calls_billed"] == len(costs)


async def deferred_burst(base: str) -> tuple[list[str], list[object]]:
    """N concurrent deferred calls (`Prefer: respond-async`): the ids of those accepted, the bodies of those refused."""
    headers = {"authorization": "Bearer sk-a", "prefer": "respond-async", "x-deadline": "2h"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body(i)) for i in range(N)))
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert len(accepted) + len(refused) == N
    return accepted, refused


def test_a_burst_of_deferred_calls_stays_within_the_budget(sim: Sim, start_router: RouterFactory) -> None:
    with start_router(**TREE) as base:
        accepted, refused = asyncio.run(deferred_burst(base))
        with httpx.Client(base_url=base, headers={"authorization": "Bearer sk-a"}, timeout=60) as client:
            for call_id in accepted:
                answer = client.get(f"/v1/deferred/{call_id}", params={"wait": 30})
                assert answer.status_code == 200, answer.text
        total = spent(base)
        # Settled reservations free room: a call that did not fit the burst fits now that real costs are known.
        later = httpx.post(
            base + "/v1/chat/completions",
            json=body(N),
            headers={"authorization": "Bearer sk-a", "prefer": "respond-async", "x-deadline": "2h"},
        )
    assert accepted and refused, (len(accepted), len(refused))
    for error in refused:
        check_refusal(error)
    assert total <= BUDGET
    assert sim.stats()["batch_lines_billed"] == len(accepted)
    assert later.status_code == 202, later.text


def batch_file(n: int, tag: str) -> bytes:
    lines = (
        {"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)} for i in range(n)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def native_cost(base: str) -> tuple[float, int]:
    lanes = httpx.get(base + "/v1/usage", headers={"authorization": "Bearer sk-a"}, timeout=30).json()["lanes"]
    native = lanes.get("native", {})
    return float(native.get("cost_usd", 0.0)), int(native.get("requests", 0))


async def native_burst(base: str, files: list[str]) -> tuple[list[str], list[object]]:
    """One native batch per file, created at once: the ids of those created, the bodies of those refused."""
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-a", max_retries=0, timeout=60) as client:

        async def one(file_id: str) -> str | object:
            try:
                batch = await client.batches.create(
                    input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
                )
            except openai.RateLimitError as exc:
                return exc.body
            return batch.id

        results = await asyncio.gather(*(one(f) for f in files))
    return [r for r in results if isinstance(r, str)], [r for r in results if not isinstance(r, str)]


def test_native_batches_created_at_once_stay_within_the_budget(sim: Sim, start_router: RouterFactory) -> None:
    sim.configure(batch_turnaround_s=1.0)
    lines = 10
    with start_router(**TREE) as base, openai.OpenAI(base_url=base + "/v1", api_key="sk-a", max_retries=0) as client:
        # Ten batches of ten calls: together their worst case is about twice the budget.
        files = [client.files.create(file=("in.jsonl", batch_file(lines, f"f{j}-")), purpose="batch").id
                 for j in range(N // lines)]  # fmt: skip
        created, refused = asyncio.run(native_burst(base, files))

        def all_completed() -> bool:
            return all(client.batches.retrieve(b).status == "completed" for b in created)

        wait_until(all_completed, 30, "the batches to complete")
        # Booked by the watcher once ended: every line of every batch created.
        wait_until(lambda: native_cost(base)[1] == lines * len(created), 30, "the batches' lines to be booked")
        cost, _ = native_cost(base)
        # Booking settled the reservations: what was left over is free again for a new batch.
        again = client.batches.create(input_file_id=files[0], endpoint="/v1/chat/completions", completion_window="24h")
    assert created and refused, (len(created), len(refused))
    for error in refused:
        check_refusal(error)
    assert cost <= BUDGET
    assert again.id


async def message_batch_burst(base: str, n: int) -> tuple[list[str], list[object]]:
    """`n` Message Batches of one request each, created at once through the anthropic SDK."""
    async with anthropic.AsyncAnthropic(base_url=base, api_key="sk-a", max_retries=0, timeout=60) as client:

        async def one(i: int) -> str | object:
            params: Any = {"model": CLAUDE, "max_tokens": 20, "messages": [{"role": "user", "content": f"Memo {i}."}]}
            try:
                batch = await client.messages.batches.create(requests=[{"custom_id": f"m{i}", "params": params}])
            except anthropic.RateLimitError as exc:
                return exc.body
            return batch.id

        results = await asyncio.gather(*(one(i) for i in range(n)))
    return [r for r in results if isinstance(r, str)], [r for r in results if not isinstance(r, str)]


def test_message_batches_created_at_once_stay_within_the_budget(sim: Sim, start_router: RouterFactory) -> None:
    sim.configure(batch_turnaround_s=1.0)
    with start_router(**TREE | {"upstreams": with_anthropic(sim)}) as base:
        # Each request may cost about a fifth of the budget: of ten created at once, about four fit.
        created, refused = asyncio.run(message_batch_burst(base, 10))

        def booked() -> bool:
            lanes = httpx.get(base + "/v1/usage", headers={"authorization": "Bearer sk-a"}).json()["lanes"]
            return int(lanes.get("batch", {}).get("requests", 0)) == len(created)

        wait_until(booked, 30, "the created batches to be booked")
        total = spent(base)
    assert created and refused, (len(created), len(refused))
    for error in refused:
        assert isinstance(error, dict) and error["type"] == "error"  # Anthropic's shape on its own path
        assert error["error"]["type"] == "rate_limit_error" and "daily budget" in error["error"]["message"]
    assert 0 < total <= BUDGET
