"""Errors in each provider's exact wire shape, and the mapping from msgspec decode errors to them."""

from __future__ import annotations

import re

import msgspec

from router.simulator.ids import new_id


class OpenAIErrorBody(msgspec.Struct):
    """The inner OpenAI `Error` object."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorEnvelope(msgspec.Struct):
    """OpenAI's `ErrorResponse`: `{"error": {...}}`."""

    error: OpenAIErrorBody


class AnthropicErrorBody(msgspec.Struct):
    """The inner Anthropic error object."""

    type: str
    message: str


class AnthropicErrorEnvelope(msgspec.Struct, kw_only=True):
    """Anthropic's error response: `{"type": "error", "error": {...}}`."""

    type: str = "error"
    error: AnthropicErrorBody
    request_id: str | None = None


class OpenAIError(Exception):
    """An answer in OpenAI's error shape; raised anywhere, rendered by the app's exception handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = OpenAIErrorEnvelope(OpenAIErrorBody(message=message, type=type, param=param, code=code))
        self.headers = headers or {}


class AnthropicError(Exception):
    """An answer in Anthropic's error shape; rendered by the app's exception handler."""

    def __init__(self, status: int, type: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = AnthropicErrorEnvelope(
            error=AnthropicErrorBody(type=type, message=message), request_id=new_id("req_")
        )
        self.headers = headers or {}


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}

_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`(?: - at `\$(?P<path>[^`]*)`)?")
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def describe_decode_error(exc: msgspec.DecodeError | RecursionError) -> tuple[str, str | None, str | None]:
    """(message, param, code) for a request body msgspec could not decode (or follow, nested too deep) or validate."""
    text = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return (
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            None,
            None,
        )
    if found := _MISSING.match(text):
        param = _param((found["path"] or "") + "." + found["field"])
        return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    at = _AT.search(text)
    if at is None:
        return f"Invalid request: {text}.", None, "invalid_value"
    where = _param(at["path"])
    return f"Invalid value for '{where}': {text[: at.start()]}.", where, "invalid_value"


def _param(path: str) -> str:
    """`$.messages[0].role` → `messages[0].role`, the way OpenAI names parameters."""
    return path.lstrip(".")
