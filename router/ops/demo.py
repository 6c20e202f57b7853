"""`hybrid-router demo`: a mixed workload through the router on the embedded default, ending in a savings table."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from router.core.errors import ConfigError
from router.core.settings import Settings
from router.http.app import create_app
from router.ops.serving import serve_in_thread
from router.simulator.app import create_simulator
from router.simulator.config import SimConfig

DEMO_KEY_ENV, DEMO_KEY = (
    "HYBRID_ROUTER_DEMO_UPSTREAM_KEY",
    "sk-demo-simulator",
)  # the simulator's own key, not a real one
DEMO_BATCH = {"max_wait_s": 2.0, "poll_interval_s": 1.0, "turnaround_prior_s": 10.0, "margin_s": 2.0}


@dataclass
class Group:
    """One slice of the demo workload."""

    label: str
    count: int
    kind: str
    """chat | stream | embed | extract (chat.completions.parse into a Pydantic model) | rerun (a call at temperature
    0, then the same call again, which the answer cache answers where the policy turns it on) | shared (a chat call
    under a long system prompt every call of the group shares: its prefix is read from the provider's prompt cache)"""
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    weak_right: float | None = None
    """For a task of the demo's model route: the share of its prompts the cheaper model answers as well (the
    simulator plays both models so, and the route's evidence says so)."""

    def prompt(self, i: int) -> str:
        """The text of call `i` of this group."""
        return f"{self.label}: item {i}. Write two sentences about it."


ROUTE = {"from": "gpt-4o", "to": ["gpt-4o-mini"], "mode": "predict", "quality_target": 0.95}
"""The demo's model route, used unless the config declares routes of its own (docs/routing.md)."""

WORKLOAD = [
    Group("urgent chat (no deadline)", 30, "chat", "gpt-4o"),
    Group("urgent support triage (task, routed)", 40, "chat", "gpt-4o", {"X-Router-Task": "triage"}, 1.0),
    Group("urgent contract review (task, kept)", 20, "chat", "gpt-4o", {"X-Router-Task": "contracts"}, 0.6),
    Group("urgent streams", 10, "stream", "gpt-4o"),
    Group("summaries, X-Deadline: 1h", 150, "chat", "gpt-4o", {"X-Deadline": "1h"}),
    Group("nightly eval run (policy: evals)", 200, "chat", "gpt-4o-mini", {"x-workload": "eval"}),
    Group("embeddings backfill (policy)", 100, "embed", "text-embedding-3-small", {"x-workload": "backfill"}),
    Group("invoice extraction, parse(), X-Deadline: 1h", 50, "extract", "gpt-4o-mini", {"X-Deadline": "1h"}),
    Group("deadline too close for a batch (8s)", 5, "chat", "gpt-4o", {"X-Deadline": "8s"}),
    Group("eval re-run, temperature 0 (policy: eval-reruns)", 30, "rerun", "gpt-4o", {"x-workload": "eval-rerun"}),
    Group("urgent support chat, shared 2k-token system prompt", 30, "shared", "gpt-4o-mini"),
]

SHARED_SYSTEM = " ".join(
    f"Support policy rule {n}: answer politely, cite the relevant help article." for n in range(160)
)
"""A support bot's long instructions (about 2,000 tokens), the same for every call of a `shared` group: past the
first call, the provider reads them from its prompt cache (the router adds a `prompt_cache_key` for OpenAI,
`cache_control` breakpoints for Anthropic) and the discount is booked on the `prompt_cache` lever."""


@dataclass
class Tally:
    """What came back, per lane."""

    calls: dict[str, int] = field(default_factory=dict)
    routed: int = 0  # calls a cheaper model answered
    cost: dict[str, float] = field(default_factory=dict)
    savings: dict[str, float] = field(default_factory=dict)
    extractions: int = 0
    parsed: int = 0  # extractions that came back as a valid instance of their Pydantic model

    def add(self, headers: httpx.Headers, asked: str) -> None:
        lane = headers.get("x-router-lane", "?")
        if headers.get("x-router-escalated") == "true":
            lane = "realtime (escalated)"
        if headers.get("x-router-cache") == "hit":
            lane = "answer cache"
        self.calls[lane] = self.calls.get(lane, 0) + 1
        self.routed += headers.get("x-router-model", asked) != asked
        self.cost[lane] = self.cost.get(lane, 0.0) + float(headers.get("x-router-cost-usd") or 0)
        self.savings[lane] = self.savings.get(lane, 0.0) + float(headers.get("x-router-savings-usd") or 0)


def demo_settings(settings: Settings, sim_url: str) -> Settings:
    """The user's settings pointed at the simulator, with a fresh key prefix and batch timings in seconds."""
    tree = msgspec.to_builtins(settings)
    tree["upstreams"] = [{"name": "sim", "kind": "openai", "base_url": sim_url + "/v1", "api_key_env": DEMO_KEY_ENV}]
    tree["key_prefix"] = "hr-demo-" + secrets.token_hex(3)
    tree["auth"], tree["keys"] = "none", []
    tree["batch"] = tree.get("batch", {}) | DEMO_BATCH
    tree["routes"] = tree.get("routes") or [ROUTE]
    return msgspec.convert(tree, Settings)


def outcomes(workload: list[Group]) -> list[dict[str, Any]]:
    """How the two models of the demo's route do on its routed groups' prompts (the `routes learn` format)."""
    rows = []
    for group in workload:
        if group.weak_right is None:
            continue
        task = group.headers["X-Router-Task"]
        for i in range(group.count):
            right = (i * 7919 % 100) < group.weak_right * 100  # a fixed share, spread over the items
            rows.append({"prompt": group.prompt(i), "task": task, "scores": {"gpt-4o": True, "gpt-4o-mini": right}})
    return rows


def teach(settings: Settings, rows: list[dict[str, Any]]) -> None:
    """Import the evidence before the router starts (its first plan is made at start), as `routes learn` would."""
    from router.deferred.store import client as redis_client
    from router.modelroutes.learn import learn
    from router.modelroutes.store import EvidenceStore

    async def run() -> None:
        redis = redis_client.connect(settings.redis_url or "", max_connections=2)
        try:
            store = EvidenceStore(redis, settings.key_prefix)
            await learn(store, settings.routes, [msgspec.json.encode(row) for row in rows], now=time.time())
        finally:
            await redis_client.close(redis)

    asyncio.run(run())


def _invoice_model() -> type[Any]:
    """The Pydantic model the extraction workload parses answers into (pydantic comes with the openai SDK)."""
    import pydantic

    class Invoice(pydantic.BaseModel):
        vendor: str
        invoice_number: str
        total: float
        currency: str
        line_items: list[str]

    return Invoice


async def _drive(base: str, progress: Progress, sim_url: str, workload: list[Group]) -> Tally:
    import openai

    tally = Tally()
    invoice = _invoice_model()
    async with (
        httpx.AsyncClient(timeout=30) as http,
        openai.AsyncOpenAI(base_url=base + "/v1", api_key="demo", timeout=300, max_retries=2) as client,
    ):

        async def one(group: Group, i: int, task: Any) -> None:
            text = group.prompt(i)
            messages: Any = [{"role": "user", "content": text}]
            if group.kind == "embed":
                raw: Any = await client.embeddings.with_raw_response.create(
                    model=group.model, input=text, extra_headers=group.headers
                )
            elif group.kind == "extract":
                text = f"Extract the invoice fields from: invoice {i} from Acme Corp, two items, total 120 EUR."
                raw = await client.chat.completions.with_raw_response.parse(
                    model=group.model, messages=[{"role": "user", "content": text}], response_format=invoice,
                    extra_headers=group.headers,
                )  # fmt: skip
                tally.extractions += 1
                if isinstance(raw.parse().choices[0].message.parsed, invoice):
                    tally.parsed += 1
            elif group.kind == "stream":
                async with client.chat.completions.with_streaming_response.create(
                    model=group.model, messages=messages, stream=True, extra_headers=group.headers
                ) as raw:
                    async for _ in raw.iter_lines():
                        pass
            elif group.kind == "shared":
                shared: Any = [{"role": "system", "content": SHARED_SYSTEM}, *messages]
                raw = await client.chat.completions.with_raw_response.create(
                    model=group.model, messages=shared, extra_headers=group.headers
                )
            elif group.kind == "rerun":
                for _ in range(2):  # the suite's first run, then its re-run of the same call
                    raw = await client.chat.completions.with_raw_response.create(
                        model=group.model, messages=messages, temperature=0, extra_headers=group.headers
                    )
                    tally.add(raw.headers, group.model)
                progress.advance(task)
                return
            else:
                raw = await client.chat.completions.with_raw_response.create(
                    model=group.model, messages=messages, extra_headers=group.headers
                )
            tally.add(raw.headers, group.model)
            progress.advance(task)

        async def watch(task: Any) -> None:
            while True:
                stats = (await http.get(sim_url + "/_sim/stats")).json()
                progress.update(task, completed=stats["batches_created"], total=max(1, stats["batches_created"]))
                await asyncio.sleep(0.5)

        tasks = {g.label: progress.add_task(g.label, total=g.count) for g in workload}
        batches = progress.add_task("provider batches created", total=1)
        watcher = asyncio.create_task(watch(batches))
        try:
            await asyncio.gather(*(one(g, i, tasks[g.label]) for g in workload for i in range(g.count)))
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return tally


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@dataclass
class DemoResult:
    """What the demo saw: per-lane tallies from the response headers, and the router's own metrics."""

    tally: Tally
    saved_usd: float
    baseline_usd: float
    batches: int
    batch_lines: int
    elapsed_s: float
    levers: dict[str, float] = field(default_factory=dict)
    """Savings by lever, from `GET /v1/usage` (the demo's tenant, today)."""


def run_demo(settings: Settings, console: Console | None = None, workload: list[Group] | None = None) -> DemoResult:
    """Start the simulator and the router on loopback, drive the workload, print the tables."""
    if importlib.util.find_spec("openai") is None:  # not a dependency of the router itself
        raise ConfigError("openai", None, "the demo's client is the openai SDK: pip install 'hybrid-router[demo]'")
    console = console or Console()
    workload = workload or WORKLOAD
    rows = outcomes(workload)
    with tempfile.TemporaryDirectory() as scratch:
        recorded = Path(scratch) / "outcomes.jsonl"
        recorded.write_bytes(b"".join(msgspec.json.encode(row) + b"\n" for row in rows))
        sim_config = SimConfig(latency_ms=120, batch_turnaround_s=3.0, stream_chunk_delay_ms=20, api_key=DEMO_KEY,
                               outcomes=str(recorded))  # fmt: skip
        return _run(settings, console, workload, sim_config, rows)


def _run(
    settings: Settings, console: Console, workload: list[Group], sim_config: SimConfig, rows: list[dict[str, Any]]
) -> DemoResult:
    with serve_in_thread(create_simulator(sim_config)) as sim_url:
        ready = demo_settings(settings, sim_url)
        if rows:
            teach(ready, rows)
        with serve_in_thread(create_app(ready, {DEMO_KEY_ENV: DEMO_KEY}), limits=ready.limits) as base:
            console.print(f"[bold]hybrid-router demo[/]: router {base}/v1, simulator {sim_url}/v1")
            console.print(f"Redis: {ready.redis_url}")
            console.print(f"Status page (live while the demo runs): {base}/ui")
            before = httpx.get(base + "/metrics").text
            columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            started = time.monotonic()
            with Progress(*columns, console=console, transient=False) as progress:
                tally = asyncio.run(_drive(base, progress, sim_url, workload))
            elapsed = time.monotonic() - started
            after = httpx.get(base + "/metrics").text
            levers = httpx.get(base + "/v1/usage").json()["savings_by_lever"]
            stats = httpx.get(sim_url + "/_sim/stats").json()
    result = DemoResult(
        tally=tally,
        saved_usd=_metric_sum(after, SAVED) - _metric_sum(before, SAVED),
        baseline_usd=_metric_sum(after, BASELINE) - _metric_sum(before, BASELINE),
        batches=int(stats.get("batches_created", 0)),
        batch_lines=int(stats.get("batch_lines_submitted", 0)),
        elapsed_s=elapsed,
        levers=dict(levers),
    )
    _report(console, result)
    return result


SAVED, BASELINE = "hybrid_router_savings_usd_total", "hybrid_router_baseline_cost_usd_total"


def _report(console: Console, result: DemoResult) -> None:
    tally = result.tally
    table = Table(title="Calls per lane")
    for column in ("lane", "calls", "cost (USD)", "saved (USD)"):
        table.add_column(column, justify="right" if column != "lane" else "left")
    for lane in sorted(tally.calls):
        table.add_row(lane, str(tally.calls[lane]), f"{tally.cost[lane]:.6f}", f"{tally.savings[lane]:.6f}")
    console.print(table)
    saved, baseline = result.saved_usd, result.baseline_usd
    share = saved / baseline * 100 if baseline else 0.0
    summary = Table(title="Savings (from the router's /metrics)", show_header=False)
    summary.add_row("provider batches", str(result.batches))
    summary.add_row("calls sent inside batches", str(result.batch_lines))
    if tally.extractions:
        summary.add_row("structured extractions parsed", f"{tally.parsed} of {tally.extractions}")
    summary.add_row("cost at real-time prices (USD)", f"{baseline:.6f}")
    summary.add_row("cost paid (USD)", f"{baseline - saved:.6f}")
    summary.add_row("saved (USD)", f"{saved:.6f}")
    summary.add_row("saved (%)", f"{share:.1f}%")
    summary.add_row("at this mix, a $10,000/month bill saves", f"${10_000 * share / 100:,.0f}/month")
    summary.add_row("wall time (s)", f"{result.elapsed_s:.1f}")
    console.print(summary)
    if result.levers:
        by_lever = Table(title="Savings by lever (GET /v1/usage)")
        for column in ("lever", "saved (USD)", "share of baseline"):
            by_lever.add_column(column, justify="right" if column != "lever" else "left")
        for lever, usd in sorted(result.levers.items(), key=lambda item: -item[1]):
            by_lever.add_row(lever, f"{usd:.6f}", f"{usd / baseline * 100:.1f}%" if baseline else "-")
        console.print(by_lever)
        console.print(
            f"{tally.routed} urgent calls were answered by the cheaper model where its evidence met the 0.95 quality "
            "target; the rest kept the model they asked for (docs/routing.md)."
        )
