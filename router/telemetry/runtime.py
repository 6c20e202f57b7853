"""The serving process's own health: how late its event loop runs (a probe task) and how long garbage collection stops
it, as metrics; and the collector tuned for a server (`gc_tuning`).

A real-time call's p99 is set by whatever stops the one event loop while calls wait on it: a long synchronous step, or
a collection of the oldest generation, which walks every object the process holds (the loaded price tables, the
compiled app, the imported modules). `tune_gc` freezes what start-up allocated (`gc.freeze()`: moved out of the
generations the collector walks, never freed) and makes young collections rarer, so a call's garbage is collected in
fewer, similar passes. `LoopLagProbe` sleeps a fixed interval and records by how much each wake-up was late: a stall
of the loop shows up in `hybrid_router_event_loop_lag_seconds` whatever caused it; `hybrid_router_gc_pause_seconds`
tells a collector pause from the rest.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from router.telemetry import metrics

GC_THRESHOLDS = (20_000, 50, 100)
"""`gc.set_threshold` under `gc_tuning`: a young collection every 20,000 net container allocations (the default 700 runs
one every few calls), the middle generation every 50 of those, the oldest every 100 of those (and, as always, only when
it has grown by a quarter since its last pass)."""
LAG_INTERVAL_S = 0.1
"""How often the loop-lag probe wakes: ten wake-ups a second, a few microseconds each."""

_timing: dict[int, float] = {}


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    """`gc.callbacks` hook: the pause of each collection, by generation."""
    if phase == "start":
        _timing[0] = time.perf_counter()
    elif (began := _timing.pop(0, None)) is not None:
        metrics.gc_pause.labels(str(info.get("generation", ""))).observe(time.perf_counter() - began)


def watch_gc() -> None:
    """Record every collection's pause in `hybrid_router_gc_pause_seconds` (idempotent)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)


def unwatch_gc() -> None:
    """Stop recording collection pauses."""
    if _on_gc in gc.callbacks:
        gc.callbacks.remove(_on_gc)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> None:
    """After start-up: collect once, freeze what survives (start-up state is never garbage), and space the
    collections out. Call it once the app is built and its tables loaded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


class LoopLagProbe:
    """Measures how late the event loop runs: sleeps `interval_s`, observes how much later than asked it woke."""

    def __init__(self, interval_s: float = LAG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples = 0
        self.worst_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: one lag sample per interval into `hybrid_router_event_loop_lag_seconds`."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            asked = loop.time()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, loop.time() - asked - self.interval_s)
            metrics.event_loop_lag.observe(lag)
            self.samples += 1
            self.worst_s = max(self.worst_s, lag)
