"""Wire Structs: the lenient view of a client body, the OpenAI and Anthropic error bodies, the deferred-call
object."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from router.core.errors import BadRequest
from router.core.jsondepth import too_deep


class StreamOptions(msgspec.Struct):
    """`stream_options` of a chat or completions request."""

    include_usage: bool | None = None


class RequestView(msgspec.Struct):
    """Only the fields the router routes on; the raw body is forwarded untouched."""

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    service_tier: str | None = None
    max_tokens: Any = None
    """Output caps, for a daily budget's worst-case reservation (`Any`: a bad one is the upstream's to refuse)."""
    max_completion_tokens: Any = None
    max_output_tokens: Any = None
    background: Any = None
    """The Responses API's background mode (`true`): deferred, it is answered as a queued `Response`."""


class ErrorDetail(msgspec.Struct, omit_defaults=False):
    """The inner object of an OpenAI error."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class DeferredErrorDetail(ErrorDetail, omit_defaults=False):
    """An error about a deferred call that is stored: it names the call, whose answer stays retrievable."""

    deferred_call_id: str | None = None


class ErrorBody(msgspec.Struct, omit_defaults=False):
    """`{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail | DeferredErrorDetail


class DeferredCall(msgspec.Struct):
    """The `deferred.call` object a 202 answer and `GET /v1/deferred/{id}` return."""

    id: str
    status: Literal["queued", "submitted", "completed", "failed", "escalated", "cancelled"]
    lane: str
    deadline: str | None
    created: int
    object: str = "deferred.call"
    cost_usd: float | None = None
    savings_usd: float | None = None
    webhook: bool = False


_view_decoder = msgspec.json.Decoder(RequestView)
_any_decoder = msgspec.json.Decoder()
encoder = msgspec.json.Encoder()


def nested_too_deep(max_depth: int) -> BadRequest:
    """The 400 for a body whose arrays and objects nest deeper than `max_depth` (or than the decoder can follow)."""
    return BadRequest(
        f"The JSON body of your request nests arrays and objects more than {max_depth} levels deep.",
        code="json_too_deep",
    )


def decode_view(body: bytes, max_depth: int) -> RequestView:
    """Decode the routing fields of a client body nested at most `max_depth` deep, or raise a 400 that says what
    is wrong. The body is forwarded as is, so the depth is checked across all of it, not only the routing fields."""
    if not body:
        raise BadRequest("We could not parse the JSON body of your request: the body is empty.")
    if too_deep(body, max_depth):
        raise nested_too_deep(max_depth)
    try:
        return _view_decoder.decode(body)
    except RecursionError as exc:  # the limit was raised past what the decoder can follow from here
        raise nested_too_deep(max_depth) from exc
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        if isinstance(_safe_decode(body), dict):  # valid JSON, wrong shape somewhere we peek at
            raise BadRequest(f"Invalid request body: {exc}") from exc
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
            "library correctly. The OpenAI API expects a JSON payload.)"
        ) from exc


_body_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_body(body: bytes) -> dict[str, Any]:
    """The whole body as a mapping, or a 400 (the lenient view skips fields it does not route on)."""
    try:
        return _body_decoder.decode(body)
    except RecursionError as exc:
        raise BadRequest("The JSON body of your request nests too deeply to be read.", code="json_too_deep") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"Invalid request body: {exc}") from exc


def with_fields(body: bytes, **fields: Any) -> bytes:
    """The body with top-level fields set (or removed, for None)."""
    obj = decode_body(body)
    for name, value in fields.items():
        if value is None:
            obj.pop(name, None)
        else:
            obj[name] = value
    return encoder.encode(obj)


def _safe_decode(body: bytes) -> Any:
    try:
        return _any_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None, *, call_id: str | None = None
) -> bytes:
    """Encode an OpenAI-shaped error; `call_id` adds `deferred_call_id` for an error about a stored call."""
    if call_id is not None:
        detail = DeferredErrorDetail(message=message, type=type_, param=param, code=code, deferred_call_id=call_id)
        return encoder.encode(ErrorBody(detail))
    return encoder.encode(ErrorBody(ErrorDetail(message=message, type=type_, param=param, code=code)))


class AnthropicErrorDetail(msgspec.Struct):
    """The inner object of an Anthropic error."""

    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, kw_only=True):
    """`{"type": "error", "error": {"type", "message"}}`, the error shape the `anthropic` SDKs read."""

    type: str = "error"
    error: AnthropicErrorDetail


ANTHROPIC_VERSION = "anthropic-version"
"""The header every Anthropic SDK sends: on a route both APIs share (`/v1/models`), the answer takes its shape."""
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's error type for an HTTP status (the SDKs choose their exception by the status alone)."""


def anthropic_error_body(status: int, message: str) -> bytes:
    """Encode an Anthropic-shaped error for `status`."""
    kind = ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return encoder.encode(AnthropicErrorBody(error=AnthropicErrorDetail(type=kind, message=message)))


def as_anthropic_error(status: int, body: bytes) -> bytes:
    """An error body in Anthropic's shape: kept when it is one already, else its message re-wrapped (an OpenAI
    error's `message`, or the text of a body of any other shape)."""
    found = _safe_decode(body)
    if isinstance(found, dict):
        inner = found.get("error")
        if found.get("type") == "error" and isinstance(inner, dict):
            return body
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return anthropic_error_body(status, inner["message"])
    text = body.decode("utf-8", "replace").strip()[:500]
    return anthropic_error_body(status, text or f"The upstream answered {status} with no body.")
