"""The simulator's OpenAI real-time endpoints over real sockets, through the official SDK, checked against the spec."""

from __future__ import annotations

import base64
import math
import time
from array import array
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionSystemMessageParam

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.openapi import validate
from tests.helpers.waiting import wait_until

KEY = {"Authorization": "Bearer sk-test"}
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(latency_ms=0))) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    """One pooled plain HTTP client (a fresh client per call would dominate the run time)."""
    with httpx.Client(base_url=server, headers=KEY) as c:
        yield c


@pytest.fixture(autouse=True)
def base(server: str, http: httpx.Client) -> str:
    """The simulator's base URL, reset to a clean state and default knobs before every test."""
    http.post("/_sim/reset").raise_for_status()
    http.post("/_sim/config", json=msgspec.structs.asdict(SimConfig())).raise_for_status()
    return server


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def configure(http: httpx.Client, **knobs: Any) -> None:
    http.post("/_sim/config", json=knobs).raise_for_status()


def sse_data(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The decoded `data:` payloads of an SSE answer (the literal `[DONE]` kept as a string)."""
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else msgspec.json.decode(line) for line in lines]


def test_chat_completion_is_valid_deterministic_and_prompt_specific(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=USER)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    first = raw.parse()
    again = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    other = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert raw.headers["x-request-id"].startswith("req_")
    assert first.object == "chat.completion" and first.model == "gpt-4o-mini"
    assert first.choices[0].message.role == "assistant" and first.choices[0].finish_reason == "stop"
    text = first.choices[0].message.content
    assert text and text == again.choices[0].message.content
    assert text != other.choices[0].message.content
    assert text.split(":")[0] != (other.choices[0].message.content or "").split(":")[0]  # fingerprints differ
    assert first.id != again.id and first.system_fingerprint and first.service_tier == "default"
    usage = first.usage
    assert usage is not None and usage.prompt_tokens >= 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None


def test_chat_honours_max_tokens_and_n(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=USER, n=3, max_tokens=4)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason == "length" for c in answer.choices)
    assert all(len(c.message.content or "") <= 16 for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens <= 12
    newer = client.chat.completions.create(model="gpt-5", messages=USER, max_completion_tokens=2)
    assert newer.choices[0].finish_reason == "length" and newer.usage and newer.usage.completion_tokens <= 2


def test_chat_stream_with_usage_matches_the_plain_answer(client: openai.OpenAI, http: httpx.Client) -> None:
    plain = client.chat.completions.create(model="gpt-4o", messages=USER)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1

    body = {"model": "gpt-4o", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    payloads = sse_data(http, "/v1/chat/completions", body)
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        validate("CreateChatCompletionStreamResponse", payload)
    assert all(p["usage"] is None for p in payloads[:-2]) and payloads[-2]["usage"]["total_tokens"] > 0


def test_stream_without_include_usage_sends_no_usage(http: httpx.Client) -> None:
    payloads = sse_data(http, "/v1/chat/completions", {"model": "gpt-4o", "messages": USER, "stream": True, "n": 2})
    chunks = payloads[:-1]
    assert all("usage" not in p for p in chunks)
    assert {p["choices"][0]["index"] for p in chunks} == {0, 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_chunks_arrive_before_the_stream_ends(http: httpx.Client, server: str) -> None:
    # 0.2 s between chunks: after the first, the stream goes on for over a second, so the look at the stats below
    # comes while it is open even when a busy host holds this thread back for a while.
    configure(http, stream_chunk_delay_ms=200)
    arrivals = []
    open_during = []
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    with httpx.Client(base_url=server) as control, http.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                if len(arrivals) == 1:
                    open_during.append(control.get("/_sim/stats").json()["open_streams"])
    assert len(arrivals) >= 6
    # Paced, not sent in one burst: at least half the pauses lie between the first and the last chunk read (the
    # other half is room for a first read that a busy host delays).
    assert arrivals[-1] - arrivals[0] >= 0.2 * (len(arrivals) - 1) / 2
    assert open_during == [1]  # the first chunk came while the upstream was still producing
    # The simulator closes its side after it sent the last chunk: wait for that, not just for the chunk.
    wait_until(lambda: http.get("/_sim/stats").json()["open_streams"] == 0, 10, "the stream to close")


async def test_async_client_chat_and_stream(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as client:
        plain = await client.chat.completions.create(model="o4-mini", messages=USER)
        stream = await client.chat.completions.create(model="o4-mini", messages=USER, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == plain.choices[0].message.content


def test_prompt_cache_reports_cached_prefix_tokens(client: openai.OpenAI) -> None:
    long_system: ChatCompletionSystemMessageParam = {"role": "system", "content": "You are a careful assistant. " * 300}
    first = client.chat.completions.create(model="gpt-4o", messages=[long_system, *USER])
    second = client.chat.completions.create(
        model="gpt-4o",
        messages=[long_system, {"role": "user", "content": "And of Spain?"}],
    )
    other_model = client.chat.completions.create(model="gpt-4o-mini", messages=[long_system, *USER])
    short = client.chat.completions.create(model="gpt-4o", messages=USER)
    assert first.usage and second.usage and other_model.usage and short.usage
    assert first.usage.prompt_tokens >= 1024
    assert first.usage.prompt_tokens_details and first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens if second.usage.prompt_tokens_details else None
    assert cached is not None and cached >= 1024 and cached % 128 == 0 and cached <= second.usage.prompt_tokens
    assert other_model.usage.prompt_tokens_details and other_model.usage.prompt_tokens_details.cached_tokens == 0
    assert short.usage.prompt_tokens_details and short.usage.prompt_tokens_details.cached_tokens == 0


@pytest.mark.parametrize(("asked", "echoed"), [(None, "default"), ("auto", "default"), ("flex", "flex")])
def test_service_tier_is_echoed(client: openai.OpenAI, asked: Literal["auto", "flex"] | None, echoed: str) -> None:
    assert client.chat.completions.create(model="gpt-5", messages=USER, service_tier=asked).service_tier == echoed


def test_legacy_completions_plain_and_streamed(client: openai.OpenAI, http: httpx.Client) -> None:
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt=["Say hi", "Say bye"])
    validate("CreateCompletionResponse", raw.http_response.json())
    answer = raw.parse()
    assert answer.object == "text_completion" and len(answer.choices) == 2
    assert answer.choices[0].text != answer.choices[1].text
    assert all(c.finish_reason == "length" for c in answer.choices)  # the legacy default max_tokens is 16
    assert answer.usage and answer.usage.completion_tokens <= 32
    full = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=[1, 2, 3], max_tokens=500)
    assert full.choices[0].finish_reason == "stop" and full.usage and full.usage.prompt_tokens == 3

    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": True, "max_tokens": 500}
    payloads = sse_data(http, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert payloads[-1] == "[DONE]"
    for payload in payloads[:-1]:
        if payload["choices"] and payload["choices"][0]["finish_reason"] is None:
            continue  # mid-stream chunks carry `finish_reason: null` like the real API; the spec types it non-null
        validate("CreateCompletionResponse", payload)
    assert sum(1 for p in payloads[:-1] if p["choices"] and p["choices"][0]["finish_reason"] is None) >= 3
    plain = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=500)
    streamed = "".join(p["choices"][0]["text"] for p in payloads[:-1] if p["choices"])
    assert streamed == plain.choices[0].text and payloads[-2]["usage"]["completion_tokens"] > 0


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_embeddings_float_base64_and_dimensions(client: openai.OpenAI, base: str) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha", "beta"], encoding_format="float"
    )
    validate("CreateEmbeddingResponse", raw.http_response.json())
    floats = raw.parse()
    assert [len(d.embedding) for d in floats.data] == [1536, 1536]
    assert all(abs(_norm(d.embedding) - 1) < 1e-5 for d in floats.data)
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 3  # ceil(5 / 4) + ceil(4 / 4)

    decoded = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])  # SDK asks base64
    assert [d.embedding for d in decoded.data] == [d.embedding for d in floats.data]
    r = httpx.post(
        f"{base}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"},
        headers=KEY,
    )
    b64 = r.json()["data"][0]["embedding"]
    assert isinstance(b64, str) and array("f", base64.b64decode(b64)).tolist() == floats.data[0].embedding

    large = client.embeddings.create(model="text-embedding-3-large", input="alpha", encoding_format="float")
    short = client.embeddings.create(
        model="text-embedding-3-large", input="alpha", dimensions=256, encoding_format="float"
    )
    tokens = client.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3]], encoding_format="float")
    assert len(large.data[0].embedding) == 3072 and len(short.data[0].embedding) == 256
    assert abs(_norm(short.data[0].embedding) - 1) < 1e-5
    assert tokens.usage.prompt_tokens == 3
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="text-embedding-ada-002", input="alpha", dimensions=256)
    validate("ErrorResponse", bad.value.response.json())


def test_responses_api_string_and_items(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-4.1", input="Tell me a joke", instructions="Be terse.")
    validate("Response", raw.http_response.json())
    answer = raw.parse()
    assert answer.object == "response" and answer.status == "completed"
    assert answer.output_text.startswith("Simulated reply")
    assert answer.usage and answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens

    items = client.responses.create(
        model="gpt-4.1",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Tell me a joke"}]}],
        instructions="Be terse.",
    )
    assert items.output_text == answer.output_text  # same conversation, same answer
    cut = client.responses.with_raw_response.create(model="gpt-4.1", input="Tell me a joke", max_output_tokens=16)
    validate("Response", cut.http_response.json())
    assert cut.parse().status == "incomplete" and cut.http_response.json()["incomplete_details"] == {
        "reason": "max_output_tokens"
    }


_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.completed": "ResponseCompletedEvent",
}


def test_responses_stream_follows_the_spec_events(client: openai.OpenAI, http: httpx.Client) -> None:
    plain = client.responses.create(model="gpt-5-mini", input="Stream me")
    events = list(client.responses.create(model="gpt-5-mini", input="Stream me", stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == plain.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    payloads = sse_data(http, "/v1/responses", {"model": "gpt-5-mini", "input": "Stream me", "stream": True})
    for payload in payloads:
        validate(_EVENT_SCHEMAS[payload["type"]], payload)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    validate("ListModelsResponse", raw.http_response.json())
    ids = {m.id for m in raw.parse()}
    expected = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-5", "gpt-5-mini", "o4-mini"}
    assert expected | {"text-embedding-3-small", "text-embedding-3-large"} <= ids
    assert any(i.startswith("claude-") for i in ids)
    one = client.models.with_raw_response.retrieve("gpt-4o-2024-08-06")
    validate("Model", one.http_response.json())
    assert one.parse().id == "gpt-4o-2024-08-06"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    validate("ErrorResponse", missing.value.response.json())
    assert missing.value.code == "model_not_found"


@pytest.mark.parametrize("model", ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "sim-anything", "claude-sonnet-4-6"])
def test_known_families_and_sim_models_are_accepted(client: openai.OpenAI, model: str) -> None:
    assert client.chat.completions.create(model=model, messages=USER).model == model


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    for call in (
        lambda: client.chat.completions.create(model="gpt-9000", messages=USER),
        lambda: client.embeddings.create(model="nope", input="x"),
        lambda: client.responses.create(model="nope", input="x"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        validate("ErrorResponse", caught.value.response.json())
        assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": []}', "messages"),
        (b'{"model": "gpt-4o", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(http: httpx.Client, body: bytes, param: str | None) -> None:
    r = http.post("/v1/chat/completions", content=body, headers={**KEY, "content-type": "application/json"})
    assert r.status_code == 400
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["param"] == param


def test_missing_or_wrong_api_key_is_401(base: str, http: httpx.Client) -> None:
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.get("/v1/models").status_code == 200  # no key configured: a keyless local server
        for headers in ({"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
            r = anonymous.get("/v1/models", headers=headers)
            assert r.status_code == 401
            validate("ErrorResponse", r.json())
            assert r.json()["error"]["code"] == "invalid_api_key"
        configure(http, api_key="sk-right")
        r = anonymous.get("/v1/models")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    with (
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0) as wrong,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        wrong.chat.completions.create(model="gpt-4o", messages=USER)
    assert caught.value.code == "invalid_api_key"
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-right", max_retries=0) as right:
        assert right.models.list().data


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (400, openai.BadRequestError),
    ],
)
def test_x_sim_error_header_forces_an_error(
    client: openai.OpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(
            model="gpt-4o",
            messages=USER,
            extra_headers={"X-Sim-Error": str(status)},
        )
    response = caught.value.response
    assert response.status_code == status
    validate("ErrorResponse", response.json())
    if status == 429:
        assert response.headers["retry-after"] == "0" and response.json()["error"]["code"] == "rate_limit_exceeded"


def test_error_rate_injects_alternating_429_and_500(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, error_rate=1.0)
    statuses = []
    for _ in range(4):
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="text-embedding-3-small", input="x")
        statuses.append(caught.value.status_code)
    assert statuses == [429, 500, 429, 500]

    configure(http, error_rate=0.5, seed=7)
    outcomes = []
    for _ in range(40):
        r = http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
        outcomes.append(r.status_code)
    configure(http, error_rate=0.5, seed=7)  # same seed, same sequence
    again = [
        http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}).status_code
        for _ in range(40)
    ]
    assert outcomes == again
    assert 8 <= sum(s != 200 for s in outcomes) <= 32 and set(outcomes) <= {200, 429, 500}
    stats = http.get("/_sim/stats").json()
    assert stats["errors_injected"] == 4 + 2 * sum(s != 200 for s in outcomes)


def test_latency_from_config_and_header(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, latency_ms=150)
    started = time.monotonic()
    client.embeddings.create(model="text-embedding-3-small", input="x")
    assert time.monotonic() - started >= 0.15
    configure(http, latency_ms=5000)
    started = time.monotonic()
    client.embeddings.create(model="text-embedding-3-small", input="x", extra_headers={"X-Sim-Latency-Ms": "0"})
    assert time.monotonic() - started < 5.0  # the header's 0 ms, not the configured 5 s (seconds of room)
    configure(http, latency_ms=0)
    started = time.monotonic()
    client.embeddings.create(model="text-embedding-3-small", input="x", extra_headers={"X-Sim-Latency-Ms": "200"})
    assert time.monotonic() - started >= 0.2


def test_stats_count_realtime_calls_per_endpoint(client: openai.OpenAI, http: httpx.Client) -> None:
    client.chat.completions.create(model="gpt-4o", messages=USER)
    client.chat.completions.create(model="gpt-4o", messages=USER)
    client.embeddings.create(model="text-embedding-3-small", input="x")
    client.responses.create(model="gpt-4o", input="x")
    client.models.list()
    calls = http.get("/_sim/stats").json()["realtime_calls"]
    assert calls == {"/v1/chat/completions": 2, "/v1/embeddings": 1, "/v1/responses": 1}
    http.post("/_sim/reset").raise_for_status()
    assert http.get("/_sim/stats").json()["realtime_calls"] == {}


def test_live_config_rejects_unknown_and_out_of_range_knobs(http: httpx.Client) -> None:
    assert http.post("/_sim/config", json={"no_such_knob": 1}).status_code == 400
    assert http.post("/_sim/config", json={"error_rate": 2}).status_code == 400
    assert http.post("/_sim/config", json={"latency_ms": -1}).status_code == 400
    r = http.post("/_sim/config", json={"batch_turnaround_s": 0.5})
    assert r.status_code == 200 and r.json()["batch_turnaround_s"] == 0.5
    assert http.get("/_sim/config").json()["batch_turnaround_s"] == 0.5


def test_instances_are_independent(http: httpx.Client) -> None:
    with serve_in_thread(create_simulator(SimConfig(error_rate=1.0))) as other:
        failing = httpx.post(
            f"{other}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=KEY
        )
        assert failing.status_code == 429
        assert httpx.get(f"{other}/_sim/stats").json()["realtime_calls"] == {"/v1/embeddings": 1}
    assert http.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"}).status_code == 200
    assert http.get("/_sim/stats").json()["realtime_calls"] == {"/v1/embeddings": 1}


def _wait_for_stat(http: httpx.Client, name: str, value: int) -> None:
    wait_until(lambda: http.get("/_sim/stats").json()[name] == value, 5, f"{name} to reach {value}", every=0.02)


def test_calls_abandoned_by_the_client_are_counted(http: httpx.Client, server: str) -> None:
    slow = {**KEY, "X-Sim-Latency-Ms": "3000"}
    with httpx.Client(base_url=server, headers=slow, timeout=0.2) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    _wait_for_stat(http, "cancelled_calls", 1)

    configure(http, stream_chunk_delay_ms=200)
    body = {"model": "gpt-4o", "messages": USER, "stream": True}
    with (
        httpx.Client(base_url=server, headers=KEY) as reader,
        reader.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        assert next(r.iter_lines()).startswith("data: ")
    _wait_for_stat(http, "cancelled_calls", 2)
    _wait_for_stat(http, "open_streams", 0)


def test_flex_shortage_knob(http: httpx.Client) -> None:
    configure(http, flex_unavailable=True)
    body = {"model": "gpt-5-mini", "messages": USER, "service_tier": "flex"}
    short = http.post("/v1/chat/completions", json=body, headers=KEY)
    assert short.status_code == 429
    validate("ErrorResponse", short.json())
    assert short.json()["error"]["code"] == "resource_unavailable"
    standard = http.post("/v1/chat/completions", json=body | {"service_tier": "default"}, headers=KEY)
    assert standard.status_code == 200
