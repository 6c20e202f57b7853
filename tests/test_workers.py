"""`serve --workers N` over real processes: one port, N routers coordinated through Redis, one set of metrics."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from router.ops.workers import parse_workers
from tests.helpers.processes import RouterProcess, router_process
from tests.helpers.servers import NO_POLICIES, ROOT, Sim, upstream
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FAST = {"max_wait_s": 0.3, "poll_interval_s": 0.3, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 3.0}


def workers_of(router: RouterProcess) -> list[int]:
    """The worker processes of a `serve --workers` router (not multiprocessing's resource tracker)."""
    assert router.process is not None
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == router.process.pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def replicas(redis_url: str, prefix: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return len(list(client.scan_iter(match=f"{prefix}:replica:*")))


def metric_sum(base: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def traffic(base: str, first: int, n: int) -> list[Any]:
    """`n` real-time and `n` deferred (held) calls at once through the one port."""
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="dev", max_retries=0, timeout=60) as client:

        def call(i: int, deferred: bool) -> Any:
            headers = {"x-deadline": "2h"} if deferred else None
            messages: Any = [{"role": "user", "content": f"Summarise item {i}."}]
            return client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages, extra_headers=headers
            )

        return await asyncio.gather(*(call(i, d) for i in range(first, first + n) for d in (False, True)))


def test_parse_workers() -> None:
    assert parse_workers("auto") == (os.cpu_count() or 1)
    assert parse_workers("3") == 3
    for bad in ("0", "-1", "two", ""):
        with pytest.raises(ValueError, match="positive number or `auto`"):
            parse_workers(bad)


def test_two_workers_serve_one_port_coordinate_through_redis_and_share_metrics(
    sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    sim.configure(batch_turnaround_s=0.5)
    config = {
        "upstreams": [upstream(sim.v1)],
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "shutdown_grace_s": 3.0,
        "batch": FAST,
    }
    with router_process(tmp_path, config, {"SIM_KEY": "sk"}, args=("--workers", "2")) as router:
        workers = workers_of(router)
        assert len(workers) == 2
        wait_until(lambda: replicas(redis_url, key_prefix) == 2, 60, "both workers' heartbeats")
        answers = asyncio.run(traffic(router.base, 0, 20))
        assert {(a.http_response.status_code, a.headers["x-router-lane"]) for a in answers} == {
            (200, "realtime"),
            (200, "batch"),
        }

        def counted(lane: str) -> float:
            return metric_sum(router.base, "hybrid_router_requests_total", lane=lane)

        # A batch line is counted after its result is stored, which is what answers its caller: wait for the count.
        wait_until(lambda: counted("realtime") >= 20 and counted("batch") >= 20, 10, "every call counted")
        # Every worker's counters in one scrape, whichever worker answers it.
        for _ in range(4):
            assert metric_sum(router.base, "hybrid_router_requests_total", lane="realtime") == 20
            assert metric_sum(router.base, "hybrid_router_requests_total", lane="batch") == 20

        os.kill(workers[0], signal.SIGKILL)  # a worker dies: another takes its place
        wait_until(lambda: len(workers_of(router)) == 2 and workers[0] not in workers_of(router), 60, "a new worker")
        more = asyncio.run(traffic(router.base, 20, 10))
        assert {a.http_response.status_code for a in more} == {200}

        router.signal(signal.SIGTERM)
        assert router.wait(20) == 0
    stats = sim.stats()
    assert stats["batch_lines_submitted"] == 30  # every deferred call in one batch line, whichever worker took it
    assert stats["max_submissions_per_custom_id"] == 1
