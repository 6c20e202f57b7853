"""Run an ASGI app on a loopback socket in a background thread (the demo, tests and benchmarks)."""

from __future__ import annotations

import contextlib
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from router.core.settings import Limits
from router.http.edge import bounded_protocol


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server(uvicorn.Server):
    """uvicorn's server, telling the app (`app.state.gateway.begin_drain`) the moment a stop is asked for, so
    held connections are cut at once instead of holding the shutdown up to their deadlines."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        gateway = getattr(getattr(self.config.app, "state", None), "gateway", None)
        if gateway is not None:
            gateway.begin_drain()
        super().handle_exit(sig, frame)


def server_config(app: Any, *, host: str, port: int, grace_s: float, **kw: Any) -> uvicorn.Config:
    """The uvicorn settings every entry point shares: loopback-friendly, bounded graceful shutdown."""
    kw.setdefault("log_level", "warning")
    grace = math.ceil(grace_s)
    return uvicorn.Config(
        app, host=host, port=port, lifespan="on", ws="none", access_log=False, timeout_graceful_shutdown=grace, **kw
    )


@contextlib.contextmanager
def serve_in_thread(
    app: Any, port: int | None = None, timeout: float = 10.0, *, limits: Limits | None = None
) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yield its base URL; stop it on exit.

    Request heads are bounded as `limits` (default: the default limits) imply, as `hybrid-router serve` does.
    """
    port = port or free_port()
    http = bounded_protocol(limits or Limits())
    config = server_config(app, host="127.0.0.1", port=port, grace_s=timeout, log_level="error", http=http)
    server = Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread died during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.handle_exit(signal.SIGTERM, None)
        thread.join(timeout)
