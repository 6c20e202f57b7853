"""The deferred lane's Redis state, one part per concern over a shared `context.StoreContext`; `Store` builds them.

`records` (the structs), `context` (what the parts share), `queues` (the set the loops walk, what waits),
`intake` (calls in, holders, replicas), `batches`, `results` (calls out: results, requeue, escalation), `webhooks`
(the delivery schedule), `leases`, `totals`; `scripts` (every Lua script) and `client` (the Redis client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.core.keys import Keys
from router.deferred.store.batches import BatchStore
from router.deferred.store.context import StoreContext
from router.deferred.store.intake import Intake
from router.deferred.store.leases import Leases
from router.deferred.store.queues import Queues
from router.deferred.store.results import ResultStore
from router.deferred.store.scripts import Scripts
from router.deferred.store.totals import TotalsStore
from router.deferred.store.webhooks import WebhookSchedule

if TYPE_CHECKING:
    from router.deferred.store.client import RedisClient


class Store:
    """Every part of the store, built once under one key prefix; each loop and service is handed the parts it uses.

    Not a facade: it has no methods of its own, only the parts (`store.batches.claim(...)`).
    """

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        *,
        result_ttl_s: float,
        idempotency_ttl_s: float,
        max_queues: int = 1000,
    ) -> None:
        keys = Keys(prefix)
        ctx = StoreContext(
            redis,
            keys,
            Scripts(redis, keys),
            result_ttl_s=result_ttl_s,
            idempotency_ttl_s=idempotency_ttl_s,
            max_queues=max_queues,
        )
        self._ctx = ctx
        self.redis: RedisClient = redis
        self.keys: Keys = ctx.keys
        self.queues = Queues(ctx)
        self.intake = Intake(ctx)
        self.batches = BatchStore(ctx, self.queues)
        self.totals = TotalsStore(ctx)
        self.results = ResultStore(ctx, self.totals)
        self.webhooks = WebhookSchedule(ctx)
        self.leases = Leases(ctx)

    @property
    def max_queues(self) -> int:
        """How many queues the set the loops walk may hold (`limits.max_queues`)."""
        return self._ctx.max_queues
