"""Model routes end to end: the router in front of a simulator that plays models of different skill (recorded
outcomes), driven by the official SDK at its defaults. Predict (trained with `routes learn`), cascade, shadow and
feedback each move only what their evidence allows, and every lever's savings add up across headers and metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
import redis.asyncio as aredis
import yaml

from router.core.model_routes import parse_route
from router.modelroutes.learn import learn
from router.modelroutes.store import EvidenceStore, parse_evidence
from router.simulator.outcomes import LETTERS, right_letter
from tests.helpers.metrics import metric, series
from tests.helpers.servers import RouterFactory, Sim

pytestmark = pytest.mark.integration

STRONG, WEAK = "gpt-4o", "gpt-4o-mini"
ROUTE_LEVER = 'hybrid_router_lever_savings_usd_total{lever="route",tenant="default"}'
ROUTE = {"from": STRONG, "to": [WEAK], "mode": "predict", "quality_target": 0.95}


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _scored(task: str, count: int, weak_right: Callable[[int], bool]) -> list[dict[str, Any]]:
    return [
        {"prompt": f"{task} question {i}?", "task": task, "scores": {STRONG: True, WEAK: weak_right(i)}}
        for i in range(count)
    ]


def _wrong(prompt: str) -> str:
    return f"ANSWER: {LETTERS[(LETTERS.index(right_letter(prompt)) + 1) % len(LETTERS)]}"


def wait_for(probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `probe` until it returns something truthy (plans are remade every few seconds, off the call path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail("the condition never held")


def ask(client: openai.OpenAI, prompt: str, **headers: str) -> Any:
    """A chat call's raw response (headers) for one prompt."""
    messages: Any = [{"role": "user", "content": prompt}]
    return client.chat.completions.with_raw_response.create(model=STRONG, messages=messages, extra_headers=headers)


@pytest.fixture
def client() -> Iterator[Callable[[str], openai.OpenAI]]:
    made: list[openai.OpenAI] = []

    def make(base: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=base + "/v1", api_key="dev"))  # the SDK's default timeout and retries
        return made[-1]

    yield make
    for c in made:
        c.close()


def _metrics(base: str) -> str:
    return httpx.get(base + "/metrics").text


def learning_cost(base: str) -> float:
    """What shadow calls of the route cost so far, from /metrics."""
    found = series(_metrics(base), "hybrid_router_route_learning_cost_usd_total", 'kind="shadow"')
    return sum(value for name, value in found.items() if f'route="{STRONG}>{WEAK}"' in name)


def test_predict_trained_with_routes_learn_moves_only_the_tasks_whose_evidence_meets_the_target(
    start_router: RouterFactory, sim: Sim, client: Callable[[str], openai.OpenAI], tmp_path: Path, redis_url: str,
    key_prefix: str,
) -> None:  # fmt: skip
    rows = _scored("easy", 8, lambda i: True) + _scored("hard", 8, lambda i: i % 2 == 0)
    data = _jsonl(tmp_path / "scored.jsonl", rows)
    sim.configure(outcomes=str(data))
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"routes": [ROUTE], "key_prefix": key_prefix}), encoding="utf-8")
    env = {**os.environ, "REDIS_URL": redis_url}
    learned = subprocess.run(
        [sys.executable, "-m", "router", "routes", "learn", str(data), "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert learned.returncode == 0, learned.stderr
    assert "easy" in learned.stdout and "hard" in learned.stdout
    shown = subprocess.run(
        [sys.executable, "-m", "router", "routes", "show", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "easy" in shown.stdout and "100%" in shown.stdout

    with start_router(routes=[ROUTE]) as base:
        c = client(base)
        wait_for(lambda: ask(c, "easy question 0?", **{"X-Router-Task": "easy"}).headers["x-router-model"] == WEAK)
        before = metric(_metrics(base), ROUTE_LEVER)
        usage_before = httpx.get(base + "/v1/usage").json()["savings_by_lever"]["route"]
        saved = 0.0
        for i in range(8):
            easy = ask(c, f"easy question {i}?", **{"X-Router-Task": "easy"})
            answer = easy.parse()
            assert easy.headers["x-router-model"] == WEAK and answer.model == WEAK
            assert answer.choices[0].message.content == f"ANSWER: {right_letter(f'easy question {i}?')}"
            assert float(easy.headers["x-router-savings-usd"]) > 0
            saved += float(easy.headers["x-router-savings-usd"])
            hard = ask(c, f"hard question {i}?", **{"X-Router-Task": "hard"})
            assert hard.headers["x-router-model"] == STRONG and hard.parse().model == STRONG
            assert hard.headers["x-router-route"] == "below_target"
            assert float(hard.headers["x-router-savings-usd"]) == 0
        # A task named in the body's metadata is the same task; an opted-out call keeps the asked-for model.
        messages: Any = [{"role": "user", "content": "easy question 1?"}]
        by_metadata = c.chat.completions.with_raw_response.create(
            model=STRONG, messages=messages, metadata={"task": "easy"}, store=False
        )
        assert by_metadata.headers["x-router-model"] == WEAK
        opted_out = ask(c, "easy question 2?", **{"X-Router-Task": "easy", "X-Router-Route": "off"})
        assert opted_out.headers["x-router-model"] == STRONG and opted_out.parse().model == STRONG
        saved += float(by_metadata.headers["x-router-savings-usd"])
        # The route lever's savings add up exactly across the headers, /metrics and /v1/usage.
        assert metric(_metrics(base), ROUTE_LEVER) - before == pytest.approx(saved, rel=1e-9, abs=1e-11)
        usage = httpx.get(base + "/v1/usage").json()["savings_by_lever"]["route"]
        assert usage - usage_before == pytest.approx(saved, rel=1e-9, abs=1e-11)


def test_a_cascade_keeps_a_cheap_answer_that_passes_its_checks_and_escalates_one_that_fails(
    start_router: RouterFactory, sim: Sim, client: Callable[[str], openai.OpenAI], tmp_path: Path
) -> None:
    rows = [
        {"prompt": "Add 2 and 3.", "scores": {STRONG: True, WEAK: True},
         "responses": {STRONG: "2+3=5\n#### 5", WEAK: "5\n#### 5"}},
        {"prompt": "Add 4 and 4.", "scores": {STRONG: True, WEAK: False},
         "responses": {STRONG: "4+4=8\n#### 8", WEAK: "It is probably eight."}},
    ]  # fmt: skip
    sim.configure(outcomes=str(_jsonl(tmp_path / "outcomes.jsonl", rows)))
    route = {**ROUTE, "mode": "cascade", "cascade": {"final_answer": r"####\s*(-?[\d,]+)\s*$"}}
    with start_router(routes=[route]) as base:
        c = client(base)
        billed = sim.stats()["realtime_calls_billed"]
        kept = ask(c, "Add 2 and 3.")
        assert kept.headers["x-router-route"] == "cascade_kept" and kept.parse().model == WEAK
        assert kept.parse().choices[0].message.content == "5\n#### 5"
        escalated = ask(c, "Add 4 and 4.")
        assert escalated.headers["x-router-route"] == "cascade_escalated" and escalated.parse().model == STRONG
        assert escalated.parse().choices[0].message.content == "4+4=8\n#### 8"
        # Three calls were paid for: the kept cheap one, and both of the escalated call's.
        assert sim.stats()["realtime_calls_billed"] - billed == 3
        # The escalated call carries what it really cost: both calls, so it saved a negative amount.
        assert float(escalated.headers["x-router-savings-usd"]) < 0
        assert float(kept.headers["x-router-savings-usd"]) > 0


def test_shadow_answers_as_asked_and_learns_from_judged_pairs(
    start_router: RouterFactory, sim: Sim, client: Callable[[str], openai.OpenAI], tmp_path: Path, redis_url: str,
    key_prefix: str,
) -> None:  # fmt: skip
    rows = _scored("quiz", 10, lambda i: i < 7)  # the cheaper model is right on 7 of 10
    sim.configure(outcomes=str(_jsonl(tmp_path / "outcomes.jsonl", rows)))
    route = {**ROUTE, "mode": "shadow", "shadow_rate": 1.0}
    with start_router(routes=[route]) as base:
        c = client(base)
        cost_before = learning_cost(base)
        for i in range(10):
            answer = ask(c, f"quiz question {i}?", **{"X-Router-Task": "quiz"})
            assert answer.headers["x-router-model"] == STRONG and answer.parse().model == STRONG
            assert answer.parse().choices[0].message.content == f"ANSWER: {right_letter(f'quiz question {i}?')}"

        key = EvidenceStore(None, key_prefix).evidence_key(parse_route(route), "quiz")  # type: ignore[arg-type]

        def evidence() -> Any:
            with redis.Redis.from_url(redis_url) as r:
                return parse_evidence(r.hgetall(key)).get(WEAK)

        stats = wait_for(lambda: (s := evidence()) is not None and s.w >= 10 - 1e-6 and s)
        assert stats.b == pytest.approx(7, rel=1e-3)  # judged by exact equality: 7 agreeing answers of 10
        assert stats.a == pytest.approx(10, rel=1e-3)
        assert learning_cost(base) > cost_before


def test_feedback_on_routed_calls_becomes_evidence_that_moves_the_task(
    start_router: RouterFactory, sim: Sim, client: Callable[[str], openai.OpenAI], tmp_path: Path
) -> None:
    with start_router(routes=[ROUTE]) as base:
        c = client(base)
        first = ask(c, "How are you?", **{"X-Router-Task": "chat"})
        assert first.headers["x-router-model"] == STRONG and first.headers["x-router-route"] == "no_evidence"
        for i in range(6):
            strong = ask(c, f"Tell me something nice ({i}).", **{"X-Router-Task": "chat"})
            weak = ask(c, f"Tell me something kind ({i}).", **{"X-Router-Task": "chat", "X-Router-Route": "force"})
            assert weak.headers["x-router-model"] == WEAK
            for answered in (strong, weak):
                got = httpx.post(base + "/v1/feedback", json={"call_id": answered.headers["x-router-request-id"],
                                                               "score": 1})  # fmt: skip
                assert got.status_code == 200, got.text
        assert got.json()["pairs"] == 1
        wait_for(lambda: ask(c, "How are you today?", **{"X-Router-Task": "chat"}).headers["x-router-model"] == WEAK)
        unknown = httpx.post(base + "/v1/feedback", json={"call_id": "req_nobody", "score": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "call_id"
        bad = httpx.post(base + "/v1/feedback", json={"call": "x"})
        assert bad.status_code == 400


def test_a_routed_call_that_can_wait_saves_on_both_levers(
    start_router: RouterFactory, sim: Sim, client: Callable[[str], openai.OpenAI], tmp_path: Path, redis_url: str,
    key_prefix: str,
) -> None:  # fmt: skip
    rows = _scored("summaries", 8, lambda i: True)
    sim.configure(outcomes=str(_jsonl(tmp_path / "outcomes.jsonl", rows)))
    route = parse_route(ROUTE)

    async def teach() -> None:
        async with aredis.Redis.from_url(redis_url) as r:
            await learn(EvidenceStore(r, key_prefix), [route], [json.dumps(row) for row in rows], now=time.time())

    asyncio.run(teach())
    fast = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}
    with start_router(routes=[ROUTE], batch=fast) as base:
        c = client(base)
        task = {"X-Router-Task": "summaries"}
        wait_for(lambda: ask(c, "summaries question 0?", **task).headers["x-router-model"] == WEAK)
        before = httpx.get(base + "/v1/usage").json()["savings_by_lever"]
        deferred = ask(c, "summaries question 1?", **task, **{"X-Deadline": "1h"})
        answer = deferred.parse()
        assert deferred.headers["x-router-lane"] == "batch" and answer.model == WEAK
        assert answer.choices[0].message.content == f"ANSWER: {right_letter('summaries question 1?')}"
        after = wait_for(lambda: (u := httpx.get(base + "/v1/usage").json())["lanes"].get("batch") and u)
        levers = after["savings_by_lever"]
        route_part, batch_part = levers["route"] - before["route"], levers["batch"] - before["batch"]
        assert route_part > 0 and batch_part > 0  # a cheaper model, and at half its price
        assert route_part + batch_part == pytest.approx(after["lanes"]["batch"]["savings_usd"], rel=1e-9)
        assert float(deferred.headers["x-router-savings-usd"]) == pytest.approx(route_part + batch_part, rel=1e-6)
