"""Pacing for the background loops: call a step every `tick` seconds until stopped; a failed step is logged
(throttled: one line per loop and kind of failure per interval; a traceback only when it may be a bug)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from router.telemetry.logs import Throttle, is_outage, kind_of

log = logging.getLogger(__name__)
_throttle = Throttle(log)


async def pace(stop: asyncio.Event, tick: float, step: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `step` now and then every `tick` seconds until `stop` is set; errors never end the loop."""
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:
            _throttle.log(logging.ERROR, kind_of(name, exc), "%s pass failed: %s: %s", name, type(exc).__name__, exc,
                          exc_info=None if is_outage(exc) else exc)  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
