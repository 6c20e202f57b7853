"""The docs name every module: the table in docs/architecture.md and the contracts in CONTRIBUTING.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()


def _module_table() -> str:
    section = ARCHITECTURE.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_every_module_is_in_the_architecture_table() -> None:
    table = _module_table()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", table))
    package = ROOT / "router"
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.name for p in (package / "providers").glob("*.py") if p.name != "__init__.py"}
    modules |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()}
    assert sorted(modules - named) == []
    assert sorted(named - modules) == []  # and no module that is gone


def test_contributing_lists_every_import_contract() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [c["name"] for c in contracts if c["name"] not in CONTRIBUTING] == []
