"""The deadline guard: cuts batches that would make a call late, and answers calls that run out of time.

Per queue and pass (`core/lanes.py` has the times):
- a running batch that holds a call whose reserve has come is cut: the poller cancels it and harvests what it
  finished, so only the calls it did not finish are escalated, and none of them is billed twice;
- a call still without a result at `deadline - lead` is escalated up the ladder: the flex tier (batch price) where
  the upstream and model offer it and there is time, falling back to the standard tier on a flex 429 or timeout;
  otherwise straight to the standard tier.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.core.errors import RouterError, UpstreamError, UpstreamTimeout
from router.core.keys import tag_of
from router.core.lanes import Capabilities, Origin, Planner, cut_cutoff, escalation_cutoff, escalation_rung
from router.core.schema import error_body, with_fields
from router.core.states import CallState, StoreOutcome
from router.deferred.loops import pace
from router.deferred.store.leases import LeaseLost, while_leased
from router.providers.base import RETRY_STATUSES, Provider, backoff, retry_after_s
from router.telemetry import metrics
from router.telemetry.accounting import Accounting
from router.telemetry.tracing import OFF, Tracing, cost_attributes

if TYPE_CHECKING:
    from router.core.settings import BatchSettings
    from router.deferred.answers import AnswerStore
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.leases import Leases
    from router.deferred.store.queues import Queues
    from router.deferred.store.records import CallMeta
    from router.deferred.store.results import ResultStore

log = logging.getLogger(__name__)
CONCURRENCY = 64
OVERLOADED = 529  # Anthropic: overloaded, not billed


class Guard:
    """Escalates calls whose batch would miss their deadline; a late batch result for them is dropped."""

    def __init__(
        self,
        queues: Queues,
        batches: BatchStore,
        results: ResultStore,
        providers: Mapping[str, Provider],
        settings: BatchSettings,
        accounting: Accounting,
        planner: Planner | None = None,
        tracing: Tracing = OFF,
        answers: AnswerStore | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.tracing = tracing
        self.leases = leases
        """Tells a dead escalator (a replica whose heartbeat lapsed) so its calls are taken over at once."""
        self.owner = leases.owner("guard") if leases is not None else ""
        self.queues = queues
        self.batches = batches
        self.results = results
        self.providers = providers
        self.settings = settings
        self.accounting = accounting
        self.planner = planner if planner is not None else Planner(settings)
        self.answers = answers
        """Keeps a call's 200 answer in the answer cache when its meta has an `answer_key`."""
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._running: dict[str, asyncio.Task[int]] = {}
        self._queues: dict[str, tuple[str, Capabilities]] = {}

    async def _queue(self, tag: str) -> tuple[str, Capabilities] | None:
        """A queue's upstream and capabilities (fixed for a tag, so remembered)."""
        known = self._queues.get(tag)
        if known is None:
            stats = await self.queues.stats(tag)
            if stats is None:
                return None
            caps = self.planner.catalog.of(stats.upstream, stats.endpoint, stats.model)
            known = self._queues[tag] = (stats.upstream, caps)
        return known

    async def run_once(self, *, wait: bool = True) -> int:
        """Cut late batches, then start an escalation for every due call; with `wait` (tests) await the
        escalations and count the answered ones."""
        now = time.time()
        timing = self.planner.timing
        started: list[asyncio.Task[int]] = []
        for tag in await self.queues.queue_tags():
            queue = await self._queue(tag)
            if queue is None:
                continue
            upstream, caps = queue
            for bid in await self.batches.batches_holding(tag, cut_cutoff(now, caps, timing)):
                if await self.batches.cut(tag, bid):
                    log.info("batch %s is late for a call in it: cut (cancelled and harvested)", bid)
                    metrics.batches_cut.labels(upstream).inc()
            due = [(c, "") for c in await self.results.escalation_due(tag, escalation_cutoff(now, caps, timing), now)]
            for call_id, dead in due + await self._orphaned(tag, now):
                if call_id in self._running:  # already being answered by this process
                    continue
                task = asyncio.create_task(self.escalate(call_id, dead), name=f"escalate-{call_id}")
                self._running[call_id] = task
                task.add_done_callback(self._forget)
                started.append(task)
        if not wait:
            # One slow upstream call must not hold back the next pass: other calls have deadlines too.
            return len(started)
        return sum(await asyncio.gather(*started))

    def _forget(self, task: asyncio.Task[int]) -> None:
        self._running.pop(task.get_name().removeprefix("escalate-"), None)

    async def _orphaned(self, tag: str, now: float) -> list[tuple[str, str]]:
        """(call id, escalator) of escalations whose lease still runs but whose escalator's replica is dead."""
        if self.leases is None:
            return []
        leased = [(c, o) for c, o in await self.results.leased_escalations(tag, now) if o != self.owner]
        dead = await self.leases.dead({o for _, o in leased}) if leased else set()
        return [(c, o) for c, o in leased if o in dead]

    async def escalate(self, call_id: str, dead: str = "") -> int:
        """Answer one call in real time if no other replica is doing it (or only a `dead` one); 1 when this pass
        answered it."""
        try:
            return await self._escalate(call_id, dead)
        except Exception:
            log.exception("escalating %s failed; it stays due and is retried when its lease lapses", call_id)
            return 0

    async def _escalate(self, call_id: str, dead: str = "") -> int:
        # A slot first, then the lease: a lease taken while queued for a slot could lapse before the work starts,
        # and a second replica would then answer the same call.
        async with self._slots:
            call = await self.results.get_call(call_id)
            if call is None:
                await self.results.forget(call_id)
                return 0
            reason = "queued" if call.state == CallState.QUEUED else "submitted"
            lease = self.settings.lease_s
            body = await self.results.escalate(call_id, lease, self.owner, dead=dead)
            if body is None:
                return 0
            meta = call.meta
            renew = functools.partial(self.results.renew_escalation, call_id, lease, self.owner)
            tracing = self.tracing if meta.trace else OFF
            attributes = {"router.call_id": call_id, "router.reason": reason, "router.batch_id": call.batch or None}
            # The batch that did not answer in time, when there was one: the escalation links to its trace.
            batch_trace = (
                await self.batches.batch_trace(tag_of(call_id), call.batch) if tracing.enabled and call.batch else ""
            )
            try:
                with tracing.span("router.deferred.escalate", meta.trace, attributes, [batch_trace]) as span:
                    origin, status, content = await while_leased(self._ladder(meta, body), renew, lease)
                    span.set({"router.lane": origin.lane.value, "http.response.status_code": status})
            except LeaseLost:
                log.warning("lost the escalation lease of %s; whoever holds it now answers the call", call_id)
                return 0
        priced = self.accounting.price(meta.model, origin, content if status == 200 else b"", asked=meta.asked_model)
        stored = await self.results.store_result(
            call_id,
            meta,
            from_batch="",
            status=status,
            body=content,
            origin=origin,
            cost=priced.as_tuple(),
            route_usd=priced.cost.route_usd if priced.cost else 0.0,
            prompt_cache_usd=priced.prompt_cache_usd,
        )
        if stored != StoreOutcome.STORED:
            return 0
        metrics.escalations.labels(reason, "flex" if origin == Origin.FLEX else "standard").inc()
        outcome = "ok" if status == 200 else "error"
        self.accounting.book(
            priced, origin=origin, upstream=meta.upstream, model=meta.model, tenant=meta.tenant, outcome=outcome
        )
        if time.time() > meta.deadline:
            metrics.deadline_misses.inc()
        answered = cost_attributes(origin, status, priced) | {"router.call_id": call_id, "router.tenant": meta.tenant}
        tracing.record("router.deferred.wait", meta.trace, meta.received_at, answered, [batch_trace, span.traceparent])
        if status == 200 and meta.answer_key and self.answers is not None:
            await self.answers.keep(meta.tenant, meta.answer_key, content, meta.model)
        return 1

    async def _ladder(self, meta: CallMeta, body: bytes) -> tuple[Origin, int, bytes]:
        """The escalation's answer as (origin, status, body): flex first where `lanes.escalation_rung` says so,
        then the standard tier when flex is short of capacity (429), fails (5xx) or takes too long."""
        caps = self.planner.catalog.of(meta.upstream, meta.endpoint, meta.model)
        rung, seconds = escalation_rung(meta.deadline, time.time(), caps, self.planner.timing)
        provider = self.providers.get(meta.upstream)
        if rung == "flex" and provider is not None:
            flex = provider.forward(meta.endpoint, with_fields(body, service_tier="flex"), stream=False)
            try:
                answer = await asyncio.wait_for(flex, timeout=seconds)
            except (TimeoutError, RouterError) as exc:
                # A timed-out flex call may still run upstream (and be billed): the deadline comes first.
                log.info("flex escalation of a %s call failed (%s); the standard tier answers it", meta.model, exc)
            else:
                if answer.status not in RETRY_STATUSES and answer.status != OVERLOADED:
                    return Origin.FLEX, answer.status, answer.body
                log.info("flex answered %d; the standard tier answers the call", answer.status)
        status, content = await self._answer(meta.upstream, meta.endpoint, body, meta.deadline)
        return Origin.ESCALATED, status, content

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
