"""A 100 MB batch is built, uploaded and its results read without holding the event loop: real-time calls go on.

A probe task sleeps a few milliseconds at a time; the CPU time the loop's thread spends between two of its
wake-ups is how long work on the loop held it. (Lateness by the clock also counts waits for the GIL or for a
core, which a loaded machine adds at random: it is reported, not asserted.) Encoding 100 MB on the loop kept
its thread busy for 0.15 s in one go here (0.3 s late by the clock); in a worker thread, and encoded line by
line so that no single call holds the GIL for long, 0.01-0.02 s. The bound is a generous one: this is the
property of not blocking, not a benchmark. The batch goes to a simulator in a process of its own (its parsing
of 100 MB must not share our GIL); the real-time calls go to the in-process simulator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import msgspec
import pytest

from router.core.settings import Upstream
from router.providers.anthropic import AnthropicProvider
from router.providers.base import OFF_LOOP_BYTES, BatchLine, BatchStatus, Provider
from router.providers.openai import OpenAIProvider
from tests.helpers.processes import simulator_process
from tests.helpers.servers import Sim
from tests.helpers.waiting import wait_until_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BATCH_BYTES = 100 * 1024 * 1024
MAX_HELD_S = 0.1
TICK_S = 0.005
CHAT = msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Still there?"}]})


@pytest.fixture(scope="module")
def batch_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with simulator_process(tmp_path_factory.mktemp("simulator")) as base:
        yield base


def big_batch(model: str) -> list[BatchLine]:
    """About `BATCH_BYTES` of chat calls, 4 kB each."""
    text = "All work and no play. " * 180
    body = {"model": model, "max_tokens": 16}
    return [
        BatchLine(custom_id=f"c{i}", body=msgspec.json.encode(body | {"messages": [{"role": "user", "content": text}]}))
        for i in range(BATCH_BYTES // (len(text) + 100))
    ]


def provider(kind: str, base: str) -> tuple[Provider, str]:
    if kind == "openai":
        return OpenAIProvider(Upstream(name="openai", base_url=base + "/v1"), "sk-test"), "gpt-4o-mini"
    upstream = Upstream(name="anthropic", kind="anthropic", base_url=base)
    return AnthropicProvider(upstream, "sk-ant-test"), "claude-sonnet-4-5"


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_100_mb_batch_does_not_hold_the_loop_from_real_time_calls(
    kind: str, batch_upstream: str, sim: Sim
) -> None:
    uploader, model = provider(kind, batch_upstream)
    realtime = OpenAIProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    lines = big_batch(model)
    assert sum(len(line.body) for line in lines) > 50 * OFF_LOOP_BYTES
    held: list[float] = []  # CPU seconds of the loop's thread between two wake-ups of the probe
    late: list[float] = []  # the same by the clock, beyond the tick
    latencies: list[float] = []
    running = asyncio.Event()
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK_S)
            held.append(time.thread_time() - cpu)
            late.append(time.perf_counter() - wall - TICK_S)
            running.set()

    async def realtime_calls() -> None:
        while not done.is_set():
            start = time.perf_counter()
            answer = await realtime.forward("/chat/completions", CHAT, stream=False)
            assert answer.status == 200
            latencies.append(time.perf_counter() - start)

    async def ended() -> BatchStatus | None:
        status = await uploader.poll(provider_id)
        return status if status.state != "running" else None

    tasks = [asyncio.create_task(probe()), asyncio.create_task(realtime_calls())]
    try:
        await running.wait()  # the probe ticks before the batch starts
        provider_id = await uploader.submit_batch("b-100mb", "/chat/completions", model, lines)
        answered = len(latencies)
        status = await wait_until_async(ended, 60, "the batch to end", every=0.5)
        results = [line.status async for line in uploader.results(status)]  # read and parsed as they stream in
    finally:
        done.set()
        await asyncio.gather(*tasks)
        await uploader.aclose()
        await realtime.aclose()
    assert answered, "no real-time call was answered while the batch was built"
    assert results == [200] * len(lines)
    seen = f"the loop was {max(late):.3f} s late at worst; real-time calls took up to {max(latencies):.3f} s"
    assert max(held) < MAX_HELD_S, f"the loop's thread worked {max(held):.3f} s in one go; {seen}"
