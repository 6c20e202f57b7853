"""Billed once, answered always, at realistic timescales, counted in money.

Every case sends 20 held calls through the official `openai` SDK at its default retries, with a client timeout
(5 s) shorter than the simulator's batch turnaround (12 s): the same shape as a 25 s timeout against a 60 s
batch, or the SDK's 600 s default against a batch of an hour, scaled down so the suite takes minutes. The
router runs as a real process, so it can be killed and restarted; one case restarts Redis itself.

Each case checks the invariant from the provider's side: the lines the simulator billed plus the real-time
calls it billed equal the 20 calls, and every caller that kept retrying got its own answer.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from router.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.conftest import NO_POLICIES, ROOT, Sim, upstream
from tests.helpers.processes import redis_process, router_process, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

N = 20
TURNAROUND_S = 12.0
CLIENT_TIMEOUT_S = 5.0
MODEL = "gpt-4o-mini"


@pytest.fixture
def slow_sim() -> Iterator[Sim]:
    """A simulator of its own whose batches take longer than the clients' timeout."""
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=TURNAROUND_S))) as base:
        yield Sim(base)


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarise report number {i} for the quarterly review."}]


BATCH = {"max_wait_s": 1.0, "poll_interval_s": 0.5, "keepalive_s": 1.0, "margin_s": 2.0, "turnaround_prior_s": 1.0,
         "lease_s": 3.0}  # fmt: skip


def settings_tree(sim: Sim, redis_url: str, key_prefix: str, **batch: Any) -> dict[str, Any]:
    return {
        "upstreams": [upstream(sim.v1)],
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "shutdown_grace_s": 3.0,
        "batch": BATCH | batch,
    }


class Callers:
    """N threads, each one caller with its own SDK client at default retries, retrying until it has an answer
    (as an application's own retry loop would), for at most `patience` seconds."""

    RETRIED = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)

    def __init__(self, base: str, patience: float = 120.0) -> None:
        self.base = base
        self.answers: dict[int, str] = {}
        self.failures: dict[int, Exception] = {}
        self.attempts = [0] * N
        self._until = time.monotonic() + patience
        self._threads = [threading.Thread(target=self._call, args=(i,), daemon=True) for i in range(N)]

    def __enter__(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(max(0.0, self._until - time.monotonic()) + 5)

    def _call(self, i: int) -> None:
        with openai.OpenAI(base_url=self.base + "/v1", api_key="dev", timeout=CLIENT_TIMEOUT_S) as client:
            while True:
                self.attempts[i] += 1
                try:
                    answer = client.chat.completions.create(
                        model=MODEL, messages=prompt(i), extra_headers={"X-Deadline": "2h"}
                    )
                except self.RETRIED as exc:
                    if time.monotonic() > self._until:
                        self.failures[i] = exc
                        return
                    time.sleep(0.5)
                    continue
                except Exception as exc:
                    self.failures[i] = exc
                    return
                self.answers[i] = answer.choices[0].message.content or ""
                return


def expected_answers() -> dict[int, str]:
    """What the upstream answers each prompt, asked of a simulator that bills nothing the test counts."""
    with (
        serve_in_thread(create_simulator(SimConfig())) as base,
        openai.OpenAI(base_url=base + "/v1", api_key="x") as client,
    ):
        return {
            i: client.chat.completions.create(model=MODEL, messages=prompt(i)).choices[0].message.content or ""  # type: ignore[arg-type]
            for i in range(N)
        }


def check_billed_once(sim: Sim, callers: Callers) -> None:
    """Every caller got its own answer, and the provider billed exactly one line or call per caller."""
    stats = sim.stats()
    assert callers.failures == {}
    assert callers.answers == expected_answers()
    assert stats["batch_lines_billed"] + stats["realtime_calls_billed"] == N
    assert stats["max_submissions_per_custom_id"] == 1


def when_submitted(sim: Sim) -> None:
    """Wait until every call sits in a provider batch (so a fault hits calls that are stored and running)."""
    wait_until(lambda: sim.stats()["batch_lines_submitted"] >= N, 30, "all calls submitted in a batch")


def test_sdk_timeout_shorter_than_the_batch(slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    with (
        router_process(tmp_path, settings_tree(slow_sim, redis_url, key_prefix), {"SIM_KEY": "sk"}) as router,
        Callers(router.base) as callers,
    ):
        pass
    check_billed_once(slow_sim, callers)
    assert callers.attempts == [1] * N  # kept alive past the client's timeout: not even one app-level retry


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_router_stopped_and_restarted_while_callers_wait(
    how: str, slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    with (
        router_process(tmp_path, settings_tree(slow_sim, redis_url, key_prefix), {"SIM_KEY": "sk"}) as router,
        Callers(router.base) as callers,
    ):
        when_submitted(slow_sim)
        if how == "kill -9":
            router.signal(signal.SIGKILL)
            router.wait(10)
        else:
            stopping = time.monotonic()
            router.signal(signal.SIGTERM)
            assert router.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
            # Held connections were cut at once, not held up to their deadlines (2 h): within the grace.
            assert time.monotonic() - stopping < 3.0 + 2.0
        router.start()
    check_billed_once(slow_sim, callers)


def test_redis_restarted_while_callers_wait(slow_sim: Sim, key_prefix: str, tmp_path: Path) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    with redis_process(data) as store:
        tree = settings_tree(slow_sim, store.url, key_prefix)
        with router_process(tmp_path, tree, {"SIM_KEY": "sk"}) as router, Callers(router.base) as callers:
            when_submitted(slow_sim)
            store.stop()
            time.sleep(2.0)  # Redis is away for a while: held callers keep waiting, nobody gets a 503
            store.start()
    check_billed_once(slow_sim, callers)
    assert callers.attempts == [1] * N


def test_held_connection_cap_under_a_low_fd_limit(
    slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # 200 descriptors: the router raises its soft limit to this hard limit and holds at most 8 connections
    # (half of what Redis' pool and the reserve leave, at least 8); the rest get 429 before anything is stored.
    tree = settings_tree(slow_sim, redis_url, key_prefix)
    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}, nofile=200) as router:
        with Callers(router.base, patience=150) as callers:
            pass
        log = router.output()
    check_billed_once(slow_sim, callers)
    assert "Too many open files" not in log
    assert max(callers.attempts) > 1  # some callers were refused (429) and came back
