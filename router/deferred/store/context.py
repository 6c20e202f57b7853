"""What every part of the store shares: the client, the key names, the scripts, the TTLs and the queue cap."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.deferred.store.client import RedisClient
    from router.deferred.store.scripts import Scripts


class StoreContext:
    """One deployment's (or one test's) Redis state under one key prefix: what the parts read their settings from."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        scripts: Scripts,
        *,
        result_ttl_s: float,
        idempotency_ttl_s: float,
        max_queues: int,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.result_ttl = int(result_ttl_s)
        self.idempotency_ttl = int(idempotency_ttl_s)
        self.max_queues = max_queues
        self.replica_id = "r" + secrets.token_hex(6)
        """This process's name among the replicas: its heartbeat's key and the prefix of every lease owner it uses."""
