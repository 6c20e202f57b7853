"""The deadline guard: any call still without a result at `deadline - margin` is answered in real time."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping

from router import metrics
from router.accounting import Accounting
from router.accumulator import Accumulator, LeaseLost, while_leased
from router.errors import RouterError, UpstreamError, UpstreamTimeout
from router.loops import pace
from router.providers.base import RETRY_STATUSES, Provider, backoff, retry_after_s
from router.schema import error_body
from router.settings import BatchSettings

log = logging.getLogger("router.guard")
CONCURRENCY = 64
OVERLOADED = 529  # Anthropic: overloaded, not billed


class Guard:
    """Escalates calls whose batch would miss their deadline; a late batch result for them is dropped."""

    def __init__(
        self,
        acc: Accumulator,
        providers: Mapping[str, Provider],
        settings: BatchSettings,
        accounting: Accounting,
    ) -> None:
        self.acc = acc
        self.providers = providers
        self.settings = settings
        self.accounting = accounting
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._running: dict[str, asyncio.Task[int]] = {}

    async def run_once(self, *, wait: bool = True) -> int:
        """Start an escalation for every due call; with `wait` (tests) await them and count the answered ones."""
        now = time.time()
        cutoff = now + self.settings.margin_s
        started: list[asyncio.Task[int]] = []
        for tag in await self.acc.queue_tags():
            for call_id in await self.acc.escalation_due(tag, cutoff, now):
                if call_id in self._running:  # already being answered by this process
                    continue
                task = asyncio.create_task(self.escalate(call_id), name=f"escalate-{call_id}")
                self._running[call_id] = task
                task.add_done_callback(self._forget)
                started.append(task)
        if not wait:
            # One slow upstream call must not hold back the next pass: other calls have deadlines too.
            return len(started)
        return sum(await asyncio.gather(*started))

    def _forget(self, task: asyncio.Task[int]) -> None:
        self._running.pop(task.get_name().removeprefix("escalate-"), None)

    async def escalate(self, call_id: str) -> int:
        """Answer one call in real time if no other replica is doing it; 1 when this pass answered it."""
        try:
            return await self._escalate(call_id)
        except Exception:
            log.exception("escalating %s failed; it stays due and is retried when its lease lapses", call_id)
            return 0

    async def _escalate(self, call_id: str) -> int:
        # A slot first, then the lease: a lease taken while queued for a slot could lapse before the work starts,
        # and a second replica would then answer the same call.
        async with self._slots:
            call = await self.acc.get_call(call_id)
            if call is None:
                await self.acc.forget(call_id)
                return 0
            reason = "queued" if call.state == "queued" else "submitted"
            lease = self.settings.lease_s
            body = await self.acc.escalate(call_id, lease)
            if body is None:
                return 0
            meta = call.meta
            renew = functools.partial(self.acc.renew_escalation, call_id, lease)
            try:
                status, content = await while_leased(
                    self._answer(meta.upstream, meta.endpoint, body, meta.deadline), renew, lease
                )
            except LeaseLost:
                log.warning("lost the escalation lease of %s; whoever holds it now answers the call", call_id)
                return 0
        priced = self.accounting.price(meta.model, "escalated", content if status == 200 else b"")
        stored = await self.acc.store_result(
            call_id, meta, from_batch="", status=status, body=content, lane="escalated", cost=priced.as_tuple()
        )
        if stored != 1:
            return 0
        metrics.escalations.labels(reason).inc()
        outcome = "ok" if status == 200 else "error"
        self.accounting.book(
            priced, lane="escalated", upstream=meta.upstream, model=meta.model, tenant=meta.tenant, outcome=outcome
        )
        if time.time() > meta.deadline:
            metrics.deadline_misses.inc()
        return 1

    async def _answer(self, upstream: str, endpoint: str, body: bytes, deadline: float) -> tuple[int, bytes]:
        """The real-time answer as (status, body), retrying transient failures while the deadline allows.

        Retried: 429 (after its `Retry-After`), 5xx and failed connects, none of which the upstream bills. Not
        retried: any other status (the upstream's final word) and a timeout (the upstream may have run the call).
        """
        provider = self.providers.get(upstream)
        if provider is None:
            return 502, error_body(f"The upstream '{upstream}' is no longer configured.", "upstream_error", None,
                                   "upstream_unavailable")  # fmt: skip
        attempt = 0
        while True:
            wait: float | None = None
            try:
                answer = await provider.forward(endpoint, body, stream=False)
            except UpstreamError as exc:
                status, content, wait = exc.upstream_status, exc.body, exc.retry_after
            except UpstreamTimeout as exc:
                return exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
            except RouterError as exc:
                status, content = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
            else:
                status, content = answer.status, answer.body
                wait = retry_after_s(answer.headers) if status == 429 else None
            if status not in RETRY_STATUSES and status != OVERLOADED:
                return status, content
            pause = wait if wait is not None else backoff(attempt)
            if time.time() + pause >= deadline:
                return status, content
            log.info("escalation upstream answered %d; retrying in %.1f s (deadline in %.0f s)", status, pause,
                     deadline - time.time())  # fmt: skip
            await asyncio.sleep(pause)
            attempt += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`, then let running escalations finish (bounded by the app's shutdown)."""
        await pace(stop, 0.5, lambda: self.run_once(wait=False), "guard")
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
