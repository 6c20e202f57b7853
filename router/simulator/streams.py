"""Server-sent event streams replayed from a finished answer, so a streamed answer equals the non-streamed one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec

from router.simulator import anthropic_bodies, logprobs
from router.simulator.openai_types import (
    ChatChoice,
    ChatCompletion,
    ChoiceLogprobs,
    Completion,
    CompletionUsage,
    FunctionCallItem,
    OutputMessage,
    OutputText,
    ResponseObject,
    TextChoice,
)
from router.simulator.store import Stats
from router.simulator.text import split_for_stream

_ENCODE = msgspec.json.Encoder()
DONE = b"data: [DONE]\n\n"


class FunctionDelta(msgspec.Struct, omit_defaults=True):
    """A piece of a streamed tool call's function: the name once, then pieces of the arguments."""

    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, omit_defaults=True):
    """`ChatCompletionMessageToolCallChunk`: `id` and `type` only in a call's first piece."""

    index: int
    id: str | None = None
    type: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct, omit_defaults=True):
    """`ChatCompletionStreamResponseDelta`: only the fields a chunk carries."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    """One choice of a chat chunk; `finish_reason` is null until the last chunk of that choice."""

    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, kw_only=True):
    """`CreateChatCompletionStreamResponse`; `usage` is null on every chunk but the last when usage was asked for."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    service_tier: str
    system_fingerprint: str
    usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET


async def paced(events: Iterator[bytes], delay_ms: float, stats: Stats) -> AsyncIterator[bytes]:
    """Yield each event, pausing `delay_ms` between them (never blocking the loop); kept in the stream stats."""
    stats.open_streams += 1
    finished = False
    try:
        first = True
        for event in events:
            if not first and delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            first = False
            yield event
        finished = True
    finally:
        stats.open_streams -= 1
        if not finished:  # the client went away mid-stream
            stats.cancelled_calls += 1


def _data(obj: Any) -> bytes:
    return b"data: " + _ENCODE.encode(obj) + b"\n\n"


def _event(name: str, obj: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _ENCODE.encode(obj) + b"\n\n"


def chat_events(answer: ChatCompletion, include_usage: bool) -> Iterator[bytes]:
    """`data:` chunks: the role, the content or tool calls in pieces, `finish_reason`, optionally usage, `[DONE]`."""
    usage_field: CompletionUsage | msgspec.UnsetType | None = None if include_usage else msgspec.UNSET

    def chunk(choices: list[ChunkChoice], usage: CompletionUsage | msgspec.UnsetType | None = usage_field) -> bytes:
        return _data(
            ChatChunk(
                id=answer.id,
                created=answer.created,
                model=answer.model,
                choices=choices,
                service_tier=answer.service_tier,
                system_fingerprint=answer.system_fingerprint,
                usage=usage,
            )
        )

    steps = [_chat_steps(c) for c in answer.choices]
    yield chunk([steps[i][0] for i in range(len(steps))])
    for step in range(1, max(map(len, steps))):
        for parts in steps:
            if step < len(parts):
                yield chunk([parts[step]])
    for choice in answer.choices:
        yield chunk([ChunkChoice(index=choice.index, delta=Delta(), finish_reason=choice.finish_reason)])
    if include_usage:
        yield chunk([], answer.usage)
    yield DONE


def _chat_steps(choice: ChatChoice) -> list[ChunkChoice]:
    """One choice's chunks before its `finish_reason`, the role first.

    Tool calls stream as OpenAI sends them: each call's id, type and name with empty arguments, then the arguments
    in pieces. Content streams in pieces of whole tokens when it has logprobs (each chunk carries its tokens'),
    else on word boundaries.
    """
    message, index = choice.message, choice.index
    if isinstance(message.tool_calls, list):
        steps = []
        for n, call in enumerate(message.tool_calls):
            head = ToolCallDelta(index=n, id=call.id, type=call.type, function=FunctionDelta(call.function.name, ""))
            delta = Delta(role="assistant" if n == 0 else None, tool_calls=[head])
            steps.append(ChunkChoice(index=index, delta=delta))
            for piece in _char_pieces(call.function.arguments):
                arguments = ToolCallDelta(index=n, function=FunctionDelta(arguments=piece))
                steps.append(ChunkChoice(index=index, delta=Delta(tool_calls=[arguments])))
        return steps
    steps = [ChunkChoice(index=index, delta=Delta(role="assistant", content=""))]
    tokens = choice.logprobs.content if choice.logprobs is not None else None
    if tokens:
        size = max(1, -(-len(tokens) // 6))
        for start in range(0, len(tokens), size):
            group = tokens[start : start + size]
            piece = "".join(t.token for t in group)
            steps.append(ChunkChoice(index=index, delta=Delta(content=piece), logprobs=ChoiceLogprobs(content=group)))
    else:
        steps.extend(ChunkChoice(index=index, delta=Delta(content=p)) for p in split_for_stream(message.content or ""))
    return steps


def _char_pieces(text: str, pieces: int = 6) -> list[str]:
    """`text` in up to `pieces` runs of characters (JSON has no word boundaries to keep)."""
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def completion_events(answer: Completion, include_usage: bool) -> Iterator[bytes]:
    """Legacy completion chunks (same shape as the answer), a `finish_reason` chunk per choice, usage, `[DONE]`."""

    def chunk(choices: list[TextChoice], usage: CompletionUsage | None = None) -> bytes:
        return _data(msgspec.structs.replace(answer, choices=choices, usage=usage))

    pieces = [_text_steps(c) for c in answer.choices]
    for step in range(max(map(len, pieces))):
        for parts in pieces:
            if step < len(parts):
                yield chunk([parts[step]])
    for choice in answer.choices:
        yield chunk([TextChoice(text="", index=choice.index, finish_reason=choice.finish_reason)])
    if include_usage:
        yield chunk([], answer.usage)
    yield DONE


def _text_steps(choice: TextChoice) -> list[TextChoice]:
    """A legacy choice's text in pieces: whole tokens with their logprobs when it has them, else on word boundaries."""
    whole = choice.logprobs
    if whole is None or not whole.tokens:
        return [TextChoice(text=p, index=choice.index, finish_reason=None) for p in split_for_stream(choice.text)]
    size = max(1, -(-len(whole.tokens) // 6))
    return [
        TextChoice(
            text="".join(whole.tokens[start : start + size]),
            index=choice.index,
            logprobs=logprobs.legacy_slice(whole, start, start + size),
            finish_reason=None,
        )
        for start in range(0, len(whole.tokens), size)
    ]


def response_events(answer: ResponseObject) -> Iterator[bytes]:
    """The Responses API event sequence for an answer (a message, or function calls), by `sequence_number`."""
    seq = iter(range(1 << 30))
    pending = msgspec.structs.replace(answer, status="in_progress", output=[], usage=None, completed_at=None)
    yield _event("response.created", {"type": "response.created", "response": pending, "sequence_number": next(seq)})
    yield _event(
        "response.in_progress", {"type": "response.in_progress", "response": pending, "sequence_number": next(seq)}
    )
    for index, item in enumerate(answer.output):
        if isinstance(item, FunctionCallItem):
            yield from _call_events(item, index, seq)
        else:
            yield from _message_events(item, index, seq)
    final = "response.completed" if answer.status == "completed" else "response.incomplete"
    yield _event(final, {"type": final, "response": answer, "sequence_number": next(seq)})


def _message_events(message: OutputMessage, index: int, seq: Iterator[int]) -> Iterator[bytes]:
    text = message.content[0].text
    where = {"item_id": message.id, "output_index": index, "content_index": 0}
    yield _item_event(
        "response.output_item.added",
        msgspec.structs.replace(message, status="in_progress", content=[]),
        index,
        next(seq),
    )
    yield _part_event("response.content_part.added", where, OutputText(text=""), next(seq))
    for piece in split_for_stream(text):
        delta = {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        yield _event("response.output_text.delta", {**delta, "sequence_number": next(seq)})
    done = {"type": "response.output_text.done", **where, "text": text, "logprobs": [], "sequence_number": next(seq)}
    yield _event("response.output_text.done", done)
    yield _part_event("response.content_part.done", where, message.content[0], next(seq))
    yield _item_event("response.output_item.done", message, index, next(seq))


def _call_events(call: FunctionCallItem, index: int, seq: Iterator[int]) -> Iterator[bytes]:
    where = {"item_id": call.id, "output_index": index}
    yield _item_event(
        "response.output_item.added",
        msgspec.structs.replace(call, status="in_progress", arguments=""),
        index,
        next(seq),
    )
    for piece in _char_pieces(call.arguments):
        name = "response.function_call_arguments.delta"
        yield _event(name, {"type": name, **where, "delta": piece, "sequence_number": next(seq)})
    name = "response.function_call_arguments.done"
    yield _event(
        name, {"type": name, **where, "name": call.name, "arguments": call.arguments, "sequence_number": next(seq)}
    )
    yield _item_event("response.output_item.done", call, index, next(seq))


def _item_event(name: str, item: OutputMessage | FunctionCallItem, index: int, seq: int) -> bytes:
    return _event(name, {"type": name, "output_index": index, "item": item, "sequence_number": seq})


def _part_event(name: str, where: dict[str, Any], part: OutputText, seq: int) -> bytes:
    return _event(name, {"type": name, **where, "part": part, "sequence_number": seq})


def anthropic_events(message: anthropic_bodies.Message) -> Iterator[bytes]:
    """Anthropic's `event:`/`data:` pairs for a finished message."""
    for name, payload in anthropic_bodies.stream_events(message):
        yield _event(name, payload)
