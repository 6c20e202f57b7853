"""The simulator's Responses API with function tools, and JSON that follows a schema the prompt spells out.

What the client libraries built on the SDK expect of a model (openai-agents' tool loop on the Responses API,
instructor's `JSON` and `MD_JSON` modes), answered the way the real API answers, and parsed by the official SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from jsonschema import Draft202012Validator
from openai.types.responses import FunctionToolParam, ResponseFunctionToolCall, ResponseOutputMessage
from pydantic import BaseModel

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from router.simulator.structured import schema_in_prompt
from tests.helpers.openapi import validate

MODEL = "gpt-4.1-mini"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
CLOCK: FunctionToolParam = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]},
    "strict": False,
}


class Person(BaseModel):
    name: str
    age: int
    tags: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.2))) as base_url:
        yield base_url


@pytest.fixture
def client(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def calls_of(output: list[Any]) -> list[ResponseFunctionToolCall]:
    return [item for item in output if isinstance(item, ResponseFunctionToolCall)]


def test_required_returns_a_function_call_and_echoes_the_choice(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="Plan my week", tools=[WEATHER, CLOCK], tool_choice="required"
    )
    validate("Response", raw.http_response.json())
    answer = raw.parse()
    calls = calls_of(answer.output)
    assert calls and len(calls) == len(answer.output)  # only calls: no message beside them
    assert answer.tool_choice == "required"
    assert [t.name for t in answer.tools if t.type == "function"] == ["get_weather", "get_time"]
    for call in calls:
        schema = (WEATHER if call.name == "get_weather" else CLOCK)["parameters"]
        assert schema is not None
        Draft202012Validator(schema).validate(json.loads(call.arguments))
        assert call.call_id.startswith("call_") and call.status == "completed"
    assert answer.usage is not None and answer.usage.output_tokens > 0


def test_a_named_function_is_called_and_none_answers_in_text(client: openai.OpenAI) -> None:
    named = client.responses.create(
        model=MODEL, input="Anything", tools=[WEATHER, CLOCK], tool_choice={"type": "function", "name": "get_time"}
    )
    assert [c.name for c in calls_of(named.output)] == ["get_time"]
    none = client.responses.create(model=MODEL, input="Anything", tools=[WEATHER], tool_choice="none")
    assert not calls_of(none.output) and none.output_text
    # `auto` calls a tool the prompt names; both, in parallel, when it names both
    both = client.responses.create(model=MODEL, input="Use get_weather and get_time", tools=[WEATHER, CLOCK])
    assert sorted(c.name for c in calls_of(both.output)) == ["get_time", "get_weather"]
    one = client.responses.create(
        model=MODEL, input="Use get_weather and get_time", tools=[WEATHER, CLOCK], parallel_tool_calls=False
    )
    assert len(calls_of(one.output)) == 1


def test_a_tool_loop_ends_in_text_once_the_output_comes_back(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    (call,) = calls_of(first.output)
    items: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    second = client.responses.create(model=MODEL, input=items, tools=[WEATHER])
    assert not calls_of(second.output)
    assert isinstance(second.output[0], ResponseOutputMessage) and second.output_text
    # `required` keeps calling, as the real API does
    again = client.responses.create(model=MODEL, input=items, tools=[WEATHER], tool_choice="required")
    assert calls_of(again.output)


def test_tool_choice_and_tools_are_checked(server: str) -> None:
    with httpx.Client(base_url=server, headers={"Authorization": "Bearer sk-test"}) as http:
        unknown = http.post(
            "/v1/responses",
            json={"model": MODEL, "input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
        )
        loose = {**WEATHER, "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}
        not_strict = http.post("/v1/responses", json={"model": MODEL, "input": "x", "tools": [loose]})
        bad_mode = http.post("/v1/responses", json={"model": MODEL, "input": "x", "tool_choice": "always"})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "tool_choice")
    assert (not_strict.status_code, not_strict.json()["error"]["param"]) == (400, "tools[0].parameters")
    assert bad_mode.status_code == 400
    for r in (unknown, not_strict, bad_mode):
        validate("ErrorResponse", r.json())


def test_streamed_function_calls_follow_the_spec_events(client: openai.OpenAI, server: str) -> None:
    prompt = "get_weather and get_time please"
    body = {"model": MODEL, "input": prompt, "tools": [WEATHER, CLOCK], "stream": True}
    with (
        httpx.Client(base_url=server, headers={"Authorization": "Bearer sk-test"}) as http,
        http.stream("POST", "/v1/responses", json=body) as r,
    ):
        payloads = [msgspec.json.decode(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    schemas = {
        "response.created": "ResponseCreatedEvent",
        "response.in_progress": "ResponseInProgressEvent",
        "response.output_item.added": "ResponseOutputItemAddedEvent",
        "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
        "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
        "response.output_item.done": "ResponseOutputItemDoneEvent",
        "response.completed": "ResponseCompletedEvent",
    }
    for payload in payloads:
        validate(schemas[payload["type"]], payload)
    with client.responses.stream(model=MODEL, input=prompt, tools=[WEATHER, CLOCK]) as stream:
        final = stream.get_final_response()
    deltas = "".join(p["delta"] for p in payloads if p["type"] == "response.function_call_arguments.delta")
    assert deltas == "".join(c.arguments for c in calls_of(final.output))
    assert sorted(c.name for c in calls_of(final.output)) == ["get_time", "get_weather"]


def test_json_object_follows_the_schema_the_prompt_spells_out(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    system = f"Answer in json that matches this json_schema:\n\n{json.dumps(schema, indent=2)}\n\nAn instance only."
    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Ada is 36"}],
        response_format={"type": "json_object"},
    )
    Person.model_validate_json(chat.choices[0].message.content or "")
    resp = client.responses.create(
        model=MODEL, instructions=system, input="Ada is 36", text={"format": {"type": "json_object"}}
    )
    Person.model_validate_json(resp.output_text)
    # No schema in the prompt: the reply under "answer", as before.
    plain = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Reply in json please"}],
        response_format={"type": "json_object"},
    )
    assert set(json.loads(plain.choices[0].message.content or "")) == {"answer"}


def test_a_fenced_json_block_when_the_prompt_asks_for_one(client: openai.OpenAI) -> None:
    schema = json.dumps(Person.model_json_schema())
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": f"Fill this json_schema: {schema}"},
            {"role": "user", "content": "Ada is 36. Return the correct JSON response within a ```json codeblock."},
        ],
    )
    text = answer.choices[0].message.content or ""
    assert text.startswith("```json\n") and text.endswith("\n```")
    Person.model_validate_json(text.removeprefix("```json\n").removesuffix("\n```"))
    unasked = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"Fill this json_schema: {schema}"}]
    )
    assert not (unasked.choices[0].message.content or "").startswith("```")


@pytest.mark.parametrize(
    ("prompt", "found"),
    [
        ('Use {"type": "object", "properties": {"a": {"type": "string"}}} please', True),
        ("A brace { without JSON, then properties mentioned", False),
        ('First {"x": 1} then {"$defs": {}, "properties": {"b": {"type": "integer"}}} last', True),
        ('{"type": "object", "properties": {"s": {"type": "string", "pattern": "^[{]"}}}', True),
        ("{" * 5000 + " properties", False),
    ],
)
def test_the_schema_in_a_prompt_is_found_or_not(prompt: str, found: bool) -> None:
    schema = schema_in_prompt(prompt)
    assert (schema is not None) == found
    if schema is not None:
        assert "properties" in schema
