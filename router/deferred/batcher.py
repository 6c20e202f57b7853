"""The batcher: packs each queue's calls into provider batch jobs when a limit, max_wait or a deadline says so.

When a queue flushes is `lanes.flush_due`: as late as its earliest call allows (fewest batches), but never so late
that this call has less than its turnaround quantile left before its reserve.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from router.core.errors import RouterError
from router.core.lanes import Planner, flush_due, flush_wait
from router.core.states import BatchState
from router.deferred.loops import pace
from router.deferred.store.leases import LeaseLost, while_leased
from router.providers.base import BatchLine, Lapsed, Ledger, Provider, Rival
from router.telemetry import metrics
from router.telemetry.tracing import NO_SPAN, OFF, Attributes, Span, Tracing

if TYPE_CHECKING:
    from router.core.settings import BatchSettings
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.leases import Leases
    from router.deferred.store.queues import Queues
    from router.deferred.store.records import BatchRecord, QueueStats
    from router.deferred.store.results import ResultStore

log = logging.getLogger(__name__)
MAX_SUBMIT_ATTEMPTS = 3
MAX_LINKS = 128
"""Links from a batch's submit span to its calls (OpenTelemetry's default link limit); each call's own wait span
links back to the batch whatever its size."""


class Batcher:
    """Flushes queues into batches, and recovers batches whose builder died before recording them."""

    def __init__(
        self,
        queues: Queues,
        batches: BatchStore,
        results: ResultStore,
        leases: Leases,
        providers: Mapping[str, Provider],
        settings: BatchSettings,
        planner: Planner | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        self.tracing = tracing
        self.queues = queues
        self.batches = batches
        self.results = results
        self.leases = leases
        self.providers = providers
        self.settings = settings
        self.planner = planner if planner is not None else Planner(settings)
        self.owner = leases.owner("batcher")

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`."""
        await pace(stop, self.tick(), self.run_once, "batcher")

    def tick(self) -> float:
        """Seconds between passes: short enough to honour max_wait closely."""
        return flush_wait(self.settings)

    async def due(self, stats: QueueStats, now: float) -> bool:
        """Whether a queue should be flushed now."""
        s = self.settings
        if stats.count == 0:
            return False
        if stats.count >= s.max_requests or stats.bytes >= s.max_bytes:
            return True
        if stats.oldest_arrival is not None and now - stats.oldest_arrival >= s.max_wait_s:
            return True
        if stats.earliest_deadline is None:
            return False
        caps = self.planner.catalog.of(stats.upstream, stats.endpoint, stats.model)
        observations = await self.batches.observations(stats.tag)
        quantile = self.planner.model.quantile(observations, now, lines=stats.count)
        return flush_due(stats.earliest_deadline, now, caps, quantile, self.planner.timing)

    async def run_once(self, *, force: bool = False) -> int:
        """One pass over every queue; returns the number of batches submitted (tests call this)."""
        submitted = 0
        for tag in await self.queues.queue_tags():
            stats = await self.queues.stats(tag)
            if stats is not None and ((force and stats.count) or await self.due(stats, time.time())):
                submitted += await self.flush(stats)
            for record in await self.batches.due_batches(tag, time.time()):
                if record.state == BatchState.BUILDING:
                    submitted += await self.recover(record, stats)
            submitted += await self.adopt_orphans(tag, stats)
        return submitted

    async def adopt_orphans(self, tag: str, stats: QueueStats | None) -> int:
        """Recover the `building` batches of a queue whose builder's replica is dead, before their lease ends."""
        builds = [r for r in await self.batches.leased_builds(tag, time.time()) if r.owner != self.owner]
        dead = await self.leases.dead({r.owner for r in builds}) if builds else set()
        submitted = 0
        for record in builds:
            if record.owner in dead:
                submitted += await self.recover(record, stats, dead=record.owner)
        return submitted

    async def flush(self, stats: QueueStats) -> int:
        """Claim and submit batches from one queue until what is left is not worth a batch yet."""
        lease = self.leases.keys.flush_lease(stats.tag)
        if not await self.leases.lease(lease, self.owner, self.settings.lease_s):
            return 0
        submitted = 0
        try:
            while True:
                claimed = await self.batches.claim(
                    stats.tag,
                    max_requests=self.settings.max_requests,
                    max_bytes=self.settings.max_bytes,
                    owner=self.owner,
                    lease_s=self.settings.lease_s,
                )
                if claimed is None:
                    break
                bid, ids = claimed
                if await self.submit(stats, bid, ids):
                    submitted += 1
                left = await self.queues.stats(stats.tag)
                if left is None or (left.count < self.settings.max_requests and left.bytes < self.settings.max_bytes):
                    break
        finally:
            await self.leases.release(lease, self.owner)
        return submitted

    async def submit(self, stats: QueueStats, bid: str, ids: list[str]) -> bool:
        """Upload one claimed batch and record the provider's id; on error leave it for recovery. Traced, the
        submit span starts the batch's trace and links to its calls' admission spans (the first `MAX_LINKS`)."""
        if not self.tracing.enabled:
            return await self._submit(stats, bid, ids, NO_SPAN)
        links = await self.batches.call_traces(ids[:MAX_LINKS])
        attributes: Attributes = {"router.batch_id": bid, "router.queue": stats.tag, "router.upstream": stats.upstream,
                      "gen_ai.request.model": stats.model, "router.lines": len(ids)}  # fmt: skip
        with self.tracing.span("router.batch.submit", None, attributes, links) as span:
            await self.batches.set_trace(stats.tag, bid, span.traceparent)
            submitted = await self._submit(stats, bid, ids, span)
            span.set({"router.submitted": submitted})
            return submitted

    async def _submit(self, stats: QueueStats, bid: str, ids: list[str], span: Span) -> bool:
        provider = self.providers[stats.upstream]
        lines = [
            BatchLine(custom_id=cid, body=body, endpoint=endpoint)
            for cid, body, endpoint in await self.batches.bodies(ids)
        ]
        if not lines:
            await self.batches.finish_batch(stats.tag, bid, "empty", None)
            return False
        lease = self.settings.lease_s
        renew = functools.partial(self.batches.renew_batch, stats.tag, bid, self.owner, lease)
        try:
            submitting = provider.submit_batch(bid, stats.endpoint, stats.model, lines)
            provider_id = await while_leased(submitting, renew, lease)
        except LeaseLost:
            # Another replica adopts the batch (and looks it up at the provider before submitting it again).
            log.warning("lost the lease of batch %s while submitting it; it is left to whoever adopts it", bid)
            return False
        except RouterError as exc:
            # The upload or create may or may not have happened: recovery looks the batch up before resubmitting.
            log.warning("submitting batch %s to %s failed, will recover: %s", bid, stats.upstream, exc)
            return False
        span.set({"router.provider_batch_id": provider_id})
        next_poll = time.time() + self.settings.poll_interval_s
        if not await self.batches.mark_submitted(stats.tag, bid, self.owner, provider_id, next_poll):
            # Another replica adopted the batch (this one stalled past its lease) and owns its calls now:
            # cancel ours so the provider does not run and bill the same calls twice.
            log.warning("batch %s was taken over while submitting; cancelling the orphan %s", bid, provider_id)
            try:
                await provider.cancel(provider_id)
            except RouterError as exc:
                log.error("could not cancel orphan batch %s: %s", provider_id, exc)
            return False
        metrics.batches_submitted.labels(stats.upstream).inc()
        metrics.batch_lines.labels(stats.upstream).inc(len(lines))
        return True

    async def recover(self, record: BatchRecord, stats: QueueStats | None, *, dead: str = "") -> int:
        """A `building` batch whose lease lapsed (or whose builder is `dead`): find it at the provider, or look again
        later, or submit it again."""
        s = self.settings
        if stats is None or not await self.batches.take_over(record.tag, record.id, self.owner, s.lease_s, dead=dead):
            return 0
        provider = self.providers[stats.upstream]
        ids = await self.batches.batch_calls(record.tag, record.id)
        lapsed = Lapsed(
            batch_id=record.id,
            claimed_at=record.created_at,
            lapsed_at=await self.batches.lapsed_at(record.tag, record.id),
            custom_ids=frozenset(ids),
            lines=[
                BatchLine(custom_id=cid, body=body, endpoint=ep) for cid, body, ep in await self.batches.bodies(ids)
            ],
            ledger=functools.partial(self._ledger, provider.kind, record.id),
        )
        renew = functools.partial(self.batches.renew_batch, record.tag, record.id, self.owner, s.lease_s)
        try:
            found = await while_leased(provider.find_batch(lapsed), renew, s.lease_s)
        except LeaseLost:
            return 0
        except RouterError as exc:
            log.warning("looking up batch %s failed, will retry: %s", record.id, exc)
            return 0
        if found.wait:  # the provider cannot tell yet which batch is this one's: keep it, look again later
            await self.batches.renew_batch(record.tag, record.id, self.owner, max(s.lease_s, s.poll_interval_s))
            return 0
        if found.provider_id is not None:
            await self.batches.mark_submitted(record.tag, record.id, self.owner, found.provider_id, time.time())
            return 0
        attempts = await self.batches.count_submit_attempt(record.tag, record.id)
        if attempts > MAX_SUBMIT_ATTEMPTS:
            log.error("batch %s could not be submitted %d times; its calls go back to their queue", record.id, attempts)
            for call_id in ids:
                await self.results.requeue(call_id, record.id)
            await self.batches.finish_batch(record.tag, record.id, "unsubmitted", None)
            return 0
        return int(await self.submit(stats, record.id, ids))

    async def _ledger(self, kind: str, bid: str, provider_ids: Sequence[str]) -> Ledger:
        """For recovery: batches being built (read first), then which provider ids are recorded (so none slips by)."""
        now = time.time()
        rivals = [
            Rival(claimed_at=other.created_at, requests=other.n, live=until > now)
            for upstream, other, until in await self.batches.building()
            if other.id != bid and (p := self.providers.get(upstream)) is not None and p.kind == kind
        ]
        return Ledger(recorded=frozenset(await self.batches.recorded(provider_ids)), rivals=rivals)
