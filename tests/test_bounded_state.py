"""Bounded state over real sockets: unknown models never reach Redis, idle queues are pruned, the queue cap refuses."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from router.deferred.catalog import model_ids
from router.deferred.store import Store
from router.http.app import create_app
from router.http.gateway import Gateway
from router.ops.serving import serve_in_thread
from tests.helpers.servers import Sim, router_settings, upstream
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

FAST = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}
LATER = {"x-deadline": "2h"}
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Summarise the quarterly report."}]
Started = Callable[..., contextlib.AbstractContextManager[tuple[str, Gateway]]]


@pytest.fixture
def router(sim: Sim, redis_url: str, key_prefix: str) -> Iterator[Started]:
    """Start a router and wait until it has read its upstreams' `/models`; yields (base URL, gateway)."""

    @contextlib.contextmanager
    def start(**tree: Any) -> Iterator[tuple[str, Gateway]]:
        app = create_app(router_settings(sim, redis_url, key_prefix, **tree), {"SIM_KEY": "sk-sim"})
        gateway: Gateway = app.state.gateway
        with serve_in_thread(app) as base:
            names = [cfg.name for cfg in gateway.upstreams.configs]
            wait_until(lambda: all(gateway.catalog.listed(n) is not None for n in names), 10, "the model lists")
            yield base, gateway

    yield start


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    """The test's own view of the router's Redis state."""
    client = Redis.from_url(redis_url)
    yield Store(client, key_prefix, result_ttl_s=600, idempotency_ttl_s=600)
    await client.aclose()


def keys_under(redis_url: str, prefix: str) -> list[str]:
    with redis.Redis.from_url(redis_url) as client:
        return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*"))


def metric(base: str, name: str, labels: str = "") -> float:
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.integration  # starts a router in front of the simulator
async def test_junk_model_names_leave_no_redis_state(router: Started, redis_url: str, key_prefix: str) -> None:
    unknown = "hybrid_router_deferred_unknown_model_total"
    with router() as (base, _):
        before = metric(base, unknown, 'upstream="openai"')
        slots = asyncio.Semaphore(50)

        async def junk(http: httpx.AsyncClient, i: int) -> httpx.Response:
            body = {"model": f"junk-{i}-{secrets.token_hex(4)}", "messages": MESSAGES}
            async with slots:
                return await http.post("/v1/chat/completions", json=body, headers=LATER)

        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            answers = await asyncio.gather(*(junk(http, i) for i in range(400)))
        after = metric(base, unknown, 'upstream="openai"')
    assert {a.status_code for a in answers} == {404}
    assert {a.json()["error"]["code"] for a in answers} == {"model_not_found"}
    assert {a.headers["x-router-lane"] for a in answers} == {"realtime"}
    assert after - before == 400
    left = keys_under(redis_url, key_prefix)
    # The tenant's real-time day totals (one key, however many names) and the replica's heartbeat; no queue.
    assert [k for k in left if ":totals:default:" not in k and ":replica:" not in k] == []


@pytest.mark.integration  # starts a router in front of the simulator
async def test_known_models_are_deferred_and_their_idle_queues_pruned(
    router: Started, store: Store, oai: Callable[..., openai.OpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router's own pruner passes once at the start and then every PRUNE_S (10 s); a busy host can take that
    # long to get here, and then it, not the test, prunes the queues counted below. Its next pass is an hour away.
    monkeypatch.setattr(sys.modules[Gateway.__module__], "PRUNE_S", 3600.0)
    with router(batch=FAST) as (base, gateway):
        client = oai(base)
        priced = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=LATER,
        )
        listed = client.chat.completions.with_raw_response.create(
            model="o3-mini",
            messages=MESSAGES,
            extra_headers=LATER,  # unpriced, in /models
        )
        unlisted = client.chat.completions.with_raw_response.create(
            model="sim-unpriced",
            messages=MESSAGES,
            extra_headers=LATER,
        )
        assert (priced.headers["x-router-lane"], listed.headers["x-router-lane"]) == ("batch", "batch")
        assert unlisted.headers["x-router-lane"] == "realtime"  # a name the upstream serves but nothing lists
        assert unlisted.parse().choices[0].message.content
        async with httpx.AsyncClient(base_url=base) as http:
            assert 'queue="openai/o3-mini/chat/completions"' in (await http.get("/metrics")).text
        pruned = 0
        for _ in range(100):  # the batch is finished just after its last result is stored
            pruned += await store.queues.prune_idle()
            if not await store.queues.queue_tags():
                break
            await asyncio.sleep(0.05)
        assert pruned == 2
        assert await store.queues.queue_tags() == []
        async with httpx.AsyncClient(base_url=base) as http:
            exported = (await http.get("/metrics")).text  # the registry is the process's: earlier tests' series too
        for queue in ("openai/gpt-4o-mini/chat/completions", "openai/o3-mini/chat/completions"):
            assert f'hybrid_router_queue_depth{{queue="{queue}"}}' not in exported
        again = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=LATER,
        )
        assert again.headers["x-router-lane"] == "batch"
        assert gateway.store.max_queues == 1000


@pytest.mark.integration  # starts a router in front of the simulator
async def test_an_explicit_model_list_without_wildcards_makes_its_models_known(
    router: Started, sim: Sim, oai: Callable[..., openai.OpenAI]
) -> None:
    upstreams = [upstream(sim.v1, name="explicit", models=["sim-listed"]), upstream(sim.v1, name="rest")]
    with router(batch=FAST, upstreams=upstreams) as (base, _):
        client = oai(base)
        listed = client.chat.completions.with_raw_response.create(
            model="sim-listed",
            messages=MESSAGES,
            extra_headers=LATER,
        )
        other = client.chat.completions.with_raw_response.create(
            model="sim-other",
            messages=MESSAGES,
            extra_headers=LATER,
        )
    assert listed.headers["x-router-lane"] == "batch"
    assert other.headers["x-router-lane"] == "realtime"


@pytest.mark.integration  # starts a router in front of the simulator
def test_the_queue_cap_refuses_a_new_queue_with_429(
    router: Started, redis_url: str, key_prefix: str, oai: Callable[..., openai.OpenAI]
) -> None:
    queued = {"prefer": "respond-async"} | LATER
    with router(batch=FAST | {"max_wait_s": 60.0}, limits={"max_queues": 1}) as (base, _):
        client = oai(base, max_retries=2)
        first = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=queued,
        )
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES, extra_headers=queued)
        same_queue = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES + MESSAGES,
            extra_headers=queued,
        )
        calls = [k for k in keys_under(redis_url, key_prefix) if ":call:" in k]
    assert (first.http_response.status_code, same_queue.http_response.status_code) == (202, 202)
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "too_many_queues"
    assert "limits.max_queues" in error["message"]
    assert refused.value.response.headers["retry-after"] == "60"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(calls) == 2  # the refused call stored nothing


@pytest.mark.integration  # starts a router in front of the simulator
def test_usage_counts_the_real_time_calls_a_flush_is_still_writing(
    router: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real-time totals are summed in memory and written to Redis once a second; a usage read in between flushes
    first, so a call is counted as soon as it was answered. Here the periodic flush is held on its way to Redis
    (as a slow pipeline would be) when the usage is read: the read waits for that write, then counts the call."""
    writing, released = threading.Event(), threading.Event()
    with router() as (base, gateway):
        totals = gateway.store.totals
        write = totals.add_totals

        async def slow_write(pending: Any) -> None:
            writing.set()
            await asyncio.to_thread(released.wait, 30)
            await write(pending)

        monkeypatch.setattr(totals, "add_totals", slow_write)
        try:
            answered = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
            assert answered.status_code == 200
            wait_until(writing.is_set, 10, "the periodic flush to start writing the call's totals")
            threading.Timer(1.0, released.set).start()  # the slow write lands while the usage read waits for it
            usage = httpx.get(base + "/v1/usage", timeout=60).json()
        finally:
            released.set()
    assert usage["lanes"].get("realtime", {}).get("requests") == 1


@pytest.mark.parametrize(
    ("body", "ids"),
    [
        (
            b'{"object": "list", "data": [{"id": "gpt-4o"}, {"id": "o3-mini", "owned_by": "system"}]}',
            ["gpt-4o", "o3-mini"],
        ),
        (b'{"data": [{"id": "a"}, {"name": "b"}, "c", {"id": 7}]}', ["a"]),
        (b'{"data": {"id": "a"}}', []),
        (b"<html>Bad Gateway</html>", []),
        (b"[]", []),
    ],
)
def test_model_ids_take_only_what_is_a_model_list(body: bytes, ids: list[str]) -> None:
    assert model_ids(body) == ids
