"""Every answer carries its own cost and savings where the official SDKs read them: a top-level `"router"` object in
the body (the openai and anthropic SDKs keep it in `model_extra`), for held calls whose headers left before the
answer existed, fetched calls and real-time calls alike; its figures are those `/metrics` booked."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest

from router.core.lanes import Origin
from router.core.pricing import Cost
from router.deferred.replay import NO_PRICE, router_note, with_note
from tests.helpers.metrics import metric
from tests.helpers.servers import RouterFactory, Sim, upstream, with_anthropic
from tests.helpers.waiting import wait_until

HELD = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 0.5, "margin_s": 1.0, "lease_s": 5.0}
LATER = {"X-Deadline": "2h"}
MESSAGES: Any = [{"role": "user", "content": "Classify ticket 17 by urgency."}]
UNPRICED = 'hybrid_router_unpriced_calls_total{{lane="{lane}",model="sim-local-model"}}'


class Tenant(msgspec.Struct, frozen=True):
    """A tenant of this test's own, so its series in the process-wide metrics registry start at zero."""

    name: str
    key: str

    def keys(self) -> list[dict[str, str]]:
        return [{"sha256": hashlib.sha256(self.key.encode()).hexdigest(), "tenant": self.name}]


@pytest.fixture
def tenant() -> Tenant:
    return Tenant("cost-" + secrets.token_hex(4), "sk-" + secrets.token_hex(8))


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim, tenant: Tenant) -> Iterator[str]:
    """Held calls whose headers leave after 0.3 s, in front of batches that take seconds."""
    sim.configure(batch_turnaround_s=3.0)
    settings: dict[str, Any] = {"batch": HELD | {"keepalive_s": 0.3}, "auth": "keys", "keys": tenant.keys()}
    with start_router(upstreams=with_anthropic(sim), **settings) as base:
        yield base


def booked(base: str, tenant: str, lane: str, model: str) -> dict[str, float]:
    """What `/metrics` booked for this tenant's calls of `model` in `lane`."""
    text = httpx.get(base + "/metrics").text
    labels = f'{{lane="{lane}",model="{model}",tenant="{tenant}"}}'
    out = {
        name: metric(text, f"hybrid_router_{name}_usd_total{labels}") for name in ("cost", "baseline_cost", "savings")
    }
    for lever in ("batch", "flex", "route"):
        out[lever] = metric(text, f'hybrid_router_lever_savings_usd_total{{lever="{lever}",tenant="{tenant}"}}')
    return out


def assert_as_booked(note: dict[str, Any], base: str, tenant: str, lane: str, model: str) -> None:
    wait_until(lambda: booked(base, tenant, lane, model)["cost"] > 0, 20)
    figures = booked(base, tenant, lane, model)
    assert note["cost_usd"] == figures["cost"] > 0
    assert note["baseline_usd"] == figures["baseline_cost"]
    assert note["savings_usd"] == figures["savings"]
    for lever in ("batch", "flex", "route"):
        assert note["savings_by_lever"][lever] == figures[lever]
    assert sum(note["savings_by_lever"].values()) == pytest.approx(note["savings_usd"], rel=1e-12)


def test_a_held_batch_longer_than_the_keepalive_carries_its_cost_in_the_openai_body(
    router: str, tenant: Tenant, sim: Sim
) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenant.key) as client:  # the SDK's default settings
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=LATER
        )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert "x-router-cost-usd" not in raw.headers  # the headers left before the batch ended
    assert completion.model_extra is not None
    note = completion.model_extra["router"]
    assert note["lane"] == "batch" and note["model"] == "gpt-4o-mini"
    assert note["call_id"] == raw.headers["x-router-request-id"]
    assert note["savings_usd"] > 0 and note["savings_by_lever"]["batch"] == note["savings_usd"]
    assert sim.stats()["batch_lines_submitted"] == 1
    assert_as_booked(note, router, tenant.name, "batch", "gpt-4o-mini")


def test_a_held_message_batch_carries_its_cost_in_the_anthropic_body(router: str, tenant: Tenant) -> None:
    with anthropic.Anthropic(base_url=router, api_key=tenant.key) as client:  # the SDK's default settings
        message = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=200, messages=MESSAGES, extra_headers=LATER
        )
    assert message.content and message.model_extra is not None
    note = message.model_extra["router"]
    assert note["lane"] == "batch" and note["model"] == "claude-sonnet-4-5" and note["savings_usd"] > 0
    assert_as_booked(note, router, tenant.name, "batch", "claude-sonnet-4-5")


def test_a_fetched_answer_carries_the_same_note(router: str, tenant: Tenant) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    sent = httpx.post(router + "/v1/chat/completions", json=body, headers=auth | LATER | {"Prefer": "respond-async"})
    assert sent.status_code == 202
    call_id = sent.json()["id"]
    fetched = httpx.get(router + f"/v1/deferred/{call_id}?wait=30", headers=auth, timeout=40)
    assert fetched.status_code == 200
    note = fetched.json()["router"]
    assert note["call_id"] == call_id and note["lane"] == "batch"
    assert note["cost_usd"] == pytest.approx(float(fetched.headers["x-router-cost-usd"]), abs=1e-12)
    assert note["savings_usd"] == pytest.approx(float(fetched.headers["x-router-savings-usd"]), abs=1e-12)
    assert_as_booked(note, router, tenant.name, "batch", "gpt-4o-mini")


def _as_headers(note: dict[str, Any], headers: Mapping[str, str]) -> None:
    assert note["lane"] == "realtime" == headers["x-router-lane"]
    assert note["call_id"] == headers["x-router-request-id"]
    assert note["cost_usd"] == pytest.approx(float(headers["x-router-cost-usd"]), abs=1e-12)
    assert note["savings_usd"] == pytest.approx(float(headers["x-router-savings-usd"]), abs=1e-12)


def test_a_realtime_body_carries_what_its_headers_say(router: str, tenant: Tenant) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenant.key) as client:
        chat = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        note = chat.parse().model_extra["router"]  # type: ignore[index]
        assert note["cost_usd"] > 0 and note["savings_usd"] == 0 and set(note["savings_by_lever"].values()) == {0.0}
        assert_as_booked(note, router, tenant.name, "realtime", "gpt-4o-mini")  # the tenant's one call so far
        embedding = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="a ticket")
        legacy = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="Say hi")
        response = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Say hi")
    for raw in (chat, embedding, legacy, response):
        parsed = raw.parse()
        assert parsed.model_extra is not None
        _as_headers(parsed.model_extra["router"], raw.headers)
    with anthropic.Anthropic(base_url=router, api_key=tenant.key) as claude:
        raw_message = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=200, messages=MESSAGES
        )
    message = raw_message.parse()
    assert message.model_extra is not None
    _as_headers(message.model_extra["router"], raw_message.headers)


def test_a_realtime_stream_keeps_its_cost_comment_and_no_body_note(router: str, tenant: Tenant) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}"}
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    streamed = httpx.post(router + "/v1/chat/completions", json=body, headers=auth).text
    assert ": x-router-cost-usd=" in streamed and '"router"' not in streamed


def test_the_note_is_spliced_as_the_last_member() -> None:
    cost = Cost(baseline_usd=2.0, actual_usd=0.5, savings_usd=1.5, route_usd=1.0)
    note = router_note(origin=Origin.BATCH, call_id="c1", model="m", cost=cost)
    decoded = msgspec.json.decode(with_note(b' {"id": "x", "n": [1, {"a": 2}]}\n', note))
    assert decoded == {
        "id": "x",
        "n": [1, {"a": 2}],
        "router": {
            "lane": "batch",
            "call_id": "c1",
            "model": "m",
            "cost_usd": 0.5,
            "baseline_usd": 2.0,
            "savings_usd": 1.5,
            "savings_by_lever": {"batch": 0.5, "flex": 0.0, "route": 1.0, "prompt_cache": 0.0, "answer_cache": 0.0},
        },
    }
    assert msgspec.json.decode(with_note(b"{ }", note))["router"]["call_id"] == "c1"
    assert with_note(b"[1, 2]", note) == b"[1, 2]"  # not an object: left alone
    assert with_note(b"", note) == b""


def test_an_unpriced_note_says_why_and_has_null_costs() -> None:
    note = msgspec.json.decode(router_note(origin=Origin.REALTIME, call_id="c", model="m", cost=None))
    assert note["unpriced"] == NO_PRICE
    assert note["cost_usd"] is None and note["savings_usd"] is None and note["savings_by_lever"] is None


def test_a_model_priced_nowhere_is_served_and_deferred_but_unpriced(
    start_router: RouterFactory, sim: Sim, tenant: Tenant
) -> None:
    local = upstream(sim.v1, name="local", models=["sim-local-model"])
    settings: dict[str, Any] = {"batch": HELD, "auth": "keys", "keys": tenant.keys()}
    with (
        start_router(upstreams=[local, upstream(sim.v1)], **settings) as base,
        openai.OpenAI(base_url=base + "/v1", api_key=tenant.key, max_retries=0) as client,
    ):
        before = metric(httpx.get(base + "/metrics").text, UNPRICED.format(lane="realtime"))
        now = client.chat.completions.with_raw_response.create(model="sim-local-model", messages=MESSAGES)
        later = client.chat.completions.create(model="sim-local-model", messages=MESSAGES, extra_headers=LATER)
        assert "x-router-cost-usd" not in now.headers
        for answer, lane in ((now.parse(), "realtime"), (later, "batch")):
            assert answer.choices[0].message.content and answer.model_extra is not None
            note = answer.model_extra["router"]
            assert note["lane"] == lane and note["unpriced"] == NO_PRICE
            assert note["cost_usd"] is None and note["savings_usd"] is None
        text = httpx.get(base + "/metrics").text
        assert metric(text, UNPRICED.format(lane="realtime")) == before + 1
        assert metric(text, UNPRICED.format(lane="batch")) >= 1
    assert sim.stats()["batch_lines_submitted"] == 1
