"""The gateway: the container of every part the handlers and services use, built from the settings, and its
lifespan, which owns Redis, the upstream pools and the loops. What the routes answer lives in the services
(`admission`, `delivery`, `relay`, `reports`, `exposition`), not here; the gateway keeps only the real-time
totals it batches into Redis (`record_realtime`, `day_totals`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar

from router.core.errors import ConfigError
from router.core.lanes import Catalog, Planner
from router.core.policy import PolicyStore
from router.core.pricing import load_pricing
from router.core.settings import Settings
from router.deferred.accumulator import Accumulator, TotalsKey
from router.deferred.batcher import Batcher
from router.deferred.catalog import ModelCatalog
from router.deferred.guard import Guard
from router.deferred.holding import Holds, max_held, raise_fd_limit
from router.deferred.lane import DeferredLane, Upstreams
from router.deferred.loops import pace
from router.deferred.poller import Poller
from router.deferred.store import client as redis_client
from router.deferred.tenants import Tenants
from router.deferred.waiters import Waiters
from router.deferred.webhooks import WebhookSender
from router.http.exposition import Exposition
from router.http.model_router import ModelRouter
from router.modelroutes.store import EvidenceStore
from router.passthrough.message_batches import Ledger, Owners
from router.passthrough.native_batches import NativeBatches
from router.providers.base import Provider
from router.providers.openai import OpenAIProvider
from router.providers.openai_native import OpenAINative
from router.telemetry.accounting import Accounting, Lane, Priced
from router.telemetry.logs import Throttle, kind_of

log = logging.getLogger(__name__)
_throttle = Throttle(log)
TOTALS_FLUSH_S = 1.0  # real-time totals reach Redis in one pipeline per second, not one round trip per call
PRUNE_S = 10.0  # idle queues leave the set the loops walk within this many seconds


class Gateway:
    """Everything the handlers need, opened and closed by the app's lifespan."""

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, Provider],
        *,
        loops: bool = True,
        webhook_secret: str | None = None,
        metrics_token: str | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        if not settings.redis_url:
            raise ConfigError("redis_url", None, "the router needs a Redis URL (the CLI starts a bundled one)")
        self.settings = settings
        self.key_index = settings.key_index()
        self.metrics_token = metrics_token
        self.upstreams = Upstreams(settings.upstreams, providers, settings)
        self.policies = PolicyStore(Path(settings.policies_dir))
        self.accounting = Accounting(load_pricing(Path(settings.pricing_file)))
        # Connects lazily, on the serving loop; the lifespan closes it. One server or a cluster, by the URL.
        self.redis = redis_client.connect(settings.redis_url, max_connections=settings.redis_max_connections)
        self.model_router = ModelRouter(
            settings.routes,
            EvidenceStore(self.redis, settings.key_prefix),
            self.accounting.prices,
            tenant_tasks=settings.auth == "keys",
        )
        b = settings.batch
        acc = Accumulator(
            self.redis,
            settings.key_prefix,
            result_ttl_s=b.result_ttl_s,
            idempotency_ttl_s=b.idempotency_ttl_s,
            max_queues=settings.limits.max_queues,
        )
        self._acc = acc  # its own reads and writes (totals, queue metrics, pruning); lanes and loops own theirs
        self.waiters = Waiters(self.redis, acc.keys.done_channel, acc.results_stored)
        prices = self.accounting.prices
        self.catalog = ModelCatalog(settings.upstreams, providers, prices)
        self.tenants = Tenants(self.redis, acc.keys, settings, acc.totals, self.unflushed_cost)
        self.planner = Planner(b, Catalog(settings.upstreams, lambda model: prices.rates(model, "flex") is not None))
        self.deferred = DeferredLane(acc, self.waiters, settings, self.planner, self.catalog.known, self.tenants)
        self.batcher = Batcher(acc, providers, b, self.planner)
        self.poller = Poller(acc, providers, b, self.accounting, self.planner)
        self.guard = Guard(acc, providers, b, self.accounting, self.planner)
        self.webhooks = WebhookSender(acc, settings.webhooks, webhook_secret)
        natives = {
            cfg.name: OpenAINative(provider)
            for cfg in settings.upstreams
            if cfg.batch and isinstance(provider := providers[cfg.name], OpenAIProvider)
        }
        self.native = NativeBatches(self.redis, settings.key_prefix, natives, acc, b, self.accounting)
        self.message_batches = Owners(acc)
        self.ledger = Ledger(self.message_batches, providers, self.accounting, self.record_realtime, b)
        self.holds = Holds(self.deferred, settings, max_held(settings, raise_fd_limit()))
        self.loops = loops
        self.exposition = Exposition(acc, self.planner, self.tenants, metrics_dir)
        self._tasks: list[asyncio.Task[None]] = []
        self._totals: dict[TotalsKey, dict[str, float]] = {}
        self._flushing: list[dict[TotalsKey, dict[str, float]]] = []
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        """Start the background loops; on exit stop them (bounded wait, then cancel) and close every pool."""
        self._stop = asyncio.Event()
        self.holds.bind(asyncio.get_running_loop())
        self._tasks = [
            asyncio.create_task(self.holds.heartbeat(self._stop), name="heartbeat"),
            asyncio.create_task(self._watch_policies(), name="policy-reload"),
            asyncio.create_task(self.waiters.run(self._stop), name="waiters"),
            asyncio.create_task(self._flush_totals_loop(), name="totals"),
            asyncio.create_task(self.catalog.run(self._stop), name="catalog"),
            asyncio.create_task(self.model_router.run(self._stop), name="model-routes"),
        ]
        if self.loops:
            self._tasks += [
                asyncio.create_task(self.batcher.run(self._stop), name="batcher"),
                asyncio.create_task(self.poller.run(self._stop), name="poller"),
                asyncio.create_task(self.guard.run(self._stop), name="guard"),
                asyncio.create_task(self.webhooks.run(self._stop), name="webhooks"),
                asyncio.create_task(self.native.watcher.run(self._stop), name="native-batches"),
                asyncio.create_task(self.ledger.run(self._stop), name="message-batches"),
                asyncio.create_task(pace(self._stop, PRUNE_S, self._acc.prune_idle, "pruner"), name="pruner"),
            ]
        try:
            yield
        finally:
            self.holds.begin_drain()
            self._stop.set()
            # What is left of the grace period (the drain started at the signal); in-flight uploads and polls
            # that do not finish in it are cancelled and adopted later through their lapsed leases.
            since = time.monotonic() - (self.holds.drain_started or time.monotonic())
            grace = max(0.5, self.settings.shutdown_grace_s - since - 0.5)
            pending = (await asyncio.wait(self._tasks, timeout=grace))[1]
            for task in pending:
                task.cancel(msg="shutdown: loop did not stop in time")
            await asyncio.gather(*pending, return_exceptions=True)
            await self.holds.settle(within_s=0.5)
            await self.upstreams.aclose()
            await self.webhooks.aclose()
            await redis_client.close(self.redis)

    async def _watch_policies(self) -> None:
        while not self._stop.is_set():
            for problem in self.policies.maybe_reload():
                log.error("policy reload rejected, old rules stay in force: %s", problem)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    def begin_drain(self) -> None:
        """SIGTERM arrived (called from the signal handler): cut held connections, refuse new held calls."""
        self.holds.begin_drain()

    def record_realtime(
        self, priced: Priced, *, lane: Lane, upstream: str, model: str, tenant: str, outcome: str
    ) -> None:
        """Book a finished real-time call in the metrics now, and in memory for the next Redis totals flush."""
        if outcome != "ok" and not self.accounting.prices.known(model):
            model = "other"  # a failed call's model is whatever the caller typed: keep label values bounded
        self.accounting.book(priced, lane=lane, upstream=upstream, model=model, tenant=tenant, outcome=outcome)
        fields = self._totals.setdefault((tenant, time.strftime("%Y-%m-%d", time.gmtime())), {})
        fields[f"{lane}:requests"] = fields.get(f"{lane}:requests", 0.0) + 1
        if priced.cost is not None:
            for name, value in zip(("cost_usd", "baseline_usd", "savings_usd"), priced.as_tuple() or (), strict=True):
                fields[f"{lane}:{name}"] = fields.get(f"{lane}:{name}", 0.0) + value
            if priced.cost.route_usd:
                fields[f"{lane}:route_usd"] = fields.get(f"{lane}:route_usd", 0.0) + priced.cost.route_usd

    def unflushed_cost(self, tenant: str, day: str) -> float:
        """What this process's real-time calls of a tenant's day cost that Redis may not show yet."""
        rows = [totals.get((tenant, day), {}) for totals in (self._totals, *self._flushing)]
        return sum(value for fields in rows for name, value in fields.items() if name.endswith(":cost_usd"))

    async def flush_totals(self) -> None:
        """Write the real-time totals summed since the last flush; on failure keep them for the next one."""
        pending, self._totals = self._totals, {}
        if not pending:
            return
        self._flushing.append(pending)  # still counted for budgets while being written
        try:
            await self._acc.add_totals(pending)
        except Exception as exc:
            _throttle.warning(kind_of("totals", exc), "could not write real-time totals to Redis, will retry: %s", exc)
            for key, fields in pending.items():
                merged = self._totals.setdefault(key, {})
                for name, value in fields.items():
                    merged[name] = merged.get(name, 0.0) + value
        else:
            self.tenants.forget_spend({tenant for tenant, _ in pending})  # Redis has them now: read it again
        finally:
            self._flushing = [batch for batch in self._flushing if batch is not pending]

    async def _flush_totals_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=TOTALS_FLUSH_S)
            await self.flush_totals()

    async def day_totals(self, tenant: str, day: str) -> dict[str, float]:
        """A tenant's totals of one UTC day as `lane:name` fields: real-time calls (this process's flushed first),
        deferred calls and native batches (their lanes never overlap)."""
        await self.flush_totals()
        return await self._acc.totals(tenant, day) | await self.native.store.totals(tenant, day)
