"""Held waiters at scale: what N deferred calls held open cost Redis and the router, and what delivering them costs.

Run from the repository root:

    python bench/held.py [--calls 10000] [--turnaround 150] [--window 30] [--workers 1] [--root PATH] [--markdown]

It starts a redis-server of its own (so `INFO` counts this router's commands only), the built-in simulator whose
batches take `--turnaround` seconds, and the router (`python -m router serve`, imported from `--root`: this
checkout by default, or an exported older commit to compare). It measures, in order:

1. idle: Redis commands/s and router CPU over `--window` seconds with nothing held;
2. held: `--calls` held `POST /v1/chat/completions` calls (`X-Deadline: 2h`, each its own connection, async httpx
   with 100 connections per client, opened `--rate` a second), once the router holds them all and their batches
   are submitted: Redis commands/s (and the commands that make them), router resident memory (VmRSS) and CPU,
   over `--window` seconds;
3. delivery: from the first answer to the last, the Redis commands per delivered result and how long it took.

Everything is bounded: the run gives up after `--timeout` seconds, processes get SIGTERM then SIGKILL, and the
Redis of the run (its data in a temporary directory) stops with it. Exits 1 if a call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import uvloop
import yaml

from router.ops.embedded import redis_server_binary
from router.ops.serving import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
PER_CLIENT = 100  # connections per httpx client: httpcore's pool costs grow with the connections it holds
START_TIMEOUT_S = 30.0
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def family_pids(pid: int) -> list[int]:
    """A process and its children (uvicorn workers), from /proc."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry.name))
    return pids


@dataclass
class Sample:
    """Redis and router counters at one moment."""

    at: float
    commands: int
    per_command: dict[str, int]
    router_cpu: float

    @classmethod
    def take(cls, client: redis.Redis, pids: list[int]) -> Sample:
        stats = client.info("commandstats")
        per = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        total = int(client.info("stats")["total_commands_processed"])
        return cls(time.monotonic(), total, per, sum(cpu_seconds(p) for p in pids))


@dataclass
class Window:
    """What happened between two samples."""

    seconds: float
    commands: int
    per_command: dict[str, int]
    router_cpu: float

    @classmethod
    def between(cls, a: Sample, b: Sample) -> Window:
        per = {k: v - a.per_command.get(k, 0) for k, v in b.per_command.items() if v - a.per_command.get(k, 0)}
        return cls(b.at - a.at, b.commands - a.commands, per, b.router_cpu - a.router_cpu)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds

    def top(self, n: int = 5) -> str:
        ordered = sorted(self.per_command.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {calls / self.seconds:,.1f}/s" for name, calls in ordered)


@dataclass
class Report:
    """The run's figures."""

    calls: int
    workers: int
    idle: Window | None = None
    held: Window | None = None
    held_rss_mib: float = math.nan
    idle_rss_mib: float = math.nan
    ramp_s: float = math.nan
    delivery: Window | None = None
    answered: int = 0
    failed: int = 0
    first_failure: str = ""
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], log: Path, ready: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (its output in `log`) run where `PYTHONPATH` points (`python -m` imports from the working
    directory first), up once `ready` answers 200; SIGTERM, then SIGKILL, at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=env["PYTHONPATH"], env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[:3]} did not come up (exit {proc.returncode}):\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as answer:
                if answer.status == 200:
                    break
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll `condition()` every half second until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def metric(base: str, name: str) -> float:
    """The sum of one metric's samples on the router's /metrics (0 when the router is too busy to answer)."""
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=30) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    samples = [line for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def sim_batches(sim: str) -> int:
    with urllib.request.urlopen(sim + "/_sim/stats", timeout=30) as answer:
        return int(json.loads(answer.read())["batches_created"])


async def hold_calls(base: str, n: int, rate: float, answered: list[float], failures: list[str]) -> None:
    """Open `n` held calls, `rate` a second, and wait for their answers (appending each answer's time to
    `answered`)."""
    timeout = httpx.Timeout(None, connect=120.0)
    clients = [
        httpx.AsyncClient(base_url=base, timeout=timeout,
                          limits=httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT))
        for _ in range(math.ceil(n / PER_CLIENT))
    ]  # fmt: skip

    async def one(i: int) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Summarise ticket {i}."}], "max_tokens": 8}
        try:
            answer = await clients[i // PER_CLIENT].post(
                "/v1/chat/completions", json=body, headers={"x-deadline": "2h", "authorization": "Bearer sk-bench"}
            )
            if answer.status_code != 200 or answer.headers.get("x-router-lane") != "batch":
                failures.append(f"{answer.status_code} {answer.headers.get('x-router-lane')} {answer.text[:200]}")
                return
            json.loads(answer.content)
            answered.append(time.monotonic())
        except Exception as exc:
            failures.append(f"{exc!r} (call {i}, {time.monotonic() - t0:.1f} s after the first)")

    tasks = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()


def run(args: argparse.Namespace, report: Report) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-held-"))
    redis_port, sim_port, router_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(args.root).resolve()), UPSTREAM_KEY_ENV: "sk-sim"}
    env.pop("REDIS_URL", None)
    policies = tmp / "policies"
    policies.mkdir()
    config = {
        "upstreams": [{"name": "sim", "kind": "openai", "base_url": f"http://127.0.0.1:{sim_port}/v1",
                       "api_key_env": UPSTREAM_KEY_ENV}],
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "redis_max_connections": 256,
        "host": "127.0.0.1",
        "port": router_port,
        "policies_dir": str(policies),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "limits": {"max_held": args.calls + 1000},
        "batch": {"max_wait_s": 2.0, "poll_interval_s": 5.0, "turnaround_prior_s": 1.0, "margin_s": 60.0,
                  "keepalive_s": 10.0},
    }  # fmt: skip
    (tmp / "router.yaml").write_text(yaml.safe_dump(config))
    base, sim = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{sim_port}"
    serve = [sys.executable, "-m", "router", "serve", "--config", str(tmp / "router.yaml")]
    if args.workers != "1":
        serve += ["--workers", str(args.workers)]
    redis_args = [redis_server_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(tmp), "--maxclients", "10000"]  # fmt: skip
    sim_args = [sys.executable, "-m", "router", "simulate", "--port", str(sim_port),
                "--batch-turnaround", str(args.turnaround)]  # fmt: skip
    with (
        process(redis_args, env, tmp / "redis.log") as _,
        process(sim_args, env, tmp / "sim.log", sim + "/v1/models") as _,
    ):
        wait_for(lambda: _ping(redis_port), 10, "redis-server")
        client = redis.Redis(port=redis_port)
        with process(serve, env, tmp / "router.log", base + "/healthz") as router:
            time.sleep(2)  # let the workers (if several) start their loops
            pids = family_pids(router.pid)
            a = Sample.take(client, pids)
            time.sleep(args.window)
            report.idle = Window.between(a, Sample.take(client, pids))
            report.idle_rss_mib = sum(rss_mib(p) for p in pids)
            asyncio.run(_held_phase(args, report, base, sim, client, pids))
    report.notes.append(f"logs in {tmp}")


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


async def _held_phase(
    args: argparse.Namespace, report: Report, base: str, sim: str, client: redis.Redis, pids: list[int]
) -> None:
    answered: list[float] = []
    failures: list[str] = []
    t0 = time.monotonic()
    holding = asyncio.create_task(hold_calls(base, args.calls, args.rate, answered, failures))
    loop = asyncio.get_running_loop()
    try:

        def all_held() -> bool:
            if failures:
                raise RuntimeError(f"calls failed while opening: {failures[:3]}")
            return metric(base, "hybrid_router_held_connections") >= args.calls and sim_batches(sim) > 0

        await loop.run_in_executor(None, wait_for, all_held, args.timeout, f"{args.calls} held calls")
        report.ramp_s = time.monotonic() - t0
        await asyncio.sleep(12)  # past the first keep-alive interval: every held body is streaming its spaces
        a = await loop.run_in_executor(None, Sample.take, client, pids)
        await asyncio.sleep(args.window)
        b = await loop.run_in_executor(None, Sample.take, client, pids)
        report.held = Window.between(a, b)
        report.held_rss_mib = sum(rss_mib(p) for p in pids)
        if answered:
            report.notes.append(f"{len(answered)} calls were answered before the held window ended")
        before = await loop.run_in_executor(None, Sample.take, client, pids)
        give_up = time.monotonic() + args.turnaround + args.timeout
        while not answered and not holding.done():  # the last sample before the first answer starts the delivery
            if time.monotonic() > give_up:
                raise TimeoutError("no call was answered")
            await asyncio.sleep(0.25)
            if not answered:
                before = await loop.run_in_executor(None, Sample.take, client, pids)
        await asyncio.wait_for(holding, timeout=max(1.0, give_up - time.monotonic()))
        after = await loop.run_in_executor(None, Sample.take, client, pids)
        delivery = Window.between(before, after)
        if answered:
            delivery.seconds = max(answered) - min(answered) or 1e-9
        report.delivery = delivery
    finally:
        if not holding.done():
            holding.cancel()
            with contextlib.suppress(BaseException):
                await holding
    report.answered, report.failed = len(answered), len(failures)
    report.first_failure = failures[0] if failures else ""


def render(report: Report, markdown: bool) -> str:
    assert report.idle is not None
    rows = [
        ("idle: Redis commands/s", f"{report.idle.rate:,.1f}"),
        ("idle: router CPU", f"{report.idle.router_cpu / report.idle.seconds:.1%} of a core"),
        ("idle: router RSS", f"{report.idle_rss_mib:,.0f} MiB"),
        ("opening the held calls took", f"{report.ramp_s:,.1f} s"),
    ]
    if report.held is not None:
        rows += [
            (f"{report.calls:,} held: Redis commands/s", f"{report.held.rate:,.1f}"),
            ("held: busiest commands", report.held.top()),
            ("held: router CPU", f"{report.held.router_cpu / report.held.seconds:.1%} of a core"),
            ("held: router RSS", f"{report.held_rss_mib:,.0f} MiB"),
            (
                "held: RSS per held call",
                f"{(report.held_rss_mib - report.idle_rss_mib) * 1024 / report.calls:,.1f} KiB",
            ),
        ]
    if report.delivery is not None and report.answered:
        rows += [
            ("delivery: first to last answer", f"{report.delivery.seconds:,.1f} s"),
            ("delivery: Redis commands per result", f"{report.delivery.commands / report.answered:,.1f}"),
            ("delivery: busiest commands (total)", ", ".join(f"{k} {v:,}" for k, v in sorted(
                report.delivery.per_command.items(), key=lambda kv: -kv[1])[:6])),
        ]  # fmt: skip
    rows += [("answered / failed", f"{report.answered:,} / {report.failed:,} {report.first_failure[:120]}")]
    if markdown:
        lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    else:
        width = max(len(k) for k, _ in rows)
        lines = [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines + [f"({note})" for note in report.notes])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--turnaround", type=float, default=150.0, help="simulator batch turnaround, seconds")
    parser.add_argument("--rate", type=float, default=250.0, help="held calls opened per second")
    parser.add_argument("--window", type=float, default=30.0, help="seconds each measurement lasts")
    parser.add_argument("--workers", default="1", help="router processes (`serve --workers`)")
    parser.add_argument("--root", default=str(ROOT), help="the checkout the router is imported from")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a phase after this many seconds")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.calls + 200:
        print(f"the open-file limit ({hard}) is too low for {args.calls} connections", file=sys.stderr)
        return 2
    uvloop.install()
    report = Report(calls=args.calls, workers=1 if args.workers == "1" else 0)
    run(args, report)
    print(render(report, args.markdown))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
