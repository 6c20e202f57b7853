"""The Redis store's invariants against a real Redis, and crash recovery against the simulator's Batch API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from router.core.keys import PROVIDER_BATCHES_KEEP_S, queue_tag
from router.core.lanes import Origin
from router.core.pricing import load_pricing
from router.core.settings import BatchSettings, Upstream
from router.deferred.batcher import Batcher
from router.deferred.poller import Poller
from router.deferred.store import Store
from router.deferred.store.intake import QueuesFull
from router.deferred.store.records import CallMeta
from router.providers.base import BatchLine
from router.providers.openai import OpenAIProvider
from router.telemetry.accounting import Accounting
from tests.helpers.servers import ROOT, Sim
from tests.helpers.waiting import wait_until_async

ENDPOINT, MODEL = "/chat/completions", "gpt-4o-mini"
TAG = queue_tag("openai", ENDPOINT, MODEL)


# The same cases on the bundled Redis 6.2 (the oldest the router supports) run in the integration tier: `make unit`
# stays fast, `make test` runs both.
@pytest.fixture(params=["local", pytest.param("bundled-6.2", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    """The store on the test Redis (7.x here) and on the bundled Redis 6.2."""
    url = redis_url if request.param == "local" else request.getfixturevalue("bundled_redis_url")
    redis = Redis.from_url(url)
    yield Store(redis, key_prefix, result_ttl_s=600, idempotency_ttl_s=600)
    keys = [k async for k in redis.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def provider(sim: Sim) -> AsyncIterator[OpenAIProvider]:
    p = OpenAIProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    yield p
    await p.aclose()


def meta(i: int = 0, *, deadline_in: float = 3600.0, tenant: str = "t") -> CallMeta:
    now = time.time()
    return CallMeta(
        tenant=tenant, upstream="openai", endpoint=ENDPOINT, model=MODEL, deadline=now + deadline_in, received_at=now
    )


def body(i: int) -> bytes:
    return msgspec.json.encode({"model": MODEL, "messages": [{"role": "user", "content": f"call {i}"}]})


async def admit_many(store: Store, n: int) -> list[str]:
    return [(await store.intake.enqueue(meta(i), body(i)))[0] for i in range(n)]


SETTINGS = BatchSettings(max_wait_s=0.1, poll_interval_s=0.1, lease_s=0.3, margin_s=1.0, turnaround_prior_s=1.0)


async def test_call_ids_are_valid_custom_ids_and_carry_their_queue(store: Store) -> None:
    ids = await admit_many(store, 20)
    assert len(set(ids)) == 20
    for call_id in ids:
        assert msgspec.json.decode(msgspec.json.encode(call_id)) == call_id
        assert 1 <= len(call_id) <= 64 and call_id.replace("_", "").replace("-", "").isalnum()
        assert call_id.startswith(TAG)


async def test_concurrent_claims_never_share_a_call(store: Store) -> None:
    ids = await admit_many(store, 300)
    claims = await asyncio.gather(
        *(store.batches.claim(TAG, max_requests=70, max_bytes=10**9, owner=f"o{i}", lease_s=30) for i in range(6))
    )
    taken = [cid for claim in claims if claim for cid in claim[1]]
    assert len(taken) == len(set(taken)) == 300
    assert set(taken) == set(ids)
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 0 and stats.bytes == 0


async def test_claim_respects_the_byte_limit(store: Store) -> None:
    await admit_many(store, 10)
    one = len(body(0))
    claim = await store.batches.claim(TAG, max_requests=100, max_bytes=3 * (one + 128), owner="o", lease_s=30)
    assert claim is not None and len(claim[1]) == 3


async def test_a_result_is_stored_and_billed_once(store: Store) -> None:
    [call_id] = await admit_many(store, 1)
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    bid = claim[0]
    call = await store.results.get_call(call_id)
    assert call is not None and call.state == "submitted"
    args = {"from_batch": bid, "status": 200, "body": b"{}", "origin": Origin.BATCH, "cost": (1.0, 2.0, 1.0)}
    assert await store.results.store_result(call_id, call.meta, **args) == 1  # type: ignore[arg-type]
    assert await store.results.store_result(call_id, call.meta, **args) == 2  # type: ignore[arg-type]  # re-ingest: not again
    day = time.strftime("%Y-%m-%d", time.gmtime())
    totals = await store.totals.totals("t", day)
    assert totals["batch:requests"] == 1 and totals["batch:savings_usd"] == 1.0
    result = await store.results.get_result(call_id)
    assert result is not None and result.status == 200 and result.savings_usd == 1.0


async def test_a_late_batch_result_after_escalation_is_dropped(store: Store) -> None:
    [call_id] = await admit_many(store, 1)
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert await store.results.escalate(call_id, lease_s=30) == body(0)
    assert await store.results.escalate(call_id, lease_s=30) is None  # a second guard does not take it again
    call = await store.results.get_call(call_id)
    assert call is not None
    realtime = await store.results.store_result(
        call_id, call.meta, from_batch="", status=200, body=b'{"a":1}', origin=Origin.ESCALATED, cost=None
    )
    late = await store.results.store_result(
        call_id, call.meta, from_batch=claim[0], status=200, body=b'{"b":2}', origin=Origin.BATCH, cost=None
    )
    assert (realtime, late) == (1, 0)
    result = await store.results.get_result(call_id)
    assert result is not None and result.body == b'{"a":1}'


async def test_a_request_waits_for_a_killed_replica_to_be_seen_dead_before_it_queues_a_twin(
    store: Store,
) -> None:
    # A replica killed with its calls held still looks alive until its heartbeat lapses; the application's own
    # retry (a new request, not marked as one) arrives on the restarted replica within that time.
    await store.intake.heartbeat(
        "killed", 2.0
    )  # its last heartbeat: it lapses in 2 s (seconds, for a busy host's delays)
    held, _ = await store.intake.enqueue(meta(), body(1), digest="d", holder="killed/c1")
    assert await store.intake.reattachable(TAG, "d", retry=False, replica="new") is None  # no wait: as before
    assert await store.intake.reattachable(TAG, "d", retry=False, replica="new", settle_s=10.0) == held  # at the lapse
    # A replica that stays alive keeps its call: the twin is queued once the wait is over.
    await store.intake.heartbeat("live", 30)
    await store.intake.enqueue(meta(), body(2), digest="e", holder="live/c2")
    assert await store.intake.reattachable(TAG, "e", retry=False, replica="new", settle_s=0.5) is None
    # This replica's own connections are not waited for: it releases them itself as they drop.
    await store.intake.enqueue(meta(), body(3), digest="f", holder="live/c3")
    own = store.intake.reattachable(TAG, "f", retry=False, replica="live", settle_s=600.0)
    assert await asyncio.wait_for(own, 60) is None  # answered without the 600 s wait


async def test_idempotency_key_maps_a_retry_to_the_admitted_call(store: Store) -> None:
    first, created = await store.intake.enqueue(meta(), body(1), "key-1", digest="d1")
    again, created_again = await store.intake.enqueue(meta(), body(1), "key-1", digest="d1")
    other_tenant, _ = await store.intake.enqueue(meta(tenant="u"), body(1), "key-1", digest="d1u")
    other_body, reused = await store.intake.enqueue(meta(), body(2), "key-1", digest="d2")
    assert (created, created_again, reused) == ("new", "attached", "reused")
    assert again == first and other_body == first and other_tenant != first
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 2  # the reused key stored nothing


async def test_a_retry_reattaches_only_to_a_call_whose_caller_is_gone(store: Store) -> None:
    await store.intake.heartbeat("live", 30)
    held, _ = await store.intake.enqueue(meta(), body(1), digest="d", holder="live/c1")
    # The caller is still connected on a live replica: an identical request is a new call (sampling on purpose).
    assert await store.intake.reattachable(TAG, "d", retry=False) is None
    # ...unless the client says it retries (its first attempt's connection is gone, unseen by the router yet).
    assert await store.intake.reattachable(TAG, "d", retry=True) == held
    # The connection ended: now any identical request takes the call over.
    await store.intake.unhold(held, "live/c1", delivered=False)
    assert await store.intake.reattachable(TAG, "d", retry=False) == held
    again, outcome = await store.intake.enqueue(meta(), body(1), digest="d", holder="live/c2", attach_to=held)
    assert (again, outcome) == (held, "attached")
    # The old connection letting go later does not orphan the call its retry now holds.
    await store.intake.unhold(held, "live/c1", delivered=False)
    assert await store.intake.reattachable(TAG, "d", retry=False) is None
    # A dead replica's calls are orphans; a delivered call and an async call are never taken over.
    await store.intake.enqueue(meta(), body(1), digest="e", holder="dead/c3")
    assert await store.intake.reattachable(TAG, "e", retry=False) is not None
    await store.intake.unhold(held, "live/c2", delivered=True)
    assert await store.intake.reattachable(TAG, "d", retry=True) is None
    await store.intake.enqueue(meta(), body(1), digest="f", holder="async")
    assert await store.intake.reattachable(TAG, "f", retry=True) is None
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 3


async def test_crash_between_claim_and_upload_is_recovered(store: Store, provider: OpenAIProvider, sim: Sim) -> None:
    ids = await admit_many(store, 5)
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="dead-replica", lease_s=0.2)
    assert claim is not None  # ...and the replica dies before uploading anything
    assert await _recover_and_drain(store, provider, ids) == 1  # adopted once its lease lapsed, and uploaded
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


async def test_crash_after_the_provider_created_the_batch_is_not_resubmitted(
    store: Store, provider: OpenAIProvider, sim: Sim
) -> None:
    ids = await admit_many(store, 5)
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="dead-replica", lease_s=0.2)
    assert claim is not None
    bid, claimed = claim
    lines = [(cid, b) for cid, b, _ in await store.batches.bodies(claimed)]
    # The replica created the provider batch, then died before recording its id.
    await provider.submit_batch(bid, ENDPOINT, MODEL, [BatchLine(custom_id=c, body=b) for c, b in lines])
    assert await _recover_and_drain(store, provider, ids) == 0  # found by its metadata, recorded, not submitted again
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


async def _recover_and_drain(store: Store, provider: OpenAIProvider, ids: list[str]) -> int:
    """Run a live replica's batcher and poller until every call has its batch result; the batches it submitted."""
    batcher = Batcher(store.queues, store.batches, store.results, store.leases, {"openai": provider}, SETTINGS)
    poller = Poller(
        store.queues,
        store.batches,
        store.results,
        store.leases,
        {"openai": provider},
        SETTINGS,
        Accounting(load_pricing(ROOT / "config" / "pricing.yaml")),
    )
    submitted = 0

    async def answered() -> bool:
        nonlocal submitted
        submitted += await batcher.run_once()
        await poller.run_once()
        return all([await store.results.get_result(cid) is not None for cid in ids])

    await wait_until_async(answered, 15, "every call's result", every=0.1)
    results = [await store.results.get_result(cid) for cid in ids]
    assert all(r is not None and r.status == 200 and r.origin == "batch" for r in results)
    return submitted


async def test_provider_batch_ids_are_recorded_for_crash_recovery(store: Store) -> None:
    await admit_many(store, 3)
    first = await store.batches.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
    second = await store.batches.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
    assert first is not None and second is not None
    recorded = store.keys.provider_batches(TAG)
    await store.redis.zadd(recorded, {"batch_old": time.time() - PROVIDER_BATCHES_KEEP_S - 1})
    assert await store.batches.mark_submitted(TAG, first[0], "o", "batch_1", next_poll=time.time() + 60)
    assert await store.batches.recorded(["batch_1", "batch_old", "batch_2"]) == {"batch_1"}  # the old one was pruned
    assert 0 < await store.redis.ttl(recorded) <= PROVIDER_BATCHES_KEEP_S
    [(upstream, building, lease_until)] = await store.batches.building()
    assert (upstream, building.id, building.n, building.owner) == ("openai", second[0], 1, "o")
    assert lease_until > time.time()
    # The moment a lapse was first found stays put while recovery looks again, and starts over with a new attempt.
    lapsed = await store.batches.lapsed_at(TAG, second[0])
    assert await store.batches.lapsed_at(TAG, second[0]) == lapsed
    await store.batches.count_submit_attempt(TAG, second[0])
    assert await store.batches.lapsed_at(TAG, second[0]) > lapsed


def test_every_lua_script_compiles(redis_url: str) -> None:
    import redis as sync_redis

    from router.deferred.store import scripts

    with sync_redis.Redis.from_url(redis_url) as client:
        for name in dir(scripts):
            if name.isupper():
                assert client.script_load(getattr(scripts, name)), name


class SlowProvider(OpenAIProvider):
    """An upload that takes longer than the batcher's lease."""

    async def submit_batch(self, batch_id: str, endpoint: str, model: str, lines: Sequence[BatchLine]) -> str:
        await asyncio.sleep(1.5)  # the upload's own duration: one and a half times the 1 s lease
        return await super().submit_batch(batch_id, endpoint, model, lines)


async def test_a_slow_upload_keeps_its_lease_and_is_not_submitted_twice(store: Store, sim: Sim) -> None:
    await admit_many(store, 3)
    slow = SlowProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    fast = OpenAIProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    # Renewed every third of a second; the lease lapses only if a busy host holds the loop back for 2/3 s or more.
    short = msgspec.structs.replace(SETTINGS, lease_s=1.0)
    try:
        first = Batcher(store.queues, store.batches, store.results, store.leases, {"openai": slow}, short)
        second = Batcher(store.queues, store.batches, store.results, store.leases, {"openai": fast}, short)
        uploading = asyncio.create_task(first.run_once(force=True))
        await wait_until_async(store.batches.building, 5, "the first replica's claim")
        while not uploading.done():  # a second replica passing every 0.1 s while the first one uploads
            await second.run_once()
            await asyncio.sleep(0.1)
        submitted = await uploading
    finally:
        await slow.aclose()
        await fast.aclose()
    assert submitted == 1
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


async def test_a_large_claim_is_taken_in_chunks_within_the_limits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.deferred.store.batches

    monkeypatch.setattr(
        router.deferred.store.batches, "CLAIM_CHUNK", 7
    )  # as if 50,000 calls were claimed 2,000 at a time
    ids = await admit_many(store, 40)
    by_count = await store.batches.claim(TAG, max_requests=20, max_bytes=10**9, owner="o", lease_s=30)
    line = len(body(20)) + 128  # the second claim takes calls 20.. (two-digit bodies)
    by_bytes = await store.batches.claim(TAG, max_requests=100, max_bytes=12 * line, owner="o", lease_s=30)
    assert by_count is not None and by_bytes is not None
    assert len(by_count[1]) == 20 and len(by_bytes[1]) == 12
    assert set(by_count[1]) | set(by_bytes[1]) <= set(ids)
    assert not set(by_count[1]) & set(by_bytes[1])
    assert await store.batches.batch_calls(TAG, by_count[0]) == by_count[1]
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 8 and stats.bytes == 8 * len(body(39))


async def test_an_idle_queue_is_pruned_and_returns_with_its_next_call(store: Store) -> None:
    [call_id] = await admit_many(store, 1)
    assert not await store.queues.prune(TAG)  # a call waits in it
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert not await store.queues.prune(TAG)  # the call is in flight, its batch scheduled
    call = await store.results.get_call(call_id)
    assert call is not None
    stored = await store.results.store_result(
        call_id, call.meta, from_batch=claim[0], status=200, body=b"{}", origin=Origin.BATCH, cost=(1.0, 2.0, 1.0)
    )
    assert stored == 1
    await store.batches.finish_batch(TAG, claim[0], "completed", 1.0)
    assert await store.queues.prune_idle() == 1
    assert await store.queues.queue_tags() == []
    assert await store.queues.stats(TAG) is None
    assert (await store.totals.totals("t", time.strftime("%Y-%m-%d", time.gmtime())))[
        "batch:requests"
    ] == 1  # still found
    await admit_many(store, 1)
    assert await store.queues.queue_tags() == [TAG]
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 1 and stats.bytes == len(body(0))


async def test_pruning_racing_admissions_never_loses_a_queue_with_work(store: Store) -> None:
    """Every interleaving the event loop produces of a prune and an admission ends with a queue holding a call
    in the set the loops walk."""
    for i in range(60):
        await asyncio.gather(
            *[store.queues.prune(TAG) for _ in range(3)],
            store.intake.enqueue(meta(i), body(i)),
            store.queues.prune(TAG),
        )
        assert TAG in await store.queues.queue_tags(), i
        claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        for call_id in claim[1]:
            await store.results.forget(call_id)
        await store.batches.finish_batch(TAG, claim[0], "completed", None)
        assert await store.queues.prune(TAG)


async def test_the_queue_cap_refuses_a_new_queue_only(store: Store) -> None:
    capped = Store(store.redis, store.keys.prefix, result_ttl_s=600, idempotency_ttl_s=600, max_queues=2)
    for model in ("gpt-4o-mini", "gpt-4o"):
        _, outcome = await capped.intake.enqueue(msgspec.structs.replace(meta(), model=model), body(0))
        assert outcome == "new"
    third = msgspec.structs.replace(meta(), model="gpt-5")
    with pytest.raises(QueuesFull):
        await capped.intake.enqueue(third, body(1))
    assert (await capped.intake.enqueue(meta(), body(2)))[1] == "new"  # an existing queue still takes calls
    assert len(await store.queues.queue_tags()) == 2
    assert (
        await store.queues.stats(queue_tag("openai", ENDPOINT, "gpt-5")) is None
    )  # nothing stored for the refused call


async def test_a_batch_keeps_the_order_its_calls_arrived_in(store: Store) -> None:
    # Each call arrives with an earlier deadline than the one before: the deadlines choose which calls a batch takes,
    # its lines keep the order of arrival (calls sharing a prompt prefix stay in order).
    ids = []
    for i in range(5):
        ids.append((await store.intake.enqueue(meta(i, deadline_in=3600.0 - i), body(i)))[0])
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert claim[1] == ids
    assert await store.batches.batch_calls(TAG, claim[0]) == ids
    # A smaller batch still takes the earliest deadlines (the last arrivals), in their order of arrival.
    more = [(await store.intake.enqueue(meta(i, deadline_in=1800.0 - i), body(i)))[0] for i in range(4)]
    claim = await store.batches.claim(TAG, max_requests=2, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None and claim[1] == more[2:]
