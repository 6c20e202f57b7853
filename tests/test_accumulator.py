"""The accumulator's invariants against a real Redis, and crash recovery against the simulator's Batch API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from router.core.keys import PROVIDER_BATCHES_KEEP_S, queue_tag
from router.core.pricing import load_pricing
from router.core.settings import BatchSettings, Upstream
from router.deferred.accumulator import Accumulator, CallMeta
from router.deferred.batcher import Batcher
from router.deferred.poller import Poller
from router.providers.base import BatchLine
from router.providers.openai import OpenAIProvider
from router.telemetry.accounting import Accounting
from tests.helpers.servers import ROOT, Sim
from tests.helpers.waiting import wait_until_async

ENDPOINT, MODEL = "/chat/completions", "gpt-4o-mini"
TAG = queue_tag("openai", ENDPOINT, MODEL)


@pytest.fixture(params=["local", "bundled-6.2"])
async def acc(request: pytest.FixtureRequest, redis_url: str, key_prefix: str) -> AsyncIterator[Accumulator]:
    """The accumulator on the test Redis (7.x here) and on the bundled Redis 6.2."""
    url = redis_url if request.param == "local" else request.getfixturevalue("bundled_redis_url")
    redis = Redis.from_url(url)
    yield Accumulator(redis, key_prefix, result_ttl_s=600, idempotency_ttl_s=600)
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


async def admit_many(acc: Accumulator, n: int) -> list[str]:
    return [(await acc.admit(meta(i), body(i)))[0] for i in range(n)]


SETTINGS = BatchSettings(max_wait_s=0.1, poll_interval_s=0.1, lease_s=0.3, margin_s=1.0, turnaround_prior_s=1.0)


async def test_call_ids_are_valid_custom_ids_and_carry_their_queue(acc: Accumulator) -> None:
    ids = await admit_many(acc, 20)
    assert len(set(ids)) == 20
    for call_id in ids:
        assert msgspec.json.decode(msgspec.json.encode(call_id)) == call_id
        assert 1 <= len(call_id) <= 64 and call_id.replace("_", "").replace("-", "").isalnum()
        assert call_id.startswith(TAG)


async def test_concurrent_claims_never_share_a_call(acc: Accumulator) -> None:
    ids = await admit_many(acc, 300)
    claims = await asyncio.gather(
        *(acc.claim(TAG, max_requests=70, max_bytes=10**9, owner=f"o{i}", lease_s=30) for i in range(6))
    )
    taken = [cid for claim in claims if claim for cid in claim[1]]
    assert len(taken) == len(set(taken)) == 300
    assert set(taken) == set(ids)
    stats = await acc.stats(TAG)
    assert stats is not None and stats.count == 0 and stats.bytes == 0


async def test_claim_respects_the_byte_limit(acc: Accumulator) -> None:
    await admit_many(acc, 10)
    one = len(body(0))
    claim = await acc.claim(TAG, max_requests=100, max_bytes=3 * (one + 128), owner="o", lease_s=30)
    assert claim is not None and len(claim[1]) == 3


async def test_a_result_is_stored_and_billed_once(acc: Accumulator) -> None:
    [call_id] = await admit_many(acc, 1)
    claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    bid = claim[0]
    call = await acc.get_call(call_id)
    assert call is not None and call.state == "submitted"
    args = {"from_batch": bid, "status": 200, "body": b"{}", "lane": "batch", "cost": (1.0, 2.0, 1.0)}
    assert await acc.store_result(call_id, call.meta, **args) == 1  # type: ignore[arg-type]
    assert await acc.store_result(call_id, call.meta, **args) == 2  # type: ignore[arg-type]  # re-ingest: not again
    day = time.strftime("%Y-%m-%d", time.gmtime())
    totals = await acc.totals("t", day)
    assert totals["batch:requests"] == 1 and totals["batch:savings_usd"] == 1.0
    result = await acc.get_result(call_id)
    assert result is not None and result.status == 200 and result.savings_usd == 1.0


async def test_a_late_batch_result_after_escalation_is_dropped(acc: Accumulator) -> None:
    [call_id] = await admit_many(acc, 1)
    claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert await acc.escalate(call_id, lease_s=30) == body(0)
    assert await acc.escalate(call_id, lease_s=30) is None  # a second guard does not take it again
    call = await acc.get_call(call_id)
    assert call is not None
    realtime = await acc.store_result(
        call_id, call.meta, from_batch="", status=200, body=b'{"a":1}', lane="escalated", cost=None
    )
    late = await acc.store_result(
        call_id, call.meta, from_batch=claim[0], status=200, body=b'{"b":2}', lane="batch", cost=None
    )
    assert (realtime, late) == (1, 0)
    result = await acc.get_result(call_id)
    assert result is not None and result.body == b'{"a":1}'


async def test_a_request_waits_for_a_killed_replica_to_be_seen_dead_before_it_queues_a_twin(
    acc: Accumulator,
) -> None:
    # A replica killed with its calls held still looks alive until its heartbeat lapses; the application's own
    # retry (a new request, not marked as one) arrives on the restarted replica within that time.
    await acc.heartbeat("killed", 2.0)  # its last heartbeat: it lapses in 2 s (seconds, for a busy host's delays)
    held, _ = await acc.admit(meta(), body(1), digest="d", holder="killed/c1")
    assert await acc.reattachable(TAG, "d", retry=False, replica="new") is None  # no wait: as before
    assert await acc.reattachable(TAG, "d", retry=False, replica="new", settle_s=10.0) == held  # at the lapse
    # A replica that stays alive keeps its call: the twin is queued once the wait is over.
    await acc.heartbeat("live", 30)
    await acc.admit(meta(), body(2), digest="e", holder="live/c2")
    assert await acc.reattachable(TAG, "e", retry=False, replica="new", settle_s=0.5) is None
    # This replica's own connections are not waited for: it releases them itself as they drop.
    await acc.admit(meta(), body(3), digest="f", holder="live/c3")
    own = acc.reattachable(TAG, "f", retry=False, replica="live", settle_s=600.0)
    assert await asyncio.wait_for(own, 60) is None  # answered without the 600 s wait


async def test_idempotency_key_maps_a_retry_to_the_admitted_call(acc: Accumulator) -> None:
    first, created = await acc.admit(meta(), body(1), "key-1", digest="d1")
    again, created_again = await acc.admit(meta(), body(1), "key-1", digest="d1")
    other_tenant, _ = await acc.admit(meta(tenant="u"), body(1), "key-1", digest="d1u")
    other_body, reused = await acc.admit(meta(), body(2), "key-1", digest="d2")
    assert (created, created_again, reused) == ("new", "attached", "reused")
    assert again == first and other_body == first and other_tenant != first
    stats = await acc.stats(TAG)
    assert stats is not None and stats.count == 2  # the reused key stored nothing


async def test_a_retry_reattaches_only_to_a_call_whose_caller_is_gone(acc: Accumulator) -> None:
    await acc.heartbeat("live", 30)
    held, _ = await acc.admit(meta(), body(1), digest="d", holder="live/c1")
    # The caller is still connected on a live replica: an identical request is a new call (sampling on purpose).
    assert await acc.reattachable(TAG, "d", retry=False) is None
    # ...unless the client says it retries (its first attempt's connection is gone, unseen by the router yet).
    assert await acc.reattachable(TAG, "d", retry=True) == held
    # The connection ended: now any identical request takes the call over.
    await acc.unhold(held, "live/c1", delivered=False)
    assert await acc.reattachable(TAG, "d", retry=False) == held
    again, outcome = await acc.admit(meta(), body(1), digest="d", holder="live/c2", attach_to=held)
    assert (again, outcome) == (held, "attached")
    # The old connection letting go later does not orphan the call its retry now holds.
    await acc.unhold(held, "live/c1", delivered=False)
    assert await acc.reattachable(TAG, "d", retry=False) is None
    # A dead replica's calls are orphans; a delivered call and an async call are never taken over.
    await acc.admit(meta(), body(1), digest="e", holder="dead/c3")
    assert await acc.reattachable(TAG, "e", retry=False) is not None
    await acc.unhold(held, "live/c2", delivered=True)
    assert await acc.reattachable(TAG, "d", retry=True) is None
    await acc.admit(meta(), body(1), digest="f", holder="async")
    assert await acc.reattachable(TAG, "f", retry=True) is None
    stats = await acc.stats(TAG)
    assert stats is not None and stats.count == 3


async def test_crash_between_claim_and_upload_is_recovered(
    acc: Accumulator, provider: OpenAIProvider, sim: Sim
) -> None:
    ids = await admit_many(acc, 5)
    claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="dead-replica", lease_s=0.2)
    assert claim is not None  # ...and the replica dies before uploading anything
    assert await _recover_and_drain(acc, provider, ids) == 1  # adopted once its lease lapsed, and uploaded
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


async def test_crash_after_the_provider_created_the_batch_is_not_resubmitted(
    acc: Accumulator, provider: OpenAIProvider, sim: Sim
) -> None:
    ids = await admit_many(acc, 5)
    claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="dead-replica", lease_s=0.2)
    assert claim is not None
    bid, claimed = claim
    lines = [(cid, b) for cid, b, _ in await acc.bodies(claimed)]
    # The replica created the provider batch, then died before recording its id.
    await provider.submit_batch(bid, ENDPOINT, MODEL, [BatchLine(custom_id=c, body=b) for c, b in lines])
    assert await _recover_and_drain(acc, provider, ids) == 0  # found by its metadata, recorded, not submitted again
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


async def _recover_and_drain(acc: Accumulator, provider: OpenAIProvider, ids: list[str]) -> int:
    """Run a live replica's batcher and poller until every call has its batch result; the batches it submitted."""
    batcher = Batcher(acc, {"openai": provider}, SETTINGS)
    poller = Poller(acc, {"openai": provider}, SETTINGS, Accounting(load_pricing(ROOT / "config" / "pricing.yaml")))
    submitted = 0

    async def answered() -> bool:
        nonlocal submitted
        submitted += await batcher.run_once()
        await poller.run_once()
        return all([await acc.get_result(cid) is not None for cid in ids])

    await wait_until_async(answered, 15, "every call's result", every=0.1)
    results = [await acc.get_result(cid) for cid in ids]
    assert all(r is not None and r.status == 200 and r.lane == "batch" for r in results)
    return submitted


async def test_provider_batch_ids_are_recorded_for_crash_recovery(acc: Accumulator) -> None:
    await admit_many(acc, 3)
    first = await acc.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
    second = await acc.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
    assert first is not None and second is not None
    recorded = acc.keys.provider_batches(TAG)
    await acc.redis.zadd(recorded, {"batch_old": time.time() - PROVIDER_BATCHES_KEEP_S - 1})
    assert await acc.mark_submitted(TAG, first[0], "o", "batch_1", next_poll=time.time() + 60)
    assert await acc.recorded(["batch_1", "batch_old", "batch_2"]) == {"batch_1"}  # the old one was pruned
    assert 0 < await acc.redis.ttl(recorded) <= PROVIDER_BATCHES_KEEP_S
    [(upstream, building, lease_until)] = await acc.building()
    assert (upstream, building.id, building.n, building.owner) == ("openai", second[0], 1, "o")
    assert lease_until > time.time()
    # The moment a lapse was first found stays put while recovery looks again, and starts over with a new attempt.
    lapsed = await acc.lapsed_at(TAG, second[0])
    assert await acc.lapsed_at(TAG, second[0]) == lapsed
    await acc.count_submit_attempt(TAG, second[0])
    assert await acc.lapsed_at(TAG, second[0]) > lapsed


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


async def test_a_slow_upload_keeps_its_lease_and_is_not_submitted_twice(acc: Accumulator, sim: Sim) -> None:
    await admit_many(acc, 3)
    slow = SlowProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    fast = OpenAIProvider(Upstream(name="openai", base_url=sim.v1), "sk-test")
    # Renewed every third of a second; the lease lapses only if a busy host holds the loop back for 2/3 s or more.
    short = msgspec.structs.replace(SETTINGS, lease_s=1.0)
    try:
        first = Batcher(acc, {"openai": slow}, short)
        second = Batcher(acc, {"openai": fast}, short)
        uploading = asyncio.create_task(first.run_once(force=True))
        await wait_until_async(acc.building, 5, "the first replica's claim")
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
    acc: Accumulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import router.deferred.store.batches

    monkeypatch.setattr(
        router.deferred.store.batches, "CLAIM_CHUNK", 7
    )  # as if 50,000 calls were claimed 2,000 at a time
    ids = await admit_many(acc, 40)
    by_count = await acc.claim(TAG, max_requests=20, max_bytes=10**9, owner="o", lease_s=30)
    line = len(body(20)) + 128  # the second claim takes calls 20.. (two-digit bodies)
    by_bytes = await acc.claim(TAG, max_requests=100, max_bytes=12 * line, owner="o", lease_s=30)
    assert by_count is not None and by_bytes is not None
    assert len(by_count[1]) == 20 and len(by_bytes[1]) == 12
    assert set(by_count[1]) | set(by_bytes[1]) <= set(ids)
    assert not set(by_count[1]) & set(by_bytes[1])
    assert await acc.batch_calls(TAG, by_count[0]) == by_count[1]
    stats = await acc.stats(TAG)
    assert stats is not None and stats.count == 8 and stats.bytes == 8 * len(body(39))


async def test_an_idle_queue_is_pruned_and_returns_with_its_next_call(acc: Accumulator) -> None:
    [call_id] = await admit_many(acc, 1)
    assert not await acc.prune(TAG)  # a call waits in it
    claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert not await acc.prune(TAG)  # the call is in flight, its batch scheduled
    call = await acc.get_call(call_id)
    assert call is not None
    assert await acc.store_result(call_id, call.meta, from_batch=claim[0], status=200, body=b"{}", lane="batch",
                                  cost=(1.0, 2.0, 1.0)) == 1  # fmt: skip
    await acc.finish_batch(TAG, claim[0], "completed", 1.0)
    assert await acc.prune_idle() == 1
    assert await acc.queue_tags() == []
    assert await acc.stats(TAG) is None
    assert (await acc.totals("t", time.strftime("%Y-%m-%d", time.gmtime())))["batch:requests"] == 1  # still found
    await admit_many(acc, 1)
    assert await acc.queue_tags() == [TAG]
    stats = await acc.stats(TAG)
    assert stats is not None and stats.count == 1 and stats.bytes == len(body(0))


async def test_pruning_racing_admissions_never_loses_a_queue_with_work(acc: Accumulator) -> None:
    """Every interleaving the event loop produces of a prune and an admission ends with a queue holding a call
    in the set the loops walk."""
    for i in range(60):
        await asyncio.gather(*[acc.prune(TAG) for _ in range(3)], acc.admit(meta(i), body(i)), acc.prune(TAG))
        assert TAG in await acc.queue_tags(), i
        claim = await acc.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        for call_id in claim[1]:
            await acc.forget(call_id)
        await acc.finish_batch(TAG, claim[0], "completed", None)
        assert await acc.prune(TAG)


async def test_the_queue_cap_refuses_a_new_queue_only(acc: Accumulator) -> None:
    acc.max_queues = 2
    for model in ("gpt-4o-mini", "gpt-4o"):
        _, outcome = await acc.admit(msgspec.structs.replace(meta(), model=model), body(0))
        assert outcome == "new"
    third = msgspec.structs.replace(meta(), model="gpt-5")
    assert await acc.admit(third, body(1)) == ("", "full")
    assert (await acc.admit(meta(), body(2)))[1] == "new"  # an existing queue still takes calls
    assert len(await acc.queue_tags()) == 2
    assert await acc.stats(queue_tag("openai", ENDPOINT, "gpt-5")) is None  # nothing stored for the refused call
