"""Replay a finished ChatCompletion or Completion as the SSE chunks a streaming client expects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from router.schema import error_body

_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
PIECE_CHARS = 64
_KEEP = ("id", "created", "model", "system_fingerprint", "service_tier")


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


def _text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason}


def sse_chunks(endpoint: str, body: bytes, *, include_usage: bool) -> Iterator[bytes]:
    """The `data:` events for a finished `/chat/completions` or `/completions` body, ending with `[DONE]`."""
    try:
        done = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):  # an upstream body nested deeper than msgspec follows from here
        text = "The stored result of this call could not be read as a completion."
        yield b"data: " + error_body(text, "upstream_error", None, "unreadable_result") + b"\n\n"
        return
    base: dict[str, Any] = {k: done[k] for k in _KEEP if k in done}
    if endpoint == "/chat/completions":
        base["object"] = "chat.completion.chunk"
        for choice in done.get("choices", []):
            index, message = choice.get("index", 0), choice.get("message") or {}
            first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
            if message.get("refusal") is not None:
                first["refusal"] = message["refusal"]
            yield _event(base | {"choices": [_delta(index, first)]})
            for piece in _pieces(message["content"]) if message.get("content") else []:
                yield _event(base | {"choices": [_delta(index, {"content": piece})]})
            if message.get("tool_calls"):
                calls = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
                yield _event(base | {"choices": [_delta(index, {"tool_calls": calls})]})
            yield _event(base | {"choices": [_delta(index, {}, choice.get("finish_reason"))]})
    else:
        base["object"] = "text_completion"
        for choice in done.get("choices", []):
            index = choice.get("index", 0)
            for piece in _pieces(choice.get("text") or ""):
                yield _event(base | {"choices": [_text_choice(index, piece, None)]})
            yield _event(base | {"choices": [_text_choice(index, "", choice.get("finish_reason"))]})
    if include_usage and done.get("usage") is not None:
        yield _event(base | {"choices": [], "usage": done["usage"]})
    yield b"data: [DONE]\n\n"
