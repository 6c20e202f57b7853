"""Held connections: a deferred caller's connection stays open until its answer, however long the batch takes.

A held caller receives a byte at least every `batch.keepalive_s`, so client read timeouts and idle proxies do
not cut the wait:
- a stream (`stream: true`) gets its headers at once, SSE comments while it waits, then the answer as chunks;
- any other call waits up to one keep-alive interval for an answer with its own status and cost headers; after
  that the router commits `200` with `Content-Type: application/json` and sends a space (JSON whitespace, which
  every JSON parser skips) every interval, then the answer's JSON.

Once `200` is committed, an answer that is an error cannot change the status. The router then cuts the
response short instead (no client can take a truncated body for a completion: openai-python raises a
connection error and retries it; openai-node v4-v6 raises fetch's `TypeError: terminated`, which the
application retries), and the retry re-attaches to the same call (see `DeferredLane.enqueue`) and receives the
error at once, with its real status. The same cut ends held connections at shutdown, so their retries re-attach on
another replica or after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from router.core.keys import HEARTBEAT_S, REPLICA_TTL_S
from router.core.schema import error_body
from router.deferred.replay import cost_comment, error_event, result_note, sse_chunks, with_note
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.settings import Settings
    from router.deferred.store.intake import Intake
    from router.deferred.store.records import CallRecord, Result
    from router.deferred.waiters import ResultWaiter, Waiters

log = logging.getLogger(__name__)
FD_RESERVE = 128
"""File descriptors kept for everything but held connections: listening sockets, upstream pools, logs."""


class HeldCut(Exception):
    """A held answer cut short on purpose; the client's retry re-attaches to the call."""


class _DropHeldCuts(logging.Filter):
    """uvicorn logs a traceback for a response that ends in an exception; a deliberate cut is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _holds_a_cut(record.exc_info[1] if record.exc_info else None)


def _holds_a_cut(exc: BaseException | None, depth: int = 0) -> bool:
    """Whether `exc` is a `HeldCut` or was caused by one, also inside an exception group (a streamed response
    raises from a task group, so the cut reaches the server wrapped in one)."""
    while exc is not None and depth < 32:
        if isinstance(exc, HeldCut):
            return True
        if isinstance(exc, BaseExceptionGroup) and any(_holds_a_cut(e, depth + 1) for e in exc.exceptions):
            return True
        exc, depth = exc.__cause__ or exc.__context__, depth + 1
    return False


def quiet_held_cuts() -> None:
    """Keep deliberate cuts out of the server's error log (idempotent)."""
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropHeldCuts) for f in server_log.filters):
        server_log.addFilter(_DropHeldCuts())


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return int(soft)


def max_held(settings: Settings, fd_limit: int) -> int:
    """The held-connection cap: `limits.max_held`, else half the descriptors Redis and the reserve leave."""
    if settings.limits.max_held is not None:
        return settings.limits.max_held
    return max(8, (fd_limit - settings.redis_max_connections - FD_RESERVE) // 2)


class Holds:
    """The connections this process holds open for deferred answers, and its drain at shutdown."""

    def __init__(self, intake: Intake, waiter: ResultWaiter, waiters: Waiters, settings: Settings, cap: int) -> None:
        self.intake = intake
        self.waiter = waiter
        self.waiters = waiters
        self.settings = settings
        self.cap = cap
        self.replica_id = intake.ctx.replica_id
        self.count = 0
        self.draining = asyncio.Event()
        self.drain_started: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the serving loop, so a signal handler can start the drain on it."""
        self._loop = loop
        self.draining = asyncio.Event()
        self.drain_started = None

    def begin_drain(self) -> None:
        """Start the drain (thread- and signal-safe): held answers are cut, new held calls refused."""
        if self.drain_started is None:
            self.drain_started = time.monotonic()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self.draining.set()
        self.waiters.wake_all()  # held waiters see the drain now, not at their next keep-alive

    def new_holder(self) -> str:
        """The name a connection holds a call under: this replica and the connection."""
        return f"{self.replica_id}/{secrets.token_hex(4)}"

    def full(self) -> bool:
        """Whether another held connection would pass the cap."""
        return self.count >= self.cap

    def enter(self) -> None:
        """Take a held slot (synchronously, so a check of `full` and this step are one)."""
        self.count += 1
        metrics.held_connections.inc()

    def give_back(self) -> None:
        """A slot taken by `enter` for a call that was never held (refused, or admission failed)."""
        self.count -= 1
        metrics.held_connections.dec()

    def leave(self, call_id: str, holder: str, *, delivered: bool) -> None:
        """A held connection ends: count it and let go of its call (in the background, so a cancelled
        response still releases, and a Redis blip only delays it)."""
        self.give_back()
        self._spawn(self._release(call_id, holder, delivered))

    async def _release(self, call_id: str, holder: str, delivered: bool) -> None:
        for attempt in range(5):
            try:
                await self.intake.unhold(call_id, holder, delivered=delivered)
                return
            except Exception as exc:  # the holder field is advisory: a failed release only delays re-attaching
                log.debug("releasing %s failed (attempt %d): %s", call_id, attempt + 1, exc)
                await asyncio.sleep(0.5 * 2**attempt)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def heartbeat(self, stop: asyncio.Event) -> None:
        """Keep this replica's liveness key fresh until `stop`, then remove it (its calls are orphaned now)."""
        while not stop.is_set():
            try:
                await self.intake.heartbeat(self.replica_id, REPLICA_TTL_S)
            except Exception as exc:
                log.debug("heartbeat failed: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=HEARTBEAT_S)
            except TimeoutError:
                continue
        try:
            await self.intake.retire(self.replica_id)
        except Exception as exc:
            log.debug("could not retire replica %s: %s", self.replica_id, exc)

    async def settle(self, within_s: float) -> None:
        """Let pending releases finish (bounded)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=within_s)

    async def first_wait(self, call_id: str, seconds: float) -> Result | None:
        """The answer if it comes within `seconds` (before any status is committed)."""
        return await self.waiter.wait(call_id, seconds, stop=self.draining)

    async def json_body(self, call: CallRecord, holder: str, hold: float) -> AsyncIterator[bytes]:
        """A committed `200`: a space every keep-alive interval, then the answer's JSON, or a cut."""
        until = time.monotonic() + hold
        keepalive = self.settings.batch.keepalive_s
        delivered = False
        try:
            with self.waiter.watching(call.id) as watch:  # one watch for the whole hold: Redis is read when woken
                while True:
                    left = until - time.monotonic()
                    if left <= 0:
                        self._cut(call.id, "hold_limit")
                    result = await watch.result(min(left, keepalive), stop=self.draining)
                    if result is not None:
                        if result.status >= 400:
                            self._cut(call.id, "error")
                        yield with_note(result.body, result_note(call.id, call.meta.model, result))
                        delivered = True
                        return
                    if self.draining.is_set():
                        self._cut(call.id, "shutdown")
                    yield b" "
        finally:
            self.leave(call.id, holder, delivered=delivered)

    async def sse_body(self, call: CallRecord, holder: str, hold: float) -> AsyncIterator[bytes]:
        """A held stream: SSE comments while it waits, then the answer as chunks, or an `error` event."""
        until = time.monotonic() + hold
        keepalive = self.settings.batch.keepalive_s
        delivered = False
        result = None
        try:
            with self.waiter.watching(call.id) as watch:
                while result is None and (left := until - time.monotonic()) > 0 and not self.draining.is_set():
                    result = await watch.result(min(left, keepalive), stop=self.draining)
                    if result is None and not self.draining.is_set():
                        yield b": waiting for the batch\n\n"
            if result is None:
                yield self._pending_event(call)
            elif result.status != 200:
                # The SDK raises on an error event, as for a live stream.
                yield error_event(call.meta.endpoint, result.status, result.body)
                delivered = True
            else:
                cost = cost_comment(result.cost_usd, result.savings_usd)
                for chunk in sse_chunks(
                    call.meta.endpoint, result.body, include_usage=call.meta.include_usage, cost=cost
                ):
                    yield chunk
                delivered = True
        finally:
            self.leave(call.id, holder, delivered=delivered)

    def _pending_event(self, call: CallRecord) -> bytes:
        call_id = call.id
        if self.draining.is_set():
            metrics.held_cut.labels("shutdown").inc()
            message = (f"The router is restarting; the deferred call {call_id} is kept. Send the same request "
                       f"again to re-attach to it, or fetch it with GET /v1/deferred/{call_id}.")  # fmt: skip
            code, status = "router_restarting", 503
        else:
            metrics.held_cut.labels("hold_limit").inc()
            message = f"The deferred call {call_id} has no result yet; fetch it with GET /v1/deferred/{call_id}."
            code, status = "deferred_pending", 504
        return error_event(call.meta.endpoint, status, error_body(message, "server_error", None, code, call_id=call_id))

    def _cut(self, call_id: str, reason: str) -> None:
        metrics.held_cut.labels(reason).inc()
        log.info("held answer of %s cut: %s (the call is kept; a retry re-attaches to it)", call_id, reason)
        raise HeldCut(f"held answer of {call_id} cut: {reason}")
