"""Claude models through the router with the official openai SDK: Messages in real time, Message Batches deferred."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic

pytestmark = pytest.mark.integration

Client = Callable[..., openai.OpenAI]
MODEL = "claude-sonnet-4-5"
LATER = {"X-Deadline": "2h"}
MESSAGES: list[Any] = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim) -> Iterator[str]:
    with start_router(upstreams=with_anthropic(sim), batch=FAST) as base:
        yield base


def realtime_answer(sim: Sim) -> str:
    """The simulator's answer to the same chat in OpenAI's dialect (it answers both dialects alike)."""
    with openai.OpenAI(base_url=sim.v1, api_key="x", max_retries=0) as c:
        answer = c.chat.completions.create(model=MODEL, messages=MESSAGES)
    return answer.choices[0].message.content or ""


def test_realtime_chat(oai: Client, router: str, sim: Sim) -> None:
    raw = oai(router).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    completion = raw.parse()
    assert raw.headers["x-router-lane"] == "realtime"
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == realtime_answer(sim)
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert float(raw.headers["x-router-cost-usd"]) > 0
    assert sim.stats()["realtime_calls"]["/v1/messages"] == 1


def test_gpt_models_still_go_to_the_openai_upstream(oai: Client, router: str, sim: Sim) -> None:
    oai(router).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    calls = sim.stats()["realtime_calls"]
    assert calls.get("/v1/chat/completions") == 1 and "/v1/messages" not in calls


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream(oai: Client, router: str, sim: Sim, include_usage: bool) -> None:
    stream = oai(router).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": include_usage}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == realtime_answer(sim)
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert len(usage) == 1 and usage[0].completion_tokens > 0 and chunks[-1].usage is not None
    else:
        assert usage == []  # the router asked for it to price the call, and hid it again


def test_upstream_errors_keep_their_status(oai: Client, router: str) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai(router).chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers={"x-sim-error": "429"})
    assert caught.value.status_code == 429
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"


def test_other_endpoints_are_400(oai: Client, router: str) -> None:
    with pytest.raises(openai.BadRequestError, match="chat completions only"):
        oai(router).embeddings.create(model=MODEL, input="x")
    with pytest.raises(openai.BadRequestError, match="`n` must be 1"):
        oai(router).chat.completions.create(model=MODEL, messages=MESSAGES, n=2)


def test_models_are_listed(oai: Client, router: str) -> None:
    models = {m.id: m for m in oai(router).models.list()}
    assert models["claude-sonnet-4"].owned_by == "anthropic"
    assert "gpt-4o" in models


def test_deferred_call_goes_through_message_batches(oai: Client, router: str, sim: Sim) -> None:
    raw = oai(router).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, extra_headers=LATER)
    completion = raw.parse()
    assert raw.headers["x-router-lane"] == "batch"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == realtime_answer(sim)
    assert float(raw.headers["x-router-cost-usd"]) > 0
    assert float(raw.headers["x-router-savings-usd"]) > 0
    stats = sim.stats()
    assert stats["message_batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1
    assert stats["batches_created"] == 0  # not OpenAI's Batch API
    assert "/v1/messages" not in stats["realtime_calls"]


def test_deferred_stream_is_replayed(oai: Client, router: str, sim: Sim) -> None:
    stream = oai(router).chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, extra_headers=LATER
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == realtime_answer(sim)
    assert chunks[-1].usage is not None
    assert sim.stats()["message_batches_created"] == 1


def test_errored_batch_line_is_the_callers_error(oai: Client, router: str, sim: Sim) -> None:
    sim.configure(batch_fail=True)  # every request of a new Message Batch ends `errored`
    with pytest.raises(openai.BadRequestError, match="Simulated validation failure") as caught:
        oai(router).chat.completions.create(model=MODEL, messages=MESSAGES, extra_headers=LATER)
    assert caught.value.response.headers["x-router-lane"] == "batch"
    assert "x-router-cost-usd" not in caught.value.response.headers  # errored lines are not billed
    assert sim.stats()["message_batches_created"] == 1


def test_expired_line_is_answered_again(oai: Client, router: str, sim: Sim) -> None:
    sim.configure(batch_expire_s=0.05, batch_expire_done_fraction=0)  # every batch expires with nothing done
    raw = oai(router).chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, extra_headers=LATER)
    assert raw.parse().choices[0].message.content == realtime_answer(sim)
    assert raw.headers["x-router-escalated"] == "true"
    stats = sim.stats()
    assert stats["message_batches_created"] == 2  # the first try and one re-queue, then real time
    assert stats["realtime_calls"]["/v1/messages"] == 1


def test_async_deferred_call(router: str, sim: Sim) -> None:
    accepted = httpx.post(
        router + "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES},
        headers={"prefer": "respond-async", "x-deadline": "1h"},
    )
    assert accepted.status_code == 202
    done = httpx.get(router + accepted.headers["location"] + "?wait=20", timeout=30)
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == realtime_answer(sim)
