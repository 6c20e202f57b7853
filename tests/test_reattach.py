"""Held calls over real sockets: keep-alive bytes, re-attaching retries, the cut of a late error, the held cap,
escalations that keep trying, and leases that stop work cleanly. Fast versions of `test_billed_once.py`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from router.deferred.store.leases import LeaseLost, while_leased
from tests.helpers.metrics import metric
from tests.helpers.servers import RouterFactory, Sim
from tests.helpers.waiting import wait_until

Client = Callable[..., openai.OpenAI]
HELD = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 0.5, "margin_s": 1.0, "lease_s": 3.0}
LATER = {"X-Deadline": "2h"}
MESSAGES = [{"role": "user", "content": "Classify ticket 17 by urgency."}]
CANCELLED = (
    'hybrid_router_requests_total{lane="realtime",model="gpt-4o-mini",outcome="cancelled",tenant="default",'
    'upstream="openai"}'
)


def body(i: int = 0) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Classify ticket {i} by urgency."}]}


def test_a_held_call_gets_keepalive_bytes_then_its_json(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=5.0)
    # A read timeout shorter than the batch: only the keep-alive bytes keep the call alive. It is ten keep-alive
    # intervals, so a busy host that delays a byte or two does not fire it.
    with (
        start_router(batch=HELD | {"keepalive_s": 0.3}) as base,
        httpx.stream("POST", base + "/v1/chat/completions", json=body(), headers=LATER, timeout=3.0) as held,
    ):
        chunks = list(held.iter_raw())
    assert held.status_code == 200 and held.headers["content-type"].startswith("application/json")
    assert b"".join(chunks[:-1]).strip(b" ") == b""  # spaces, every keep-alive interval, before the answer
    assert len(chunks) > 2
    completion = openai.types.chat.ChatCompletion.model_validate_json(b"".join(chunks))
    assert completion.choices[0].message.content
    assert sim.stats()["batch_lines_submitted"] == 1


def test_an_sdk_retry_after_a_timeout_reattaches(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=8.0)
    # No keep-alive byte before 5 s: the SDK's 1 s read timeout fires, and its two retries re-attach.
    with start_router(batch=HELD | {"keepalive_s": 5.0}) as base:
        client = oai(base, timeout=1.0, max_retries=2)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=LATER)  # type: ignore[arg-type]
        # The application tries again later, with a fresh request (no retry header): the caller is gone, so
        # this re-attaches too, and gets the one answer.
        raw = oai(base, timeout=30).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers=LATER,
        )
    assert raw.headers["x-router-reattached"] == "true"
    assert raw.parse().choices[0].message.content
    stats = sim.stats()
    assert stats["batch_lines_submitted"] == 1 and stats["max_submissions_per_custom_id"] == 1


def test_identical_calls_from_connected_callers_stay_two_calls(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=0.5)
    with start_router(batch=HELD) as base:
        client = oai(base)
        answers: list[str] = []

        def call() -> None:
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=LATER)  # type: ignore[arg-type]
            answers.append(answer.id)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(answers) == 2
    assert sim.stats()["batch_lines_submitted"] == 2  # sampling twice on purpose is two calls


def test_opting_out_of_reattach(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=1.5)
    with start_router(batch=HELD | {"keepalive_s": 5.0}) as base:
        client = oai(base, timeout=0.5, max_retries=1)
        headers = LATER | {"X-Router-Reattach": "never"}
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers)  # type: ignore[arg-type]
        wait_until(lambda: sim.stats()["batch_lines_submitted"] == 2, 10, "both attempts in batches")


def test_a_late_error_cuts_the_held_answer_and_the_retry_gets_its_status(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    # Every batch line fails with a 500, after the router committed 200 (keep-alive 0.3 s, batch 3 s: seconds
    # between the two, so the 200 comes first on a busy host too).
    sim.configure(batch_turnaround_s=3.0, batch_line_failure_rate=1.0)
    cuts = 'hybrid_router_held_cut_total{reason="error"}'
    with start_router(batch=HELD | {"keepalive_s": 0.3}) as base:
        before = metric(httpx.get(base + "/metrics").text, cuts)  # the registry is the process's: count what is added
        client = oai(base, timeout=30, max_retries=2)
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=LATER)  # type: ignore[arg-type]
        added = metric(httpx.get(base + "/metrics").text, cuts) - before
    # The SDK's retry re-attached and received the error with its status; it did not retry that again.
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert failed.value.response.headers["x-router-reattached"] == "true"
    assert sim.stats()["batch_lines_submitted"] == 1
    assert added == 1


def test_a_client_without_retries_gets_an_error_not_a_broken_completion(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=3.0, batch_line_failure_rate=1.0)  # fails seconds after the 200 is committed
    with start_router(batch=HELD | {"keepalive_s": 0.3}) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="dev", max_retries=0)
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=LATER)  # type: ignore[arg-type]
        client.close()


def test_past_the_held_cap_a_call_gets_429_before_it_is_stored(start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=3.0)
    with (
        start_router(batch=HELD | {"keepalive_s": 0.3}, limits={"max_held": 1}) as base,
        httpx.stream("POST", base + "/v1/chat/completions", json=body(1), headers=LATER, timeout=30) as held,
    ):
        refused = httpx.post(base + "/v1/chat/completions", json=body(2), headers=LATER, timeout=30)
        prefer = LATER | {"Prefer": "respond-async"}
        asynchronous = httpx.post(base + "/v1/chat/completions", json=body(3), headers=prefer)
        held.read()
    assert held.status_code == 200
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "too_many_held_calls"
    assert asynchronous.status_code == 202  # a 202 call holds no connection: never capped
    wait_until(lambda: sim.stats()["batch_lines_submitted"] == 2, 10, "the held and the async call submitted")


async def test_a_burst_of_held_calls_never_passes_the_cap(start_router: RouterFactory, sim: Sim) -> None:
    # Twelve held calls arrive at once; each waits on Redis to be stored. The slot is taken before that wait,
    # so exactly `max_held` of them are held and the rest are refused before anything is stored.
    sim.configure(batch_turnaround_s=3.0)
    with start_router(batch=HELD | {"keepalive_s": 0.3}, limits={"max_held": 3}) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body(i), headers=LATER) for i in range(12))
            )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * 3 + [429] * 9
    assert all(a.json()["error"]["code"] == "too_many_held_calls" for a in answers if a.status_code == 429)
    assert sim.stats()["batch_lines_submitted"] == 3


def test_an_escalation_retries_transient_upstream_errors_until_it_succeeds(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    # The batch is too slow for the deadline; the real-time escalation meets 429/500 for a while.
    sim.configure(batch_turnaround_s=60.0, error_rate=1.0)
    with start_router(batch=HELD | {"margin_s": 8.0, "cancel_lead_s": 0.0}) as base:
        client = oai(base, timeout=30)
        threading.Timer(8.0, lambda: sim.configure(error_rate=0.0)).start()
        # Escalated about 6 s in (deadline 14 s, margin 8 s); the upstream fails until 8 s.
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            extra_headers={"X-Deadline": "14s"},
        )
    assert raw.headers["x-router-escalated"] == "true"
    assert raw.parse().choices[0].message.content
    stats = sim.stats()
    assert stats["errors_injected"] >= 1 and stats["realtime_calls_billed"] == 1


def test_a_cancelled_realtime_call_is_booked_without_a_traceback(
    start_router: RouterFactory, sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    sim.configure(latency_ms=2000)
    with start_router() as base:

        def cancelled() -> float:  # the registry is the process's: earlier tests' cancelled calls are in it too
            return metric(httpx.get(base + "/metrics").text, CANCELLED)

        before = cancelled()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(base + "/v1/chat/completions", json=body(), timeout=0.3)
        wait_until(lambda: cancelled() - before >= 1, 10, "the cancelled outcome booked")
        added = cancelled() - before
    assert added == 1
    assert not [r for r in caplog.records if r.exc_info]


# --- leases ---------------------------------------------------------------------------------------------


async def test_work_outlives_a_failing_renewal_and_keeps_its_result() -> None:
    renewals: list[str] = []
    renewed = asyncio.Event()

    async def renew() -> bool:
        renewals.append("tried")
        if len(renewals) == 1:
            raise RedisConnectionError("Redis is restarting")
        renewed.set()
        return True

    async def work() -> str:
        await renewed.wait()  # ends after a renewal that failed and one that did not, however late they run
        return "submitted"

    # Renewed every 0.5 s; the failed renewal keeps the work going only while a whole lease (1.5 s) has not passed.
    assert await while_leased(work(), renew, lease_s=1.5) == "submitted"
    assert len(renewals) == 2


async def test_a_lost_lease_stops_the_work() -> None:
    stopped: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(10)
            stopped.append("finished")
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    async def renew() -> bool:
        return False  # another replica holds it now

    with pytest.raises(LeaseLost):
        await while_leased(work(), renew, lease_s=0.3)
    assert stopped == ["cancelled"]  # stopped at the first renewal, not left to run its 10 s


async def test_a_lease_that_cannot_be_renewed_for_a_whole_lease_is_lost() -> None:
    async def renew() -> bool:
        raise RedisConnectionError("Redis is away")

    with pytest.raises(LeaseLost):
        await while_leased(asyncio.sleep(10), renew, lease_s=0.3)
