"""Installed anywhere: `init`, `check-config` and `demo` outside the repository, and the built wheel in a fresh venv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.core.settings import packaged
from router.ops.cli import main

ROOT = Path(__file__).resolve().parent.parent
STARTER = ("config/router.yaml", "config/pricing.yaml", "policies/00-examples.yaml")


def check_config(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["check-config"]) == 0
    return capsys.readouterr().out


def test_check_config_in_an_empty_directory_names_the_packaged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    out = check_config(capsys)
    assert "built-in defaults (no config/router.yaml" in out
    assert f"pricing:  packaged default {packaged('config/pricing.yaml')}" in out
    assert f"policies: packaged default {packaged('policies')} (add ./policies to override it), 6 rules" in out


def test_init_writes_the_packaged_files_and_check_config_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "site"]) == 0
    out = capsys.readouterr().out
    for name in STARTER:
        assert f"wrote {Path('site', name)}" in out
        assert (tmp_path / "site" / name).read_bytes() == packaged(name).read_bytes()
    assert "next: cd site && hybrid-router check-config" in out
    monkeypatch.chdir(tmp_path / "site")
    out = check_config(capsys)
    assert "config:   config/router.yaml" in out
    assert "pricing:  config/pricing.yaml\n" in out
    assert "policies: policies, 6 rules" in out


def test_init_refuses_to_overwrite_unless_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    pricing = tmp_path / "config" / "pricing.yaml"
    pricing.write_text("models: []\n")
    capsys.readouterr()
    assert main(["init"]) == 1
    err = capsys.readouterr().err
    assert all(str(Path(name)) in err for name in STARTER)
    assert "nothing written (--force overwrites them)" in err
    assert pricing.read_text() == "models: []\n"
    assert main(["init", "--force"]) == 0
    assert "next: hybrid-router check-config" in capsys.readouterr().out
    assert pricing.read_bytes() == packaged("config/pricing.yaml").read_bytes()


def test_the_demo_says_what_to_install_without_the_openai_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    from router.core.errors import ConfigError
    from router.core.settings import Settings
    from router.ops.demo import run_demo

    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ConfigError, match=r"pip install 'hybrid-router\[demo\]'"):
        run_demo(Settings())


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no venv, no router settings."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("HYBRID_ROUTER_")}


def run(*argv: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel built from this checkout, with the `demo` extra (dependencies from the index)."""
    base = tmp_path_factory.mktemp("install")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", base / "dist", ROOT, cwd=base)
    (wheel,) = base.glob("dist/hybrid_router-*.whl")
    run(sys.executable, "-m", "venv", base / "venv", cwd=base)
    run(base / "venv" / "bin" / "python", "-m", "pip", "install", "-q", f"{wheel}[demo]", cwd=base)
    yield base / "venv"


def empty_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    assert not directory.resolve().is_relative_to(ROOT)
    return directory


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_ships_its_defaults(venv: Path, tmp_path: Path) -> None:
    code = "import router, router.core.settings as s; print(router.__file__); print(s.packaged('config/pricing.yaml'))"
    module, pricing = run(venv / "bin" / "python", "-c", code, cwd=empty_dir(tmp_path)).stdout.split()
    assert Path(module).is_relative_to(venv)
    assert Path(pricing).is_relative_to(Path(module).parent / "defaults")
    for name in STARTER:
        shipped = Path(module).parent / "defaults" / name
        assert shipped.read_bytes() == (ROOT / name).read_bytes()
    # The status page's templates, stylesheet and vendored htmx are package data, served from the install.
    for name in ("templates/ui.html.j2", "templates/ui_panels.html.j2", "static/ui.css", "static/htmx.min.js"):
        assert (Path(module).parent / "http" / name).read_bytes() == (ROOT / "router" / "http" / name).read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_demo_runs_from_an_empty_directory(venv: Path, tmp_path: Path) -> None:
    out = run(venv / "bin" / "hybrid-router", "demo", cwd=empty_dir(tmp_path)).stdout
    share = re.search(r"saved \(%\)\W+([0-9.]+)%", out)
    assert share is not None, out
    assert float(share.group(1)) > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_init_then_check_config_from_an_empty_directory(venv: Path, tmp_path: Path) -> None:
    here = empty_dir(tmp_path)
    before = run(venv / "bin" / "hybrid-router", "check-config", cwd=here).stdout
    assert f"pricing:  packaged default {venv}" in before
    written = run(venv / "bin" / "hybrid-router", "init", cwd=here).stdout
    assert "next: hybrid-router check-config" in written
    after = run(venv / "bin" / "hybrid-router", "check-config", cwd=here).stdout
    assert "config:   config/router.yaml" in after
    assert "pricing:  config/pricing.yaml\n" in after
    assert "policies: policies, 6 rules" in after
