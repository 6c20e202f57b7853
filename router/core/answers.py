"""The answer cache's pure half: which calls it may answer, under what key, and what the caller asked of it.

A call is answered from the cache only when it asks for determinism (`temperature: 0`, or a `seed`; an embedding
always is) and an identical one (same tenant, endpoint, model and body, whether streamed or not) was answered within
the TTL. Whether the cache is on for a call is decided, most specific first, by the policy rule that matched it, the
tenant's setting, then `answer_cache.enabled`. The Redis side is `deferred/answers.py`; the service
`http/answer_cache.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from router.core.policy import Decision
    from router.core.settings import Settings

CACHEABLE = frozenset({"/chat/completions", "/completions", "/embeddings", "/messages"})
"""Endpoints whose answers the cache keeps. Not `/responses`: a Response is server-side state (`store`,
`previous_response_id` chain from its id), which a replayed copy would not be."""
ALWAYS_DETERMINISTIC = frozenset({"/embeddings"})
"""Endpoints whose answer does not depend on sampling."""
TRANSPORT_FIELDS = ("stream", "stream_options")
"""Body fields that change how an answer travels, not what it says: left out of the key, so a streamed call can be
answered from a non-streamed one's answer (replayed as SSE)."""

Status = Literal["hit", "miss", "bypass"]
"""What `X-Router-Cache` says where the cache is on for a call."""

_canonical = msgspec.json.Encoder(order="sorted")


class StoredAnswer(msgspec.Struct, frozen=True, array_like=True):
    """An answer as the cache keeps it: the upstream's 200 body (without the router's note) and the model that
    wrote it."""

    body: bytes
    model: str


class Directive(msgspec.Struct, frozen=True):
    """What the caller's headers ask of the cache: whether it may answer the call, and whether it may keep its
    answer."""

    read: bool = True
    write: bool = True


def directive(headers: Mapping[str, str]) -> Directive:
    """`X-Router-Cache: off` and `Cache-Control: no-store`: neither read nor write; `Cache-Control: no-cache`: a
    fresh answer, which may be kept for the next identical call (RFC 9111's meanings, on the caller's side)."""
    if headers.get("x-router-cache", "").strip().lower() in ("off", "bypass", "false", "0"):
        return Directive(read=False, write=False)
    tokens = {t.strip().split("=", 1)[0].lower() for t in headers.get("cache-control", "").split(",")}
    if "no-store" in tokens:
        return Directive(read=False, write=False)
    if "no-cache" in tokens:
        return Directive(read=False, write=True)
    return Directive()


def enabled(settings: Settings, tenant: str, decision: Decision) -> bool:
    """Whether the answer cache is on for a call: its policy rule's say, else its tenant's, else the global one."""
    if decision.answer_cache is not None:
        return decision.answer_cache
    limits = settings.tenant_limits(tenant)
    if limits is not None and limits.answer_cache is not None:
        return limits.answer_cache
    return settings.answer_cache.enabled


def deterministic(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether a call asks for the same answer every time: `temperature: 0` or a `seed`, or an embedding."""
    if endpoint in ALWAYS_DETERMINISTIC:
        return True
    temperature = body.get("temperature")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    seed = body.get("seed")
    return zero or (isinstance(seed, int) and not isinstance(seed, bool))


def digest(tenant: str, endpoint: str, model: str, body: Mapping[str, Any]) -> str:
    """The key of a call's answer: SHA-256 of its tenant, endpoint, model and body (keys sorted, the transport
    fields left out), so the same request written in another key order is the same call."""
    content = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    h = hashlib.sha256()
    for part in (tenant, endpoint, model):
        h.update(part.encode())
        h.update(b"\0")
    h.update(_canonical.encode(content))
    return h.hexdigest()
