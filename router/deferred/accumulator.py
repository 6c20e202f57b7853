"""Every Redis operation of the deferred lane, behind one facade (waiters wait in `waiters.py`).

The work is done by the parts in `store/`, one per concern: `AdmissionStore` (calls in, the set of queues,
replicas), `BatchStore` (claim to ingestion, turnarounds), `ResultStore` (calls out: results, requeue,
escalation), `WebhookSchedule`, `Leases` and `TotalsStore`. `Accumulator` composes them over one `StoreContext`
and delegates each public method explicitly, so its callers see one object with the same methods as ever; the
structs and helpers callers import from here are re-exported from `router.deferred.store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router.core.keys import Keys
from router.core.states import StoreOutcome
from router.core.turnaround import Observation
from router.deferred.store.admission import AdmissionStore
from router.deferred.store.batches import CLAIM_CHUNK, LINE_OVERHEAD, BatchStore
from router.deferred.store.client import RedisClient
from router.deferred.store.context import StoreContext
from router.deferred.store.leases import LeaseLost, Leases, while_leased
from router.deferred.store.records import (
    ASYNC_HOLDER,
    Admission,
    BatchRecord,
    CallMeta,
    CallRecord,
    QueueStats,
    Result,
    TotalsKey,
    new_call_id,
)
from router.deferred.store.results import ResultStore
from router.deferred.store.totals import TotalsStore
from router.deferred.store.webhooks import WebhookSchedule

__all__ = [
    "ASYNC_HOLDER",
    "CLAIM_CHUNK",
    "LINE_OVERHEAD",
    "Accumulator",
    "Admission",
    "BatchRecord",
    "CallMeta",
    "CallRecord",
    "LeaseLost",
    "QueueStats",
    "Result",
    "TotalsKey",
    "new_call_id",
    "while_leased",
]


class Accumulator:
    """The deferred lane's state, all of it in Redis under one key prefix."""

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        *,
        result_ttl_s: float,
        idempotency_ttl_s: float,
        max_queues: int = 1000,
    ) -> None:
        self.ctx = StoreContext(
            redis, prefix, result_ttl_s=result_ttl_s, idempotency_ttl_s=idempotency_ttl_s, max_queues=max_queues
        )
        self.admission = AdmissionStore(self.ctx)
        self.batches = BatchStore(self.ctx, self.admission)
        self.totals_store = TotalsStore(self.ctx)
        self.results = ResultStore(self.ctx, self.totals_store)
        self.webhooks = WebhookSchedule(self.ctx)
        self.leases = Leases(self.ctx)

    @property
    def redis(self) -> RedisClient:
        return self.ctx.redis

    @property
    def keys(self) -> Keys:
        return self.ctx.keys

    @property
    def result_ttl(self) -> int:
        return self.ctx.result_ttl

    @property
    def idempotency_ttl(self) -> int:
        return self.ctx.idempotency_ttl

    @property
    def max_queues(self) -> int:
        """How many queues the set the loops walk may hold (`limits.max_queues`)."""
        return self.ctx.max_queues

    @max_queues.setter
    def max_queues(self, value: int) -> None:
        self.ctx.max_queues = value

    # --- admission (`AdmissionStore`) ----------------------------------------------------------------

    async def admit(
        self,
        meta: CallMeta,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        digest: str = "",
        holder: str = "",
        attach_to: str | None = None,
        call_id: str | None = None,
        attach_only: bool = False,
    ) -> tuple[str, Admission]:
        """Queue a call, or attach to the live call this request repeats; (call id, outcome)."""
        return await self.admission.admit(
            meta,
            body,
            idempotency_key,
            digest=digest,
            holder=holder,
            attach_to=attach_to,
            call_id=call_id,
            attach_only=attach_only,
        )

    async def reattachable(
        self, tag: str, digest: str, *, retry: bool, replica: str = "", settle_s: float = 0.0, limit: int = 10
    ) -> str | None:
        """The live, undelivered held call with this digest whose caller is gone, or None (after up to `settle_s`
        for another replica that holds one to be seen dead)."""
        return await self.admission.reattachable(
            tag, digest, retry=retry, replica=replica, settle_s=settle_s, limit=limit
        )

    async def unhold(self, call_id: str, holder: str, *, delivered: bool) -> None:
        """A connection stops holding a call (see `scripts.RELEASE`)."""
        await self.admission.unhold(call_id, holder, delivered=delivered)

    async def heartbeat(self, replica_id: str, ttl_s: float) -> None:
        """Say this replica is alive for `ttl_s` more seconds."""
        await self.admission.heartbeat(replica_id, ttl_s)

    async def retire(self, replica_id: str) -> None:
        """This replica is stopping: the calls it held are orphaned from now on."""
        await self.admission.retire(replica_id)

    async def replicas_alive(self, replica_ids: set[str]) -> set[str]:
        """The replicas among `replica_ids` whose heartbeat has not lapsed."""
        return await self.admission.replicas_alive(replica_ids)

    async def queue_tags(self) -> list[str]:
        """The queues that have work (and idle ones not pruned yet)."""
        return await self.admission.queue_tags()

    async def prune(self, tag: str) -> bool:
        """Take an idle queue out of the set the loops walk; True when it was idle (see `scripts.PRUNE`)."""
        return await self.admission.prune(tag)

    async def prune_idle(self) -> int:
        """Prune every idle queue; returns how many were pruned."""
        return await self.admission.prune_idle()

    async def stats(self, tag: str) -> QueueStats | None:
        """Count, bytes, oldest arrival and earliest deadline of what waits in one queue."""
        return await self.admission.stats(tag)

    async def counts(self) -> tuple[dict[str, int], int]:
        """Queued calls per queue (`upstream/model/endpoint`) and batches in flight, over all queues."""
        return await self.admission.counts()

    # --- leases (`Leases`) ---------------------------------------------------------------------------

    async def lease(self, key: str, owner: str, seconds: float) -> bool:
        """Take a short exclusive lease (SET NX PX); it lapses by itself if the owner dies."""
        return await self.leases.lease(key, owner, seconds)

    async def renew(self, key: str, owner: str, seconds: float) -> bool:
        """Extend a lease we still hold."""
        return await self.leases.renew(key, owner, seconds)

    async def release(self, key: str, owner: str) -> None:
        """Give a lease back early, if it is still ours."""
        await self.leases.release(key, owner)

    # --- batches (`BatchStore`) ----------------------------------------------------------------------

    async def claim(
        self, tag: str, *, max_requests: int, max_bytes: int, owner: str, lease_s: float
    ) -> tuple[str, list[str]] | None:
        """Move the earliest-deadline queued calls into a new `building` batch; return (batch id, call ids)."""
        return await self.batches.claim(
            tag, max_requests=max_requests, max_bytes=max_bytes, owner=owner, lease_s=lease_s
        )

    async def bodies(self, call_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        """(id, body, the caller's endpoint) of calls that still have a body."""
        return await self.batches.bodies(call_ids)

    async def mark_submitted(self, tag: str, bid: str, owner: str, provider_id: str, next_poll: float) -> bool:
        """Record the provider's id for a batch we still own."""
        return await self.batches.mark_submitted(tag, bid, owner, provider_id, next_poll)

    async def recorded(self, provider_ids: Sequence[str]) -> set[str]:
        """The provider batch ids, among these, that some queue has recorded (crash recovery's orphan test)."""
        return await self.batches.recorded(provider_ids)

    async def building(self) -> list[tuple[str, BatchRecord, float]]:
        """Every batch still being built, over all queues: (upstream, record, lease expiry)."""
        return await self.batches.building()

    async def lapsed_at(self, tag: str, bid: str) -> float:
        """When recovery first found this submission attempt of a batch lapsed (kept while it looks again)."""
        return await self.batches.lapsed_at(tag, bid)

    async def take_over(self, tag: str, bid: str, owner: str, lease_s: float) -> bool:
        """Adopt a `building` batch whose builder's lease lapsed."""
        return await self.batches.take_over(tag, bid, owner, lease_s)

    async def renew_batch(self, tag: str, bid: str, owner: str, lease_s: float) -> bool:
        """Extend the lease of a `building` batch we still own."""
        return await self.batches.renew_batch(tag, bid, owner, lease_s)

    async def due_batches(self, tag: str, now: float, limit: int = 100) -> list[BatchRecord]:
        """Batches whose next action (poll, or recovery of a lapsed build) is due."""
        return await self.batches.due_batches(tag, now, limit)

    async def reschedule(self, tag: str, bid: str, at: float) -> None:
        """Set a batch's next poll time and count the poll."""
        await self.batches.reschedule(tag, bid, at)

    async def count_submit_attempt(self, tag: str, bid: str) -> int:
        """Count one more attempt to submit a batch; returns the count."""
        return await self.batches.count_submit_attempt(tag, bid)

    async def batch_calls(self, tag: str, bid: str) -> list[str]:
        """The ids claimed into a batch."""
        return await self.batches.batch_calls(tag, bid)

    async def finish_batch(
        self,
        tag: str,
        bid: str,
        provider_status: str,
        turnaround: float | None,
        lines: int = 1,
        *,
        censored: bool = False,
    ) -> None:
        """Mark a batch ingested, drop it from the poll schedule and record its turnaround."""
        await self.batches.finish_batch(tag, bid, provider_status, turnaround, lines, censored=censored)

    async def batches_holding(self, tag: str, cutoff: float, limit: int = 500) -> set[str]:
        """The batches that hold a submitted call whose deadline is before `cutoff`."""
        return await self.batches.batches_holding(tag, cutoff, limit)

    async def cut(self, tag: str, bid: str) -> bool:
        """Mark a running batch cut and make it due for the poller now (which cancels and harvests it)."""
        return await self.batches.cut(tag, bid)

    async def observations(self, tag: str) -> list[Observation]:
        """The recent batch turnarounds of a queue, newest first."""
        return await self.batches.observations(tag)

    async def outlook(self, tag: str) -> tuple[list[Observation], int, int]:
        """What admission reads of a queue, in one round trip: (observations, calls waiting, batches in flight)."""
        return await self.batches.outlook(tag)

    async def turnarounds(self) -> dict[str, list[Observation]]:
        """Every queue's turnaround observations, by queue name (`upstream/model/endpoint`)."""
        return await self.batches.turnarounds()

    # --- calls and results (`ResultStore`) -----------------------------------------------------------

    async def get_call(self, call_id: str) -> CallRecord | None:
        """A call as stored, or None (unknown, malformed or expired id)."""
        return await self.results.get_call(call_id)

    async def get_calls(self, call_ids: Sequence[str]) -> list[CallRecord | None]:
        """Several calls in one round trip (a batch's results are read hundreds at a time)."""
        return await self.results.get_calls(call_ids)

    async def results_stored(self, call_ids: Sequence[str]) -> set[str]:
        """Which of these calls have a result stored (one pipelined existence check each)."""
        return await self.results.results_stored(call_ids)

    async def get_result(self, call_id: str) -> Result | None:
        """A finished call's result, if stored and not expired."""
        return await self.results.get_result(call_id)

    async def store_result(
        self,
        call_id: str,
        meta: CallMeta,
        *,
        from_batch: str,
        status: int,
        body: bytes,
        lane: str,
        cost: tuple[float, float, float] | None,
    ) -> StoreOutcome:
        """Store a final result once, or say why not (`StoreOutcome`); wakes waiters when stored."""
        return await self.results.store_result(
            call_id, meta, from_batch=from_batch, status=status, body=body, lane=lane, cost=cost
        )

    async def requeue(self, call_id: str, bid: str) -> bool:
        """Put a call its batch did not answer back on its queue."""
        return await self.results.requeue(call_id, bid)

    async def forget(self, call_id: str) -> None:
        """Drop the index entries of a call whose hash expired (nothing is left to answer it with)."""
        await self.results.forget(call_id)

    async def expedite(self, call_id: str) -> None:
        """Make a submitted call due for escalation at the guard's next pass."""
        await self.results.expedite(call_id)

    async def escalation_due(self, tag: str, cutoff: float, now: float, limit: int = 500) -> list[str]:
        """Calls whose deadline is before `cutoff` (queued or submitted), and escalations whose lease lapsed."""
        return await self.results.escalation_due(tag, cutoff, now, limit)

    async def escalate(self, call_id: str, lease_s: float) -> bytes | None:
        """Take a call out of the batch lane for real-time handling; its body, or None if someone else has it."""
        return await self.results.escalate(call_id, lease_s)

    async def renew_escalation(self, call_id: str, lease_s: float) -> bool:
        """Extend the lease of a call being answered in real time."""
        return await self.results.renew_escalation(call_id, lease_s)

    # --- webhooks (`WebhookSchedule`) ----------------------------------------------------------------

    async def webhooks_due(self, tag: str, now: float, limit: int = 100) -> list[str]:
        """Calls of one queue whose webhook delivery is due."""
        return await self.webhooks.webhooks_due(tag, now, limit)

    async def webhook_due_at(self, call_id: str) -> float | None:
        """When a call's webhook is next due, or None when it is not scheduled."""
        return await self.webhooks.webhook_due_at(call_id)

    async def count_webhook_attempt(self, call_id: str) -> int:
        """Count one more delivery attempt of a call's webhook; returns the count."""
        return await self.webhooks.count_webhook_attempt(call_id)

    async def reschedule_webhook(self, call_id: str, at: float) -> None:
        """Make a call's webhook due again at `at` (XX: an entry already removed stays removed)."""
        await self.webhooks.reschedule_webhook(call_id, at)

    async def end_webhook(self, call_id: str) -> None:
        """Take a call's webhook off the schedule (delivered, given up, or its call expired)."""
        await self.webhooks.end_webhook(call_id)

    # --- totals (`TotalsStore`) ----------------------------------------------------------------------

    async def add_totals(self, pending: Mapping[TotalsKey, Mapping[str, float]]) -> None:
        """Add real-time calls, summed in memory, to their tenants' daily totals (one pipeline for them all)."""
        await self.totals_store.add_totals(pending)

    async def totals(self, tenant: str, day: str) -> dict[str, float]:
        """A tenant's cost totals for one UTC day (`YYYY-MM-DD`): real-time calls plus every queue's it used."""
        return await self.totals_store.totals(tenant, day)
