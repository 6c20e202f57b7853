"""Real processes: the router as `python -m router serve`, the simulator, and a redis-server of a test's own.

Every process is started on 127.0.0.1, and killed (with its output kept for the failure message) when the
test ends, whatever happened in it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
import yaml

from router.ops.serving import free_port
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without router settings or `REDIS_URL` (as a new user's shell has it), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_") and k != "REDIS_URL"}
    return env | extra


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m router ARGS` to its end (at most a minute): its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "router", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


class RouterProcess:
    """`python -m router serve` with a config file of the test's own, on a fixed port so it can be restarted."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        env: dict[str, str],
        *,
        nofile: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_path = tmp / "router.yaml"
        self.config_path.write_text(yaml.safe_dump(config | {"host": "127.0.0.1", "port": self.port}))
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.env.pop("HYBRID_ROUTER_LOG", None)
        self.nofile = nofile
        self.args = args
        self.log = tmp / "router.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _limits(self) -> None:  # runs in the child before exec
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart) the router and wait until it answers `/healthz` (a bound, not a wait: a busy host
        can take tens of seconds to import and start a router, two with `--workers 2`)."""
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "router", "serve", "--config", str(self.config_path), *self.args],
                cwd=self.config_path.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self._limits if self.nofile is not None else None,
            )
        wait_until(self._healthy, timeout, f"the router on port {self.port} (log: {self.output()[-2000:]})")

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the router exited with {self.process.returncode}: {self.output()[-3000:]}")
        try:
            return httpx.get(self.base + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def router_process(
    tmp: Path, config: dict[str, Any], env: dict[str, str], *, nofile: int | None = None, args: tuple[str, ...] = ()
) -> Iterator[RouterProcess]:
    """A started router process (`args` added to `serve`), killed when the block ends."""
    router = RouterProcess(tmp, config, env, nofile=nofile, args=args)
    try:
        router.start()
        yield router
    finally:
        router.stop()


class RedisProcess:
    """A redis-server of the test's own (AOF on, data in a temp directory), so it can be restarted mid-test."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            from router.ops.embedded import redis_server_binary

            binary = redis_server_binary()
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._ready, 10, f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """A clean stop (the AOF is complete: appendfsync always)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


@contextlib.contextmanager
def redis_process(directory: Path) -> Iterator[RedisProcess]:
    """A started redis-server, stopped when the block ends."""
    server = RedisProcess(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.process is not None and server.process.poll() is None:
            server.process.kill()


@contextlib.contextmanager
def simulator_process(tmp: Path) -> Iterator[str]:
    """`python -m router simulate` on a free port, killed when the block ends; its base URL.

    In a process of its own, its work (parsing a large upload, say) does not compete for this process's GIL.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / "simulator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "router", "simulate", "--port", str(port)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the simulator exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(base + "/_sim/stats", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 60, f"the simulator on port {port}")
        yield base
    finally:
        process.kill()
        process.wait(10)
