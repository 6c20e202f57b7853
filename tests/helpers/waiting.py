"""Waiting on a condition instead of sleeping: poll until it holds, fail naming what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | Literal[False] | None],
    seconds: float = 10.0,
    what: str = "the condition",
    every: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy and return that; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(every)
    return value


async def wait_until_async(
    condition: Callable[[], Awaitable[T | Literal[False] | None]],
    seconds: float = 10.0,
    what: str = "the condition",
    every: float = 0.05,
) -> T:
    """`wait_until` for a coroutine condition, yielding to the event loop between polls."""
    deadline = time.monotonic() + seconds
    while not (value := await condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(every)
    return value
