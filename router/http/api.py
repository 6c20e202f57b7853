"""Litestar handlers of the OpenAI routes, each a few lines over a service: `Auth` (who calls), `Admission` (the
lane, then the relay or deferred delivery), `Delivery.fetch`, `Reports` and `Exposition`. Errors become JSON in
`error_handlers`; Anthropic's routes are in `messages_api`, the native Batch API's in `batch_api`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from router.core.schema import ANTHROPIC_VERSION
from router.http.admission import Arrival
from router.http.error_handlers import JSON
from router.http.model_router import decode_feedback

if TYPE_CHECKING:
    from router.http.admission import Admission
    from router.http.auth import Auth
    from router.http.background import BackgroundResponses
    from router.http.delivery import Delivery
    from router.http.exposition import Exposition
    from router.http.messages_api import MessagesApi
    from router.http.model_router import ModelRouter
    from router.http.reports import Reports


async def list_models(
    auth: Auth, reports: Reports, anthropic: MessagesApi, request: Request[Any, Any, Any]
) -> Response[bytes]:
    """`GET /v1/models`, in Anthropic's shape when an Anthropic SDK asks (`anthropic-version`)."""
    if ANTHROPIC_VERSION in request.headers:
        return await anthropic.list_models(request)
    auth.authenticate(request.headers)
    return Response(await reports.list_models(), media_type=JSON)


async def describe_model(
    auth: Auth, reports: Reports, anthropic: MessagesApi, request: Request[Any, Any, Any], model_id: str
) -> Response[bytes]:
    """`GET /v1/models/{id}`, in Anthropic's shape when an Anthropic SDK asks."""
    if ANTHROPIC_VERSION in request.headers:
        return await anthropic.describe_model(request, model_id)
    auth.authenticate(request.headers)
    return Response(await reports.describe_model(model_id), media_type=JSON)


def model_route_handlers(auth: Auth, model_router: ModelRouter) -> list[Any]:
    """`POST /v1/feedback`: a caller's score of a routed call's answer, booked as model-route evidence."""

    @post(["/v1/feedback"], status_code=200)
    async def feedback(request: Request[Any, Any, Any]) -> Response[bytes]:
        tenant = auth.authenticate(request.headers)
        scored = decode_feedback(await request.body())
        return Response(msgspec.json.encode(await model_router.feedback(tenant, scored)), media_type=JSON)

    return [feedback]


def background_handlers(auth: Auth, responses: BackgroundResponses) -> list[Any]:
    """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: background responses (`http/background.py`)."""

    @get(["/v1/responses/{response_id:str}", "/responses/{response_id:str}"])
    async def retrieve_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[bytes]:
        return await responses.retrieve(auth.authenticate(request.headers), response_id)

    @post(["/v1/responses/{response_id:str}/cancel", "/responses/{response_id:str}/cancel"], status_code=200)
    async def cancel_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> Response[bytes]:
        return await responses.cancel(auth.authenticate(request.headers), response_id)

    return [retrieve_response, cancel_response]


def make_handlers(
    auth: Auth,
    admission: Admission,
    delivery: Delivery,
    reports: Reports,
    exposition: Exposition,
    anthropic: MessagesApi,
) -> list[Any]:
    """The OpenAI routes' handlers over the services they use (`anthropic` answers `/v1/models` in Anthropic's shape
    when an Anthropic SDK asks; Anthropic's own routes: `messages_api.make_handlers`)."""

    async def admit(request: Request[Any, Any, Any], endpoint: str) -> Response[bytes] | Stream:
        started = time.perf_counter()
        tenant = auth.authenticate(request.headers)
        arrival = Arrival(
            tenant=tenant, endpoint=endpoint, body=await request.body(), headers=request.headers, started=started
        )
        return await admission.admit(arrival, request.receive)

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
        return await list_models(auth, reports, anthropic, request)

    @get(["/v1/models/{model_id:str}", "/models/{model_id:str}"])
    async def model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
        return await describe_model(auth, reports, anthropic, request, model_id)

    @get(["/v1/deferred/{call_id:str}"])
    async def deferred(
        request: Request[Any, Any, Any], call_id: FromPath[str], wait: FromQuery[float] = 0.0
    ) -> Response[bytes] | Stream:
        tenant = auth.authenticate(request.headers)
        return await delivery.fetch(request.receive, call_id, tenant, wait)

    @get(["/v1/usage"])
    async def usage(request: Request[Any, Any, Any], day: FromQuery[str | None] = None) -> Response[bytes]:
        tenant = auth.authenticate(request.headers)
        return Response(await reports.usage(tenant, day), media_type=JSON)

    @get("/healthz")
    async def healthz() -> Response[bytes]:
        return Response(b'{"status":"ok"}', media_type=JSON)

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        checks = await reports.readiness()
        ok = all(checks.values())
        body = msgspec.json.encode({"status": "ok" if ok else "unavailable", "checks": checks})
        return Response(body, status_code=200 if ok else 503, media_type=JSON)

    @get("/metrics")
    async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        auth.authorize_metrics(request.headers)
        body, content_type = await exposition.text()
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
    ]
