"""`serve --workers N`: N router processes on one port, each a whole router with its own loops.

The workers coordinate as replicas on separate machines do: through Redis, with the leases that already make one
replica flush a queue, poll a batch, escalate a call or deliver a webhook. Each binds the port with SO_REUSEPORT,
so the kernel spreads new connections over their listening sockets (Linux; elsewhere one worker may take most),
and each is started with `spawn`, importing everything itself. Metrics use prometheus_client's multiprocess mode
(every process writes its values to files in a private directory, and a scrape of any worker reads them all).
The parent only supervises: it forwards SIGTERM and SIGINT (each worker drains as a single router does), starts a
worker again when one dies, and removes the metrics directory at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from router.core.errors import ConfigError
from router.core.settings import Settings
from router.telemetry.logs import configure_logging

log = logging.getLogger(__name__)
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Read by prometheus_client when it is imported: set before the workers start, so they inherit it."""
RESTART_PAUSE_S = 1.0
_PR_SET_PDEATHSIG = 1


def parse_workers(value: str) -> int:
    """`--workers`: a positive number, or `auto` for the number of CPUs."""
    if value == "auto":
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"expected a positive number or `auto`, got {value!r}")
    return int(value)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port) that other workers may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _die_with(parent: int) -> None:
    """Get SIGTERM (and drain) when the supervisor dies, even by SIGKILL (Linux), so no worker outlives it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def _worker(settings: Settings, environ: dict[str, str], metrics_dir: str, parent: int) -> None:
    """One worker: the whole router on its own SO_REUSEPORT socket (runs in a spawned process)."""
    _die_with(parent)
    from router.http.app import create_app
    from router.http.edge import bounded_protocol
    from router.ops.serving import Server, server_config

    configure_logging()
    sock = listening_socket(settings.host, settings.port)
    app = create_app(settings, environ, metrics_dir=metrics_dir, serving=True)
    config = server_config(
        app,
        host=settings.host,
        port=settings.port,
        grace_s=settings.shutdown_grace_s,
        http=bounded_protocol(settings.limits),
    )
    Server(config).run(sockets=[sock])


class Supervisor:
    """Runs the workers until SIGTERM or SIGINT, starting again any that dies before that."""

    def __init__(self, settings: Settings, environ: Mapping[str, str], workers: int) -> None:
        if settings.port == 0:
            raise ConfigError("port", None, "`--workers` needs a fixed port (each worker binds it)")
        self.settings = settings
        self.environ = dict(environ)
        self.count = workers
        self.stopping = False
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self.metrics_dir = ""

    def _start(self) -> BaseProcess:
        proc = self._context.Process(
            target=_worker,
            args=(self.settings, self.environ, self.metrics_dir, os.getpid()),
            name="hybrid-router-worker",
        )
        proc.start()
        return proc

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for proc in self._procs:
            if proc.pid is not None and proc.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGTERM)

    def run(self) -> int:
        """Serve until stopped; 0 when every worker stopped cleanly."""
        from prometheus_client import multiprocess

        self.metrics_dir = tempfile.mkdtemp(prefix="hybrid-router-metrics-")
        os.environ[METRICS_DIR_ENV] = self.metrics_dir
        previous = {sig: signal.signal(sig, self._signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._procs = [self._start() for _ in range(self.count)]
            while not self.stopping:
                ended = wait([proc.sentinel for proc in self._procs], timeout=0.5)
                for index, proc in enumerate(self._procs):
                    if proc.sentinel in ended and not self.stopping:
                        log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                        if proc.pid is not None:
                            multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
                        time.sleep(RESTART_PAUSE_S)
                        self._procs[index] = self._start()
            deadline = time.monotonic() + self.settings.shutdown_grace_s + 5
            for proc in self._procs:
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    log.error("worker %s did not stop in time; killing it", proc.pid)
                    proc.kill()
                    proc.join(5)
            # A worker stopped by SIGTERM or SIGINT ends by that signal (uvicorn raises it again once drained).
            clean = (0, -signal.SIGTERM, -signal.SIGINT)
            return 0 if all(proc.exitcode in clean for proc in self._procs) else 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.environ.pop(METRICS_DIR_ENV, None)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
