"""Realistic batch timing and billing in the simulator: the turnaround spec, its draws, progressive completion,
expiry at `max`, and what `/_sim/stats` says a provider would charge, through the official SDKs."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar

from router.ops.cli import build_parser
from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from router.simulator.config import WINDOW_S, Turnaround
from router.simulator.schedule import Schedule, drawn_turnaround
from router.simulator.state import SimState
from tests.helpers.waiting import wait_until

DEFAULTS = msgspec.structs.asdict(SimConfig(batch_turnaround_s=0.3))
ANTHROPIC_MODEL = "claude-sonnet-4-6"
FIXED_THEN_EXPIRE = "lognormal:median=0.6,p95=0.6,max=0.3"
"""Every batch takes 0.6 s but the window is 0.3 s: lines run from 0.03 s to 0.48 s, so 60% are done at expiry."""


# --- the spec and its draws (pure) ---


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("30", Turnaround(median=30, p95=30)),
        (" 0.25 ", Turnaround(median=0.25, p95=0.25)),
        ("0", Turnaround(median=0, p95=0)),
        ("lognormal:median=60,p95=600", Turnaround(median=60, p95=600)),
        ("lognormal:p95=600, median=60, max=3600", Turnaround(median=60, p95=600, max=3600)),
        ("lognormal:median=5,p95=5,max=1e6", Turnaround(median=5, p95=5, max=1e6)),
    ],
)
def test_turnaround_spec_parses(spec: str, expected: Turnaround) -> None:
    assert Turnaround.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "expected seconds or lognormal:"),
        ("fast", "expected seconds or lognormal:"),
        ("-1", ">= 0"),
        ("inf", "finite"),
        ("nan", "finite"),
        ("lognormal:", "expected median=S"),
        ("lognormal:median=60", "needs p95"),
        ("lognormal:p95=60", "needs median"),
        ("lognormal:median=60,p95=600,p99=900", "expected median=S"),
        ("lognormal:median=60,median=70,p95=600", "median given twice"),
        ("lognormal:median=600,p95=60", "0 < median <= p95"),
        ("lognormal:median=0,p95=60", "0 < median <= p95"),
        ("lognormal:median=60,p95=600,max=0", "max must be above 0"),
        ("lognormal:median=sixty,p95=600", "median: expected a number of seconds"),
        ("uniform:low=1,high=2", "expected seconds or lognormal:"),
    ],
)
def test_bad_turnaround_specs_are_refused_with_the_reason(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Turnaround.parse(spec)
    with pytest.raises(ValueError, match=problem):
        SimConfig(batch_turnaround=spec)


@given(
    median=st.floats(min_value=1e-3, max_value=1e6),
    spread=st.floats(min_value=1, max_value=1e3),
    window=st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1e7)),
)
def test_any_lognormal_spec_round_trips(median: float, spread: float, window: float | None) -> None:
    spec = f"lognormal:median={median!r},p95={median * spread!r}" + ("" if window is None else f",max={window!r}")
    got = Turnaround.parse(spec)
    assert (got.median, got.p95, got.max) == (median, median * spread, WINDOW_S if window is None else window)
    assert SimConfig(batch_turnaround=spec).turnaround() == got


@pytest.mark.parametrize(("median", "p95"), [(60.0, 600.0), (420.0, 3600.0), (0.5, 4.0), (10.0, 11.0)])
@pytest.mark.parametrize("seed", [0, 7])
def test_draws_have_the_asked_median_and_p95(median: float, p95: float, seed: int) -> None:
    """4000 seeded draws (the same on every run): the sample median and p95 land near the spec's."""
    config = SimConfig(batch_turnaround=f"lognormal:median={median},p95={p95}", seed=seed)
    draws = [drawn_turnaround(config, seq) for seq in range(1, 4001)]
    assert draws == [drawn_turnaround(config, seq) for seq in range(1, 4001)]  # reproducible per sequence number
    assert all(d > 0 for d in draws)
    cuts = statistics.quantiles(draws, n=100)
    assert cuts[49] == pytest.approx(median, rel=0.1)
    assert cuts[94] == pytest.approx(p95, rel=0.15)
    reseeded = SimConfig(batch_turnaround=config.batch_turnaround, seed=seed + 1)
    assert [drawn_turnaround(reseeded, seq) for seq in range(1, 50)] != draws[:49]


def test_a_fixed_turnaround_is_drawn_exactly() -> None:
    for config in (SimConfig(batch_turnaround_s=0.3), SimConfig(batch_turnaround="0.3", seed=5)):
        assert {drawn_turnaround(config, seq) for seq in range(1, 20)} == {0.3}
    assert drawn_turnaround(SimConfig(batch_turnaround="lognormal:median=2,p95=2"), 1) == 2


# --- the timeline (pure) ---


def test_a_drawn_duration_beyond_max_expires_at_max_with_the_lines_done_by_then() -> None:
    s = Schedule.of(SimConfig(batch_turnaround="lognormal:median=10,p95=10,max=5"), created=1000, seq=1)
    assert (s.turnaround, s.window, s.expires, s.started, s.finalizing) == (10, 5, 1005, 1000.5, 1008)
    assert [s.lines_done(at, 10) for at in (1000.4, 1000.5, 1002, 1005, 1e9)] == [0, 0, 2, 6, 6]
    within = Schedule.of(SimConfig(batch_turnaround="lognormal:median=4,p95=4,max=5"), created=1000, seq=1)
    assert within.expires is None and within.lines_done(1003.2, 10) == 10


def test_the_expire_knob_keeps_its_done_fraction_unless_the_window_comes_first() -> None:
    knob = SimConfig(batch_turnaround_s=5, batch_expire_s=0.2, batch_expire_done_fraction=0.5)
    s = Schedule.of(knob, created=1000, seq=1)
    assert (s.expires, s.lines_done(1e9, 10), s.window) == (1000.5, 5, WINDOW_S)
    later = SimConfig(batch_turnaround="lognormal:median=10,p95=10,max=5", batch_expire_s=8)
    w = Schedule.of(later, created=1000, seq=1)
    assert (w.expires, w.done_fraction, w.lines_done(1e9, 10)) == (1005, None, 6)


@given(
    turnaround=st.floats(min_value=0, max_value=1e5),
    window=st.floats(min_value=1e-3, max_value=1e5),
    total=st.integers(min_value=0, max_value=50_000),
    times=st.lists(st.floats(min_value=-10, max_value=2e5), min_size=1, max_size=20),
)
def test_lines_only_ever_progress(turnaround: float, window: float, total: int, times: list[float]) -> None:
    spec = f"lognormal:median={turnaround!r},p95={turnaround!r},max={window!r}" if turnaround > 0 else "0"
    s = Schedule.of(SimConfig(batch_turnaround=spec), created=0, seq=1)
    done = [s.lines_done(at, total) for at in sorted(times)]
    assert done == sorted(done) and all(0 <= d <= total for d in done)
    assert s.lines_done(min(s.started, s.created) - 1e-3, total) == 0
    end = s.expires if s.expires is not None else s.completes
    assert s.lines_done(end, total) == s.lines_done(end + 1e6, total)
    if s.expires is None:
        assert s.lines_done(s.completes, total) == total


# --- the knob, live and on the command line ---


@pytest.fixture(scope="module")
def app() -> Litestar:
    return create_simulator(SimConfig(batch_turnaround_s=0.3))


@pytest.fixture(scope="module")
def server(app: Litestar) -> Iterator[str]:
    with serve_in_thread(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer sk-test", "x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=server, headers=headers) as c:
        yield c


@pytest.fixture(autouse=True)
def base(server: str, http: httpx.Client) -> str:
    """Reset state and knobs before every test (turnaround 0.3 s)."""
    http.post("/_sim/reset").raise_for_status()
    http.post("/_sim/config", json=DEFAULTS).raise_for_status()
    return server


@pytest.fixture
def oai(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
def ant(base: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0) as c:
        yield c


def configure(http: httpx.Client, **knobs: Any) -> dict[str, Any]:
    response = http.post("/_sim/config", json=knobs)
    response.raise_for_status()
    config: dict[str, Any] = response.json()
    return config


def stats(http: httpx.Client) -> dict[str, Any]:
    result: dict[str, Any] = http.get("/_sim/stats").json()
    return result


def test_the_spec_is_set_live_and_a_bad_one_is_a_400(http: httpx.Client) -> None:
    spec = "lognormal:median=60,p95=600,max=3600"
    assert configure(http, batch_turnaround=spec)["batch_turnaround"] == spec
    assert http.get("/_sim/config").json()["batch_turnaround"] == spec
    bad = http.post("/_sim/config", json={"batch_turnaround": "lognormal:median=60"})
    error = bad.json()["error"]
    assert bad.status_code == 400 and error["param"] == "batch_turnaround" and "needs p95" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert http.get("/_sim/config").json()["batch_turnaround"] == spec  # unchanged
    assert http.post("/_sim/config", json={"batch_turnaround": 30}).status_code == 400
    cleared = configure(http, batch_turnaround_s=5)  # the last turnaround set wins
    assert (cleared["batch_turnaround"], cleared["batch_turnaround_s"]) == (None, 5)


def test_each_batch_draws_its_duration_from_the_seed_and_its_sequence(
    app: Litestar, http: httpx.Client, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    sim: SimState = app.state.sim
    spec = "lognormal:median=3600,p95=7200"

    def durations() -> list[float]:
        uploaded = oai.files.create(file=("in.jsonl", _jsonl(_chat_lines(1))), purpose="batch")
        first = oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        second = ant.messages.batches.create(requests=_anthropic_requests(1))
        return [sim.batches[first.id].schedule.turnaround, sim.message_batches[second.id].schedule.turnaround]

    configure(http, batch_turnaround=spec, seed=11)
    drawn = durations()
    config = SimConfig(batch_turnaround=spec, seed=11)
    assert drawn == [drawn_turnaround(config, 1), drawn_turnaround(config, 2)] and drawn[0] != drawn[1]
    http.post("/_sim/reset").raise_for_status()
    assert durations() == drawn  # the same sequence again after a reset
    http.post("/_sim/reset").raise_for_status()
    configure(http, batch_turnaround=spec, seed=12)
    assert durations() != drawn


def test_simulate_accepts_a_spec_and_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["simulate", "--batch-turnaround", "lognormal:median=60,p95=600", "--seed", "3"])
    assert (args.batch_turnaround, args.seed) == ("lognormal:median=60,p95=600", 3)
    plain = build_parser().parse_args(["simulate", "--batch-turnaround", "5"])
    assert (plain.batch_turnaround, plain.seed) == ("5", 0)
    assert build_parser().parse_args(["simulate"]).batch_turnaround is None  # SimConfig's 2 s
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--batch-turnaround", "lognormal:median=60"])
    assert "needs p95" in capsys.readouterr().err


# --- OpenAI batches: progress, expiry at max, cancel, billing ---


def _chat_lines(n: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {i}?"}]},
        }
        for i in range(n)
    ]


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(msgspec.json.encode(line) + b"\n" for line in lines)


def _submit(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    uploaded = client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id


def _finished(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    def ended() -> openai.types.Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in {"completed", "expired", "cancelled", "failed"} else None

    return wait_until(ended, what="the batch to end")


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [msgspec.json.decode(line) for line in client.files.content(file_id).content.splitlines()]


def test_openai_batch_beyond_max_expires_there_billing_only_finished_lines(
    http: httpx.Client, oai: openai.OpenAI
) -> None:
    configure(http, batch_turnaround=FIXED_THEN_EXPIRE)
    batch = _finished(oai, _submit(oai, _chat_lines(10)))
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    assert batch.expires_at is not None and batch.expires_at - batch.created_at <= 1  # the window is max, not 24 h
    output, errors = _lines(oai, batch.output_file_id), _lines(oai, batch.error_file_id)
    assert len(output) == 6 and len(errors) == 4
    assert batch.request_counts and (batch.request_counts.completed, batch.request_counts.failed) == (6, 0)
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
    for line in errors:
        assert line["id"].startswith("batch_req_") and line["response"] is None
        assert line["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    got = stats(http)
    assert got["batch_lines_billed"] == 6 and got["message_batch_requests_billed"] == 0
    assert got["batch_lines_billed_by_custom_id"] == {line["custom_id"]: 1 for line in output}


def test_openai_lines_finish_progressively_and_a_cancel_bills_only_those(
    http: httpx.Client, oai: openai.OpenAI
) -> None:
    configure(http, batch_turnaround="lognormal:median=4,p95=4", batch_cancel_delay_s=0.1)
    batch_id = _submit(oai, _chat_lines(40))

    def progressed() -> openai.types.Batch | None:
        batch = oai.batches.retrieve(batch_id)
        return batch if batch.request_counts and batch.request_counts.completed else None

    running = wait_until(progressed, what="a line to finish")
    assert running.status == "in_progress" and running.request_counts
    oai.batches.cancel(batch_id)
    batch = _finished(oai, batch_id)
    output, errors = _lines(oai, batch.output_file_id), _lines(oai, batch.error_file_id)
    assert batch.status == "cancelled" and 0 < len(output) < 40 and len(output) + len(errors) == 40
    assert batch.request_counts and batch.request_counts.completed == len(output) >= running.request_counts.completed
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert all(line["response"] is None for line in errors)
    got = stats(http)
    assert got["batch_lines_billed"] == len(output) and got["batches_cancelled"] == 1
    assert set(got["batch_lines_billed_by_custom_id"]) == {line["custom_id"] for line in output}


def test_stats_bill_lines_while_a_batch_runs_and_see_a_custom_id_billed_twice(
    http: httpx.Client, oai: openai.OpenAI
) -> None:
    # Lines finish from 0.3 s to 2.4 s: the partly billed state lasts two seconds, for polls a busy host delays.
    configure(http, batch_turnaround="lognormal:median=3,p95=3")
    first = _submit(oai, _chat_lines(20))
    billed = wait_until(lambda: 0 < (n := stats(http)["batch_lines_billed"]) < 20 and n)  # no poll of the batch needed
    assert oai.batches.retrieve(first).request_counts.completed >= billed  # type: ignore[union-attr]
    configure(http, batch_turnaround_s=0.2)
    second = _submit(oai, _chat_lines(5))  # req-0..4 again, as a resubmission would
    for batch_id in (first, second):
        assert _finished(oai, batch_id).status == "completed"
    by_id = stats(http)["batch_lines_billed_by_custom_id"]
    assert {cid for cid, n in by_id.items() if n == 2} == {f"req-{i}" for i in range(5)}
    assert sum(by_id.values()) == stats(http)["batch_lines_billed"] == 25


def test_failed_lines_are_not_billed(http: httpx.Client, oai: openai.OpenAI) -> None:
    configure(http, batch_turnaround_s=0.2, batch_line_failure_rate=0.3)
    batch = _finished(oai, _submit(oai, _chat_lines(10)))
    assert batch.status == "completed" and batch.request_counts
    assert (batch.request_counts.completed, batch.request_counts.failed) == (7, 3)
    unknown = [{**line, "body": {**line["body"], "model": "gpt-nope"}} for line in _chat_lines(3, prefix="x")]
    rejected = _finished(oai, _submit(oai, unknown))
    assert rejected.request_counts and rejected.request_counts.failed == 3  # each line answered 404
    assert stats(http)["batch_lines_billed"] == 7


# --- Anthropic Message Batches: the same ---


def _anthropic_requests(n: int, prefix: str = "req") -> list[Any]:
    params = {"model": ANTHROPIC_MODEL, "max_tokens": 100}
    return [
        {"custom_id": f"{prefix}-{i}", "params": {**params, "messages": [{"role": "user", "content": f"Q{i}"}]}}
        for i in range(n)
    ]


def _ended(client: anthropic.Anthropic, batch_id: str) -> anthropic.types.messages.MessageBatch:
    def ended() -> anthropic.types.messages.MessageBatch | None:
        batch = client.messages.batches.retrieve(batch_id)
        return batch if batch.processing_status == "ended" else None

    return wait_until(ended, what="the batch to end")


def test_message_batch_beyond_max_expires_there_billing_only_finished_requests(
    http: httpx.Client, ant: anthropic.Anthropic
) -> None:
    configure(http, batch_turnaround=FIXED_THEN_EXPIRE)
    created = ant.messages.batches.create(requests=_anthropic_requests(10))
    assert abs((created.expires_at - created.created_at).total_seconds() - 0.3) < 1e-3
    batch = _ended(ant, created.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.expired, counts.processing, counts.canceled, counts.errored) == (6, 4, 0, 0, 0)
    assert batch.ended_at == created.expires_at
    results = {r.custom_id: r.result.type for r in ant.messages.batches.results(batch.id)}
    assert sorted(results.values()) == ["expired"] * 4 + ["succeeded"] * 6
    got = stats(http)
    assert got["batch_lines_billed"] == got["message_batch_requests_billed"] == 6
    assert got["batch_lines_billed_by_custom_id"] == {cid: 1 for cid, kind in results.items() if kind == "succeeded"}


def test_message_batch_runs_progressively_and_a_cancel_bills_only_finished_requests(
    http: httpx.Client, ant: anthropic.Anthropic
) -> None:
    configure(http, batch_turnaround="lognormal:median=4,p95=4", batch_cancel_delay_s=0.1)
    created = ant.messages.batches.create(requests=_anthropic_requests(40))
    running = wait_until(lambda: stats(http)["message_batch_requests_billed"])
    during = ant.messages.batches.retrieve(created.id)  # counts stay `processing` until the batch ends
    assert during.processing_status == "in_progress" and during.request_counts.processing == 40
    assert during.request_counts.succeeded == 0
    ant.messages.batches.cancel(created.id)
    batch = _ended(ant, created.id)
    counts = batch.request_counts
    assert running <= counts.succeeded < 40 and counts.succeeded + counts.canceled == 40
    results = [r.result.type for r in ant.messages.batches.results(created.id)]
    assert results.count("succeeded") == counts.succeeded and results.count("canceled") == counts.canceled
    got = stats(http)
    assert got["batch_lines_billed"] == got["message_batch_requests_billed"] == counts.succeeded


def test_errored_requests_are_not_billed(http: httpx.Client, ant: anthropic.Anthropic) -> None:
    configure(http, batch_turnaround_s=0.2, batch_line_failure_rate=0.2)
    reqs = _anthropic_requests(10)
    reqs[0]["params"]["model"] = "not-a-model"
    batch = _ended(ant, ant.messages.batches.create(requests=reqs).id)
    assert batch.request_counts.succeeded + batch.request_counts.errored == 10 and batch.request_counts.errored >= 2
    assert stats(http)["batch_lines_billed"] == batch.request_counts.succeeded


# --- real time, and the whole bill ---


def test_realtime_billing_counts_only_successful_answers(
    http: httpx.Client, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    hello: list[Any] = [{"role": "user", "content": "hi"}]
    oai.chat.completions.create(model="gpt-4o-mini", messages=hello)
    assert "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(
        model="gpt-4o-mini", messages=hello, stream=True) if c.choices)  # fmt: skip
    oai.embeddings.create(model="text-embedding-3-small", input="hi")
    ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=50, messages=hello)
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=hello, extra_headers={"X-Sim-Error": "500"})
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-nope", messages=hello)
    configure(http, flex_unavailable=True)
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=hello, service_tier="flex")
    with pytest.raises(anthropic.RateLimitError):
        ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=50, messages=hello, extra_headers={"X-Sim-Error": "429"})
    got = stats(http)
    assert sum(got["realtime_calls"].values()) == 8
    assert got["realtime_calls_billed"] == 4 and got["errors_injected"] == 2


def test_every_call_is_billed_once_across_lanes(
    http: httpx.Client, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    """What a router test checks: batch lines billed plus real-time calls billed equals the calls made."""
    configure(http, batch_turnaround=FIXED_THEN_EXPIRE)
    expired = _finished(oai, _submit(oai, _chat_lines(10)))
    unanswered = [line["custom_id"] for line in _lines(oai, expired.error_file_id)]
    for custom_id in unanswered:  # the unfinished lines, answered in real time instead
        oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": custom_id}])
    ended = _ended(ant, ant.messages.batches.create(requests=_anthropic_requests(10, prefix="ant")).id)
    for _ in range(ended.request_counts.expired):
        ant.messages.create(model=ANTHROPIC_MODEL, max_tokens=50, messages=[{"role": "user", "content": "again"}])
    got = stats(http)
    assert got["batch_lines_billed"] + got["realtime_calls_billed"] == 20
    assert max(got["batch_lines_billed_by_custom_id"].values()) == 1
    assert got["batch_lines_billed"] == 12 and got["realtime_calls_billed"] == 8
