"""The per-call decision: which model answers, from the route's current plan. A dictionary look-up and a hash.

The plan (plan.py) is made off the call path whenever the evidence changes; a call only reads it. A task's share
of calls for a candidate is realised with a uniform number drawn from the call's key (its id, or a digest of its
body), so the same call retried gets the same answer, and any share is met across calls without shared state.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from router.core.model_routes import Route
    from router.modelroutes.plan import Plan

Reason = Literal["evidence", "share", "below_target", "no_evidence", "opt_out", "forced"]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The model that answers a call, and why."""

    model: str
    asked: str
    task: str
    reason: Reason
    """`evidence`: the plan moves the whole task; `share`: the task is split and this call's draw decided (either
    way); `below_target`: the task's evidence does not meet the target; `no_evidence`: the task has none yet;
    `opt_out` / `forced`: the caller said so."""

    @property
    def moved(self) -> bool:
        """Whether a model other than the one asked for answers."""
        return self.model != self.asked


def uniform(call_key: str | bytes, salt: str = "") -> float:
    """A number in [0, 1) fixed by `call_key` (and `salt`), uniform across keys."""
    data = call_key.encode() if isinstance(call_key, str) else call_key
    digest = hashlib.blake2b(data, digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def decide(
    route: Route,
    plan: Plan | None,
    task: str,
    call_key: str | bytes,
    *,
    force: Literal["asked", "route"] | None = None,
) -> Decision:
    """The answering model for one call of `task` under `plan` (None: no plan yet, so the asked-for model).

    `force="asked"`: the caller opted out, the asked-for model answers. `force="route"`: the caller asked for the
    route whatever the evidence, so the cheapest candidate answers.
    """
    if force == "asked":
        return Decision(model=route.source, asked=route.source, task=task, reason="opt_out")
    if force == "route":
        return Decision(model=route.to[0], asked=route.source, task=task, reason="forced")
    task_plan = None if plan is None else plan.tasks.get(task)
    if task_plan is None:
        return Decision(model=route.source, asked=route.source, task=task, reason="no_evidence")
    shares = task_plan.shares
    if not shares:
        return Decision(model=route.source, asked=route.source, task=task, reason="below_target")
    if len(shares) == 1 and shares[0][1] >= 1.0:
        return Decision(model=shares[0][0], asked=route.source, task=task, reason="evidence")
    draw = uniform(call_key, "route")
    total = 0.0
    for model, share in shares:
        total += share
        if draw < total:
            return Decision(model=model, asked=route.source, task=task, reason="share")
    return Decision(model=route.source, asked=route.source, task=task, reason="share")


def shadowed(route: Route, call_key: str | bytes) -> bool:
    """Whether a call in `shadow` mode is also sent to the cheaper model (a `shadow_rate` share of calls)."""
    return route.mode == "shadow" and uniform(call_key, "shadow") < route.shadow_rate
