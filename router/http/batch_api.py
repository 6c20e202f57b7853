"""The native Batch API through the router: `/v1/files` and `/v1/batches` passed to an OpenAI upstream with the
router's key. Each tenant sees only its own files and batches; anything else is a 404, as if it did not exist."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath
from litestar.response import Stream
from redis.exceptions import RedisError

from router.core.errors import BadRequest, NotFound, RouterError, UpstreamError, UpstreamUnavailable
from router.core.schema import decode_view, encoder
from router.http.disconnect import ClientDisconnected
from router.http.error_handlers import JSON
from router.passthrough.native_batches import (
    TERMINAL,
    BatchView,
    Kind,
    NativeUpstream,
    Owned,
    batch_decoder,
    file_decoder,
    record_outputs,
)
from router.providers.base import UpstreamResponse
from router.providers.openai import METADATA_KEY

if TYPE_CHECKING:
    from collections.abc import Mapping

    from router.core.settings import Settings
    from router.deferred.tenants import Tenants
    from router.http.auth import Auth
    from router.passthrough.native_batches import NativeStore, NativeWatcher
    from router.providers.upstreams import Upstreams

log = logging.getLogger(__name__)
T = TypeVar("T")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
NATIVE_HOLD_S = 26 * 3600.0
"""A native batch's budget reservation lapses this long after creation (its 24 h window, then its booking)."""
REFRESH_CONCURRENCY = 8  # running batches of one list page re-read from the upstream at once
FILE_LIMIT, BATCH_LIMIT = (10_000, 10_000), (20, 100)  # (default, maximum) page sizes, as OpenAI's


class FileList(msgspec.Struct, kw_only=True):
    """`ListFilesResponse`."""

    object: str = "list"
    data: list[msgspec.Raw]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`ListBatchesResponse`; `first_id` / `last_id` are left out of an empty page."""

    object: str  # no default: omit_defaults would leave it out
    data: list[msgspec.Raw]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class _CreateView(msgspec.Struct):
    """What the router reads of a `POST /v1/batches` body (forwarded as sent)."""

    input_file_id: str | None = None
    metadata: dict[str, Any] | None = None


_create_decoder = msgspec.json.Decoder(_CreateView)


def file_not_found(file_id: str, param: str = "id") -> NotFound:
    """The 404 for a file the tenant does not own, worded as OpenAI words a missing one."""
    return NotFound(f"No such File object: {file_id}", param=param)


def batch_not_found(batch_id: str) -> NotFound:
    """The 404 for a batch the tenant does not own, worded as OpenAI words a missing one."""
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes, upstream: str) -> T:
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise UpstreamUnavailable(f"The upstream '{upstream}' sent an answer that could not be read: {exc}") from exc


def _passed(answer: UpstreamResponse) -> dict[str, str]:
    return {name: value for name, value in answer.headers if name == "x-request-id"}


def _answer(answer: UpstreamResponse) -> Response[bytes]:
    """The upstream's answer as it came, an error status raised as `UpstreamError` (passed through)."""
    if answer.status >= 400:
        raise UpstreamError(answer.status, answer.body, headers=_passed(answer))
    return Response(answer.body, status_code=answer.status, media_type=JSON, headers=_passed(answer))


class BatchApi:
    """The native Batch API's routes, each a method: the tenant's records in Redis, the calls to its upstream."""

    def __init__(
        self,
        auth: Auth,
        upstreams: Upstreams,
        store: NativeStore,
        natives: Mapping[str, NativeUpstream],
        watcher: NativeWatcher,
        settings: Settings,
        tenants: Tenants,
    ) -> None:
        self.tenants = tenants
        self.auth = auth
        self.upstreams = upstreams
        self.store = store
        self.natives = dict(natives)
        """The upstreams the native Batch API reaches; new files go to the first."""
        self.default = next(iter(self.natives), None)
        self.watcher = watcher
        self.settings = settings

    async def _owned(self, tenant: str, kind: Kind, object_id: str) -> tuple[Owned, NativeUpstream]:
        """The tenant's file or batch and its upstream, or the 404 OpenAI gives for one that does not exist."""
        owned = await self.store.get(tenant, kind, object_id) if _ID.match(object_id) else None
        upstream = self.natives.get(owned.upstream) if owned is not None else None
        if owned is None or upstream is None:
            raise file_not_found(object_id) if kind == "file" else batch_not_found(object_id)
        return owned, upstream

    async def upload_file(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`POST /v1/files`: the multipart body streamed to the upstream; the file is the caller's tenant's."""
        tenant = self.auth.authenticate(request.headers)
        upstream = self.natives.get(self.default) if self.default else None
        if upstream is None:
            raise NotFound("The native Batch API needs an upstream of kind `openai` with `batch: true`.",
                           code="unknown_url")  # fmt: skip
        limit = self.settings.limits.max_file_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestEntityTooLarge()
        headers = self.upstreams.passed_headers(upstream.name, request.headers, tenant)
        headers["content-type"] = request.headers.get("content-type", "application/octet-stream")
        if declared is not None:
            headers["content-length"] = declared
        body = _Upload(request, limit)
        try:
            answer = await upstream.upload(body, headers)
        except Exception:
            if body.too_large:
                raise RequestEntityTooLarge() from None
            if body.broken:
                raise ClientDisconnected() from None
            raise
        if answer.status >= 400:
            return _answer(answer)
        view = _decode(file_decoder, answer.body, upstream.name)
        try:
            await self.store.record_file(tenant, upstream.name, answer.body, view)
        except RedisError:
            # Unrecorded, the file would be nobody's: take it back rather than leave it unreachable upstream.
            with contextlib.suppress(RouterError):
                await upstream.call("DELETE", f"/files/{view.id}")
            raise
        return _answer(answer)

    async def list_files(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`GET /v1/files`: the tenant's files, newest first unless `order=asc`, paged with `after` and `limit`."""
        tenant = self.auth.authenticate(request.headers)
        query = request.query_params
        limit = _limit(query.get("limit"), FILE_LIMIT)
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise BadRequest("Invalid 'order': must be 'asc' or 'desc'.", param="order", code="invalid_value")
        purpose = query.get("purpose")
        page, more = await self.store.page(
            tenant, "file", after=query.get("after"), limit=limit, ascending=order == "asc",
            keep=lambda owned: purpose is None or owned.purpose == purpose,
        )  # fmt: skip
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        body = FileList(data=[msgspec.Raw(o.object) for o in page], first_id=first, last_id=last, has_more=more)
        return Response(encoder.encode(body), media_type=JSON)

    async def retrieve_file(self, request: Request[Any, Any, Any], file_id: str) -> Response[bytes]:
        """`GET /v1/files/{id}`."""
        tenant = self.auth.authenticate(request.headers)
        _, upstream = await self._owned(tenant, "file", file_id)
        answer = await upstream.call("GET", f"/files/{file_id}")
        if answer.status == 200:
            await self.store.update(tenant, "file", file_id, object=answer.body)
        return _answer(answer)

    async def file_content(self, request: Request[Any, Any, Any], file_id: str) -> Stream:
        """`GET /v1/files/{id}/content`, streamed from the upstream as it comes."""
        tenant = self.auth.authenticate(request.headers)
        _, upstream = await self._owned(tenant, "file", file_id)
        answer = await upstream.download(f"/files/{file_id}/content")
        if answer.stream is None:
            raise UpstreamError(answer.status, answer.body, headers=_passed(answer))
        headers = dict(answer.headers)
        media_type = headers.pop("content-type", "application/octet-stream")
        return Stream(answer.stream, status_code=200, headers=headers, media_type=media_type)

    async def delete_file(self, request: Request[Any, Any, Any], file_id: str) -> Response[bytes]:
        """`DELETE /v1/files/{id}`: deleted upstream, then forgotten."""
        tenant = self.auth.authenticate(request.headers)
        owned, upstream = await self._owned(tenant, "file", file_id)
        if owned.batch:  # a batch's output or errors: its usage is read from this file, so book it first
            await self.watcher.settle(tenant, owned.batch)
        answer = await upstream.call("DELETE", f"/files/{file_id}")
        if answer.status == 200:
            await self.store.forget(tenant, "file", file_id)
        return _answer(answer)

    async def create_batch(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`POST /v1/batches` on the upstream that holds the input file; the batch is recorded and watched."""
        tenant = self.auth.authenticate(request.headers)
        body = await request.body()
        decode_view(body, self.settings.limits.max_json_depth)  # the depth and JSON checks every body gets
        try:
            view = _create_decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"Invalid request body: {exc}") from exc
        if not view.input_file_id:
            raise BadRequest("Missing required parameter: 'input_file_id'.", param="input_file_id",
                             code="missing_required_parameter")  # fmt: skip
        if view.metadata and METADATA_KEY in view.metadata:
            raise BadRequest(f"The metadata key '{METADATA_KEY}' is reserved by the router.", param="metadata",
                             code="invalid_value")  # fmt: skip
        try:
            _, upstream = await self._owned(tenant, "file", view.input_file_id)
        except NotFound:
            raise file_not_found(view.input_file_id, param="input_file_id") from None
        headers = self.upstreams.passed_headers(upstream.name, request.headers, tenant)
        hold = await self._reserve(tenant, upstream, view.input_file_id)
        try:
            answer = await upstream.call("POST", "/batches", body=body, headers=headers)
        except BaseException:
            if hold:
                await self.tenants.settle(tenant, hold, 0.0)
            raise
        if answer.status >= 400:
            if hold:
                await self.tenants.settle(tenant, hold, 0.0)
            return _answer(answer)
        batch = _decode(batch_decoder, answer.body, upstream.name)
        first_poll = time.time() + self.settings.batch.poll_interval_s
        try:
            await self.store.record_batch(tenant, upstream.name, answer.body, batch, first_poll, reservation=hold)
        except RedisError:
            # Unrecorded, its usage would never be booked: cancel it rather than let it run unaccounted.
            with contextlib.suppress(RouterError):
                await upstream.call("POST", f"/batches/{batch.id}/cancel")
            raise
        return _answer(answer)

    async def _reserve(self, tenant: str, upstream: NativeUpstream, file_id: str) -> str:
        """Reserve the worst case of the input file's lines against the tenant's daily budget (its id, settled when
        the batch is booked), or raise the budget's 429; "" when the tenant has no budget."""
        if not self.tenants.budgeted(tenant):
            return ""
        async with contextlib.aclosing(upstream.file_lines(file_id)) as lines:
            worst = await self.tenants.worst_case_lines(lines, self.settings.limits.max_json_depth)
        hold = "nb_" + secrets.token_hex(10)
        refusal = await self.tenants.reserve_budget(tenant, hold, worst, time.time() + NATIVE_HOLD_S)
        if refusal is not None:
            raise self.tenants.refuse(tenant, refusal)
        return hold

    async def observe(self, tenant: str, owned: Owned, upstream: NativeUpstream, raw: bytes) -> None:
        """A fresh `Batch` object seen by a handler: keep it; once it ended, give its files to the tenant and have the
        watcher book it now rather than at its next poll."""
        store = self.store
        view: BatchView = _decode(batch_decoder, raw, upstream.name)
        await store.update(tenant, "batch", owned.id, object=raw)
        if view.status in TERMINAL and not owned.booked:
            if not owned.outputs:
                try:
                    await record_outputs(store, upstream, tenant, view)
                except RouterError as exc:  # the caller still gets its batch; the watcher records the files later
                    log.warning("could not record the files of native batch %s yet: %s", owned.id, exc.message)
            await store.schedule(tenant, owned.id, time.time())

    async def retrieve_batch(self, request: Request[Any, Any, Any], batch_id: str) -> Response[bytes]:
        """`GET /v1/batches/{id}`."""
        tenant = self.auth.authenticate(request.headers)
        owned, upstream = await self._owned(tenant, "batch", batch_id)
        answer = await upstream.call("GET", f"/batches/{batch_id}")
        if answer.status == 200:
            await self.observe(tenant, owned, upstream, answer.body)
        return _answer(answer)

    async def cancel_batch(self, request: Request[Any, Any, Any], batch_id: str) -> Response[bytes]:
        """`POST /v1/batches/{id}/cancel`; the watcher books what ran before the cancel took effect."""
        tenant = self.auth.authenticate(request.headers)
        owned, upstream = await self._owned(tenant, "batch", batch_id)
        headers = self.upstreams.passed_headers(upstream.name, request.headers, tenant)
        answer = await upstream.call("POST", f"/batches/{batch_id}/cancel", headers=headers)
        if answer.status == 200:
            await self.observe(tenant, owned, upstream, answer.body)
        return _answer(answer)

    async def list_batches(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """`GET /v1/batches`: the tenant's batches, newest first; those still running are read fresh."""
        tenant = self.auth.authenticate(request.headers)
        query = request.query_params
        limit = _limit(query.get("limit"), BATCH_LIMIT)
        page, more = await self.store.page(
            tenant, "batch", after=query.get("after"), limit=limit, ascending=False, keep=lambda _: True
        )
        gate = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def fresh(owned: Owned) -> bytes:
            upstream = self.natives.get(owned.upstream)
            if upstream is None or _decode(batch_decoder, owned.object, owned.upstream).status in TERMINAL:
                return owned.object  # an ended batch no longer changes
            async with gate:
                answer = await upstream.call("GET", f"/batches/{owned.id}")
            if answer.status != 200:
                return owned.object
            await self.observe(tenant, owned, upstream, answer.body)
            return answer.body

        data = await asyncio.gather(*(fresh(owned) for owned in page))
        first, last = (page[0].id, page[-1].id) if page else (None, None)
        body = BatchList(object="list", data=[msgspec.Raw(raw) for raw in data], first_id=first, last_id=last,
                         has_more=more)  # fmt: skip
        return Response(encoder.encode(body), media_type=JSON)


def _limit(raw: str | None, bounds: tuple[int, int]) -> int:
    default, maximum = bounds
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise BadRequest(f"Invalid 'limit': must be between 1 and {maximum}.", param="limit", code="invalid_value")
    return limit


class _Upload:
    """The caller's body as it arrives, counted against the limit. A body that breaks off or grows past the limit
    raises inside the upstream request, which aborts it (a body merely cut short would leave the upstream waiting
    for the bytes its `Content-Length` promised)."""

    def __init__(self, request: Request[Any, Any, Any], limit: int) -> None:
        self.request = request
        self.limit = limit
        self.too_large = False
        self.broken = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        try:
            async for chunk in self.request.stream():
                total += len(chunk)
                if total > self.limit:
                    self.too_large = True
                    raise RequestEntityTooLarge()
                if chunk:
                    yield chunk
        except RequestEntityTooLarge:
            raise
        except Exception:
            self.broken = True  # the caller went away mid-upload
            raise


def make_handlers(api: BatchApi) -> list[Any]:
    """The Files and Batches route handlers, each a few lines over `api`."""

    # No framework body limit here: `_Upload` enforces `limits.max_file_bytes` on the stream itself.
    @post(["/v1/files", "/files"], status_code=200, request_max_body_size=None)
    async def files_upload(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.upload_file(request)

    @get(["/v1/files", "/files"])
    async def files_list(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.list_files(request)

    @get(["/v1/files/{file_id:str}", "/files/{file_id:str}"])
    async def files_retrieve(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Response[bytes]:
        return await api.retrieve_file(request, file_id)

    @get(["/v1/files/{file_id:str}/content", "/files/{file_id:str}/content"])
    async def files_content(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Stream:
        return await api.file_content(request, file_id)

    @delete(["/v1/files/{file_id:str}", "/files/{file_id:str}"], status_code=200)
    async def files_delete(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Response[bytes]:
        return await api.delete_file(request, file_id)

    @post(["/v1/batches", "/batches"], status_code=200)
    async def batches_create(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.create_batch(request)

    @get(["/v1/batches", "/batches"])
    async def batches_list(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await api.list_batches(request)

    @get(["/v1/batches/{batch_id:str}", "/batches/{batch_id:str}"])
    async def batches_retrieve(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        return await api.retrieve_batch(request, batch_id)

    @post(["/v1/batches/{batch_id:str}/cancel", "/batches/{batch_id:str}/cancel"], status_code=200)
    async def batches_cancel(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        return await api.cancel_batch(request, batch_id)

    return [files_upload, files_list, files_retrieve, files_content, files_delete,
            batches_create, batches_list, batches_retrieve, batches_cancel]  # fmt: skip
