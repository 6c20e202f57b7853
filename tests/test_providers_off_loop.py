"""A 100 MB batch is built, uploaded and its results read without holding the event loop: real-time calls go on.

The batch's encoding is the work that could hold the loop (0.15 s in one go for 100 MB on the loop). The test
proves it runs elsewhere without measuring time: the encoding waits, in its own thread, until a real-time call
has been answered after the encoding began. Had it run on the loop, no call could be answered and it would wait
in vain. How long the loop's thread worked in one go is measured and printed for a reader (CPU time, which a
loaded machine or a garbage collection can stretch at random), not asserted: tests never assert on timing. The
batch goes to a simulator in a process of its own (its parsing of 100 MB must not share our GIL); the real-time
calls go to the in-process simulator.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from router.core.settings import Upstream
from router.providers import openai as openai_provider
from router.providers.anthropic import AnthropicProvider
from router.providers.base import OFF_LOOP_BYTES, BatchLine, BatchStatus, Provider
from router.providers.openai import OpenAIProvider
from tests.helpers.processes import simulator_process
from tests.helpers.servers import Sim
from tests.helpers.waiting import wait_until_async

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BATCH_BYTES = 100 * 1024 * 1024
ENCODED_WITHIN_S = 60  # a bound on a wait for an event, not a measure of speed
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
    kind: str, batch_upstream: str, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploader, model = provider(kind, batch_upstream)
    encoding = threading.Event()  # set in the thread that encodes the batch
    answered_meanwhile = threading.Event()  # set on the loop when a real-time answer came after that
    loop_thread = threading.get_ident()
    encoded_on: list[int] = []

    def gated(encode: Callable[..., Any]) -> Callable[..., Any]:
        def encode_when_the_loop_answered(*args: Any) -> Any:
            encoded_on.append(threading.get_ident())
            encoding.set()
            assert answered_meanwhile.wait(ENCODED_WITHIN_S), (
                "no real-time call was answered while the batch was encoded"
            )
            return encode(*args)

        return encode_when_the_loop_answered

    if kind == "openai":
        monkeypatch.setattr(openai_provider, "_spool", gated(openai_provider._spool))
    else:
        monkeypatch.setattr(AnthropicProvider, "_batch_body", gated(AnthropicProvider._batch_body))
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
            if encoding.is_set():
                answered_meanwhile.set()

    async def ended() -> BatchStatus | None:
        status = await uploader.poll(provider_id)
        return status if status.state != "running" else None

    tasks = [asyncio.create_task(probe()), asyncio.create_task(realtime_calls())]
    try:
        await running.wait()  # the probe ticks before the batch starts
        provider_id = await uploader.submit_batch("b-100mb", "/chat/completions", model, lines)
        status = await wait_until_async(ended, 60, "the batch to end", every=0.5)
        results = [line.status async for line in uploader.results(status)]  # read and parsed as they stream in
    finally:
        done.set()
        await asyncio.gather(*tasks)
        await uploader.aclose()
        await realtime.aclose()
    assert encoded_on and loop_thread not in encoded_on, "the batch was encoded on the event loop's thread"
    assert answered_meanwhile.is_set()
    assert results == [200] * len(lines)
    print(
        f"the loop's thread worked {max(held):.3f} s in one go at most; it was {max(late):.3f} s late at worst;"
        f" real-time calls took up to {max(latencies):.3f} s"
    )
