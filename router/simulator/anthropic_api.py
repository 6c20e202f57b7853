"""Anthropic routes: Messages (plain and streamed) and Message Batches."""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from router.simulator import anthropic_bodies as bodies
from router.simulator import message_batches, streams
from router.simulator.errors import AnthropicError
from router.simulator.state import SimState
from router.simulator.web import SSE, admit, anthropic_injected, json_response, request_id


class MessageBatchList(msgspec.Struct, kw_only=True):
    """A page of `GET /v1/messages/batches`."""

    data: list[message_batches.MessageBatchObject]
    has_more: bool
    first_id: str | None
    last_id: str | None


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


def _batch_page(state: SimState, request: Request[Any, Any, Any]) -> MessageBatchList:
    query, jobs = request.query_params, list(state.message_batches.values())
    limit, after_id, before_id = query.get("limit", "20"), query.get("after_id"), query.get("before_id")
    page, more = message_batches.list_page(jobs, limit, after_id, before_id)
    now, base = time.time(), _base_url(request)
    data = [job.view(now, base) for job in page]
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return MessageBatchList(data=data, has_more=more, first_id=first, last_id=last)


def _cancel(state: SimState, job: message_batches.MessageBatchJob, now: float) -> None:
    already = job.cancel_at is not None
    if not job.cancel(now):
        raise AnthropicError(400, "invalid_request_error", f"Message batch {job.id} has already ended.")
    if not already:
        state.stats.batches_cancelled += 1


def message_routes(state: SimState) -> list[HTTPRouteHandler]:
    """`POST /v1/messages` and `POST /v1/messages/count_tokens` of one simulator instance."""

    @post("/v1/messages", status_code=200)
    async def messages(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        req = bodies.decode_messages(await admit(state, request, "/v1/messages", anthropic_injected))
        answer = bodies.message(req, outcomes=state.outcomes, cache=state.anthropic_cache)
        state.stats.billed_usage(answer.usage)
        if req.stream:
            events = streams.paced(streams.anthropic_events(answer), state.config.stream_chunk_delay_ms, state.stats)
            return Stream(events, media_type=SSE, headers={"cache-control": "no-cache", "request-id": request_id()})
        return json_response(answer, headers={"request-id": request_id()})

    @post("/v1/messages/count_tokens", status_code=200)
    async def count_tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
        raw = await admit(state, request, "/v1/messages/count_tokens", anthropic_injected)
        return json_response(bodies.count_tokens(raw), headers={"request-id": request_id()})

    return [messages, count_tokens]


def batch_routes(state: SimState) -> list[HTTPRouteHandler]:
    """The Message Batches handlers of one simulator instance."""

    def job_or_404(request: Request[Any, Any, Any]) -> message_batches.MessageBatchJob:
        batch_id: str = request.path_params["batch_id"]
        job = state.message_batches.get(batch_id)
        if job is None or job.deleted:
            raise AnthropicError(404, "not_found_error", f"Message batch {batch_id} not found.")
        return job

    @post("/v1/messages/batches", status_code=200)
    async def create_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        job = message_batches.create(
            await request.body(), state.stats, state.config, state.next_batch_seq(), state.outcomes,
            state.anthropic_cache,
        )  # fmt: skip
        state.message_batches[job.id] = job
        return json_response(job.view(time.time(), _base_url(request)))

    @get("/v1/messages/batches")
    async def list_batches(request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(_batch_page(state, request))

    @get("/v1/messages/batches/{batch_id:str}")
    async def retrieve_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        return json_response(job_or_404(request).view(time.time(), _base_url(request)))

    @post("/v1/messages/batches/{batch_id:str}/cancel", status_code=200)
    async def cancel_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        job, now = job_or_404(request), time.time()
        _cancel(state, job, now)
        return json_response(job.view(now, _base_url(request)))

    @delete("/v1/messages/batches/{batch_id:str}", status_code=200)
    async def delete_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
        job = job_or_404(request)
        if job.status(time.time()) != "ended":
            raise AnthropicError(
                400, "invalid_request_error", f"Message batch {job.id} cannot be deleted before processing ends."
            )
        job.deleted = True
        return json_response(message_batches.DeletedMessageBatch(id=job.id))

    @get("/v1/messages/batches/{batch_id:str}/results")
    async def results(request: Request[Any, Any, Any]) -> Response[bytes]:
        job = job_or_404(request)
        job.advance(time.time())
        if job.results is None:
            raise AnthropicError(
                400, "invalid_request_error", f"Message batch {job.id} has not ended; results are not available yet."
            )
        return Response(content=job.results, media_type="application/x-jsonl")

    return [create_batch, list_batches, retrieve_batch, cancel_batch, delete_batch, results]
