"""`GET /metrics`: this process's Prometheus exposition, with the state every replica shares (queue depths,
batches in flight, the turnaround model, tenant headroom) read from Redis at each scrape, and, under
`serve --workers`, every worker's metric files merged."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import multiprocess

from router.telemetry import metrics
from router.telemetry.logs import Throttle, kind_of

if TYPE_CHECKING:
    from router.core.lanes import Planner
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.queues import Queues
    from router.deferred.tenants import Tenants

log = logging.getLogger(__name__)
_throttle = Throttle(log)


class Exposition:
    """The Redis-backed gauges, refreshed at each scrape, and the text Prometheus reads."""

    def __init__(
        self, queues: Queues, batches: BatchStore, planner: Planner, tenants: Tenants, metrics_dir: str | None
    ) -> None:
        self.queues = queues
        self.batches = batches
        self.planner = planner
        self.tenants = tenants
        self.metrics_dir = metrics_dir
        """Set in a worker of `serve --workers`: metrics are read from every worker's files there."""
        self._depth_labels: set[str] = set()

    async def text(self) -> tuple[bytes, str]:
        """The exposition and its content type."""
        try:
            depth, inflight = await self.queues.counts()
            models = await self.batches.turnarounds()
        except Exception as exc:
            _throttle.warning(kind_of("metrics", exc), "could not read queue depth from Redis for /metrics: %s", exc)
        else:
            for queue, count in depth.items():
                metrics.queue_depth.labels(queue).set(count)
            for gone in self._depth_labels - depth.keys():  # pruned queues: no series left behind
                if self.metrics_dir:  # other workers' files keep the label: the most recent value must say 0
                    metrics.queue_depth.labels(gone).set(0)
                else:
                    metrics.queue_depth.remove(gone)
            self._depth_labels = set(depth)
            metrics.batches_inflight.set(inflight)
            now = time.time()
            for queue, observations in models.items():
                summary = self.planner.model.summary(observations, now)
                metrics.turnaround_estimate.labels(queue, "0.5").set(summary.median_s)
                metrics.turnaround_estimate.labels(queue, "admit").set(summary.admit_s)
                metrics.turnaround_evidence.labels(queue).set(summary.weight)
        try:
            await self.tenants.publish_metrics()
        except Exception:
            log.warning("could not read tenant headroom from Redis for /metrics")
        registry = metrics.REGISTRY
        if self.metrics_dir:
            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST
