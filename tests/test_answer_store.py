"""The answer cache's pure rules (which calls, what key, what the caller asks, who decides), its booking on the
`answer_cache` lever, and its Redis store against a real Redis: per tenant, bounded in count and bytes (least
recently used out first), expired after its TTL, one cluster slot per tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from router.core import answers
from router.core.answers import StoredAnswer
from router.core.keys import Keys
from router.core.lanes import Origin, lever_split
from router.core.policy import Decision
from router.core.pricing import Cost, load_pricing
from router.core.settings import AnswerCacheSettings, Settings, TenantLimits
from router.core.stream_answers import fold
from router.deferred.answers import AnswerStore
from router.deferred.replay import router_note, sse_chunks
from router.http.answer_cache import Keeper
from router.http.reports import savings_by_lever
from router.telemetry.accounting import Accounting
from tests.helpers.servers import ROOT
from tests.helpers.waiting import wait_until_async

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
BODY = (
    b'{"choices":[{"message":{"role":"assistant","content":"hello"}}],'
    b'"usage":{"prompt_tokens":1000,"completion_tokens":500}}'
)


def test_only_deterministic_calls_are_cached() -> None:
    assert answers.deterministic("/chat/completions", CHAT)
    assert answers.deterministic("/chat/completions", {"seed": 7, "temperature": 1.2})
    assert answers.deterministic("/messages", {"temperature": 0.0})
    assert answers.deterministic("/embeddings", {"input": "x"})  # no sampling at all
    assert not answers.deterministic("/chat/completions", {"temperature": 0.7})
    assert not answers.deterministic("/chat/completions", {})  # the default temperature is 1
    assert not answers.deterministic("/chat/completions", {"temperature": False, "seed": True})
    assert "/responses" not in answers.CACHEABLE  # server-side state a copy would not be


def test_the_key_ignores_key_order_and_streaming_but_not_tenant_endpoint_model_or_content() -> None:
    key = answers.digest("a", "/chat/completions", "gpt-4o-mini", CHAT)
    reordered = dict(reversed(list(CHAT.items())))
    streamed = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    assert answers.digest("a", "/chat/completions", "gpt-4o-mini", reordered) == key
    assert answers.digest("a", "/chat/completions", "gpt-4o-mini", streamed) == key
    assert answers.digest("b", "/chat/completions", "gpt-4o-mini", CHAT) != key
    assert answers.digest("a", "/completions", "gpt-4o-mini", CHAT) != key
    assert answers.digest("a", "/chat/completions", "gpt-4o", CHAT) != key
    assert answers.digest("a", "/chat/completions", "gpt-4o-mini", CHAT | {"max_tokens": 5}) != key


@pytest.mark.parametrize(
    ("headers", "read", "write"),
    [
        ({}, True, True),
        ({"cache-control": "no-cache"}, False, True),
        ({"cache-control": "max-age=0, No-Store"}, False, False),
        ({"x-router-cache": "off"}, False, False),
        ({"x-router-cache": "on"}, True, True),
    ],
)
def test_the_callers_headers(headers: dict[str, str], read: bool, write: bool) -> None:
    assert answers.directive(headers) == answers.Directive(read=read, write=write)


def test_a_rule_decides_before_the_tenant_and_the_tenant_before_the_default() -> None:
    settings = Settings(tenants={"on": TenantLimits(answer_cache=True), "off": TenantLimits(answer_cache=False)})
    silent, yes = Decision("realtime", None, None), Decision("realtime", None, "r", answer_cache=True)
    no = Decision("realtime", None, "r", answer_cache=False)
    assert not answers.enabled(settings, "other", silent)  # off by default
    assert answers.enabled(settings, "on", silent) and not answers.enabled(settings, "off", silent)
    assert answers.enabled(settings, "off", yes) and not answers.enabled(settings, "on", no)
    everyone = Settings(answer_cache=AnswerCacheSettings(enabled=True))
    assert answers.enabled(everyone, "any", silent) and not answers.enabled(everyone, "any", no)


def test_a_hit_costs_nothing_and_saves_its_real_time_price_on_the_answer_cache_lever() -> None:
    accounting = Accounting(load_pricing(ROOT / "config" / "pricing.yaml"))
    paid = accounting.price("gpt-4o-mini", Origin.REALTIME, BODY).cost
    hit = accounting.price("gpt-4o-mini", Origin.CACHE, BODY).cost
    assert paid is not None and hit is not None
    assert hit == Cost(baseline_usd=paid.actual_usd, actual_usd=0.0, savings_usd=paid.actual_usd)
    assert lever_split(Origin.CACHE, hit.savings_usd, hit.route_usd) == {"answer_cache": hit.savings_usd}
    assert Origin.CACHE.lane.value == "realtime"
    lanes = {"cache": {"savings_usd": hit.savings_usd}, "batch": {"savings_usd": 1.0}}
    assert savings_by_lever(lanes)["answer_cache"] == hit.savings_usd and savings_by_lever(lanes)["batch"] == 1.0
    note = router_note(origin=Origin.CACHE, call_id="c", model="m", cost=hit)
    assert b'"cache":"hit"' in note and b'"answer_cache":' + repr(hit.savings_usd).encode() in note


@pytest.fixture
async def redis(redis_url: str, key_prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def store(redis: Redis, key_prefix: str, **settings: Any) -> AnswerStore:
    return AnswerStore(redis, Keys(key_prefix), AnswerCacheSettings(enabled=True, **settings))


def answer(n: int = 10) -> StoredAnswer:
    return StoredAnswer(b"x" * n, "gpt-4o-mini")


async def test_an_answer_is_kept_per_tenant(redis: Redis, key_prefix: str) -> None:
    cache = store(redis, key_prefix)
    assert await cache.get("a", "d1") is None
    assert (await cache.put("a", "d1", answer())).kept
    assert await cache.get("a", "d1") == answer()
    assert await cache.get("b", "d1") is None  # another tenant, the same digest: never shared
    slots = {key_slot(k) async for k in redis.scan_iter(match=f"{key_prefix}:*a*")}
    assert len(slots) == 1  # the tenant's keys in one cluster slot


async def test_past_max_entries_the_least_recently_used_goes(redis: Redis, key_prefix: str) -> None:
    cache = store(redis, key_prefix, max_entries=2)
    await cache.put("a", "d1", answer())
    await cache.put("a", "d2", answer())
    assert await cache.get("a", "d1") is not None  # d1 is now the more recently used
    stored = await cache.put("a", "d3", answer())
    assert stored.kept and stored.evicted == 1
    assert await cache.get("a", "d2") is None
    assert await cache.get("a", "d1") is not None and await cache.get("a", "d3") is not None
    assert await redis.hlen(Keys(key_prefix).answers("a")) == 2


async def test_past_max_bytes_the_least_recently_used_go_and_a_huge_answer_is_not_kept(
    redis: Redis, key_prefix: str
) -> None:
    cache = store(redis, key_prefix, max_bytes=100)
    for d in ("d1", "d2", "d3"):
        await cache.put("a", d, answer(30))
    stored = await cache.put("a", "d4", answer(30))
    assert stored.evicted == 1 and await cache.get("a", "d1") is None
    key = Keys(key_prefix).answers("a")
    sizes = [await redis.hstrlen(key, d) for d in await redis.hkeys(key)]
    assert int(await redis.get(key + ":bytes") or 0) == sum(sizes) <= 100
    assert not (await cache.put("a", "big", answer(200))).kept
    assert await cache.get("a", "big") is None and await cache.get("a", "d4") is not None


async def test_an_answer_past_its_ttl_is_never_served(redis: Redis, key_prefix: str) -> None:
    cache = store(redis, key_prefix, ttl_s=1.0)
    await cache.put("a", "d1", answer())
    key = Keys(key_prefix).answers("a")
    ttls = [await redis.pttl(key + suffix) for suffix in ("", ":used", ":ends", ":bytes")]
    assert all(ttl != -1 and ttl <= 1000 for ttl in ttls)  # the tenant's keys go with its last answer (-2: gone)
    await wait_until_async(lambda: _gone(cache, "d1"), 10)
    assert await redis.zcard(key + ":ends") == 0 or not await redis.exists(key)


async def _gone(cache: AnswerStore, digest: str) -> bool:
    return await cache.get("a", digest) is None


CHAT_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "x" * 150, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
        {
            "index": 1,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43},
}
MESSAGE_ANSWER: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "y" * 150},
        {"type": "tool_use", "id": "tu_1", "name": "f", "input": {"a": [1, 2]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 40},
}


@pytest.mark.parametrize(
    ("endpoint", "answer_body"),
    [("/chat/completions", CHAT_ANSWER), ("/messages", MESSAGE_ANSWER)],
    ids=["chat", "messages"],
)
def test_a_stream_folds_back_into_its_answer(endpoint: str, answer_body: dict[str, Any]) -> None:
    body = msgspec.json.encode(answer_body)
    raw = b"".join(sse_chunks(endpoint, body, include_usage=True, cost=b": x-router-cost-usd=0\n\n"))
    folded = fold(endpoint, raw)
    assert folded is not None
    assert msgspec.json.decode(folded) == answer_body
    for cut in (raw[: len(raw) // 2], raw[: raw.rfind(b"data:")]):  # cut in the middle, or before its last event
        assert fold(endpoint, cut) is None  # a stream that did not end whole is not kept
    error = b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "boom"}}\n\n'
    assert fold(endpoint, raw + error) is None
    assert fold("/embeddings", raw) is None


@pytest.mark.parametrize("piece", [7, 64, 100_000], ids=["split-events", "small-chunks", "one-chunk"])
async def test_a_relayed_stream_passes_unchanged_and_is_kept_before_its_closing_event(
    redis: Redis, key_prefix: str, piece: int
) -> None:
    raw = b"".join(sse_chunks("/chat/completions", msgspec.json.encode(CHAT_ANSWER), include_usage=True))
    chunks = [raw[i : i + piece] for i in range(0, len(raw), piece)]
    cache = store(redis, key_prefix)
    keeper = Keeper(cache, "a", "d1", limit=1 << 20)

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    relayed = b""
    async for chunk in keeper.stream(source(), "/chat/completions", "gpt-4o-mini"):
        if chunk.startswith(b"data: [DONE]"):  # the closing event leaves after the answer is kept
            assert await cache.get("a", "d1") is not None
        relayed += chunk
    assert relayed == raw
    kept = await cache.get("a", "d1")
    assert kept is not None and msgspec.json.decode(kept.body) == CHAT_ANSWER


async def test_a_stream_cut_short_or_too_long_is_not_kept(redis: Redis, key_prefix: str) -> None:
    raw = b"".join(sse_chunks("/chat/completions", msgspec.json.encode(CHAT_ANSWER), include_usage=True))
    cache = store(redis, key_prefix)

    async def source(data: bytes) -> AsyncIterator[bytes]:
        yield data

    for digest, data, limit in (("short", raw[: len(raw) // 2], 1 << 20), ("long", raw, 10)):
        out = [c async for c in Keeper(cache, "a", digest, limit=limit).stream(source(data), "/chat/completions", "m")]
        assert b"".join(out) == data
        assert await cache.get("a", digest) is None
