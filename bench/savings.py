"""Savings at the physical limit: the real router against the simulator's heavy-tailed batches, on a trace.

Run from the repository root (needs the Redis at REDIS_URL, default redis://127.0.0.1:6379/0):

    python bench/savings.py [--suite headline|sweep|all] [--calls 200] [--span 20] [--seed 0]
                            [--batch-turnaround lognormal:median=5,p95=30,max=300] [--deadlines 60-150]
                            [--markdown] [--plot docs/savings.png] [--json FILE]

Each run starts a simulator (`SimConfig(batch_turnaround=...)`, batch durations drawn per batch, seeded) and a
router in front of it (`create_app`, every loop running, its own Redis key prefix), then replays a trace: `--calls`
calls arriving at random over `--span` seconds, each with an `X-Deadline` drawn from the scenario's range, spread
over three models (gpt-5-mini, which has a flex price; gpt-4o-mini and gpt-4.1-mini, which do not). Every call is
held (no `Prefer: respond-async`), as an SDK would send it. The runs of a suite go concurrently (each is mostly
waiting on its deadlines).

Per run it reports, from the caller's side and the simulator's billing counters (`GET /_sim/stats`):
- **savings realised as a share of the limit**: the limit is 50% (the batch discount) of the real-time cost of
  every deferred call; realised is real-time cost minus what was paid, where paid counts every billed batch line
  of the call and its answer's own tier (batch, flex, or standard for an escalation);
- **deadlines missed**: answers that arrived after their deadline (measured by the caller);
- **paid twice**: calls billed more than once (a batch line billed besides another answer);
- **calls per lane**: batch, flex (at admission / escalated), standard (at admission / escalated).

Policies on the same trace: "router" (the scenario's settings: prior 20 s, margin 10 s, flex 5 s, cut 3 s before),
"router q=0.5" / "router q=0.99" (other admission quantiles), "router, 1 h prior" (the shipped prior, learning
through probes on a fresh router), and the baselines "never batch" (every call real
time), "fixed 1 h prior" (today's default admission: a 1 h prior, no probes, so nothing short reaches a batch) and
"always batch" (every deferrable call batched within a second, whatever its deadline; the guard still escalates).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx
import redis

from router.core.pricing import PriceTable, Usage, load_pricing, usage_from_body
from router.core.settings import load_settings
from router.http.app import create_app
from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from router.simulator.config import Turnaround

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("gpt-5-mini", "gpt-4o-mini", "gpt-4.1-mini")
NO_POLICIES = ROOT / "tests" / "data" / "policies_none"
SETTLE_S = 30.0  # after the last answer, wait (at most this long) for cut batches to end before reading billing

# The scenario's router settings: every policy starts from these.
BASE_BATCH: dict[str, Any] = {
    "margin_s": 10.0,
    "flex_s": 5.0,
    "cancel_lead_s": 3.0,
    "turnaround_prior_s": 20.0,
    "poll_interval_s": 0.5,
    "lease_s": 10.0,
    "keepalive_s": 5.0,
}
RESERVE_S = BASE_BATCH["margin_s"] + BASE_BATCH["flex_s"] + BASE_BATCH["cancel_lead_s"]
"""How long before its deadline a call's batch must be back (flex queues), in the scenario's settings."""
POLICIES: dict[str, dict[str, Any]] = {
    "router": {},
    "router q=0.5": {"batch": {"admit_quantile": 0.5}},
    "router q=0.99": {"batch": {"admit_quantile": 0.99}},
    "router, 1 h prior": {"batch": {"turnaround_prior_s": 3600.0}},
    "never batch": {"upstream": {"batch": False, "flex": False}},
    "fixed 1 h prior": {"batch": {"turnaround_prior_s": 3600.0, "probe": False}},
    "always batch": {"batch": {"turnaround_prior_s": 0.001, "turnaround_min_observations": 1e9, "max_wait_s": 1.0}},
}


@dataclass(frozen=True)
class Scenario:
    """A trace's shape: turnaround distribution, deadline range (seconds after arrival), size and seed; `prior_s`
    overrides the routers' turnaround prior."""

    name: str
    turnaround: str
    deadlines: tuple[float, float]
    calls: int = 200
    span_s: float = 20.0
    seed: int = 0
    prior_s: float | None = None


@dataclass(frozen=True)
class Call:
    """One call of the trace."""

    index: int
    at: float
    deadline_s: float
    model: str


@dataclass
class Outcome:
    """What one call got."""

    call: Call
    lane: str = "error"
    escalated: bool = False
    call_id: str = ""
    sent: float = 0.0
    done: float = 0.0
    usage: Usage | None = None
    error: str | None = None


@dataclass
class Result:
    """One (scenario, policy) run, summed up."""

    scenario: str
    policy: str
    turnaround: str
    deadlines: tuple[float, float]
    calls: int
    seed: int
    savings_share: float = 0.0
    realised_usd: float = 0.0
    limit_usd: float = 0.0
    missed: int = 0
    paid_twice: int = 0
    errors: int = 0
    lanes: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    batch_lines_billed: int = 0
    realtime_calls_billed: int = 0
    wall_s: float = 0.0
    answer_p50_s: float = 0.0
    answer_p95_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)


def trace(s: Scenario) -> list[Call]:
    """Arrivals uniform over the span, deadlines uniform in the range, models in rotation (seeded)."""
    rng = random.Random(f"trace:{s.seed}")
    times = sorted(rng.uniform(0, s.span_s) for _ in range(s.calls))
    return [
        Call(index=i, at=at, deadline_s=rng.uniform(*s.deadlines), model=MODELS[i % len(MODELS)])
        for i, at in enumerate(times)
    ]


def router_tree(policy: str, sim_v1: str, redis_url: str, prior_s: float | None = None) -> dict[str, Any]:
    """The settings tree of one policy's router in front of `sim_v1`."""
    over = POLICIES[policy]
    batch = BASE_BATCH | ({"turnaround_prior_s": prior_s} if prior_s is not None else {}) | over.get("batch", {})
    upstream = {"name": "openai", "kind": "openai", "base_url": sim_v1, "api_key_env": "SIM_KEY", "flex": True}
    return {
        "upstreams": [upstream | over.get("upstream", {})],
        "redis_url": redis_url,
        "key_prefix": "bench-" + secrets.token_hex(4),
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "batch": batch,
    }


@contextlib.contextmanager
def servers(scenario: Scenario, policy: str, redis_url: str) -> Iterator[tuple[str, str, str]]:
    """A simulator and a router for one run: (simulator base, router base, key prefix); keys deleted after."""
    sim_config = SimConfig(batch_turnaround=scenario.turnaround, seed=scenario.seed, latency_ms=100)
    with serve_in_thread(create_simulator(sim_config)) as sim:
        tree = router_tree(policy, sim + "/v1", redis_url, scenario.prior_s)
        settings = load_settings(None, {}, tree)
        try:
            with serve_in_thread(create_app(settings, {"SIM_KEY": "sk-sim"})) as base:
                yield sim, base, tree["key_prefix"]
        finally:
            with redis.Redis.from_url(redis_url) as client:
                keys = list(client.scan_iter(match=f"{tree['key_prefix']}:*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])


async def send(client: httpx.AsyncClient, base: str, call: Call, start: float) -> Outcome:
    """Send one call at its arrival time and wait for its answer (held), bounded by its deadline plus a minute."""
    await asyncio.sleep(max(0.0, start + call.at - time.monotonic()))
    out = Outcome(call=call, sent=time.monotonic())
    body = {"model": call.model, "messages": [{"role": "user", "content": f"Summarise ticket {call.index} briefly."}]}
    headers = {"x-deadline": f"{call.deadline_s:.3f}s"}
    try:
        response = await client.post(base + "/v1/chat/completions", json=body, headers=headers,
                                     timeout=call.deadline_s + 60)  # fmt: skip
    except httpx.HTTPError as exc:
        out.done, out.error = time.monotonic(), repr(exc)
        return out
    out.done = time.monotonic()
    if response.status_code != 200:
        out.error = f"{response.status_code}: {response.text[:200]}"
        return out
    out.call_id = response.headers.get("x-router-request-id", "")
    out.usage = usage_from_body(response.content)
    got = response.headers
    if got.get("x-router-lane") == "batch":
        # A held call's headers go out when the router commits to holding it, before the call knows how it ends:
        # the stored result says which lane answered it.
        got = await stored_headers(client, base, out.call_id)
    out.lane = got.get("x-router-lane", "?")
    out.escalated = got.get("x-router-escalated") == "true"
    return out


async def stored_headers(client: httpx.AsyncClient, base: str, call_id: str) -> httpx.Headers:
    """The headers of a deferred call's stored result (retried: a kept-alive connection may have just closed)."""
    for attempt in range(5):
        try:
            return (await client.get(f"{base}/v1/deferred/{call_id}", timeout=30)).headers
        except httpx.TransportError:
            if attempt == 4:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


def lane_key(o: Outcome) -> str:
    if o.error is not None:
        return "error"
    if o.lane == "batch":
        return "batch"
    return f"{'flex' if o.lane == 'flex' else 'standard'} ({'escalated' if o.escalated else 'admission'})"


def tally(scenario: Scenario, policy: str, outcomes: list[Outcome], stats: dict[str, Any], prices: PriceTable,
          wall: float) -> Result:  # fmt: skip
    """Money, deadlines, double payments and lanes of one run."""
    billed: dict[str, int] = stats["batch_lines_billed_by_custom_id"]
    result = Result(
        scenario=scenario.name, policy=policy, turnaround=scenario.turnaround, deadlines=scenario.deadlines,
        calls=len(outcomes), seed=scenario.seed, batches=stats["batches_created"],
        batch_lines_billed=stats["batch_lines_billed"], realtime_calls_billed=stats["realtime_calls_billed"],
        wall_s=wall,
    )  # fmt: skip
    for o in outcomes:
        if o.error is not None or o.usage is None:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"call {o.call.index} after {o.done - o.sent:.1f} s: {o.error}")
            continue
        realtime = prices.cost(o.call.model, o.usage, "realtime")
        batch = prices.cost(o.call.model, o.usage, "batch")
        assert realtime is not None and batch is not None, o.call.model
        lines = billed.get(o.call_id, 0)
        own = {"batch": batch, "flex": prices.cost(o.call.model, o.usage, "flex") or realtime}.get(o.lane, realtime)
        extra = lines - 1 if o.lane == "batch" else lines
        paid = own.actual_usd + max(0, extra) * batch.actual_usd
        result.limit_usd += realtime.actual_usd - batch.actual_usd
        result.realised_usd += realtime.actual_usd - paid
        result.paid_twice += extra > 0
        result.missed += o.done - o.sent > o.call.deadline_s
    result.lanes = dict(Counter(lane_key(o) for o in outcomes))
    waits = sorted(o.done - o.sent for o in outcomes if o.error is None)
    if waits:
        result.answer_p50_s = waits[len(waits) // 2]
        result.answer_p95_s = waits[min(len(waits) - 1, int(0.95 * len(waits)))]
    result.savings_share = result.realised_usd / result.limit_usd if result.limit_usd else 0.0
    return result


async def settle(base: str, client: httpx.AsyncClient) -> None:
    """Wait until the router has no batch in flight (cut batches end, their lines are counted), bounded."""
    until = time.monotonic() + SETTLE_S
    while time.monotonic() < until:
        text = (await client.get(base + "/metrics")).text
        inflight = next((ln for ln in text.splitlines() if ln.startswith("hybrid_router_batches_inflight ")), None)
        if inflight is not None and float(inflight.split()[-1]) == 0:
            return
        await asyncio.sleep(0.5)


async def run(scenario: Scenario, policy: str, redis_url: str, prices: PriceTable) -> Result:
    """One run: servers up, the trace replayed, billing read, servers down."""
    calls = trace(scenario)
    with servers(scenario, policy, redis_url) as (sim, base, _):
        # Idle connections are dropped before uvicorn's 5 s keep-alive ends them, so a call never goes out on a
        # connection the server is closing (an SDK would retry that ReadError; this client does not retry).
        limits = httpx.Limits(
            max_connections=len(calls) + 10, max_keepalive_connections=len(calls) + 10, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(limits=limits) as client:
            start = time.monotonic()
            outcomes = await asyncio.gather(*(send(client, base, c, start) for c in calls))
            wall = time.monotonic() - start
            await settle(base, client)
            stats = (await client.get(sim + "/_sim/stats")).json()
    return tally(scenario, policy, list(outcomes), stats, prices, wall)


def headline(calls: int, span: float, seed: int, turnaround: str, deadlines: tuple[float, float]) -> list[Scenario]:
    """The issue's scenario and its relaxed variant (deadlines 2-4x the p95, as slack beyond the reserve)."""
    p95 = float(turnaround.split("p95=")[1].split(",")[0]) if "p95=" in turnaround else float(turnaround)
    return [
        Scenario("base", turnaround, deadlines, calls, span, seed),
        Scenario("relaxed", turnaround, (RESERVE_S + 2 * p95, RESERVE_S + 4 * p95), calls, span, seed),
    ]


SWEEP_POLICIES = ("router", "router q=0.5", "always batch")
SWEEP_TAILS = ((15.0, 150.0), (30.0, 300.0), (60.0, 600.0))  # p95, max; median 5 s throughout
SWEEP_SLACK = (0.5, 1.0, 1.5, 2.0, 4.0)  # deadline slack beyond the reserve, as multiples of the p95 (times 1 to 1.5)


def settled_prior(scenario: Scenario, policy: str) -> float:
    """The turnaround quantile a queue's model settles on under `policy` (its `admit_quantile` of the scenario's
    lognormal), used as the prior so the sweep shows the steady state rather than a fresh router's guess."""
    spec = Turnaround.parse(scenario.turnaround)
    q = POLICIES[policy].get("batch", {}).get("admit_quantile", 0.95)
    sigma = math.log(spec.p95 / spec.median) / NormalDist().inv_cdf(0.95)
    return min(spec.max, spec.median * math.exp(sigma * NormalDist().inv_cdf(q)))


def sweep(calls: int, span: float, seed: int) -> list[Scenario]:
    """Savings against deadline slack and turnaround tail (the plot); priors: `settled_prior`."""
    out = []
    for p95, top in SWEEP_TAILS:
        for k in SWEEP_SLACK:
            deadlines = (RESERVE_S + k * p95, RESERVE_S + 1.5 * k * p95)
            spec = f"lognormal:median=5,p95={p95:g},max={top:g}"
            out.append(Scenario(f"sweep p95={p95:g} slack={k:g}x", spec, deadlines, calls, span, seed, prior_s=p95))
    return out


def markdown(results: list[Result]) -> str:
    """The results as a Markdown table."""
    lanes = ("batch", "flex (admission)", "flex (escalated)", "standard (admission)", "standard (escalated)")
    head = ["scenario", "seed", "policy", "savings / limit", "missed", "paid twice", *lanes, "batches", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r.scenario, str(r.seed), r.policy, f"{100 * r.savings_share:.1f}%", str(r.missed),
                 f"{r.paid_twice} ({100 * r.paid_twice / max(1, r.calls):.1f}%)",
                 *(str(r.lanes.get(lane, 0)) for lane in lanes), str(r.batches), str(r.errors)]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary(results: list[Result]) -> str:
    """Per scenario and policy over the seeds: savings share (mean, min), misses, double payments and lanes."""
    lanes = ("batch", "flex (admission)", "flex (escalated)", "standard (admission)", "standard (escalated)")
    head = ["scenario", "policy", "runs", "savings / limit, mean", "min", "missed", "paid twice", "answer p50 / p95",
            *lanes]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.policy), []).append(r)
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    order = sorted(groups, key=lambda key: (scenarios.index(key[0]), list(POLICIES).index(key[1])))
    for scenario, policy in order:
        runs = groups[scenario, policy]
        calls = sum(r.calls for r in runs)
        twice = sum(r.paid_twice for r in runs)
        shares = [100 * r.savings_share for r in runs]
        cells = [scenario, policy, str(len(runs)), f"{statistics.mean(shares):.1f}%", f"{min(shares):.1f}%",
                 f"{sum(r.missed for r in runs)} of {calls}", f"{twice} ({100 * twice / max(1, calls):.2f}%)",
                 f"{statistics.median(r.answer_p50_s for r in runs):.0f} s / "
                 f"{statistics.median(r.answer_p95_s for r in runs):.0f} s",
                 *(str(sum(r.lanes.get(lane, 0) for r in runs)) for lane in lanes)]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(results: list[Result], path: Path) -> None:
    """Savings share against deadline slack, one line per turnaround tail (the sweep runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for (p95, _), color in zip(SWEEP_TAILS, ("tab:blue", "tab:orange", "tab:red"), strict=True):
        for policy, style in (("router", "-o"), ("router q=0.5", "--s"), ("always batch", ":x")):
            points = sorted(
                (float(r.scenario.split("slack=")[1].rstrip("x")), 100 * r.savings_share)
                for r in results
                if r.policy == policy and r.scenario.startswith(f"sweep p95={p95:g} ")
            )
            if points:
                label = f"{policy}, p95 {p95:g} s"
                ax.plot(*zip(*points, strict=True), style, color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(SWEEP_SLACK, [f"{k:g}x" for k in SWEEP_SLACK])
    ax.set_xlabel("deadline slack beyond the router's reserve, in multiples of the turnaround p95")
    ax.set_ylabel("savings realised, % of the limit")
    ax.set_ylim(0, 105)
    ax.axhline(90, color="grey", linewidth=0.8, linestyle="--")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("hybrid-router: savings vs deadline slack and turnaround tail")
    fig.tight_layout()
    fig.savefig(path)


async def main_async(args: argparse.Namespace) -> list[Result]:
    prices = load_pricing(ROOT / "config" / "pricing.yaml")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    deadlines = tuple(float(x) for x in args.deadlines.split("-"))
    jobs: list[tuple[Scenario, str]] = []
    for seed in range(args.seed, args.seed + args.seeds):
        if args.suite in ("headline", "all"):
            for scenario in headline(args.calls, args.span, seed, args.batch_turnaround, deadlines):  # type: ignore[arg-type]
                jobs += [(scenario, policy) for policy in args.policies]
        if args.suite in ("sweep", "all"):
            policies = [p for p in SWEEP_POLICIES if p in args.policies]
            for scenario in sweep(args.calls, args.span, seed):
                jobs += [(dataclasses.replace(scenario, prior_s=settled_prior(scenario, p)), p) for p in policies]
    limit = asyncio.Semaphore(args.parallel)

    async def one(scenario: Scenario, policy: str) -> Result:
        async with limit:
            result = await run(scenario, policy, redis_url, prices)
            share = f"{100 * result.savings_share:.1f}%"
            print(f"  {scenario.name} / seed {scenario.seed} / {policy}: {share} of the limit, "
                  f"{result.missed} missed, {result.paid_twice} paid twice", file=sys.stderr)  # fmt: skip
            return result

    return list(await asyncio.gather(*(one(s, p) for s, p in jobs)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("headline", "sweep", "all"), default="headline")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--span", type=float, default=20.0, help="seconds over which the calls arrive")
    parser.add_argument("--seed", type=int, default=0, help="the first seed (trace and batch durations)")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds, from --seed on")
    parser.add_argument("--batch-turnaround", default="lognormal:median=5,p95=30,max=300")
    parser.add_argument("--deadlines", default="60-150", help="base scenario deadline range, seconds")
    parser.add_argument("--parallel", type=int, default=12, help="runs at once")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the sweep's PNG here")
    parser.add_argument("--json", type=Path, help="write every result as JSON here")
    parser.add_argument("--from-json", type=Path, nargs="+", help="report (and plot) saved results, not run")
    args = parser.parse_args()
    started = time.monotonic()
    if args.from_json:
        saved = [r for path in args.from_json for r in json.loads(path.read_text())]
        results = [Result(**{"error_samples": [], **r, "deadlines": tuple(r["deadlines"])}) for r in saved]
    else:
        results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    if args.plot:
        plot(results, args.plot)
    if args.markdown:
        print(summary(results) + "\n\n" + markdown(results))
    else:
        print("\n".join(map(str, results)))
    shares = [r.savings_share for r in results if r.policy == "router"]
    if shares:
        print(f"\nrouter: median savings share {100 * statistics.median(shares):.1f}% over {len(shares)} runs; "
              f"{time.monotonic() - started:.0f} s in all", file=sys.stderr)  # fmt: skip
    for r in results:
        for sample in r.error_samples:
            print(f"error in {r.scenario} / seed {r.seed} / {r.policy}: {sample}", file=sys.stderr)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
