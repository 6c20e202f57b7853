"""Run an ASGI app on a loopback socket in a background thread (the demo, tests and benchmarks)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from router.edge import bounded_protocol
from router.settings import Limits


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve_in_thread(
    app: Any, port: int | None = None, timeout: float = 10.0, *, limits: Limits | None = None
) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yield its base URL; stop it on exit.

    Request heads are bounded as `limits` (default: the default limits) imply, as `hybrid-router serve` does.
    """
    port = port or free_port()
    http = bounded_protocol(limits or Limits())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="on", ws="none", http=http)
    server = uvicorn.Server(config)
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
        server.should_exit = True
        thread.join(timeout)
