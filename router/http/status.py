"""What the status page (`GET /ui`, `http/ui.py`) shows, read at each refresh from the same sources as `/metrics`
and `/v1/usage`: the queues and their next flush, the batches in flight with their expected turnaround, this
replica's held connections, each tenant's savings today by lever and its headroom, and the turnaround model of each
queue. One `Snapshot`, built by `Status.snapshot`; the template only formats it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from router.core.lanes import next_flush

if TYPE_CHECKING:
    from router.core.lanes import Planner
    from router.core.settings import Settings
    from router.deferred.holding import Holds
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.queues import Queues
    from router.deferred.tenants import Headroom, Tenants
    from router.http.reports import Reports


class QueueRow(msgspec.Struct, frozen=True, kw_only=True):
    """One queue: what waits, when it flushes, and its turnaround model."""

    name: str
    waiting: int
    bytes: int
    next_flush_at: float | None
    earliest_deadline: float | None
    in_flight: int
    median_s: float
    admit_s: float
    evidence: float
    observations: int
    size_slope: float


class BatchRow(msgspec.Struct, frozen=True, kw_only=True):
    """One of the router's batches not yet ingested."""

    queue: str
    id: str
    provider_id: str
    state: str
    lines: int
    created_at: float
    submitted_at: float | None
    expected_s: float
    """The queue's admission quantile of turnaround for a batch of this many lines."""
    cut: bool


class TenantRow(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's day so far and what it may still use."""

    tenant: str
    cost_usd: float
    baseline_usd: float
    savings_usd: float
    by_lever: dict[str, float]
    headroom: Headroom


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the page shows, at one moment."""

    now: float
    day: str
    replica: str
    held: int
    held_cap: int
    draining: bool
    admit_quantile: float
    prior_s: float
    queues: list[QueueRow]
    batches: list[BatchRow]
    tenants: list[TenantRow]


class Status:
    """Builds the page's `Snapshot` from the store, the planner, the tenants, the reports and the holds."""

    def __init__(
        self,
        settings: Settings,
        queues: Queues,
        batches: BatchStore,
        planner: Planner,
        tenants: Tenants,
        reports: Reports,
        holds: Holds,
    ) -> None:
        self.settings = settings
        self.queues = queues
        self.batches = batches
        self.planner = planner
        self.tenants = tenants
        self.reports = reports
        self.holds = holds

    def tenant_names(self) -> list[str]:
        """The tenants shown: every one the settings can authenticate, and those with limits (bounded by config)."""
        return sorted(set(self.settings.known_tenants()) | set(self.tenants.limited()))

    async def snapshot(self) -> Snapshot:
        """The page's numbers now."""
        now = time.time()
        queue_rows: list[QueueRow] = []
        batch_rows: list[BatchRow] = []
        planner, b = self.planner, self.settings.batch
        for tag in await self.queues.queue_tags():
            stats = await self.queues.stats(tag)
            if stats is None:
                continue
            name = f"{stats.upstream}/{stats.model}{stats.endpoint}"
            observations = await self.batches.observations(tag)
            summary = planner.model.summary(observations, now)
            caps = planner.catalog.of(stats.upstream, stats.endpoint, stats.model)
            quantile = planner.model.quantile(observations, now, lines=max(1, stats.count))
            records = await self.batches.in_flight(tag)
            queue_rows.append(
                QueueRow(
                    name=name,
                    waiting=stats.count,
                    bytes=stats.bytes,
                    next_flush_at=next_flush(stats, now, caps, quantile, planner.timing, b),
                    earliest_deadline=stats.earliest_deadline,
                    in_flight=len(records),
                    median_s=summary.median_s,
                    admit_s=summary.admit_s,
                    evidence=summary.weight,
                    observations=len(observations),
                    size_slope=summary.size_slope,
                )
            )
            batch_rows += [
                BatchRow(
                    queue=name,
                    id=record.id,
                    provider_id=record.provider_id,
                    state=str(record.state),
                    lines=record.n,
                    created_at=record.created_at,
                    submitted_at=record.submitted_at or None,
                    expected_s=planner.model.quantile(observations, now, lines=max(1, record.n)),
                    cut=record.cut_at is not None,
                )
                for record in records
            ]
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        tenant_rows = [await self._tenant(tenant, day) for tenant in self.tenant_names()]
        return Snapshot(
            now=now,
            day=day,
            replica=self.holds.replica_id,
            held=self.holds.count,
            held_cap=self.holds.cap,
            draining=self.holds.draining.is_set(),
            admit_quantile=planner.model.admit_quantile,
            prior_s=planner.model.prior_s,
            queues=queue_rows,
            batches=sorted(batch_rows, key=lambda row: row.created_at),
            tenants=tenant_rows,
        )

    async def _tenant(self, tenant: str, day: str) -> TenantRow:
        lanes, by_lever = await self.reports.day_savings(tenant, day)
        return TenantRow(
            tenant=tenant,
            cost_usd=sum(fields.get("cost_usd", 0.0) for fields in lanes.values()),
            baseline_usd=sum(fields.get("baseline_usd", 0.0) for fields in lanes.values()),
            savings_usd=sum(fields.get("savings_usd", 0.0) for fields in lanes.values()),
            by_lever=by_lever,
            headroom=await self.tenants.headroom(tenant),
        )
