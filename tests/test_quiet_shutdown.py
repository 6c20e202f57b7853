"""A SIGTERM with held calls is routine: each cut held call is one INFO line with its call id, never a traceback
(before, 20 held calls logged 80 traceback blocks: `HeldCut ... cut: shutdown`, then the framework's `Exception
caught after response started`)."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.processes import router_process
from tests.helpers.servers import NO_POLICIES, ROOT, Sim, upstream
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

N = 20


@pytest.fixture
def slow_sim() -> Iterator[Sim]:
    """Batches that outlast the test: the calls stay held until the signal."""
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=600))) as base:
        yield Sim(base)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_with_held_calls_logs_no_traceback(
    workers: int, slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tree = {
        "upstreams": [upstream(slow_sim.v1)],
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "shutdown_grace_s": 3.0,
        "batch": {"max_wait_s": 0.5, "poll_interval_s": 0.5, "keepalive_s": 0.5},
    }
    ended: list[int] = []
    committed: list[int] = []

    def held(i: int) -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Summarise memo {i}."}]}
        try:
            with httpx.stream(
                "POST", router.base + "/v1/chat/completions", json=body, headers={"X-Deadline": "2h"}, timeout=60
            ) as response:
                assert response.status_code == 200
                committed.append(i)  # the status is sent: from now on only a cut can end it early
                for _ in response.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass  # the cut, as designed: the client's retry would re-attach
        ended.append(i)

    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}, args=("--workers", str(workers))) as router:
        threads = [threading.Thread(target=held, args=(i,), daemon=True) for i in range(N)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(committed) == N, 30, "every held call's 200 sent")
        router.signal(signal.SIGTERM)
        assert router.wait(3.0 + 10) in (0, -signal.SIGTERM)
        for thread in threads:
            thread.join(30)
    log = router.output()
    assert len(ended) == N
    assert "Traceback" not in log, log[-4000:]
    assert "HeldCut" not in log and "Exception caught after response started" not in log
    cuts = [line for line in log.splitlines() if "cut: shutdown" in line]
    assert len(cuts) == N, log[-4000:]
    assert all(" INFO " in line for line in cuts)
    assert len({re.search(r"held answer of (\S+) cut", line).group(1) for line in cuts}) == N  # type: ignore[union-attr]
