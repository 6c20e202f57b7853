"""Small HTTP helpers shared by the route modules: JSON responses, auth middleware, real-time admission."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.types import ASGIApp, Receive, Scope, Send

from router.simulator import azure
from router.simulator.errors import ANTHROPIC_ERROR_TYPES, AnthropicError, OpenAIError
from router.simulator.ids import new_id
from router.simulator.state import SimState

JSON = "application/json"
CLIENT_CLOSED = 499
"""Status of the answer to a call whose client went away (nginx's convention; nobody receives it)."""
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
    return new_id("req_")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    """`obj` msgspec-encoded as a JSON response."""
    return Response(content=_ENCODE.encode(obj), status_code=status, media_type=JSON, headers=headers)


Middleware = Callable[[ASGIApp], ASGIApp]


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:  # ASGI header names are lower-case
            return value.decode("latin-1").strip()
    return ""


def _bearer(scope: Scope) -> str:
    scheme, _sep, key = _header(scope, b"authorization").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def _check_azure(state: SimState, scope: Scope) -> None:
    key = _header(scope, b"api-key") or _bearer(scope)  # a key, or an Entra ID token as a Bearer
    azure.check(scope["path"], scope.get("query_string", b""), key)
    expected = state.config.api_key
    if expected is not None and key != expected:
        azure.check(scope["path"], b"api-version=", "")  # Azure's 401 for a wrong key is its 401 for none
    state.stats.azure_requests[azure.canonical(scope["path"])] += 1


def _check_openai(state: SimState, scope: Scope) -> None:
    if azure.is_azure(scope["path"]):
        _check_azure(state, scope)
        return
    expected = state.config.api_key
    if expected is None and not _header(scope, b"authorization"):
        return  # like a local OpenAI-compatible server started without a key
    key = _bearer(scope)
    if not key:
        raise OpenAIError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using "
            "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )
    if expected is not None and key != expected:
        raise OpenAIError(401, f"Incorrect API key provided: {key[:3]}***{key[-4:]}.", code="invalid_api_key")


def _check_anthropic(state: SimState, scope: Scope) -> None:
    key = _header(scope, b"x-api-key") or _bearer(scope)  # current Anthropic SDKs send the key as a Bearer token
    if not key:
        raise AnthropicError(401, "authentication_error", "x-api-key header is required")
    if state.config.api_key is not None and key != state.config.api_key:
        raise AnthropicError(401, "authentication_error", "invalid x-api-key")
    if not _header(scope, b"anthropic-version"):
        raise AnthropicError(400, "invalid_request_error", "anthropic-version: header is required")


def _auth(state: SimState, check: Callable[[SimState, Scope], None]) -> Middleware:
    # Plain ASGI middleware rather than Litestar guards: guards copy the handler and run sync callables in a
    # thread on every request, which would dominate the simulator's cost per call.
    def middleware(app: ASGIApp) -> ASGIApp:
        async def authorized(scope: Scope, receive: Receive, send: Send) -> None:
            check(state, scope)
            await app(scope, receive, send)

        return authorized

    return middleware


def openai_auth(state: SimState) -> Middleware:
    """Require `Authorization: Bearer <key>` (the configured key, if one is set) on OpenAI routes; on Azure's
    (`/openai/...`) the key in `api-key` (or as a Bearer) and `?api-version=` (`azure.check`)."""
    return _auth(state, _check_openai)


def anthropic_auth(state: SimState) -> Middleware:
    """Require a key (`x-api-key` or `Authorization: Bearer`) and `anthropic-version` on Anthropic routes."""
    return _auth(state, _check_anthropic)


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


async def _client_stayed(request: Request[Any, Any, Any], seconds: float) -> bool:
    """Wait `seconds`; False as soon as the client disconnects, as a real upstream stops work nobody waits for.

    The body has been read by now, so the only message `receive` has left to give is the disconnect.
    """
    waiter = asyncio.ensure_future(request.receive())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        if not waiter.done():
            waiter.cancel()
    return not (done and waiter.result()["type"] == "http.disconnect")


async def admit(
    state: SimState, request: Request[Any, Any, Any], path: str, inject: Callable[[int], Exception]
) -> bytes:
    """Count a real-time call, read its body, wait its latency, raise an injected error (header or rate) if due."""
    state.stats.realtime_calls[path] += 1
    body = await request.body()
    latency = _number(request.headers.get("x-sim-latency-ms"))
    latency = state.config.latency_ms if latency is None else latency
    if latency > 0 and not await _client_stayed(request, latency / 1000):
        state.stats.cancelled_calls += 1
        raise inject(CLIENT_CLOSED)
    forced = _number(request.headers.get("x-sim-error"))
    status = int(forced) if forced is not None and 400 <= forced < 600 else state.injected_error()
    if status is not None:
        state.stats.errors_injected += 1
        raise inject(status)
    return body


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
