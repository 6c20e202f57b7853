"""Redis memory per deferred call: what N calls cost Redis while queued, held, in flight, and once answered.

Run from the repository root, against a Redis you can write to (its other keys are not touched):

    python bench/redis_memory.py [--calls 5000] [--held 1000] [--prompt-chars 100,4000] \
        [--redis-url redis://127.0.0.1:6379/0] [--turnaround 90] [--markdown]

It starts the built-in simulator (`hybrid-router simulate`, whose batches take `--turnaround` seconds) and the
router (`hybrid-router serve`, as `python -m router`) with `REDIS_URL` and a `key_prefix` of this run's own, so
every key it writes carries that prefix, and for each prompt size:

1. queued: `--calls` calls admitted with `Prefer: respond-async` (`X-Deadline: 24h`) by a router whose queue does
   not flush (`batch.max_wait_s` a day);
2. held: `--held` more calls held open (no `Prefer`), same router, once it holds them all;
3. in flight: the router restarted with `batch.max_wait_s: 1`, once every call is in a submitted batch;
4. answered: once every result is stored. Results, and the calls they answer, stay `batch.result_ttl_s` (7 days).

At each point it sums `MEMORY USAGE key SAMPLES 0` over the keys with the run's prefix (exact for these keys,
whatever else uses the Redis), by kind of key, and reads `INFO memory`'s `used_memory` (the whole server: a
cross-check that other clients of a shared Redis can disturb). At the end it deletes every key with the prefix.
Everything is bounded: each wait gives up after `--timeout` seconds, and processes get SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gpt-4o-mini"
START_TIMEOUT_S = 30.0
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
CONCURRENCY = 64
# `P:{q}:call:<id>` → "call"; `P:replica:<id>` → "replica"; `P:{q}:lease:batch:<bid>` → "lease".
_KIND = re.compile(r"^[^:]+:(?:\{[^}]*\}:)?([a-z_]+)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Snapshot:
    """The run's keys at one moment: bytes by kind of key, key counts, and the server's used_memory."""

    bytes_by_kind: dict[str, int]
    keys_by_kind: dict[str, int]
    used_memory: int

    @property
    def total(self) -> int:
        return sum(self.bytes_by_kind.values())

    @classmethod
    def take(cls, client: redis.Redis, prefix: str) -> Snapshot:
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        sizes: list[int | None] = []
        for start in range(0, len(keys), 1000):
            pipe = client.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.memory_usage(key, samples=0)
            sizes += pipe.execute()
        by_kind: dict[str, int] = defaultdict(int)
        count: dict[str, int] = defaultdict(int)
        for key, size in zip(keys, sizes, strict=True):
            match = _KIND.match(key)
            kind = match.group(1) if match else "other"
            by_kind[kind] += size or 0  # None: the key expired between SCAN and MEMORY USAGE
            count[kind] += 1
        return cls(dict(by_kind), dict(count), int(client.info("memory")["used_memory"]))


@dataclass
class Run:
    """One prompt size's figures."""

    prompt_chars: int
    calls: int
    held: int
    body_bytes: float = 0.0
    result_body_bytes: float = 0.0
    snapshots: dict[str, Snapshot] = field(default_factory=dict)

    def calls_in(self, phase: str) -> int:
        """The calls a phase's figure is divided by: the held calls alone for "held" (what they add)."""
        return {"queued": self.calls, "held": self.held}.get(phase, self.calls + self.held)

    def base_of(self, phase: str) -> Snapshot:
        """What a phase is compared with: the queued calls for "held", else the idle router's own keys."""
        return self.snapshots["queued" if phase == "held" else "idle"]

    def per_call(self, phase: str) -> float:
        """Bytes per call in `phase`, by MEMORY USAGE of the run's keys."""
        return (self.snapshots[phase].total - self.base_of(phase).total) / self.calls_in(phase)


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (its output in `log`), up once `ready` answers 200; SIGTERM, then SIGKILL, at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=log.parent, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[2:4]} did not come up (exit {proc.returncode}):\n{log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(ready, timeout=1) as answer:
                if answer.status == 200:
                    break
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition()` every half second until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def metric(base: str, name: str) -> float:
    """The sum of one metric's samples on the router's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=30) as answer:
        text = answer.read().decode()
    samples = [line for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def body(i: int, prompt_chars: int) -> bytes:
    """A chat call whose prompt has `prompt_chars` characters; every call is different (no re-attach)."""
    text = f"Call {i}: " + ("Summarise the ticket. " * (prompt_chars // 22 + 1))
    messages = [{"role": "user", "content": text[:prompt_chars]}]
    return json.dumps({"model": MODEL, "messages": messages, "max_tokens": 16}).encode()


async def send(base: str, bodies: list[bytes], headers: dict[str, str], expect: int) -> None:
    """POST every body (`CONCURRENCY` at a time); fail unless each answers `expect` in the batch lane."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0), limits=limits) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(content: bytes) -> None:
            async with gate:
                answer = await client.post("/v1/chat/completions", content=content, headers=headers)
            lane = answer.headers.get("x-router-lane")
            if answer.status_code != expect or lane != "batch":
                raise RuntimeError(
                    f"expected {expect} in the batch lane, got {answer.status_code} {lane}: {answer.text}"
                )

        await asyncio.gather(*(one(content) for content in bodies))


async def hold(base: str, bodies: list[bytes], headers: dict[str, str], until: Callable[[], bool]) -> None:
    """Open a held call per body (each its own connection), wait until `until()` holds, then hang up (a caller
    that leaves does not cancel its call)."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    timeout = httpx.Timeout(None, connect=60.0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:

        async def one(content: bytes) -> None:
            async with client.stream("POST", "/v1/chat/completions", content=content, headers=headers) as answer:
                async for _ in answer.aiter_bytes():
                    pass

        tasks = [asyncio.create_task(one(content)) for content in bodies]
        try:
            await asyncio.get_running_loop().run_in_executor(None, until)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def router_config(
    sim_port: int, port: int, prefix: str, policies: Path, max_wait_s: float, held: int
) -> dict[str, object]:
    return {
        "upstreams": [{"name": "sim", "kind": "openai", "base_url": f"http://127.0.0.1:{sim_port}/v1",
                       "api_key_env": UPSTREAM_KEY_ENV}],
        "host": "127.0.0.1",
        "port": port,
        "key_prefix": prefix,
        "policies_dir": str(policies),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        "limits": {"max_held": held + 1000},
        # The prior fits a 24 h deadline, so each call goes to a batch (no probe); the defaults otherwise.
        "batch": {"max_wait_s": max_wait_s, "poll_interval_s": 1.0, "turnaround_prior_s": 60.0},
    }  # fmt: skip


def count(client: redis.Redis, prefix: str, kind: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}:*:{kind}:*", count=1000))


def measure(args: argparse.Namespace, prompt_chars: int, sim_port: int, tmp: Path, env: dict[str, str]) -> Run:
    """One prompt size: the four phases under a prefix of its own, deleted at the end."""
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"membench{os.getpid()}c{prompt_chars}"
    run = Run(prompt_chars=prompt_chars, calls=args.calls, held=args.held)
    policies = tmp / "policies"  # no rules: the X-Deadline header alone decides
    policies.mkdir(exist_ok=True)
    bodies = [body(i, prompt_chars) for i in range(args.calls + args.held)]
    run.body_bytes = sum(map(len, bodies)) / len(bodies)
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json", "x-deadline": "24h"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [sys.executable, "-m", "router", "serve", "--config", str(tmp / "router.yaml")]
    try:
        config = router_config(sim_port, port, prefix, policies, 86400.0, args.held)
        (tmp / "router.yaml").write_text(yaml.safe_dump(config))
        with process(serve, env, tmp / f"router-{prompt_chars}-a.log", base + "/healthz"):
            time.sleep(2)  # the loops' first rounds (replica heartbeat) before the baseline
            run.snapshots["idle"] = Snapshot.take(client, prefix)
            asyncio.run(send(base, bodies[: args.calls], headers | {"prefer": "respond-async"}, 202))
            run.snapshots["queued"] = Snapshot.take(client, prefix)
            if args.held:

                def all_held() -> bool:
                    wait_for(lambda: metric(base, "hybrid_router_held_connections") >= args.held, args.timeout,
                             f"{args.held} held calls")  # fmt: skip
                    run.snapshots["held"] = Snapshot.take(client, prefix)
                    return True

                asyncio.run(hold(base, bodies[args.calls :], headers, all_held))
        total = args.calls + args.held
        config = router_config(sim_port, port, prefix, policies, 1.0, args.held)
        (tmp / "router.yaml").write_text(yaml.safe_dump(config))
        with process(serve, env, tmp / f"router-{prompt_chars}-b.log", base + "/healthz"):
            pending = f"{prefix}:*:pending"

            def in_flight() -> bool:
                waiting = sum(int(client.zcard(k)) for k in client.scan_iter(match=pending))
                flying = sum(int(client.zcard(k)) for k in client.scan_iter(match=f"{prefix}:*:inflight"))
                return waiting == 0 and flying == total

            wait_for(in_flight, args.timeout, f"{total} calls in submitted batches")
            run.snapshots["in flight"] = Snapshot.take(client, prefix)
            wait_for(lambda: count(client, prefix, "result") == total, args.turnaround + args.timeout,
                     f"{total} stored results")  # fmt: skip
            time.sleep(2)  # the batch's own bookkeeping after its last result (finish, turnaround observation)
            run.snapshots["answered"] = Snapshot.take(client, prefix)
        results = list(client.scan_iter(match=f"{prefix}:*:result:*", count=1000))[:200]
        pipe = client.pipeline(transaction=False)
        for key in results:
            pipe.hstrlen(key, "body")
        lengths = pipe.execute()
        run.result_body_bytes = sum(lengths) / max(1, len(lengths))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.unlink(*keys[start : start + 1000])
    return run


def render(runs: list[Run], markdown: bool) -> str:
    phases = ["queued", "held", "in flight", "answered"]
    header = ["prompt chars", "request body B", "result body B", *(f"{p}: B per call" for p in phases),
              "used_memory per call (queued / answered)"]  # fmt: skip
    rows = []
    for run in runs:
        per = [f"{run.per_call(p):,.0f}" if p in run.snapshots else "-" for p in phases]
        used = [
            (run.snapshots[p].used_memory - run.base_of(p).used_memory) / run.calls_in(p)
            for p in ("queued", "answered")
        ]
        rows.append([f"{run.prompt_chars:,}", f"{run.body_bytes:,.0f}", f"{run.result_body_bytes:,.0f}", *per,
                     f"{used[0]:,.0f} / {used[1]:,.0f}"])  # fmt: skip
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        lines = [
            "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *rows]
        ]
    lines += ["", "Bytes per call by kind of key (MEMORY USAGE; kinds under 1 B per call left out):"]
    for run in runs:
        for phase in phases:
            if phase not in run.snapshots:
                continue
            snap, idle, calls = run.snapshots[phase], run.base_of(phase), run.calls_in(phase)
            kinds = sorted(snap.bytes_by_kind, key=lambda k: -snap.bytes_by_kind[k])
            parts = [
                f"{k} {(snap.bytes_by_kind[k] - idle.bytes_by_kind.get(k, 0)) / calls:,.0f} "
                f"({snap.keys_by_kind[k]:,} keys)"
                for k in kinds
                if (snap.bytes_by_kind[k] - idle.bytes_by_kind.get(k, 0)) / calls >= 1
            ]
            lines.append(f"- {run.prompt_chars:,} chars, {phase}: " + ", ".join(parts))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls admitted with Prefer: respond-async")
    parser.add_argument("--held", type=int, default=1000, help="calls held open on top of those")
    parser.add_argument("--prompt-chars", default="100,4000", help="prompt sizes, comma-separated")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--turnaround", type=float, default=90.0, help="simulator batch turnaround, seconds")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a phase after this many seconds")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
    env |= {"PYTHONPATH": str(ROOT), "REDIS_URL": args.redis_url, UPSTREAM_KEY_ENV: "sk-sim"}
    sim_port = free_port()
    sim = [sys.executable, "-m", "router", "simulate", "--port", str(sim_port),
           "--batch-turnaround", str(args.turnaround)]  # fmt: skip
    client = redis.Redis.from_url(args.redis_url)
    server = client.info("server")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []
    with process(sim, env, tmp / "sim.log", f"http://127.0.0.1:{sim_port}/v1/models"):
        for chars in (int(c) for c in args.prompt_chars.split(",")):
            runs.append(measure(args, chars, sim_port, tmp, env))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    print(
        f"{started}, commit {commit.stdout.strip() or '?'}, Redis {server['redis_version']} "
        f"({client.info('memory').get('mem_allocator', '?')}), {args.calls:,} async + {args.held:,} held calls, "
        f"simulator turnaround {args.turnaround:.0f} s (logs in {tmp})\n"
    )
    print(render(runs, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
