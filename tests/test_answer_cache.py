"""The answer cache through the router, with the official SDKs against the simulator: a repeated deterministic call
is answered from Redis (the upstream never sees it), at no cost, booked once as `answer_cache` savings that add up
across the answer's `"router"` note, `/v1/usage` and `/metrics`; two tenants never share an answer; `no-cache`,
`no-store`, `X-Router-Cache: off` and sampled calls bypass it; a policy rule turns it on."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest

from tests.helpers.metrics import metric
from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


class Tenant(msgspec.Struct, frozen=True):
    """A tenant of this test's own, so its series in the process-wide metrics registry start at zero."""

    name: str
    key: str


def new_tenant() -> Tenant:
    return Tenant("ac-" + secrets.token_hex(4), "sk-" + secrets.token_hex(8))


@pytest.fixture
def tenants() -> tuple[Tenant, Tenant, Tenant]:
    """Two tenants with the cache on, one with it at the default (off)."""
    return new_tenant(), new_tenant(), new_tenant()


def settings_for(*tenants: Tenant, on: int = 2) -> dict[str, Any]:
    keys = [{"sha256": hashlib.sha256(t.key.encode()).hexdigest(), "tenant": t.name} for t in tenants]
    return {"auth": "keys", "keys": keys, "tenants": {t.name: {"answer_cache": True} for t in tenants[:on]}}


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim, tenants: tuple[Tenant, ...]) -> Iterator[str]:
    with start_router(upstreams=with_anthropic(sim), **settings_for(*tenants)) as base:
        yield base


def billed(sim: Sim) -> int:
    calls: int = sim.stats()["realtime_calls_billed"]
    return calls


def messages(topic: str) -> Any:
    return [{"role": "user", "content": f"Grade answer {topic} of the eval set."}]


def chat(client: openai.OpenAI, topic: str, **kw: Any) -> Any:
    kw.setdefault("temperature", 0)
    return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages(topic), **kw)


def test_a_repeated_deterministic_call_is_answered_from_the_cache_at_no_cost(
    router: str, sim: Sim, tenants: tuple[Tenant, ...]
) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenants[0].key) as client:  # the SDK's default settings
        first = chat(client, "1")
        assert first.headers["x-router-cache"] == "miss" and billed(sim) == 1
        again = chat(client, "1")
    assert again.headers["x-router-cache"] == "hit"
    assert billed(sim) == 1  # the upstream never saw the repeat
    hit, original = again.parse(), first.parse()
    assert hit.id == original.id and hit.choices[0].message.content == original.choices[0].message.content
    assert again.headers["x-router-lane"] == "realtime" and float(again.headers["x-router-cost-usd"]) == 0.0
    note = hit.model_extra["router"]
    assert note["cache"] == "hit" and note["cost_usd"] == 0.0
    assert note["savings_usd"] == note["baseline_usd"] == original.model_extra["router"]["cost_usd"] > 0
    assert note["savings_by_lever"]["answer_cache"] == note["savings_usd"]
    assert float(again.headers["x-router-savings-usd"]) == pytest.approx(note["savings_usd"], abs=1e-12)


def test_two_tenants_never_share_an_answer(router: str, sim: Sim, tenants: tuple[Tenant, ...]) -> None:
    a, b, _ = tenants
    with (
        openai.OpenAI(base_url=router + "/v1", api_key=a.key) as client_a,
        openai.OpenAI(base_url=router + "/v1", api_key=b.key) as client_b,
    ):
        assert chat(client_a, "2").headers["x-router-cache"] == "miss"
        assert chat(client_b, "2").headers["x-router-cache"] == "miss"  # the same request, another tenant
        assert billed(sim) == 2
        assert chat(client_b, "2").headers["x-router-cache"] == "hit"
        assert chat(client_a, "2").headers["x-router-cache"] == "hit"
    assert billed(sim) == 2


def test_the_caller_bypasses_it_and_sampled_calls_never_use_it(
    router: str, sim: Sim, tenants: tuple[Tenant, ...]
) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenants[0].key) as client:
        assert chat(client, "3", extra_headers={"Cache-Control": "no-store"}).headers["x-router-cache"] == "bypass"
        assert chat(client, "3").headers["x-router-cache"] == "miss"  # no-store kept nothing
        fresh = chat(client, "3", extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-router-cache"] == "bypass"
        assert chat(client, "3", extra_headers={"X-Router-Cache": "off"}).headers["x-router-cache"] == "bypass"
        assert billed(sim) == 4
        repeat = chat(client, "3")
        assert repeat.headers["x-router-cache"] == "hit"
        assert repeat.parse().id == fresh.parse().id  # no-cache fetched a fresh answer and kept it
        for _ in range(2):
            sampled = chat(client, "4", temperature=0.7)
            assert sampled.headers["x-router-cache"] == "bypass"
        seeded = [chat(client, "5", temperature=0.7, seed=42) for _ in range(2)]
    assert [r.headers["x-router-cache"] for r in seeded] == ["miss", "hit"]  # a seed asks for determinism
    assert billed(sim) == 4 + 2 + 1


def test_off_by_default(router: str, sim: Sim, tenants: tuple[Tenant, ...]) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenants[2].key) as client:
        answers = [chat(client, "6") for _ in range(2)]
    assert all("x-router-cache" not in r.headers for r in answers)
    assert billed(sim) == 2


def test_streams_embeddings_and_messages_are_answered_from_it(
    router: str, sim: Sim, tenants: tuple[Tenant, ...]
) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenants[0].key) as client:
        original = chat(client, "7").parse()
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages("7"), temperature=0, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        assert raw.headers["x-router-cache"] == "hit"
        chunks = list(raw.parse())
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            original.choices[0].message.content
        )
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == original.usage.total_tokens
        embedded = [
            client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="an eval answer")
            for _ in range(2)
        ]
        assert [r.headers["x-router-cache"] for r in embedded] == ["miss", "hit"]
        assert embedded[1].parse().data[0].embedding == embedded[0].parse().data[0].embedding
    # The anthropic SDK (2.x) no longer names `temperature`; a caller that sets it sends it as an extra field.
    zero: Any = {"temperature": 0}
    with anthropic.Anthropic(base_url=router, api_key=tenants[0].key) as claude:
        sent = [
            claude.messages.with_raw_response.create(
                model="claude-sonnet-4-5", max_tokens=200, messages=messages("8"), extra_body=zero
            )
            for _ in range(2)
        ]
        assert [r.headers["x-router-cache"] for r in sent] == ["miss", "hit"]
        assert sent[1].parse().id == sent[0].parse().id
        with claude.messages.stream(
            model="claude-sonnet-4-5", max_tokens=200, messages=messages("8"), extra_body=zero
        ) as stream:
            text = "".join(stream.text_stream)
    assert text == "".join(b.text for b in sent[0].parse().content if b.type == "text")
    assert billed(sim) == 3  # the chat, the embedding and the message once each


def test_the_savings_add_up_across_notes_usage_and_metrics(router: str, tenants: tuple[Tenant, ...]) -> None:
    tenant = tenants[1]
    notes = []
    with openai.OpenAI(base_url=router + "/v1", api_key=tenant.key) as client:
        for topic in ("9", "10", "9", "9", "10"):
            notes.append(chat(client, topic).parse().model_extra["router"])
    hits = [n for n in notes if n.get("cache") == "hit"]
    assert len(hits) == 3
    saved = sum(n["savings_by_lever"]["answer_cache"] for n in notes)
    assert saved == sum(n["savings_usd"] for n in hits) > 0
    usage = httpx.get(router + "/v1/usage", headers={"Authorization": f"Bearer {tenant.key}"}).json()
    assert usage["lanes"]["cache"]["requests"] == 3 and usage["lanes"]["cache"]["cost_usd"] == 0
    assert usage["savings_by_lever"]["answer_cache"] == pytest.approx(saved, rel=1e-12)
    text = httpx.get(router + "/metrics").text
    booked = metric(text, f'hybrid_router_lever_savings_usd_total{{lever="answer_cache",tenant="{tenant.name}"}}')
    assert booked == pytest.approx(saved, rel=1e-12)
    assert metric(text, f'hybrid_router_answer_cache_total{{event="hit",tenant="{tenant.name}"}}') == 3
    assert metric(text, f'hybrid_router_answer_cache_total{{event="stored",tenant="{tenant.name}"}}') == 2


def test_a_policy_rule_turns_it_on_and_a_deferred_repeat_is_answered_at_once(
    start_router: RouterFactory, sim: Sim, tmp_path: Path
) -> None:
    (tmp_path / "10-cache.yaml").write_text(
        "rules:\n  - name: eval-rerun\n    match:\n      headers: {x-workload: eval-rerun}\n    answer_cache: true\n"
    )
    tenant = new_tenant()
    sim.configure(batch_turnaround_s=3600.0)  # a batch would not come back during this test
    with (
        start_router(policies_dir=str(tmp_path), **settings_for(tenant, on=0)) as base,
        openai.OpenAI(base_url=base + "/v1", api_key=tenant.key) as client,
    ):
        rerun = {"x-workload": "eval-rerun"}
        assert "x-router-cache" not in chat(client, "11").headers  # no rule: the cache is off
        assert chat(client, "11", extra_headers=rerun).headers["x-router-cache"] == "miss"
        later = chat(client, "11", extra_headers=rerun | {"X-Deadline": "2h"})
    assert later.headers["x-router-cache"] == "hit" and later.headers["x-router-rule"] == "eval-rerun"
    assert later.parse().choices[0].message.content
    assert billed(sim) == 2 and sim.stats()["batch_lines_submitted"] == 0


def test_a_batch_answer_is_kept_for_the_calls_that_repeat_it(start_router: RouterFactory, sim: Sim) -> None:
    tenant = new_tenant()
    with (
        start_router(batch=FAST, **settings_for(tenant, on=1)) as base,
        openai.OpenAI(base_url=base + "/v1", api_key=tenant.key) as client,
    ):
        later = {"X-Deadline": "2h"}
        first = chat(client, "12", extra_headers=later)  # held until its batch answers
        assert first.headers["x-router-cache"] == "miss"
        assert first.parse().model_extra["router"]["lane"] == "batch"
        # The poller keeps the answer once it stored the result: a moment after the held caller may have had it.
        stored = f'hybrid_router_answer_cache_total{{event="stored",tenant="{tenant.name}"}}'
        wait_until(lambda: metric(httpx.get(base + "/metrics").text, stored) == 1, 20)
        repeat = chat(client, "12")
        assert repeat.headers["x-router-cache"] == "hit"
        assert repeat.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert sim.stats()["batch_lines_billed"] == 1 and billed(sim) == 0
        # A caller that asked for a call id to fetch later gets one, not an answer from the cache.
        queued = chat(client, "12", extra_headers=later | {"Prefer": "respond-async"})
    assert queued.http_response.status_code == 202 and queued.headers["x-router-cache"] == "bypass"


def test_a_streamed_answer_is_kept_once_its_stream_ended(router: str, sim: Sim, tenants: tuple[Tenant, ...]) -> None:
    with openai.OpenAI(base_url=router + "/v1", api_key=tenants[0].key) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages("14"), temperature=0, stream=True
        )
        assert raw.headers["x-router-cache"] == "miss"
        chunks = list(raw.parse())
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert all(c.usage is None for c in chunks)  # the usage chunk the caller did not ask for stays hidden
        again = chat(client, "14")
    assert again.headers["x-router-cache"] == "hit"
    answer = again.parse()
    assert answer.choices[0].message.content == streamed and answer.id == chunks[0].id
    assert answer.usage is not None and answer.model_extra["router"]["savings_usd"] > 0
    zero: Any = {"temperature": 0}
    with anthropic.Anthropic(base_url=router, api_key=tenants[0].key) as claude:
        with claude.messages.stream(
            model="claude-sonnet-4-5", max_tokens=200, messages=messages("15"), extra_body=zero
        ) as stream:
            text = "".join(stream.text_stream)
        sent = claude.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=200, messages=messages("15"), extra_body=zero
        )
    assert sent.headers["x-router-cache"] == "hit"
    assert "".join(b.text for b in sent.parse().content if b.type == "text") == text
    assert billed(sim) == 2


def test_an_escalated_answer_is_kept_too(start_router: RouterFactory, sim: Sim) -> None:
    tenant = new_tenant()
    sim.configure(batch_turnaround_s=3600.0)  # the batch never comes back: the guard answers in real time
    ladder = FAST | {"margin_s": 1.0, "cancel_lead_s": 1.0, "flex_s": 0.0, "probe": False}
    with (
        start_router(batch=ladder, **settings_for(tenant, on=1)) as base,
        openai.OpenAI(base_url=base + "/v1", api_key=tenant.key, timeout=60) as client,
    ):
        first = chat(client, "16", extra_headers={"X-Deadline": "8s"})
        assert first.headers["x-router-cache"] == "miss"
        assert first.parse().model_extra["router"]["escalated"] is True  # answered by the guard
        stored = f'hybrid_router_answer_cache_total{{event="stored",tenant="{tenant.name}"}}'
        wait_until(lambda: metric(httpx.get(base + "/metrics").text, stored) == 1, 20)
        repeat = chat(client, "16")
    assert repeat.headers["x-router-cache"] == "hit"
    assert repeat.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert billed(sim) == 1 and sim.stats()["batch_lines_billed"] == 0
