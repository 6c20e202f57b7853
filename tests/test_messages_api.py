"""Anthropic's own API through the router with the official anthropic SDK: Messages in both lanes, token counting,
Message Batches per tenant, Anthropic-shaped errors, and one queue (and one Message Batch) shared with chat
completions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message

from router.core.keys import queue_tag
from router.core.settings import ProxyKey, Settings, Upstream
from tests.helpers.servers import RouterFactory, Sim, upstream
from tests.helpers.waiting import wait_until

Claude = Callable[..., anthropic.Anthropic]
MODEL = "claude-sonnet-4-5"
FAST = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}
LATER = {"X-Deadline": "2h"}
KEY_A, KEY_B = "sk-tenant-a", "sk-tenant-b"
KEYS = [
    {"sha256": hashlib.sha256(KEY_A.encode()).hexdigest(), "tenant": "a"},
    {"sha256": hashlib.sha256(KEY_B.encode()).hexdigest(), "tenant": "b"},
]
SYSTEM = "Be terse."
HELLO: list[Any] = [{"role": "user", "content": "Name a colour."}]
WEATHER: list[Any] = [
    {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
ASK_WEATHER: list[Any] = [{"role": "user", "content": "What is the weather in Oslo? Use get_weather."}]


def upstreams(sim: Sim) -> list[dict[str, Any]]:
    anthropic_upstream = {
        "name": "anthropic",
        "kind": "anthropic",
        "base_url": sim.base,
        "api_key_env": "SIM_KEY",
        "models": ["claude-*"],
        "forward_headers": ["x-sim-*"],
    }
    return [anthropic_upstream, upstream(sim.v1)]


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim) -> Iterator[str]:
    with start_router(upstreams=upstreams(sim), batch=FAST, auth="keys", keys=KEYS) as base:
        yield base


@pytest.fixture
def claude() -> Iterator[Claude]:
    """Make anthropic SDK clients (tenant a's key unless given); all are closed after the test."""
    made: list[anthropic.Anthropic] = []

    def make(base: str, **kw: Any) -> anthropic.Anthropic:
        kw.setdefault("api_key", KEY_A)
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 60)
        client = anthropic.Anthropic(base_url=base, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def direct(sim: Sim, **params: Any) -> Message:
    """The simulator's own answer to the same request."""
    with anthropic.Anthropic(base_url=sim.base, api_key="sk-sim", max_retries=0) as client:
        message: Message = client.messages.create(model=MODEL, max_tokens=300, **params)
        return message


def essence(message: Message) -> dict[str, Any]:
    """What must be equal between two answers to one prompt: all but the ids the provider draws per call and the
    service tier (`batch` for Message Batch results)."""
    out = message.model_dump(exclude={"id", "router"})  # the router's own note on the answer is not the upstream's
    for block in out["content"]:
        block.pop("id", None)
    out["usage"] = {"input_tokens": message.usage.input_tokens, "output_tokens": message.usage.output_tokens}
    return out


def usage_lanes(router: str, key: str = KEY_A) -> dict[str, Any]:
    response = httpx.get(router + "/v1/usage", headers={"x-api-key": key})
    response.raise_for_status()
    lanes: dict[str, Any] = response.json()["lanes"]
    return lanes


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    wait_until(check, timeout)


# --- real time -------------------------------------------------------------------------------------------------


def test_realtime_message_is_the_simulators_own(claude: Claude, router: str, sim: Sim) -> None:
    raw = claude(router).messages.with_raw_response.create(model=MODEL, max_tokens=300, system=SYSTEM, messages=HELLO)
    message = raw.parse()
    assert isinstance(message, Message) and message.type == "message"
    assert raw.headers["x-router-lane"] == "realtime"
    assert float(raw.headers["x-router-cost-usd"]) > 0
    assert sim.stats()["realtime_calls"]["/v1/messages"] == 1
    assert essence(message) == essence(direct(sim, system=SYSTEM, messages=HELLO))
    wait_for(lambda: usage_lanes(router).get("realtime", {}).get("cost_usd", 0) > 0)


def test_realtime_tool_use(claude: Claude, router: str, sim: Sim) -> None:
    message = claude(router).messages.create(model=MODEL, max_tokens=300, tools=WEATHER, messages=ASK_WEATHER)
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and isinstance(block.input["city"], str)
    assert essence(message) == essence(direct(sim, tools=WEATHER, messages=ASK_WEATHER))


def test_realtime_stream(claude: Claude, router: str, sim: Sim) -> None:
    with claude(router).messages.stream(model=MODEL, max_tokens=300, system=SYSTEM, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expected = direct(sim, system=SYSTEM, messages=HELLO)
    assert text == expected.content[0].text  # type: ignore[union-attr]
    assert essence(final) == essence(expected)
    wait_for(lambda: usage_lanes(router).get("realtime", {}).get("requests", 0) == 1)
    assert usage_lanes(router)["realtime"]["cost_usd"] > 0  # priced from message_start and message_delta


def test_realtime_stream_carries_its_cost(router: str) -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO, "stream": True}
    with httpx.stream("POST", router + "/v1/messages", json=body, headers={"x-api-key": KEY_A}) as response:
        events = response.read().decode()
    assert response.headers["x-router-lane"] == "realtime"
    delta = events.index("event: message_delta")
    assert delta < events.index(": x-router-cost-usd=") < events.index("event: message_stop")


def test_count_tokens(claude: Claude, router: str, sim: Sim) -> None:
    client = claude(router)
    count = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=HELLO)
    message = client.messages.create(model=MODEL, max_tokens=300, system=SYSTEM, messages=HELLO)
    assert count.input_tokens == message.usage.input_tokens > 0
    assert sim.stats()["realtime_calls"]["/v1/messages/count_tokens"] == 1
    # Counting tokens is free and not a call: booked before the message if at all, yet only the message is.
    wait_for(lambda: usage_lanes(router).get("realtime", {}).get("requests", 0) >= 1)
    assert usage_lanes(router)["realtime"]["requests"] == 1


# --- deferred: Message Batches ----------------------------------------------------------------------------------


def test_deferred_message_comes_from_a_message_batch(claude: Claude, router: str, sim: Sim) -> None:
    raw = claude(router).messages.with_raw_response.create(
        model=MODEL, max_tokens=300, system=SYSTEM, messages=HELLO, extra_headers=LATER
    )
    message = raw.parse()
    assert raw.headers["x-router-lane"] == "batch"
    assert float(raw.headers["x-router-cost-usd"]) > 0 and float(raw.headers["x-router-savings-usd"]) > 0
    assert message.usage.service_tier == "batch"  # Anthropic's own answer, untranslated
    stats = sim.stats()
    assert stats["message_batches_created"] == 1 and stats["message_batch_requests_submitted"] == 1
    assert "/v1/messages" not in stats["realtime_calls"]
    assert essence(message) == essence(direct(sim, system=SYSTEM, messages=HELLO))
    lanes = usage_lanes(router)
    assert lanes["batch"]["requests"] == 1 and lanes["batch"]["savings_usd"] > 0


def test_deferred_tool_use(claude: Claude, router: str, sim: Sim) -> None:
    message = claude(router).messages.create(
        model=MODEL, max_tokens=300, tools=WEATHER, messages=ASK_WEATHER, extra_headers=LATER
    )
    assert message.stop_reason == "tool_use" and message.content[0].type == "tool_use"
    assert sim.stats()["message_batches_created"] == 1
    assert essence(message) == essence(direct(sim, tools=WEATHER, messages=ASK_WEATHER))


def test_deferred_stream_is_replayed_as_anthropic_events(claude: Claude, router: str, sim: Sim) -> None:
    client = claude(router)
    with client.messages.stream(
        model=MODEL, max_tokens=300, tools=WEATHER, messages=ASK_WEATHER, extra_headers=LATER
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "input_json" in kinds
    assert sim.stats()["message_batches_created"] == 1
    assert essence(final) == essence(direct(sim, tools=WEATHER, messages=ASK_WEATHER))
    with client.messages.stream(
        model=MODEL, max_tokens=300, system=SYSTEM, messages=HELLO, extra_headers=LATER
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == direct(sim, system=SYSTEM, messages=HELLO).content[0].text  # type: ignore[union-attr]


def test_an_errored_batch_line_is_the_callers_anthropic_error(claude: Claude, router: str, sim: Sim) -> None:
    sim.configure(batch_fail=True)  # every request of a new Message Batch ends `errored`
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude(router).messages.create(model=MODEL, max_tokens=300, messages=HELLO, extra_headers=LATER)
    body: Any = caught.value.body
    assert body["type"] == "error"  # as Anthropic wrote it in the batch's results
    assert body["error"] == {"type": "invalid_request_error", "message": "Simulated validation failure (batch_fail)."}
    assert caught.value.response.headers["x-router-lane"] == "batch"
    with (
        pytest.raises(anthropic.APIStatusError, match="Simulated validation failure"),
        claude(router).messages.stream(
            model=MODEL, max_tokens=300, messages=[{"role": "user", "content": "Again"}], extra_headers=LATER
        ) as stream,
    ):
        stream.until_done()


def test_held_call_outlives_the_client_timeout_and_retries_reattach(
    claude: Claude, start_router: RouterFactory, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=5.0)
    batch = FAST | {"keepalive_s": 0.3}
    with start_router(upstreams=upstreams(sim), batch=batch, auth="keys", keys=KEYS) as base:
        # A read timeout well below the batch's turnaround: the keep-alive bytes keep the SDK reading. It is ten
        # keep-alive intervals, so a busy host that delays a byte or two does not fire it.
        client = claude(base, timeout=3.0)
        message = client.messages.create(model=MODEL, max_tokens=300, messages=HELLO, extra_headers=LATER)
        assert message.content[0].type == "text"
        # A caller that drops the connection and sends the same request again gets the first call's answer.
        body = {"model": MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": "Name a tree."}]}
        headers = {"x-api-key": KEY_A, "x-deadline": "2h"}
        with httpx.stream("POST", base + "/v1/messages", json=body, headers=headers) as first:
            assert first.status_code == 200  # committed after one keep-alive interval; then the caller leaves
        again = httpx.post(
            base + "/v1/messages", json=body, headers=headers | {"x-stainless-retry-count": "1"}, timeout=30
        )
        assert again.status_code == 200 and again.headers["x-router-reattached"] == "true"
        assert Message.model_validate_json(again.content).stop_reason == "end_turn"
    assert sim.stats()["message_batch_requests_submitted"] == 2  # one per distinct request, none twice


def test_chat_completions_and_messages_share_one_message_batch(
    claude: Claude, oai: Callable[..., openai.OpenAI], start_router: RouterFactory, sim: Sim
) -> None:
    assert queue_tag("anthropic", "/messages", MODEL) == queue_tag("anthropic", "/chat/completions", MODEL)
    batch = FAST | {"max_wait_s": 60.0, "max_requests": 2}  # flushed when both are queued, not before
    with start_router(upstreams=upstreams(sim), batch=batch, auth="keys", keys=KEYS) as base:
        chat_client, messages_client = oai(base, api_key=KEY_A), claude(base)
        chat = [{"role": "system", "content": SYSTEM}, *HELLO]
        with ThreadPoolExecutor(2) as pool:
            completion = pool.submit(
                chat_client.chat.completions.with_raw_response.create, model=MODEL, messages=chat, extra_headers=LATER
            )
            message = pool.submit(
                messages_client.messages.with_raw_response.create,
                model=MODEL,
                max_tokens=300,
                system=SYSTEM,
                messages=HELLO,
                extra_headers=LATER,
            )
            raw_chat, raw_message = completion.result(timeout=60), message.result(timeout=60)
        lanes = usage_lanes(base)
    answered_chat, answered_message = raw_chat.parse(), raw_message.parse()
    # The same usage, priced the same way, whichever dialect asked.
    assert raw_chat.headers["x-router-cost-usd"] == raw_message.headers["x-router-cost-usd"]
    assert answered_chat.object == "chat.completion"  # each caller in its own dialect
    assert isinstance(answered_message, Message) and answered_message.type == "message"
    assert answered_chat.choices[0].message.content == answered_message.content[0].text  # type: ignore[union-attr]
    stats = sim.stats()
    assert stats["message_batches_created"] == 1 and stats["message_batch_requests_submitted"] == 2
    assert stats["max_submissions_per_custom_id"] == 1
    with anthropic.Anthropic(base_url=sim.base, api_key="sk-sim", max_retries=0) as upstream_client:
        (shared,) = upstream_client.messages.batches.list().data
    assert shared.request_counts.succeeded == 2
    assert lanes["batch"]["requests"] == 2 and lanes["batch"]["cost_usd"] > 0


# --- auth and errors ---------------------------------------------------------------------------------------------


def test_x_api_key_and_bearer_both_authenticate(claude: Claude, router: str) -> None:
    assert claude(router).messages.create(model=MODEL, max_tokens=50, messages=HELLO).type == "message"
    bearer = claude(router, api_key=None, auth_token=KEY_B)
    assert bearer.messages.create(model=MODEL, max_tokens=50, messages=HELLO).type == "message"
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(router, api_key="sk-wrong").messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }


def test_errors_take_anthropics_shape(claude: Claude, router: str, sim: Sim) -> None:
    client = claude(router)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=MODEL, max_tokens=50, messages=HELLO, extra_headers={"x-sim-error": "429"})
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="claude-nonexistent", max_tokens=50, messages=HELLO)
    assert unknown.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="kind `anthropic`") as other_api:
        client.messages.create(model="gpt-4o-mini", max_tokens=50, messages=HELLO, extra_headers=LATER)
    assert other_api.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    refused = httpx.post(
        router + "/v1/messages", json={"model": MODEL, "messages": HELLO}, headers={"x-api-key": KEY_A} | LATER
    )
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in refused.json()["error"]["message"]  # refused at admission, not when the batch runs
    stats = sim.stats()
    assert stats["message_batches_created"] == 0 and "/v1/chat/completions" not in stats["realtime_calls"]


# --- Message Batches passed through ----------------------------------------------------------------------------


def test_message_batches_through_the_router_are_the_tenants_own(claude: Claude, router: str, sim: Sim) -> None:
    a, b = claude(router), claude(router, api_key=KEY_B)
    requests: list[Any] = [
        {"custom_id": "first", "params": {"model": MODEL, "max_tokens": 300, "system": SYSTEM, "messages": HELLO}},
        {"custom_id": "second", "params": {"model": MODEL, "max_tokens": 300, "tools": WEATHER,
                                           "messages": ASK_WEATHER}},
    ]  # fmt: skip
    created = a.messages.batches.create(requests=requests)
    assert created.processing_status == "in_progress"
    assert [batch.id for batch in a.messages.batches.list()] == [created.id]
    assert list(b.messages.batches.list()) == []
    for call in (b.messages.batches.retrieve, b.messages.batches.cancel, b.messages.batches.results):
        with pytest.raises(anthropic.NotFoundError):
            call(created.id)

    wait_for(lambda: a.messages.batches.retrieve(created.id).processing_status == "ended")
    ended = a.messages.batches.retrieve(created.id)
    assert ended.results_url == f"{router}/v1/messages/batches/{created.id}/results"
    assert ended.request_counts.succeeded == 2
    results = {line.custom_id: line.result for line in a.messages.batches.results(created.id)}
    assert results["first"].type == "succeeded" and results["second"].type == "succeeded"
    assert essence(results["first"].message) == essence(direct(sim, system=SYSTEM, messages=HELLO))
    assert essence(results["second"].message) == essence(direct(sim, tools=WEATHER, messages=ASK_WEATHER))
    # Its usage is booked once it ended: the tenant's batch spend and savings, like any deferred call's.
    wait_for(lambda: usage_lanes(router).get("batch", {}).get("requests", 0) == 2)
    assert usage_lanes(router)["batch"]["savings_usd"] > 0
    assert "batch" not in usage_lanes(router, KEY_B)

    sim.configure(batch_turnaround_s=30, batch_cancel_delay_s=0.1)
    slow = a.messages.batches.create(requests=requests[:1])
    assert a.messages.batches.cancel(slow.id).processing_status == "canceling"
    wait_for(lambda: a.messages.batches.retrieve(slow.id).processing_status == "ended")
    assert [line.result.type for line in a.messages.batches.results(slow.id)] == ["canceled"]
    page = a.messages.batches.list(limit=1)
    assert [batch.id for batch in page.data] == [slow.id] and page.has_more
    assert [batch.id for batch in a.messages.batches.list(limit=1, after_id=slow.id).data] == [created.id]
    assert a.messages.batches.delete(slow.id).id == slow.id
    assert [batch.id for batch in a.messages.batches.list()] == [created.id]
    assert sim.stats()["message_batches_created"] == 2  # nothing of the router's own in between


def test_anthropic_upstreams_receive_anthropic_beta_by_default() -> None:
    claude = Upstream(name="anthropic", kind="anthropic", base_url="http://127.0.0.1:1", models=["claude-*"])
    gpt = Upstream(name="openai", base_url="http://127.0.0.1:2/v1")
    for auth in ("none", "keys"):
        settings = Settings(upstreams=[claude, gpt], auth=auth, keys=[ProxyKey(sha256="a" * 64, tenant="t")])
        assert settings.forward_headers(claude, "t") == ["anthropic-beta"]  # no workspace header: billing stays ours
        assert "anthropic-beta" not in settings.forward_headers(gpt, "t")


def test_models_list_and_retrieve_in_anthropic_shape(
    router: str, claude: Claude, oai: Callable[..., openai.OpenAI]
) -> None:
    client = claude(router)
    listed = list(client.models.list(limit=2))  # the SDK follows `has_more` / `last_id` through every page
    page = client.models.list(limit=2)
    assert len(page.data) == 2 and page.has_more and page.last_id == page.data[-1].id
    ids = [m.id for m in listed]
    assert len(ids) == len(set(ids)) > 2 and "claude-sonnet-4" in ids
    assert all(m.type == "model" and m.display_name for m in listed)
    stamps = [m.created_at for m in listed]
    assert stamps == sorted(stamps, reverse=True)  # newest first, as Anthropic lists them
    # The same models an OpenAI client is shown, in each API's own shape.
    assert set(ids) == {m.id for m in oai(router, api_key=KEY_A).models.list()}
    before = client.models.list(limit=1, before_id=ids[1])
    assert [m.id for m in before.data] == [ids[0]]
    info = client.models.retrieve(MODEL)
    assert (info.id, info.type) == (MODEL, "model")
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nonexistent-1")
    with pytest.raises(anthropic.AuthenticationError) as refused:
        claude(router, api_key="sk-wrong").models.list()
    assert refused.value.body["type"] == "error"  # type: ignore[index]
