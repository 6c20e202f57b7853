"""Wire Structs: the lenient view of a client body, the OpenAI error body, the deferred-call object."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from router.errors import BadRequest


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
    status: Literal["queued", "submitted", "completed", "failed", "escalated"]
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


def decode_view(body: bytes) -> RequestView:
    """Decode the routing fields of a client body, or raise a 400 that says what is wrong."""
    if not body:
        raise BadRequest("We could not parse the JSON body of your request: the body is empty.")
    try:
        return _view_decoder.decode(body)
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
    except msgspec.DecodeError:
        return None


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None, *, call_id: str | None = None
) -> bytes:
    """Encode an OpenAI-shaped error; `call_id` adds `deferred_call_id` for an error about a stored call."""
    if call_id is not None:
        detail = DeferredErrorDetail(message=message, type=type_, param=param, code=code, deferred_call_id=call_id)
        return encoder.encode(ErrorBody(detail))
    return encoder.encode(ErrorBody(ErrorDetail(message=message, type=type_, param=param, code=code)))
