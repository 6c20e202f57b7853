"""The simulator's structured work: tool calls, JSON Schema output and logprobs, through the official SDKs."""

from __future__ import annotations

import datetime
import enum
import json
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import anthropic
import httpx
import msgspec
import openai
import pytest
from anthropic.types import ToolUseBlock
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from openai.lib._pydantic import to_strict_json_schema
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from pydantic import BaseModel, Field

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from router.simulator.jsonschema_instances import SchemaError, instance
from router.simulator.text import WORDS
from tests.helpers.openapi import validate
from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic
from tests.helpers.waiting import wait_until

OPENAI_MODEL = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-6"
KEY = {"Authorization": "Bearer sk-test", "x-api-key": "sk-test", "anthropic-version": "2023-06-01"}


# --- schemas as Pydantic and hand-written ones emit them -------------------------------------------------


class Unit(enum.StrEnum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Weather(BaseModel):
    """Arguments of the weather tool."""

    city: str
    unit: Unit
    days: int = Field(ge=1, le=7)


class Clock(BaseModel):
    """Arguments of the time tool."""

    timezone: str


class Address(BaseModel):
    street: str
    postcode: Annotated[str, Field(pattern=r"^\d{5}$")]


class Node(BaseModel):
    name: str
    children: list[Node]


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Person(BaseModel):
    """Everything strict mode and Pydantic put in a schema: bounds, enums, refs, recursion, unions, formats."""

    name: str = Field(min_length=2, max_length=12)
    age: int = Field(gt=0, lt=130)
    score: float = Field(ge=0, le=1)
    unit: Unit
    tags: list[str] = Field(min_length=1, max_length=3)
    address: Address | None
    born: datetime.datetime
    day: datetime.date
    id: uuid.UUID
    tree: Node
    pet: Cat | Dog = Field(discriminator="kind")
    pair: tuple[int, str]
    price: float = Field(multiple_of=0.25, ge=1)


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):
    steps: list[Step]
    final_answer: str


HAND_WRITTEN: list[dict[str, Any] | bool] = [  # a boolean is a schema too
    {"type": "object", "properties": {"a": {"const": 3}, "b": {"enum": ["x", 1, None]}}, "required": ["a", "b"]},
    {"type": ["string", "null"], "minLength": 20},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "uniqueItems": True, "minItems": 3},
    {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "items": False},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": -40, "maximum": -30, "multipleOf": 3},
    {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2, "maxProperties": 4},
    {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
    {"oneOf": [{"type": "string", "format": "email"}, {"type": "string", "format": "ipv4"}]},
    {"type": "string", "format": "date-time"},
    {"$defs": {"list": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/cell"}]},
               "cell": {"type": "object", "properties": {"head": {"type": "integer"}, "tail": {"$ref": "#/$defs/list"}},
                        "required": ["head", "tail"], "additionalProperties": False}},
     "$ref": "#/$defs/list"},
    {"type": "object", "properties": {"a~b/c": {"type": "string"}}, "required": ["a~b/c"],
     "$defs": {"x": {"type": "integer"}}, "additionalProperties": {"$ref": "#/$defs/x"}},
    {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$", "maxLength": 6},
    True,
]  # fmt: skip

SCHEMAS: list[Any] = [
    Person.model_json_schema(),
    to_strict_json_schema(Person),
    to_strict_json_schema(MathReasoning),
    *HAND_WRITTEN,
]


def check(schema: Any, value: Any) -> None:
    """Raise unless `value` is valid against `schema`, formats included."""
    Draft202012Validator(schema, format_checker=FormatChecker()).validate(value)


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_generated_instances_validate(schema: Any) -> None:
    values = [instance(schema, f"seed {n}".encode(), WORDS) for n in range(40)]
    for value in values:
        check(schema, value)
    assert instance(schema, b"seed 0", WORDS) == values[0]  # deterministic
    if schema in SCHEMAS[:3]:
        assert len({json.dumps(v, sort_keys=True) for v in values}) > 30  # and varied by the seed
    if schema is SCHEMAS[0]:
        assert all(Person.model_validate(v).name for v in values)


@settings(max_examples=60, deadline=None)
@given(seed=st.binary(max_size=16))
def test_instances_of_a_strict_pydantic_schema_parse_back(seed: bytes) -> None:
    schema = to_strict_json_schema(Person)
    value = instance(schema, seed, WORDS)
    check(schema, value)
    assert Person.model_validate(value).pet.kind in ("cat", "dog")


@pytest.mark.parametrize(
    "schema",
    [
        False,
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#/$defs/missing"},
        {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]},
        {"enum": []},
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"type": "string", "pattern": "("},
    ],
)
def test_schemas_without_instances_are_refused(schema: Any) -> None:
    with pytest.raises(SchemaError):
        instance(schema, b"seed", WORDS)


# --- OpenAI chat completions -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.2))) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=KEY) as c:
        yield c


@pytest.fixture
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(server: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server, api_key="sk-test", max_retries=0) as c:
        yield c


WEATHER = openai.pydantic_function_tool(Weather, name="get_weather", description="Weather forecast for a city.")
CLOCK = openai.pydantic_function_tool(Clock, name="get_time")
TOOLS: list[ChatCompletionToolParam] = [WEATHER, CLOCK]
SCHEMA_OF = {"get_weather": WEATHER["function"]["parameters"], "get_time": CLOCK["function"]["parameters"]}
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What will the weather be in Paris?"}]


def sse(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoded `data:` payloads of a streamed answer, `[DONE]` checked and dropped."""
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [msgspec.json.decode(line) for line in lines[:-1]]


def test_parse_returns_the_pydantic_model(client: openai.OpenAI) -> None:
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Solve 8x + 7 = -23"}]
    raw = client.chat.completions.with_raw_response.parse(
        model=OPENAI_MODEL, messages=question, response_format=MathReasoning
    )
    body = raw.http_response.json()
    validate("CreateChatCompletionResponse", body)
    check(to_strict_json_schema(MathReasoning), json.loads(body["choices"][0]["message"]["content"]))
    parsed = raw.parse().choices[0].message.parsed
    assert isinstance(parsed, MathReasoning) and parsed.steps and parsed.final_answer
    again = client.chat.completions.parse(model=OPENAI_MODEL, messages=question, response_format=MathReasoning)
    other = client.chat.completions.parse(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Solve 2x = 4"}], response_format=MathReasoning
    )
    assert again.choices[0].message.parsed == parsed  # seeded by the prompt
    assert other.choices[0].message.parsed != parsed


def test_a_rich_schema_and_n_choices(client: openai.OpenAI) -> None:
    answer = client.chat.completions.parse(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "Describe someone"}], response_format=Person, n=3
    )
    people = [choice.message.parsed for choice in answer.choices]
    assert all(isinstance(p, Person) for p in people) and len({p.model_dump_json() for p in people if p}) == 3


def test_json_object_mode(client: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Answer in JSON please"}]
    answer = client.chat.completions.create(
        model=OPENAI_MODEL, messages=messages, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=OPENAI_MODEL, messages=ASK, response_format={"type": "json_object"})
    assert caught.value.param == "messages"


def test_an_unsatisfiable_schema_is_a_400(client: openai.OpenAI) -> None:
    bad: dict[str, Any] = {"type": "object", "properties": {"x": {"$ref": "#/$defs/nowhere"}}, "required": ["x"]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=ASK,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": bad}},
        )
    assert "Invalid schema for response_format 'bad'" in caught.value.message


def test_tool_loop(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=ASK, tools=TOOLS)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    first = raw.parse().choices[0]
    assert first.finish_reason == "tool_calls" and first.message.content is None
    assert first.message.tool_calls is not None
    call = first.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    check(SCHEMA_OF["get_weather"], json.loads(call.function.arguments))
    Weather.model_validate_json(call.function.arguments)

    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny"}'},
    ]
    raw = client.chat.completions.with_raw_response.create(model=OPENAI_MODEL, messages=history, tools=TOOLS)
    validate("CreateChatCompletionResponse", raw.http_response.json())
    final = raw.parse().choices[0]
    assert final.finish_reason == "stop" and final.message.tool_calls is None and final.message.content


@pytest.mark.parametrize(
    ("tool_choice", "called", "finish"),
    [
        ("none", [], "stop"),
        ("auto", ["get_weather"], "tool_calls"),  # the prompt names no tool but the weather, so one is picked
        ("required", ["get_weather"], "tool_calls"),
        ({"type": "function", "function": {"name": "get_time"}}, ["get_time"], "stop"),  # OpenAI's "stop" here
        (
            {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [CLOCK]}},
            ["get_time"],
            "tool_calls",
        ),
    ],
)
def test_tool_choice(http: httpx.Client, tool_choice: Any, called: list[str], finish: str) -> None:
    messages = [{"role": "user", "content": "Use get_weather, please."}]
    body = http.post(
        "/v1/chat/completions",
        json={"model": OPENAI_MODEL, "messages": messages, "tools": TOOLS, "tool_choice": tool_choice},
    ).json()
    validate("CreateChatCompletionResponse", body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == finish
    calls = choice["message"].get("tool_calls") or []
    assert [c["function"]["name"] for c in calls] == called
    assert (choice["message"]["content"] is None) == bool(called)
    for c in calls:
        check(SCHEMA_OF[c["function"]["name"]], json.loads(c["function"]["arguments"]))


def test_required_calls_even_after_a_tool_result_and_named_tools_call_in_parallel(client: openai.OpenAI) -> None:
    history: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Call get_weather and get_time for Oslo."},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
    ]
    again = client.chat.completions.create(model=OPENAI_MODEL, messages=history, tools=TOOLS, tool_choice="required")
    both = [c.function.name for c in again.choices[0].message.tool_calls or []]  # type: ignore[union-attr]
    assert both == ["get_weather", "get_time"]
    one = client.chat.completions.create(
        model=OPENAI_MODEL, messages=history, tools=TOOLS, tool_choice="required", parallel_tool_calls=False
    )
    assert len(one.choices[0].message.tool_calls or []) == 1


class Counts(BaseModel):
    counts: dict[str, int]  # strict mode has no place for a free-form object


NOT_STRICT = {"name": "counts", "schema": to_strict_json_schema(Counts), "strict": True}
NOT_STRICT_TOOL = {"name": "f", "parameters": Weather.model_json_schema(), "strict": True}  # objects left open


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": NOT_STRICT}}, "response_format"),
        ({"tools": [{"type": "function", "function": NOT_STRICT_TOOL}]}, "tools[0].function.parameters"),
    ],
)
def test_bad_structured_requests_are_400(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    r = http.post("/v1/chat/completions", json={"model": OPENAI_MODEL, "messages": ASK, **extra})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_streamed_tool_calls_reassemble(client: openai.OpenAI, http: httpx.Client) -> None:
    body: dict[str, Any] = {
        "model": OPENAI_MODEL,
        "messages": [{"role": "user", "content": "get_weather and get_time"}],
    }
    body |= {"tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}}
    chunks = sse(http, "/v1/chat/completions", body)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk["choices"]:
            finish = choice["finish_reason"] or finish
            for delta in choice["delta"].get("tool_calls", []):
                call = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.get("id", "")
                call["name"] += delta.get("function", {}).get("name", "") or ""
                call["arguments"] += delta.get("function", {}).get("arguments", "") or ""
    assert finish == "tool_calls" and [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum("arguments" in str(c) for c in chunks) > 3  # arguments arrive in pieces
    plain = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    for index, call in calls.items():
        check(SCHEMA_OF[call["name"]], json.loads(call["arguments"]))
        assert call["id"].startswith("call_")
        assert call["arguments"] == plain["choices"][0]["message"]["tool_calls"][index]["function"]["arguments"]
    assert chunks[-1]["usage"] == plain["usage"]

    with client.chat.completions.stream(model=OPENAI_MODEL, messages=ASK, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    parsed = final.choices[0].message.tool_calls
    assert parsed and isinstance(parsed[0].function.parsed_arguments, Weather)


def test_streamed_structured_output(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=OPENAI_MODEL, messages=ASK, response_format=MathReasoning) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, MathReasoning)


def test_logprobs(client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": OPENAI_MODEL, "messages": ASK, "logprobs": True, "top_logprobs": 3}
    plain = http.post("/v1/chat/completions", json=body).json()
    validate("CreateChatCompletionResponse", plain)
    choice = plain["choices"][0]
    tokens = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
    assert len(tokens) == plain["usage"]["completion_tokens"] and choice["logprobs"]["refusal"] is None
    for token in tokens:
        assert token["bytes"] == list(token["token"].encode()) and token["logprob"] <= 0
        top = token["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == token["token"] and top[0]["logprob"] == token["logprob"]
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1

    chunks = sse(http, "/v1/chat/completions", {**body, "stream": True})
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    streamed = [t for c in chunks for ch in c["choices"] if ch["logprobs"] for t in ch["logprobs"]["content"]]
    assert streamed == tokens
    content = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert content == choice["message"]["content"]

    sdk = client.chat.completions.create(model=OPENAI_MODEL, messages=ASK, logprobs=True)
    assert sdk.choices[0].logprobs and sdk.choices[0].logprobs.content
    assert all(t.top_logprobs == [] for t in sdk.choices[0].logprobs.content)
    off = client.chat.completions.create(model=OPENAI_MODEL, messages=ASK)
    assert off.choices[0].logprobs is None


def test_legacy_completion_logprobs(http: httpx.Client) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "logprobs": 2, "max_tokens": 40}
    plain = http.post("/v1/completions", json=body).json()
    validate("CreateCompletionResponse", plain)
    choice = plain["choices"][0]
    lp = choice["logprobs"]
    assert "".join(lp["tokens"]) == choice["text"]
    assert all(choice["text"][at:].startswith(tok) for at, tok in zip(lp["text_offset"], lp["tokens"], strict=True))
    for top, tok, value in zip(lp["top_logprobs"], lp["tokens"], lp["token_logprobs"], strict=True):
        assert len(top) == 2 and top[tok] == value
    chunks = sse(http, "/v1/completions", {**body, "stream": True})
    pieces = [ch for c in chunks for ch in c["choices"] if ch["logprobs"]]
    assert [t for ch in pieces for t in ch["logprobs"]["tokens"]] == lp["tokens"]
    assert [o for ch in pieces for o in ch["logprobs"]["text_offset"]] == lp["text_offset"]
    assert "".join(ch["text"] for c in chunks for ch in c["choices"]) == choice["text"]
    r = http.post("/v1/completions", json={**body, "logprobs": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_batch_lines_with_tools_and_schemas(client: openai.OpenAI, http: httpx.Client) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "math", "schema": to_strict_json_schema(MathReasoning)}}
    bodies = [
        {"model": OPENAI_MODEL, "messages": ASK, "response_format": fmt, "logprobs": True},
        {"model": OPENAI_MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required"},
    ]
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b} for i, b in enumerate(bodies)
    ]
    uploaded = client.files.create(file=("in.jsonl", b"".join(msgspec.json.encode(x) + b"\n" for x in lines)),
                                   purpose="batch")  # fmt: skip
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    ended = ("completed", "failed", "expired", "cancelled")
    wait_until(lambda: client.batches.retrieve(batch.id).status in ended, what="the batch to end")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    out = {
        line["custom_id"]: line["response"]["body"]
        for line in map(msgspec.json.decode, client.files.content(batch.output_file_id).content.splitlines())
    }
    for body in out.values():
        validate("CreateChatCompletionResponse", body)
    structured = out["r0"]["choices"][0]
    check(to_strict_json_schema(MathReasoning), json.loads(structured["message"]["content"]))
    assert structured["logprobs"]["content"]
    direct = http.post("/v1/chat/completions", json=bodies[0]).json()
    assert direct["choices"][0]["message"] == structured["message"]
    call = out["r1"]["choices"][0]["message"]["tool_calls"][0]["function"]
    check(SCHEMA_OF[call["name"]], json.loads(call["arguments"]))


# --- Anthropic Messages ----------------------------------------------------------------------------------

CLAUDE_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "Weather forecast.", "input_schema": Weather.model_json_schema()},
    {"name": "get_time", "input_schema": Clock.model_json_schema()},
]
CLAUDE_ASK: list[Any] = [{"role": "user", "content": "What will the weather be in Paris?"}]


def test_messages_tool_use_and_tool_loop(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model=CLAUDE, max_tokens=400, messages=CLAUDE_ASK, tools=CLAUDE_TOOLS)
    assert message.stop_reason == "tool_use"
    block = message.content[-1]
    assert isinstance(block, ToolUseBlock) and block.id.startswith("toolu_")
    schema = next(t["input_schema"] for t in CLAUDE_TOOLS if t["name"] == block.name)
    check(schema, block.input)
    assert message.usage.output_tokens > 0

    history = [
        *CLAUDE_ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    final = claude.messages.create(model=CLAUDE, max_tokens=400, messages=history, tools=CLAUDE_TOOLS)
    assert final.stop_reason == "end_turn" and final.content[0].type == "text"


@pytest.mark.parametrize(
    ("tool_choice", "called"),
    [
        ({"type": "none"}, []),
        ({"type": "any"}, ["get_weather", "get_time"]),
        ({"type": "any", "disable_parallel_tool_use": True}, ["get_weather"]),
        ({"type": "tool", "name": "get_time"}, ["get_time"]),
    ],
)
def test_messages_tool_choice(claude: anthropic.Anthropic, tool_choice: Any, called: list[str]) -> None:
    ask: list[Any] = [{"role": "user", "content": "Call get_weather and get_time."}]
    message = claude.messages.create(
        model=CLAUDE, max_tokens=400, messages=ask, tools=CLAUDE_TOOLS, tool_choice=tool_choice
    )
    uses = [b for b in message.content if isinstance(b, ToolUseBlock)]
    assert [b.name for b in uses] == called
    assert message.stop_reason == ("tool_use" if called else "end_turn")


def test_messages_stream_delivers_the_tool_use(claude: anthropic.Anthropic, http: httpx.Client) -> None:
    kwargs: dict[str, Any] = {"model": CLAUDE, "max_tokens": 400, "messages": CLAUDE_ASK, "tools": CLAUDE_TOOLS}
    plain = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and "input_json" in events
    streamed, direct = final.content[-1], plain.content[-1]
    assert isinstance(streamed, ToolUseBlock) and isinstance(direct, ToolUseBlock)
    assert (streamed.name, streamed.input) == (direct.name, direct.input)
    assert final.usage.output_tokens == plain.usage.output_tokens


def test_messages_output_config_json_schema(claude: anthropic.Anthropic) -> None:
    schema = to_strict_json_schema(MathReasoning)
    message = claude.messages.create(
        model=CLAUDE,
        max_tokens=1000,
        messages=[{"role": "user", "content": "Solve 2x = 4"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    check(schema, json.loads(message.content[0].text))
    # The SDK moves constraints Anthropic does not enforce (bounds, patterns) into descriptions, so parse a model
    # without them.
    parsed = claude.messages.parse(
        model=CLAUDE,
        max_tokens=1000,
        messages=[{"role": "user", "content": "Solve 2x = 4"}],
        output_format=MathReasoning,
    )
    assert isinstance(parsed.parsed_output, MathReasoning) and parsed.parsed_output.steps


def test_messages_bad_tool_choice_is_400(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(
            model=CLAUDE, max_tokens=10, messages=CLAUDE_ASK, tools=CLAUDE_TOOLS,
            tool_choice={"type": "tool", "name": "nope"},
        )  # fmt: skip
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=CLAUDE, max_tokens=10, messages=CLAUDE_ASK, tool_choice={"type": "any"})


# --- through the router: OpenAI's dialect to both upstreams, in real time and through their batch APIs -----


@pytest.mark.integration
@pytest.mark.parametrize("model", [OPENAI_MODEL, "claude-sonnet-4-5"])
@pytest.mark.parametrize("lane", ["realtime", "batch"])
def test_tool_calls_and_parse_through_the_router(
    start_router: RouterFactory, sim: Sim, oai: Callable[..., openai.OpenAI], model: str, lane: str
) -> None:
    headers = {"X-Deadline": "2h"} if lane == "batch" else {}
    with start_router(upstreams=with_anthropic(sim), batch=FAST) as router:
        client = oai(router)
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=ASK, tools=TOOLS, extra_headers=headers
        )
        assert raw.headers["x-router-lane"] == lane
        call = (raw.parse().choices[0].message.tool_calls or [])[0]
        assert call.type == "function"
        assert call.function.name in SCHEMA_OF and raw.parse().choices[0].finish_reason == "tool_calls"
        check(SCHEMA_OF[call.function.name], json.loads(call.function.arguments))
        parsed = client.chat.completions.parse(
            model=model, messages=ASK, response_format=MathReasoning, extra_headers=headers
        )
        assert isinstance(parsed.choices[0].message.parsed, MathReasoning)
        with client.chat.completions.stream(model=model, messages=ASK, tools=TOOLS, extra_headers=headers) as stream:
            final = stream.get_final_completion()
        streamed = (final.choices[0].message.tool_calls or [])[0]
        assert isinstance(streamed.function.parsed_arguments, Weather | Clock)


def test_responses_parse(client: openai.OpenAI, http: httpx.Client) -> None:
    raw = client.responses.with_raw_response.parse(
        model="gpt-4.1-mini", input="Solve 8x + 7 = -23", text_format=MathReasoning
    )
    body = raw.http_response.json()
    validate("Response", body)
    assert body["text"]["format"]["type"] == "json_schema" and body["text"]["format"]["name"] == "MathReasoning"
    assert isinstance(raw.parse().output_parsed, MathReasoning)
    with client.responses.stream(model="gpt-4.1-mini", input="Solve 2x = 4", text_format=MathReasoning) as stream:
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, MathReasoning)
    bad = {"type": "json_schema", "name": "counts", "schema": NOT_STRICT["schema"], "strict": True}
    r = http.post("/v1/responses", json={"model": "gpt-4.1-mini", "input": "hi", "text": {"format": bad}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format.schema"


def test_tools_without_parameters_get_empty_arguments(client: openai.OpenAI) -> None:
    bare: list[ChatCompletionToolParam] = [
        {"type": "function", "function": {"name": "now"}},
        {"type": "function", "function": {"name": "today", "parameters": {"type": "object", "properties": {}}}},
    ]
    answer = client.chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "now and today"}], tools=bare
    )
    calls = answer.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls if c.type == "function"] == [
        ("now", "{}"),
        ("today", "{}"),
    ]
