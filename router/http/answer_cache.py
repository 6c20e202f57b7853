"""The answer cache at admission: a deterministic call whose identical twin was answered lately is answered from
Redis (as JSON, or replayed as SSE for a streamed call), at no cost, booked as `answer_cache` savings; a call it
could not answer has its 200 answer kept for the next one (`keeper`, which the relay calls).

The pure rules (which calls, what key, what the caller's headers ask) are `core/answers.py`; the Redis side
`deferred/answers.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Response
from litestar.response import Stream
from redis.exceptions import RedisError

from router.core import answers
from router.core.lanes import Origin
from router.core.schema import decode_body
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

Keep = Callable[[bytes, str], Awaitable[None]]
"""Keeps a call's 200 answer (its upstream body, and the model that wrote it) for the next identical call."""


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

    def keeper(self, lookup: Lookup, tenant: str) -> Keep | None:
        """What keeps this call's answer (None: it may not be kept). A failure to keep it is logged, never the
        call's."""
        digest = lookup.digest
        if digest is None:
            return None

        async def keep(body: bytes, model: str) -> None:
            await self.store.keep(tenant, digest, body, model)

        return keep

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
