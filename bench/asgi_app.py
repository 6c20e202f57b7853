"""The router as an ASGI app factory, for serving it with another ASGI server than `serve`'s uvicorn (bench/realtime.py
`--granian`): the settings from the config file named by `BENCH_ROUTER_CONFIG`, the environment as `serve`
reads it, `gc_tuning` applied as under `serve`. It needs `redis_url` (or `REDIS_URL`): no bundled Redis here."""

from __future__ import annotations

import os
from pathlib import Path

from litestar import Litestar

from router.core.settings import load_settings
from router.http.app import create_app


def app() -> Litestar:
    """A fresh app for one server process."""
    settings = load_settings(Path(os.environ["BENCH_ROUTER_CONFIG"]), os.environ)
    return create_app(settings, os.environ, serving=True)
