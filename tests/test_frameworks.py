"""Frameworks built on the openai SDK, through the router, in both lanes: instructor in every mode it offers on
OpenAI (tools, JSON, JSON schema, Markdown JSON, Responses tools) and openai-agents running a function tool.

Each client is the SDK at its default settings (timeouts, retries); the deferred lane is asked for with the
`X-Deadline` header the client sends on every call. What a caller gets from a batch must be what it gets in real
time: the same parsed object, and an agent's tool loop that ends in an answer. Both frameworks are imported by
the tests that use them, not when the file is collected (openai-agents alone takes seconds to import, which
every test worker would pay in every tier).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

from tests.helpers.servers import FAST, RouterFactory, Sim

pytestmark = pytest.mark.integration

LATER = {"X-Deadline": "2h"}


class Invoice(BaseModel):
    """An invoice's fields, as an extraction pipeline asks for them."""

    vendor: str
    total_cents: int = Field(ge=0)
    lines: list[str]


@pytest.fixture
def router(start_router: RouterFactory) -> Iterator[str]:
    with start_router(batch=FAST) as base:
        yield base + "/v1"


def lanes_used(sim: Sim, path: str) -> tuple[int, int]:
    """(real-time calls to `path`, batch lines submitted) the simulator saw."""
    stats = sim.stats()
    return stats["realtime_calls"].get(path, 0), stats["batch_lines_submitted"]


@pytest.mark.parametrize("mode_name", ["TOOLS", "JSON", "JSON_SCHEMA", "MD_JSON", "RESPONSES_TOOLS"])
def test_instructor_extracts_the_same_object_in_both_lanes(mode_name: str, router: str, sim: Sim) -> None:
    import instructor

    mode = instructor.Mode[mode_name]
    path = "/v1/responses" if mode is instructor.Mode.RESPONSES_TOOLS else "/v1/chat/completions"
    messages: list[Any] = [{"role": "user", "content": "ACME Ltd billed 3 widgets for $12.50 in total."}]
    got = []
    for headers in ({}, LATER):
        with openai.OpenAI(base_url=router, api_key="dev", default_headers=headers) as raw:
            client = instructor.from_openai(raw, mode=mode)
            got.append(client.create(model="gpt-4o-mini", response_model=Invoice, messages=messages, max_retries=0))
    realtime, deferred = got
    # the model's answer, whichever lane carried it (instructor keeps each raw response beside it)
    assert isinstance(deferred, Invoice) and deferred.model_dump() == realtime.model_dump()
    assert lanes_used(sim, path) == (1, 1)


ORDERS_LOOKED_UP: list[str] = []


def lookup_order(order_id: str) -> str:
    """The status of an order."""
    ORDERS_LOOKED_UP.append(order_id)
    return f"Order {order_id} shipped yesterday."


async def run_agent(base_url: str, headers: dict[str, str], *, streamed: bool) -> list[Any]:
    from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool

    async with openai.AsyncOpenAI(base_url=base_url, api_key="dev", default_headers=headers) as client:
        agent = Agent(
            name="support",
            instructions="Answer questions about orders; use lookup_order.",
            tools=[function_tool(lookup_order)],
            model=OpenAIResponsesModel(model="gpt-4o-mini", openai_client=client),
        )
        config = RunConfig(tracing_disabled=True)
        if not streamed:
            result = await Runner.run(agent, "Where is order 1042? Use lookup_order.", run_config=config)
            return list(result.new_items)
        run = Runner.run_streamed(agent, "Where is order 1042? Use lookup_order.", run_config=config)
        async for _ in run.stream_events():
            pass
        return list(run.new_items)


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("headers", [{}, LATER], ids=["realtime", "deferred"])
def test_an_agent_calls_its_tool_and_answers(headers: dict[str, str], streamed: bool, router: str, sim: Sim) -> None:
    from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem

    ORDERS_LOOKED_UP.clear()
    items = asyncio.run(run_agent(router, headers, streamed=streamed))
    assert [type(item) for item in items] == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    assert len(ORDERS_LOOKED_UP) == 1  # the tool ran once, with the arguments the model chose
    output = items[1]
    assert isinstance(output, ToolCallOutputItem) and output.output == f"Order {ORDERS_LOOKED_UP[0]} shipped yesterday."
    message = items[2]
    assert isinstance(message, MessageOutputItem) and message.raw_item.content
    realtime, lines = lanes_used(sim, "/v1/responses")
    assert (realtime, lines) == ((0, 2) if headers else (2, 0))  # two model turns, each in the lane asked for
