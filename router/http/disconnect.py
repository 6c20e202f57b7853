"""A caller that goes away cancels its work: the racing of an awaited call against the client's disconnect.

Shared by the real-time relay (`relay.py`: the upstream call), deferred delivery (`delivery.py`: waiting for a
result) and Anthropic's token counting (`messages_api.py`). Each takes the ASGI `receive` of a request whose body
has been read, not the request itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from litestar.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The caller went away before its answer was ready (answered 499 by `error_handlers`)."""


async def until_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (so the upstream call is dropped too)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client left, or this handler itself was cancelled (shutdown)
            task.cancel()
            # Let the work see its cancellation through (an upstream call is dropped, its connection freed).
            await asyncio.wait((task,))
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()
