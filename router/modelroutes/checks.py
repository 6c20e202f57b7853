"""Checks on a cheap answer, for `cascade` mode: pure functions over the request and the parsed response.

Hard checks (any failure escalates to the asked-for model): the answer did not finish (`finish_reason` other than
`stop`, or `tool_calls` when tools were offered; Anthropic's `stop_reason` likewise); JSON asked for and not
given, or not valid against `response_format`'s JSON Schema; tool-call arguments that are not JSON or not valid
against the called tool's `parameters` schema, or a tool that was not offered; a refusal (the `refusal` field, or
a refusal phrase opening the answer); and, when the route configures one, no final answer matching its pattern.

Soft signals (evidence per bucket decides, cascade.py): a low quantile of the answer's token logprobs where the
upstream returns them (Gupta et al., 2024: a low quantile beats the mean as an escalation signal), the answer's
length, and the consistency of its worked arithmetic (arithmetic.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema
import msgspec

from router.core.model_routes import CascadeChecks
from router.modelroutes.arithmetic import Arithmetic, check_arithmetic
from router.modelroutes.tasks import features

_REFUSAL_RE = re.compile(
    r"^\W*(i'?m sorry,? but|i am sorry,? but|sorry,? (but )?i (can'?t|cannot)|i (can'?t|cannot|won'?t|am unable to|"
    r"am not able to) (help|assist|comply|provide|do that|fulfil)|as an ai\b)",
    re.IGNORECASE,
)
_STOPPED = {"stop", "end_turn", "stop_sequence"}
_TOOL_STOPS = {"tool_calls", "function_call", "tool_use"}


class CheckReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the checks found in one answer."""

    failed: list[str]
    """Hard checks that failed (`finish_reason`, `json`, `json_schema`, `tool_arguments`, `refusal`,
    `final_answer`): any of them escalates."""
    length: int
    """Characters of the answer's text."""
    prompt_length: int = 0
    """Characters of the request's prompt."""
    logprob: float | None
    """The configured low quantile of the answer's token logprobs; None when the upstream returned none."""
    arithmetic: Arithmetic | None
    """The consistency of the answer's worked arithmetic, when the route checks it."""
    final: str | None
    """The final answer the route's pattern found (its first group, else the whole match)."""

    @property
    def passed(self) -> bool:
        """No hard check failed."""
        return not self.failed


def answer_text(response: Mapping[str, Any]) -> str:
    """The text of the first choice (OpenAI chat or completions) or of the content blocks (Anthropic)."""
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping):
            content = message.get("content")
            return content if isinstance(content, str) else ""
        text = choices[0].get("text")
        return text if isinstance(text, str) else ""
    blocks = response.get("content")
    if isinstance(blocks, list):
        return "".join(b["text"] for b in blocks if isinstance(b, Mapping) and isinstance(b.get("text"), str))
    return ""


def _choice(response: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return {}


def finished(request: Mapping[str, Any], response: Mapping[str, Any]) -> bool:
    """Whether the answer ended by itself (`stop`), or with tool calls when tools were offered."""
    choice = _choice(response)
    reason = choice.get("finish_reason") if choice else response.get("stop_reason")
    return reason in _STOPPED or (reason in _TOOL_STOPS and bool(request.get("tools") or request.get("functions")))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_problem(instance: Any, schema: Mapping[str, Any]) -> str | None:
    """Why `instance` is not valid against `schema` (None when it is, or when the schema itself is unusable)."""
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except (jsonschema.SchemaError, TypeError, ValueError):
        return None  # the caller's schema is broken: the cheap answer cannot be blamed for it
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    return None if error is None else error.message


def json_problem(text: str, response_format: Any) -> str | None:
    """`json` or `json_schema` when the answer fails the JSON `response_format` asked for, else None."""
    if not isinstance(response_format, Mapping) or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return "json"
    if response_format.get("type") == "json_object":
        return None if isinstance(value, dict) else "json"
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if isinstance(schema, Mapping) and schema_problem(value, schema) is not None:
        return "json_schema"
    return None


def _tool_schemas(request: Mapping[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for tool in request.get("tools") or []:
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function") if tool.get("type") == "function" else tool  # OpenAI, or Anthropic's shape
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            schemas[function["name"]] = function.get("parameters", function.get("input_schema"))
    return schemas


def tool_problems(request: Mapping[str, Any], response: Mapping[str, Any]) -> list[str]:
    """For each tool call: `<name>: not offered`, `<name>: arguments not JSON`, or the schema violation."""
    schemas = _tool_schemas(request)
    calls: list[tuple[str, Any]] = []
    message = _choice(response).get("message")
    for call in (message.get("tool_calls") if isinstance(message, Mapping) else None) or []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            calls.append((str(function.get("name")), function.get("arguments")))
    for block in response.get("content") or [] if not message else []:
        if isinstance(block, Mapping) and block.get("type") == "tool_use":
            calls.append((str(block.get("name")), block.get("input")))
    problems = []
    for name, arguments in calls:
        if name not in schemas:
            problems.append(f"{name}: not offered")
            continue
        try:
            value = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            problems.append(f"{name}: arguments not JSON")
            continue
        schema = schemas[name]
        if isinstance(schema, Mapping) and (problem := schema_problem(value, schema)) is not None:
            problems.append(f"{name}: {problem}")
    return problems


def refused(response: Mapping[str, Any], text: str) -> bool:
    """Whether the answer is a refusal: OpenAI's `refusal` field, or a refusal phrase opening the text."""
    message = _choice(response).get("message")
    if isinstance(message, Mapping) and message.get("refusal"):
        return True
    return bool(_REFUSAL_RE.match(text[:200]))


def logprob_quantile(response: Mapping[str, Any], q: float) -> float | None:
    """The `q` quantile (lower, nearest rank) of the answer's token logprobs, or None when there are none."""
    logprobs = _choice(response).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    values = sorted(
        float(t["logprob"])
        for t in content or []
        if isinstance(t, Mapping) and isinstance(t.get("logprob"), int | float) and math.isfinite(t["logprob"])
    )
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def final_answer(text: str, pattern: str | None) -> str | None:
    """The final answer `pattern` finds (its first group, else the whole match; the last match wins)."""
    if pattern is None:
        return None
    found = list(re.finditer(pattern, text, re.MULTILINE))
    if not found:
        return None
    last = found[-1]
    return last.group(1) if last.groups() and last.group(1) is not None else last.group(0)


def check_answer(request: Mapping[str, Any], response: Mapping[str, Any], checks: CascadeChecks) -> CheckReport:
    """Every check of `checks` on the cheap model's `response` to `request`."""
    text = answer_text(response)
    failed = []
    if not finished(request, response):
        failed.append("finish_reason")
    if (problem := json_problem(text, request.get("response_format"))) is not None:
        failed.append(problem)
    if tool_problems(request, response):
        failed.append("tool_arguments")
    if checks.refusal and refused(response, text):
        failed.append("refusal")
    final = final_answer(text, checks.final_answer)
    if checks.final_answer is not None and final is None:
        failed.append("final_answer")
    asked = features(request)
    arithmetic = check_arithmetic(text, asked.text, final) if checks.arithmetic else None
    return CheckReport(
        failed=failed,
        length=len(text),
        prompt_length=asked.chars,
        logprob=logprob_quantile(response, checks.logprob_quantile),
        arithmetic=arithmetic,
        final=final,
    )
