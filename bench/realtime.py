"""Real-time hot path: what the router adds to a call, per upstream transport, as ratios against a direct call.

Run from the repository root (needs the Redis at REDIS_URL, default redis://127.0.0.1:6379/0):

    python bench/realtime.py [--duration 10] [--concurrency 32] [--latency-ms 0]
                             [--transport both|aiohttp|httpx] [--workers 1[,2...]] [--warmup 2] [--rounds 1]
                             [--markdown]

It starts the built-in simulator once and one router per transport (`python -m router ...`, each its own
process on 127.0.0.1), then for each call kind (a small non-streamed and a streamed `POST /v1/chat/completions`,
model gpt-4o-mini) and each target ("direct" = the simulator, "router/aiohttp", "router/httpx") runs a
closed loop of `--concurrency` callers for `--duration` seconds after a `--warmup`. It reports requests/s,
p50/p90/p99 latency (time to the end of the body; streams also time to the first body byte), errors, the
ratios against "direct" in the same run, the mean of the router's own `hybrid_router_proxy_overhead_seconds`
histogram over the measured window, and the CPU time per call of the process the caller talks to (read from
/proc). With `--rounds N` every (kind, target) is measured N times in rotated order and the samples pooled,
so slow drift on a shared machine does not favour whoever runs first. `--workers 1,2` starts one router per
transport and worker count (`serve --workers N`); a router's CPU is then that of all its processes.

The load generator is one process, one event loop (uvloop), one `aiohttp.ClientSession`: plain aiohttp is the
lightest client at hand (no httpx request/response model on top), which matters on a 2-core machine where
it shares the cores with both servers. Everything is bounded: each call times out after 30 s, each phase
stops starting calls at its deadline, servers get SIGTERM then SIGKILL, and the run's Redis keys (prefix
`bench-<random>`) are deleted at the end. Exits 1 if any target answered an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis
import uvloop
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Console
from rich.table import Table

from router.ops.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
KINDS = ("non-streamed", "streamed")
TRANSPORTS = ("aiohttp", "httpx")
CALL_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0
OVERHEAD_METRIC = "hybrid_router_proxy_overhead_seconds"
GC_METRIC = "hybrid_router_gc_pause_seconds"
LAG_METRIC = "hybrid_router_event_loop_lag_seconds"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"  # the router's key for the simulator, which accepts any non-empty key
HEADERS = {"authorization": "Bearer sk-bench", "content-type": "application/json"}
# A short prompt and a 16-token answer: the call costs little, so what is measured is the path, not the payload.
# The streamed body leaves out stream_options, as most clients do: the router then asks for usage and strips it.
_BODY = '{"model":"%s","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16%s}'
BODIES = {"non-streamed": (_BODY % (MODEL, "")).encode(), "streamed": (_BODY % (MODEL, ',"stream":true')).encode()}


@dataclass
class Target:
    """Where the load goes: the simulator itself, or a router in front of it."""

    name: str
    base_url: str
    pid: int
    router: bool


@dataclass
class Tally:
    """What one (kind, target) measured, pooled over rounds."""

    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    overhead_sum_s: float = 0.0
    overhead_count: float = 0.0
    gc_s: float = 0.0
    gc_count: float = 0.0
    lag: dict[float, float] = field(default_factory=dict)  # the loop-lag histogram's cumulative buckets (le -> count)

    def add(self, other: Tally) -> None:
        """Pool another round's samples into this one."""
        self.latencies += other.latencies
        self.ttfbs += other.ttfbs
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.elapsed_s += other.elapsed_s
        self.cpu_s += other.cpu_s
        self.client_cpu_s += other.client_cpu_s
        self.overhead_sum_s += other.overhead_sum_s
        self.overhead_count += other.overhead_count
        self.gc_s += other.gc_s
        self.gc_count += other.gc_count
        for le, count in other.lag.items():
            self.lag[le] = self.lag.get(le, 0.0) + count

    def fail(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed_s if self.elapsed_s else 0.0


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children so far, from /proc (nan where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the workers of `serve --workers`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


# --- servers -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def server(
    args: list[str],
    env: dict[str, str],
    ready_url: str,
    log: Path,
    cpus: set[int] | None = None,
    module: str = "router",
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m router ARGS` in its own process (its own event loop), until it answers `ready_url`; pinned to
    `cpus` when given (its workers inherit the pinning)."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=out, stderr=out)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"`{' '.join(args[:1])}` did not come up (exit {proc.returncode}):\n{tail}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready_url, timeout=1) as answer:
                if answer.status == 200:
                    break
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()  # uvicorn shuts down on SIGTERM; the router's lifespan closes its pools
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def router_config(directory: Path, sim_port: int, transport: str) -> Path:
    """A config with one upstream (the simulator) over `transport`, no policies, the repo's pricing table."""
    policies = directory / "policies"
    policies.mkdir(exist_ok=True)  # empty: no rule applies, every call takes the real-time lane
    config = {
        "upstreams": [
            {
                "name": "sim",
                "kind": "openai",
                "base_url": f"http://127.0.0.1:{sim_port}/v1",
                "api_key_env": UPSTREAM_KEY_ENV,
                "transport": transport,
            }
        ],
        "policies_dir": str(policies),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
    }
    path = directory / f"router-{transport}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def delete_keys(redis_url: str, prefix: str) -> int:
    """Remove every key this run wrote."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


# --- load ----------------------------------------------------------------------------------------------------


async def one_call(session: aiohttp.ClientSession, url: str, kind: str, tally: Tally) -> None:
    """One call; a success adds its latency (and time to first byte), anything else counts as an error."""
    started = time.perf_counter()
    first = math.nan
    try:
        async with session.post(url, data=BODIES[kind], headers=HEADERS) as answer:
            if kind == "streamed":
                tail = b""
                async for chunk in answer.content.iter_any():
                    if math.isnan(first):
                        first = time.perf_counter() - started
                    tail = (tail + chunk)[-64:]
                ok = answer.status == 200 and b"[DONE]" in tail
            else:
                ok = answer.status == 200 and b'"choices"' in await answer.read()
            if not ok:
                tally.fail(f"HTTP {answer.status}")
                return
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.fail(f"{type(exc).__name__}: {exc}")
        return
    tally.latencies.append(time.perf_counter() - started)
    if kind == "streamed":
        tally.ttfbs.append(first)


async def closed_loop(session: aiohttp.ClientSession, url: str, kind: str, concurrency: int, seconds: float) -> Tally:
    """`concurrency` callers, each starting its next call when the last one ends, until `seconds` have passed."""
    tally = Tally()
    started = time.perf_counter()
    deadline = started + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            await one_call(session, url, kind, tally)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    tally.elapsed_s = time.perf_counter() - started  # includes the tail of calls in flight at the deadline
    return tally


async def router_metrics(session: aiohttp.ClientSession, target: Target) -> dict[str, float]:
    """The router's own view right now: the proxy-overhead histogram's sum and count, the GC pauses' (every
    generation), and the loop-lag histogram's cumulative buckets (keys `lag:<le>`)."""
    async with session.get(f"{target.base_url}/metrics") as answer:
        text = await answer.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for metric, short in ((OVERHEAD_METRIC, "overhead"), (GC_METRIC, "gc")):
                suffix = sample.name.removeprefix(metric + "_")
                if sample.name.startswith(metric) and suffix in ("sum", "count"):
                    values[f"{short}_{suffix}"] = values.get(f"{short}_{suffix}", 0.0) + sample.value
            if sample.name == LAG_METRIC + "_bucket":
                key = f"lag:{float(sample.labels['le'])}"
                values[key] = values.get(key, 0.0) + sample.value
    return values


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    """The upper bound of the histogram bucket holding quantile `q` (nan when empty)."""
    total = buckets.get(math.inf, 0.0)
    if not total:
        return math.nan
    return next(le for le, count in sorted(buckets.items()) if count >= q * total)


def profiler(target: Target, kind: str, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    """`py-spy record` on a router for the measured window, a flame graph (SVG) into `--profile`, once per
    (target, kind): the first round's."""
    if args.profile is None or not target.router:
        return None
    suffix = ".txt" if args.profile_raw else ".svg"  # collapsed stacks (one line per stack and its count), or SVG
    out = args.profile / f"{target.name.replace('/', '-').replace(' ', '')}-{kind}{suffix}"
    if out.exists() and out.stat().st_mtime > args.started:
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    fmt = "flamegraph" if out.suffix == ".svg" else "raw"
    command = [str(py_spy), "record", "--pid", str(target.pid), "--duration", str(math.ceil(args.duration))]
    command += ["--rate", "250", "--subprocesses", "--nonblocking", "--format", fmt, "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scrub(path: Path) -> None:
    """A profile names the processes by their command line: drop this checkout's and the run's directories, so a
    committed flame graph names no machine path."""
    if path.exists():
        text = path.read_text(errors="replace").replace(str(ROOT) + "/", "")
        path.write_text(re.sub(re.escape(tempfile.gettempdir()) + r"/bench-realtime-\w+/", "", text))


async def measure_one(session: aiohttp.ClientSession, target: Target, kind: str, args: argparse.Namespace) -> Tally:
    """Warm up (opens the connections, fills the pools), then measure; CPU and router metrics read around it."""
    url = f"{target.base_url}/v1/chat/completions"
    await closed_loop(session, url, kind, args.concurrency, args.warmup)
    before = await router_metrics(session, target) if target.router else {}
    spy = profiler(target, kind, args)
    cpu_before, client_before = cpu_seconds(target.pid), time.process_time()
    tally = await closed_loop(session, url, kind, args.concurrency, args.duration)
    if spy is not None:
        await asyncio.to_thread(spy.wait, 60)
        scrub(Path(str(spy.args[-1])))
    tally.cpu_s, tally.client_cpu_s = cpu_seconds(target.pid) - cpu_before, time.process_time() - client_before
    after = await router_metrics(session, target) if target.router else {}
    delta = {key: value - before.get(key, 0.0) for key, value in after.items()}
    tally.overhead_sum_s, tally.overhead_count = delta.get("overhead_sum", 0.0), delta.get("overhead_count", 0.0)
    tally.gc_s, tally.gc_count = delta.get("gc_sum", 0.0), delta.get("gc_count", 0.0)
    tally.lag = {float(key[4:]): value for key, value in delta.items() if key.startswith("lag:")}
    return tally


async def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, Tally]]:
    """Every (kind, target), warm-up then measured window, rounds rotated; the router metrics read around it."""
    kinds = KINDS if args.kinds == "both" else (args.kinds,)
    pooled = {kind: {t.name: Tally() for t in targets} for kind in kinds}
    connector = aiohttp.TCPConnector(limit=args.concurrency, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for round_ in range(args.rounds):
            for kind in kinds:
                shift = round_ % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    tally = await measure_one(session, target, kind, args)
                    pooled[kind][target.name].add(tally)
    return pooled


# --- report --------------------------------------------------------------------------------------------------


RELATIVE = frozenset(
    {"x req/s", "x p50", "x p99", "+p50 ms", "+p99 ms", "overhead mean ms", "GC ms/call", "loop lag p99 ms"}
)


def ratio(value: float, direct: float) -> str:
    return f"{value / direct:.2f}" if direct else "-"


def columns(kind: str) -> list[str]:
    """The header of one kind's table; `rows` fills them in this order."""
    ttfb = ["TTFB p50 ms", "TTFB p99 ms"] if kind == "streamed" else []
    against = ["x req/s", "x p50", "x p99", "+p50 ms", "+p99 ms", "overhead mean ms", "GC ms/call", "loop lag p99 ms"]
    cpu = ["CPU ms/call", "client CPU ms/call"]
    return ["target", "req/s", "p50 ms", "p90 ms", "p99 ms", *ttfb, "errors", *against, *cpu]


def rows(kind: str, tallies: dict[str, Tally]) -> list[list[str]]:
    """One row per target; ratios and added latency against "direct" of the same kind and run."""
    direct = tallies["direct"]
    d50, d99 = quantile(direct.latencies, 0.5), quantile(direct.latencies, 0.99)
    out = []
    for name, t in tallies.items():
        p50, p90, p99 = (quantile(t.latencies, q) for q in (0.5, 0.9, 0.99))
        row = [name, f"{t.rps:,.0f}", f"{p50 * 1e3:.2f}", f"{p90 * 1e3:.2f}", f"{p99 * 1e3:.2f}"]
        if kind == "streamed":
            row += [f"{quantile(t.ttfbs, 0.5) * 1e3:.2f}", f"{quantile(t.ttfbs, 0.99) * 1e3:.2f}"]
        row += [str(t.errors), ratio(t.rps, direct.rps), ratio(p50, d50), ratio(p99, d99)]
        calls = len(t.latencies) + t.errors
        if name == "direct":
            row += ["-"] * 5
        else:
            mean = t.overhead_sum_s / t.overhead_count * 1e3 if t.overhead_count else math.nan
            row += [f"{(p50 - d50) * 1e3:+.2f}", f"{(p99 - d99) * 1e3:+.2f}", f"{mean:.3f}"]
            row += [f"{t.gc_s / calls * 1e3:.3f}" if calls else "-", f"≤{bucket_quantile(t.lag, 0.99) * 1e3:g}"]
        row += [f"{cpu / calls * 1e3:.3f}" if calls else "-" for cpu in (t.cpu_s, t.client_cpu_s)]
        out.append(row)
    return out


def revision() -> str:
    """The commit the servers run ("-dirty" when the work tree differs from it)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def context(args: argparse.Namespace, load_before: float, commit: str) -> str:
    """The command and the conditions: results without them cannot be compared."""
    command = " ".join(["python", "bench/realtime.py", *sys.argv[1:]])
    return (
        f"`{command}` — {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, nproc {os.cpu_count()}, "
        f"Python {sys.version.split()[0]}; concurrency {args.concurrency}, {args.duration:g} s measured "
        f"after {args.warmup:g} s warm-up, {args.rounds} round(s), simulator latency {args.latency_ms:g} ms; "
        f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )


NOTES = (
    "Latency = to the end of the body. x = ratio to direct (req/s: higher is better; latency: lower). "
    "+ = router - direct. Overhead mean = the router's hybrid_router_proxy_overhead_seconds (sum/count, "
    "measured window). CPU ms/call = CPU time of the process the load generator calls (the simulator for "
    "direct, the router alone for router rows) per call; client CPU = the load generator's own. GC ms/call = "
    "the router's hybrid_router_gc_pause_seconds per call; loop lag p99 = the bucket of "
    "hybrid_router_event_loop_lag_seconds holding its 99th percentile (a probe every 0.1 s)."
)


def guard(pooled: dict[str, dict[str, Tally]], args: argparse.Namespace) -> list[str]:
    """`make bench`'s summary: per kind and router, the added p50/p99 and the CPU per call, beside direct's."""
    lines = []
    for kind, tallies in pooled.items():
        direct = tallies["direct"]
        d50, d99 = quantile(direct.latencies, 0.5), quantile(direct.latencies, 0.99)
        d_cpu = direct.cpu_s / max(1, len(direct.latencies) + direct.errors)
        for name, t in tallies.items():
            if name == "direct":
                continue
            calls = max(1, len(t.latencies) + t.errors)
            p50, p99, cpu = quantile(t.latencies, 0.5), quantile(t.latencies, 0.99), t.cpu_s / calls
            lines.append(
                f"guard {kind} {name} c={args.concurrency} upstream {args.latency_ms:g} ms: "
                f"added p50 {(p50 - d50) * 1e3:+.2f} ms, p99 {(p99 - d99) * 1e3:+.2f} ms; "
                f"router CPU {cpu * 1e3:.3f} ms/call (simulator {d_cpu * 1e3:.3f}); "
                f"req/s x{t.rps / direct.rps if direct.rps else math.nan:.2f} of direct; "
                f"GC {t.gc_s / calls * 1e3:.3f} ms/call; loop lag p99 <={bucket_quantile(t.lag, 0.99) * 1e3:g} ms; "
                f"errors {t.errors}"
            )
    return lines


def report(pooled: dict[str, dict[str, Tally]], args: argparse.Namespace, load_before: float, commit: str) -> None:
    """Rich tables on the terminal (absolute numbers, then the ratios), Markdown too with `--markdown`."""
    console = Console() if sys.stdout.isatty() else Console(width=120)  # piped: not squeezed to 80 columns
    console.print(context(args, load_before, commit))
    for kind, tallies in pooled.items():
        head, body = columns(kind), rows(kind, tallies)
        for part, relative in (("measured", False), ("against direct", True)):
            picked = [i for i, name in enumerate(head) if i == 0 or (name in RELATIVE) == relative]
            table = Table(title=f"{kind} POST /v1/chat/completions: {part}", title_justify="left", box=box.SIMPLE_HEAD)
            for i in picked:
                table.add_column(head[i].replace(" ", "\n", 1), justify="left" if i == 0 else "right")
            for row in body:
                table.add_row(*(row[i] for i in picked))
            console.print(table)
    console.print(NOTES, style="dim")
    for kind, tallies in pooled.items():
        for name, t in tallies.items():
            if t.errors:
                console.print(f"{kind} {name}: {t.errors} errors, first: {t.first_error}", style="red", markup=False)
    if args.guard:
        print("\n".join([context(args, load_before, commit), *guard(pooled, args)]))
    if args.markdown:
        lines = [context(args, load_before, commit), ""]
        for kind, tallies in pooled.items():
            head = columns(kind)
            lines += [f"**{kind}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in rows(kind, tallies)]
            lines.append("")
        lines.append(NOTES)
        print("\n".join(lines))


# --- main ----------------------------------------------------------------------------------------------------


def bounded(low: float, high: float, kind: type[float] | type[int]) -> Callable[[str], float]:
    """An argparse type that refuses values outside [low, high]: every run stays bounded."""

    def parse(text: str) -> float:
        value = kind(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within [{low:g}, {high:g}]")
        return value

    return parse


def worker_counts(text: str) -> list[int]:
    """`--workers 1,2`: one router per count."""
    counts = [int(part) for part in text.split(",")]
    if not counts or any(not 1 <= n <= 16 for n in counts):
        raise argparse.ArgumentTypeError("worker counts must be within [1, 16]")
    return counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=bounded(1, 300, float), default=10.0, help="measured seconds per target")
    parser.add_argument("--concurrency", type=bounded(1, 512, int), default=32, help="closed-loop callers")
    parser.add_argument("--latency-ms", type=bounded(0, 10_000, float), default=0.0, help="simulator latency")
    parser.add_argument("--transport", choices=("both", *TRANSPORTS), default="both", help="routers to start")
    parser.add_argument("--workers", type=worker_counts, default=[1], help="router processes, e.g. 1,2 (both)")
    parser.add_argument("--warmup", type=bounded(0, 60, float), default=2.0, help="unmeasured seconds first")
    parser.add_argument("--rounds", type=bounded(1, 10, int), default=1, help="interleaved repeats, pooled")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables for RESULTS.md")
    parser.add_argument(
        "--gc", choices=("tuned", "default", "both"), default="tuned", help="routers' gc_tuning (both: one of each)"
    )
    parser.add_argument(
        "--granian", action="store_true", help="also the same app under granian (needs granian importable)"
    )
    parser.add_argument("--guard", action="store_true", help="end with one summary line per kind and router")
    parser.add_argument("--kinds", choices=("both", *KINDS), default="both", help="call kinds to measure")
    parser.add_argument(
        "--pin", action="store_true", help="routers on CPU 0; the simulator and the load generator on CPU 1"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="write py-spy flame graphs (SVG) of the routers here"
    )
    parser.add_argument("--profile-raw", action="store_true", help="with --profile: collapsed stacks, not SVG")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    args.started = time.time()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    router_cpus, other_cpus = ({0}, {1}) if args.pin and (os.cpu_count() or 1) >= 2 else (None, None)
    if other_cpus:
        os.sched_setaffinity(0, other_cpus)
    load_before = os.getloadavg()[0]  # other work on the machine skews every row; say how much there was
    commit = revision()  # read before the servers start: the code they load
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"bench-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as client:
        client.ping()  # fail now, with Redis's own message, rather than at router start
    # The servers inherit nothing of the caller's router config: only what the bench sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
    env |= {"REDIS_URL": redis_url, "HYBRID_ROUTER_KEY_PREFIX": prefix, UPSTREAM_KEY_ENV: "sk-bench"}
    transports = TRANSPORTS if args.transport == "both" else (args.transport,)
    with tempfile.TemporaryDirectory(prefix="bench-realtime-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        stack.callback(delete_keys, redis_url, prefix)  # runs after the routers have stopped (LIFO)
        sim_port = free_port()
        sim_args = ["simulate", "--port", str(sim_port), "--latency-ms", str(args.latency_ms)]
        sim = stack.enter_context(
            server(sim_args, env, f"http://127.0.0.1:{sim_port}/_sim/stats", directory / "simulator.log", other_cpus)
        )
        targets = [Target("direct", f"http://127.0.0.1:{sim_port}", sim.pid, router=False)]
        gc_modes = ("tuned", "default") if args.gc == "both" else (args.gc,)
        for transport in transports:
            for workers in args.workers:
                for gc_mode in gc_modes:
                    port = free_port()
                    config = router_config(directory, sim_port, transport)
                    serve_args = ["serve", "--config", str(config), "--port", str(port), "--workers", str(workers)]
                    name = f"router/{transport}" + (f" x{workers}" if args.workers != [1] else "")
                    name += f" gc:{gc_mode}" if len(gc_modes) > 1 else ""
                    log = directory / f"router-{transport}-{workers}-{gc_mode}.log"
                    ready = f"http://127.0.0.1:{port}/healthz"
                    gc_env = env | {"HYBRID_ROUTER_GC_TUNING": "true" if gc_mode == "tuned" else "false"}
                    proc = stack.enter_context(server(serve_args, gc_env, ready, log, router_cpus))
                    targets.append(Target(name, f"http://127.0.0.1:{port}", proc.pid, router=True))
        if args.granian:  # the same app (bench/asgi_app.py) under granian, one process, uvloop, HTTP/1.1
            port = free_port()
            config = router_config(directory, sim_port, "aiohttp")
            granian_args = ["--interface", "asgi", "--factory", "--host", "127.0.0.1", "--port", str(port)]
            granian_args += ["--workers", "1", "--loop", "uvloop", "--http", "1", "--no-ws", "--log-level", "warning"]
            granian_env = env | {"BENCH_ROUTER_CONFIG": str(config), "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)}  # fmt: skip
            ready = f"http://127.0.0.1:{port}/healthz"
            log = directory / "router-granian.log"
            proc = stack.enter_context(
                server([*granian_args, "bench.asgi_app:app"], granian_env, ready, log, router_cpus, module="granian")
            )
            targets.append(Target("router/granian", f"http://127.0.0.1:{port}", proc.pid, router=True))
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            pooled = runner.run(measure(targets, args))
    report(pooled, args, load_before, commit)
    return 1 if any(t.errors for tallies in pooled.values() for t in tallies.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
