"""The Responses API's background mode over the deferred lane, as pure functions: the router's response ids (each
maps to one deferred call), and the `Response` objects a background call is shown as while it waits and once it
ended (`queued`, `in_progress`, `completed`, `failed`, `cancelled`).

`http/background.py` serves them (`GET /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`); `http/delivery.py`
answers the create with the `queued` one.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import msgspec

PREFIX = "resp_dfr_"
"""How the router's response ids begin; OpenAI's (`resp_` and hex digits) never do, so any other id is the
upstream's and is passed through."""
CANCELLED_STATUS = 499
"""The status stored as the result of a cancelled call (booked nowhere; `deferred.call` shows it `cancelled`)."""
CANCELLED_BODY = (
    b'{"error":{"message":"The call was cancelled by its caller.","type":"invalid_request_error",'
    b'"param":null,"code":"cancelled"}}'
)
_CALL_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
Status = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


def response_id(call_id: str) -> str:
    """The response id a background call is known by: the deferred call's id, encoded (URL-safe, unpadded)."""
    return PREFIX + base64.urlsafe_b64encode(call_id.encode()).decode().rstrip("=")


def call_id_of(rid: str) -> str | None:
    """The deferred call id behind one of the router's response ids; None for any other id (the upstream's)."""
    if not rid.startswith(PREFIX) or len(rid) > 128:
        return None
    encoded = rid[len(PREFIX) :]
    try:
        call_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return call_id if _CALL_ID.match(call_id) else None


def without_background(body: bytes) -> bytes:
    """The request body as a batch line carries it: `background` is a real-time option the Batch API does not take."""
    obj = _decoder.decode(body)
    obj.pop("background", None)
    return _encoder.encode(obj)


def shell(rid: str, model: str, created: int, status: Status, error: dict[str, Any] | None = None) -> bytes:
    """A background `Response` without output (queued, in progress, failed or cancelled)."""
    return _encoder.encode(
        {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": status,
            "background": True,
            "completed_at": None,
            "error": error,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "metadata": {},
            "model": model,
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": None,
            "temperature": None,
            "tool_choice": "auto",
            "tools": [],
            "top_p": None,
            "truncation": "disabled",
            "usage": None,
        }
    )


def completed(rid: str, body: bytes) -> bytes:
    """A batch line's `Response` as the background call's answer: the router's id, `background: true`."""
    obj = _decoder.decode(body)
    if not isinstance(obj, dict):
        raise ValueError("a Response is an object")
    obj["id"] = rid
    obj["background"] = True
    return _encoder.encode(obj)


def error_of(body: bytes) -> dict[str, Any]:
    """The Responses `error` object (`code`, `message`) of a stored error answer."""
    try:
        found = _decoder.decode(body)
    except msgspec.DecodeError:
        found = None
    inner = found.get("error") if isinstance(found, dict) else None
    if not isinstance(inner, dict):
        return {"code": "server_error", "message": body.decode(errors="replace")[:500] or "The call failed."}
    code = inner.get("code") or inner.get("type") or "server_error"
    return {"code": str(code), "message": str(inner.get("message") or "The call failed.")}
