"""The app's exception handlers: `RouterError`, Litestar's own errors, Redis outages and the unforeseen become
OpenAI-shaped error JSON; a caller gone away gets nothing."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from redis.exceptions import RedisError

from router.core.errors import RouterError, ServiceUnavailable, UpstreamError
from router.core.schema import error_body
from router.http.disconnect import ClientDisconnected
from router.telemetry.logs import Throttle, kind_of

log = logging.getLogger(__name__)
_throttle = Throttle(log)

JSON = "application/json"


def error_response(exc: RouterError) -> Response[bytes]:
    """The OpenAI-shaped answer for one of our errors."""
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    if exc.should_retry is not None:
        headers["x-should-retry"] = "true" if exc.should_retry else "false"
    if exc.call_id is not None:
        headers["x-router-request-id"] = exc.call_id
    if isinstance(exc, UpstreamError):
        body = exc.body if _looks_like_openai_error(exc.body) else _wrap_upstream(exc.body, exc.upstream_status)
        return Response(body, status_code=exc.upstream_status, media_type=JSON, headers=headers)
    body = error_body(exc.message, exc.type, exc.param, exc.code, call_id=exc.call_id)
    return Response(body, status_code=exc.status, media_type=JSON, headers=headers)


def _looks_like_openai_error(body: bytes) -> bool:
    head = body.lstrip()[:1]
    return head == b"{" and b'"error"' in body[:200]


def _wrap_upstream(body: bytes, status: int) -> bytes:
    text = body.decode("utf-8", "replace").strip()[:500] or f"The upstream answered {status} with no body."
    return error_body(text, "upstream_error", None, f"upstream_{status}")


def router_error_handler(_: Request[Any, Any, Any], exc: RouterError) -> Response[bytes]:
    """RouterError → its OpenAI error JSON."""
    return error_response(exc)


_HTTP_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (unknown route, wrong method, body too large) in OpenAI shape."""
    status = exc.status_code
    if status == 404:
        message, code = f"Unknown request URL: {request.method} {request.url.path}.", "unknown_url"
    elif status == 405:
        message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
    elif status == 413:
        message, code = "The request body is larger than this router accepts.", "request_too_large"
    else:
        message, code = str(exc.detail), None
    type_ = "server_error" if status >= 500 else _HTTP_TYPES.get(status, "invalid_request_error")
    return Response(error_body(message, type_, None, code), status_code=status, media_type=JSON)


def redis_error_handler(_: Request[Any, Any, Any], exc: RedisError) -> Response[bytes]:
    """The store is unreachable: a 503 the client may retry, not a 500."""
    _throttle.warning(kind_of("api", exc), "Redis unavailable: %s", exc)
    return error_response(ServiceUnavailable("The router's store is unavailable; retry shortly.", retry_after=1.0))


def internal_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Anything unforeseen: log it, answer a clean 500 without a traceback."""
    log.exception("unhandled error", exc_info=exc)
    body = error_body("The router hit an internal error.", "server_error", None, None)
    return Response(body, status_code=500, media_type=JSON)


def disconnected_handler(_: Request[Any, Any, Any], __: ClientDisconnected) -> Response[bytes]:
    """Nobody reads this answer; 499 is what the access log will show."""
    return Response(b"", status_code=499)
