"""Consistency of a worked numeric answer: its arithmetic, its final answer, the numbers it used.

Worked answers to word problems show their steps as calculator annotations (`<<3*60=180>>`, the GSM8K style) or
as plain equations (`3 x 60 = 180`). Each step is re-computed here with a small evaluator (numbers, + - * / and
parentheses; never `eval`). A step whose stated result differs from its value beyond the rounding it shows is
wrong. Two more signals: whether the final answer is the result of the last step (an answer that jumps elsewhere
is often wrong), and the share of the prompt's numbers that the answer uses. None of this needs a model; all of it
is evidence for a cascade bucket (cascade.py), not a verdict on its own.
"""

from __future__ import annotations

import ast
import math
import re

import msgspec

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_ANNOTATION_RE = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_EQUATION_RE = re.compile(
    r"(?<![\w.])((?:\(?\s*\$?\d[\d,]*(?:\.\d+)?\s*\)?\s*[-+*/x\u00d7\u00f7]\s*)+\(?\s*\$?\d[\d,]*(?:\.\d+)?%?\s*\)?)"
    r"\s*=\s*(" + _NUMBER + r")"
)
_NUMBER_RE = re.compile(_NUMBER)
_OPS = {ast.Add: float.__add__, ast.Sub: float.__sub__, ast.Mult: float.__mul__, ast.Div: float.__truediv__}


class Arithmetic(msgspec.Struct, frozen=True, kw_only=True):
    """What the steps of one answer show."""

    steps: int
    """Steps found and re-computed."""
    wrong: int
    """Steps whose stated result is not their value."""
    final_is_last: bool | None
    """Whether the final answer equals the last step's result (None: no step or no final answer)."""
    prompt_numbers_used: float | None
    """Share of the prompt's distinct numbers that appear in the answer (None: the prompt has none)."""

    @property
    def consistent(self) -> bool:
        """No wrong step and no final answer that departs from the last step."""
        return self.wrong == 0 and self.final_is_last is not False


def number(text: str) -> float | None:
    """A number written with an optional sign, `$` and thousands commas; None when `text` is not one."""
    cleaned = text.strip().replace(",", "").replace("$", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not plain arithmetic")


def evaluate(expression: str) -> float | None:
    """The value of an arithmetic expression, or None if it is not one.

    Numbers, + - * / and parentheses; `x` and the multiplication and division signs too, and `%` as /100.
    """
    text = expression.replace(",", "").replace("$", "").replace("\u00d7", "*").replace("\u00f7", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)%", r"(\1/100)", text)
    if len(text) > 200 or not re.fullmatch(r"[\d.+\-*/()\s]+", text):
        return None
    try:
        value = _evaluate(ast.parse(text.strip(), mode="eval"))
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def matches(value: float, stated: str) -> bool:
    """Whether `stated` is `value` to the precision it is written with (3.33 for 10/3 is right)."""
    claimed = number(stated)
    if claimed is None:
        return False
    decimals = len(stated.split(".", 1)[1]) if "." in stated else 0
    tolerance = max(0.5 * 10.0**-decimals, 1e-9 * abs(value))
    return abs(value - claimed) <= tolerance + 1e-12


def _steps(answer: str) -> list[tuple[float, str]]:
    steps = []
    for match in _ANNOTATION_RE.finditer(answer):
        value = evaluate(match.group(1))
        if value is not None:
            steps.append((value, match.group(2).strip()))
    if not steps:
        for match in _EQUATION_RE.finditer(answer):
            value = evaluate(match.group(1))
            if value is not None:
                steps.append((value, match.group(2).strip()))
    return steps


def check_arithmetic(answer: str, prompt: str = "", final: str | None = None) -> Arithmetic:
    """The consistency of `answer` (to `prompt`); `final` is its final answer as text, if one was found."""
    steps = _steps(answer)
    wrong = sum(1 for value, stated in steps if not matches(value, stated))
    final_value = None if final is None else number(final)
    last = number(steps[-1][1]) if steps else None
    final_is_last = None if final_value is None or last is None else math.isclose(final_value, last, abs_tol=1e-9)
    asked = {n for n in (number(m) for m in _NUMBER_RE.findall(prompt)) if n is not None}
    used_values = {n for n in (number(m) for m in _NUMBER_RE.findall(answer)) if n is not None}
    used = None if not asked else len(asked & used_values) / len(asked)
    return Arithmetic(steps=len(steps), wrong=wrong, final_is_last=final_is_last, prompt_numbers_used=used)
