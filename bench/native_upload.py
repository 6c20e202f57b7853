"""Memory of a large upload through `POST /v1/files`: the router relays the body as it arrives.

Run from the repository root, with a Redis at `REDIS_URL` (default redis://127.0.0.1:6379/0):

    python bench/native_upload.py [--mib 200]

The simulator runs as a child process (it keeps every file in memory, which would hide the router's own use);
the router runs in this process. The upload is a multipart body of `--mib` MiB sent by httpx, once chunked and
once with a `Content-Length`, from a generator of 1 MiB pieces; the script prints this process's peak resident
memory (`VmHWM`) before and after each, which bounds what the router held.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis

from router.core.settings import load_settings
from router.http.app import create_app
from router.ops.serving import serve_in_thread

ROOT = Path(__file__).resolve().parent.parent
PIECE = 1024 * 1024
HEAD = (
    b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
)
TAIL = b"\r\n--x--\r\n"


def peak_kib() -> int:
    """This process's peak resident set size so far, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def body(mib: int) -> Iterator[bytes]:
    yield HEAD
    piece = b" " * PIECE
    for _ in range(mib):
        yield piece
    yield TAIL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    args = parser.parse_args()
    port, prefix = free_port(), "hrbench-" + secrets.token_hex(4)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    command = [sys.executable, "-m", "router", "simulate", "--host", "127.0.0.1", "--port", str(port)]
    sim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/_sim/health")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        upstream = {"name": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "api_key_env": "SIM_KEY"}
        settings = load_settings(None, {}, {
            "upstreams": [upstream], "redis_url": redis_url, "key_prefix": prefix,
            "pricing_file": str(ROOT / "config" / "pricing.yaml"),
            "policies_dir": str(ROOT / "tests" / "data" / "policies_none"),
        })  # fmt: skip
        with serve_in_thread(create_app(settings, {"SIM_KEY": "sk-sim"}), limits=settings.limits) as base:
            size = len(HEAD) + args.mib * PIECE + len(TAIL)
            for name, headers in (("chunked", {}), ("content-length", {"content-length": str(size)})):
                before = peak_kib()
                started = time.perf_counter()
                answer = httpx.post(
                    base + "/v1/files", content=body(args.mib), timeout=600,
                    headers={"content-type": "multipart/form-data; boundary=x"} | headers,
                )  # fmt: skip
                answer.raise_for_status()
                print(f"{name:15s} {args.mib} MiB in {time.perf_counter() - started:5.1f} s; peak RSS "
                      f"{before / 1024:.0f} -> {peak_kib() / 1024:.0f} MiB")  # fmt: skip
    finally:
        sim.terminate()
        sim.wait()
        with redis.Redis.from_url(redis_url) as client:
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)


if __name__ == "__main__":
    main()
