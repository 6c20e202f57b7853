"""What a model route adds to a real-time call: a `predict` decision against no route, and a cascade's escalation
against a direct call, measured in the same run.

Run from the repository root (needs the Redis at REDIS_URL, default redis://127.0.0.1:6379/0):

    python bench/routes_overhead.py [--calls 2000] [--warmup 200] [--concurrency 1]
                                    [--cascade-calls 300] [--cascade-latency-ms 0,50] [--markdown]

It starts the built-in simulator (`simulate --outcomes`, recorded answers for the cascade's prompts) and three
routers in front of it, each its own process on 127.0.0.1 (bench/realtime.py's helpers): one with no model route,
one with a `predict` route from gpt-4o to gpt-4o-mini, one with a `cascade` route between the same models. Before
they start, evidence is imported into the run's Redis keys (prefix `bench-routes-<random>`, deleted at the end) with
`router.modelroutes.learn.learn`, the code behind `hybrid-router routes learn`: a task `bench` whose examples agree
(it moves to gpt-4o-mini), a task `mixed` whose examples disagree (it stays), and task-less prompts (embedding
clusters, when the `embeddings` extra is installed). The bench waits until the predict router's plan moves
`bench`, so every measured decision reads a real plan.

Predict: for each kind of call (a named task that moves, via `X-Router-Task`; a named task that stays; no task, so
the prompt's features and, with the extra, its embedding decide), the same bodies go to the router without a route
and the router with one, alternating call by call (the order flips every call) so drift on a shared machine hits
both alike. It reports p50/p90/p99 latency (to the end of the body, from the load generator), the difference and
ratio of each quantile with a 95% bootstrap interval for the p99 difference, the CPU time per call of each router
process (from /proc), and each router's own `hybrid_router_proxy_overhead_seconds` (the time it adds besides the
upstream call, measured inside it, so free of the load generator's noise): its mean, and the upper bound of the
histogram bucket holding its p99 (buckets 0.5, 1, 2.5, 5 ms ...).

Cascade: with the simulator answering after `--cascade-latency-ms` (each value in turn), it times a call the
cascade escalates (the cheap answer fails the route's `final_answer` check, so the asked-for model answers too), a
call whose cheap answer is kept, and the same escalated prompt sent to the router without a route (direct), and
reads the cascade router's `hybrid_router_route_cascade_seconds`. Exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families
from realtime import (
    CALL_TIMEOUT_S,
    UPSTREAM_KEY_ENV,
    Target,
    bounded,
    cpu_seconds,
    delete_keys,
    quantile,
    revision,
    server,
)
from redis.asyncio import Redis as AsyncRedis
from rich import box
from rich.console import Console
from rich.table import Table

from router.core.model_routes import parse_route
from router.modelroutes.embeddings import load_embedder
from router.modelroutes.learn import learn
from router.modelroutes.store import EvidenceStore
from router.ops.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
STRONG, WEAK = "gpt-4o", "gpt-4o-mini"
PREDICT = {"from": STRONG, "to": [WEAK], "mode": "predict", "quality_target": 0.95}
CASCADE = {**PREDICT, "mode": "cascade", "cascade": {"final_answer": r"####\s*(-?[\d,]+)\s*$"}}
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
PLAN_TIMEOUT_S = 30.0
BOOTSTRAP = 400
ESCALATED, KEPT = "Add 4 and 4.", "Add 2 and 3."  # the cascade's prompts, with recorded answers
OUTCOMES = [
    {"prompt": ESCALATED, "scores": {STRONG: True, WEAK: False},
     "responses": {STRONG: "4+4=8\n#### 8", WEAK: "It is probably eight."}},
    {"prompt": KEPT, "scores": {STRONG: True, WEAK: True}, "responses": {STRONG: "2+3=5\n#### 5", WEAK: "5\n#### 5"}},
]  # fmt: skip
KINDS = {
    "task, moved": {"x-router-task": "bench"},
    "task, kept": {"x-router-task": "mixed"},
    "no task": {},
}
_WORDS = [
    *("invoice", "customer", "refund", "shipment", "delay", "contract", "clause", "summary", "translate", "french"),
    *("german", "revenue", "quarter", "forecast", "churn", "ticket", "priority", "outage", "database", "index"),
    *("latency", "cache", "region", "deploy", "rollback", "incident", "report", "patient", "dosage", "trial"),
    *("cohort", "lesson", "algebra", "proof", "theorem", "poem", "story", "recipe", "travel", "itinerary", "budget"),
]


def prompt(rng: random.Random, words: int = 70) -> str:
    """A prompt of ~400 characters (a task-less call embeds its first 500)."""
    return "Please " + " ".join(rng.choice(_WORDS) for _ in range(words)) + "?"


def body(text: str) -> bytes:
    return json.dumps({"model": STRONG, "messages": [{"role": "user", "content": text}], "max_tokens": 16}).encode()


@dataclass
class Sample:
    """What one target measured for one kind of call."""

    latencies: list[float] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    first_error: str = ""
    cpu_s: float = 0.0
    overhead: tuple[float, float] = (0.0, 0.0)  # the router's proxy-overhead histogram: (sum s, count) in the window
    overhead_p99: float = math.nan  # the upper bound of the bucket holding its p99

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.errors


# --- setup ---------------------------------------------------------------------------------------------------


def evidence_lines(rng: random.Random) -> list[dict[str, Any]]:
    """Scored examples in the `routes learn` format: `bench` agrees on all 40, `mixed` on half of 40; 300 task-less
    prompts agree (their clusters move where each has enough of them)."""
    lines: list[dict[str, Any]] = []
    for i in range(40):
        lines.append({"prompt": f"bench question {i}?", "task": "bench", "scores": {STRONG: True, WEAK: True}})
        lines.append({"prompt": f"mixed question {i}?", "task": "mixed", "scores": {STRONG: True, WEAK: i % 2 == 0}})
    lines += [{"prompt": prompt(rng), "scores": {STRONG: True, WEAK: True}} for _ in range(300)]
    return lines


async def import_evidence(redis_url: str, prefix: str, lines: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """`routes learn` into the run's keys: the predict and cascade routes share the key `gpt-4o>gpt-4o-mini`."""
    client = AsyncRedis.from_url(redis_url)
    try:
        store = EvidenceStore(client, prefix)
        encoded = [json.dumps(line) for line in lines]
        report = await learn(store, [parse_route(PREDICT)], encoded, now=time.time(), embedder=load_embedder())
        return report.pairs
    finally:
        await client.aclose()


def router_config(directory: Path, name: str, sim_port: int, routes: list[dict[str, Any]]) -> Path:
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)  # empty: every call is real time
    config = {
        "upstreams": [
            {
                "name": "sim",
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{sim_port}/v1",
                "api_key_env": UPSTREAM_KEY_ENV,
            }
        ],
        "policies_dir": str(policies),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "routes": routes,
    }
    path = directory / f"router-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- load ----------------------------------------------------------------------------------------------------


async def call(
    session: aiohttp.ClientSession, target: Target, data: bytes, headers: dict[str, str], sample: Sample | None
) -> dict[str, str]:
    """One chat call; its latency, the route's reason and the answering model go into `sample`."""
    started = time.perf_counter()
    try:
        async with session.post(
            f"{target.base_url}/v1/chat/completions", data=data, headers=HEADERS | headers
        ) as answer:
            ok = answer.status == 200 and b'"choices"' in await answer.read()
            got = {k.lower(): v for k, v in answer.headers.items()}
    except (aiohttp.ClientError, TimeoutError) as exc:
        if sample is not None:
            sample.errors += 1
            sample.first_error = sample.first_error or f"{type(exc).__name__}: {exc}"
        return {}
    elapsed = time.perf_counter() - started
    if sample is not None:
        if not ok:
            sample.errors += 1
            sample.first_error = sample.first_error or f"HTTP {answer.status}"
        else:
            sample.latencies.append(elapsed)
            sample.reasons[got.get("x-router-route", "-")] += 1
            sample.models[got.get("x-router-model", STRONG)] += 1
    return got


async def histogram(session: aiohttp.ClientSession, target: Target, metric: str) -> tuple[float, float]:
    """(sum, count) of a histogram on a router's /metrics, over all its label sets."""
    found = await buckets(session, target, metric)
    return found.get(-1.0, 0.0), found.get(math.inf, 0.0)


async def buckets(session: aiohttp.ClientSession, target: Target, metric: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts by upper bound (`le`), over all its label sets; its sum under -1."""
    async with session.get(f"{target.base_url}/metrics") as answer:
        text = await answer.text()
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == metric + "_bucket":
                le = float(s.labels["le"])
                found[le] = found.get(le, 0.0) + s.value
            elif s.name == metric + "_sum":
                found[-1.0] = found.get(-1.0, 0.0) + s.value
    return found


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of the observations between two reads (inf: the last)."""
    bounds = sorted(le for le in after if le >= 0)
    count = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    for le in bounds:
        if after[le] - before.get(le, 0.0) >= q * count:
            return le
    return math.inf


async def alternate(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    bodies: Sequence[bytes],
    headers: dict[str, str],
    calls: int,
    concurrency: int,
    samples: dict[str, Sample] | None,
) -> None:
    """`calls` calls to each target, in `concurrency` closed loops; each loop sends one body to every target in
    turn, the order rotated from one body to the next."""
    counter = iter(range(calls))

    async def loop() -> None:
        for i in counter:
            shift = i % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                sample = samples[target.name] if samples is not None else None
                await call(session, target, bodies[i % len(bodies)], headers, sample)

    await asyncio.gather(*(loop() for _ in range(concurrency)))


async def measure_kind(
    session: aiohttp.ClientSession,
    targets: Sequence[Target],
    bodies: Sequence[bytes],
    headers: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Sample]:
    await alternate(session, targets, bodies, headers, args.warmup, args.concurrency, None)
    samples = {t.name: Sample() for t in targets}
    before = {t.name: (cpu_seconds(t.pid), await buckets(session, t, OVERHEAD)) for t in targets}
    await alternate(session, targets, bodies, headers, args.calls, args.concurrency, samples)
    for t in targets:
        cpu, old = before[t.name]
        new = await buckets(session, t, OVERHEAD)
        samples[t.name].cpu_s = cpu_seconds(t.pid) - cpu
        samples[t.name].overhead = (new.get(-1.0, 0.0) - old.get(-1.0, 0.0), new[math.inf] - old.get(math.inf, 0.0))
        samples[t.name].overhead_p99 = bucket_quantile(old, new, 0.99)
    return samples


OVERHEAD = "hybrid_router_proxy_overhead_seconds"
CASCADE_METRIC = "hybrid_router_route_cascade_seconds"


async def wait_for_plan(session: aiohttp.ClientSession, predict: Target, bodies: Sequence[bytes]) -> dict[str, Any]:
    """Until the predict router's plan moves `bench` (plans are remade every 5 s) and task-less calls reach their
    embedding clusters (if any): the first of those loads the embedder, on the call path; its latency is kept."""
    deadline = time.monotonic() + PLAN_TIMEOUT_S
    found: dict[str, Any] = {"first_taskless_ms": [], "clusters": load_embedder() is not None}
    while time.monotonic() < deadline:
        moved = await call(session, predict, bodies[0], KINDS["task, moved"], None)
        started = time.perf_counter()
        taskless = await call(session, predict, bodies[0], {}, None)
        found["first_taskless_ms"].append((time.perf_counter() - started) * 1e3)
        clustered = taskless.get("x-router-task", "").startswith("auto:text:c") or not found["clusters"]
        if moved.get("x-router-model") == WEAK and clustered:
            return found
        await asyncio.sleep(0.2)
    raise RuntimeError("the predict router's plan never moved the `bench` task: is the evidence in Redis?")


async def measure_cascade(
    session: aiohttp.ClientSession, direct: Target, cascade: Target, sim_base: str, latency_ms: float, calls: int
) -> dict[str, Any]:
    """At one simulator latency: escalated and kept cascade calls, and the escalated prompt sent without a route."""
    async with session.post(f"{sim_base}/_sim/config", json={"latency_ms": latency_ms}) as answer:
        answer.raise_for_status()
    samples = {"direct": Sample(), "cascade, escalated": Sample(), "cascade, kept": Sample()}
    plan = [(direct, ESCALATED, "direct"), (cascade, ESCALATED, "cascade, escalated"), (cascade, KEPT, "cascade, kept")]
    for i in range(max(3, calls // 10)):  # warm-up
        target, text, _ = plan[i % 3]
        await call(session, target, body(text), {}, None)
    before = await histogram(session, cascade, CASCADE_METRIC)
    for i in range(calls):
        shift = i % 3
        for target, text, name in plan[shift:] + plan[:shift]:
            await call(session, target, body(text), {}, samples[name])
    after = await histogram(session, cascade, CASCADE_METRIC)
    spent, count = after[0] - before[0], after[1] - before[1]
    return {
        "latency_ms": latency_ms,
        "samples": samples,
        "cascade_metric_mean_ms": spent / count * 1e3 if count else math.nan,
    }


# --- statistics and report -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def p99_interval(a: list[float], b: list[float], rng: random.Random) -> tuple[float, float]:
    """95% bootstrap interval of p99(b) - p99(a) (each resampled independently)."""
    diffs = sorted(
        quantile(rng.choices(b, k=len(b)), 0.99) - quantile(rng.choices(a, k=len(a)), 0.99) for _ in range(BOOTSTRAP)
    )
    return diffs[int(0.025 * BOOTSTRAP)], diffs[int(0.975 * BOOTSTRAP) - 1]


def predict_rows(samples: dict[str, Sample], rng: random.Random) -> tuple[list[list[str]], dict[str, Any]]:
    """A row per router and one for the difference; the numbers the summary needs."""
    base, routed = samples["no route"], samples["predict route"]
    rows = []
    for name, s in samples.items():
        q = [quantile(s.latencies, p) for p in (0.5, 0.9, 0.99)]
        mean_overhead = s.overhead[0] / s.overhead[1] if s.overhead[1] else math.nan
        reasons = ", ".join(f"{r} {n}" for r, n in s.reasons.most_common()) if name != "no route" else "-"
        rows.append(
            [
                name,
                str(s.calls),
                *map(ms, q),
                ms(s.cpu_s / s.calls if s.calls else math.nan),
                ms(mean_overhead),
                f"{s.overhead_p99 * 1e3:g}",
                reasons,
            ]
        )
    d = {p: quantile(routed.latencies, p) - quantile(base.latencies, p) for p in (0.5, 0.9, 0.99)}
    ratio = {p: quantile(routed.latencies, p) / quantile(base.latencies, p) for p in (0.5, 0.99)}
    low, high = p99_interval(base.latencies, routed.latencies, rng)
    cpu_a, cpu_b = base.cpu_s / base.calls, routed.cpu_s / routed.calls
    over_a = base.overhead[0] / base.overhead[1] if base.overhead[1] else math.nan
    over_b = routed.overhead[0] / routed.overhead[1] if routed.overhead[1] else math.nan
    rows.append([
        "added by the route", "", f"{d[0.5] * 1e3:+.3f} (x{ratio[0.5]:.3f})", f"{d[0.9] * 1e3:+.3f}",
        f"{d[0.99] * 1e3:+.3f} (x{ratio[0.99]:.3f}; 95% {low * 1e3:+.3f}..{high * 1e3:+.3f})",
        f"{(cpu_b - cpu_a) * 1e3:+.3f} (x{cpu_b / cpu_a:.3f})", f"{(over_b - over_a) * 1e3:+.3f}", "", "",
    ])  # fmt: skip
    summary: dict[str, Any] = {
        "p50_ms": d[0.5] * 1e3,
        "p99_ms": d[0.99] * 1e3,
        "p99_low_ms": low * 1e3,
        "p99_high_ms": high * 1e3,
        "p50_ratio": ratio[0.5],
        "p99_ratio": ratio[0.99],
        "cpu_ms": (cpu_b - cpu_a) * 1e3,
        "cpu_ratio": cpu_b / cpu_a,
        "overhead_mean_ms": (over_b - over_a) * 1e3,
        "overhead_p99_bucket_ms": {"no route": base.overhead_p99 * 1e3, "predict route": routed.overhead_p99 * 1e3},
    }
    return rows, summary


PREDICT_COLUMNS = ["router", "calls", "p50 ms", "p90 ms", "p99 ms", "CPU ms/call", "overhead mean ms",
                   "overhead p99 <= ms", "route reasons"]  # fmt: skip
CASCADE_COLUMNS = ["simulator latency", "call", "calls", "p50 ms", "p99 ms", "+p50 ms vs direct", "+p99 ms vs direct",
                   "x p50", "route_cascade_seconds mean ms"]  # fmt: skip


def cascade_rows(result: dict[str, Any]) -> list[list[str]]:
    samples: dict[str, Sample] = result["samples"]
    direct = samples["direct"]
    d50, d99 = quantile(direct.latencies, 0.5), quantile(direct.latencies, 0.99)
    rows = []
    for name, s in samples.items():
        p50, p99 = quantile(s.latencies, 0.5), quantile(s.latencies, 0.99)
        added = (
            ["-", "-", "-"]
            if name == "direct"
            else [f"{(p50 - d50) * 1e3:+.3f}", f"{(p99 - d99) * 1e3:+.3f}", f"{p50 / d50:.2f}"]
        )
        metric = f"{result['cascade_metric_mean_ms']:.3f}" if name == "cascade, escalated" else "-"
        rows.append([f"{result['latency_ms']:g} ms", name, str(s.calls), ms(p50), ms(p99), *added, metric])
    return rows


def context(args: argparse.Namespace, load_before: float, commit: str, setup: dict[str, Any]) -> str:
    command = " ".join(["python", "bench/routes_overhead.py", *sys.argv[1:]])
    clusters = "embedding clusters (wordllama)" if setup["clusters"] else "no embeddings extra: shape only"
    return (
        f"`{command}` — {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, nproc {os.cpu_count()}, "
        f"Python {sys.version.split()[0]}; {args.calls} measured calls per router and kind after {args.warmup} "
        "warm-up, "
        f"concurrency {args.concurrency}, simulator latency 0 ms for predict; task-less calls: {clusters}; "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )


def table(title: str, columns: list[str], rows: list[list[str]], console: Console) -> None:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for i, column in enumerate(columns):
        t.add_column(column, justify="left" if i == 0 or column in ("call", "route reasons") else "right")
    for row in rows:
        t.add_row(*row)
    console.print(t)


def markdown(columns: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# --- main ----------------------------------------------------------------------------------------------------


def latencies(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if not values or any(not 0 <= v <= 2000 for v in values):
        raise argparse.ArgumentTypeError("simulator latencies must be within [0, 2000] ms")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=bounded(10, 20_000, int), default=2000, help="measured calls per router and kind"
    )
    parser.add_argument("--warmup", type=bounded(0, 5000, int), default=200, help="unmeasured calls first")
    parser.add_argument("--concurrency", type=bounded(1, 64, int), default=1, help="closed loops")
    parser.add_argument("--cascade-calls", type=bounded(10, 5000, int), default=300, help="cascade calls per kind")
    parser.add_argument("--cascade-latency-ms", type=latencies, default=[0.0, 50.0], help="simulator latencies")
    parser.add_argument("--seed", type=int, default=7, help="prompts and bootstrap")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables for RESULTS.md")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    return parser.parse_args()


async def run(args: argparse.Namespace, targets: dict[str, Target], sim_base: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    bodies = [body(prompt(rng)) for _ in range(64)]
    connector = aiohttp.TCPConnector(limit=max(4, args.concurrency * 3), ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        setup = await wait_for_plan(session, targets["predict route"], bodies)
        pair = [targets["no route"], targets["predict route"]]
        predict = {kind: await measure_kind(session, pair, bodies, headers, args) for kind, headers in KINDS.items()}
        cascades = [
            await measure_cascade(
                session, targets["no route"], targets["cascade route"], sim_base, latency, args.cascade_calls
            )
            for latency in args.cascade_latency_ms
        ]
    return {"setup": setup, "predict": predict, "cascade": cascades}


def note_keys(redis_url: str, prefix: str) -> tuple[int, float]:
    """How many feedback notes the routers left in Redis (one per routed call, kept 7 days), and their mean size."""
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:mr:note:*", count=1000))
        sizes = [client.memory_usage(k) or 0 for k in keys[:200]]
    return len(keys), sum(sizes) / len(sizes) if sizes else math.nan


def main() -> int:
    args = parse_args()
    load_before = os.getloadavg()[0]
    commit = revision()
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"bench-routes-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as client:
        client.ping()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
    env |= {"REDIS_URL": redis_url, "HYBRID_ROUTER_KEY_PREFIX": prefix, UPSTREAM_KEY_ENV: "sk-bench"}
    with tempfile.TemporaryDirectory(prefix="bench-routes-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        stack.callback(delete_keys, redis_url, prefix)
        pairs = asyncio.run(import_evidence(redis_url, prefix, evidence_lines(random.Random(args.seed + 1))))
        outcomes = directory / "outcomes.jsonl"
        outcomes.write_text("".join(json.dumps(row) + "\n" for row in OUTCOMES))
        sim_port = free_port()
        sim_args = ["simulate", "--port", str(sim_port), "--outcomes", str(outcomes)]
        stack.enter_context(server(sim_args, env, f"http://127.0.0.1:{sim_port}/_sim/stats", directory / "sim.log"))
        targets: dict[str, Target] = {}
        for name, routes in (("no route", []), ("predict route", [PREDICT]), ("cascade route", [CASCADE])):
            port = free_port()
            config = router_config(directory, name.split()[0], sim_port, routes)
            log = directory / f"router-{name.split()[0]}.log"
            serve = ["serve", "--config", str(config), "--port", str(port)]
            proc = stack.enter_context(server(serve, env, f"http://127.0.0.1:{port}/healthz", log))
            targets[name] = Target(name, f"http://127.0.0.1:{port}", proc.pid, router=True)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(run(args, targets, f"http://127.0.0.1:{sim_port}"))
        notes = note_keys(redis_url, prefix)
    return report(args, result, pairs, notes, load_before, commit)


def report(
    args: argparse.Namespace,
    result: dict[str, Any],
    pairs: dict[str, dict[str, int]],
    notes: tuple[int, float],
    load_before: float,
    commit: str,
) -> int:
    console = Console() if sys.stdout.isatty() else Console(width=160)
    rng = random.Random(args.seed + 2)
    header = context(args, load_before, commit, result["setup"])
    console.print(header)
    tasks = pairs.get("gpt-4o>gpt-4o-mini", {})
    console.print(f"evidence imported: {sum(tasks.values())} pairs over {len(tasks)} tasks", style="dim")
    summaries: dict[str, dict[str, Any]] = {}
    md = [header, ""]
    for kind, samples in result["predict"].items():
        rows, summaries[kind] = predict_rows(samples, rng)
        table(f"predict, {kind}: POST /v1/chat/completions (asked for {STRONG})", PREDICT_COLUMNS, rows, console)
        md += [f"**predict, {kind}**", "", *markdown(PREDICT_COLUMNS, rows), ""]
    rows = [row for c in result["cascade"] for row in cascade_rows(c)]
    table(
        "cascade: an escalated call and a kept one against the same call without a route",
        CASCADE_COLUMNS,
        rows,
        console,
    )
    md += ["**cascade**", "", *markdown(CASCADE_COLUMNS, rows), ""]
    first = result["setup"]["first_taskless_ms"]
    extra = (
        f"Slowest task-less call while the plan loaded (includes loading the embedder on the call path): "
        f"{max(first):.1f} ms. Feedback notes left in Redis: {notes[0]:,} keys (one per routed call, 7-day TTL), "
        f"about {notes[1]:.0f} bytes each."
    )
    console.print(extra)
    md.append(extra)
    worst = max(s["p99_high_ms"] for s in summaries.values())
    verdict = f"Largest upper end of the p99 difference's 95% interval: {worst:+.3f} ms (budget: 1 ms)."
    console.print(verdict, style="bold")
    md.append(verdict)
    if args.markdown:
        print("\n".join(md))
    if args.json:
        out = {
            "context": header,
            "predict": summaries,
            "cascade": [
                {
                    "latency_ms": c["latency_ms"],
                    "cascade_metric_mean_ms": c["cascade_metric_mean_ms"],
                    **{
                        name: {"p50_ms": quantile(s.latencies, 0.5) * 1e3, "p99_ms": quantile(s.latencies, 0.99) * 1e3}
                        for name, s in c["samples"].items()
                    },
                }
                for c in result["cascade"]
            ],
            "first_taskless_max_ms": max(first),
            "notes": {"keys": notes[0], "mean_bytes": notes[1]},
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    samples = [s for kind in result["predict"].values() for s in kind.values()]
    samples += [s for c in result["cascade"] for s in c["samples"].values()]
    failed = [s for s in samples if s.errors]
    for s in failed:
        console.print(f"{s.errors} errors, first: {s.first_error}", style="red", markup=False)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
