"""The serving process's own health (`telemetry/runtime.py`): the event-loop lag probe, the GC pause metric, and
`gc_tuning` (start-up objects frozen, collections spaced out) in a `serve` app and only there."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from router.telemetry import metrics, runtime
from tests.helpers.metrics import metric, series
from tests.helpers.processes import ROOT
from tests.helpers.servers import Sim, router_settings
from tests.helpers.waiting import wait_until, wait_until_async

RouterFactory = Callable[..., Any]


async def samples(probe: runtime.LoopLagProbe, at_least: int) -> bool:
    return probe.samples >= at_least


async def test_the_probe_sees_a_stalled_loop() -> None:
    """A synchronous step that holds the loop shows up as lag of at least the stall (less one probe interval)."""
    probe = runtime.LoopLagProbe(interval_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    await wait_until_async(lambda: samples(probe, 2), what="the probe running")
    seen = probe.samples
    time.sleep(0.3)  # noqa: ASYNC251  # a stall: nothing else on this loop runs meanwhile
    await wait_until_async(lambda: samples(probe, seen + 1), what="a sample after the stall")
    stop.set()
    await task
    assert probe.worst_s >= 0.25 - 0.05  # the stall, less at most one interval it slept through before the stall


async def test_the_probe_reports_to_the_lag_histogram() -> None:
    count = "hybrid_router_event_loop_lag_seconds_count"
    before = metric(metrics_text(), count)
    probe = runtime.LoopLagProbe(interval_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop))
    await wait_until_async(lambda: samples(probe, 3), what="three samples")
    stop.set()
    await task
    assert metric(metrics_text(), count) - before >= probe.samples >= 3


def metrics_text() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()


def test_every_collection_pause_is_recorded_by_generation() -> None:
    runtime.watch_gc()
    runtime.watch_gc()  # idempotent: one hook, one observation per collection
    try:
        before = metric(metrics_text(), 'hybrid_router_gc_pause_seconds_count{generation="2"}')
        gc.collect()
        after = metric(metrics_text(), 'hybrid_router_gc_pause_seconds_count{generation="2"}')
        assert after == before + 1
        assert sum(1 for hook in gc.callbacks if hook is runtime._on_gc) == 1
    finally:
        runtime.unwatch_gc()
    assert runtime._on_gc not in gc.callbacks


@pytest.fixture
def served_app(sim: Sim, redis_url: str, key_prefix: str, tmp_path: Any) -> Iterator[Callable[[bool, bool], Any]]:
    """Builds the router app in a process of its own (the collector's state is process-wide), serves it through
    its lifespan, makes one call, and reports the collector's state and the runtime metrics."""

    def run(serving: bool, gc_tuning: bool) -> Any:
        settings = router_settings(sim, redis_url, key_prefix, gc_tuning=gc_tuning)
        script = textwrap.dedent(
            f"""
            import gc, json, msgspec
            from litestar.testing import TestClient
            from router.core.settings import Settings
            from router.http.app import create_app

            settings = msgspec.json.decode({msgspec_json(settings)!r}, type=Settings)
            default = gc.get_threshold()
            before = gc.get_freeze_count()  # what the imports froze themselves (a library may, on some Pythons)
            app = create_app(settings, {{"SIM_KEY": "sk-sim"}}, loops=False, serving={serving})
            with TestClient(app) as client:
                answer = client.post("/v1/chat/completions", json={{"model": "gpt-4o-mini",
                                     "messages": [{{"role": "user", "content": "hi"}}]}})
                gc.collect(0)  # one collection at least, whatever the thresholds: the pause metric has a sample
                text = client.get("/metrics").text
            lag = "hybrid_router_event_loop_lag_seconds_count" in text
            print(json.dumps({{"status": answer.status_code, "threshold": gc.get_threshold(), "default": default,
                               "frozen": gc.get_freeze_count() - before, "lag": lag,
                               "gc": "hybrid_router_gc_pause_seconds_count" in text}}))
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    yield run


def msgspec_json(settings: Any) -> str:
    import msgspec

    return msgspec.json.encode(settings).decode()


def test_a_served_app_tunes_the_collector(served_app: Callable[[bool, bool], Any]) -> None:
    state = served_app(True, True)
    assert state["status"] == 200
    assert tuple(state["threshold"]) == runtime.GC_THRESHOLDS
    assert state["frozen"] > 10_000  # the imported modules, the app, the price tables: start-up state is frozen
    assert state["lag"] and state["gc"]


def test_gc_tuning_false_leaves_the_collector_alone(served_app: Callable[[bool, bool], Any]) -> None:
    state = served_app(True, False)
    assert state["status"] == 200
    assert state["threshold"] == state["default"]
    assert state["frozen"] == 0
    assert state["lag"] and state["gc"]  # measured either way


def test_an_app_that_is_not_serving_leaves_the_collector_alone(served_app: Callable[[bool, bool], Any]) -> None:
    """Tests build many apps in one process: only `serve` tunes the collector."""
    state = served_app(False, True)
    assert state["status"] == 200
    assert state["threshold"] == state["default"]
    assert state["frozen"] == 0


def test_the_lag_metric_is_exported_by_a_router(start_router: RouterFactory, oai: Any) -> None:
    with start_router() as base:
        client: openai.OpenAI = oai(base)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        def sampled() -> float:
            text = httpx.get(base + "/metrics").text
            return sum(series(text, "hybrid_router_event_loop_lag_seconds_count").values())

        wait_until(lambda: sampled() >= 2, what="two loop-lag samples")
