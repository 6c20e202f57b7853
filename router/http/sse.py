"""Read usage out of a relayed SSE stream (OpenAI chunks, Responses or Anthropic Messages events) without holding
it back; drop the usage event nobody asked for."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from router.core.pricing import Usage, usage_from_body

_USAGE = re.compile(rb'"usage"\s*:\s*\{')  # a usage object; chunks carrying `"usage": null` need no parsing
_MAX_PENDING = 1 << 20  # an event larger than this is relayed as is, unparsed


class _ResponseEvent(msgspec.Struct):
    # msgspec cannot decode `Raw | None`; an empty Raw stands for "absent".
    response: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b""))


class _Counts(msgspec.Struct):
    usage: dict[str, Any] | None = None


class _MessagesEvent(msgspec.Struct):
    type: str = ""
    message: _Counts | None = None
    usage: dict[str, Any] | None = None


_response_event = msgspec.json.Decoder(_ResponseEvent)
_messages_event = msgspec.json.Decoder(_MessagesEvent)
_MESSAGES_USAGE = frozenset({b"message_start", b"message_delta"})


def _messages_usage(event: bytes, counts: dict[str, Any]) -> Usage | None:
    """Anthropic Messages: the input counts come in `message_start`, the final (cumulative) ones in
    `message_delta`, which may leave out what did not change; the usage is known at `message_delta`."""
    data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        parsed = _messages_event.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    found = parsed.message.usage if parsed.message is not None else parsed.usage
    counts.update({name: value for name, value in (found or {}).items() if value is not None})
    return usage_from_body({"usage": counts}) if parsed.type == "message_delta" else None


def _event_usage(event: bytes, counts: dict[str, Any]) -> tuple[Usage | None, bool]:
    """(usage, whether the event is a usage-only chat/completions chunk) of one SSE event; `counts` carries an
    Anthropic stream's counts from one event to the next."""
    for line in event.split(b"\n"):
        if line.startswith(b"event:") and line[6:].strip() in _MESSAGES_USAGE:
            return _messages_usage(event, counts), False
    for line in event.split(b"\n"):
        if not line.startswith(b"data:") or b'"usage"' not in line:
            continue
        data = line[5:].strip()
        if b'"response.completed"' in data:  # Responses API: usage sits inside the final response object
            try:
                inner = _response_event.decode(data).response
            except (msgspec.DecodeError, RecursionError):
                return None, False
            return (usage_from_body(bytes(inner)) if inner else None), False
        usage = usage_from_body(data)
        return usage, usage is not None and b'"choices":[]' in data.replace(b" ", b"")
    return None, False


async def tap_usage(
    stream: AsyncIterator[bytes],
    *,
    strip_usage_chunk: bool,
    on_done: Callable[[Usage | None, bool], None],
    comment: Callable[[Usage], bytes] | None = None,
) -> AsyncIterator[bytes]:
    """Relay `stream` chunk by chunk; report the usage it carried, and whether it ran to its end, when it stops.

    `comment` turns the usage into an SSE comment sent right after the event that carried it (the call's cost,
    which its headers could not hold)."""
    pending = b""
    usage: Usage | None = None
    counts: dict[str, Any] = {}
    completed = False
    try:
        async for chunk in stream:
            if not pending and chunk.endswith(b"\n\n") and not _USAGE.search(chunk):
                yield chunk  # the common case: whole events, no usage object in them; no parsing, no copy
                continue
            pending += chunk
            out = []
            while (end := pending.find(b"\n\n")) >= 0:
                event, pending = pending[: end + 2], pending[end + 2 :]
                found, usage_only = _event_usage(event, counts) if _USAGE.search(event) else (None, False)
                usage = found or usage
                if not (usage_only and strip_usage_chunk):
                    out.append(event)
                if found is not None and comment is not None:
                    out.append(comment(found))
            if len(pending) > _MAX_PENDING:
                out.append(pending)
                pending = b""
            if out:
                yield b"".join(out)
        if pending:
            yield pending
        completed = True
    finally:
        on_done(usage, completed)
