"""Deferred streams are replayed from the finished answer (chat with logprobs, Responses events), every stream
ends with its cost as an SSE comment, and what the upstream's adapter cannot serve is refused at admission."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.openapi import validate
from tests.helpers.servers import RouterFactory, Sim, upstream

Client = Callable[..., openai.OpenAI]
FAST = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 0.5, "margin_s": 1.0}
LATER = {"X-Deadline": "2h"}


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim) -> Iterator[str]:
    sim.configure(batch_turnaround_s=0.5)
    claude = {"name": "anthropic", "kind": "anthropic", "base_url": sim.base, "api_key_env": "SIM_KEY",
              "models": ["claude-*"]}  # fmt: skip
    with start_router(upstreams=[claude, upstream(sim.v1)], batch=FAST) as base:
        yield base


def sse_lines(base: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    with httpx.stream("POST", base + path, json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_a_deferred_responses_stream_is_replayed_as_its_events(oai: Client, router: str, sim: Sim) -> None:
    client = oai(router)
    direct = openai.OpenAI(base_url=sim.v1, api_key="x").responses.create(model="gpt-5-mini", input="Stream me")
    events = list(client.responses.create(model="gpt-5-mini", input="Stream me", stream=True, extra_headers=LATER))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == direct.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert sim.stats()["batch_lines_submitted"] == 1  # it went through a batch, not real time
    with client.responses.stream(model="gpt-5-mini", input="Stream me", extra_headers=LATER) as stream:
        final = stream.get_final_response()
    assert final.output_text == direct.output_text
    lines = sse_lines(router, "/v1/responses", {"model": "gpt-5-mini", "input": "Stream me", "stream": True}, LATER)
    payloads = [httpx.Response(200, content=line[5:]).json() for line in lines if line.startswith("data:")]
    assert payloads[-1]["type"] == "response.completed"
    validate("ResponseCompletedEvent", payloads[-1])
    assert lines[-1].startswith(": x-router-cost-usd=")


def test_a_deferred_chat_stream_keeps_its_logprobs(oai: Client, router: str, sim: Sim) -> None:
    messages: Any = [{"role": "user", "content": "Rate this review from 1 to 5."}]
    direct = openai.OpenAI(base_url=sim.v1, api_key="x").chat.completions.create(
        model="gpt-4o-mini", messages=messages, logprobs=True, top_logprobs=2
    )
    chunks = list(
        oai(router).chat.completions.create(
            model="gpt-4o-mini", messages=messages, logprobs=True, top_logprobs=2, stream=True, extra_headers=LATER
        )
    )
    streamed = [
        t for c in chunks for ch in c.choices if ch.logprobs and ch.logprobs.content for t in ch.logprobs.content
    ]
    assert direct.choices[0].logprobs is not None and direct.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in direct.choices[0].logprobs.content]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content


@pytest.mark.parametrize("headers", [{}, LATER], ids=["realtime", "deferred"])
def test_a_stream_ends_with_its_cost_as_a_comment(router: str, headers: dict[str, str]) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    lines = sse_lines(router, "/v1/chat/completions", body, headers)
    comments = [line for line in lines if line.startswith(": x-router-cost-usd=")]
    assert len(comments) == 1 and lines[-1] == "data: [DONE]"
    fields = dict(part.split("=") for part in comments[0][2:].split())
    assert float(fields["x-router-cost-usd"]) > 0 and float(fields["x-router-savings-usd"]) >= 0
    with httpx.Client(base_url=router) as client:
        usage = client.get("/v1/usage").json()["lanes"]
    lane = "batch" if headers else "realtime"
    assert usage[lane]["cost_usd"] == pytest.approx(float(fields["x-router-cost-usd"]))


def test_what_the_adapter_cannot_serve_is_refused_at_admission(router: str, sim: Sim) -> None:
    body = {"model": "claude-sonnet-4-5", "input": "Embed me"}
    now = httpx.post(router + "/v1/embeddings", json=body)
    later = httpx.post(router + "/v1/embeddings", json=body, headers=LATER)
    assert later.status_code == now.status_code == 400
    assert later.json() == now.json()
    assert later.json()["error"]["code"] == "unsupported_endpoint"
    assert sim.stats()["batch_lines_submitted"] == 0
