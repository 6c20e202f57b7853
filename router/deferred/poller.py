"""The poller: polls in-flight batches with backoff, ingests their results, and gives unanswered calls another way.

A batch the guard cut is cancelled here (under the batch's lease, so once) and polled closely until the provider
ends it; its finished lines are then ingested like any batch's (the harvest), and the rest re-queued or escalated.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.core.errors import RouterError
from router.core.lanes import Origin, Planner, fits
from router.core.states import BatchState, CallState, StoreOutcome
from router.deferred.loops import pace
from router.deferred.store.leases import LeaseLost, while_leased
from router.providers.base import BatchStatus, LineResult, Provider
from router.telemetry import metrics
from router.telemetry.accounting import Accounting, Priced
from router.telemetry.tracing import OFF, Attributes, Tracing, cost_attributes

if TYPE_CHECKING:
    from router.core.settings import BatchSettings
    from router.deferred.answers import AnswerStore
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.leases import Leases
    from router.deferred.store.queues import Queues
    from router.deferred.store.records import BatchRecord
    from router.deferred.store.results import ResultStore

log = logging.getLogger(__name__)
MAX_POLL_INTERVAL_S = 600.0
MAX_REQUEUES = 1
INGEST_CHUNK = 256  # result lines whose calls are read from Redis in one round trip
CUT_POLL_S = 0.5  # a cut batch is polled this often (at most poll_interval_s) until the provider ends it
CANCELLING = frozenset({"cancelling", "canceling"})
CENSORED = frozenset({"cancelling", "canceling", "cancelled", "canceled", "expired"})


class Poller:
    """Watches submitted batches until they end, then stores every call's result exactly once."""

    def __init__(
        self,
        queues: Queues,
        batches: BatchStore,
        results: ResultStore,
        leases: Leases,
        providers: Mapping[str, Provider],
        settings: BatchSettings,
        accounting: Accounting,
        planner: Planner | None = None,
        tracing: Tracing = OFF,
        answers: AnswerStore | None = None,
    ) -> None:
        self.tracing = tracing
        self.queues = queues
        self.batches = batches
        self.results = results
        self.leases = leases
        self.providers = providers
        self.settings = settings
        self.accounting = accounting
        self.planner = planner if planner is not None else Planner(settings)
        self.answers = answers
        """Keeps a call's 200 answer in the answer cache when its meta has an `answer_key`."""
        self.owner = leases.owner("poller")

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`."""
        await pace(stop, max(0.05, min(1.0, self.settings.poll_interval_s / 2)), self.run_once, "poller")

    def next_poll(self, polls: int) -> float:
        """Backoff with jitter: the configured interval, growing by half per poll, capped."""
        base = min(MAX_POLL_INTERVAL_S, self.settings.poll_interval_s * 1.5 ** min(polls, 20))
        return time.time() + base * (0.8 + 0.4 * random.random())

    async def run_once(self) -> int:
        """Poll every due batch once; returns how many batches were ingested (tests call this)."""
        ingested = 0
        for tag in await self.queues.queue_tags():
            stats = await self.queues.stats(tag)
            if stats is None:
                continue
            for record in await self.batches.due_batches(tag, time.time()):
                if record.state != BatchState.SUBMITTED:
                    continue
                lease = self.leases.keys.batch_lease(tag, record.id)
                if not await self.leases.lease(lease, self.owner, self.settings.lease_s):
                    continue
                renew = functools.partial(self.leases.renew, lease, self.owner, self.settings.lease_s)
                try:
                    ingested += await while_leased(
                        self.check(record, stats.upstream, stats.model), renew, self.settings.lease_s
                    )
                except LeaseLost:
                    log.warning("lost the lease of batch %s while checking it; another replica carries on", record.id)
                except Exception as exc:
                    log.warning("polling batch %s failed, will retry: %s", record.id, exc)
                    await self.batches.reschedule(tag, record.id, self.next_poll(record.polls))
                finally:
                    await self.leases.release(lease, self.owner)
        return ingested

    async def check(self, record: BatchRecord, upstream: str, model: str) -> int:
        """Poll one batch; ingest it if it ended. Each poll and the ingest are spans of the batch's trace (when it
        has one: it was submitted with tracing on)."""
        tracing = self.tracing if record.trace else OFF
        attributes: Attributes = {"router.batch_id": record.id, "router.provider_batch_id": record.provider_id,
                      "router.upstream": upstream, "router.poll": record.polls + 1}  # fmt: skip
        with tracing.span("router.batch.poll", record.trace, attributes) as span:
            polled = await self._poll(record, upstream)
            span.set({"router.batch_state": polled.state, "router.provider_status": polled.provider_status})
        if polled.state == "running":
            return 0
        with tracing.span("router.batch.ingest", record.trace, attributes) as span:
            await self.ingest(record, self.providers[upstream], polled, model, span.traceparent)
        return 1

    async def _poll(self, record: BatchRecord, upstream: str) -> BatchStatus:
        """The batch's status; a running one rescheduled (and a cut one cancelled again)."""
        provider = self.providers[upstream]
        status = await provider.poll(record.provider_id)
        if status.state == "running":
            if record.cut_at is None:
                await self.batches.reschedule(record.tag, record.id, self.next_poll(record.polls))
                return status
            if status.provider_status not in CANCELLING:
                await self.cancel(record, provider)
            soon = time.time() + min(CUT_POLL_S, self.settings.poll_interval_s)
            await self.batches.reschedule(record.tag, record.id, soon)
        return status

    async def cancel(self, record: BatchRecord, provider: Provider) -> None:
        """Cancel a cut batch at the provider (again, until it says it is cancelling)."""
        try:
            await provider.cancel(record.provider_id)
        except RouterError as exc:
            # It may have just finished (then the next poll ingests it), or the upstream is away: poll again soon.
            log.info("cancelling cut batch %s (%s) failed, will look again: %s", record.id, record.provider_id, exc)

    async def ingest(
        self, record: BatchRecord, provider: Provider, status: BatchStatus, model: str, trace: str = ""
    ) -> None:
        """Store each line's result, then re-queue or escalate the calls that got none (`trace`: the ingest
        span's, which each answered call's wait span links to)."""
        answered: set[str] = set()
        if status.state == "ended":
            chunk: list[LineResult] = []
            async for line in provider.results(status):
                if line.status != 0:
                    chunk.append(line)
                if len(chunk) >= INGEST_CHUNK:
                    answered |= await self.store(record, provider.name, model, chunk, trace)
                    chunk = []
            answered |= await self.store(record, provider.name, model, chunk, trace)
        else:
            log.warning("batch %s ended %s: %s", record.id, status.provider_status, status.message or "")
        unanswered = [c for c in await self.batches.batch_calls(record.tag, record.id) if c not in answered]
        if unanswered:
            quantile = self.planner.model.quantile(await self.batches.observations(record.tag), time.time())
            for call_id in unanswered:
                await self.retry(call_id, record.id, quantile)
        # A batch cancelled or expired says only that it took longer than its age then (censored); Anthropic ends
        # a cancelled batch as `ended` too, so a cut one counts as cancelled unless the provider says completed.
        censored = status.provider_status in CENSORED or (
            record.cut_at is not None and status.provider_status != "completed"
        )
        ended = record.cut_at if censored and record.cut_at is not None else time.time()
        turnaround = ended - record.submitted_at if record.submitted_at else None
        await self.batches.finish_batch(
            record.tag, record.id, status.provider_status, turnaround, record.n, censored=censored
        )
        metrics.batches_finished.labels(provider.name, status.provider_status).inc()
        if turnaround is not None and not censored:
            metrics.batch_turnaround.labels(provider.name).observe(turnaround)

    async def store(
        self, record: BatchRecord, upstream: str, model: str, lines: list[LineResult], trace: str = ""
    ) -> set[str]:
        """Store a chunk of lines' results (their calls read in one round trip); the ids that had a call. Traced,
        each call answered gets its wait span, linked to the batch's submit and ingest spans."""
        answered: set[str] = set()
        calls = await self.results.get_calls([line.custom_id for line in lines]) if lines else []
        for line, call in zip(lines, calls, strict=True):
            if call is None:
                continue
            asked = call.meta.asked_model
            priced = (
                self.accounting.price(model, Origin.BATCH, line.body, asked=asked)
                if line.billed
                else Priced(None, None)
            )
            stored = await self.results.store_result(
                line.custom_id,
                call.meta,
                from_batch=record.id,
                status=line.status,
                body=line.body,
                origin=Origin.BATCH,
                cost=priced.as_tuple(),
                route_usd=priced.cost.route_usd if priced.cost else 0.0,
                prompt_cache_usd=priced.prompt_cache_usd,
            )
            answered.add(line.custom_id)
            if stored == StoreOutcome.STORED:
                if record.cut_at is not None:
                    metrics.harvested.labels(upstream).inc()
                outcome = "ok" if line.status == 200 else "error"
                if line.status >= 400:
                    metrics.batch_line_errors.labels(upstream, model, str(line.status)).inc()
                self.accounting.book(
                    priced,
                    origin=Origin.BATCH,
                    upstream=upstream,
                    model=model,
                    tenant=call.meta.tenant,
                    outcome=outcome,
                )
                if time.time() > call.meta.deadline:
                    metrics.deadline_misses.inc()
                if call.meta.trace:
                    self.tracing.record(
                        "router.deferred.wait",
                        call.meta.trace,
                        call.meta.received_at,
                        cost_attributes(Origin.BATCH, line.status, priced)
                        | {"router.call_id": line.custom_id, "router.batch_id": record.id,
                           "router.provider_batch_id": record.provider_id, "router.tenant": call.meta.tenant},
                        [record.trace, trace],
                    )  # fmt: skip
                if line.status == 200 and call.meta.answer_key and self.answers is not None:
                    await self.answers.keep(call.meta.tenant, call.meta.answer_key, line.body, model)
            elif stored == StoreOutcome.LATE and line.billed:
                metrics.late_results.inc()
                # A call its caller cancelled (`CANCEL`: done, from no batch) was not answered twice; any other
                # late line was (an escalation, or another batch after a requeue, answered the call first).
                if not (call.origin == Origin.BATCH and not call.batch):
                    metrics.paid_twice.labels(upstream).inc()
        return answered

    async def retry(self, call_id: str, bid: str, quantile: float) -> None:
        """A call its batch did not answer: back to its queue if another batch fits its deadline at the queue's
        turnaround `quantile` (`lanes.fits`), else to the guard now."""
        call = await self.results.get_call(call_id)
        if call is None or call.state != CallState.SUBMITTED or call.batch != bid:
            return
        meta, now = call.meta, time.time()
        caps = self.planner.catalog.of(meta.upstream, meta.endpoint, meta.model)
        if call.attempts < MAX_REQUEUES and fits(meta.deadline, now, caps, quantile, self.planner.timing):
            await self.results.requeue(call_id, bid)
        else:
            await self.results.expedite(call_id)
