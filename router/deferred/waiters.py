"""Waiting for deferred results: one pub/sub subscription per process wakes the local waiters of each result, and
each waiter reads its result when woken (`ResultWaiter`).

A waiter reads its result once when it starts watching, and again only when woken, so a held call costs Redis
nothing while it waits and one read when its result is published. A message published while the subscription was
down is not lost: every time the subscription starts (the first time too), the results of all local waiters are
re-checked at once, in pipelined existence checks, and those whose result is there are woken. A subscription that
stops answering its pings counts as down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from router.deferred.store.records import text
from router.telemetry.logs import Throttle, kind_of

if TYPE_CHECKING:
    from router.deferred.store.client import RedisClient
    from router.deferred.store.records import Result
    from router.deferred.store.results import ResultStore

log = logging.getLogger(__name__)
_throttle = Throttle(log)  # a Redis outage would otherwise log a line per reconnect attempt
PING_S = 5.0
"""The subscription is pinged when it has heard nothing for this long..."""
SILENCE_S = 15.0
"""...and restarted (with a re-check of every waiter) when it has heard nothing, not even a pong, for this long."""
RECHECK_CHUNK = 1000


class Watch:
    """One waiter's interest in one call's result; woken by the result's message or by a re-check."""

    __slots__ = ("_future", "_woken", "call_id")

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self._woken = False
        self._future: asyncio.Future[None] | None = None

    def wake(self) -> None:
        self._woken = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def woken(self, within: float) -> bool:
        """Wait up to `within` seconds for a wake-up; True when there was one since the last call."""
        if not self._woken and within > 0:
            self._future = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within):
                    await self._future
            except TimeoutError:
                pass
            finally:
                self._future = None
        woken, self._woken = self._woken, False
        return woken


class Waiters:
    """This process's waiters by call id, and the subscription that wakes them."""

    def __init__(
        self, redis: RedisClient, channel: str, stored: Callable[[Sequence[str]], Awaitable[set[str]]]
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.stored = stored
        """Which of these call ids have a result stored (`ResultStore.results_stored`)."""
        self.starts = 0
        """How many times the subscription started (each start re-checks every waiter once)."""
        self._waiting: dict[str, set[Watch]] = {}

    def __len__(self) -> int:
        return sum(len(watches) for watches in self._waiting.values())

    @contextlib.contextmanager
    def watching(self, call_id: str) -> Iterator[Watch]:
        """Register interest in one call's result for the duration of the block."""
        watch = Watch(call_id)
        self._waiting.setdefault(call_id, set()).add(watch)
        try:
            yield watch
        finally:
            watches = self._waiting.get(call_id)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._waiting[call_id]

    def wake(self, call_id: str) -> None:
        """Wake the waiters of one call (its result was published)."""
        for watch in self._waiting.get(call_id, ()):
            watch.wake()

    def wake_all(self) -> None:
        """Wake every waiter (they look at their result, and at whether they should stop)."""
        for watches in self._waiting.values():
            for watch in watches:
                watch.wake()

    async def recheck(self) -> int:
        """Wake every waiter whose result is stored (messages may have been missed); returns how many calls."""
        ids = list(self._waiting)
        found = 0
        for start in range(0, len(ids), RECHECK_CHUNK):
            for call_id in await self.stored(ids[start : start + RECHECK_CHUNK]):
                self.wake(call_id)
                found += 1
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until `stop`; after each (re)start, re-check every waiter once."""
        while not stop.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                if isinstance(self.redis, RedisCluster):
                    # A cluster's pubsub subscribes on one node, the owner of the channel name's slot, picked from the
                    # slot map the client loads on its first command. One node is enough: a cluster propagates every
                    # PUBLISH to all its nodes. If that node fails, this loop retries until the map (refreshed by
                    # the client's other commands) names a live one, and then re-checks every waiter.
                    await self.redis.initialize()
                await pubsub.subscribe(self.channel)
                self.starts += 1
                await self.recheck()  # subscribed first: a result stored from now on is heard, one before is found
                await self._listen(pubsub, stop)
            except Exception as exc:  # redis-py raises its own ConnectionError, not the builtin
                _throttle.warning(kind_of("waiters", exc), "result subscription lost, reconnecting: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _listen(self, pubsub: PubSub, stop: asyncio.Event) -> None:
        heard = pinged = time.monotonic()
        while not stop.is_set():
            message = await pubsub.get_message(timeout=0.5)
            now = time.monotonic()
            if message is not None:
                heard = now
                if message["type"] == "message":
                    data = message["data"]
                    self.wake(text(data))
            if now - heard >= SILENCE_S:
                raise ConnectionError(f"the subscription heard nothing for {SILENCE_S:.0f} s")
            if now - heard >= PING_S and now - pinged >= PING_S:
                await pubsub.ping()
                pinged = now


class ResultWatch:
    """A call's result as one waiter sees it: read when the watch starts, then only when woken (by `Waiters`), so
    waiting costs Redis nothing between reads."""

    def __init__(self, results: ResultStore, watch: Watch) -> None:
        self.results = results
        self.watch = watch
        self._read = True

    async def result(self, seconds: float, stop: asyncio.Event | None = None) -> Result | None:
        """The result, waiting up to `seconds` for it, or None (also at once when `stop` is set).

        While Redis is away the read is retried with backoff: a stored call stays stored, so its waiter waits
        rather than answering an error.
        """
        until = time.monotonic() + seconds
        pause = 0.1
        while stop is None or not stop.is_set():
            left = until - time.monotonic()
            if self._read:
                try:
                    result = await self.results.get_result(self.watch.call_id)
                except (RedisError, OSError) as exc:
                    log.debug("reading the result of %s failed, will retry: %s", self.watch.call_id, exc)
                    pause = min(pause * 2, 5.0)
                    if left <= 0:
                        return None
                    await asyncio.sleep(min(pause, left))
                    continue
                if result is not None:
                    return result
                self._read = False
            if left <= 0:
                return None
            self._read = await self.watch.woken(left)
        return None


class ResultWaiter:
    """Waiting for deferred calls' results: this process's subscription (`Waiters`) and the reads it wakes."""

    def __init__(self, waiters: Waiters, results: ResultStore) -> None:
        self.waiters = waiters
        self.results = results

    @contextlib.contextmanager
    def watching(self, call_id: str) -> Iterator[ResultWatch]:
        """Watch one call's result for the duration of the block (`ResultWatch.result` waits for it)."""
        with self.waiters.watching(call_id) as watch:
            yield ResultWatch(self.results, watch)

    async def wait(self, call_id: str, seconds: float, stop: asyncio.Event | None = None) -> Result | None:
        """The call's result, waiting up to `seconds` for it, or until `stop` is set."""
        with self.watching(call_id) as watch:
            return await watch.result(seconds, stop)
