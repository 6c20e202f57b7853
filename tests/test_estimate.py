"""Estimate: the $2,000 seed example both ways, hand-computed logs, admission replay, unpriced and bad lines, CLI."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from router.core import prompt_cache
from router.core.errors import ConfigError
from router.core.model_routes import parse_route
from router.core.policy import load_policies
from router.core.pricing import load_pricing
from router.core.settings import (
    AnswerCacheSettings,
    BatchSettings,
    PromptCacheSettings,
    Settings,
    TenantLimits,
    Upstream,
)
from router.ops import estimate as estimate_module
from router.ops.estimate import LogLine, add_parser, estimate, what_if

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "estimate"
POLICIES = load_policies(DATA / "policies")
PRICES = load_pricing(DATA / "pricing.yaml")  # test-model: $1 in / $0.50 cached / $2 out per 1M; test-cheap: 0.10/0.40
SHIPPED_PRICES = ROOT / "config" / "pricing.yaml"
SETTINGS = Settings()  # a deferral needs 3691 s of room: prior 3600 s + flush 1 s + margin 60 s + cut 30 s
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
M = 1_000_000


def cli(*argv: str) -> argparse.Namespace:
    """Parse `hybrid-router estimate ...` the way the CLI will, with the test policies and prices by default."""
    parser = argparse.ArgumentParser(prog="hybrid-router")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["estimate", *argv])


def with_test_config(*argv: str) -> argparse.Namespace:
    config = ("--config", str(ROOT / "config" / "router.yaml"), "--policies", str(DATA / "policies"))
    return cli(*argv, *config, "--pricing", str(DATA / "pricing.yaml"))


def line(**fields: Any) -> str:
    record = {"timestamp": T0, "model": "test-model", "input_tokens": M, "output_tokens": 0, **fields}
    return json.dumps(record)


# --- the seed example: $10,000/month, 40% batch-eligible, batch at half price -> $2,000/month saved ------------


def test_seed_example_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert what_if(10_000, 0.4).savings_usd_month == pytest.approx(2_000, abs=1e-6)
    args = cli("--what-if-share", "0.4", "--monthly-spend", "10000", "--json")
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mode"] == "what-if"
    assert result["savings_usd_month"] == pytest.approx(2_000, abs=1e-6)
    assert result["cost_batch_usd_month"] == pytest.approx(8_000)
    assert result["savings_pct"] == pytest.approx(20)
    args = cli("--what-if-share", "0.4", "--monthly-spend", "10000")
    assert args.func(args) == 0
    assert "$2,000.00" in capsys.readouterr().out


def seed_log(path: Path) -> None:
    """100 gpt-4o-mini calls over 0.45 days costing $150 in real time ($10,000/month); $60 of it (40%) is marked."""
    span = 0.45 * 86400  # scale = 30 / 0.45: $150 -> $10,000 per month
    with path.open("w") as file:
        for i in range(100):
            at = T0 + i * span / 99
            stamp: str | float = datetime.fromtimestamp(at, UTC).isoformat() if i % 2 else at
            record: dict[str, Any] = {"timestamp": stamp, "model": "gpt-4o-mini", "output_tokens": 0}
            if i < 10:  # 20M input tokens at $0.15/1M = $3.00 each, deferred by a header rule
                record |= {"input_tokens": 20 * M, "headers": {"X-Workload": "eval"}}
            elif i < 20:  # $3.00 each, deferred by a metadata rule
                record |= {"input_tokens": 20 * M, "metadata": {"workload": "backfill"}}
            else:  # 1.875M output tokens at $0.60/1M = $1.125 each, 80 of them = $90, real time
                record |= {"input_tokens": 0, "output_tokens": 1_875_000}
                if i % 3 == 0:
                    record["headers"] = {"x-workload": "interactive", "x-deadline": "2h"}
            file.write(json.dumps(record) + "\n")


def test_seed_example_from_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "seed.jsonl"
    seed_log(log)
    shipped = ("--pricing", str(SHIPPED_PRICES), "--policies", str(DATA / "policies"))
    args = cli(str(log), *shipped, "--json")
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cost_now_usd_month"] == pytest.approx(10_000, abs=1e-6)
    assert result["savings_usd_month"] == pytest.approx(2_000, abs=1e-6)
    assert result["cost_batch_usd_month"] == pytest.approx(8_000, abs=1e-6)
    assert (result["period_source"], result["period_days"]) == ("measured", pytest.approx(0.45))
    assert (result["calls"], result["deferred_calls"]) == (100, 20)
    args = cli(str(log), *shipped)
    assert args.func(args) == 0
    assert "$2,000.00" in capsys.readouterr().out


# --- hand-computed logs -----------------------------------------------------------------------------------------


def test_three_lines_over_one_day() -> None:
    # eval (batch):       1M in + 0.5M out        = $2.00 now, $1.00 batch
    # unmarked (real):    2M in, 1M of it cached  = $2.00 uncached, $1.00 + $0.50 = $1.50 as logged and with the router
    # backfill (batch):   test-cheap 1M in + 1M out = $0.50 now, $0.25 batch
    # one day -> x30:     $135 now (uncached; $120 as logged), $82.50 batch, $52.50 saved (38.9%), of it $15 the
    #                     log's own cache hits (prompt_cache) and $37.50 the batch lane
    with (DATA / "small.jsonl").open("rb") as file:
        result = estimate(file, POLICIES, PRICES, SETTINGS)
    assert (result.period_days, result.period_source, result.month_factor) == (1.0, "measured", 30.0)
    assert result.cost_now_usd_month == pytest.approx(135)
    assert result.cost_logged_usd_month == pytest.approx(120)
    assert result.cost_batch_usd_month == pytest.approx(82.5)
    assert result.savings_usd_month == pytest.approx(52.5)
    assert result.savings_pct == pytest.approx(52.5 / 1.35)
    assert levers(result) == pytest.approx(
        {"batch": 37.5, "flex": 0, "route": 0, "prompt_cache": 15, "answer_cache": 0}
    )
    assert result.prompt_cache.logged_usd_month == pytest.approx(15) and result.prompt_cache.added_usd_month == 0
    assert (result.calls, result.deferred_calls, result.tokens, result.deferred_tokens) == (3, 2, 5_500_000, 3_500_000)
    assert result.deferred_calls_pct == pytest.approx(200 / 3)
    assert result.deferred_tokens_pct == pytest.approx(350 / 5.5)
    by_model = {m.model: m for m in result.models}
    assert [m.model for m in result.models] == ["test-model", "test-cheap"]  # costliest first
    assert by_model["test-model"].cost_now_usd_month == pytest.approx(120)
    assert by_model["test-model"].savings_usd_month == pytest.approx(45)
    assert by_model["test-cheap"].cost_batch_usd_month == pytest.approx(7.5)
    assert (result.first_timestamp, result.last_timestamp) == ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z")
    assert (result.malformed_lines, result.unpriced_models) == (0, [])


@pytest.mark.parametrize(
    ("offsets", "period_days", "days", "source"),
    [
        ([0], None, 1.0, "assumed"),  # one line: no span to measure
        ([0, 1800], None, 1.0, "assumed"),  # half an hour says too little about a month
        ([0, 3600], None, 1 / 24, "measured"),
        ([7200, 0, 3600], None, 1 / 12, "measured"),  # unsorted: first to last is min to max
        ([0, 86400], 15.0, 15.0, "flag"),
    ],
)
def test_period(offsets: list[float], period_days: float | None, days: float, source: str) -> None:
    lines = [line(timestamp=T0 + offset) for offset in offsets]
    result = estimate(lines, POLICIES, PRICES, SETTINGS, period_days=period_days)
    assert result.period_days == pytest.approx(days)
    assert result.period_source == source
    assert result.cost_now_usd_month == pytest.approx(len(offsets) * 30 / days)  # $1 a line


def test_records_and_text_lines_are_the_same_call() -> None:
    record = LogLine(timestamp="2026-01-01T00:00:00", model="test-model", input_tokens=M, output_tokens=0)
    from_record = estimate([record], POLICIES, PRICES, SETTINGS)
    from_text = estimate([line(timestamp="2026-01-01T00:00:00Z")], POLICIES, PRICES, SETTINGS)
    assert from_record == from_text  # a timestamp without a zone is UTC


# --- admission: the policies, X-Deadline and the batch lane's room, as the router decides ------------------------


@pytest.mark.parametrize(
    ("fields", "batched"),
    [
        ({}, False),  # no rule, no deadline
        ({"headers": None, "metadata": None, "tenant": None, "user": None}, False),  # nulls read as absent
        ({"headers": {"x-workload": "eval"}}, True),  # rule default: 24h
        ({"headers": {"X-Workload": "eval"}}, True),  # header names in any case
        # A batch must be back by the reserve (60 s margin + 30 s to cut) at the prior (3600 s), flushed within 1 s.
        ({"headers": {"x-workload": "eval"}, "deadline": "30m"}, False),
        ({"headers": {"x-workload": "eval"}, "deadline": "3691s"}, True),  # exactly prior + flush + reserve
        ({"headers": {"x-workload": "eval"}, "deadline": "3690s"}, False),
        ({"headers": {"x-workload": "eval"}, "deadline": "now"}, False),  # urgent
        ({"headers": {"x-workload": "eval", "x-deadline": "30m"}}, False),  # X-Deadline among the headers
        ({"headers": {"x-workload": "interactive"}, "deadline": "2h"}, False),  # forbid_deferral
        ({"deadline": "2h"}, True),  # no rule: the caller's deadline alone defers
        ({"deadline": "2026-01-01T06:00:00Z"}, True),  # absolute, relative to the line's timestamp
        ({"metadata": {"workload": "backfill"}}, True),
        ({"metadata": {"workload": "backfill"}, "endpoint": "/v1/moderations"}, False),  # no batch endpoint
        ({"metadata": {"workload": "backfill"}, "path": "/embeddings"}, True),  # /v1 is implied
        ({"tenant": "research"}, True),
        ({"user": "report-daily"}, False),  # auto rule: needs a deadline
        ({"user": "report-daily", "deadline": "4h"}, True),
    ],
)
def test_admission(fields: dict[str, Any], batched: bool) -> None:
    result = estimate([line(**fields)], POLICIES, PRICES, SETTINGS)
    assert result.malformed_lines == 0, result.problems
    assert result.deferred_calls == int(batched)
    assert result.cost_batch_usd_month == pytest.approx(30 * (0.5 if batched else 1.0))


def test_admission_follows_the_settings() -> None:
    eval_line = line(headers={"x-workload": "eval"})  # deadline: now + 24h
    slow = Settings(batch=BatchSettings(turnaround_prior_s=30 * 3600))
    no_batch = Settings(upstreams=[Upstream(name="local", base_url="http://127.0.0.1:1/v1", batch=False)])
    assert estimate([eval_line], POLICIES, PRICES, SETTINGS).deferred_calls == 1
    assert estimate([eval_line], POLICIES, PRICES, slow).deferred_calls == 0
    assert estimate([eval_line], POLICIES, PRICES, no_batch).deferred_calls == 0


# --- unpriced models and malformed lines --------------------------------------------------------------------------


def test_unknown_models_are_counted_not_priced(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        line(),
        line(model="mystery-model", input_tokens=500, output_tokens=100, headers={"x-workload": "eval"}),
        line(model="mystery-model", input_tokens=500, output_tokens=100, timestamp=T0 + 86400),
    ]
    result = estimate(lines, POLICIES, PRICES, SETTINGS)
    assert result.cost_now_usd_month == pytest.approx(30)  # the one priced line, $1 a day
    assert (result.calls, result.deferred_calls, result.unpriced_calls, result.unpriced_tokens) == (3, 1, 2, 1200)
    [unpriced] = result.unpriced_models
    assert (unpriced.model, unpriced.calls, unpriced.deferred_calls, unpriced.tokens) == ("mystery-model", 2, 1, 1200)
    assert unpriced.cost_now_usd_month is unpriced.savings_usd_month is None
    assert [m.model for m in result.models] == ["test-model"]
    estimate_module.render(result, Console(width=120))
    out = capsys.readouterr().out
    assert "Not priced" in out
    assert "mystery-model" in out
    assert "left out of every dollar figure" in out


def test_malformed_lines_are_reported_and_skipped() -> None:
    with (DATA / "malformed.jsonl").open("rb") as file:
        result = estimate(file, POLICIES, PRICES, SETTINGS)
    assert result.malformed_lines == 6
    assert [p.line for p in result.problems] == [2, 3, 4, 5, 6, 9]  # line 7 is blank: skipped, not malformed
    problems = {p.line: p.problem for p in result.problems}
    assert "model" in problems[3]
    assert "yesterday" in problems[4]
    assert problems[5] == "X-Deadline 'soon' is not a deadline"
    assert "cached_tokens" in problems[6]
    assert "input_tokens" in problems[9]
    assert result.calls == 2


def test_problems_kept_are_bounded() -> None:
    result = estimate(["{"] * (estimate_module.MAX_PROBLEMS + 5), POLICIES, PRICES, SETTINGS)
    assert result.malformed_lines == estimate_module.MAX_PROBLEMS + 5
    assert len(result.problems) == estimate_module.MAX_PROBLEMS


# --- the command: output, exit codes ------------------------------------------------------------------------------


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = with_test_config(str(DATA / "small.jsonl"), "--json", "--period-days", "3")
    assert args.func(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["mode"] == "log"
    assert (result["period_days"], result["period_source"], result["month_factor"]) == (3, "flag", 10)
    assert result["cost_now_usd_month"] == pytest.approx(45)  # uncached; $40 as logged
    assert result["cost_logged_usd_month"] == pytest.approx(40)
    assert result["savings_usd_month"] == pytest.approx(17.5)
    by_lever = {lever["lever"]: lever["savings_usd_month"] for lever in result["levers"]}
    assert by_lever == pytest.approx({"batch": 12.5, "flex": 0, "route": 0, "prompt_cache": 5, "answer_cache": 0})
    assert result["prompt_cache"] == {
        "logged_usd_month": pytest.approx(5),
        "added_usd_month": 0,
        "marked_calls": 0,
        "write_tokens": 0,
        "read_tokens": 0,
    }
    assert [m["model"] for m in result["models"]] == ["test-model", "test-cheap"]
    assert set(result["models"][0]) == {
        "model",
        "calls",
        "deferred_calls",
        "tokens",
        "deferred_tokens",
        "cost_now_usd_month",
        "cost_batch_usd_month",
        "savings_usd_month",
    }
    assert captured.err == ""


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    args = with_test_config(str(DATA / "small.jsonl"))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "$135.00" in out and "Cost as logged (its cache hits)" in out and "$120.00" in out
    assert "$52.50 (38.9%)" in out
    assert "prompt_cache: $15.00 a month already in the log's bill" in out
    assert "2 of 3 (66.7%)" in out


def test_malformed_lines_reach_stderr_and_strict_fails(capsys: pytest.CaptureFixture[str]) -> None:
    log = str(DATA / "malformed.jsonl")
    args = with_test_config(log, "--json")
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["malformed_lines"] == 6
    assert f"{log}:2: " in captured.err
    assert f"{log}:9: " in captured.err
    args = with_test_config(log, "--json", "--strict")
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "6 malformed line(s)" in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        (),  # neither a log nor the what-if flags
        ("--what-if-share", "0.4"),  # without --monthly-spend
        ("--monthly-spend", "100"),
        (str(DATA / "small.jsonl"), "--what-if-share", "0.4", "--monthly-spend", "100"),
        (str(DATA / "small.jsonl"), "--batch-ratio", "0.4"),
        (str(DATA / "missing.jsonl"),),
    ],
)
def test_usage_errors_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    args = with_test_config(*argv)
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ")


@pytest.mark.parametrize(
    "argv",
    [
        ("--what-if-share", "1.5"),
        ("--what-if-share", "x"),
        ("--monthly-spend", "-1"),
        ("--batch-ratio", "nan"),
        ("--period-days", "0"),
    ],
)
def test_bad_flag_values_exit_2(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli(*argv)
    assert exc.value.code == 2
    assert "expected a number" in capsys.readouterr().err


def test_batch_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli("--what-if-share", "0.4", "--monthly-spend", "10000", "--batch-ratio", "0.25", "--json")
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["savings_usd_month"] == pytest.approx(3_000)


def test_broken_policies_are_a_config_error() -> None:
    args = cli(str(DATA / "small.jsonl"), "--policies", str(ROOT / "tests" / "data" / "policies_broken"))
    with pytest.raises(ConfigError):  # the CLI's main() turns it into exit 2 with the file and field
        args.func(args)


def test_progress_bar_on_large_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimate_module, "PROGRESS_BYTES", 0)
    with estimate_module._open_log(str(DATA / "small.jsonl"), show_progress=True) as lines:
        result = estimate(lines, POLICIES, PRICES, SETTINGS)
    assert result.cost_now_usd_month == pytest.approx(135)


def test_the_documented_sample_runs_clean_against_the_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli(str(DATA / "sample.jsonl"), "--config", str(ROOT / "config" / "router.yaml"), "--json")
    args.policies, args.pricing = str(ROOT / "policies"), str(SHIPPED_PRICES)
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["calls"], result["malformed_lines"], result["period_days"]) == (30, 0, 2)
    assert result["deferred_calls"] > 0
    assert [m["model"] for m in result["unpriced_models"]] == ["llama-3.1-70b"]


# --- model routes: both halves of the bill, savings by lever ------------------------------------------------------

ROUTE = parse_route({"from": "test-model", "to": ["test-cheap"]})  # predict
CASCADE = msgspec.structs.replace(ROUTE, mode="cascade")
SHADOW = msgspec.structs.replace(ROUTE, mode="shadow")
# One line: 1M input tokens. test-model: $1.00 real time, $0.50 batch; test-cheap: $0.10 and $0.05. One day -> x30.


def levers(result: Any) -> dict[str, float]:
    return {lever.lever: lever.savings_usd_month for lever in result.levers}


def applies_to(result: Any) -> dict[str, float]:
    return {lever.lever: lever.applies_to_usd_month for lever in result.levers}


def routed(*fields: dict[str, Any], route: Any = ROUTE, share: float | None = 0.4, policies: Any = POLICIES) -> Any:
    result = estimate([line(**f) for f in fields], policies, PRICES, SETTINGS, routes=[route], moved_share=share)
    assert result.malformed_lines == 0, result.problems
    # Every lever's savings add up to the savings, as they do in the router's headers, /v1/usage and /metrics.
    assert sum(levers(result).values()) == pytest.approx(result.savings_usd_month, abs=1e-9)
    return result


@pytest.mark.parametrize(
    ("fields", "route", "cost", "by_lever", "moved"),
    [
        # real time: 0.4 x $0.10 + 0.6 x $1.00 = $0.64 a day; the route saves 0.4 x $0.90
        ({}, ROUTE, 19.2, {"route": 10.8, "batch": 0.0}, 0.4),
        # deferred: 0.4 x $0.05 + 0.6 x $0.50 = $0.32; route 0.4 x $0.90 = $0.36; batch 0.6 x $0.50 + 0.4 x $0.05
        ({"headers": {"x-workload": "eval"}}, ROUTE, 9.6, {"route": 10.8, "batch": 9.6}, 0.4),
        # X-Router-Route: force moves the call whatever the share; off keeps it
        ({"headers": {"X-Router-Route": "force"}}, ROUTE, 3.0, {"route": 27.0, "batch": 0.0}, 1.0),
        ({"headers": {"x-router-route": "off"}}, ROUTE, 30.0, {"route": 0.0, "batch": 0.0}, 0.0),
        # cascade: every call pays the cheap one ($0.10), 0.6 of them the asked-for one too: $0.70 a day;
        # the route lever: 0.4 x $0.90 kept, less 0.6 x $0.10 thrown away = $0.30
        ({}, CASCADE, 21.0, {"route": 9.0, "batch": 0.0}, 0.4),
        # a cascade covers real-time chat calls only: a deferred call and an embedding keep their model
        ({"headers": {"x-workload": "eval"}}, CASCADE, 15.0, {"route": 0.0, "batch": 15.0}, 0.0),
        ({"endpoint": "/v1/embeddings"}, CASCADE, 30.0, {"route": 0.0, "batch": 0.0}, 0.0),
        # shadow moves nothing
        ({}, SHADOW, 30.0, {"route": 0.0, "batch": 0.0}, 0.0),
    ],
)
def test_a_route_moves_its_share_and_books_each_lever_as_the_router_does(
    fields: dict[str, Any], route: Any, cost: float, by_lever: dict[str, float], moved: float
) -> None:
    result = routed(fields, route=route)
    assert result.cost_now_usd_month == pytest.approx(30)
    assert result.cost_batch_usd_month == pytest.approx(cost)
    assert result.savings_usd_month == pytest.approx(30 - cost)
    assert {k: levers(result)[k] for k in by_lever} == pytest.approx(by_lever)
    assert levers(result)["flex"] == 0
    [projected] = result.routes
    covered = 0 if "off" in str(fields) else 1  # a call that opts out is not the route's
    assert (projected.route, projected.mode, projected.calls) == ("test-model>test-cheap", route.mode, covered)
    assert projected.moved_calls == pytest.approx(moved)
    assert projected.savings_usd_month == pytest.approx(by_lever["route"])
    assert projected.cost_now_usd_month == pytest.approx(30 * covered)  # the route covers the call, moved or not


def test_the_levers_act_on_their_part_of_the_bill() -> None:
    # Two calls a day: one deferred, one real time; 0.4 of each moves. Batch acts on the deferred call's real-time
    # price ($30 a month), the route on both ($60): the deferred call's batch savings are booked on the model that
    # answered it, as the router books them.
    result = routed({"headers": {"x-workload": "eval"}}, {})
    nothing = {"flex": 0.0, "prompt_cache": 0.0, "answer_cache": 0.0}
    assert applies_to(result) == pytest.approx({"batch": 30.0, "route": 60.0} | nothing)
    assert levers(result) == pytest.approx({"batch": 9.6, "route": 21.6} | nothing)
    by_lever = {lever.lever: lever for lever in result.levers}
    assert by_lever["route"].savings_pct == pytest.approx(36)
    assert by_lever["route"].bill_pct == pytest.approx(36)
    assert by_lever["batch"].savings_pct == pytest.approx(32)


def test_shadow_calls_are_the_price_of_learning_not_savings() -> None:
    shadow = parse_route({"from": "test-model", "to": ["test-cheap"], "mode": "shadow", "shadow_rate": 0.05})
    result = routed({}, {"headers": {"x-workload": "eval"}}, route=shadow)
    assert result.savings_usd_month == pytest.approx(15)  # the batch lever alone
    # 0.05 x $0.10 a day for the real-time call; the batched one is not shadowed
    assert result.learning_usd_month == pytest.approx(0.15)
    assert result.routes[0].learning_usd_month == pytest.approx(0.15)


def test_default_moved_share_is_the_measured_one() -> None:
    assert estimate_module.DEFAULT_MOVED_SHARE == {"predict": 0.39, "cascade": 0.41, "shadow": 0.0}
    result = routed({}, share=None)
    assert result.routes[0].moved_share == 0.39
    assert levers(result)["route"] == pytest.approx(0.39 * 0.9 * 30)


def test_policy_rules_turn_a_route_off_or_change_its_mode(tmp_path: Path) -> None:
    (tmp_path / "10-routes.yaml").write_text(
        "rules:\n"
        # Quoted: YAML reads a bare `off` as false.
        '  - name: legal\n    match: {headers: {x-team: legal}}\n    route: "off"\n'
        "  - name: math\n    match: {headers: {x-team: math}}\n    route: {mode: cascade}\n"
    )
    policies = load_policies(tmp_path)
    assert routed({"headers": {"x-team": "legal"}}, policies=policies).cost_batch_usd_month == pytest.approx(30)
    assert routed({"headers": {"x-team": "math"}}, policies=policies).cost_batch_usd_month == pytest.approx(21)
    assert routed({"headers": {"x-team": "sales"}}, policies=policies).cost_batch_usd_month == pytest.approx(19.2)


def test_routes_cover_their_exact_model_and_come_from_the_config_too() -> None:
    other = line(model="test-cheap", input_tokens=10 * M)  # $1.00 a day, no route of its own
    configured = Settings(routes=[ROUTE])
    result = estimate([line(), other], POLICIES, PRICES, configured, moved_share=0.4)
    assert result.cost_batch_usd_month == pytest.approx(19.2 + 30)
    assert [r.route for r in result.routes] == ["test-model>test-cheap"]
    assert estimate([line()], POLICIES, PRICES, configured, routes=[]).routes == []  # routes given: the config's not


def test_a_bad_x_router_route_is_a_malformed_line() -> None:
    result = estimate([line(headers={"x-router-route": "maybe"})], POLICIES, PRICES, SETTINGS, routes=[ROUTE])
    assert result.malformed_lines == 1
    assert "X-Router-Route" in result.problems[0].problem


def both_halves_log(path: Path) -> None:
    """The $10k use case as a log: 100 calls over 0.45 days cost $150 in real time ($10,000 a month); 20 gpt-4o-mini
    calls a policy defers cost $60 of it (40%), 80 urgent gpt-4o calls the other $90 (60%, $1.125 each: 112,500
    output tokens at $10/1M)."""
    span = 0.45 * 86400
    with path.open("w") as file:
        for i in range(100):
            record: dict[str, Any] = {"timestamp": T0 + i * span / 99, "model": "gpt-4o", "input_tokens": 0}
            if i < 20:  # 20M input tokens at $0.15/1M = $3.00 each, deferred by a header rule
                record |= {"model": "gpt-4o-mini", "input_tokens": 20 * M, "output_tokens": 0}
                record["headers"] = {"x-workload": "eval"}
            else:
                record["output_tokens"] = 112_500
            file.write(json.dumps(record) + "\n")


@pytest.mark.parametrize(
    ("share", "route_usd", "total_usd", "printed"),
    [
        # gpt-4o-mini costs 6% of gpt-4o: moving half the urgent $6,000 saves 0.5 x 0.94 x $6,000 = $2,820
        ("0.5", 2_820.0, 4_820.0, ("$2,820.00", "47.0%", "$4,820.00 (48.2%)")),
        # the default, 39% (MMLU, docs/routing.md): 0.39 x 0.94 x $6,000 = $2,199.60
        (None, 2_199.6, 4_199.6, ("$2,199.60", "36.7%", "$4,199.60 (42.0%)")),
    ],
)
def test_both_halves_of_the_bill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], share: str | None, route_usd: float, total_usd: float,
    printed: tuple[str, ...],
) -> None:  # fmt: skip
    log = DATA / "both_halves.jsonl"  # docs/estimate.md runs it
    both_halves_log(tmp_path / "both.jsonl")
    assert log.read_text() == (tmp_path / "both.jsonl").read_text()
    flags: tuple[str, ...] = (
        "--pricing",
        str(SHIPPED_PRICES),
        "--policies",
        str(DATA / "policies"),
        "--route",
        "gpt-4o=gpt-4o-mini",
    )
    flags += ("--moved-share", share) if share else ()
    args = cli(str(log), *flags, "--json")
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cost_now_usd_month"] == pytest.approx(10_000)
    by_lever = {lever["lever"]: lever for lever in result["levers"]}
    assert by_lever["batch"]["savings_usd_month"] == pytest.approx(2_000)  # 40% of the bill at half price
    assert by_lever["batch"]["applies_to_usd_month"] == pytest.approx(4_000)
    assert by_lever["route"]["savings_usd_month"] == pytest.approx(route_usd)
    assert by_lever["route"]["applies_to_usd_month"] == pytest.approx(6_000)  # the urgent 60%
    assert result["savings_usd_month"] == pytest.approx(total_usd)
    [route] = result["routes"]
    assert (route["route"], route["calls"], route["moved_calls"]) == (
        "gpt-4o>gpt-4o-mini",
        80,
        pytest.approx(80 * 0.5 if share else 80 * 0.39),
    )
    args = cli(str(log), *flags)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "$2,000.00" in out and "Savings by lever" in out and "Cost with the router" in out
    for text in printed:
        assert text in out


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (
            ("--what-if-share", "0.4", "--monthly-spend", "100", "--route", "test-model=test-cheap"),
            "need a request log",
        ),
        (("--what-if-share", "0.4", "--monthly-spend", "100", "--moved-share", "0.5"), "need a request log"),
        ((str(DATA / "small.jsonl"), "--route", "test-model=nothing-priced"), "nothing-priced has no price"),
    ],
)
def test_route_usage_errors_exit_2(argv: tuple[str, ...], error: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = with_test_config(*argv)
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert error in captured.err


@pytest.mark.parametrize("value", ["gpt-4o", "gpt-4o=gpt-4o", "gpt-4o=", "=gpt-4o-mini"])
def test_bad_route_flags_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli("--route", value)
    assert exc.value.code == 2
    assert "--route" in capsys.readouterr().err


def test_moved_share_must_be_a_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli("--moved-share", "1.5")
    assert "expected a number" in capsys.readouterr().err


# --- the answer cache: repeats of a deterministic call, where the log carries request bodies ---------------------


def cached_log(*bodies: dict[str, Any], gap_s: float = 60.0, **fields: Any) -> list[str]:
    """One call a minute over one day's log ($1 each in real time), each with the given request body."""
    return [line(timestamp=T0 + i * gap_s, body=body, **fields) for i, body in enumerate(bodies)]


ZERO = {"messages": [{"role": "user", "content": "grade 1"}], "temperature": 0}


def test_the_answer_cache_answers_repeats_of_deterministic_calls_where_it_is_on() -> None:
    on = Settings(tenants={"evals": TenantLimits(answer_cache=True)})
    sampled = ZERO | {"temperature": 0.7}
    other = {"messages": [{"role": "user", "content": "grade 2"}], "temperature": 0}
    log = cached_log(ZERO, ZERO, sampled, sampled, other, ZERO, tenant="evals")
    result = estimate(log, POLICIES, PRICES, on, period_days=30)
    # six $1 calls; the 2nd and 6th repeat the 1st: free, on the answer_cache lever; sampled calls are never looked up
    assert result.cost_now_usd_month == pytest.approx(6) and result.cost_batch_usd_month == pytest.approx(4)
    assert levers(result)["answer_cache"] == pytest.approx(2) == result.savings_usd_month
    assert applies_to(result)["answer_cache"] == pytest.approx(4)  # the deterministic calls it looked up
    assert result.deferred_calls == 0
    off = estimate(log, POLICIES, PRICES, SETTINGS, period_days=30)  # off by default
    assert levers(off)["answer_cache"] == 0 and off.savings_usd_month == 0
    other_tenant = estimate(cached_log(ZERO, ZERO, tenant="support"), POLICIES, PRICES, on, period_days=30)
    assert levers(other_tenant)["answer_cache"] == 0


def test_the_answer_cache_keeps_answers_for_its_ttl_and_its_bound() -> None:
    short = Settings(answer_cache=AnswerCacheSettings(enabled=True, ttl_s=90, max_entries=1))
    late = estimate(cached_log(ZERO, ZERO, ZERO, gap_s=100), POLICIES, PRICES, short, period_days=30)
    assert levers(late)["answer_cache"] == 0  # each repeat came after its twin's TTL
    other = {"messages": [{"role": "user", "content": "grade 2"}], "temperature": 0}
    evicted = estimate(cached_log(ZERO, other, ZERO, gap_s=10), POLICIES, PRICES, short, period_days=30)
    assert levers(evicted)["answer_cache"] == 0  # one answer per tenant: `other` evicted the first
    kept = estimate(cached_log(ZERO, ZERO, gap_s=10), POLICIES, PRICES, short, period_days=30)
    assert levers(kept)["answer_cache"] == pytest.approx(1)


def test_a_batch_answer_is_kept_from_its_deadline_on() -> None:
    on = Settings(answer_cache=AnswerCacheSettings(enabled=True))
    eval_call = {"headers": {"x-workload": "eval"}, "body": ZERO}  # the test policies batch it within 24 h
    log = [
        line(timestamp=T0, **eval_call),
        line(timestamp=T0 + 600, body=ZERO),  # before the batch is back: a miss, answered now and kept
        line(timestamp=T0 + 700, body=ZERO),  # a hit
    ]
    result = estimate(log, POLICIES, PRICES, on, period_days=30)
    assert levers(result)["answer_cache"] == pytest.approx(1)
    early = [line(timestamp=T0, **eval_call), line(timestamp=T0 + 23 * 3600, body=ZERO)]
    assert levers(estimate(early, POLICIES, PRICES, on, period_days=30))["answer_cache"] == 0
    later = [line(timestamp=T0, **eval_call), line(timestamp=T0 + 24.5 * 3600, body=ZERO)]
    assert levers(estimate(later, POLICIES, PRICES, on, period_days=30))["answer_cache"] == pytest.approx(1)


# --- the prompt cache: the log's own cached tokens, and the router's Anthropic breakpoints on logged bodies -------

SHIPPED = load_pricing(SHIPPED_PRICES)  # claude-sonnet-4-5: $3 in, $0.30 cached read, $3.75 5-minute write per 1M
CLAUDE = "claude-sonnet-4-5"
ANTHROPIC = Settings(
    upstreams=[
        Upstream(name="anthropic", kind="anthropic", base_url="https://api.anthropic.com", models=["claude-*"]),
        Upstream(name="openai", base_url="https://api.openai.com/v1"),
    ]
)
SYSTEM = "You answer support questions about the product. " * 245  # 12,005 characters, the same in every call


def messages_body(question: str, model: str = CLAUDE) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "system": SYSTEM, "messages": [{"role": "user", "content": question}]}


def claude_log(*tenants: str, gap_s: float = 60.0, model: str = CLAUDE, **fields: Any) -> list[str]:
    """One /v1/messages call per tenant given, `gap_s` apart: a shared system prompt, a new question each time;
    4,000 input tokens a call, no output."""
    return [
        line(
            timestamp=T0 + i * gap_s,
            model=model,
            endpoint="/v1/messages",
            input_tokens=4000,
            tenant=tenant,
            body=messages_body(f"question {i}", model),
            **fields,
        )
        for i, tenant in enumerate(tenants)
    ]


def prefix_tokens() -> int:
    """The system prefix's tokens as the router estimates them (JSON bytes / 4, core/prompt_cache.py)."""
    found = prompt_cache.candidates(messages_body("q"), "messages", "t", CLAUDE)
    assert [c.where for c in found] == ["system"]
    return found[0].tokens


def test_a_repeated_long_anthropic_prefix_is_written_on_its_first_repeat_then_read() -> None:
    prefix = prefix_tokens()
    assert prefix == (len(SYSTEM) + len('[[],[""]]')) // 4 >= prompt_cache.min_cacheable_tokens(CLAUDE)
    result = estimate(claude_log("t", "t", "t", "t"), POLICIES, SHIPPED, ANTHROPIC, period_days=30)  # x1
    # 1st call: never seen, unmarked, plain price. 2nd: seen again within ttl_s, marked; nothing cached yet: the
    # prefix is written at 1.25x ($3.75 vs $3 per 1M). 3rd and 4th: read at 0.1x ($0.30).
    saved = (2 * prefix * (3.0 - 0.3) - prefix * (3.75 - 3.0)) / M
    assert result.cost_now_usd_month == pytest.approx(4 * 4000 * 3.0 / M)
    assert result.cost_logged_usd_month == result.cost_now_usd_month  # the log paid no caching
    assert levers(result) == pytest.approx(
        {"batch": 0, "flex": 0, "route": 0, "prompt_cache": saved, "answer_cache": 0}
    )
    assert result.savings_usd_month == pytest.approx(saved)
    assert sum(levers(result).values()) == pytest.approx(result.savings_usd_month, abs=1e-12)
    assert applies_to(result)["prompt_cache"] == pytest.approx(3 * 4000 * 3.0 / M)  # the three marked calls
    pc = result.prompt_cache
    assert (pc.marked_calls, pc.write_tokens, pc.read_tokens) == (3, prefix, 2 * prefix)
    assert pc.logged_usd_month == 0 and pc.added_usd_month == pytest.approx(saved)


def test_the_prompt_cache_projection_follows_the_ttl() -> None:
    prefix = prefix_tokens()
    late = estimate(claude_log("t", "t", "t", gap_s=301), POLICIES, SHIPPED, ANTHROPIC, period_days=30)
    assert late.prompt_cache.marked_calls == 0 and levers(late)["prompt_cache"] == 0  # never seen again in time
    # The router counts a prefix seen for 15 minutes, the provider keeps it 5: every marked call 400 s after the
    # last one finds it gone and writes it again, which costs more than it saves.
    long_ttl = Settings(upstreams=ANTHROPIC.upstreams, prompt_cache=PromptCacheSettings(ttl_s=900))
    rewrites = estimate(claude_log("t", "t", "t", gap_s=400), POLICIES, SHIPPED, long_ttl, period_days=30)
    assert (rewrites.prompt_cache.write_tokens, rewrites.prompt_cache.read_tokens) == (2 * prefix, 0)
    assert levers(rewrites)["prompt_cache"] == pytest.approx(-2 * prefix * 0.75 / M)
    assert rewrites.savings_usd_month == pytest.approx(levers(rewrites)["prompt_cache"])


def test_the_prompt_cache_counts_sightings_per_tenant() -> None:
    prefix = prefix_tokens()
    apart = estimate(claude_log("a", "b"), POLICIES, SHIPPED, ANTHROPIC, period_days=30)
    assert apart.prompt_cache.marked_calls == 0 and apart.savings_usd_month == 0  # each tenant saw it once
    # a, b, a, b: each tenant's second call is marked; a's writes, b's then reads what a's wrote (one API key, one
    # provider cache), as Anthropic bills it.
    both = estimate(claude_log("a", "b", "a", "b"), POLICIES, SHIPPED, ANTHROPIC, period_days=30)
    pc = both.prompt_cache
    assert (pc.marked_calls, pc.write_tokens, pc.read_tokens) == (2, prefix, prefix)
    assert levers(both)["prompt_cache"] == pytest.approx(prefix * (2.7 - 0.75) / M)


def test_the_projection_leaves_openai_own_marks_and_switched_off_calls_as_logged() -> None:
    openai_calls = claude_log("t", "t", "t", model="gpt-4o")  # OpenAI caches by itself: cached_tokens show it
    assert estimate(openai_calls, POLICIES, SHIPPED, ANTHROPIC, period_days=30).savings_usd_month == 0
    off = Settings(upstreams=ANTHROPIC.upstreams, prompt_cache=PromptCacheSettings(enabled=False))
    assert estimate(claude_log("t", "t", "t"), POLICIES, SHIPPED, off, period_days=30).savings_usd_month == 0
    marked = messages_body("q") | {"system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]}
    own = [line(timestamp=T0 + i, model=CLAUDE, endpoint="/v1/messages", body=marked) for i in range(3)]
    assert estimate(own, POLICIES, SHIPPED, ANTHROPIC, period_days=30).prompt_cache.marked_calls == 0


def test_a_log_without_bodies_shows_only_its_own_caching(capsys: pytest.CaptureFixture[str]) -> None:
    # 2 calls of 4,000 input tokens, 3,000 of them read from the cache: $3 - $0.30 off per 1M cached tokens.
    log = [line(timestamp=T0 + i, model=CLAUDE, input_tokens=4000, cached_tokens=3000) for i in range(2)]
    result = estimate(log, POLICIES, SHIPPED, ANTHROPIC, period_days=30)
    saved = 2 * 3000 * 2.7 / M
    assert levers(result)["prompt_cache"] == pytest.approx(saved) == result.savings_usd_month
    assert result.cost_now_usd_month - result.cost_logged_usd_month == pytest.approx(saved)
    assert result.prompt_cache.logged_usd_month == pytest.approx(saved)
    assert (result.prompt_cache.added_usd_month, result.prompt_cache.marked_calls) == (0, 0)


def test_a_deferred_call_books_its_cache_reads_on_prompt_cache_and_the_rest_on_batch() -> None:
    # The same four calls, marked for the batch lane: the cache's rates are the batch tier's (half of each), the
    # baseline the real-time uncached price; the levers still add up to the savings.
    prefix = prefix_tokens()
    deferred = claude_log("t", "t", "t", "t", headers={"x-workload": "eval"})
    result = estimate(deferred, POLICIES, SHIPPED, ANTHROPIC, period_days=30)
    assert result.deferred_calls == 4
    cache = (2 * prefix * (1.5 - 0.15) - prefix * (1.875 - 1.5)) / M
    assert levers(result)["prompt_cache"] == pytest.approx(cache)
    assert levers(result)["batch"] == pytest.approx(4 * 4000 * 1.5 / M)
    assert sum(levers(result).values()) == pytest.approx(result.savings_usd_month, abs=1e-12)
