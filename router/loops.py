"""Pacing for the background loops: call a step every `tick` seconds until stopped; a failed step is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("router.loops")


async def pace(stop: asyncio.Event, tick: float, step: Callable[[], Awaitable[object]], name: str) -> None:
    """Run `step` now and then every `tick` seconds until `stop` is set; errors never end the loop."""
    while not stop.is_set():
        try:
            await step()
        except Exception:
            log.exception("%s pass failed", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick)
