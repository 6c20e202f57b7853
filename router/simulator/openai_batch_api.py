"""OpenAI Files and Batches routes."""

from __future__ import annotations

import time
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import UploadFile
from litestar.handlers import HTTPRouteHandler

from router.simulator import azure, batches
from router.simulator.batch_input import CreateBatch
from router.simulator.errors import OpenAIError, describe_decode_error
from router.simulator.state import SimState
from router.simulator.store import FILE_PURPOSES, FileObject, FileRecord
from router.simulator.web import json_response

EXPIRES_AFTER_RANGE = (3600, 2_592_000)


class FileList(msgspec.Struct, kw_only=True):
    """`ListFilesResponse`."""

    object: str = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(msgspec.Struct, kw_only=True):
    """`DeleteFileResponse`."""

    id: str
    object: str = "file"
    deleted: bool = True


class BatchList(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`ListBatchesResponse`; `first_id`/`last_id` are left out of an empty page."""

    object: str
    data: list[batches.BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


_CREATE_BATCH = msgspec.json.Decoder(CreateBatch)


def _limit(request: Request[Any, Any, Any], default: int, maximum: int) -> int:
    raw = request.query_params.get("limit")
    try:
        limit = int(raw) if raw is not None else default
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise OpenAIError(
            400, f"Invalid 'limit': must be between 1 and {maximum}.", param="limit", code="invalid_value"
        )
    return limit


T = TypeVar("T")


def _page(items: list[T], ids: list[str], after: str | None, limit: int) -> tuple[list[T], bool]:
    start = ids.index(after) + 1 if after in ids else 0
    page = items[start : start + limit]
    return page, start + limit < len(items)


def _expires_after(form: Any) -> int | None:
    seconds = form.get("expires_after[seconds]")
    if seconds is None:
        return None
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        value = -1
    low, high = EXPIRES_AFTER_RANGE
    if form.get("expires_after[anchor]", "created_at") != "created_at" or not low <= value <= high:
        raise OpenAIError(
            400,
            f"Invalid 'expires_after': anchor must be 'created_at' and seconds between {low} and {high}.",
            param="expires_after",
            code="invalid_value",
        )
    return value


def _file_page(state: SimState, request: Request[Any, Any, Any]) -> FileList:
    now = time.time()
    for job in state.batches.values():  # batches that just finished write their files now
        job.advance(now, state.files, state.cache)
    purpose = request.query_params.get("purpose")
    files = [r.meta for r in state.files.all() if purpose is None or r.meta.purpose == purpose]
    if request.query_params.get("order", "desc") == "desc":
        files.reverse()
    after = request.query_params.get("after")
    page, more = _page(files, [f.id for f in files], after, _limit(request, 10_000, 10_000))
    first, last = (page[0].id, page[-1].id) if page else (None, None)
    return FileList(data=page, first_id=first, last_id=last, has_more=more)


async def _store_upload(state: SimState, request: Request[Any, Any, Any]) -> FileRecord:
    # The body first, then the form parsed from it: Litestar's streaming multipart parser leaves its spooled
    # temporary file open when the client goes away mid-upload (the file is kept in memory here anyway).
    await request.body()
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise OpenAIError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    purpose = form.get("purpose")
    if purpose not in FILE_PURPOSES:
        raise OpenAIError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose", code="invalid_value")
    content = await upload.read()
    await upload.close()
    state.stats.files_uploaded += 1
    return state.files.add(upload.filename or "upload", purpose, content, _expires_after(form))


def file_routes(state: SimState) -> list[HTTPRouteHandler]:
    """The Files handlers of one simulator instance."""

    def file_or_404(request: Request[Any, Any, Any]) -> FileRecord:
        file_id: str = request.path_params["file_id"]
        record = state.files.get(file_id)
        if record is None:
            raise OpenAIError(404, f"No such File object: {file_id}", param="id")
        return record

    @post(azure.api_paths("/files"), status_code=200)
    async def upload_file(request: Request[Any, Any, Any]) -> Response[bytes]:
        meta = (await _store_upload(state, request)).meta
        if azure.is_azure(request.url.path):  # Azure answers an upload `pending`; a retrieve shows it `processed`
            meta = msgspec.structs.replace(meta, status="pending")
        return json_response(meta)

    @get(azure.api_paths("/files"))
    async def list_files(request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(_file_page(state, request))

    @get(azure.api_paths("/files/{file_id:str}"))
    async def retrieve_file(request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(file_or_404(request).meta)

    @get(azure.api_paths("/files/{file_id:str}/content"))
    async def file_content(request: Request[Any, Any, Any]) -> Response[bytes]:
        return Response(content=file_or_404(request).content, media_type="application/octet-stream")

    @delete(azure.api_paths("/files/{file_id:str}"), status_code=200)
    async def delete_file(request: Request[Any, Any, Any]) -> Response[bytes]:
        record = file_or_404(request)
        state.files.delete(record.meta.id)
        return json_response(FileDeleted(id=record.meta.id))

    return [upload_file, list_files, retrieve_file, file_content, delete_file]


def _batch_page(state: SimState, request: Request[Any, Any, Any]) -> BatchList:
    jobs = list(reversed(state.batches.values()))
    page, more = _page(jobs, [j.id for j in jobs], request.query_params.get("after"), _limit(request, 20, 100))
    now = time.time()
    data = [job.view(now, state.files, state.cache) for job in page]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return BatchList(object="list", data=data, first_id=first, last_id=last, has_more=more)


def _cancel(state: SimState, job: batches.BatchJob, now: float) -> None:
    already = job.cancel_at is not None
    if not job.cancel(now):
        raise OpenAIError(
            400, f"Cannot cancel a batch with status '{job.status(now)}'.", param="batch_id", code="invalid_state"
        )
    if not already:
        state.stats.batches_cancelled += 1


def batch_routes(state: SimState) -> list[HTTPRouteHandler]:
    """The Batches handlers of one simulator instance."""

    def batch_or_404(request: Request[Any, Any, Any]) -> batches.BatchJob:
        batch_id: str = request.path_params["batch_id"]
        job = state.batches.get(batch_id)
        if job is None:
            raise OpenAIError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        return job

    def view(job: batches.BatchJob, now: float) -> Response[bytes]:
        return json_response(job.view(now, state.files, state.cache))

    @post(azure.api_paths("/batches"), status_code=200)
    async def create_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            req = _CREATE_BATCH.decode(await request.body())
        except (msgspec.DecodeError, RecursionError) as exc:
            message, param, code = describe_decode_error(exc)
            raise OpenAIError(400, message, param=param, code=code) from exc
        on_azure = azure.is_azure(request.url.path)
        if on_azure:  # Azure's documented form is `/chat/completions`, for the batch and its lines alike
            req = msgspec.structs.replace(req, endpoint=azure.batch_url(req.endpoint))
        seq = state.next_batch_seq()
        job = batches.create(req, state.files, state.stats, state.config, seq, state.outcomes, azure=on_azure)
        state.batches[job.id] = job
        return view(job, time.time())

    @get(azure.api_paths("/batches"))
    async def list_batches(request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(_batch_page(state, request))

    @get(azure.api_paths("/batches/{batch_id:str}"))
    async def retrieve_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        return view(batch_or_404(request), time.time())

    @post(azure.api_paths("/batches/{batch_id:str}/cancel"), status_code=200)
    async def cancel_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        job, now = batch_or_404(request), time.time()
        _cancel(state, job, now)
        return view(job, now)

    return [create_batch, list_batches, retrieve_batch, cancel_batch]
