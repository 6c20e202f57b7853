"""The answer cache in Redis: per tenant, bounded in count and bytes (least recently used out first), each answer
served for `answer_cache.ttl_s` after it was stored. Every key of a tenant carries its own hash tag (`keys.py`), so
a look-up, or a store with its evictions, is one Lua step (`scripts.ANSWER_GET`, `ANSWER_PUT`) on a server or a
cluster node, and no tenant ever reads another's answers."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import RedisError

from router.core.answers import StoredAnswer
from router.deferred.store.scripts import Scripts
from router.telemetry import metrics
from router.telemetry.logs import Throttle, kind_of

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.core.settings import AnswerCacheSettings
    from router.deferred.store.client import RedisClient


class Stored(msgspec.Struct, frozen=True):
    """What a store did: whether the answer was kept, and how many others it evicted."""

    kept: bool
    evicted: int


log = logging.getLogger(__name__)
_throttle = Throttle(log)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StoredAnswer)


class AnswerStore:
    """Looks answers up and stores them, per tenant, within the bounds of the settings."""

    def __init__(self, redis: RedisClient, keys: Keys, settings: AnswerCacheSettings) -> None:
        self._scripts = Scripts(redis, keys)
        self.settings = settings

    async def get(self, tenant: str, digest: str) -> StoredAnswer | None:
        """The tenant's answer under `digest`, if one is stored and not past its TTL (it becomes the most recently
        used); an unreadable entry counts as none."""
        found = await self._scripts.answer_get(tenant=tenant, digest=digest, now_ms=_now_ms())
        if found is None:
            return None
        try:
            return _decoder.decode(found)
        except msgspec.DecodeError:
            return None

    async def put(self, tenant: str, digest: str, answer: StoredAnswer) -> Stored:
        """Keep an answer for the TTL, evicting the tenant's least recently used ones past the bounds (an answer
        larger than `max_bytes` alone is not kept)."""
        s = self.settings
        kept, evicted = await self._scripts.answer_put(
            tenant=tenant,
            digest=digest,
            answer=_encoder.encode(answer),
            now_ms=_now_ms(),
            ttl_ms=max(1, round(s.ttl_s * 1000)),
            max_entries=s.max_entries,
            max_bytes=s.max_bytes,
        )
        return Stored(kept, evicted)

    async def keep(self, tenant: str, digest: str, body: bytes, model: str) -> None:
        """`put` a call's 200 answer and count it; a failure is logged (throttled), never the call's."""
        try:
            stored = await self.put(tenant, digest, StoredAnswer(body, model))
        except RedisError as exc:
            _throttle.warning(kind_of("answer-cache", exc), "answer cache store failed: %s", exc)
            return
        metrics.answer_cache.labels("stored" if stored.kept else "too_large", tenant).inc()
        if stored.evicted:
            metrics.answer_cache.labels("evicted", tenant).inc(stored.evicted)


def _now_ms() -> int:
    return int(time.time() * 1000)
