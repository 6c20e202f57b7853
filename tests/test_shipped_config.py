"""The shipped config (also the packaged default) says what the code and the README say, setting by setting.

`config/router.yaml` must name every setting with the code's default; a value that differs on purpose carries a
`# on purpose: <why>` comment on its line. The README's configuration table must name every setting with the same
default, written for people (32 MiB, 7 days, unset, ...), which `_readme_value` reads back.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from router.core.settings import Settings, Upstream

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "router.yaml"
README = REPO / "README.md"

# Collections of entries (their fields are documented by their own rows), not single settings.
ENTRY_LISTS = ("upstreams", "keys", "tenants", "routes", "azure_deployments")
# The README's words for a default the code spells as a value.
WORDS: dict[str, Any] = {"unset": None, "auto": None, "bundled": None, "margin ÷ 2": None}
UNITS = {"KiB": 1024, "MiB": 1024**2, "MB": 1024**2, "days": 86400, "day": 86400, "h": 3600, "s": 1}


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in ENTRY_LISTS:
            out.update(_leaves(value, path + "."))
        elif path not in ENTRY_LISTS:
            out[path] = value
    return out


def _code_defaults() -> dict[str, Any]:
    return _leaves(msgspec.to_builtins(Settings()))


def _shipped() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _on_purpose(name: str) -> bool:
    """Whether the config line that sets `name` (its last part) says why it differs from the code."""
    key = name.rsplit(".", 1)[-1]
    return any(
        re.match(rf"\s*{re.escape(key)}:", line) and "# on purpose:" in line
        for line in CONFIG.read_text(encoding="utf-8").splitlines()
    )


def test_the_shipped_config_names_every_setting_with_the_code_default() -> None:
    shipped, code = _leaves(_shipped()), _code_defaults()
    assert sorted(set(code) - set(shipped)) == [], "settings the shipped config does not name"
    assert sorted(set(shipped) - set(code)) == [], "settings in the shipped config that the code does not have"
    differ = {name: (shipped[name], code[name]) for name in code if shipped[name] != code[name]}
    unexplained = {name: values for name, values in differ.items() if not _on_purpose(name)}
    assert unexplained == {}, "(shipped, code) values that differ without a `# on purpose:` comment"


def test_the_shipped_upstreams_are_the_code_default_upstreams() -> None:
    shipped = [msgspec.to_builtins(msgspec.convert(entry, Upstream)) for entry in _shipped()["upstreams"]]
    assert shipped == msgspec.to_builtins(Settings().upstreams)
    # Every field of an upstream is set in the shipped entry, so the file shows each one's default (the two that
    # depend on the kind and the auth mode are shown as comments).
    kind_specific = ("forward_headers", "orphan_policy", "api_version", "deployments")
    assert sorted(_shipped()["upstreams"][0]) == sorted(f for f in Upstream.__struct_fields__ if f not in kind_specific)


def _readme_rows() -> dict[str, str]:
    """`setting` → its default as the README's configuration table writes it (a row may name several)."""
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| setting | default | meaning |") :]
    rows: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        names_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        names = re.findall(r"`([^`]+)`", names_cell)
        defaults = [part.strip() for part in default_cell.split(" / ")] if " / " in names_cell else [default_cell]
        assert len(defaults) == len(names), f"a README row names {names} but gives {default_cell!r}"
        parent = names[0].rsplit(".", 1)[0] + "." if "." in names[0] else ""
        for i, (name, default) in enumerate(zip(names, defaults, strict=True)):
            rows[name if i == 0 or "." in name else parent + name] = default
    return rows


def _readme_value(text: str) -> Any:
    """A README default as a value: `none`, 32 MiB, 7 days, 50,000, true, `[443, 80]`, unset (open), ..."""
    text = re.sub(r"\s*\(.*\)$", "", text).strip()
    if text in WORDS:
        return WORDS[text]
    if text.startswith("`") and text.endswith("`"):
        return yaml.safe_load(text.strip("`"))
    match = re.fullmatch(r"([\d,.]+)(?:\s*(\w+))?", text)
    if match is None:
        pytest.fail(f"the README's default {text!r} is neither a value nor one of {sorted(WORDS)}")
    number = float(match.group(1).replace(",", ""))
    if match.group(2) in ("true", "false"):
        pytest.fail(f"unexpected {text!r}")
    return number * UNITS[match.group(2)] if match.group(2) else number


def test_the_readme_documents_every_setting_with_the_code_default() -> None:
    rows, code = _readme_rows(), _code_defaults()
    named = {name for name in rows if not name.startswith(ENTRY_LISTS)}
    assert sorted(set(code) - named) == [], "settings the README's configuration table does not name"
    wrong = {}
    for name, default in code.items():
        text = rows[name]
        said = {"true": True, "false": False}[text] if text in ("true", "false") else _readme_value(text)
        if said != default:
            wrong[name] = (text, default)
    assert wrong == {}, "(README, code) defaults that differ"


def test_the_readme_names_every_field_of_an_upstream() -> None:
    row = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| `upstreams[]` |"))
    assert [f for f in Upstream.__struct_fields__ if f"`{f}`" not in row] == []
