"""Anthropic's own API through the router: `/v1/messages` in both lanes, token counting, and Message Batches
passed through per tenant; every error on these routes in Anthropic's shape, which the `anthropic` SDKs read.

A `/v1/messages` call is admitted like any other (`Admission.admit`: `X-Deadline`, policies, lanes); its body is
sent to an Anthropic upstream untranslated, in real time or as a request of the Message Batch its model's chat
completions go into (`keys.queue_endpoint`), and its answer comes back as Anthropic wrote it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.exceptions import HTTPException
from litestar.params import FromPath
from litestar.response import Stream
from litestar.types import ExceptionHandlersMap
from redis.exceptions import RedisError

from router.core.errors import BadRequest, NotFound, RouterError, UpstreamError
from router.core.jsondepth import too_deep
from router.core.schema import as_anthropic_error, decode_view, nested_too_deep
from router.http import error_handlers
from router.http.admission import Arrival
from router.http.disconnect import unless_disconnected
from router.http.forward import forward_realtime
from router.passthrough.message_batches import Owner
from router.providers.anthropic import AnthropicProvider
from router.providers.base import UpstreamResponse

if TYPE_CHECKING:
    from router.core.settings import Settings
    from router.deferred.tenants import Tenants
    from router.http.admission import Admission
    from router.http.auth import Auth
    from router.http.reports import Reports
    from router.passthrough.message_batches import Owners
    from router.providers.upstreams import Upstreams

JSON = "application/json"
MAX_LIST_LIMIT = 1000
MESSAGE_BATCH_HOLD_S = 26 * 3600.0
"""A Message Batch's budget reservation lapses this long after creation (its 24 h window, then its booking)."""
LIST_CONCURRENCY = 8
"""Batches of one list page fetched from the upstream at once."""

Handler = Callable[[Request[Any, Any, Any], Any], Response[bytes]]


def anthropic_shaped(handler: Handler) -> Handler:
    """One of the app's error handlers, its answer re-shaped as an Anthropic error (status and headers kept)."""

    def handle(request: Request[Any, Any, Any], exc: Any) -> Response[bytes]:
        response = handler(request, exc)
        status = response.status_code or 500
        if status < 400 or not isinstance(response.content, bytes) or not response.content:
            return response
        body = as_anthropic_error(status, response.content)
        return Response(body, status_code=status, headers=response.headers, media_type=JSON)

    return handle


ERRORS: ExceptionHandlersMap = {
    RouterError: anthropic_shaped(error_handlers.router_error_handler),
    RedisError: anthropic_shaped(error_handlers.redis_error_handler),
    HTTPException: anthropic_shaped(error_handlers.http_error_handler),
    Exception: anthropic_shaped(error_handlers.internal_error_handler),
}
"""Route-level error handlers (they take precedence over the app's; `ClientDisconnected` keeps the app's)."""


class _Params(msgspec.Struct):
    model: str | None = None


class _BatchRequest(msgspec.Struct):
    params: _Params = msgspec.field(default_factory=_Params)


class _CreateBatch(msgspec.Struct):
    requests: list[_BatchRequest] = msgspec.field(default_factory=list)


class _BatchId(msgspec.Struct):
    id: str


_create_decoder = msgspec.json.Decoder(_CreateBatch)
_id_decoder = msgspec.json.Decoder(_BatchId)
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


class MessagesApi:
    """Anthropic's routes, each a method: calls admitted like any other, Message Batches passed through per tenant."""

    def __init__(
        self,
        auth: Auth,
        admission: Admission,
        reports: Reports,
        upstreams: Upstreams,
        owners: Owners,
        settings: Settings,
        tenants: Tenants,
    ) -> None:
        self.tenants = tenants
        self.auth = auth
        self.admission = admission
        self.reports = reports
        self.upstreams = upstreams
        self.owners = owners
        self.settings = settings

    def _anthropic(self, model: str) -> AnthropicProvider:
        """The Anthropic upstream serving `model`, or the 400 saying that its upstream speaks another API."""
        provider = self.upstreams.for_model(model)
        if not isinstance(provider, AnthropicProvider):
            raise BadRequest(
                f"The model `{model}` is served by the upstream '{provider.name}', which speaks the OpenAI API; "
                "Message Batches need an upstream of kind `anthropic`.",
                code="unsupported_endpoint",
            )
        return provider

    def _batch_provider(self, body: bytes) -> AnthropicProvider:
        """The one Anthropic upstream that serves every model of a batch being created."""
        if too_deep(body, self.settings.limits.max_json_depth):
            raise nested_too_deep(self.settings.limits.max_json_depth)
        try:
            batch = _create_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadRequest(f"Invalid request body: {exc}") from exc
        models = {request.params.model for request in batch.requests}
        if not batch.requests or None in models:
            raise BadRequest("requests: every request needs `params.model`.", param="requests")
        providers = {provider.name: provider for provider in (self._anthropic(m) for m in models if m)}
        if len(providers) != 1:
            raise BadRequest(
                f"requests: the models of one batch must be served by one upstream; these go to {sorted(providers)}.",
                param="requests",
            )
        return next(iter(providers.values()))

    async def owned(self, request: Request[Any, Any, Any], batch_id: str) -> tuple[Owner, AnthropicProvider]:
        """The caller's own batch and its upstream; any other id is a 404, whoever owns it."""
        tenant = self.auth.authenticate(request.headers)
        owner = await self.owners.owner(batch_id)
        provider = self.upstreams.providers.get(owner.upstream) if owner is not None else None
        if owner is None or owner.tenant != tenant or not isinstance(provider, AnthropicProvider):
            raise NotFound(f"Message batch {batch_id} not found.", param="message_batch_id")
        return owner, provider

    async def count_tokens(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`POST /v1/messages/count_tokens`, passed to the model's Anthropic upstream (free: nothing is booked)."""
        tenant = self.auth.authenticate(request.headers)
        body = await request.body()
        view = decode_view(body, self.settings.limits.max_json_depth)
        if not view.model:
            raise BadRequest("model: Field required", param="model", code="missing_required_parameter")
        provider = self.upstreams.for_model(view.model)
        passed = self.upstreams.passed_headers(provider.name, request.headers, tenant)
        forward = forward_realtime(provider, "/messages/count_tokens", body, stream=False, headers=passed)
        answer = await unless_disconnected(request.receive, forward)
        if answer.status >= 400:
            raise UpstreamError(answer.status, answer.body, headers=_headers(answer))
        return Response(answer.body, headers=_headers(answer), media_type=JSON)

    async def create_batch(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`POST /v1/messages/batches`: created at the upstream of its models, recorded as the caller's."""
        tenant = self.auth.authenticate(request.headers)
        body = await request.body()
        provider = self._batch_provider(body)
        hold = ""
        if self.tenants.budgeted(tenant):  # the worst case of every request, settled when the batch is booked
            hold = "mb_" + secrets.token_hex(10)
            worst = self.tenants.worst_case_requests(body, self.settings.limits.max_json_depth)
            refusal = await self.tenants.reserve_budget(tenant, hold, worst, time.time() + MESSAGE_BATCH_HOLD_S)
            if refusal is not None:
                raise self.tenants.refuse(tenant, refusal)
        try:
            answer = await provider.native("POST", "/messages/batches", content=body)
        except BaseException:
            if hold:
                await self.tenants.settle(tenant, hold, 0.0)
            raise
        if answer.status != 200 and hold:
            await self.tenants.settle(tenant, hold, 0.0)
        if answer.status == 200:
            now = time.time()
            owner = Owner(tenant=tenant, upstream=provider.name, created_at=now, reservation=hold)
            first_check = now + self.settings.batch.poll_interval_s
            await self.owners.record(_id_decoder.decode(answer.body).id, owner, first_check)
        return _answer(request, answer)

    async def list_batches(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`GET /v1/messages/batches`: the caller's own batches, newest first, each as the upstream has it now."""
        tenant = self.auth.authenticate(request.headers)
        query = request.query_params
        limit = _limit(query.get("limit"))
        ids, more = await self.owners.page(tenant, limit, query.get("after_id"), query.get("before_id"))
        slots = asyncio.Semaphore(LIST_CONCURRENCY)

        async def fetch(batch_id: str) -> dict[str, Any] | None:
            owner = await self.owners.owner(batch_id)
            provider = self.upstreams.providers.get(owner.upstream) if owner is not None else None
            if not isinstance(provider, AnthropicProvider):
                return None
            async with slots:
                answer = await provider.native("GET", f"/messages/batches/{batch_id}")
            if answer.status == 404:  # deleted at the provider
                return None
            if answer.status >= 400:
                raise UpstreamError(answer.status, answer.body, headers=_headers(answer))
            return _local(request, _object_decoder.decode(answer.body))

        found = [batch for batch in await asyncio.gather(*map(fetch, ids)) if batch is not None]
        first, last = (ids[0], ids[-1]) if ids else (None, None)
        return Response(_encoder.encode({"data": found, "has_more": more, "first_id": first, "last_id": last}),
                        media_type=JSON)  # fmt: skip

    async def batch_results(self, request: Request[Any, Any, Any], batch_id: str) -> Stream:
        """`GET /v1/messages/batches/{id}/results`: the upstream's JSONL, relayed as it arrives."""
        _, provider = await self.owned(request, batch_id)
        answer = await provider.native_stream(f"/messages/batches/{batch_id}/results")
        if answer.stream is None:
            raise UpstreamError(answer.status, answer.body, headers=_headers(answer))
        media = dict(answer.headers).get("content-type", "application/binary")
        return Stream(answer.stream, status_code=200, headers=_headers(answer), media_type=media)

    async def list_models(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`GET /v1/models` asked by an Anthropic client (it sends `anthropic-version`): Anthropic's page shape and
        errors, over the same models an OpenAI client is shown."""
        try:
            self.auth.authenticate(request.headers)
            query = request.query_params
            page = model_page(await self.reports.list_models(), _limit(query.get("limit")), query.get("after_id"),
                              query.get("before_id"))  # fmt: skip
        except RouterError as exc:
            return ERRORS[RouterError](request, exc)
        return Response(page, media_type=JSON)

    async def describe_model(self, request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
        """`GET /v1/models/{id}` asked by an Anthropic client: the model as Anthropic's `ModelInfo`."""
        try:
            self.auth.authenticate(request.headers)
            item = _object_decoder.decode(await self.reports.describe_model(model_id))
        except RouterError as exc:
            return ERRORS[RouterError](request, exc)
        return Response(_encoder.encode(_model_info(item | {"id": item.get("id", model_id)})), media_type=JSON)


def _local(request: Request[Any, Any, Any], batch: dict[str, Any]) -> dict[str, Any]:
    """A batch object whose `results_url` points at this router (the SDK fetches it with the caller's key)."""
    if batch.get("results_url") and isinstance(batch.get("id"), str):
        base = str(request.base_url).rstrip("/")
        return batch | {"results_url": f"{base}/v1/messages/batches/{batch['id']}/results"}
    return batch


def _answer(request: Request[Any, Any, Any], answer: UpstreamResponse) -> Response[bytes]:
    """An upstream batch object as the caller's answer, or its error (raised, so it is Anthropic-shaped)."""
    if answer.status >= 400:
        raise UpstreamError(answer.status, answer.body, headers=_headers(answer))
    try:
        batch = _object_decoder.decode(answer.body)
    except (msgspec.DecodeError, RecursionError):
        return Response(answer.body, status_code=answer.status, headers=_headers(answer), media_type=JSON)
    body = _encoder.encode(_local(request, batch))
    return Response(body, status_code=answer.status, headers=_headers(answer), media_type=JSON)


def _headers(answer: UpstreamResponse) -> dict[str, str]:
    return {name: value for name, value in answer.headers if name != "content-type"}


def _limit(raw: str | None) -> int:
    limit = int(raw) if raw is not None and raw.isdigit() else (20 if raw is None else 0)
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequest(f"limit: must be between 1 and {MAX_LIST_LIMIT}.", param="limit")
    return limit


def _model_info(item: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI-shaped model (`id`, `created`) as Anthropic's `ModelInfo`."""
    created = item.get("created")
    stamp = datetime.fromtimestamp(created if isinstance(created, int) and created >= 0 else 0, UTC)
    name = item.get("display_name")
    return {
        "type": "model",
        "id": item["id"],
        "display_name": name if isinstance(name, str) else item["id"],
        "created_at": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def model_page(listed: bytes, limit: int, after_id: str | None, before_id: str | None) -> bytes:
    """The router's model list (OpenAI's shape) as one page of Anthropic's `GET /v1/models`: newest first,
    `after_id` / `before_id` cursors, `has_more`, `first_id` and `last_id`."""
    items = [i for i in _object_decoder.decode(listed).get("data", []) if isinstance(i, dict) and "id" in i]
    models = sorted(map(_model_info, items), key=lambda m: (m["created_at"], m["id"]), reverse=True)
    ids = [m["id"] for m in models]
    if after_id is not None and before_id is not None:
        raise BadRequest("Only one of after_id and before_id may be given.", param="after_id")
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(ids)
        page, more = models[start : start + limit], start + limit < len(models)
    elif before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        page, more = models[max(0, end - limit) : end], end - limit > 0
    else:
        page, more = models[:limit], limit < len(models)
    first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
    return _encoder.encode({"data": page, "has_more": more, "first_id": first, "last_id": last})


def make_handlers(api: MessagesApi) -> list[Any]:
    """The handlers of Anthropic's routes, each a few lines over `api`."""

    @post(["/v1/messages"], status_code=200, exception_handlers=ERRORS)
    async def messages(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        started = time.perf_counter()
        tenant = api.auth.authenticate(request.headers)
        arrival = Arrival(
            tenant=tenant, endpoint="/messages", body=await request.body(), headers=request.headers, started=started
        )
        return await api.admission.admit(arrival, request.receive)

    @post(["/v1/messages/count_tokens"], status_code=200, exception_handlers=ERRORS)
    async def tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.count_tokens(request)

    @post(["/v1/messages/batches"], status_code=200, exception_handlers=ERRORS)
    async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.create_batch(request)

    @get(["/v1/messages/batches"], exception_handlers=ERRORS)
    async def listing(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.list_batches(request)

    @get(["/v1/messages/batches/{batch_id:str}"], exception_handlers=ERRORS)
    async def retrieve(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        _, provider = await api.owned(request, batch_id)
        return _answer(request, await provider.native("GET", f"/messages/batches/{batch_id}"))

    @post(["/v1/messages/batches/{batch_id:str}/cancel"], status_code=200, exception_handlers=ERRORS)
    async def cancel(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        _, provider = await api.owned(request, batch_id)
        return _answer(request, await provider.native("POST", f"/messages/batches/{batch_id}/cancel"))

    @delete(["/v1/messages/batches/{batch_id:str}"], status_code=200, exception_handlers=ERRORS)
    async def remove(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        owner, provider = await api.owned(request, batch_id)
        answer = await provider.native("DELETE", f"/messages/batches/{batch_id}")
        if answer.status == 200:
            await api.owners.forget(batch_id, owner.tenant)
        return _answer(request, answer)

    @get(["/v1/messages/batches/{batch_id:str}/results"], exception_handlers=ERRORS)
    async def results(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Stream:
        return await api.batch_results(request, batch_id)

    return [messages, tokens, create, listing, retrieve, cancel, remove, results]
