"""Small HTTP helpers shared by the route modules: JSON responses, auth guards, real-time admission."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Guard

from router.simulator.errors import ANTHROPIC_ERROR_TYPES, AnthropicError, OpenAIError
from router.simulator.state import SimState

JSON = "application/json"
SSE = "text/event-stream"
_ENCODE = msgspec.json.Encoder()

_OPENAI_INJECTED: dict[int, tuple[str, str, str | None]] = {
    400: ("invalid_request_error", "Simulated bad request (X-Sim-Error).", None),
    401: ("invalid_request_error", "Simulated authentication failure.", "invalid_api_key"),
    429: ("requests", "Rate limit reached for requests (simulated). Please try again later.", "rate_limit_exceeded"),
    500: ("server_error", "The server had an error while processing your request. Sorry about that!", None),
    502: ("server_error", "Bad gateway (simulated).", None),
    503: ("server_error", "The engine is currently overloaded, please try again later.", None),
}


def request_id() -> str:
    """A fresh `req_…` id for the `x-request-id` / `request-id` response header."""
    return "req_" + os.urandom(12).hex()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    """`obj` msgspec-encoded as a JSON response."""
    return Response(content=_ENCODE.encode(obj), status_code=status, media_type=JSON, headers=headers)


def openai_guard(state: SimState) -> Guard:
    """Require `Authorization: Bearer <key>` (the configured key, if one is set) on OpenAI routes."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        scheme, _sep, key = connection.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise OpenAIError(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        expected = state.config.api_key
        if expected is not None and key != expected:
            raise OpenAIError(401, f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", code="invalid_api_key")

    return guard


def anthropic_guard(state: SimState) -> Guard:
    """Require a key and `anthropic-version` on Anthropic routes.

    The key comes in `x-api-key` or, as current Anthropic SDKs send it, `Authorization: Bearer`.
    """

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        key = connection.headers.get("x-api-key", "").strip()
        if not key:
            scheme, _sep, bearer = connection.headers.get("authorization", "").partition(" ")
            key = bearer.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise AnthropicError(401, "authentication_error", "x-api-key header is required")
        if state.config.api_key is not None and key != state.config.api_key:
            raise AnthropicError(401, "authentication_error", "invalid x-api-key")
        if not connection.headers.get("anthropic-version"):
            raise AnthropicError(400, "invalid_request_error", "anthropic-version: header is required")

    return guard


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def admit(state: SimState, request: Request[Any, Any, Any], path: str) -> int | None:
    """Count a real-time call, wait its latency, and return the error status to inject (header or rate), if any."""
    state.stats.realtime_calls[path] += 1
    latency = _number(request.headers.get("x-sim-latency-ms"))
    latency = state.config.latency_ms if latency is None else latency
    if latency > 0:
        await asyncio.sleep(latency / 1000)
    forced = _number(request.headers.get("x-sim-error"))
    status = int(forced) if forced is not None and 400 <= forced < 600 else state.injected_error()
    if status is not None:
        state.stats.errors_injected += 1
    return status


def openai_injected(status: int) -> OpenAIError:
    """The OpenAI error for an injected status; 429 carries `Retry-After: 0`."""
    default = (
        ("server_error", "Simulated server error.", None)
        if status >= 500
        else ("invalid_request_error", "Simulated error.", None)
    )
    kind, message, code = _OPENAI_INJECTED.get(status, default)
    headers = {"retry-after": "0"} if status == 429 else None
    return OpenAIError(status, message, type=kind, code=code, headers=headers)


def anthropic_injected(status: int) -> AnthropicError:
    """The Anthropic error for an injected status; 429 carries `retry-after: 0`."""
    kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    headers = {"retry-after": "0"} if status == 429 else None
    return AnthropicError(status, kind, f"Simulated {kind} ({status}).", headers=headers)
