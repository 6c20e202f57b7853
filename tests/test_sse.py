"""Usage read from a relayed SSE stream, whatever the chunk boundaries; the unasked-for usage event hidden;
Anthropic Messages replayed as the events the anthropic SDK assembles, and their errors in Anthropic's shape."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from anthropic._models import construct_type_unchecked
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import given
from hypothesis import strategies as st

from router.core.pricing import Usage
from router.deferred.replay import error_answer, error_event, sse_chunks
from router.http.sse import tap_usage

EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}],'
    b'"usage":null}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
    b'"usage":null}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
    b'"total_tokens":10,"prompt_tokens_details":{"cached_tokens":2}}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = b"".join(EVENTS)


async def _relay(chunks: list[bytes], strip: bool) -> tuple[bytes, list[Usage | None]]:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    seen: list[Usage | None] = []

    def done(usage: Usage | None, completed: bool) -> None:
        assert completed
        seen.append(usage)

    out = b"".join([c async for c in tap_usage(source(), strip_usage_chunk=strip, on_done=done)])
    return out, seen


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_usage_is_found_whatever_the_chunking(cuts: list[int], strip: bool) -> None:
    out, seen = asyncio.run(_relay(_split(STREAM, cuts), strip))
    assert seen == [Usage(input_tokens=7, cached_tokens=2, output_tokens=3)]
    expected = STREAM.replace(EVENTS[2], b"") if strip else STREAM
    assert out == expected


def test_responses_api_usage_comes_from_the_completed_event() -> None:
    completed = (
        b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r","usage":'
        b'{"input_tokens":5,"output_tokens":4,"input_tokens_details":{"cached_tokens":1}}}}\n\n'
    )
    out, seen = asyncio.run(
        _relay([b'event: response.created\ndata: {"type":"response.created"}\n\n', completed], True)
    )
    assert seen == [Usage(input_tokens=5, cached_tokens=1, output_tokens=4)]
    assert out.endswith(completed)  # not a chat usage chunk: never hidden


def test_replay_round_trips_through_the_tap() -> None:
    body = (
        b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"' + b"word " * 40 + b'"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":40,"total_tokens":43}}'
    )
    chunks = list(sse_chunks("/chat/completions", body, include_usage=True))
    assert chunks[-1] == b"data: [DONE]\n\n"
    out, seen = asyncio.run(_relay(chunks, False))
    assert seen == [Usage(input_tokens=3, cached_tokens=0, output_tokens=40)]
    assert out == b"".join(chunks)


MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me think. " * 10, "signature": "sig"},
        {"type": "text", "text": "It is " + "sunny " * 30, "citations": None},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2]}},
        {"type": "redacted_thinking", "data": "opaque"},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 80, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 2},
}


def _anthropic_events(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in b"".join(chunks).split(b"\n\n"):
        lines = block.split(b"\n")
        if lines[0].startswith(b"event: "):
            events.append((lines[0][7:].decode(), json.loads(lines[1].removeprefix(b"data: "))))
    return events


def test_a_message_replays_as_the_events_the_anthropic_sdk_assembles() -> None:
    chunks = list(sse_chunks("/messages", json.dumps(MESSAGE).encode(), include_usage=False, cost=b": cost\n\n"))
    events = _anthropic_events(chunks)
    assert [name for name, _ in events][:2] == ["message_start", "content_block_start"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        event: RawMessageStreamEvent = construct_type_unchecked(type_=RawMessageStreamEvent, value=data)  # type: ignore[arg-type]
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert Message.model_validate(MESSAGE) == Message.model_validate(snapshot.to_dict())
    assert chunks.index(b": cost\n\n") == len(chunks) - 2  # after message_delta, before message_stop


def test_anthropic_usage_comes_from_message_start_and_message_delta() -> None:
    stream = b"".join(sse_chunks("/messages", json.dumps(MESSAGE).encode(), include_usage=False))
    for cuts in ([], [7, 300, 301, 900], list(range(0, len(stream), 97))):
        out, seen = asyncio.run(_relay(_split(stream, cuts), True))
        # Input counts the cache reads and writes, as for translated calls; reads and writes are parts of it.
        assert seen == [Usage(input_tokens=18, cached_tokens=4, output_tokens=80, cache_write_tokens=2)]
        assert out == stream
    partial = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":9,'
        b'"output_tokens":1}}}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":5}}\n\n'
    )
    assert asyncio.run(_relay([partial], False))[1] == [Usage(input_tokens=9, cached_tokens=0, output_tokens=5)]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}',
         {"type": "invalid_request_error", "message": "bad"}),
        (503, b'{"error":{"message":"restarting","type":"server_error","code":"router_restarting"}}',
         {"type": "overloaded_error", "message": "restarting"}),
        (502, b"<html>Bad Gateway</html>", {"type": "api_error", "message": "<html>Bad Gateway</html>"}),
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"model: x"}}',
         {"type": "not_found_error", "message": "model: x"}),
        (422, b"", {"type": "invalid_request_error", "message": "The upstream answered 422 with no body."}),
    ],
)  # fmt: skip
def test_errors_on_anthropic_streams_and_answers_take_anthropics_shape(
    status: int, body: bytes, expected: dict[str, str]
) -> None:
    assert json.loads(error_answer("/messages", status, body)) == {"type": "error", "error": expected}
    event = error_event("/messages", status, body)
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n")
    assert json.loads(event.split(b"data: ", 1)[1]) == {"type": "error", "error": expected}
    assert error_answer("/chat/completions", status, body) == body  # other dialects are kept as stored
