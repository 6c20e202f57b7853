"""Operator safety over real sockets: the `/metrics` token, which client headers reach the upstream (a tap in
front of the simulator records them), and `serve` refusing a non-loopback host without auth."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from router.core.errors import ConfigError
from router.http.app import create_app
from router.ops.cli import is_loopback
from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.processes import clean_env, run_cli
from tests.helpers.servers import RouterFactory, Sim, router_settings

KEY = "sk-team-a"
KEYS = [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "team-a"}]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# --- /metrics token -------------------------------------------------------------------------------------------


def test_metrics_with_a_token_refuses_anonymous_scrapes(start_router: RouterFactory) -> None:
    with start_router(metrics_token_env="METRICS_TOKEN", environ={"METRICS_TOKEN": "scrape-me"}) as base:
        anonymous = httpx.get(base + "/metrics")
        wrong = httpx.get(base + "/metrics", headers={"authorization": "Bearer scrape-you"})
        right = httpx.get(base + "/metrics", headers={"authorization": "Bearer scrape-me"})
        health = httpx.get(base + "/healthz")
    assert _error(anonymous, 401)["type"] == "invalid_request_error"
    assert _error(wrong, 401)["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert "hybrid_router_" in right.text
    assert health.status_code == 200  # probes stay open


def test_metrics_without_a_token_setting_stay_open(router_url: str) -> None:
    assert httpx.get(router_url + "/metrics").status_code == 200


def test_a_metrics_token_variable_that_is_not_set_fails_start(sim: Sim, redis_url: str, key_prefix: str) -> None:
    settings = router_settings(sim, redis_url, key_prefix, metrics_token_env="METRICS_TOKEN")
    with pytest.raises(ConfigError) as info:
        create_app(settings, {"SIM_KEY": "sk-sim"})
    assert info.value.field == "METRICS_TOKEN"


# --- which client headers reach the upstream ------------------------------------------------------------------


class Tap:
    """The simulator behind a tap that records the headers of every request it gets (the simulator keeps none)."""

    def __init__(self) -> None:
        self.app = create_simulator(SimConfig())
        self.seen: list[dict[str, str]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            with self._lock:
                self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def tapped(redis_url: str, key_prefix: str) -> Iterator[tuple[Tap, Any]]:
    """A tapped simulator, and a factory of routers in front of it: `with start(**settings) as base: ...`."""
    tap = Tap()
    with serve_in_thread(tap) as sim_base:

        @contextlib.contextmanager
        def start(upstream: dict[str, Any] | None = None, **tree: Any) -> Iterator[str]:
            entry = {"name": "openai", "base_url": sim_base + "/v1", "api_key_env": "SIM_KEY"} | (upstream or {})
            settings = router_settings(Sim(sim_base), redis_url, key_prefix, upstreams=[entry], **tree)
            with serve_in_thread(create_app(settings, {"SIM_KEY": "sk-sim"}), limits=settings.limits) as base:
                yield base

        yield tap, start


def _call(base: str, key: str = KEY) -> None:
    client = openai.OpenAI(
        base_url=base + "/v1", api_key=key, organization="org-tenant", project="proj-tenant", max_retries=0
    )
    with client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"OpenAI-Beta": "assistants=v2", "Cookie": "a=b"}
        )


@pytest.mark.integration  # `tapped` serves a router
def test_org_and_project_headers_are_not_forwarded_under_auth_keys(tapped: tuple[Tap, Any]) -> None:
    tap, start = tapped
    with start(auth="keys", keys=KEYS) as base:
        _call(base)
    (seen,) = tap.seen
    assert "openai-organization" not in seen and "openai-project" not in seen
    assert seen["openai-beta"] == "assistants=v2"
    assert seen["authorization"] == "Bearer sk-sim"  # the router's key, never the tenant's


@pytest.mark.integration  # `tapped` serves a router
def test_org_and_project_headers_are_forwarded_without_auth(tapped: tuple[Tap, Any]) -> None:
    tap, start = tapped
    with start() as base:
        _call(base, key="anything")
    (seen,) = tap.seen
    assert seen["openai-organization"] == "org-tenant"
    assert seen["openai-project"] == "proj-tenant"


@pytest.mark.integration  # `tapped` serves a router
def test_a_tenant_can_be_allowed_its_org_header(tapped: tuple[Tap, Any]) -> None:
    tap, start = tapped
    keys = [KEYS[0] | {"forward_headers": ["openai-organization"]}, {"sha256": "b" * 64, "tenant": "team-b"}]
    with start(auth="keys", keys=keys) as base:
        _call(base)
    (seen,) = tap.seen
    assert seen["openai-organization"] == "org-tenant"
    assert "openai-project" not in seen and "openai-beta" not in seen  # the tenant's list replaces the upstream's


@pytest.mark.integration  # `tapped` serves a router
def test_credentials_and_framing_never_pass_whatever_the_globs(tapped: tuple[Tap, Any]) -> None:
    tap, start = tapped
    with start({"forward_headers": ["*"]}, auth="keys", keys=KEYS) as base:
        _call(base)
    (seen,) = tap.seen
    assert seen["authorization"] == "Bearer sk-sim"
    assert "cookie" not in seen
    assert seen["openai-organization"] == "org-tenant"  # an explicit list is honoured, auth or not


def test_the_keys_of_one_tenant_must_agree_on_forward_headers(sim: Sim, redis_url: str, key_prefix: str) -> None:
    keys = [KEYS[0] | {"forward_headers": ["a"]}, {"sha256": "c" * 64, "tenant": "team-a", "forward_headers": ["b"]}]
    with pytest.raises(ConfigError) as info:
        router_settings(sim, redis_url, key_prefix, auth="keys", keys=keys)
    assert info.value.field == "keys"


# --- serve beyond loopback ------------------------------------------------------------------------------------


@pytest.mark.e2e  # a `serve` process
def test_serve_beyond_loopback_without_auth_refuses_to_start() -> None:
    done = run_cli("serve", "--host", "0.0.0.0", env=clean_env())  # the shipped config: `auth: none`
    assert done.returncode == 2
    assert "--insecure-no-auth" in done.stderr and "auth: keys" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.e2e  # a `serve` process
def test_serve_beyond_loopback_with_open_metrics_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({"auth": "keys", "keys": KEYS}))  # the API needs keys; /metrics no token
    done = run_cli("serve", "--config", str(config), "--host", "0.0.0.0", env=clean_env())
    assert done.returncode == 2
    assert "metrics_token_env" in done.stderr and "--insecure-no-auth" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.1.2.3", False), ("router.internal", False)],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
