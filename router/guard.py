"""The deadline guard: any call still without a result at `deadline - margin` is answered in real time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from router import metrics
from router.accounting import Accounting
from router.accumulator import Accumulator
from router.errors import RouterError, UpstreamError
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

    async def run_once(self) -> int:
        """Escalate every due call; returns how many were answered in real time (tests call this)."""
        now = time.time()
        cutoff = now + self.settings.margin_s
        due: list[str] = []
        for tag in await self.acc.queue_tags():
            due += await self.acc.escalation_due(tag, cutoff, now)
        results = await asyncio.gather(*(self.escalate(call_id) for call_id in due))
        return sum(results)

    async def escalate(self, call_id: str) -> int:
        """Answer one call in real time if no other replica is doing it; 1 when this pass answered it."""
        call = await self.acc.get_call(call_id)
        if call is None:
            return 0
        reason = "queued" if call.state == "queued" else "submitted"
        body = await self.acc.escalate(call_id, self.settings.lease_s)
        if body is None:
            return 0
        meta = call.meta
        provider = self.providers[meta.upstream]
        async with self._slots:
            try:
                answer = await provider.forward(meta.endpoint, body, stream=False)
                status, content = answer.status, answer.body
            except UpstreamError as exc:
                status, content = exc.upstream_status, exc.body
            except RouterError as exc:
                status, content = exc.status, error_body(exc.message, exc.type, exc.param, exc.code)
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

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`; errors are logged, never fatal."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("guard pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
