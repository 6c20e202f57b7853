"""Anthropic Messages SSE events → OpenAI `chat.completion.chunk` SSE lines, translated incrementally."""

from __future__ import annotations

import msgspec

from router.providers.anthropic_translate import (
    FINISH_REASONS,
    Block,
    ErrorDetail,
    Message,
    OutUsage,
    Usage,
    out_usage,
    translate_error,
)

_encoder = msgspec.json.Encoder()


class _Delta(msgspec.Struct):
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: Message | None = None
    content_block: Block | None = None
    delta: _Delta | None = None
    usage: Usage | None = None
    error: ErrorDetail | None = None


class _ChunkFunction(msgspec.Struct, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class _ChunkToolCall(msgspec.Struct, omit_defaults=True, kw_only=True):
    index: int
    id: str | None = None
    type: str | None = None
    function: _ChunkFunction


class _ChunkDelta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None
    tool_calls: list[_ChunkToolCall] | None = None


class _ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: _ChunkDelta
    logprobs: None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[_ChunkChoice]


class _UsageChunk(_Chunk, kw_only=True):
    usage: OutUsage


_event_decoder = msgspec.json.Decoder(_Event)
DONE = b"data: [DONE]\n\n"


class StreamTranslator:
    """Anthropic Messages SSE in, OpenAI `chat.completion.chunk` SSE out; holds only a partial event."""

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self.id = ""
        self.model = model
        self.created = created
        self.include_usage = include_usage
        self.usage = Usage()
        self.finish = "stop"
        self.done = False
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._line = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        """Translate whatever complete events `chunk` finishes; keep the rest for the next call."""
        lines = (self._line + chunk).split(b"\n")
        self._line = lines.pop()
        out: list[bytes] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line and self._data:
                data, self._data = b"\n".join(self._data), []
                if not self.done:
                    out += self._event(data)
            # `event:` lines repeat the JSON `type`; comments and `id:` carry nothing we need.
        return b"".join(out)

    def _sse(self, delta: _ChunkDelta, finish: str | None = None) -> bytes:
        chunk = _Chunk(id=self.id, created=self.created, model=self.model, choices=[_ChunkChoice(delta=delta)])
        chunk.choices[0].finish_reason = finish
        return b"data: " + _encoder.encode(chunk) + b"\n\n"

    def _merge(self, usage: Usage | None) -> None:
        for field in Usage.__struct_fields__:
            if usage is not None and (value := getattr(usage, field)) is not None:
                setattr(self.usage, field, value)  # message_delta counts are cumulative

    def _event(self, data: bytes) -> list[bytes]:
        try:
            event = _event_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError):
            event = _Event(
                "error", error=ErrorDetail("api_error", "The upstream sent a stream event we could not read.")
            )
        kind, block, delta = event.type, event.content_block, event.delta
        if kind == "message_start" and event.message is not None:
            self.id, self.model = event.message.id, event.message.model or self.model
            self._merge(event.message.usage)
            return [self._sse(_ChunkDelta(role="assistant", content=""))]
        if kind == "content_block_start" and block is not None:
            if block.type == "tool_use":
                self._tools[event.index] = n = len(self._tools)
                call = _ChunkToolCall(index=n, id=block.id, type="function", function=_ChunkFunction(block.name, ""))
                return [self._sse(_ChunkDelta(tool_calls=[call]))]
            return [self._sse(_ChunkDelta(content=block.text))] if block.type == "text" and block.text else []
        if kind == "content_block_delta" and delta is not None:
            if delta.type == "text_delta" and delta.text:
                return [self._sse(_ChunkDelta(content=delta.text))]
            if delta.type == "input_json_delta" and delta.partial_json and event.index in self._tools:
                call = _ChunkToolCall(index=self._tools[event.index], function=_ChunkFunction(None, delta.partial_json))
                return [self._sse(_ChunkDelta(tool_calls=[call]))]
            return []  # thinking, signature and citation deltas have no chat-completions form
        if kind == "message_delta":
            if delta is not None and delta.stop_reason:
                self.finish = FINISH_REASONS.get(delta.stop_reason, "stop")
            self._merge(event.usage)
            return []
        if kind == "message_stop":
            self.done = True
            out = [self._sse(_ChunkDelta(), self.finish)]
            if self.include_usage:
                chunk = _UsageChunk(
                    id=self.id, created=self.created, model=self.model, choices=[], usage=out_usage(self.usage)
                )
                out.append(b"data: " + _encoder.encode(chunk) + b"\n\n")
            return [*out, DONE]
        if kind == "error":
            self.done = True
            return [b"data: " + translate_error(event.error or ErrorDetail())[1] + b"\n\n"]
        return []  # ping, and event types added after this was written
