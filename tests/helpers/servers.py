"""The simulator and the router as tests run them on real sockets: a simulator handle, upstream and router settings."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from router.core.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
NO_POLICIES = ROOT / "tests" / "data" / "policies_none"
# Batch settings that make a deferred call come back within a second or two from the test simulator.
FAST = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}

RouterFactory = Callable[..., contextlib.AbstractContextManager[str]]
"""`start_router(**settings_tree)`: a context manager giving a running router's base URL."""


class Sim:
    """A running simulator: its API base URL and its control endpoints."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.v1 = base + "/v1"

    def configure(self, **fields: Any) -> None:
        httpx.post(self.base + "/_sim/config", json=fields).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = httpx.get(self.base + "/_sim/stats")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def upstream(base_url: str, **fields: Any) -> dict[str, Any]:
    """An upstream entry for the simulator (its key from SIM_KEY; X-Sim-* test headers passed through)."""
    entry = {"name": "openai", "kind": "openai", "base_url": base_url, "api_key_env": "SIM_KEY"}
    return entry | {"forward_headers": ["openai-*", "x-sim-*"]} | fields


def with_anthropic(sim: Sim) -> list[dict[str, Any]]:
    """An Anthropic upstream for `claude-*` models before the OpenAI one, both on the simulator."""
    anthropic = {
        "name": "anthropic",
        "kind": "anthropic",
        "base_url": sim.base,
        "api_key_env": "SIM_KEY",
        "models": ["claude-*"],
        "forward_headers": ["x-sim-*"],
    }
    return [anthropic, upstream(sim.v1)]


def router_settings(sim: Sim, redis_url: str, key_prefix: str, **tree: Any) -> Settings:
    """Settings for a router in front of `sim`, with the given overrides (a settings tree)."""
    base: dict[str, Any] = {
        "upstreams": [upstream(sim.v1)],
        "redis_url": redis_url,
        "key_prefix": key_prefix,
        "policies_dir": str(NO_POLICIES),
        "pricing_file": str(ROOT / "config" / "pricing.yaml"),
    }
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = base[key] | value
        else:
            base[key] = value
    return load_settings(None, {}, base)
