"""What tracing costs a real-time call: the router with tracing off (the default) against the same router with
tracing on (spans exported over OTLP/HTTP to a receiver that accepts and drops them), measured in the same run.

Run from the repository root (needs the Redis at REDIS_URL, default redis://127.0.0.1:6379/0):

    python bench/tracing.py [--duration 8] [--concurrency 16] [--rounds 3] [--markdown]

Two parts:
- **The hooks alone, off** (in this process): the calls a real-time call makes into `telemetry.tracing` when it is
  off (`OFF.start(...)`, `span.end(...)`, and the poller's `with OFF.span(...)`), timed over a million iterations
  against an empty loop. This is what "off" costs, with nothing else in the measurement.
- **End to end**: the simulator and two routers (off, on), each its own process (bench/realtime.py's helpers), and a
  closed loop of `--concurrency` callers sending a small non-streamed chat call to each router in turn for
  `--duration` seconds, `--rounds` times in alternating order. It reports requests/s, p50/p99 latency and the
  router's CPU time per call (from /proc), each as a ratio against the router with tracing off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import redis
import uvloop
from realtime import (  # bench/realtime.py's helpers (the script's directory is on sys.path)
    UPSTREAM_KEY_ENV,
    Tally,
    closed_loop,
    cpu_seconds,
    delete_keys,
    quantile,
    revision,
    router_config,
    server,
)

from router.ops.serving import free_port
from router.telemetry import tracing

HOOK_ITERATIONS = 1_000_000


def hooks_off_ns() -> dict[str, float]:
    """Nanoseconds per iteration of the off hooks, less an empty loop's."""
    off = tracing.OFF
    attributes = {"router.endpoint": "/chat/completions", "gen_ai.request.model": "gpt-4o-mini"}

    def empty() -> None:
        for _ in range(HOOK_ITERATIONS):
            pass

    def start_end() -> None:
        for _ in range(HOOK_ITERATIONS):
            span = off.start("router.realtime", None, attributes, server=True)
            span.end(attributes)

    def block() -> None:
        for _ in range(HOOK_ITERATIONS):
            with off.span("router.batch.poll", None, attributes) as span:
                span.set(attributes)

    def timed(work: Any) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter_ns()
            work()
            best = min(best, (time.perf_counter_ns() - started) / HOOK_ITERATIONS)
        return best

    base = timed(empty)
    return {"start + end (a real-time call)": timed(start_end) - base, "with span (a poll)": timed(block) - base}


class _Drop(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts every export and keeps nothing."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def measure(urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace) -> dict[str, Tally]:
    tallies = {name: Tally() for name in urls}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url in urls.values():  # warm-up
            await closed_loop(session, url + "/v1/chat/completions", "non-streamed", args.concurrency, 1.0)
        for round_ in range(args.rounds):
            order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
            for name in order:
                cpu_before = cpu_seconds(pids[name])
                tally = await closed_loop(
                    session, urls[name] + "/v1/chat/completions", "non-streamed", args.concurrency, args.duration
                )
                tally.cpu_s = cpu_seconds(pids[name]) - cpu_before
                tallies[name].add(tally)
    return tallies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    commit = revision()
    hooks = hooks_off_ns()
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"bench-tracing-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as client:
        client.ping()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRID_ROUTER_", "OTEL_"))}
    env |= {"REDIS_URL": redis_url, "HYBRID_ROUTER_KEY_PREFIX": prefix, UPSTREAM_KEY_ENV: "sk-bench"}
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Drop)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{receiver.server_address[1]}"
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        stack.callback(delete_keys, redis_url, prefix)
        stack.callback(receiver.shutdown)
        sim_port = free_port()
        stack.enter_context(
            server(
                ["simulate", "--port", str(sim_port), "--latency-ms", "0"],
                env,
                f"http://127.0.0.1:{sim_port}/_sim/stats",
                directory / "simulator.log",
            )
        )
        config = router_config(directory, sim_port, "aiohttp")
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        for name, extra in (("off", {}), ("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp})):
            port = free_port()
            proc = stack.enter_context(
                server(
                    ["serve", "--config", str(config), "--port", str(port)],
                    env | extra,
                    f"http://127.0.0.1:{port}/healthz",
                    directory / f"router-{name}.log",
                )
            )
            urls[name], pids[name] = f"http://127.0.0.1:{port}", proc.pid
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            tallies = runner.run(measure(urls, pids, args))
    report(hooks, tallies, args, load_before, commit)
    return 1 if any(t.errors for t in tallies.values()) else 0


def report(
    hooks: dict[str, float], tallies: dict[str, Tally], args: argparse.Namespace, load: float, commit: str
) -> None:
    print(f"commit {commit}, load average before {load:.2f}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"hooks with tracing off (ns per call, best of 3 x {HOOK_ITERATIONS:,}):")
    for name, ns in hooks.items():
        print(f"  {name}: {ns:.0f} ns")
    print(f"end to end: {args.concurrency} callers, {args.rounds} rounds of {args.duration:g} s per router")
    off = tallies["off"]
    head = "| tracing | calls | req/s | p50 ms | p99 ms | router CPU ms/call | req/s vs off | CPU/call vs off |"
    lines = [head, "|---|---|---|---|---|---|---|---|"] if args.markdown else [head]
    for name, tally in tallies.items():
        calls = len(tally.latencies)
        cpu = tally.cpu_s / calls * 1000 if calls else float("nan")
        cpu_off = off.cpu_s / len(off.latencies) * 1000 if off.latencies else float("nan")
        lines.append(
            f"| {name} | {calls} | {tally.rps:.0f} | {quantile(tally.latencies, 0.5) * 1000:.2f} | "
            f"{quantile(tally.latencies, 0.99) * 1000:.2f} | {cpu:.3f} | {tally.rps / off.rps:.3f} | "
            f"{cpu / cpu_off:.3f} |" + (f" errors: {tally.errors} ({tally.first_error})" if tally.errors else "")
        )
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
