"""Billed once, answered always, at realistic timescales, counted in money.

Every case sends 20 held calls through the official `openai` SDK at its default retries, with a client timeout
(5 s) shorter than the simulator's batch turnaround (12 s): the same shape as a 25 s timeout against a 60 s
batch, or the SDK's 600 s default against a batch of an hour, scaled down so the suite takes minutes. The
router runs as a real process, so it can be killed and restarted; one case restarts Redis itself.

Each case checks the invariant from the provider's side: the lines the simulator billed plus the real-time
calls it billed equal the 20 calls, and every caller that kept retrying got its own answer.

The `openai_node` cases make the same calls through openai-node (`tests/node/billed_once.mjs`, its packages
installed by `npm ci` there), whose timeout covers only the wait for the response headers.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.metrics import metric
from tests.helpers.processes import redis_process, router_process
from tests.helpers.servers import NO_POLICIES, ROOT, Sim, upstream
from tests.helpers.waiting import wait_until

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


def prompt(i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Summarise report number {i} for the quarterly review."}]


BATCH = dict(max_wait_s=1.0, poll_interval_s=0.5, keepalive_s=1.0, margin_s=2.0, turnaround_prior_s=1.0, lease_s=3.0)


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
                    time.sleep(0.5)  # the application's own pause before it tries again
                    continue
                except Exception as exc:
                    self.failures[i] = exc
                    return
                self.answers[i] = answer.choices[0].message.content or ""
                return


class NodeCallers:
    """The same N callers in one Node process: openai-node at its default retries, a 5 s timeout, and the same
    app-level retry loop (`tests/node/billed_once.mjs`)."""

    DIR = ROOT / "tests" / "node"

    def __init__(self, node: str, base: str, patience: float = 120.0) -> None:
        self.command = [node, "billed_once.mjs", base, str(N), str(patience)]
        self.patience = patience
        self.answers: dict[int, str] = {}
        self.failures: dict[int, str] = {}
        self.attempts: list[int] = []
        self.errors: dict[int, list[str]] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NodeCallers:
        with tempfile.TemporaryFile() as prompts:
            prompts.write(json.dumps([prompt(i) for i in range(N)]).encode())
            prompts.seek(0)
            self.process = subprocess.Popen(
                self.command, cwd=self.DIR, stdin=prompts, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and self.process is not None:
            self.process.kill()
            self.process.communicate()
            return
        self.join()

    def join(self) -> None:
        assert self.process is not None
        try:
            out, err = self.process.communicate(timeout=self.patience + 30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        assert self.process.returncode == 0, f"node exited with {self.process.returncode}: {err.decode()[-3000:]}"
        report = json.loads(out)
        self.answers = {int(i): answer for i, answer in report["answers"].items()}
        self.failures = {int(i): failure for i, failure in report["failures"].items()}
        self.attempts = report["attempts"]
        self.errors = {int(i): seen for i, seen in report["errors"].items()}


@pytest.fixture
def node() -> str:
    """The `node` binary, with openai-node installed in tests/node; skipped only where there is no Node.js."""
    binary = shutil.which("node")
    if binary is None:
        pytest.skip("node is not on PATH: the openai-node cases need Node.js 20+ and `npm ci` in tests/node")
    if not (NodeCallers.DIR / "node_modules" / "openai").is_dir():
        pytest.fail("openai-node is not installed: run `npm ci --no-audit --no-fund` in tests/node")
    return binary


def expected_answers() -> dict[int, str]:
    """What the upstream answers each prompt, asked of a simulator that bills nothing the test counts."""
    with (
        serve_in_thread(create_simulator(SimConfig())) as base,
        openai.OpenAI(base_url=base + "/v1", api_key="x") as client,
    ):
        return {
            i: client.chat.completions.create(model=MODEL, messages=prompt(i)).choices[0].message.content or ""
            for i in range(N)
        }


def check_billed_once(sim: Sim, callers: Callers | NodeCallers) -> None:
    """Every caller got its own answer, and the provider billed exactly one line or call per caller."""
    stats = sim.stats()
    assert callers.failures == {}
    assert callers.answers == expected_answers()
    assert stats["batch_lines_billed"] + stats["realtime_calls_billed"] == N
    assert stats["max_submissions_per_custom_id"] == 1


def redis_ready(base: str) -> bool:
    """Whether the router's readiness check reaches Redis."""
    ready: bool = httpx.get(base + "/readyz", timeout=10).json()["checks"]["redis"]
    return ready


def when_submitted(sim: Sim) -> None:
    """Wait until every call sits in a provider batch (so a fault hits calls that are stored and running)."""
    wait_until(lambda: sim.stats()["batch_lines_submitted"] >= N, 30, "all calls submitted in a batch")


def test_sdk_timeout_shorter_than_the_batch(slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    tree = settings_tree(slow_sim, redis_url, key_prefix)
    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}) as router, Callers(router.base) as callers:
        pass
    check_billed_once(slow_sim, callers)
    assert callers.attempts == [1] * N  # kept alive past the client's timeout: not even one app-level retry


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_router_stopped_and_restarted_while_callers_wait(
    how: str, slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    tree = settings_tree(slow_sim, redis_url, key_prefix)
    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}) as router, Callers(router.base) as callers:
        when_submitted(slow_sim)
        if how == "kill -9":
            router.signal(signal.SIGKILL)
            router.wait(10)
        else:
            router.signal(signal.SIGTERM)
            # Held connections are cut at once, not held up to their deadlines (2 h): the router exits within its
            # grace (3 s), given seconds more on a busy host. uvicorn re-raises the signal it caught.
            assert router.wait(3.0 + 10) in (0, -signal.SIGTERM)
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
            # Redis stays away until the router has seen it gone; held callers keep waiting, nobody gets a 503.
            wait_until(lambda: not redis_ready(router.base), 20, "the router to see Redis gone")
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
        refused = metric(httpx.get(router.base + "/metrics").text, "hybrid_router_held_refused_total")
        log = router.output()
    check_billed_once(slow_sim, callers)
    assert "Too many open files" not in log
    # Some calls were refused with 429 and came back: through the SDK's own retries, or the caller's when the
    # SDK's ran out first (which of the two depends on how soon held slots free up).
    assert refused > 0


def test_openai_node_timeout_shorter_than_the_batch(
    node: str, slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # openai-node's timeout ends when the headers arrive: the early 200 stops it, the spaces keep the body alive.
    tree = settings_tree(slow_sim, redis_url, key_prefix)
    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}) as router, NodeCallers(node, router.base) as callers:
        pass
    check_billed_once(slow_sim, callers)
    assert callers.attempts == [1] * N, callers.errors


def test_openai_node_router_killed_and_restarted(
    node: str, slow_sim: Sim, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    # The 200 is committed (0.2 s) well before the batch is submitted (1 s), so the kill cuts every body.
    tree = settings_tree(slow_sim, redis_url, key_prefix, keepalive_s=0.2)
    with router_process(tmp_path, tree, {"SIM_KEY": "sk"}) as router, NodeCallers(node, router.base) as callers:
        when_submitted(slow_sim)
        router.signal(signal.SIGKILL)
        router.wait(10)
        router.start()
    check_billed_once(slow_sim, callers)
    # openai-node neither wraps nor retries a cut body: each caller saw fetch's own error, called again, re-attached.
    assert all(callers.errors[i][0].startswith("TypeError: terminated") for i in range(N)), callers.errors
