"""Waiting for results: a waiter reads Redis when it starts and when woken, never on a timer; a subscription gap
(a restart, a killed connection, a server that stops answering) is closed by one re-check of every waiter.

These run on the session's own redis-server (the bundled one), since they kill and pause its clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
import pytest
from redis.asyncio import Redis

from router.core.lanes import Origin
from router.deferred import waiters as waiters_module
from router.deferred.store import Store
from router.deferred.store.records import CallMeta, Result
from router.deferred.store.results import ResultStore
from router.deferred.waiters import ResultWatch, Waiters

pytestmark = pytest.mark.timeout(60)


class CountingResults(ResultStore):
    """The real result store, counting the result reads and existence checks waiters make."""

    reads = 0
    checked = 0

    async def get_result(self, call_id: str) -> Result | None:
        self.reads += 1
        return await super().get_result(call_id)

    async def results_stored(self, call_ids: Sequence[str]) -> set[str]:
        self.checked += len(call_ids)
        return await super().results_stored(call_ids)


@pytest.fixture
async def store(bundled_redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    client = Redis.from_url(bundled_redis_url)
    yield Store(client, key_prefix, result_ttl_s=600, idempotency_ttl_s=600)
    keys = [k async for k in client.scan_iter(match=f"{key_prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def counting(store: Store) -> CountingResults:
    return CountingResults(store.results.ctx, store.totals)


async def started(waiters: Waiters, stop: asyncio.Event, starts: int = 1) -> asyncio.Task[None]:
    task = asyncio.create_task(waiters.run(stop))
    await until(lambda: waiters.starts >= starts, "the subscription")
    return task


async def until(condition: object, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def admitted(store: Store, n: int) -> list[tuple[str, CallMeta, str]]:
    """`n` calls claimed into one batch: (call id, meta, batch id)."""
    now = time.time()
    meta = CallMeta(tenant="t", upstream="openai", endpoint="/chat/completions", model="gpt-4o-mini",
                    deadline=now + 3600, received_at=now)  # fmt: skip
    ids = []
    for i in range(n):
        body = msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})
        ids.append((await store.intake.enqueue(meta, body))[0])
    tag = ids[0][:10]
    claim = await store.batches.claim(tag, max_requests=n, max_bytes=10**9, owner="o", lease_s=60)
    assert claim is not None
    return [(call_id, meta, claim[0]) for call_id in ids]


async def answer(store: Store, call: tuple[str, CallMeta, str]) -> None:
    call_id, meta, bid = call
    assert (
        await store.results.store_result(
            call_id, meta, from_batch=bid, status=200, body=b"{}", origin=Origin.BATCH, cost=None
        )
        == 1
    )


async def test_a_held_waiter_reads_its_result_once_and_again_only_when_it_is_published(
    store: Store,
    counting: CountingResults,
) -> None:
    waiters = Waiters(store.redis, store.keys.done_channel, counting.results_stored)
    stop = asyncio.Event()
    task = await started(waiters, stop)
    calls = await admitted(store, 50)

    async def hold(call_id: str) -> Result | None:
        # As a held connection does: one watch, and a wait per keep-alive interval until the answer comes.
        with waiters.watching(call_id) as watch:
            result_watch = ResultWatch(counting, watch)
            for _ in range(600):  # up to 30 s: a bound for a busy host, not a wait (it ends with the answer)
                result = await result_watch.result(0.05)
                if result is not None:
                    return result
        return None

    try:
        holding = [asyncio.create_task(hold(call_id)) for call_id, _, _ in calls]
        await until(lambda: len(waiters) == 50 and counting.reads == 50, "every waiter's first read")
        await asyncio.sleep(0.5)  # ten keep-alive intervals each: no read in between
        assert counting.reads == 50
        for call in calls:
            await answer(store, call)
        results = await asyncio.gather(*holding)
    finally:
        stop.set()
        await task
    assert all(result is not None and result.status == 200 for result in results)
    assert counting.reads == 100  # one read when each result was published
    assert counting.checked == 0  # the subscription never had a gap


async def test_a_result_published_while_nobody_listened_is_found_when_the_subscription_starts(
    store: Store,
    counting: CountingResults,
) -> None:
    waiters = Waiters(store.redis, store.keys.done_channel, counting.results_stored)
    [call, other] = await admitted(store, 2)
    with waiters.watching(call[0]) as watch, waiters.watching(other[0]) as other_watch:
        await answer(store, call)  # published: no subscription yet
        assert not await watch.woken(0.1)
        stop = asyncio.Event()
        task = await started(waiters, stop)
        try:
            assert await watch.woken(5)
            assert not await other_watch.woken(0.1)  # only waiters whose result is stored are woken
        finally:
            stop.set()
            await task
    assert counting.checked == 2


async def test_a_killed_subscription_reconnects_and_rechecks_every_waiter(
    store: Store, counting: CountingResults, bundled_redis_url: str
) -> None:
    waiters = Waiters(store.redis, store.keys.done_channel, counting.results_stored)
    stop = asyncio.Event()
    task = await started(waiters, stop)
    [call] = await admitted(store, 1)
    try:
        with waiters.watching(call[0]) as watch:
            async with Redis.from_url(bundled_redis_url) as admin:
                await admin.client_kill_filter(_type="pubsub")
            await answer(store, call)
            assert await watch.woken(10)  # by its message if resubscribed already, else by the re-check
            await until(lambda: waiters.starts == 2, "the subscription to start again")
    finally:
        stop.set()
        await task


async def test_a_subscription_that_stops_answering_is_restarted(
    store: Store, counting: CountingResults, bundled_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(waiters_module, "PING_S", 0.2)
    monkeypatch.setattr(waiters_module, "SILENCE_S", 1.0)
    waiters = Waiters(store.redis, store.keys.done_channel, counting.results_stored)
    stop = asyncio.Event()
    task = await started(waiters, stop)
    try:
        async with Redis.from_url(bundled_redis_url) as admin:
            await admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")  # type: ignore[no-untyped-call]  # nothing answers
        await until(lambda: waiters.starts == 2, "the silent subscription to be replaced")
    finally:
        stop.set()
        await task
