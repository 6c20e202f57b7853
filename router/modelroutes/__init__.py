"""Model routes: answer a call for one model with a cheaper one where the evidence says quality holds.

The pure core (no Redis, no HTTP), over the declared shape the settings decode (`core.model_routes`): `evidence`
(decayed paired scores and their lower bound), `plan` (per route: which share of each task moves), `decision` (per
call: which model answers), `tasks` (a call's task and prompt features), `checks` and `arithmetic` (checks on a
cheap answer), `cascade` (keep or escalate it), `embeddings` (the optional `embeddings` extra: clusters for
task-less calls). With Redis: `store` (shared evidence) and `learn` (the `routes learn` import).
docs/routing.md describes the method and its results.
"""

from router.core.model_routes import CascadeChecks, Prior, Route, parse_route
from router.modelroutes.cascade import CascadeDecision, decide_cascade, evidence_key
from router.modelroutes.checks import CheckReport, check_answer
from router.modelroutes.decision import Decision, decide, shadowed, uniform
from router.modelroutes.evidence import Estimate, Stats, estimate, observe
from router.modelroutes.plan import Plan, PriceFn, TaskPlan, make_plan
from router.modelroutes.tasks import Features, auto_task, features, metadata_task, resolve_task

__all__ = [
    "CascadeChecks",
    "CascadeDecision",
    "CheckReport",
    "Decision",
    "Estimate",
    "Features",
    "Plan",
    "PriceFn",
    "Prior",
    "Route",
    "Stats",
    "TaskPlan",
    "auto_task",
    "check_answer",
    "decide",
    "decide_cascade",
    "estimate",
    "evidence_key",
    "features",
    "make_plan",
    "metadata_task",
    "observe",
    "parse_route",
    "resolve_task",
    "shadowed",
    "uniform",
]
