"""The deferred lane end to end: X-Deadline → Redis → the simulator's Batch API → the caller, over real sockets."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers.metrics import metric
from tests.helpers.servers import FAST, ROOT, RouterFactory, Sim, upstream
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

Client = Callable[..., openai.OpenAI]

LATER = {"X-Deadline": "2h"}


def prompt(i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Summarise document number {i}."}]


def direct_answer(sim: Sim, messages: list[ChatCompletionMessageParam], model: str = "gpt-4o-mini") -> str:
    with openai.OpenAI(base_url=sim.v1, api_key="x") as c:
        answer = c.chat.completions.create(model=model, messages=messages)
    return answer.choices[0].message.content or ""


def batches_in_flight(base: str) -> float:
    """Batches submitted and not yet finished, from the router's Redis (a gauge set at each scrape)."""
    return metric(httpx.get(base + "/metrics").text, "hybrid_router_batches_inflight")


def test_held_call_gets_a_batch_answer(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    with start_router(batch=FAST) as base:
        raw = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(1), extra_headers=LATER
        )
    completion = raw.parse()
    assert raw.headers["x-router-lane"] == "batch"
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == direct_answer(sim, prompt(1))
    assert float(raw.headers["x-router-savings-usd"]) > 0
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["batch_lines_submitted"] == 1
    assert stats["realtime_calls"].get("/v1/chat/completions", 0) == 1  # only our direct_answer call


def test_every_endpoint_can_be_deferred(oai: Client, start_router: RouterFactory) -> None:
    with start_router(batch=FAST) as base:
        c = oai(base)
        emb = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x", extra_headers=LATER)
        comp = c.completions.with_raw_response.create(model="gpt-4o-mini", prompt="Hi", extra_headers=LATER)
        resp = c.responses.with_raw_response.create(model="gpt-4o-mini", input="Hi", extra_headers=LATER)
    for raw in (emb, comp, resp):
        assert raw.headers["x-router-lane"] == "batch"
    assert len(emb.parse().data[0].embedding) == 1536
    assert comp.parse().choices[0].text
    assert resp.parse().output_text


@pytest.mark.timeout(180)  # a thousand connections at once: minutes, not seconds, on a host shared with other tests
async def test_a_thousand_concurrent_calls_land_in_four_batches(start_router: RouterFactory, sim: Sim) -> None:
    n, per_batch = 1000, 250
    batch = FAST | {"max_requests": per_batch, "max_wait_s": 60.0}
    with start_router(batch=batch) as base:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        http = httpx.AsyncClient(limits=limits, timeout=120)
        # openai 3.x types its client against its own httpx fork; the SDK takes an httpx client all the same.
        async with openai.AsyncOpenAI(
            base_url=base + "/v1",
            api_key="dev",
            http_client=http,  # type: ignore[arg-type,unused-ignore]
            max_retries=0,
            timeout=120,  # the SDK's 5 s connect timeout is for one call, not a thousand opened at once on a busy host
        ) as c:
            answers = await asyncio.gather(
                *(c.chat.completions.create(model="gpt-4o-mini", messages=prompt(i), extra_headers=LATER)
                  for i in range(n))
            )  # fmt: skip
        async with openai.AsyncOpenAI(base_url=sim.v1, api_key="x", max_retries=0, timeout=120) as direct:
            expected = await asyncio.gather(
                *(direct.chat.completions.create(model="gpt-4o-mini", messages=prompt(i)) for i in range(n))
            )
    for got, want in zip(answers, expected, strict=True):
        assert got.choices[0].message.content == want.choices[0].message.content
    stats = sim.stats()
    assert stats["batches_created"] == n // per_batch
    assert stats["batch_lines_submitted"] == n
    assert stats["max_submissions_per_custom_id"] == 1


def test_async_mode_and_polling(start_router: RouterFactory, sim: Sim) -> None:
    keys = [
        {"sha256": hashlib.sha256(b"sk-a").hexdigest(), "tenant": "a"},
        {"sha256": hashlib.sha256(b"sk-b").hexdigest(), "tenant": "b"},
    ]
    with start_router(batch=FAST, auth="keys", keys=keys) as base:
        body = {"model": "gpt-4o-mini", "messages": prompt(7)}
        headers = {"authorization": "Bearer sk-a", "prefer": "respond-async", "x-deadline": "1h"}
        accepted = httpx.post(base + "/v1/chat/completions", json=body, headers=headers)
        assert accepted.status_code == 202
        call = accepted.json()
        assert call["object"] == "deferred.call"
        assert call["status"] in ("queued", "submitted")
        assert call["lane"] == "batch"
        assert call["deadline"].endswith("Z")
        assert accepted.headers["location"] == f"/v1/deferred/{call['id']}"
        assert accepted.headers["x-router-request-id"] == call["id"]
        url = base + accepted.headers["location"]
        other = httpx.get(url, headers={"authorization": "Bearer sk-b"})
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "deferred_call_not_found"
        done = httpx.get(url + "?wait=20", headers={"authorization": "Bearer sk-a"}, timeout=30)
        assert done.status_code == 200
        completion = openai.types.chat.ChatCompletion.model_validate(done.json())
        assert completion.choices[0].message.content == direct_answer(sim, prompt(7))
        assert done.headers["x-router-lane"] == "batch"
        assert httpx.get(base + "/v1/deferred/nope", headers={"authorization": "Bearer sk-a"}).status_code == 404


def test_pending_call_answers_202(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=30)
    with start_router(batch=FAST) as base:
        accepted = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": prompt(8)},
            headers={"prefer": "respond-async", "x-deadline": "2h"},
        )
        pending = httpx.get(base + accepted.headers["location"] + "?wait=1")
    assert pending.status_code == 202
    assert pending.json()["id"] == accepted.json()["id"]


def test_deferred_stream_is_replayed_as_sse(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    with start_router(batch=FAST) as base:
        stream = oai(base).chat.completions.create(
            model="gpt-4o-mini",
            messages=prompt(3),
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=LATER,
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct_answer(sim, prompt(3))
    assert chunks[-1].usage is not None
    assert sim.stats()["batches_created"] == 1


def test_expired_batch_keeps_partial_results_and_answers_the_rest(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=5, batch_expire_s=0.2, batch_expire_done_fraction=0.5)
    # The eight calls make one batch whenever they arrive (flushed at the eighth, not at 0.2 s): half of one batch
    # of eight is four, where a busy host could split them 7 + 1 and find 3 + 0. The re-queued half goes after 3 s.
    with start_router(batch=FAST | {"max_requests": 8, "max_wait_s": 3.0}) as base:
        raws = _many(base, 8)
    lanes = [r.headers["x-router-lane"] for r in raws]
    assert lanes.count("batch") >= 4  # the half the first batch finished
    for i, r in enumerate(raws):
        assert r.parse().choices[0].message.content == direct_answer(sim, prompt(i))
    assert sim.stats()["batches_created"] >= 2  # the unanswered half went back to a queue


def _many(base: str, n: int) -> list[Any]:
    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="dev", timeout=60, max_retries=0) as c:
            return await asyncio.gather(
                *(c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(i),
                                                             extra_headers=LATER) for i in range(n))
            )  # fmt: skip

    return asyncio.run(run())


def test_failed_batch_calls_are_escalated(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_fail=True)
    # Flushed at the third call, first try and re-queue alike: one batch each time, however the calls arrive.
    with start_router(batch=FAST | {"max_requests": 3, "max_wait_s": 60.0}) as base:
        raws = _many(base, 3)
    for i, r in enumerate(raws):
        assert r.headers["x-router-lane"] == "realtime"
        assert r.headers["x-router-escalated"] == "true"
        assert r.parse().choices[0].message.content == direct_answer(sim, prompt(i))
    assert sim.stats()["batches_created"] == 2  # the first try, one re-queue, then real time


def test_cancelled_batch_calls_still_get_answers(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=30)
    with start_router(batch=FAST) as base:
        ids = []
        for i in range(4):
            r = httpx.post(
                base + "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": prompt(i)},
                headers={"prefer": "respond-async", "x-deadline": "1h"},
            )
            ids.append(r.json()["id"])
        upstream = oai(sim.v1)
        wait_until(lambda: sim.stats()["batch_lines_submitted"] == 4, what="all four calls submitted")
        sim.configure(batch_turnaround_s=0.3)
        for batch in upstream.batches.list().data:  # someone cancels them from the provider's console
            upstream.batches.cancel(batch.id)
        results = [httpx.get(f"{base}/v1/deferred/{cid}?wait=30", timeout=40) for cid in ids]
    for i, r in enumerate(results):
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == direct_answer(sim, prompt(i))


def test_guard_escalates_before_the_deadline(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=120)
    # Escalated 3 s before an 8 s deadline (the margin): seconds for the batch to be submitted first, and for the
    # real-time answer to come before the deadline, on a busy host too.
    with start_router(batch=FAST | {"margin_s": 3.0}) as base:
        series = 'hybrid_router_deadline_escalations_total{reason="submitted",tier="standard"}'
        before = metric(httpx.get(base + "/metrics").text, series)
        started = time.time()
        raw = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(5), extra_headers={"X-Deadline": "8s"}
        )
        answered = time.time()

        def added() -> float:
            return metric(httpx.get(base + "/metrics").text, series) - before

        # The guard counts the escalation after it stored the answer that woke the caller: wait for the count.
        wait_until(lambda: added() >= 1, 10, "the escalation to be counted")
        escalations = added()
    assert raw.headers["x-router-lane"] == "realtime"
    assert raw.headers["x-router-escalated"] == "true"
    assert raw.parse().choices[0].message.content == direct_answer(sim, prompt(5))
    assert answered < started + 8  # the promise itself, not a speed measurement
    assert sim.stats()["batches_created"] == 1
    assert escalations == 1


NO_PROBE = {"turnaround_prior_s": 600, "probe": False}


def test_deadline_too_close_for_a_batch_goes_realtime_at_once(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    with start_router(batch=FAST | NO_PROBE) as base:
        raw = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(1), extra_headers={"X-Deadline": "5m"}
        )
    assert raw.headers["x-router-lane"] == "realtime"
    assert sim.stats()["batches_created"] == 0


def test_a_fresh_queue_probes_once_and_learns_instead_of_refusing_forever(
    start_router: RouterFactory, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0)  # the probe is out for seconds: the second call is sent well within them
    tight = FAST | {"turnaround_prior_s": 600, "turnaround_min_observations": 1}
    with start_router(batch=tight) as base:

        def send(i: int) -> httpx.Response:
            body = {"model": "gpt-4o-mini", "messages": prompt(i)}
            headers = {"x-deadline": "30s", "prefer": "respond-async"}
            return httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=30)

        probe = send(1)  # the prior (600 s) says no; an empty queue with no evidence sends it anyway
        during = send(2)  # one probe at a time: this one is refused while the probe is out
        assert httpx.get(f"{base}/v1/deferred/{probe.json()['id']}?wait=20", timeout=30).status_code == 200
        # The batch's turnaround is recorded as it leaves the batches in flight, after its results are stored (and
        # the probe answered): wait for that. (A gauge read from this router's Redis at each scrape, so its own.)
        wait_until(lambda: batches_in_flight(base) == 0, 10, "the probe's batch to be finished and its turnaround")
        learned = send(3)  # one batch of about 3 s observed: 30 s is plenty now
    assert (probe.status_code, probe.headers["x-router-lane"]) == (202, "batch")
    assert (during.status_code, during.headers["x-router-lane"]) == (200, "realtime")
    assert (learned.status_code, learned.headers["x-router-lane"]) == (202, "batch")


def test_idempotency_key_attaches_a_retry_to_the_same_call(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=5)  # still running when the retry comes, with seconds to spare
    with start_router(batch=FAST) as base:
        body = {"model": "gpt-4o-mini", "messages": prompt(9)}
        headers = {"x-deadline": "2h", "idempotency-key": "job-42"}
        with pytest.raises(httpx.ReadTimeout):  # the held caller's connection is cut
            httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=0.5)
        retry = httpx.post(base + "/v1/chat/completions", json=body, headers=headers | {"prefer": "respond-async"})
        again = httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        done = httpx.get(base + retry.headers["location"] + "?wait=10", timeout=20)
    assert again.status_code == 200
    assert again.headers["x-router-request-id"] == retry.json()["id"]
    assert done.json()["choices"][0]["message"]["content"] == direct_answer(sim, prompt(9))
    stats = sim.stats()
    assert stats["batch_lines_submitted"] == 1
    assert stats["max_submissions_per_custom_id"] == 1


def test_idempotency_key_reused_with_another_body_is_422_and_stores_nothing(
    oai: Client, start_router: RouterFactory, sim: Sim, redis_url: str, key_prefix: str
) -> None:
    with start_router(batch=FAST | {"max_wait_s": 60.0}) as base:
        headers = {"x-deadline": "2h", "idempotency-key": "job-43", "prefer": "respond-async"}
        first = httpx.post(base + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": prompt(10)},
                           headers=headers)  # fmt: skip
        assert first.status_code == 202
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            oai(base, max_retries=2).chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=prompt(11),
                extra_headers=headers,
            )
        with redis.Redis.from_url(redis_url) as r:
            calls = list(r.scan_iter(match=f"{key_prefix}:*:call:*"))
    assert refused.value.status_code == 422
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"], error["type"]) == (
        "idempotency_key_reused",
        "Idempotency-Key",
        "invalid_request_error",
    )
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(calls) == 1  # the first call only: the reused key stored nothing
    assert calls[0].decode().endswith(first.json()["id"])


def test_bad_deadlines_are_400(router_url: str) -> None:
    for value in ("soon", "-5m", "2001-01-01T00:00:00Z", "400d"):
        r = httpx.post(
            router_url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": prompt(0)},
            headers={"x-deadline": value},
        )
        assert r.status_code == 400, value
        error = r.json()["error"]
        assert error["param"] == "X-Deadline"
        assert "2h" in error["message"]


def test_urgent_header_stays_realtime(oai: Client, router_url: str, sim: Sim) -> None:
    raw = oai(router_url).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=prompt(0), extra_headers={"X-Deadline": "now"}
    )
    assert raw.headers["x-router-lane"] == "realtime"
    assert sim.stats()["batches_created"] == 0


def test_policy_defers_a_marked_call_and_names_the_rule(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    with start_router(batch=FAST, policies_dir=str(ROOT / "policies")) as base:
        c = oai(base)
        marked = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(2), extra_headers={"x-workload": "eval"}
        )
        plain = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(2))
        urgent = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(2), extra_headers={"x-workload": "eval", "X-Deadline": "now"}
        )
    assert marked.headers["x-router-lane"] == "batch"
    assert marked.headers["x-router-rule"] == "evals"
    assert plain.headers["x-router-lane"] == "realtime"
    assert "x-router-rule" not in plain.headers
    assert urgent.headers["x-router-lane"] == "realtime"
    assert marked.parse().choices[0].message.content == plain.parse().choices[0].message.content
    assert sim.stats()["batch_lines_submitted"] == 1


def test_a_held_stream_caller_that_leaves_can_fetch_its_result(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=1.0)
    with start_router(batch=FAST) as base:
        body = {"model": "gpt-4o-mini", "messages": prompt(11), "stream": True}
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers=LATER, timeout=30) as held:
            assert held.status_code == 200
            call_id = held.headers["x-router-request-id"]  # known at once, before any result
            assert held.headers["x-router-lane"] == "batch"
        # The caller is gone; the call is not.
        done = httpx.get(f"{base}/v1/deferred/{call_id}?wait=20", timeout=30)
    assert done.status_code == 200
    assert done.json()["choices"][0]["message"]["content"] == direct_answer(sim, prompt(11))


def test_too_soon_for_a_batch_takes_the_flex_tier_where_offered(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    flexible = [upstream(sim.v1, flex=True)]
    with start_router(batch=FAST | NO_PROBE, upstreams=flexible) as base:
        c = oai(base)
        flex = c.chat.completions.with_raw_response.create(
            model="gpt-5-mini", messages=prompt(4), extra_headers={"X-Deadline": "5m"}
        )
        no_flex_price = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(4), extra_headers={"X-Deadline": "5m"}
        )
        urgent = c.chat.completions.with_raw_response.create(model="gpt-5-mini", messages=prompt(4))
    assert flex.headers["x-router-lane"] == "flex"
    assert flex.parse().service_tier == "flex"
    assert float(flex.headers["x-router-savings-usd"]) > 0
    assert no_flex_price.headers["x-router-lane"] == "realtime"
    assert urgent.headers["x-router-lane"] == "realtime"
    assert float(urgent.headers["x-router-savings-usd"]) == 0
    assert sim.stats()["batches_created"] == 0


def test_a_flex_shortage_falls_back_to_the_standard_tier(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(flex_unavailable=True)
    with start_router(batch=FAST | NO_PROBE, upstreams=[upstream(sim.v1, flex=True)]) as base:
        c = oai(base)
        routed = c.chat.completions.with_raw_response.create(
            model="gpt-5-mini", messages=prompt(6), extra_headers={"X-Deadline": "5m"}
        )
        with pytest.raises(openai.RateLimitError) as asked:  # the caller's own flex choice is not overridden
            c.chat.completions.create(model="gpt-5-mini", messages=prompt(6), service_tier="flex")
    assert routed.headers["x-router-lane"] == "realtime"
    assert routed.parse().service_tier == "default"
    assert float(routed.headers["x-router-savings-usd"]) == 0
    assert asked.value.code == "resource_unavailable"
