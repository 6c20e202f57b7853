"""Cascade checks on a cheap answer, worked arithmetic, and the keep-or-escalate decision."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.model_routes import CascadeChecks, parse_route
from router.modelroutes.arithmetic import check_arithmetic, evaluate, matches
from router.modelroutes.cascade import bucket, decide_cascade, evidence_key
from router.modelroutes.checks import (
    answer_text,
    check_answer,
    final_answer,
    json_problem,
    logprob_quantile,
    refused,
    tool_problems,
)
from router.modelroutes.evidence import observe
from router.modelroutes.plan import make_plan

GSM8K = r"####\s*\$?(-?[\d,]+)\s*$"
CHECKS = CascadeChecks()
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}  # fmt: skip
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": PERSON}}]


def chat(content: str | None = "ok", finish: str = "stop", **message: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message},
                         "finish_reason": finish}]}  # fmt: skip


def request(**body: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], **body}


def schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}


@pytest.mark.parametrize(
    ("case", "body", "response", "failed"),
    [
        ("a plain answer", request(), chat("Hello!"), []),
        ("cut at max_tokens", request(), chat("Hello", finish="length"), ["finish_reason"]),
        ("filtered", request(), chat("", finish="content_filter"), ["finish_reason"]),
        ("tool calls with tools offered", request(tools=TOOLS),
         chat(None, "tool_calls", tool_calls=[{"id": "1", "type": "function",
              "function": {"name": "lookup", "arguments": '{"name": "Ada", "age": 36}'}}]), []),
        ("tool calls with no tools offered", request(), chat(None, "tool_calls"), ["finish_reason"]),
        ("JSON object asked, text given", request(response_format={"type": "json_object"}), chat("Sure: {}"), ["json"]),
        ("JSON object asked and given", request(response_format={"type": "json_object"}), chat('{"a": 1}'), []),
        ("schema met", request(response_format=schema_format(PERSON)), chat('{"name": "Ada", "age": 36}'), []),
        ("schema broken", request(response_format=schema_format(PERSON)), chat('{"name": "Ada", "age": -1}'),
         ["json_schema"]),
        ("refusal field", request(), chat(None, refusal="I can't help with that."), ["refusal"]),
        ("refusal phrase", request(), chat("I'm sorry, but I can't assist with that request."), ["refusal"]),
        ("sorry inside an answer is no refusal", request(), chat("The word 'sorry' is an adjective."), []),
    ],
)  # fmt: skip
def test_hard_checks(case: str, body: dict[str, Any], response: dict[str, Any], failed: list[str]) -> None:
    assert check_answer(body, response, CHECKS).failed == failed, case


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ('{"name": "Ada", "age": 36}', None),
        ('{"name": "Ada"}', "'age' is a required property"),
        ('{"name": "Ada", "age": "old"}', "is not of type 'integer'"),
        ("{not json", "arguments not JSON"),
    ],
)
def test_tool_arguments_are_checked_against_the_tools_schema(arguments: str, problem: str | None) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}
    problems = tool_problems(request(tools=TOOLS), chat(None, "tool_calls", tool_calls=[call]))
    assert (problems == []) if problem is None else (len(problems) == 1 and problem in problems[0])


def test_a_tool_that_was_not_offered_is_a_problem() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "delete_all", "arguments": "{}"}}
    assert tool_problems(request(tools=TOOLS), chat(None, "tool_calls", tool_calls=[call])) == [
        "delete_all: not offered"
    ]


def test_anthropic_shaped_answers_are_checked_too() -> None:
    tools = [{"name": "lookup", "input_schema": PERSON}]
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "Hi"}], "tools": tools}
    good = {"content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {"name": "Ada", "age": 3}}],
            "stop_reason": "tool_use"}  # fmt: skip
    bad = {
        "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {"age": 3}}],
        "stop_reason": "tool_use",
    }
    assert check_answer(body, good, CHECKS).failed == []
    assert check_answer(body, bad, CHECKS).failed == ["tool_arguments"]
    text = {"content": [{"type": "text", "text": "Hello"}], "stop_reason": "max_tokens"}
    assert answer_text(text) == "Hello"
    assert check_answer(body, text, CHECKS).failed == ["finish_reason"]


def test_a_broken_schema_from_the_caller_is_not_blamed_on_the_answer() -> None:
    assert json_problem('{"a": 1}', schema_format({"type": "no-such-type"})) is None


def test_the_logprob_signal_is_a_low_quantile_not_the_mean() -> None:
    logprobs = [-0.01] * 18 + [-3.0, -6.0]  # confident tokens, two very unsure ones
    response = chat("x")
    response["choices"][0]["logprobs"] = {"content": [{"token": "t", "logprob": lp} for lp in logprobs]}
    assert logprob_quantile(response, 0.1) == -3.0
    assert logprob_quantile(response, 0.05) == -6.0
    assert sum(logprobs) / len(logprobs) > -0.5  # the mean would look confident
    assert logprob_quantile(chat("x"), 0.1) is None


@pytest.mark.parametrize(
    ("text", "found"),
    [("Step 1 ...\n#### 18", "18"), ("#### 1,080\n", "1,080"), ("The answer is 18.", None), ("#### 4.5", None),
     ("#### 3\nwait, #### 5", "5")],
)  # fmt: skip
def test_the_final_answer_pattern(text: str, found: str | None) -> None:
    assert final_answer(text, GSM8K) == found


def test_a_missing_final_answer_escalates_when_the_route_asks_for_one() -> None:
    checks = CascadeChecks(final_answer=GSM8K)
    assert check_answer(request(), chat("The answer is 18."), checks).failed == ["final_answer"]
    assert check_answer(request(), chat("9 * 2 = 18\n#### 18"), checks).final == "18"


@pytest.mark.parametrize(
    ("expression", "value"),
    [("3*60", 180.0), ("3 x 60", 180.0), ("(2+3)*4", 20.0), ("10/4", 2.5), ("1,000 \u00d7 2", 2000.0),
     ("50% * 80", 40.0), ("-3+1", -2.0), ("2**10", None), ("__import__('os')", None), ("1/0", None)],
)  # fmt: skip
def test_the_evaluator_takes_plain_arithmetic_only(expression: str, value: float | None) -> None:
    assert evaluate(expression) == value


def test_a_stated_result_is_right_to_the_precision_it_shows() -> None:
    assert matches(10 / 3, "3.33")
    assert matches(10 / 3, "3.3")
    assert not matches(10 / 3, "3.4")
    assert matches(1080, "1,080")


@pytest.mark.parametrize(
    ("answer", "final", "wrong", "final_is_last"),
    [
        ("3 sprints of 60 m: 3*60 = <<3*60=180>>180 m. Times 3: <<180*3=540>>540.\n#### 540", "540", 0, True),
        ("<<3*60=190>>190 m, then <<190*3=570>>570.\n#### 570", "570", 1, True),
        ("<<3*60=180>>180 m in all.\n#### 200", "200", 0, False),
        ("3 x 60 = 180 metres, and 180 x 3 = 540.\n#### 540", "540", 0, True),
        ("No steps here.\n#### 540", "540", 0, None),
    ],
)
def test_worked_arithmetic(answer: str, final: str, wrong: int, final_is_last: bool | None) -> None:
    report = check_arithmetic(answer, "He runs 3 sprints 3 times a week, 60 meters each.", final)
    assert (report.wrong, report.final_is_last) == (wrong, final_is_last)
    assert report.consistent is (wrong == 0 and final_is_last is not False)


def test_the_share_of_the_prompts_numbers_an_answer_uses() -> None:
    assert check_arithmetic("3 and 60", "3, 60, 7 and 9").prompt_numbers_used == 0.5
    assert check_arithmetic("anything", "no numbers").prompt_numbers_used is None


@given(st.integers(-10_000, 10_000), st.integers(-10_000, 10_000))
def test_correct_annotations_are_never_counted_wrong(a: int, b: int) -> None:
    report = check_arithmetic(f"<<{a}*{b}={a * b}>>{a * b}\n<<{a}+{b}={a + b}>>{a + b}", "", str(a + b))
    assert (report.steps, report.wrong, report.final_is_last) == (2, 0, True)


ROUTE = parse_route({"from": "gpt-4o", "to": ["gpt-4o-mini"], "mode": "cascade", "allocation": "per_task",
                     "cascade": {"final_answer": GSM8K, "arithmetic": True, "length_edges": [100]}})  # fmt: skip


def test_buckets_name_the_soft_signals() -> None:
    good = check_answer(request(), chat("<<2*3=6>>6\n#### 6"), ROUTE.cascade)
    bad = check_answer(request(), chat("<<2*3=7>>7\n#### 7"), ROUTE.cascade)
    long = check_answer(request(), chat("x" * 200 + "\n<<2*3=6>>6\n#### 6"), ROUTE.cascade)
    assert (bucket(good, ROUTE.cascade), bucket(bad, ROUTE.cascade), bucket(long, ROUTE.cascade)) == (
        "a2.n0", "a0.n0", "a2.n1")  # fmt: skip
    assert evidence_key("math", bad, ROUTE.cascade) == "math|a0.n0"
    failed = check_answer(request(), chat("no final"), ROUTE.cascade)
    assert evidence_key("math", failed, ROUTE.cascade) == "math|failed"


def test_a_cascade_keeps_what_passes_until_evidence_says_otherwise() -> None:
    good = check_answer(request(), chat("<<2*3=6>>6\n#### 6"), ROUTE.cascade)
    bad = check_answer(request(), chat("<<2*3=7>>7\n#### 7"), ROUTE.cascade)
    missing = check_answer(request(), chat("about six"), ROUTE.cascade)
    assert decide_cascade(ROUTE, None, "math", missing, "k").verdict == "escalate"
    assert decide_cascade(ROUTE, None, "math", missing, "k").reason == "final_answer"
    assert decide_cascade(ROUTE, None, "math", bad, "k").reason == "checks_passed"  # no evidence yet: checks decide

    def pairs(agree: int, miss: int) -> Any:
        stats = None
        for a, b in [(True, True)] * agree + [(True, False)] * miss:
            stats = observe(stats, a, b, now=0, half_life_s=ROUTE.half_life_s)
        return {"gpt-4o-mini": stats}

    evidence = {"math|a2.n0": pairs(30, 0), "math|a0.n0": pairs(3, 7)}
    plan = make_plan(ROUTE, evidence, now=0, price=lambda m, i, o: 1.0, cascade=True)
    kept, escalated = decide_cascade(ROUTE, plan, "math", good, "k"), decide_cascade(ROUTE, plan, "math", bad, "k")
    assert (kept.verdict, kept.reason) == ("keep", "evidence")
    assert (escalated.verdict, escalated.reason) == ("escalate", "below_target")


def test_refusal_detection_can_be_turned_off() -> None:
    response = chat("I cannot help with that.")
    assert refused(response, answer_text(response))
    assert check_answer(request(), response, CascadeChecks(refusal=False)).failed == []
    assert json.dumps(check_answer(request(), response, CHECKS).failed) == '["refusal"]'
