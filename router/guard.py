"""The deadline guard: any call still without a result at `deadline - margin` is answered in real time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from router import metrics
from router.accounting import Accounting
from router.accumulator import Accumulator
from router.errors import RouterError, UpstreamError
from router.loops import pace
from router.providers.base import Provider
from router.schema import error_body
from router.settings import BatchSettings

log = logging.getLogger("router.guard")
CONCURRENCY = 64


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
        call = await self.acc.get_call(call_id)
        if call is None:
            await self.acc.forget(call_id)
            return 0
        reason = "queued" if call.state == "queued" else "submitted"
        body = await self.acc.escalate(call_id, self.settings.lease_s)
        if body is None:
            return 0
        meta = call.meta
        lease = self.settings.lease_s
        async with self._slots, self.acc.keeping(lambda: self.acc.renew_escalation(call_id, lease), lease):
            status, content = await self._answer(meta.upstream, meta.endpoint, body)
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

    async def _answer(self, upstream: str, endpoint: str, body: bytes) -> tuple[int, bytes]:
        """The real-time answer as (status, body); upstream failures become the caller's error."""
        provider = self.providers.get(upstream)
        if provider is None:
            return 502, error_body(f"The upstream '{upstream}' is no longer configured.", "upstream_error", None,
                                   "upstream_unavailable")  # fmt: skip
        try:
            answer = await provider.forward(endpoint, body, stream=False)
        except UpstreamError as exc:
            return exc.upstream_status, exc.body
        except RouterError as exc:
            return exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
        return answer.status, answer.body

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`, then let running escalations finish (bounded by the app's shutdown)."""
        await pace(stop, 0.5, lambda: self.run_once(wait=False), "guard")
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)
