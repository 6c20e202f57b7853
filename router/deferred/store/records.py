"""What the store reads and writes, as structs, the small codecs every part shares, and a call as its caller sees it
(`deferred_object`); no Redis here."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

from router.core.background import CANCELLED_STATUS
from router.core.deadline import format_deadline
from router.core.lanes import Lane, Origin
from router.core.schema import DeferredCall
from router.core.states import BatchState, CallState

ASYNC_HOLDER = "async"
"""The holder of a call answered `202` (its caller polls or gets a webhook): never re-attached by digest."""
TotalsKey = tuple[str, str]  # tenant, UTC day
_DEFERRED_STATUS: dict[CallState, str] = {
    CallState.QUEUED: "queued",
    CallState.SUBMITTED: "submitted",
    CallState.ESCALATED: "escalated",
}
"""The `deferred.call` status of a call that has no result yet, by its state."""


class CallMeta(msgspec.Struct, frozen=True, kw_only=True):
    """What the router remembers about a deferred call besides its body."""

    tenant: str
    upstream: str
    endpoint: str
    model: str
    deadline: float
    received_at: float
    stream: bool = False
    include_usage: bool = False
    rule: str | None = None
    webhook: str | None = None
    asked_model: str | None = None
    """The model the caller asked for, when a model route has `model` (a cheaper one) answer: the cost baseline."""
    trace: str | None = None
    """The admission span's W3C `traceparent`, when tracing is on (`telemetry.tracing`): the batch's and the
    answer's spans refer to it from whichever replica handles them."""
    answer_key: str | None = None
    """Where the answer cache keeps this call's 200 answer once it has one (`core.answers.digest`); None: it is not
    kept (the cache is off for the call, or the caller said `no-store`)."""
    budget: bool = False
    """The call holds a reservation of its tenant's daily budget, which its stored result settles."""


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A deferred call as stored."""

    id: str
    meta: CallMeta
    state: CallState
    batch: str
    origin: Origin | None
    """Where its result came from, once it has one."""
    attempts: int


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A finished call's answer and price."""

    status: int
    body: bytes
    origin: Origin
    cost_usd: float | None
    baseline_usd: float | None
    savings_usd: float | None
    finished_at: float
    route_usd: float = 0.0
    """The model route's part of the savings (the rest is the prompt cache's and the price tier's)."""
    prompt_cache_usd: float = 0.0
    """The prompt cache's part of the savings."""


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """What waits in one queue."""

    tag: str
    upstream: str
    endpoint: str
    model: str
    count: int
    bytes: int
    oldest_arrival: float | None
    earliest_deadline: float | None


class BatchRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One of our batches."""

    tag: str
    id: str
    state: BatchState
    provider_id: str
    owner: str
    created_at: float
    submitted_at: float
    polls: int
    n: int
    cut_at: float | None = None
    """When the guard cut the batch (it is being cancelled and harvested), if it did."""
    trace: str = ""
    """The batch's submit span as a `traceparent`, when tracing is on: its polls and ingest continue it."""


meta_encoder = msgspec.json.Encoder()
meta_decoder = msgspec.json.Decoder(CallMeta)


def new_call_id(tag: str) -> str:
    """An unguessable call id that starts with its queue's tag; valid as an OpenAI and Anthropic custom_id."""
    return f"{tag}_{secrets.token_urlsafe(18)}"


def text(value: object) -> str:
    """A Redis reply as text ('' for nil)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def number(value: object) -> float | None:
    """A Redis reply as a float, None for nil or empty."""
    found = text(value)
    return float(found) if found else None


def queue_name(info: Mapping[Any, object]) -> str:
    """A queue's name in metrics and `/v1/usage`-like views: `upstream/model/endpoint`, from its descriptor."""
    return f"{text(info[b'upstream'])}/{text(info[b'model'])}{text(info[b'endpoint'])}"


def escalated(origin: Origin) -> bool:
    """Whether a stored result came from an escalation (a deferred call answered by flex was escalated too)."""
    return origin in (Origin.ESCALATED, Origin.FLEX)


def deferred_object(call: CallRecord, result: Result | None) -> DeferredCall:
    """The `deferred.call` object for a call and, if it ended, its result."""
    if result is not None and result.status == CANCELLED_STATUS:
        status = "cancelled"
    elif result is not None:
        status = "completed" if result.status < 400 else "failed"
    else:
        status = _DEFERRED_STATUS.get(call.state, "queued")
    return DeferredCall(
        id=call.id,
        status=status,  # type: ignore[arg-type]
        lane=result.origin.lane if result else Lane.BATCH,
        deadline=format_deadline(call.meta.deadline),
        created=int(call.meta.received_at),
        cost_usd=result.cost_usd if result else None,
        savings_usd=result.savings_usd if result else None,
        webhook=call.meta.webhook is not None,
    )
