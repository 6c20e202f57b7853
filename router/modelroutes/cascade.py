"""`cascade` mode: keep the cheap answer, or ask the asked-for model, from the checks and the evidence.

A failed hard check always escalates. An answer that passes lands in a bucket of its soft signals (arithmetic
consistency, logprob quantile, length; the route's `cascade` settings give the edges), and the evidence is kept
per (task, bucket): the key `<task>|<bucket>`. The route's plan (plan.py with `cascade=True`) then says which
buckets keep the cheap answer, and which share of a borderline one (drawn from the call's key, so the plan's
accounting of a split bucket as a random sample of it holds): it is the same quality budget as `predict`, except
that keeping an answer saves the whole asked-for call (the cheap call is already paid). Length enters as the last
part of the bucket (`length_edges`), so among answers that pass the same checks shorter ones can be kept while
longer ones escalate: the length tie-break.

A bucket with no evidence at all keeps an answer that passed the checks (the cascade's plain contract: check the
cheap answer, escalate when a check fails); one whose evidence does not meet the target escalates.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Literal

import msgspec

from router.modelroutes.decision import uniform

if TYPE_CHECKING:
    from router.core.model_routes import CascadeChecks, Route
    from router.modelroutes.checks import CheckReport
    from router.modelroutes.plan import Plan

Verdict = Literal["keep", "escalate"]


class CascadeDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the cheap answer stands, under which evidence key, and why."""

    verdict: Verdict
    key: str
    reason: str
    """A failed check's name, or `evidence`, `share`, `below_target`, `checks_passed` (no evidence yet)."""


def bucket(report: CheckReport, checks: CascadeChecks) -> str:
    """The bucket of an answer that passed the hard checks: its soft signals, coarsened by the route's edges."""
    parts = []
    if report.arithmetic is not None:
        arithmetic = report.arithmetic
        used = arithmetic.prompt_numbers_used
        parts.append("a0" if not arithmetic.consistent else "a1" if used is not None and used < 0.75 else "a2")
    if report.logprob is not None:
        parts.append(f"p{bisect.bisect_right(checks.logprob_edges, report.logprob)}")
    if checks.length_edges:
        parts.append(f"n{bisect.bisect_right(checks.length_edges, report.length)}")
    if checks.prompt_length_edges:
        parts.append(f"q{bisect.bisect_right(checks.prompt_length_edges, report.prompt_length)}")
    return ".".join(parts) or "all"


def evidence_key(task: str, report: CheckReport, checks: CascadeChecks) -> str:
    """The key the evidence of this answer is kept under: `<task>|<bucket>` (`<task>|failed` for a failed one)."""
    return f"{task}|{bucket(report, checks) if report.passed else 'failed'}"


def decide_cascade(route: Route, plan: Plan | None, task: str, report: CheckReport, call_key: str) -> CascadeDecision:
    """Keep or escalate the first candidate's answer to a call of `task`."""
    key = evidence_key(task, report, route.cascade)
    if not report.passed:
        return CascadeDecision(verdict="escalate", key=key, reason=report.failed[0])
    task_plan = None if plan is None else plan.tasks.get(key)
    if task_plan is None:
        return CascadeDecision(verdict="keep", key=key, reason="checks_passed")
    share = sum(s for model, s in task_plan.shares if model == route.to[0])
    if share >= 1.0:
        return CascadeDecision(verdict="keep", key=key, reason="evidence")
    if share <= 0.0:
        return CascadeDecision(verdict="escalate", key=key, reason="below_target")
    keep = uniform(call_key, "cascade") < share
    return CascadeDecision(verdict="keep" if keep else "escalate", key=key, reason="share")
