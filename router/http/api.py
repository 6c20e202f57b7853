"""Litestar handlers of the OpenAI routes, each a few lines over a service: `auth` (who calls), `admission` (the
lane, then `relay` or `delivery`), `delivery.fetch_deferred`, and the gateway's own reports. Errors become JSON in
`error_handlers`; Anthropic's routes are in `messages_api`, the native Batch API's in `batch_api`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from router.http import admission, messages_api, reports
from router.http.auth import authenticate, authorize_metrics
from router.http.delivery import fetch_deferred
from router.http.error_handlers import JSON
from router.http.model_router import decode_feedback

if TYPE_CHECKING:
    from router.http.gateway import Gateway


async def list_models(gateway: Gateway, request: Request[Any, Any, Any]) -> Response[bytes]:
    """`GET /v1/models`, in Anthropic's shape when an Anthropic SDK asks (`anthropic-version`)."""
    if messages_api.ANTHROPIC_VERSION in request.headers:
        return await messages_api.list_models(gateway, request)
    authenticate(gateway, request.headers)
    return Response(await reports.list_models(gateway), media_type=JSON)


async def describe_model(gateway: Gateway, request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
    """`GET /v1/models/{id}`, in Anthropic's shape when an Anthropic SDK asks."""
    if messages_api.ANTHROPIC_VERSION in request.headers:
        return await messages_api.describe_model(gateway, request, model_id)
    authenticate(gateway, request.headers)
    return Response(await reports.describe_model(gateway, model_id), media_type=JSON)


def model_route_handlers(gateway: Gateway) -> list[Any]:
    """`POST /v1/feedback`: a caller's score of a routed call's answer, booked as model-route evidence."""

    @post(["/v1/feedback"], status_code=200)
    async def feedback(request: Request[Any, Any, Any]) -> Response[bytes]:
        tenant = authenticate(gateway, request.headers)
        scored = decode_feedback(await request.body())
        return Response(msgspec.json.encode(await gateway.model_router.feedback(tenant, scored)), media_type=JSON)

    return [feedback]


def make_handlers(gateway: Gateway) -> list[Any]:
    """The route handlers, closed over the gateway they serve (Anthropic's own routes: `router.http.messages_api`)."""

    async def admit(request: Request[Any, Any, Any], endpoint: str) -> Response[bytes] | Stream:
        started = time.perf_counter()
        tenant = authenticate(gateway, request.headers)
        arrival = admission.Arrival(
            tenant=tenant, endpoint=endpoint, body=await request.body(), headers=request.headers, started=started
        )
        return await admission.admit(gateway, arrival, request.receive)

    @post(["/v1/chat/completions", "/chat/completions"], status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(request, "/chat/completions")

    @post(["/v1/completions", "/completions"], status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(request, "/completions")

    @post(["/v1/embeddings", "/embeddings"], status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(request, "/embeddings")

    @post(["/v1/responses", "/responses"], status_code=200)
    async def responses(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        return await admit(request, "/responses")

    @get(["/v1/models", "/models"])
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await list_models(gateway, request)

    @get(["/v1/models/{model_id:str}", "/models/{model_id:str}"])
    async def model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
        return await describe_model(gateway, request, model_id)

    @get(["/v1/deferred/{call_id:str}"])
    async def deferred(
        request: Request[Any, Any, Any], call_id: FromPath[str], wait: FromQuery[float] = 0.0
    ) -> Response[bytes] | Stream:
        tenant = authenticate(gateway, request.headers)
        return await fetch_deferred(gateway, request.receive, call_id, tenant, wait)

    @get(["/v1/usage"])
    async def usage(request: Request[Any, Any, Any], day: FromQuery[str | None] = None) -> Response[bytes]:
        tenant = authenticate(gateway, request.headers)
        return Response(await reports.usage(gateway, tenant, day), media_type=JSON)

    @get("/healthz")
    async def healthz() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        checks = await reports.readiness(gateway)
        ok = all(checks.values())
        body = msgspec.json.encode({"status": "ok" if ok else "unavailable", "checks": checks})
        return Response(body, status_code=200 if ok else 503, media_type=JSON)

    @get("/metrics")
    async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        authorize_metrics(gateway, request.headers)
        body, content_type = await gateway.exposition.text()
        return Response(body, media_type=content_type)

    return [
        chat_completions,
        completions,
        embeddings,
        responses,
        models,
        model,
        deferred,
        healthz,
        readyz,
        metrics_endpoint,
        usage,
        *model_route_handlers(gateway),
        *messages_api.make_handlers(gateway),
    ]
