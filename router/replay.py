"""Replay a finished ChatCompletion or Completion as the SSE chunks a streaming client expects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

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


def sse_chunks(endpoint: str, body: bytes, *, include_usage: bool) -> Iterator[bytes]:
    """The `data:` events for a finished `/chat/completions` or `/completions` body, ending with `[DONE]`."""
    done = _decoder.decode(body)
    base: dict[str, Any] = {
        k: done[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier") if k in done
    }
    usage = done.get("usage")
    if endpoint == "/chat/completions":
        base["object"] = "chat.completion.chunk"
        for choice in done.get("choices", []):
            index, message = choice.get("index", 0), choice.get("message") or {}
            first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
            if message.get("refusal") is not None:
                first["refusal"] = message["refusal"]
            yield _event(base | {"choices": [{"index": index, "delta": first, "finish_reason": None}]})
            for piece in _pieces(message.get("content") or "") if message.get("content") else []:
                yield _event(base | {"choices": [{"index": index, "delta": {"content": piece}, "finish_reason": None}]})
            if message.get("tool_calls"):
                calls = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
                yield _event(
                    base | {"choices": [{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}]}
                )
            yield _event(
                base | {"choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
            )
    else:
        base["object"] = "text_completion"
        for choice in done.get("choices", []):
            index = choice.get("index", 0)
            for piece in _pieces(choice.get("text") or ""):
                yield _event(
                    base | {"choices": [{"index": index, "text": piece, "finish_reason": None, "logprobs": None}]}
                )
            yield _event(
                base
                | {
                    "choices": [
                        {"index": index, "text": "", "finish_reason": choice.get("finish_reason"), "logprobs": None}
                    ]
                }
            )
    if include_usage and usage is not None:
        yield _event(base | {"choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"
