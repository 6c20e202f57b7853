"""The model-route evidence store on a real 3-master Redis Cluster: each task's update is one slot's atomic step."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from router.core.model_routes import parse_route
from router.modelroutes.decision import decide
from router.modelroutes.evidence import observe
from router.modelroutes.learn import learn
from router.modelroutes.plan import make_plan
from router.modelroutes.store import EvidenceStore, Observation
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

SERVER = shutil.which("redis-server", path="/usr/local/bin:/usr/bin") or shutil.which("redis-server")
CLI = shutil.which("redis-cli", path="/usr/local/bin:/usr/bin") or shutil.which("redis-cli")
ROUTE = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"]})
NOW = 1_700_000_000.0


def _ports(n: int) -> list[int]:
    """Free ports whose cluster bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _state(port: int) -> str:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return str(client.execute_command("CLUSTER INFO").get("cluster_state"))
    except redis.RedisError:
        return "down"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters on 127.0.0.1, no persistence; stopped afterwards."""
    if SERVER is None or CLI is None:
        pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster")
    root: Path = tmp_path_factory.mktemp("mrcluster")
    ports = _ports(3)
    processes = []
    try:
        for port in ports:
            node = root / str(port)
            node.mkdir()
            args = [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--dir", str(node),
                    "--cluster-config-file", str(node / "nodes.conf"), "--save", "", "--appendonly", "no"]  # fmt: skip
            processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: all(_state(p) != "down" for p in ports), 10, "the cluster nodes to answer")
        create = [CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0"]
        subprocess.run([*create, "--cluster-yes"], check=True, capture_output=True, timeout=30)
        wait_until(lambda: all(_state(p) == "ok" for p in ports), 20, "the cluster to be formed")
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


@pytest.fixture
async def store(cluster: list[int]) -> AsyncIterator[EvidenceStore]:
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in cluster[:2]])
    await client.initialize()
    yield EvidenceStore(client, f"mr-{secrets.token_hex(4)}")  # keys are thrown away with the cluster
    await client.aclose()


async def test_evidence_of_many_tasks_spread_over_the_nodes_reads_back_whole(store: EvidenceStore) -> None:
    tasks = [f"task-{i}" for i in range(12)]
    for i, task in enumerate(tasks):
        await store.observe(ROUTE, task, [Observation("gpt-4o-mini", True, i % 2 == 0)] * (i + 1), now=NOW)
    client = store.client
    assert isinstance(client, RedisCluster)
    nodes = {getattr(client.get_node_from_key(store.evidence_key(ROUTE, t)), "name", None) for t in tasks}
    assert len(nodes) > 1  # the tasks really live on different masters
    evidence = await store.evidence(ROUTE)
    assert sorted(evidence) == sorted(tasks)
    for i, task in enumerate(tasks):
        expected = None
        for _ in range(i + 1):
            expected = observe(expected, True, i % 2 == 0, now=NOW, half_life_s=ROUTE.half_life_s)
        assert expected is not None
        assert evidence[task]["gpt-4o-mini"].b == pytest.approx(expected.b)
        assert evidence[task]["gpt-4o-mini"].w2 == pytest.approx(expected.w2)


async def test_a_route_learned_on_a_cluster_moves_the_task_that_meets_the_target(store: EvidenceStore) -> None:
    lines = [json.dumps({"prompt": f"Extract {i}", "task": "extract", "scores": {"gpt-4o": 1, "gpt-4o-mini": 1}})
             for i in range(6)]  # fmt: skip
    lines += [json.dumps({"prompt": f"Prove {i}", "task": "prove", "scores": {"gpt-4o": 1, "gpt-4o-mini": i % 2}})
              for i in range(6)]  # fmt: skip
    route = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"], "mode": "predict", "min_evidence": 1})
    await learn(store, [route], lines, now=NOW)
    plan = make_plan(
        route, await store.evidence(route), now=NOW, price=lambda model, i, o: 1.0 if model == "gpt-4o" else 0.1
    )
    assert decide(route, plan, "extract", "call").model == "gpt-4o-mini"
    assert decide(route, plan, "prove", "call").model == "gpt-4o"
