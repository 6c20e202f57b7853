"""A finished stream folded back into the answer the same call would have had without `stream`: what the answer cache
keeps of a streamed miss (`http/answer_cache.py` copies the relayed bytes as they pass, never holding them back, and
folds them once the stream ended). The inverse of `deferred/replay.sse_chunks`, for Chat Completions chunks, legacy
Completions chunks and Anthropic Messages events. Pure; None where a stream cannot be read back whole (an error
event, a missing end, an unknown shape), so nothing doubtful is ever kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
_KEEP = ("id", "created", "model", "system_fingerprint", "service_tier")


def _data(raw: bytes) -> Iterator[dict[str, Any] | None]:
    """Each event's JSON data (None for the `[DONE]` sentinel); comments and blank events skipped."""
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        if data == b"[DONE]":
            yield None
            continue
        yield _decoder.decode(data)


def fold(endpoint: str, raw: bytes) -> bytes | None:
    """The non-streamed answer body of a complete stream to `endpoint`, or None."""
    try:
        events = list(_data(raw))
        if endpoint == "/messages":
            return _messages(events)
        if endpoint in ("/chat/completions", "/completions"):
            return _chunks(endpoint, events)
    except (msgspec.DecodeError, RecursionError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def _chunks(endpoint: str, events: list[dict[str, Any] | None]) -> bytes | None:
    if not events or events[-1] is not None:  # no `[DONE]`: the stream did not end as it should
        return None
    chat = endpoint == "/chat/completions"
    body: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in events[:-1]:
        if chunk is None or "error" in chunk:
            return None
        body.update({k: chunk[k] for k in _KEEP if chunk.get(k) is not None})
        if chunk.get("usage"):
            body["usage"] = chunk["usage"]
        for part in chunk.get("choices") or []:
            choice = choices.setdefault(int(part.get("index", 0)), {"content": [], "tools": {}, "logprobs": None})
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
            _logprobs(choice, part.get("logprobs"))
            if chat:
                _delta(choice, part.get("delta") or {})
            else:
                choice["content"].append(part.get("text") or "")
    if not choices or any("finish_reason" not in c for c in choices.values()):
        return None
    body["object"] = "chat.completion" if chat else "text_completion"
    body["choices"] = [_choice(i, c, chat) for i, c in sorted(choices.items())]
    return _encoder.encode(body)


def _logprobs(choice: dict[str, Any], logprobs: Any) -> None:
    if not isinstance(logprobs, dict):
        return
    if choice["logprobs"] is None:
        choice["logprobs"] = {key: [] if isinstance(value, list) else value for key, value in logprobs.items()}
    for key, value in logprobs.items():
        if isinstance(value, list):
            choice["logprobs"].setdefault(key, []).extend(value)


def _delta(choice: dict[str, Any], delta: dict[str, Any]) -> None:
    if delta.get("role"):
        choice["role"] = delta["role"]
    if delta.get("content"):
        choice["content"].append(delta["content"])
    if delta.get("refusal"):
        choice["refusal"] = choice.get("refusal", "") + delta["refusal"]
    for call in delta.get("tool_calls") or []:
        tool = choice["tools"].setdefault(int(call.get("index", 0)), {"function": {"name": "", "arguments": ""}})
        for key in ("id", "type"):
            if call.get(key):
                tool[key] = call[key]
        function = call.get("function") or {}
        tool["function"]["name"] += function.get("name") or ""
        tool["function"]["arguments"] += function.get("arguments") or ""


def _choice(index: int, choice: dict[str, Any], chat: bool) -> dict[str, Any]:
    text = "".join(choice["content"])
    out: dict[str, Any] = {"index": index}
    if chat:
        message: dict[str, Any] = {"role": choice.get("role", "assistant"), "content": text or None}
        message["refusal"] = choice.get("refusal")
        if choice["tools"]:
            message["tool_calls"] = [tool | {"type": tool.get("type", "function")} for _, tool in
                                     sorted(choice["tools"].items())]  # fmt: skip
        out["message"] = message
    else:
        out["text"] = text
    out["logprobs"] = choice["logprobs"]
    out["finish_reason"] = choice["finish_reason"]
    return out


def _messages(events: list[dict[str, Any] | None]) -> bytes | None:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    stopped = False
    for event in events:
        kind = event.get("type") if event is not None else None
        if event is None or kind == "error":
            return None
        if kind == "message_start":
            message = dict(event["message"])
        elif kind == "content_block_start":
            blocks[int(event["index"])] = dict(event["content_block"])
        elif kind == "content_block_delta":
            block, delta = blocks[int(event["index"])], event["delta"]
            if delta.get("type") == "input_json_delta":
                partial[int(event["index"])] = partial.get(int(event["index"]), "") + delta.get("partial_json", "")
            for key in ("text", "thinking", "signature"):
                if key in delta:
                    block[key] = block.get(key, "") + delta[key]
        elif kind == "message_delta" and message is not None:
            message.update(event.get("delta") or {})
            message["usage"] = (message.get("usage") or {}) | (event.get("usage") or {})
        elif kind == "message_stop":
            stopped = True
    if message is None or not stopped:
        return None
    for index, text in partial.items():
        blocks[index]["input"] = _decoder.decode(text.encode()) if text else {}
    message["content"] = [block for _, block in sorted(blocks.items())]
    return _encoder.encode(message)
