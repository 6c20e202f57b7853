"""Usage read from a relayed SSE stream, whatever the chunk boundaries; the unasked-for usage event hidden."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from router.pricing import Usage
from router.replay import sse_chunks
from router.sse import tap_usage

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
