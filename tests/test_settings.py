"""Settings: file, env and flag layers, and errors a person can act on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from router.core.errors import ConfigError
from router.core.policy import load_policies
from router.core.pricing import load_pricing
from router.core.settings import load_settings, packaged

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads() -> None:
    settings = load_settings(ROOT / "config" / "router.yaml", {})
    assert settings.upstreams[0].name == "openai"
    assert settings.auth == "none"
    assert settings.host == "127.0.0.1"


def test_env_overrides_nest_and_convert(tmp_path: Path) -> None:
    env = {"HYBRID_ROUTER_BATCH__MAX_WAIT_S": "5", "HYBRID_ROUTER_PORT": "9000", "REDIS_URL": "redis://x:1/0"}
    settings = load_settings(write(tmp_path, "port: 8000\n"), env)
    assert settings.batch.max_wait_s == 5.0
    assert settings.port == 9000
    assert settings.redis_url == "redis://x:1/0"


def test_cli_overrides_win(tmp_path: Path) -> None:
    env = {"HYBRID_ROUTER_PORT": "9000"}
    settings = load_settings(write(tmp_path, "port: 8000\n"), env, {"port": 7000})
    assert settings.port == 7000


@pytest.mark.parametrize(
    ("text", "field", "expected"),
    [
        ("prot: 80\n", None, "unknown field `prot`"),
        ("port: high\n", "port", "Expected `int`"),
        ("batch:\n  max_wait_s: -1\n", "batch.max_wait_s", "Expected `float` > 0"),
        ("upstreams:\n  - name: a\n    base_url: u\n    api_key: sk-1\n", "upstreams[0]", "unknown field `api_key`"),
        (
            "upstreams:\n  - name: a\n    kind: gemini\n    base_url: u\n",
            "upstreams[0].kind",
            "Invalid enum value 'gemini'",
        ),
        (
            "upstreams:\n  - name: a\n    kind: anthropic\n    base_url: u\n    orphan_policy: ignore\n",
            "upstreams[0].orphan_policy",
            "Invalid enum value 'ignore'",
        ),
        ("auth: keys\n", "keys", "no keys are configured"),
        ("keys:\n  - sha256: abc\n    tenant: t\n", "keys[0].sha256", "Expected `str` matching"),
        ("tenants:\n  a:\n    rpm: 0\n", "tenants.a.rpm", "Expected `int` >= 1"),
        ("tenants:\n  a:\n    rmp: 5\n", "tenants.a", "unknown field `rmp`"),
        ("tenants:\n  'a b':\n    rpm: 5\n", "tenants", "'a b' is not a tenant name"),
        ("limits:\n  max_queues: 0\n", "limits.max_queues", "Expected `int` >= 1"),
        ("[1, 2]\n", None, "expected a mapping"),
        ("port: [\n", None, "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_field(tmp_path: Path, text: str, field: str | None, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    message = str(info.value)
    assert message.startswith(str(tmp_path / "router.yaml"))
    assert expected in message
    if field is not None:
        assert info.value.field == field


def test_duplicate_upstream_names_are_refused(tmp_path: Path) -> None:
    text = "upstreams:\n  - {name: a, base_url: u}\n  - {name: a, base_url: v}\n"
    with pytest.raises(ConfigError, match="unique"):
        load_settings(write(tmp_path, text), {})


def test_keys_are_compared_by_digest(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"sk-team").hexdigest()
    settings = load_settings(write(tmp_path, f"auth: keys\nkeys:\n  - sha256: {digest}\n    tenant: team\n"), {})
    assert settings.tenant_for_key("sk-team") == "team"
    assert settings.tenant_for_key("sk-other") is None
    assert settings.tenant_for_key(None) is None
    assert load_settings(None, {}).tenant_for_key(None) == "default"


def test_tenant_limits_fall_back_to_the_star_entry(tmp_path: Path) -> None:
    text = "tenants:\n  a: {rpm: 5}\n  '*': {daily_budget_usd: 2.5}\n"
    settings = load_settings(write(tmp_path, text), {"HYBRID_ROUTER_TENANTS__B__MAX_DEFERRED": "7"})
    assert settings.tenant_limits("a") == settings.tenants["a"]
    assert settings.tenants["a"].daily_budget_usd is None  # a named tenant's own entry is all that applies to it
    assert settings.tenant_limits("b") is not None and settings.tenant_limits("b").max_deferred == 7  # type: ignore[union-attr]
    other = settings.tenant_limits("c")
    assert other is not None and other.daily_budget_usd == 2.5 and other.rpm is None
    assert load_settings(None, {}).tenant_limits("default") is None


def test_absent_prices_and_policies_mean_the_packaged_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {})
    assert settings.pricing_file == str(packaged("config/pricing.yaml"))
    assert settings.policies_dir == str(packaged("policies"))
    assert load_pricing(Path(settings.pricing_file)).lookup("gpt-4o") is not None
    assert "evals" in [rule.name for rule in load_policies(Path(settings.policies_dir)).rules]


def test_files_at_the_default_locations_override_the_packaged_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "pricing.yaml").write_text("models: []\n")
    (tmp_path / "policies").mkdir()
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {})
    assert (settings.pricing_file, settings.policies_dir) == ("config/pricing.yaml", "policies")
    assert load_policies(Path(settings.policies_dir)).rules == ()


def test_an_explicit_path_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(write(tmp_path, "pricing_file: prices.yaml\n"), {})
    assert settings.pricing_file == "prices.yaml"
    with pytest.raises(ConfigError, match=r"^prices.yaml: cannot read"):
        load_pricing(Path(settings.pricing_file))
