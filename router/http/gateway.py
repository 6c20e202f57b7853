"""The gateway: every part the handlers use, built once from the settings, and its lifespan, which owns Redis, the
upstream pools and the loops. Each part gets only what it uses: the loops the store parts they read and write, the
services (`Auth`, `Admission`, `Relay`, `Delivery`, `Reports`) the parts they call; none of them gets the gateway.
It imports no handler, and never `app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from router.core.errors import ConfigError
from router.core.keys import REPLICA_TTL_S
from router.core.lanes import Catalog, Planner
from router.core.policy import PolicyStore
from router.core.pricing import load_pricing, unpriced_models, unpriced_warning
from router.deferred.answers import AnswerStore
from router.deferred.batcher import Batcher
from router.deferred.catalog import ModelCatalog
from router.deferred.guard import Guard
from router.deferred.holding import Holds, max_held, raise_fd_limit
from router.deferred.lane import DeferredLane
from router.deferred.loops import pace
from router.deferred.poller import Poller
from router.deferred.store import Store, client
from router.deferred.store.totals import RealtimeTotals
from router.deferred.tenants import Tenants
from router.deferred.waiters import ResultWaiter, Waiters
from router.deferred.webhooks import WebhookSender
from router.http.admission import Admission
from router.http.answer_cache import AnswerCache
from router.http.auth import Auth
from router.http.background import BackgroundResponses
from router.http.cascade import Cascade
from router.http.delivery import Delivery
from router.http.exposition import Exposition
from router.http.model_router import ModelRouter
from router.http.prompt_cache import PromptCaching
from router.http.relay import Relay
from router.http.reports import Reports
from router.http.status import Status
from router.modelroutes.store import EvidenceStore
from router.passthrough.message_batches import MessageBatchWatcher, Owners
from router.passthrough.native_batches import NativeStore, NativeWatcher
from router.providers.anthropic import AnthropicProvider
from router.providers.openai import OpenAIProvider
from router.providers.openai_native import OpenAINative
from router.providers.upstreams import Upstreams
from router.telemetry import runtime
from router.telemetry.accounting import Accounting
from router.telemetry.tracing import OFF, Tracing

if TYPE_CHECKING:
    from litestar import Litestar

    from router.core.settings import Settings
    from router.providers.base import Provider

log = logging.getLogger(__name__)
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
        tracing: Tracing = OFF,
        tune_gc: bool = False,
    ) -> None:
        self.tune_gc = tune_gc
        """Tune the collector once started (`serve` with `gc_tuning`; never in tests, which share one process)."""
        self.lag_probe = runtime.LoopLagProbe()
        self.tracing = tracing
        """OpenTelemetry spans (`telemetry.tracing`): `OFF` unless an OTLP endpoint is set in the environment."""
        if not settings.redis_url:
            raise ConfigError("redis_url", None, "the router needs a Redis URL (the CLI starts a bundled one)")
        self.settings = settings
        self.upstreams = Upstreams(settings.upstreams, providers, settings)
        self.policies = PolicyStore(Path(settings.policies_dir))
        self.accounting = Accounting(load_pricing(Path(settings.pricing_file)))
        self.accounting.prices.lookup("gpt-4o")  # loads genai-prices' data (about 0.5 s) now, not on the first call
        for model in unpriced_models(settings, self.accounting.prices):
            log.warning(unpriced_warning(model))
        # Connects lazily, on the serving loop; the lifespan closes it. One server or a cluster, by the URL.
        self.redis = client.connect(settings.redis_url, max_connections=settings.redis_max_connections)
        b = settings.batch
        store = self.store = Store(
            self.redis,
            settings.key_prefix,
            result_ttl_s=b.result_ttl_s,
            idempotency_ttl_s=b.idempotency_ttl_s,
            max_queues=settings.limits.max_queues,
        )
        self.realtime = RealtimeTotals(store.totals, self.accounting)
        self.waiters = Waiters(self.redis, store.keys.done_channel, store.results.results_stored)
        waiter = ResultWaiter(self.waiters, store.results)
        prices = self.accounting.prices
        self.catalog = ModelCatalog(settings.upstreams, providers, prices)
        self.tenants = Tenants(self.redis, store.keys, settings, store.totals, self.realtime, prices)
        self.planner = Planner(b, Catalog(settings.upstreams, lambda model: prices.rates(model, "flex") is not None))
        self.deferred = DeferredLane(
            store.intake, store.batches, self.tenants, self.upstreams, self.planner, self.catalog.known,
            reattach=b.reattach,
        )  # fmt: skip
        answer_store = AnswerStore(self.redis, store.keys, settings.answer_cache)
        # The loops, each with the store parts it uses.
        self.batcher = Batcher(
            store.queues, store.batches, store.results, store.leases, providers, b, self.planner, tracing
        )
        self.poller = Poller(
            store.queues, store.batches, store.results, store.leases, providers, b, self.accounting, self.planner,
            tracing, answer_store,
        )  # fmt: skip
        self.guard = Guard(
            store.queues, store.batches, store.results, providers, b, self.accounting, self.planner, tracing,
            answer_store, store.leases,
        )  # fmt: skip
        self.webhooks = WebhookSender(
            store.queues, store.webhooks, store.results, store.leases, settings.webhooks, webhook_secret
        )
        self.natives = {
            cfg.name: OpenAINative(provider)
            for cfg in settings.upstreams
            if cfg.batch and isinstance(provider := providers[cfg.name], OpenAIProvider)
        }
        self.native_store = NativeStore(self.redis, settings.key_prefix)
        self.native_watcher = NativeWatcher(
            self.native_store, store.leases, self.natives, b, self.accounting, self.tenants.settle
        )
        self.owners = Owners(self.redis, store.keys, store.leases)
        anthropic = {name: p for name, p in providers.items() if isinstance(p, AnthropicProvider)}
        self.message_batches = MessageBatchWatcher(
            self.owners, anthropic, self.accounting, self.realtime.record, b, self.tenants.settle
        )
        self.holds = Holds(store.intake, waiter, self.waiters, settings, max_held(settings, raise_fd_limit()))
        self.exposition = Exposition(store.queues, store.batches, self.planner, self.tenants, metrics_dir)
        # The services, each with the parts it calls.
        self.auth = Auth(settings, metrics_token)
        self.model_router = ModelRouter(
            settings.routes,
            EvidenceStore(self.redis, settings.key_prefix),
            prices,
            tenant_tasks=settings.auth == "keys",
        )
        self.cascade = Cascade(self.upstreams, self.tenants, self.accounting, self.realtime, self.model_router, tracing)
        self.relay = Relay(self.upstreams, self.tenants, self.accounting, self.realtime, self.cascade.learn, tracing)
        self.delivery = Delivery(self.deferred, store.results, waiter, self.holds, self.upstreams, settings, tracing)
        self.background = BackgroundResponses(store.results, self.upstreams)
        self.answers = AnswerCache(settings, answer_store, self.accounting, self.realtime, self.upstreams)
        self.admission = Admission(
            settings, self.policies, self.upstreams, self.deferred, self.webhooks.check, self.relay, self.delivery,
            self.cascade, self.answers, PromptCaching(settings.prompt_cache, self.redis, store.keys),
        )  # fmt: skip
        self.reports = Reports(self.upstreams, store.totals, self.realtime, self.native_store, self.tenants, self.redis)
        self.status = Status(
            settings, store.queues, store.batches, self.planner, self.tenants, self.reports, self.holds
        )
        self.loops = loops
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Litestar) -> AsyncIterator[None]:
        """Start the background loops; on exit stop them (bounded wait, then cancel) and close every pool."""
        self._stop = asyncio.Event()
        self.holds.bind(asyncio.get_running_loop())
        # This replica says it is alive before its loops take any lease, so no other replica takes one for dead.
        with contextlib.suppress(Exception):
            await self.store.intake.heartbeat(self.holds.replica_id, REPLICA_TTL_S)
        self._tasks = [
            asyncio.create_task(self.holds.heartbeat(self._stop), name="heartbeat"),
            asyncio.create_task(self._watch_policies(), name="policy-reload"),
            asyncio.create_task(self.waiters.run(self._stop), name="waiters"),
            asyncio.create_task(self.realtime.run(self._stop), name="totals"),
            asyncio.create_task(self.catalog.run(self._stop), name="catalog"),
            asyncio.create_task(self.model_router.run(self._stop), name="model-routes"),
            asyncio.create_task(self.lag_probe.run(self._stop), name="loop-lag"),
        ]
        if self.loops:
            self._tasks += [
                asyncio.create_task(self.batcher.run(self._stop), name="batcher"),
                asyncio.create_task(self.poller.run(self._stop), name="poller"),
                asyncio.create_task(self.guard.run(self._stop), name="guard"),
                asyncio.create_task(self.webhooks.run(self._stop), name="webhooks"),
                asyncio.create_task(self.native_watcher.run(self._stop), name="native-batches"),
                asyncio.create_task(self.message_batches.run(self._stop), name="message-batches"),
                asyncio.create_task(pace(self._stop, PRUNE_S, self.store.queues.prune_idle, "pruner"), name="pruner"),
            ]
        runtime.watch_gc()
        if self.tune_gc:
            runtime.tune_gc()  # last: what start-up allocated is frozen
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
            await client.close(self.redis)
            await asyncio.to_thread(self.tracing.shutdown)  # sends the spans still buffered

    async def _watch_policies(self) -> None:
        while not self._stop.is_set():
            for problem in self.policies.maybe_reload():
                log.error("policy reload rejected, old rules stay in force: %s", problem)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=1.0)

    def begin_drain(self) -> None:
        """SIGTERM arrived (called from the signal handler): cut held connections, refuse new held calls."""
        self.holds.begin_drain()
