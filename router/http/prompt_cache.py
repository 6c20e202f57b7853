"""`PromptCaching`: the prompt-cache lever at admission, before a call takes its lane (so the batch lane's lines carry
the same marks as real-time calls).

Anthropic upstreams (`/chat/completions`, which the provider translates to Messages, and `/v1/messages`): each stable
prefix long enough for the model (`core.prompt_cache.candidates`) is counted in Redis per tenant, with the cache's
lifetime; a prefix seen again within it gets a `cache_control` breakpoint. The first call of a prefix therefore pays
the plain price, the second the 1.25x write, the rest 0.1x reads: the write is paid only once a read is likely. A call
with any `cache_control` of its own is left alone. OpenAI upstreams (`/chat/completions`, `/responses`): a call
without `prompt_cache_key` gets a digest of the tenant and its long prefix, so calls sharing it reach one cache.

A Redis failure only costs the marks (the call goes on unmarked); it is logged, throttled.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from router.core import prompt_cache
from router.core.errors import BadRequest
from router.core.schema import decode_body, encoder
from router.telemetry.logs import Throttle

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.core.settings import PromptCacheSettings
    from router.deferred.store.client import RedisClient

log = logging.getLogger(__name__)
_throttle = Throttle(log)
_ANTHROPIC: dict[str, prompt_cache.Shape] = {"/chat/completions": "chat", "/messages": "messages"}
_OPENAI = frozenset({"/chat/completions", "/responses"})


class PromptCaching:
    """Adds prompt-cache marks to a call's body, per its upstream's kind (given the Redis client and key names)."""

    def __init__(self, settings: PromptCacheSettings, redis: RedisClient, keys: Keys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys

    async def apply(self, body: bytes, *, kind: str, endpoint: str, tenant: str, allowed: bool | None) -> bytes:
        """The body to send: marked where the lever applies, else `body` itself. `allowed` is the policy rule's
        `prompt_cache` (None: the global setting decides)."""
        if allowed is False or (allowed is None and not self.settings.enabled):
            return body
        if len(body) < prompt_cache.MIN_BODY_BYTES:
            return body
        if kind == "anthropic" and endpoint in _ANTHROPIC:
            return await self._anthropic(body, _ANTHROPIC[endpoint], tenant)
        if kind == "openai" and endpoint in _OPENAI and b"prompt_cache_key" not in body:
            obj = _object(body)
            if obj is None or "prompt_cache_key" in obj:
                return body
            key = prompt_cache.openai_cache_key(obj, endpoint, tenant)
            return body if key is None else with_cache_key(body, key)
        return body

    async def _anthropic(self, body: bytes, shape: prompt_cache.Shape, tenant: str) -> bytes:
        if prompt_cache.has_own_breakpoints(body):
            return body
        obj = _object(body)
        if obj is None:
            return body
        found = prompt_cache.candidates(obj, shape, tenant, str(obj.get("model") or ""))
        if not found:
            return body
        seen = await self._seen_before(tenant, found)
        wheres = [c.where for c, again in zip(found, seen, strict=True) if again]
        return encoder.encode(prompt_cache.mark(obj, shape, wheres)) if wheres else body

    async def _seen_before(self, tenant: str, found: list[prompt_cache.Candidate]) -> list[bool]:
        """Whether each prefix was sent within the cache's lifetime; records this sighting (and refreshes it)."""
        ttl = max(1, round(self.settings.ttl_s))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in found:
                    pipe.set(self.keys.prompt_prefix(tenant, c.digest), c.tokens, ex=ttl, get=True)
                before = await pipe.execute()
        except (RedisError, OSError) as exc:
            _throttle.log(logging.WARNING, "prompt-cache", "prompt cache: prefixes unread, calls go unmarked: %r", exc)
            return [False] * len(found)
        return [value is not None for value in before]


def with_cache_key(body: bytes, key: str) -> bytes:
    """`body` (a JSON object without `prompt_cache_key`) with `"prompt_cache_key": key` spliced in after its opening
    brace: a long prompt is not encoded again (the digest already read it once)."""
    start = body.find(b"{")
    return body[: start + 1] + b'"prompt_cache_key":' + encoder.encode(key) + b"," + body[start + 1 :]


def _object(body: bytes) -> dict[str, Any] | None:
    try:
        obj = decode_body(body)
    except BadRequest:  # the provider refuses it, in its own words
        return None
    return obj if isinstance(obj, dict) else None
