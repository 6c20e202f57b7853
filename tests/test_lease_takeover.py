"""Leases follow liveness: a replica killed with -9 while it holds a queue's flush lease and a `building` batch
leaves its work to a second replica as soon as its heartbeat lapses, not at the end of a 120 s lease.

The first replica's upstream is a socket that accepts connections and never answers, so its batcher is still
uploading (holding the flush lease and the batch it claimed) when it is killed: the moment a crash hurts most.
The second replica, in front of the simulator, must answer every call, those the dead replica claimed and new
ones that need the flush lease it left, within a bound well below the lease.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.processes import router_process
from tests.helpers.servers import NO_POLICIES, ROOT, Sim, upstream
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

BOUND_S = 60.0  # well below a 120 s lease: waiting for the lease to end would fail
MODEL = "gpt-4o-mini"


@pytest.fixture
def sim() -> Iterator[Sim]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=2.0))) as base:
        yield Sim(base)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A base URL whose server takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"


def tree(base_url: str, redis_url: str, key_prefix: str, lease_s: float) -> dict[str, Any]:
    return {
        "upstreams": [upstream(base_url, timeout_s=600)],
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "batch": {"max_wait_s": 0.5, "poll_interval_s": 0.5, "keepalive_s": 1.0, "lease_s": lease_s},
    }


def deferred(base: str, i: int) -> str:
    """A call sent with `Prefer: respond-async`; its id."""
    response = httpx.post(
        base + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": f"Summarise report {i}."}]},
        headers={"Authorization": "Bearer dev", "X-Deadline": "2h", "Prefer": "respond-async"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    call_id: str = response.json()["id"]
    return call_id


def leases_held(r: redis.Redis, key_prefix: str) -> bool:
    """Whether some queue's flush lease is held and one of its batches is being built."""
    flush = list(r.scan_iter(match=f"{key_prefix}*lease:flush"))
    building = [k for k in r.scan_iter(match=f"{key_prefix}*:batch:*") if r.type(k) == b"hash"]
    return bool(flush) and any(r.hget(k, "state") == b"building" for k in building)


async def held_answers(base: str, n: int) -> list[str]:
    """`n` held calls through the official SDK at its defaults, each answered."""
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="dev") as client:
        calls = [
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {i}."}],
                extra_headers={"X-Deadline": "2h"},
            )
            for i in range(n)
        ]
        done = await asyncio.wait_for(asyncio.gather(*calls), BOUND_S)
    return [c.choices[0].message.content or "" for c in done]


@pytest.mark.parametrize("lease_s", [120.0, 10.0])  # set long on purpose, and the shipped config's
def test_a_replica_killed_holding_the_flush_lease_is_taken_over_at_once(
    lease_s: float, sim: Sim, black_hole: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    r = redis.Redis.from_url(redis_url)
    with router_process(first_dir, tree(black_hole, redis_url, key_prefix, lease_s), {"SIM_KEY": "sk"}) as first:
        ids = [deferred(first.base, i) for i in range(5)]
        wait_until(lambda: leases_held(r, key_prefix), 30, "the first replica holding a flush lease while it uploads")
        first.signal(signal.SIGKILL)
        first.wait(10)
    if lease_s > BOUND_S:  # the dead replica's lease still has about two minutes to run
        flush = next(iter(r.scan_iter(match=f"{key_prefix}*lease:flush")))
        assert r.pttl(flush) > BOUND_S * 1000
    with router_process(second_dir, tree(sim.v1, redis_url, key_prefix, lease_s), {"SIM_KEY": "sk"}) as second:
        # New calls need the flush lease the dead replica left; the calls it claimed need its batch adopted.
        answers = asyncio.run(held_answers(second.base, 5))
        assert all(answers)
        with httpx.Client(base_url=second.base, headers={"Authorization": "Bearer dev"}) as client:
            for call_id in ids:
                fetched = client.get(f"/v1/deferred/{call_id}", params={"wait": BOUND_S}, timeout=BOUND_S + 10)
                assert fetched.status_code == 200, fetched.text
                assert fetched.json()["choices"][0]["message"]["content"]
    stats = sim.stats()
    assert stats["batch_lines_billed"] == 10
    assert stats["max_submissions_per_custom_id"] == 1
    r.close()
