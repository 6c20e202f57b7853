"""`hybrid-router routes learn FILE` and `routes show`: model-route evidence in the Redis the router uses.

`learn` imports scored prompts (one JSON object per line: `{"prompt": str or messages, "task": str, "scores":
{"<model>": number or bool}}`) into every declared route they score; `show` prints each route's plan: per task, the
evidence, the quality ratio's lower bound, and whether the task moves. Both read the config in the working
directory (or `--config`) and `REDIS_URL`; without one they start the bundled Redis of `data_dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from router.core.errors import ConfigError
from router.core.pricing import load_pricing

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager

    from router.core.settings import Settings

    Load = Callable[[argparse.Namespace], Settings]
    RedisFor = Callable[[Settings], AbstractContextManager[Settings]]


def add_parser(sub: Any, config_help: str, *, load: Load, redis_for: RedisFor) -> None:
    """Register `routes learn` and `routes show` under the command's subparsers; `load` reads the settings as every
    command does, `redis_for` gives them a Redis (the command's own, passed in so this module needs no import of it)."""
    routes = sub.add_parser("routes", help="model routes: import evidence (learn), show the plans (show)")
    verbs = routes.add_subparsers(dest="verb", required=True)
    learn = verbs.add_parser("learn", help="import scored prompts (JSONL) as evidence for the declared routes")
    learn.add_argument("file", help='JSONL: {"prompt": ..., "task": ..., "scores": {"<model>": number or bool}}')
    learn.add_argument("--config", help=config_help)
    learn.set_defaults(func=cmd_learn, load=load, redis_for=redis_for)
    show = verbs.add_parser("show", help="print each declared route's plan: tasks, evidence, lower bounds")
    show.add_argument("--config", help=config_help)
    show.set_defaults(func=cmd_show, load=load, redis_for=redis_for)


def _settings(args: argparse.Namespace) -> Settings:
    settings: Settings = args.load(args)
    if not settings.routes:
        raise ConfigError(args.config or "config/router.yaml", "routes", "no model routes are declared")
    return settings


def cmd_learn(args: argparse.Namespace) -> int:
    """Import a JSONL file of scored prompts into the routes' evidence."""
    path = Path(args.file)
    if not path.is_file():
        raise ConfigError(args.file, None, "no such file")
    with args.redis_for(_settings(args)) as settings:
        report = asyncio.run(_learn(settings, path))
    console = Console()
    for route, tasks in report.pairs.items():
        table = Table(title=f"route {route}: pairs imported")
        table.add_column("task")
        table.add_column("pairs", justify="right")
        for task, count in sorted(tasks.items()):
            table.add_row(task, str(count))
        console.print(table)
    console.print(f"{report.lines} lines read; {report.unrouted} score no declared route")
    for problem in report.problems[:20]:
        console.print(f"line {problem.line}: {problem.problem}", style="yellow")
    return 1 if report.problems and not report.pairs else 0


async def _learn(settings: Settings, path: Path) -> Any:
    from router.deferred.store import client as redis_client
    from router.modelroutes.embeddings import load_embedder
    from router.modelroutes.learn import learn
    from router.modelroutes.store import EvidenceStore

    redis = redis_client.connect(settings.redis_url or "", max_connections=4)
    try:
        with path.open("rb") as lines:
            return await learn(
                EvidenceStore(redis, settings.key_prefix),
                settings.routes,
                lines,
                now=time.time(),
                embedder=load_embedder(),
            )
    finally:
        await redis_client.close(redis)


def cmd_show(args: argparse.Namespace) -> int:
    """Print every route's current plan."""
    with args.redis_for(_settings(args)) as settings:
        plans = asyncio.run(_plans(settings))
    console = Console()
    for route, plan in plans:
        table = Table(title=f"route {route.key} ({route.mode}, target {route.quality_target:.2f}, {route.allocation})")
        for column in ("task", "calls", "model", "ratio", "lower bound", "share moved"):
            table.add_column(column, justify="left" if column in ("task", "model") else "right")
        for task, task_plan in sorted(plan.tasks.items()):
            shares = dict(task_plan.shares)
            for model, est in task_plan.estimates.items():
                lower = f"{est.lower:.3f}" if math.isfinite(est.lower) else "-"
                row = (task, f"{est.calls:.1f}", model, f"{est.ratio:.3f}", lower, f"{shares.get(model, 0.0):.0%}")
                table.add_row(*row)
        console.print(table)
        console.print(f"moves {plan.moved_share:.0%} of the evidence's calls; expected quality {plan.quality:.3f}")
    return 0


async def _plans(settings: Settings) -> list[Any]:
    from router.deferred.store import client as redis_client
    from router.modelroutes.plan import make_plan
    from router.modelroutes.store import EvidenceStore

    price = load_pricing(Path(settings.pricing_file)).realtime_usd
    redis = redis_client.connect(settings.redis_url or "", max_connections=4)
    try:
        store = EvidenceStore(redis, settings.key_prefix)
        return [
            (
                route,
                make_plan(
                    route, await store.evidence(route), now=time.time(), price=price, cascade=route.mode == "cascade"
                ),
            )
            for route in settings.routes
        ]
    finally:
        await redis_client.close(redis)
