"""The simulator app: OpenAI (and Azure OpenAI's paths to them) and Anthropic routes behind their auth checks,
`/_sim/*` control, errors in shape."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, ExceptionHandlersMap, Message, Receive, Scope, Send

from router.simulator import anthropic_api, azure, openai_api, openai_batch_api
from router.simulator.config import SimConfig, patched
from router.simulator.errors import ANTHROPIC_ERROR_TYPES, AnthropicError, OpenAIError, describe_decode_error
from router.simulator.state import SimState
from router.simulator.web import Middleware, anthropic_auth, json_response, openai_auth

MAX_BODY_BYTES = 600 * 1024 * 1024
"""Above the Files API's 512 MB, so the 200 MB batch-file check is ours to make, not the framework's."""
ANTHROPIC_PREFIX = "/v1/messages"
REALTIME_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
)
"""The real-time endpoints, whose 200 answers `realtime_calls_billed` counts."""

log = logging.getLogger(__name__)


def _openai_error(_: Request[Any, Any, Any], exc: OpenAIError) -> Response[bytes]:
    return json_response(exc.body, exc.status, exc.headers)


def _anthropic_error(_: Request[Any, Any, Any], exc: AnthropicError) -> Response[bytes]:
    return json_response(exc.body, exc.status, exc.headers)


def _framework_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown route, wrong method, bad form) in the shape of the provider asked."""
    status = exc.status_code
    if request.url.path.startswith(ANTHROPIC_PREFIX):
        kind = ANTHROPIC_ERROR_TYPES.get(status, "invalid_request_error")
        return _anthropic_error(request, AnthropicError(status, kind, str(exc.detail)))
    message = f"Invalid URL ({request.method} {request.url.path})" if status in (404, 405) else str(exc.detail)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _openai_error(request, OpenAIError(status, message, type=kind, headers=exc.headers))


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("simulator bug answering %s %s", request.method, request.url.path, exc_info=exc)
    if request.url.path.startswith(ANTHROPIC_PREFIX):
        return _anthropic_error(request, AnthropicError(500, "api_error", "Internal server error"))
    return _openai_error(request, OpenAIError(500, "Internal server error.", type="server_error"))


def billing(state: SimState) -> Middleware:
    """Count each real-time call answered 200 as billed; errors (injected, flex 429, client gone) are not."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if azure.canonical(scope["path"]) not in REALTIME_PATHS:
                await app(scope, receive, send)
                return

            async def watched(message: Message) -> None:
                if message["type"] == "http.response.start" and message["status"] == 200:
                    state.stats.realtime_calls_billed += 1
                await send(message)

            await app(scope, receive, watched)

        return counted

    return middleware


def control_routes(state: SimState) -> list[HTTPRouteHandler]:
    """`/_sim/*`: live config, reset and counters for tests and benchmarks (no auth)."""

    @post("/_sim/config", status_code=200)
    async def set_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            config = patched(state.config, await request.body())
        except (msgspec.DecodeError, RecursionError) as exc:
            message, param, code = describe_decode_error(exc)
            raise OpenAIError(400, message, param=param, code=code) from exc
        state.set_config(config)
        return json_response(config)

    @get("/_sim/config")
    async def get_config() -> Response[bytes]:
        return json_response(state.config)

    @post("/_sim/reset", status_code=200)
    async def reset() -> Response[bytes]:
        state.reset()
        return json_response(state.stats.view())

    @get("/_sim/stats")
    async def stats() -> Response[bytes]:
        state.advance_batches()
        return json_response(state.stats.view())

    @get("/_sim/health")
    async def health() -> Response[bytes]:
        return json_response({"status": "ok"})

    return [set_config, get_config, reset, stats, health]


def create_simulator(config: SimConfig | None = None) -> Litestar:
    """A new, independent simulator app (its own state) configured by `config`."""
    state = SimState(config or SimConfig())
    handlers: ExceptionHandlersMap = {
        OpenAIError: _openai_error,
        AnthropicError: _anthropic_error,
        HTTPException: _framework_error,
        Exception: _unexpected,
    }
    openai = Router(
        path="/",
        middleware=[openai_auth(state)],
        route_handlers=[
            *openai_api.routes(state),
            *openai_api.background_routes(state),
            *openai_api.model_routes(),
            *openai_batch_api.file_routes(state),
            *openai_batch_api.batch_routes(state),
        ],
    )
    anthropic = Router(
        path="/",
        middleware=[anthropic_auth(state)],
        route_handlers=[*anthropic_api.message_routes(state), *anthropic_api.batch_routes(state)],
    )
    app = Litestar(
        route_handlers=[openai, anthropic, *control_routes(state)],
        exception_handlers=handlers,
        middleware=[billing(state)],
        openapi_config=None,
        logging_config=None,
        request_max_body_size=MAX_BODY_BYTES,
    )
    app.state.sim = state  # reachable for in-process tests and the CLI; HTTP clients use /_sim/*
    return app
