"""The answer cache at admission: a deterministic call whose identical twin was answered lately is answered from
Redis (as JSON, or replayed as SSE for a streamed call), at no cost, booked as `answer_cache` savings; a call it
could not answer has its 200 answer kept for the next one: by the relay through a `Keeper` (a body, or a stream copied
as it passes), or, for a deferred call, by the poller or the guard from its `CallMeta.answer_key`.

The pure rules (which calls, what key, what the caller's headers ask) are `core/answers.py`; the Redis side
`deferred/answers.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response
from litestar.response import Stream
from redis.exceptions import RedisError

from router.core import answers
from router.core.lanes import Origin
from router.core.schema import decode_body
from router.core.stream_answers import fold
from router.deferred.replay import cost_comment, priced_note, set_cost_headers, sse_chunks, with_note
from router.http.error_handlers import JSON
from router.telemetry import metrics
from router.telemetry.logs import Throttle, kind_of

if TYPE_CHECKING:
    from router.core.policy import Decision
    from router.core.schema import RequestView
    from router.core.settings import Settings
    from router.deferred.answers import AnswerStore
    from router.deferred.store.totals import RealtimeTotals
    from router.providers.upstreams import Upstreams
    from router.telemetry.accounting import Accounting

log = logging.getLogger(__name__)
_throttle = Throttle(log)

STREAM_COPY_FACTOR = 4
"""A stream's bytes are copied up to this many times `answer_cache.max_bytes` (its events are larger than the answer
they fold into); a longer stream is relayed on, not kept."""


CLOSING = {"/chat/completions": b"data: [DONE]", "/completions": b"data: [DONE]", "/messages": b"event: message_stop"}
"""The closing event of each endpoint's stream: the answer is kept just before it is relayed."""


class Keeper:
    """Keeps one call's 200 answer for the next identical call: a body as is, a stream folded back into the body it
    stands for (`core.stream_answers`) once it ended; a failure to keep is logged, never the call's."""

    def __init__(self, store: AnswerStore, tenant: str, digest: str, limit: int) -> None:
        self.store, self.tenant, self.digest, self.limit = store, tenant, digest, limit

    async def body(self, body: bytes, model: str) -> None:
        """Keep an answer body (the upstream's, without the router's note)."""
        await self.store.keep(self.tenant, self.digest, body, model)

    async def stream(self, source: AsyncIterator[bytes], endpoint: str, model: str) -> AsyncIterator[bytes]:
        """Relay `source` chunk by chunk, unchanged, keeping a copy; at its closing event (`data: [DONE]`,
        `event: message_stop`) keep the answer the copy folds into, then relay that event, so a caller that has
        read its stream to the end finds its answer kept. Only the closing event waits for Redis, never the
        content; a stream cut short, too long, or that does not fold is not kept."""
        copied: list[bytes] | None = []
        size, kept = 0, False
        closing = CLOSING.get(endpoint)
        async for chunk in source:
            if copied is None or kept or closing is None:
                yield chunk
                continue
            size += len(chunk)
            if size > self.limit * STREAM_COPY_FACTOR:
                copied = None
                yield chunk
                continue
            copied.append(chunk)
            at = chunk.find(closing)
            if at < 0:
                yield chunk
                continue
            if at:
                yield chunk[:at]
            kept = await self._keep_folded(endpoint, copied, model)
            yield chunk[at:]
        if copied is not None and not kept:  # the closing event came in pieces: keep what the whole stream folds to
            await self._keep_folded(endpoint, copied, model)

    async def _keep_folded(self, endpoint: str, copied: list[bytes], model: str) -> bool:
        folded = fold(endpoint, b"".join(copied))
        if folded is None:
            return False
        # Shielded: a caller that leaves now, its answer already sent, does not cut the write short.
        await asyncio.shield(self.body(folded, model))
        return True


class Lookup(msgspec.Struct, frozen=True):
    """The cache's answer for one call: `status` is what `X-Router-Cache` says (None: the cache is off for it);
    `digest` is where its answer may be kept (None: it may not); `answer` the stored one, on a hit."""

    status: answers.Status | None = None
    digest: str | None = None
    answer: answers.StoredAnswer | None = None


OFF = Lookup()


class AnswerCache:
    """Looks calls up in the answer cache, answers the hits, and keeps the answers of the misses."""

    def __init__(
        self,
        settings: Settings,
        store: AnswerStore,
        accounting: Accounting,
        realtime: RealtimeTotals,
        upstreams: Upstreams,
    ) -> None:
        self.settings = settings
        self.store = store
        self.accounting = accounting
        self.realtime = realtime
        self.upstreams = upstreams

    async def lookup(
        self,
        tenant: str,
        endpoint: str,
        body: bytes,
        view: RequestView,
        headers: Mapping[str, str],
        decision: Decision,
        *,
        respond_async: bool = False,
    ) -> Lookup:
        """Whether the cache is on for this call and, if so, a hit, a miss (its answer may be kept), or a bypass.

        A caller that asked for an asynchronous answer (`Prefer: respond-async`) reads a `deferred.call` and fetches
        its answer later, so it is left to the deferred lane (bypass)."""
        if endpoint not in answers.CACHEABLE or not answers.enabled(self.settings, tenant, decision):
            return OFF
        asked = answers.directive(headers)
        obj: dict[str, Any] = decode_body(body)
        if not answers.deterministic(endpoint, obj) or respond_async or not (asked.read or asked.write):
            return self._counted(Lookup("bypass"), tenant)
        digest = answers.digest(tenant, endpoint, view.model or "", obj)
        if not asked.read:
            return self._counted(Lookup("bypass", digest), tenant)
        try:
            found = await self.store.get(tenant, digest)
        except RedisError as exc:
            _throttle.warning(kind_of("answer-cache", exc), "answer cache look-up failed, call sent on: %s", exc)
            return self._counted(Lookup("bypass"), tenant)
        return self._counted(Lookup("hit", answer=found) if found else Lookup("miss", digest), tenant)

    @staticmethod
    def _counted(lookup: Lookup, tenant: str) -> Lookup:
        assert lookup.status is not None
        metrics.answer_cache.labels(lookup.status, tenant).inc()
        return lookup

    def keeper(self, lookup: Lookup, tenant: str) -> Keeper | None:
        """What keeps this call's answer (None: it may not be kept)."""
        if lookup.digest is None:
            return None
        return Keeper(self.store, tenant, lookup.digest, self.settings.answer_cache.max_bytes)

    def respond(
        self, lookup: Lookup, *, tenant: str, endpoint: str, view: RequestView, headers: dict[str, str]
    ) -> Response[bytes] | Stream:
        """A hit's answer: booked once (cost 0, saving what it costs in real time at the asked model's price), with
        `X-Router-Cache: hit`, its cost headers and the body's `"router"` note, or replayed as SSE when streamed."""
        answer = lookup.answer
        assert answer is not None
        model = view.model or ""
        priced = self.accounting.price(model, Origin.CACHE, answer.body)
        upstream = self.upstreams.for_model(model).name
        self.realtime.record(priced, origin=Origin.CACHE, upstream=upstream, model=model, tenant=tenant, outcome="ok")
        headers["x-router-lane"] = Origin.CACHE.lane.value
        headers["x-router-cache"] = "hit"
        cost = priced.cost
        if cost is not None:
            set_cost_headers(headers, cost.actual_usd, cost.savings_usd)
        if view.stream:
            headers["cache-control"] = "no-cache"
            comment = cost_comment(cost.actual_usd, cost.savings_usd) if cost is not None else b""
            include_usage = bool(view.stream_options and view.stream_options.include_usage)
            chunks = sse_chunks(endpoint, answer.body, include_usage=include_usage, cost=comment)
            return Stream(chunks, status_code=200, headers=headers, media_type="text/event-stream")
        call_id = headers.get("x-router-request-id", "")
        note = priced_note(origin=Origin.CACHE, call_id=call_id, model=answer.model, priced=priced)
        return Response(with_note(answer.body, note), status_code=200, headers=headers, media_type=JSON)
