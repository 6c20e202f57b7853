"""Shared fixtures: a real Redis (isolated by key prefix), the built-in simulator and the router, on real sockets."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from router.http.app import create_app
from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.servers import RouterFactory, Sim, router_settings

# The tiers `make unit` leaves out (pyproject's markers, CONTRIBUTING.md). A test that starts a router through the
# fixtures below is an integration test whether or not it says so; one that starts it otherwise is marked by hand.
TIERS = ("integration", "e2e", "slow")
ROUTER_FIXTURES = frozenset({"start_router", "router_url"})


def pytest_configure(config: pytest.Config) -> None:
    """Hypothesis checks properties, not speed: no per-example deadline (200 ms by default) and no health check on
    how fast examples are drawn, both of which a busy host fails at random (a `Flaky` on the rerun that was fast)."""
    from hypothesis import HealthCheck, settings

    settings.register_profile("hybrid-router", deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("hybrid-router")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put a test that starts a router through the fixtures, and carries no tier marker, in the integration tier."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if ROUTER_FIXTURES & uses and not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.integration)


def _reachable(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


# Every process a test starts inherits this mark in its environment, so one still running at the end of the
# session is found even when it was orphaned; one started with a clean environment is found by its parent,
# its working directory or its arguments (this session's temporary directory).
_SESSION_MARK = ("HRTEST_SESSION", secrets.token_hex(8))
os.environ[_SESSION_MARK[0]] = _SESSION_MARK[1]


def _started_here(basetemp: str) -> dict[int, str]:
    """Live processes (zombies excluded) that this session started: pid -> command line."""
    found: dict[int, str] = {}
    mark = "=".join(_SESSION_MARK).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            ours = int(ppid) == os.getpid() or mark in (entry / "environ").read_bytes().split(b"\0")
            ours = ours or basetemp in cmdline or (os.readlink(entry / "cwd") + os.sep).startswith(basetemp)
        except OSError:
            continue
        if ours and state != "Z":
            found[int(entry.name)] = cmdline
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail the run when a process a test started is still alive at the end (and stop it). Linux: reads /proc."""
    basetemp = str(tmp_path_factory.getbasetemp().resolve()) + os.sep
    yield
    if not Path("/proc/self/environ").exists():
        return
    until = time.monotonic() + 3
    while (leaked := _started_here(basetemp)) and time.monotonic() < until:
        time.sleep(0.1)
    for pid in leaked:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if leaked:
        pytest.fail("processes started by tests were still running (now killed): " + repr(leaked), pytrace=False)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`REDIS_URL`, else the local Redis on 6379, else the bundled redis-server: tests never skip for want of Redis."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if _reachable(url):
        yield url
        return
    from router.ops.embedded import embedded_redis

    with embedded_redis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture(scope="session")
def bundled_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundled redis-server (Redis 6.2): the oldest server the router supports."""
    from router.ops.embedded import embedded_redis

    with embedded_redis(tmp_path_factory.mktemp("bundled")) as url:
        yield url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = "hrtest-" + secrets.token_hex(4)
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


@pytest.fixture(scope="module")
def sim_server() -> Iterator[Sim]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.3))) as base:
        yield Sim(base)


@pytest.fixture
def sim(sim_server: Sim) -> Iterator[Sim]:
    """The module's simulator, reset to a clean state for this test."""
    httpx.post(sim_server.base + "/_sim/reset").raise_for_status()
    sim_server.configure(**{f: getattr(SimConfig(batch_turnaround_s=0.3), f) for f in SimConfig.__struct_fields__})
    yield sim_server


@pytest.fixture
def start_router(sim: Sim, redis_url: str, key_prefix: str) -> Iterator[RouterFactory]:
    """Start routers in front of the simulator: `with start_router(**settings_tree) as base_url: ...`; `environ`
    adds to the environment the app is built with (which holds SIM_KEY)."""

    @contextlib.contextmanager
    def start(*, loops: bool = True, environ: dict[str, str] | None = None, **tree: Any) -> Iterator[str]:
        settings = router_settings(sim, redis_url, key_prefix, **tree)
        app = create_app(settings, {"SIM_KEY": "sk-sim"} | (environ or {}), loops=loops)
        with serve_in_thread(app, limits=settings.limits) as base:
            yield base

    yield start


@pytest.fixture
def oai() -> Iterator[Callable[..., openai.OpenAI]]:
    """Make official SDK clients for a base URL; all are closed after the test."""
    made: list[openai.OpenAI] = []

    def make(base: str, **kw: Any) -> openai.OpenAI:
        kw.setdefault("api_key", "dev")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        c = openai.OpenAI(base_url=base if base.endswith("/v1") else base + "/v1", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def router_url(start_router: RouterFactory) -> Iterator[str]:
    """A router with default settings (no policies) in front of the simulator."""
    with start_router() as base:
        yield base
