"""Leases follow liveness (unit tier, real Redis): a lease or a `building` batch held by a replica whose heartbeat
lapsed is taken over at once by another replica, one held by a live replica is not, whatever the lease's length."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from router.core.keys import REPLICA_TTL_S
from router.deferred.store import Store
from router.deferred.store.records import CallMeta

MODEL = "gpt-4o-mini"


@pytest.fixture
async def replicas(redis_url: str, key_prefix: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two replicas' stores over one Redis and prefix (each its own replica id)."""
    redis = Redis.from_url(redis_url)
    yield (
        Store(redis, key_prefix, result_ttl_s=600, idempotency_ttl_s=600),
        Store(redis, key_prefix, result_ttl_s=600, idempotency_ttl_s=600),
    )
    keys = [k async for k in redis.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


async def test_a_lease_of_a_dead_replica_is_taken_over_at_once(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    key = a.keys.flush_lease("q")
    owner_a, owner_b = a.leases.owner("batcher"), b.leases.owner("batcher")
    await a.intake.heartbeat(a.leases.ctx.replica_id, REPLICA_TTL_S)
    assert await a.leases.lease(key, owner_a, 120)
    assert not await b.leases.lease(key, owner_b, 120)  # alive: its lease holds
    await a.intake.retire(a.leases.ctx.replica_id)  # as when its heartbeat lapses
    assert await b.leases.lease(key, owner_b, 120)
    assert await a.redis.get(key) == owner_b.encode()
    assert not await a.leases.renew(key, owner_a, 120)  # the dead owner, if it still ran, stops at its renewal


async def test_an_owner_naming_no_replica_keeps_its_lease(replicas: tuple[Store, Store]) -> None:
    a, b = replicas
    key = a.keys.flush_lease("q")
    assert await a.leases.lease(key, "legacy-owner", 120)
    assert not await b.leases.lease(key, b.leases.owner("batcher"), 120)


async def test_a_building_batch_of_a_dead_replica_is_adopted_before_its_lease_ends(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    now = time.time()
    body = msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    meta = CallMeta(
        tenant="t", upstream="openai", endpoint="/v1/chat/completions", model=MODEL, deadline=now + 3600,
        received_at=now,
    )  # fmt: skip
    await a.intake.enqueue(meta, body)
    [tag] = await a.queues.queue_tags()
    owner_a, owner_b = a.leases.owner("batcher"), b.leases.owner("batcher")
    await a.intake.heartbeat(a.leases.ctx.replica_id, REPLICA_TTL_S)
    claimed = await a.batches.claim(tag, max_requests=10, max_bytes=10**6, owner=owner_a, lease_s=120)
    assert claimed is not None
    bid = claimed[0]
    [record] = await b.batches.leased_builds(tag, time.time())
    assert record.owner == owner_a
    assert await b.leases.dead({owner_a}) == set()
    assert not await b.batches.take_over(tag, bid, owner_b, 120)
    await a.intake.retire(a.leases.ctx.replica_id)
    assert await b.leases.dead({owner_a}) == {owner_a}
    assert await b.batches.take_over(tag, bid, owner_b, 120, dead=owner_a)
    assert not await a.batches.renew_batch(tag, bid, owner_a, 120)  # the old builder has lost it
    assert not await a.batches.take_over(tag, bid, owner_a, 120, dead=owner_a)  # nor can it name itself back in


async def test_an_escalation_of_a_dead_replica_is_taken_over_before_its_lease_ends(
    replicas: tuple[Store, Store],
) -> None:
    a, b = replicas
    now = time.time()
    body = msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    meta = CallMeta(
        tenant="t", upstream="openai", endpoint="/v1/chat/completions", model=MODEL, deadline=now + 3600,
        received_at=now,
    )  # fmt: skip
    call_id, _ = await a.intake.enqueue(meta, body)
    [tag] = await a.queues.queue_tags()
    owner_a, owner_b = a.leases.owner("guard"), b.leases.owner("guard")
    await a.intake.heartbeat(a.leases.ctx.replica_id, REPLICA_TTL_S)
    assert await a.results.escalate(call_id, 120, owner_a) == body
    assert await b.results.escalate(call_id, 120, owner_b) is None  # its lease runs and its escalator lives
    assert await b.results.leased_escalations(tag, time.time()) == [(call_id, owner_a)]
    await a.intake.retire(a.leases.ctx.replica_id)
    assert await b.leases.dead({owner_a}) == {owner_a}
    assert await b.results.escalate(call_id, 120, owner_b, dead=owner_a) == body
    assert not await a.results.renew_escalation(call_id, 120, owner_a)  # the old escalator stops at its renewal
    assert await b.results.renew_escalation(call_id, 120, owner_b)
