"""Background responses: `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`.

An id the router gave (`core.background`, one deferred call of the caller's tenant) is answered from the store: the
call's state while it waits, its stored answer once it ended. A cancel takes a queued call out of its queue (never
sent, never billed) or marks a submitted one cancelled (its batch line still runs and the provider bills it; its
result is dropped). Any other id is the upstream's, from a background response created in real time: passed through
to the first upstream that speaks the OpenAI API.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from litestar import Response

from router.core import background
from router.core.errors import BadRequest, NotFound
from router.core.states import CallState
from router.http.error_handlers import JSON

if TYPE_CHECKING:
    from router.deferred.store.records import CallRecord
    from router.deferred.store.results import ResultStore
    from router.providers.base import Provider
    from router.providers.upstreams import Upstreams

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class BackgroundResponses:
    """The Responses API's background mode: the router's ids from the deferred store, others from the upstream."""

    def __init__(self, results: ResultStore, upstreams: Upstreams) -> None:
        self.results = results
        self.upstreams = upstreams

    async def retrieve(self, tenant: str, rid: str) -> Response[bytes]:
        """The `Response` as it stands."""
        call = await self._call(tenant, rid)
        if call is None:
            provider = self._passthrough(rid)
            answer = await provider.get(f"/responses/{rid}")
            return Response(answer.body, status_code=answer.status, media_type=JSON)
        return Response(await self._shown(rid, call), media_type=JSON)

    async def cancel(self, tenant: str, rid: str) -> Response[bytes]:
        """Cancel a background call that has not ended; cancelling it again answers the same; an answered one is a
        400, as the API answers."""
        call = await self._call(tenant, rid)
        if call is None:
            provider = self._passthrough(rid)
            answer = await provider.forward(f"/responses/{rid}/cancel", b"", stream=False)
            return Response(answer.body, status_code=answer.status, media_type=JSON)
        await self.results.cancel(call)
        result = await self.results.get_result(call.id)
        if result is not None and result.status != background.CANCELLED_STATUS:
            raise BadRequest("Cannot cancel a completed response.", param="response_id", code="invalid_request")
        return Response(await self._shown(rid, call), media_type=JSON)

    async def _call(self, tenant: str, rid: str) -> CallRecord | None:
        """The deferred call behind one of the router's ids (a 404 for another tenant's or an expired one); None
        for an id that is not the router's."""
        if not _ID.match(rid):
            raise NotFound(f"Response with id '{rid}' not found.", param="response_id", code="not_found")
        call_id = background.call_id_of(rid)
        if call_id is None:
            return None
        call = await self.results.get_call(call_id)
        if call is None or call.meta.tenant != tenant or call.meta.endpoint != "/responses":
            raise NotFound(f"Response with id '{rid}' not found.", param="response_id", code="not_found")
        return call

    async def _shown(self, rid: str, call: CallRecord) -> bytes:
        result = await self.results.get_result(call.id)
        model, created = call.meta.asked_model or call.meta.model, int(call.meta.received_at)
        if result is None:
            call = await self.results.get_call(call.id) or call
            status: background.Status = "queued" if call.state == CallState.QUEUED else "in_progress"
            return background.shell(rid, model, created, status)
        if result.status == background.CANCELLED_STATUS:
            return background.shell(rid, model, created, "cancelled")
        if result.status >= 400:
            return background.shell(rid, model, created, "failed", background.error_of(result.body))
        return background.completed(rid, result.body)

    def _passthrough(self, rid: str) -> Provider:
        """The upstream asked about an id the router did not give: the first that speaks the OpenAI API."""
        for config in self.upstreams.configs:
            if config.kind != "anthropic":
                return self.upstreams.providers[config.name]
        raise NotFound(f"Response with id '{rid}' not found.", param="response_id", code="not_found")
