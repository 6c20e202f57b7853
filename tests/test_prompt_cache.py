"""Prompt caching, automatically: the router marks Anthropic calls' long prefixes seen again with `cache_control`
(and sets OpenAI's `prompt_cache_key`), the simulator bills reads and writes as Anthropic does, and the savings are
booked on the `prompt_cache` lever, the same in every answer's `"router"` object, `/v1/usage` and `/metrics`."""

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

from router.core import prompt_cache
from router.core.keys import Keys
from router.core.pricing import load_pricing
from router.core.settings import PromptCacheSettings
from router.deferred.store import client
from router.http.prompt_cache import PromptCaching, with_cache_key
from router.providers import anthropic_translate
from router.simulator import anthropic_bodies
from router.simulator.text import BreakpointCache
from tests.helpers.metrics import metric
from tests.helpers.servers import RouterFactory, Sim, with_anthropic
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PRICES = load_pricing(ROOT / "config" / "pricing.yaml")
MODEL = "claude-sonnet-4-5"
# About 3,000 tokens at four characters a token (the simulator's count and the router's estimate alike).
SYSTEM = " ".join(f"Rule {i}: answer in the customer's language, cite the policy, never guess." for i in range(160))
OFF = {"x-cache": "off"}
POLICY = """rules:
  - name: no-prompt-cache
    match: {headers: {x-cache: "off"}}
    prompt_cache: false
"""
CALLS = 50


class Tenant(msgspec.Struct, frozen=True):
    """A tenant of this test's own, so its series in the process-wide metrics registry start at zero."""

    name: str
    key: str

    def keys(self) -> list[dict[str, str]]:
        return [{"sha256": hashlib.sha256(self.key.encode()).hexdigest(), "tenant": self.name}]


@pytest.fixture
def tenant() -> Tenant:
    return Tenant("pc-" + secrets.token_hex(4), "sk-" + secrets.token_hex(8))


@pytest.fixture
def router(start_router: RouterFactory, sim: Sim, tenant: Tenant, tmp_path: Path) -> Iterator[str]:
    """A router in front of the simulator's Anthropic and OpenAI sides; calls with `x-cache: off` match a policy
    rule that turns the lever off."""
    (tmp_path / "10-cache.yaml").write_text(POLICY)
    batch = {"max_wait_s": 0.5, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}
    with start_router(
        upstreams=with_anthropic(sim), auth="keys", keys=tenant.keys(), policies_dir=str(tmp_path), batch=batch
    ) as base:
        yield base


def billed(sim: Sim) -> dict[str, int]:
    usage: dict[str, int] = sim.stats()["anthropic_usage"]
    return {k: usage.get(k, 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")}


def input_price(usage: dict[str, int]) -> float:
    """What Anthropic charges for these input tokens, in units of the plain input rate (writes 1.25x, reads 0.1x)."""
    return usage["input_tokens"] + 1.25 * usage["cache_creation_input_tokens"] + 0.1 * usage["cache_read_input_tokens"]


def since(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def workload(send: Any, extra_headers: dict[str, str]) -> list[dict[str, Any]]:
    """`CALLS` calls sharing `SYSTEM`, each with its own question; their `"router"` notes."""
    return [send(f"Question {i}: which rule applies to a late refund?", extra_headers) for i in range(CALLS)]


def test_fifty_calls_sharing_a_long_system_prompt_cost_70_percent_less_in_input(
    router: str, sim: Sim, tenant: Tenant
) -> None:
    rates = PRICES.rates(MODEL, "realtime")
    assert rates is not None
    with (
        openai.OpenAI(base_url=router + "/v1", api_key=tenant.key) as oai,  # the SDKs' default settings
        anthropic.Anthropic(base_url=router, api_key=tenant.key) as claude,
    ):
        # Each path has a system prompt of its own: the simulator, like Anthropic, would read one path's prefix
        # for the other (the same model and prompt), and each path is to show its one write.
        def chat(question: str, headers: dict[str, str]) -> dict[str, Any]:
            messages: Any = [{"role": "system", "content": "Chat. " + SYSTEM}, {"role": "user", "content": question}]
            done = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=50, extra_headers=headers)
            assert done.choices[0].message.content and done.model_extra is not None
            note: dict[str, Any] = done.model_extra["router"]
            return note

        def native(question: str, headers: dict[str, str]) -> dict[str, Any]:
            message = claude.messages.create(
                model=MODEL, max_tokens=50, system="Native. " + SYSTEM,
                messages=[{"role": "user", "content": question}], extra_headers=headers,
            )  # fmt: skip
            assert message.content and message.model_extra is not None
            note: dict[str, Any] = message.model_extra["router"]
            return note

        for send in (chat, native):
            start = billed(sim)
            off_notes = workload(send, OFF)
            middle = billed(sim)
            on_notes = workload(send, {})
            off, on = since(middle, start), since(billed(sim), middle)
            # The simulator's bill: without the lever every token is plain input; with it, one call writes the
            # prefix (the second: the first is only counted), the other 48 read it.
            assert off["cache_creation_input_tokens"] == off["cache_read_input_tokens"] == 0
            prefix = on["cache_creation_input_tokens"]
            assert prefix >= 2900
            assert on["cache_read_input_tokens"] == (CALLS - 2) * prefix
            assert sum(on.values()) == sum(off.values())  # the same tokens, billed differently
            assert input_price(on) <= 0.3 * input_price(off)
            # The router's booked cost says the same, from the same usage.
            cost_off = sum(n["cost_usd"] for n in off_notes)
            cost_on = sum(n["cost_usd"] for n in on_notes)
            input_off_usd = off["input_tokens"] * rates.input / 1e6
            assert cost_off - cost_on >= 0.7 * input_off_usd
            assert sum(n["baseline_usd"] for n in on_notes) == pytest.approx(cost_off)  # the uncached price
            assert all(n["savings_by_lever"]["prompt_cache"] == 0 for n in off_notes)
            saved = sum(n["savings_by_lever"]["prompt_cache"] for n in on_notes)
            assert saved == pytest.approx(cost_off - cost_on)
            assert sum(n["savings_usd"] for n in on_notes) == pytest.approx(saved)
            assert sum(1 for n in on_notes if n["savings_by_lever"]["prompt_cache"] < 0) == 1  # the one write


def test_per_lever_totals_add_up_across_the_note_usage_and_metrics(router: str, sim: Sim, tenant: Tenant) -> None:
    notes: list[dict[str, Any]] = []
    with anthropic.Anthropic(base_url=router, api_key=tenant.key) as claude:
        for i in range(4):
            message = claude.messages.create(
                model=MODEL, max_tokens=20, system=SYSTEM, messages=[{"role": "user", "content": f"Q{i}"}]
            )
            assert message.model_extra is not None
            notes.append(message.model_extra["router"])
        # And one in the batch lane: it reads the prefix too.
        message = claude.messages.create(
            model=MODEL, max_tokens=20, system=SYSTEM, messages=[{"role": "user", "content": "Q batch"}],
            extra_headers={"X-Deadline": "2h"},
        )  # fmt: skip
        assert message.model_extra is not None
        notes.append(message.model_extra["router"])
    assert notes[-1]["lane"] == "batch"
    assert notes[-1]["savings_by_lever"]["prompt_cache"] > 0 and notes[-1]["savings_by_lever"]["batch"] > 0
    by_lever = {lever: sum(n["savings_by_lever"][lever] for n in notes) for lever in notes[0]["savings_by_lever"]}
    assert by_lever["prompt_cache"] > 0
    assert sum(by_lever.values()) == pytest.approx(sum(n["savings_usd"] for n in notes), rel=1e-9)
    auth = {"Authorization": f"Bearer {tenant.key}"}

    def usage() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(router + "/v1/usage", headers=auth).json()
        return found

    wait_until(lambda: usage()["savings_by_lever"]["prompt_cache"] > 0, 20)
    reported = usage()["savings_by_lever"]
    text = httpx.get(router + "/metrics").text
    for lever, usd in by_lever.items():
        assert reported[lever] == pytest.approx(usd, rel=1e-9, abs=1e-12)
        series = f'{{lever="{lever}",tenant="{tenant.name}"}}'
        net = metric(text, f"hybrid_router_lever_savings_usd_total{series}") - metric(
            text, f"hybrid_router_lever_losses_usd_total{series}"
        )
        assert net == pytest.approx(usd, rel=1e-9, abs=1e-12)


def test_a_batch_of_calls_sharing_a_prefix_writes_it_once(router: str, sim: Sim, tenant: Tenant) -> None:
    auth = {"Authorization": f"Bearer {tenant.key}", "X-Deadline": "2h", "Prefer": "respond-async"}
    body = {"model": MODEL, "max_tokens": 20, "system": SYSTEM}
    ids = []
    for i in range(6):
        sent = httpx.post(
            router + "/v1/messages", json=body | {"messages": [{"role": "user", "content": f"B{i}"}]}, headers=auth
        )
        assert sent.status_code == 202
        ids.append(sent.json()["id"])
    for call_id in ids:
        done = httpx.get(router + f"/v1/deferred/{call_id}?wait=30", headers=auth, timeout=40)
        assert done.status_code == 200
    usage = billed(sim)
    prefix = usage["cache_creation_input_tokens"]
    assert prefix >= 2900  # the first call is only counted; one of the five marked ones writes, four read
    assert usage["cache_read_input_tokens"] == 4 * prefix


def test_the_openai_prompt_cache_key_is_set_and_a_clients_own_kept(router: str, sim: Sim, tenant: Tenant) -> None:
    long: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    short = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    # The key is a digest of tenant and prefix: the simulator counts the keys it received.
    expected = prompt_cache.openai_cache_key(
        {"model": "gpt-4o-mini", "messages": long}, "/chat/completions", tenant.name
    )
    assert expected is not None and expected.startswith("hr-")
    assert prompt_cache.openai_cache_key({"model": "gpt-4o-mini", "messages": short}, "/chat/completions", "t") is None
    other = prompt_cache.openai_cache_key({"model": "gpt-4o-mini", "messages": long}, "/chat/completions", "other")
    assert other != expected
    with openai.OpenAI(base_url=router + "/v1", api_key=tenant.key) as oai:
        first = oai.chat.completions.create(model="gpt-4o-mini", messages=long)
        again = oai.chat.completions.create(model="gpt-4o-mini", messages=long)
        own = oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=long,
            prompt_cache_key="mine",
        )
    assert first.choices[0].message.content and own.choices[0].message.content
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (again.usage.prompt_tokens_details.cached_tokens or 0) >= 1024
    assert sim.stats()["prompt_cache_keys"] == {expected: 2, "mine": 1}


# --- the pure decision -----------------------------------------------------------------------------------------


def _messages(system: str, turns: int = 1) -> dict[str, Any]:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(2 * turns - 1)]
    return {"model": MODEL, "max_tokens": 10, "system": system, "messages": messages}


def test_a_prefix_below_the_models_minimum_gets_no_breakpoint() -> None:
    about_1500 = SYSTEM[: 1500 * 4]
    assert [c.where for c in prompt_cache.candidates(_messages(about_1500), "messages", "t", MODEL)] == ["system"]
    assert prompt_cache.candidates(_messages(about_1500), "messages", "t", "claude-3-5-haiku") == []
    assert prompt_cache.candidates(_messages(SYSTEM), "messages", "t", "claude-haiku-4-5") == []  # 4,096
    assert prompt_cache.candidates(_messages("Be terse."), "messages", "t", MODEL) == []


def test_marks_stay_within_four_and_a_clients_own_are_detected() -> None:
    body = _messages(SYSTEM, turns=3)
    body["tools"] = [{"name": "lookup", "input_schema": {"type": "object"}}]
    found = prompt_cache.candidates(body, "messages", "t", MODEL)
    assert [c.where for c in found] == ["system", "turns"]
    marked = prompt_cache.mark(body, "messages", [c.where for c in found])
    assert prompt_cache.count_breakpoints(marked) == 2 <= prompt_cache.MAX_BREAKPOINTS
    assert marked["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert marked["messages"][-2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in str(marked["messages"][-1])  # the last turn is not part of the stable prefix
    assert prompt_cache.has_own_breakpoints(msgspec.json.encode(marked))
    assert not prompt_cache.has_own_breakpoints(msgspec.json.encode(_messages(SYSTEM)))


def test_a_clients_own_breakpoints_are_left_alone(router: str, sim: Sim, tenant: Tenant) -> None:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    with anthropic.Anthropic(base_url=router, api_key=tenant.key) as claude:
        for i in range(3):
            message = claude.messages.create(
                model=MODEL, max_tokens=20, system=system,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": f"Q{i}"}],
            )  # fmt: skip
            assert message.content
    usage = billed(sim)  # the caller's own mark is honoured from its first call: one write, two reads
    assert usage["cache_creation_input_tokens"] >= 2900
    assert usage["cache_read_input_tokens"] == 2 * usage["cache_creation_input_tokens"]


# --- the simulator -----------------------------------------------------------------------------------------


def test_the_simulator_reads_and_writes_marked_prefixes_within_the_ttl() -> None:
    now = [0.0]
    cache = BreakpointCache(ttl_s=300, clock=lambda: now[0])
    body = _messages(SYSTEM) | {"system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]}
    req = anthropic_bodies.decode_messages(msgspec.json.encode(body))
    first = anthropic_bodies.message(req, cache=cache).usage
    assert first.cache_read_input_tokens == 0 and first.cache_creation_input_tokens >= 2900
    plain = anthropic_bodies.message(anthropic_bodies.decode_messages(msgspec.json.encode(_messages(SYSTEM))))
    total = first.input_tokens + first.cache_creation_input_tokens
    assert total == plain.usage.input_tokens  # the same tokens, split
    now[0] = 299.0
    second = anthropic_bodies.message(req, cache=cache).usage
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    now[0] = 299.0 + 301.0  # the read refreshed it for 300 s: past that, written again
    third = anthropic_bodies.message(req, cache=cache).usage
    assert third.cache_read_input_tokens == 0 and third.cache_creation_input_tokens == first.cache_creation_input_tokens
    short = _messages("Be terse.") | {"system": [{"type": "text", "text": "Be terse.", "cache_control": {}}]}
    below = anthropic_bodies.message(anthropic_bodies.decode_messages(msgspec.json.encode(short)), cache=cache).usage
    assert below.cache_creation_input_tokens == below.cache_read_input_tokens == 0


def test_streamed_answers_carry_cache_usage_in_message_start(router: str, sim: Sim, tenant: Tenant) -> None:
    with anthropic.Anthropic(base_url=router, api_key=tenant.key) as claude:
        for i in range(3):
            with claude.messages.stream(
                model=MODEL, max_tokens=20, system=SYSTEM, messages=[{"role": "user", "content": f"S{i}"}]
            ) as stream:
                final = stream.get_final_message()
    assert (final.usage.cache_read_input_tokens or 0) >= 2900


def test_the_global_switch_turns_the_lever_off(start_router: RouterFactory, sim: Sim, tenant: Tenant) -> None:
    long: Any = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    with (
        start_router(
            upstreams=with_anthropic(sim), auth="keys", keys=tenant.keys(), prompt_cache={"enabled": False}
        ) as base,
        anthropic.Anthropic(base_url=base, api_key=tenant.key) as claude,
        openai.OpenAI(base_url=base + "/v1", api_key=tenant.key) as oai,
    ):
        for i in range(3):
            message = claude.messages.create(
                model=MODEL, max_tokens=20, system=SYSTEM, messages=[{"role": "user", "content": f"Q{i}"}]
            )
            assert message.content
            assert oai.chat.completions.create(model="gpt-4o-mini", messages=long).choices
    usage = billed(sim)
    assert usage["input_tokens"] > 3 * 2900
    assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
    assert sim.stats()["prompt_cache_keys"] == {}


def test_the_chat_translation_carries_breakpoints_to_blocks_and_tools() -> None:
    mark = {"type": "ephemeral"}
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "S", "cache_control": mark}]},
            {"role": "user", "content": [{"type": "text", "text": "U", "cache_control": mark}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": mark}],
    }
    params = anthropic_translate.to_params(anthropic_translate.parse_chat(msgspec.json.encode(body)))
    assert params["system"] == [{"type": "text", "text": "S", "cache_control": mark}]
    assert params["messages"][0]["content"] == [{"type": "text", "text": "U", "cache_control": mark}]
    assert params["tools"][0]["cache_control"] == mark
    unmarked = {"model": MODEL, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}
    plain = anthropic_translate.to_params(anthropic_translate.parse_chat(msgspec.json.encode(unmarked)))
    assert plain["system"] == "S" and plain["messages"][0]["content"] == "U"


def test_the_responses_api_gets_a_key_for_long_instructions() -> None:
    long = {"model": "gpt-4o-mini", "instructions": SYSTEM, "input": "Hi"}
    key = prompt_cache.openai_cache_key(long, "/responses", "t")
    assert key is not None and key == prompt_cache.openai_cache_key(long | {"input": "Other"}, "/responses", "t")
    assert prompt_cache.openai_cache_key(long | {"instructions": "Be terse."}, "/responses", "t") is None
    assert prompt_cache.openai_cache_key({"model": "m", "input": "x"}, "/embeddings", "t") is None


async def test_a_prefix_is_marked_once_the_tenant_sent_it_again(redis_url: str, key_prefix: str) -> None:
    redis = client.connect(redis_url, max_connections=4)
    caching = PromptCaching(PromptCacheSettings(), redis, Keys(key_prefix))
    body = msgspec.json.encode(_messages(SYSTEM))

    async def marks(tenant: str, allowed: bool | None = None) -> int:
        sent = await caching.apply(body, kind="anthropic", endpoint="/messages", tenant=tenant, allowed=allowed)
        return prompt_cache.count_breakpoints(msgspec.json.decode(sent))

    try:
        assert await marks("a") == 0  # first sight: only counted
        assert await marks("a") == 1  # seen again: marked
        assert await marks("b") == 0  # another tenant's prefixes are its own
        assert await marks("a", allowed=False) == 0  # a policy rule turned it off
        digest = prompt_cache.candidates(_messages(SYSTEM), "messages", "a", MODEL)[0].digest
        ttl = await redis.ttl(Keys(key_prefix).prompt_prefix("a", digest))
        assert 0 < ttl <= 300
        short = msgspec.json.encode(_messages("Be terse."))
        assert await caching.apply(short, kind="anthropic", endpoint="/messages", tenant="a", allowed=None) is short
    finally:
        await client.close(redis)
    # Redis unreachable: the call goes on unmarked.
    down = client.connect("redis://127.0.0.1:1/0", max_connections=1)
    try:
        broken = PromptCaching(PromptCacheSettings(), down, Keys(key_prefix))
        assert await broken.apply(body, kind="anthropic", endpoint="/messages", tenant="a", allowed=None) is body
    finally:
        await client.close(down)


@pytest.mark.parametrize("body", [b'{"model":"m","messages":[]}', b'  {\n "model": "m", "n": [1, {"a": "}"}]}\n'])
def test_the_cache_key_is_spliced_into_the_body_as_sent(body: bytes) -> None:
    """No second encoding of a long prompt: the key goes in after the opening brace; the rest is byte for byte."""
    spliced = with_cache_key(body, 'k"1')
    assert msgspec.json.decode(spliced) == msgspec.json.decode(body) | {"prompt_cache_key": 'k"1'}
    assert spliced.endswith(body[body.index(b"{") + 1 :])
