"""The model-route evidence store on the real Redis, and the `routes learn` import through it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from router.core.model_routes import parse_route
from router.modelroutes.decision import decide
from router.modelroutes.embeddings import ClusterIndex, load_embedder
from router.modelroutes.evidence import observe
from router.modelroutes.learn import learn, observations, parse_lines
from router.modelroutes.plan import make_plan
from router.modelroutes.store import EvidenceStore, Observation

NOW = 1_700_000_000.0
DAY = 86_400.0
ROUTE = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini", "gpt-4.1-nano"], "half_life_s": DAY})
PRICES = {"gpt-4o": 2.5, "gpt-4o-mini": 0.15, "gpt-4.1-nano": 0.1}


def price(model: str, tokens_in: float, tokens_out: float) -> float | None:
    return PRICES[model] * (tokens_in + 4 * tokens_out) / 1e6


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[EvidenceStore]:
    client = Redis.from_url(redis_url)
    yield EvidenceStore(client, key_prefix)
    await client.aclose()


async def test_the_store_keeps_the_same_statistics_as_the_pure_code(store: EvidenceStore) -> None:
    pairs = [(True, True, 120), (True, False, 80), (0.7, 0.9, 10)]
    await store.observe(ROUTE, "extract", [Observation("gpt-4o-mini", a, b, tokens_in=t) for a, b, t in pairs], now=NOW)
    await store.observe(ROUTE, "extract", [Observation("gpt-4o-mini", 1, 1, tokens_out=7)], now=NOW + DAY)
    expected = None
    for a, b, t in pairs:
        expected = observe(expected, a, b, now=NOW, half_life_s=DAY, tokens_in=t)
    expected = observe(expected, 1, 1, now=NOW + DAY, half_life_s=DAY, tokens_out=7)
    got = (await store.evidence(ROUTE))["extract"]["gpt-4o-mini"]
    assert got.t == expected.t
    for field in ("w", "w2", "a", "b", "aa", "bb", "ab", "tokens_in", "tokens_out"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-12), field


async def test_a_replica_whose_clock_is_behind_adds_at_the_stored_time(store: EvidenceStore) -> None:
    await store.observe(ROUTE, "t", [Observation("gpt-4o-mini", True, True)], now=NOW)
    await store.observe(ROUTE, "t", [Observation("gpt-4o-mini", True, True)], now=NOW - 60)
    stats = (await store.evidence(ROUTE))["t"]["gpt-4o-mini"]
    assert (stats.t, stats.w) == (NOW, 2.0)


async def test_each_candidate_and_task_is_kept_apart(store: EvidenceStore) -> None:
    await store.observe(ROUTE, "a", [Observation("gpt-4o-mini", True, True)] * 3, now=NOW)
    await store.observe(ROUTE, "a", [Observation("gpt-4.1-nano", True, False)], now=NOW)
    await store.observe(ROUTE, "b", [Observation("gpt-4o-mini", True, False)] * 2, now=NOW)
    evidence = await store.evidence(ROUTE)
    assert await store.tasks(ROUTE) == ["a", "b"]
    assert {t: {m: s.w for m, s in per.items()} for t, per in evidence.items()} == {
        "a": {"gpt-4o-mini": 3.0, "gpt-4.1-nano": 1.0},
        "b": {"gpt-4o-mini": 2.0},
    }
    with pytest.raises(ValueError, match="not a candidate"):
        await store.observe(ROUTE, "a", [Observation("o3", True, True)], now=NOW)


async def test_one_route_and_tasks_evidence_lives_in_one_hash_slot(store: EvidenceStore) -> None:
    key = store.evidence_key(ROUTE, "extract")
    assert key_slot(key.encode()) == key_slot(f"{{{ROUTE.key}|extract}}".encode())
    assert key_slot(store.tasks_key(ROUTE).encode()) == key_slot(store.clusters_key(ROUTE).encode())
    await store.observe(ROUTE, "extract", [Observation("gpt-4o-mini", True, True)], now=NOW)
    assert 0 < await store.client.ttl(key) <= 10 * DAY  # expires ten half-lives after its last update


async def test_forgetting_a_route_drops_its_evidence(store: EvidenceStore) -> None:
    await store.observe(ROUTE, "a", [Observation("gpt-4o-mini", True, True)], now=NOW)
    await store.forget(ROUTE)
    assert await store.evidence(ROUTE) == {}


def test_learn_lines_are_validated_and_counted() -> None:
    lines = [
        json.dumps({"prompt": "Extract the date", "task": "extract", "scores": {"gpt-4o": True, "gpt-4o-mini": True}}),
        "",
        "{not json",
        json.dumps({"prompt": "x", "scores": {"gpt-4o": -1}}),
        json.dumps({"prompt": "x", "task": "has spaces", "scores": {"gpt-4o": 1}}),
        json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "scores": {"gpt-4o": 0.5, "gpt-4.1-nano": 0.4}}),
    ]
    parsed = parse_lines(lines)
    assert [n for n, _ in parsed.lines] == [1, 6]
    assert [p.line for p in parsed.problems] == [3, 4, 5]
    (_, first), (_, second) = parsed.lines
    assert [(o.model, o.asked, o.candidate) for o in observations(ROUTE, first)] == [("gpt-4o-mini", True, True)]
    assert [(o.model, o.asked, o.candidate) for o in observations(ROUTE, second)] == [("gpt-4.1-nano", 0.5, 0.4)]
    assert observations(parse_route({"from": "o3", "to": ["gpt-4o-mini"]}), first) == []


def scored(task: str | None, prompt: str, asked: bool, cheap: bool) -> str:
    line = {"prompt": prompt, "scores": {"gpt-4o": asked, "gpt-4o-mini": cheap}}
    return json.dumps(line if task is None else {**line, "task": task})


async def test_a_route_learned_from_a_file_moves_only_the_task_whose_evidence_meets_the_target(
    store: EvidenceStore,
) -> None:
    route = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"]})
    lines = [scored("extract", f"Extract the date from invoice {i}", True, True) for i in range(8)]
    lines += [scored("reason", f"Prove lemma {i}", True, i % 2 == 0) for i in range(8)]
    lines += [json.dumps({"prompt": "scored for another model", "scores": {"claude-sonnet-4": 1}})]
    report = await learn(store, [route], lines, now=NOW)
    assert report.pairs == {route.key: {"extract": 8, "reason": 8}}
    assert (report.lines, report.unrouted, report.problems) == (17, 1, [])
    plan = make_plan(route, await store.evidence(route), now=NOW, price=price)
    assert decide(route, plan, "extract", "call-1").model == "gpt-4o-mini"
    assert decide(route, plan, "reason", "call-1").model == "gpt-4o"
    assert decide(route, plan, "new-task", "call-1").model == "gpt-4o"


async def test_task_less_lines_learn_under_their_shape_without_embeddings(store: EvidenceStore) -> None:
    route = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"]})
    json_prompt = [{"role": "user", "content": "Reply in JSON"}]
    lines = [scored(None, "free text", True, True), json.dumps(
        {"prompt": json_prompt, "scores": {"gpt-4o": 1, "gpt-4o-mini": 1}})]  # fmt: skip
    report = await learn(store, [route], lines, now=NOW)
    assert report.pairs[route.key] == {"auto:text": 2}  # a prompt alone does not say JSON was asked for


async def test_task_less_lines_learn_under_their_nearest_embedding_cluster(store: EvidenceStore) -> None:
    embedder = load_embedder()
    assert embedder is not None, "the dev environment installs the embeddings extra"
    route = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"]})
    topics = {"cooking": "How long should I bake a chocolate cake recipe at what oven temperature",
              "law": "Is a verbal contract legally binding under common law in a court dispute"}  # fmt: skip
    lines = [
        scored(None, f"{text} {i}", True, topic == "cooking") for topic, text in topics.items() for i in range(150)
    ]
    report = await learn(store, [route], lines, now=NOW, embedder=embedder)
    clusters = await store.clusters(route)
    assert clusters is not None and clusters.k == 3  # 300 prompts: about a hundred each
    index = ClusterIndex(clusters)
    cooking, law = (index.nearest(embedder.embed_one(f"{text} 7"))[0] for text in topics.values())
    assert cooking != law
    plan = make_plan(route, await store.evidence(route), now=NOW, price=price)
    assert decide(route, plan, f"auto:text:c{cooking}", "k").model == "gpt-4o-mini"
    assert decide(route, plan, f"auto:text:c{law}", "k").model == "gpt-4o"
    assert sum(report.pairs[route.key].values()) == 300
