"""The Anthropic adapter: OpenAI ⇄ Anthropic translation as tables, then the provider against the simulator."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from anthropic.types import Message
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from router.core.errors import BadRequest
from router.core.settings import Upstream
from router.ops.serving import serve_in_thread
from router.providers import anthropic as adapter
from router.providers import anthropic_translate as tr
from router.providers.anthropic import AnthropicProvider
from router.providers.anthropic_stream import StreamTranslator
from router.providers.base import BatchLine, BatchStatus, LineResult
from router.simulator import SimConfig, create_simulator
from tests.helpers.waiting import wait_until_async

MODEL = "claude-sonnet-4-5"
USER = {"role": "user", "content": "Hello there"}


def params(**body: Any) -> dict[str, Any]:
    """The Anthropic params for an OpenAI chat body (model and one user turn unless given)."""
    body = {"model": MODEL, "messages": [USER]} | body
    return tr.to_params(tr.parse_chat(msgspec.json.encode(body)))


# --- request: one case per row of batch-apis.md §2.6, plus the fields the compat layer ignores ----------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
TOOL_USE = {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}

REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("defaults", {}, {"model": MODEL, "max_tokens": tr.DEFAULT_MAX_TOKENS, "messages": [USER]}),
    (
        "one system message → system string",
        {"messages": [{"role": "system", "content": "Be terse."}, USER]},
        {"system": "Be terse.", "messages": [USER]},
    ),
    (
        "system and developer → text blocks",
        {
            "messages": [
                {"role": "system", "content": "A"},
                {"role": "developer", "content": [{"type": "text", "text": "B"}]},
                USER,
            ]
        },
        {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "messages": [USER]},
    ),
    ("max_tokens", {"max_tokens": 10}, {"max_tokens": 10}),
    ("max_completion_tokens wins", {"max_tokens": 10, "max_completion_tokens": 20}, {"max_tokens": 20}),
    ("stop string", {"stop": "END"}, {"stop_sequences": ["END"]}),
    ("stop list, blank dropped", {"stop": ["a", " ", "b"]}, {"stop_sequences": ["a", "b"]}),
    ("temperature clamped", {"temperature": 1.7}, {"temperature": 1.0}),
    ("temperature kept", {"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3, "top_p": 0.9}),
    ("n=1 accepted", {"n": 1}, {"messages": [USER]}),
    (
        "tools",
        {"tools": [WEATHER]},
        {
            "tools": [
                {
                    "name": "get_weather",
                    "description": "Weather now",
                    "input_schema": WEATHER["function"]["parameters"],
                    "strict": True,
                }
            ]
        },
    ),
    (
        "tool without parameters",
        {"tools": [{"type": "function", "function": {"name": "now"}}]},
        {"tools": [{"name": "now", "input_schema": {"type": "object", "properties": {}}}]},
    ),
    ("tool_choice auto", {"tools": [WEATHER], "tool_choice": "auto"}, {"tool_choice": {"type": "auto"}}),
    ("tool_choice required", {"tools": [WEATHER], "tool_choice": "required"}, {"tool_choice": {"type": "any"}}),
    ("tool_choice none", {"tools": [WEATHER], "tool_choice": "none"}, {"tool_choice": {"type": "none"}}),
    (
        "tool_choice named",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tool_choice": {"type": "tool", "name": "get_weather"}},
    ),
    (
        "parallel_tool_calls false",
        {"tools": [WEATHER], "parallel_tool_calls": False},
        {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
    ),
    (
        "parallel_tool_calls false with a named tool",
        {
            "tools": [WEATHER],
            "parallel_tool_calls": False,
            "tool_choice": {"type": "function", "function": {"name": "x"}},
        },
        {"tool_choice": {"type": "tool", "name": "x", "disable_parallel_tool_use": True}},
    ),
    (
        "assistant tool_calls → tool_use, tool → tool_result in one user turn",
        {
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL, CALL | {"id": "call_2"}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "13 C"}]},
                {"role": "user", "content": "Thanks"},
            ]
        },
        {
            "messages": [
                USER,
                {"role": "assistant", "content": [TOOL_USE, TOOL_USE | {"id": "call_2"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "13 C"}]},
                        {"type": "text", "text": "Thanks"},
                    ],
                },
            ]
        },
    ),
    (
        "assistant text with a tool call",
        {"messages": [USER, {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}]},
        {"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, TOOL_USE]}]},
    ),
    (
        "response_format json_schema → output_config",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}},
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    ),
    ("response_format json_object ignored", {"response_format": {"type": "json_object"}}, {"messages": [USER]}),
    (
        "image parts → image blocks",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "low"}},
                    ],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                    ],
                }
            ]
        },
    ),
    (
        "pdf file part → document block",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}}],
                }
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                        }
                    ],
                }
            ]
        },
    ),
]

IGNORED = {
    "logprobs": True,
    "top_logprobs": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "seed": 7,
    "user": "u1",
    "metadata": {"a": "b"},
    "service_tier": "flex",
    "reasoning_effort": "low",
    "store": True,
    "logit_bias": {"1": 2},
}


@pytest.mark.parametrize(("body", "expected"), [(b, e) for _, b, e in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES])
def test_request_translation(body: dict[str, Any], expected: dict[str, Any]) -> None:
    got = params(**body)
    assert {key: got.get(key) for key in expected} == expected


def test_ignored_fields_are_dropped_and_stream_is_left_to_the_caller() -> None:
    got = params(**IGNORED, stream=True, stream_options={"include_usage": True})
    assert got == {"model": MODEL, "max_tokens": tr.DEFAULT_MAX_TOKENS, "messages": [USER]}


BAD_REQUESTS: list[tuple[str, dict[str, Any], str | None]] = [
    ("n > 1", {"n": 2}, "n"),
    ("legacy functions", {"functions": [{"name": "f"}]}, "functions"),
    ("unknown role", {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ("tool without id", {"messages": [USER, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
    (
        "arguments not an object",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [CALL | {"function": {"name": "f", "arguments": "[1]"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "arguments not JSON",
        {
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [CALL | {"function": {"name": "f", "arguments": "{"}}]},
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    ("audio part", {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ("non-function tool", {"tools": [{"type": "custom"}]}, "tools[0]"),
    ("unknown tool_choice", {"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ("messages missing", {"messages": None}, None),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_untranslatable_requests_are_400(body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        params(**body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_unreadable_json_is_400() -> None:
    with pytest.raises(BadRequest):
        tr.parse_chat(b"{not json")


# --- answers ----------------------------------------------------------------------------------------------


def message(**fields: Any) -> tr.Message:
    base: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    return tr.message_decoder.decode(msgspec.json.encode(base | fields))


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_finish_reason(stop_reason: str | None, finish: str) -> None:
    completion = ChatCompletion.model_validate_json(tr.chat_completion(message(stop_reason=stop_reason), 123))
    assert completion.choices[0].finish_reason == finish


def test_completion_shape_and_usage_with_cache() -> None:
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
    raw = tr.chat_completion(message(usage=usage), 123)
    completion = ChatCompletion.model_validate_json(raw)
    assert (completion.id, completion.object, completion.created, completion.model) == (
        "msg_1",
        "chat.completion",
        123,
        MODEL,
    )
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hi"
    assert completion.choices[0].message.tool_calls is None
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 130
    assert completion.usage.completion_tokens == 5
    assert completion.usage.total_tokens == 135
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100


def test_tool_use_answer() -> None:
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    completion = ChatCompletion.model_validate_json(
        tr.chat_completion(message(content=content, stop_reason="tool_use"), 1)
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.type, call.function.name) == ("toolu_1", "function", "get_weather")  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "openai_type", "code"),
    [
        ("invalid_request_error", 400, "invalid_request_error", None),
        ("authentication_error", 401, "invalid_request_error", "invalid_api_key"),
        ("billing_error", 402, "insufficient_quota", "billing_error"),
        ("permission_error", 403, "permission_error", None),
        ("not_found_error", 404, "invalid_request_error", "not_found"),
        ("request_too_large", 413, "invalid_request_error", "request_too_large"),
        ("rate_limit_error", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("api_error", 500, "server_error", None),
        ("timeout_error", 504, "server_error", "timeout"),
        ("overloaded_error", 503, "server_error", "overloaded"),
        ("brand_new_error", 500, "server_error", "brand_new_error"),
    ],
)
def test_error_translation(kind: str, status: int, openai_type: str, code: str | None) -> None:
    got_status, body = tr.translate_error(tr.ErrorDetail(kind, "It broke."))
    assert got_status == status
    assert json.loads(body) == {"error": {"message": "It broke.", "type": openai_type, "param": None, "code": code}}


def test_error_answer_keeps_the_http_status_but_not_529() -> None:
    anthropic_body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    status, body = tr.error_answer(529, anthropic_body)
    assert status == 503 and json.loads(body)["error"]["message"] == "Overloaded"
    assert tr.error_answer(502, b"<html>bad gateway</html>") == (502, b"<html>bad gateway</html>")


# --- streams ----------------------------------------------------------------------------------------------


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


START = {
    "type": "message_start",
    "message": {
        "id": "msg_9",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1},
    },
}
TRANSCRIPT = b"".join(
    [
        sse("message_start", START),
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo, "}},
        ),
        sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "wörld"}},
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            },
        ),
        sse(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
            },
        ),
        sse("content_block_stop", {"type": "content_block_stop", "index": 1}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 17},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
)


def translate(pieces: list[bytes], *, include_usage: bool = True) -> bytes:
    translator = StreamTranslator(model=MODEL, created=42, include_usage=include_usage)
    return b"".join(translator.feed(piece) for piece in pieces)


def chunks(out: bytes) -> list[ChatCompletionChunk]:
    events = [e for e in out.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    assert events[-1] == b"data: [DONE]"
    return [ChatCompletionChunk.model_validate_json(e[6:]) for e in events[:-1]]


def test_stream_translation() -> None:
    got = chunks(translate([TRANSCRIPT]))
    assert got[0].choices[0].delta.role == "assistant"
    assert {(c.id, c.created, c.model, c.object) for c in got} == {("msg_9", 42, MODEL, "chat.completion.chunk")}
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert text == "Héllo, wörld"
    calls = [t for c in got if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert (calls[0].index, calls[0].id, calls[0].type) == (0, "toolu_1", "function")
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    assert json.loads("".join((t.function.arguments or "") if t.function else "" for t in calls)) == {"city": "Oslo"}
    finish, usage = got[-2], got[-1]
    assert finish.choices[0].finish_reason == "tool_calls"
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens, usage.usage.total_tokens) == (25, 17, 42)


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    got = chunks(translate([TRANSCRIPT], include_usage=False))
    assert got[-1].choices[0].finish_reason == "tool_calls"
    assert all(c.usage is None for c in got)


def test_stream_with_crlf_line_ends() -> None:
    assert translate([TRANSCRIPT.replace(b"\n", b"\r\n")]) == translate([TRANSCRIPT])


@given(st.lists(st.integers(min_value=0, max_value=len(TRANSCRIPT)), max_size=30))
def test_stream_translation_ignores_how_bytes_are_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(TRANSCRIPT)]
    pieces = [TRANSCRIPT[a:b] for a, b in itertools.pairwise(bounds)]
    assert translate(pieces) == translate([TRANSCRIPT])


def test_stream_byte_by_byte() -> None:
    assert translate([TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))]) == translate([TRANSCRIPT])


def test_stream_error_event_ends_the_stream_in_openai_shape() -> None:
    error = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    out = translate([sse("message_start", START), error, sse("message_stop", {"type": "message_stop"})])
    events = [e for e in out.split(b"\n\n") if e]
    assert json.loads(events[-1][6:]) == {
        "error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}
    }
    assert b"[DONE]" not in out


# --- the provider against the simulator, over a real socket ----------------------------------------------


class Control:
    """The simulator's base URL and its `/_sim/*` control endpoints."""

    def __init__(self, base: str, http: httpx.AsyncClient) -> None:
        self.base = base
        self.http = http

    async def configure(self, **knobs: Any) -> None:
        (await self.http.post("/_sim/config", json=knobs)).raise_for_status()

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get("/_sim/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    async def direct(self) -> str:
        """The simulator's answer to `chat()` asked in OpenAI's dialect."""
        async with openai.AsyncOpenAI(base_url=self.base + "/v1", api_key="x", max_retries=0) as c:
            answer = await c.chat.completions.create(model=MODEL, messages=json.loads(chat())["messages"])
        return answer.choices[0].message.content or ""


@pytest.fixture(scope="module")
def sim_base() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.3))) as base:
        yield base


@pytest.fixture
async def sim(sim_base: str) -> AsyncIterator[Control]:
    async with httpx.AsyncClient(base_url=sim_base) as http:
        (await http.post("/_sim/reset")).raise_for_status()
        control = Control(sim_base, http)
        await control.configure(**msgspec.structs.asdict(SimConfig(batch_turnaround_s=0.3)))
        yield control


def make(base: str, key: str | None = "sk-ant", **fields: Any) -> AnthropicProvider:
    return AnthropicProvider(Upstream(name="anthropic", kind="anthropic", base_url=base, **fields), key)


@pytest.fixture
async def provider(sim: Control) -> AsyncIterator[AnthropicProvider]:
    p = make(sim.base)
    yield p
    await p.aclose()


def chat(**fields: Any) -> bytes:
    return msgspec.json.encode(
        {"model": MODEL, "messages": [{"role": "system", "content": "Be terse."}, USER]} | fields
    )


async def test_forward_answers_like_the_openai_dialect(provider: AnthropicProvider, sim: Control) -> None:
    answer = await provider.forward("/chat/completions", chat(), stream=False)
    assert answer.status == 200
    assert dict(answer.headers)["content-type"] == "application/json"
    assert dict(answer.headers)["x-request-id"].startswith("req_")
    completion = ChatCompletion.model_validate_json(answer.body)
    assert completion.choices[0].message.content == await sim.direct()
    assert (await sim.stats())["realtime_calls"]["/v1/messages"] == 1


async def test_forward_stream(provider: AnthropicProvider, sim: Control) -> None:
    answer = await provider.forward(
        "/chat/completions", chat(stream=True, stream_options={"include_usage": True}), stream=True
    )
    assert answer.status == 200 and answer.stream is not None
    out = b"".join([piece async for piece in answer.stream])
    got = chunks(out)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == await sim.direct()
    assert got[-1].usage is not None and got[-1].usage.completion_tokens > 0


async def test_forward_other_endpoints_are_refused(provider: AnthropicProvider) -> None:
    with pytest.raises(BadRequest, match="chat completions only"):
        await provider.forward("/embeddings", b'{"model": "claude-x", "input": "a"}', stream=False)


async def test_upstream_errors_come_back_in_openai_shape(provider: AnthropicProvider) -> None:
    answer = await provider.forward("/chat/completions", chat(model="gpt-4o"), stream=False)
    assert answer.status == 404
    assert json.loads(answer.body)["error"]["type"] == "invalid_request_error"
    streamed = await provider.forward("/chat/completions", chat(model="gpt-4o", stream=True), stream=True)
    assert streamed.status == 404 and streamed.stream is None


async def test_429_and_529_are_retried(sim: Control) -> None:
    p = make(sim.base, max_retries=2)
    try:
        answer = await p.forward("/chat/completions", chat(), stream=False, headers={"x-sim-error": "429"})
        assert answer.status == 429
        assert json.loads(answer.body)["error"]["code"] == "rate_limit_exceeded"
        assert (await sim.stats())["realtime_calls"]["/v1/messages"] == 3
    finally:
        await p.aclose()


async def test_key_and_version_headers(sim: Control) -> None:
    p = make(sim.base, key=None)
    try:
        answer = await p.forward("/chat/completions", chat(), stream=False)
    finally:
        await p.aclose()
    assert answer.status == 401
    assert json.loads(answer.body)["error"]["code"] == "invalid_api_key"


async def test_base_url_with_v1_works_too(sim: Control) -> None:
    p = make(sim.base + "/v1")
    try:
        assert (await p.forward("/chat/completions", chat(), stream=False)).status == 200
        assert await p.ping()
    finally:
        await p.aclose()


async def test_models_in_openai_shape() -> None:
    page = {
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-5-20250929",
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z",
            }
        ],
        "has_more": False,
        "first_id": "claude-sonnet-4-5-20250929",
        "last_id": "claude-sonnet-4-5-20250929",
    }
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json=page)
        return httpx.Response(200, json=page["data"][0])  # type: ignore[index]

    upstream = Upstream(name="anthropic", kind="anthropic", base_url="https://api.anthropic.com")
    client = httpx.AsyncClient(base_url=upstream.base_url, transport=httpx.MockTransport(handler))
    async with client:
        p = AnthropicProvider(upstream, "k", client)
        listed = json.loads((await p.get("/models")).body)
        one = json.loads((await p.get("/models/claude-sonnet-4-5-20250929")).body)
    model = {"id": "claude-sonnet-4-5-20250929", "object": "model", "created": 1759104000, "owned_by": "anthropic"}
    assert listed == {"object": "list", "data": [model]}
    assert one == model
    assert seen[0].url.params["limit"] == "1000"


async def wait_ended(p: AnthropicProvider, provider_id: str) -> BatchStatus:
    async def ended() -> BatchStatus | None:
        status = await p.poll(provider_id)
        return status if status.state != "running" else None

    return await wait_until_async(ended, 10, "the batch to end")


async def run_batch(p: AnthropicProvider, lines: list[BatchLine]) -> dict[str, LineResult]:
    provider_id = await p.submit_batch("b1", "/chat/completions", MODEL, lines)
    status = await wait_ended(p, provider_id)
    assert status.state == "ended"
    return {line.custom_id: line async for line in p.results(status)}


async def test_batch_round_trip(provider: AnthropicProvider, sim: Control) -> None:
    lines = [
        BatchLine(custom_id="ok-1", body=chat()),
        BatchLine(custom_id="ok-2", body=chat(stream=True)),
        BatchLine(custom_id="refused", body=chat(n=3)),
    ]
    provider_id = await provider.submit_batch("b1", "/chat/completions", MODEL, lines)
    assert provider_id.startswith("msgbatch_")
    results = {line.custom_id: line async for line in provider.results(await wait_ended(provider, provider_id))}
    for cid in ("ok-1", "ok-2"):
        assert results[cid].status == 200 and results[cid].billed
        assert ChatCompletion.model_validate_json(results[cid].body).choices[0].message.content == await sim.direct()
    assert results["refused"].status == 400 and not results["refused"].billed
    assert json.loads(results["refused"].body)["error"]["param"] == "n"
    stats = await sim.stats()
    assert stats["message_batches_created"] == 1 and stats["batch_lines_submitted"] == 2


async def test_batch_of_only_refused_lines_is_never_sent(provider: AnthropicProvider, sim: Control) -> None:
    results = await run_batch(provider, [BatchLine(custom_id="a", body=chat(n=2))])
    assert results["a"].status == 400
    await provider.cancel("local-b1")
    assert (await sim.stats())["message_batches_created"] == 0


@pytest.mark.parametrize(
    ("knobs", "status", "kind"),
    [
        ({"batch_fail": True}, 400, "invalid_request_error"),
        ({"batch_line_failure_rate": 1.0}, 500, "server_error"),
    ],
)
async def test_errored_lines(
    provider: AnthropicProvider, sim: Control, knobs: dict[str, Any], status: int, kind: str
) -> None:
    await sim.configure(**knobs)
    results = await run_batch(provider, [BatchLine(custom_id="a", body=chat())])
    assert (results["a"].status, results["a"].billed) == (status, False)
    assert json.loads(results["a"].body)["error"]["type"] == kind


async def test_expired_lines_have_no_result(provider: AnthropicProvider, sim: Control) -> None:
    await sim.configure(batch_expire_s=0.05, batch_expire_done_fraction=0)
    results = await run_batch(provider, [BatchLine(custom_id="a", body=chat())])
    assert (results["a"].status, results["a"].body, results["a"].billed) == (0, b"", False)


async def test_cancelled_lines_have_no_result(provider: AnthropicProvider, sim: Control) -> None:
    await sim.configure(batch_turnaround_s=30, batch_cancel_delay_s=0.1)
    provider_id = await provider.submit_batch("b1", "/chat/completions", MODEL, [BatchLine(custom_id="a", body=chat())])
    await provider.cancel(provider_id)
    status = await wait_ended(provider, provider_id)
    results = [line async for line in provider.results(status)]
    assert [(r.custom_id, r.status, r.billed) for r in results] == [("a", 0, False)]


async def test_a_404_right_after_create_counts_as_running(
    provider: AnthropicProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_id = await provider.submit_batch("b1", "/chat/completions", MODEL, [BatchLine(custom_id="a", body=chat())])
    provider._created["msgbatch_vanished"] = provider._created[provider_id]
    assert (await provider.poll("msgbatch_vanished")).state == "running"
    monkeypatch.setattr(adapter, "FRESH_S", 0.0)
    assert (await provider.poll("msgbatch_vanished")).state == "missing"
    assert (await provider.poll("msgbatch_never_seen")).state == "missing"


# --- Anthropic's own API, passed through ----------------------------------------------------------------------


def native(**fields: Any) -> bytes:
    """A Messages request as the anthropic SDK sends it."""
    return msgspec.json.encode({"model": MODEL, "max_tokens": 200, "system": "Be terse.", "messages": [USER]} | fields)


async def test_native_messages_pass_through_untranslated(provider: AnthropicProvider, sim: Control) -> None:
    answer = await provider.forward("/messages", native(), stream=False)
    message = Message.model_validate_json(answer.body)
    assert answer.status == 200 and dict(answer.headers)["request-id"].startswith("req_")
    assert message.type == "message" and message.content[0].type == "text"
    assert message.content[0].text == await sim.direct()  # the same answer as the translated dialect's
    streamed = await provider.forward("/messages", native(stream=True), stream=True)
    assert streamed.stream is not None
    events = b"".join([chunk async for chunk in streamed.stream])
    assert events.startswith(b"event: message_start") and b"event: message_stop" in events


async def test_native_errors_keep_anthropics_status_and_shape(provider: AnthropicProvider) -> None:
    answer = await provider.forward("/messages", native(model="claude-nonexistent"), stream=False)
    assert answer.status == 404
    body = json.loads(answer.body)
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["error"]["message"] == "model: claude-nonexistent"
    with pytest.raises(BadRequest, match="max_tokens"):
        provider.check("/messages", msgspec.json.encode({"model": MODEL, "messages": [USER]}))


async def test_a_batch_carries_both_dialects(provider: AnthropicProvider, sim: Control) -> None:
    lines = [
        BatchLine(custom_id="chat", body=chat(), endpoint="/chat/completions"),
        BatchLine(custom_id="native", body=native(), endpoint="/messages"),
    ]
    results = await run_batch(provider, lines)
    assert ChatCompletion.model_validate_json(results["chat"].body).choices[0].message.content == await sim.direct()
    message = Message.model_validate_json(results["native"].body)
    assert message.usage.service_tier == "batch"  # Anthropic's own bytes, not a translation
    assert results["native"].billed and message.content[0].type == "text"
    assert message.content[0].text == await sim.direct()
    stats = await sim.stats()
    assert stats["message_batches_created"] == 1 and stats["batch_lines_submitted"] == 2


async def test_a_native_line_errors_in_anthropics_shape(provider: AnthropicProvider, sim: Control) -> None:
    await sim.configure(batch_fail=True)
    results = await run_batch(provider, [BatchLine(custom_id="a", body=native(), endpoint="/messages")])
    assert (results["a"].status, results["a"].billed) == (400, False)
    assert json.loads(results["a"].body)["error"]["type"] == "invalid_request_error"
    assert json.loads(results["a"].body)["type"] == "error"
