"""The map agrees with the ground: the package table of docs/architecture.md says what each package may import, the
import-linter contracts in pyproject.toml say the same, and the code imports no more; every module is named in the
docs, and every contract in CONTRIBUTING.md. The import graph has no cycle and at most ten floors; `router/` has at
most twelve entries and no module runs past 500 lines but the table of Lua scripts."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "router"
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()
CONTRACTS: list[dict[str, Any]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]


def _section_tables() -> list[list[list[str]]]:
    """The tables of the `## Packages` section, each as rows of cells (header and rule left out)."""
    section = ARCHITECTURE.split("## Packages", 1)[1].split("\n## ", 1)[0]
    tables: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            tables.append(rows[2:])
            rows = []
    return tables


def _packages() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def _documented() -> dict[str, set[str]]:
    """Each package of the package table and the packages it may import, as the docs say."""
    table = _section_tables()[0]
    return {row[0].strip("`/"): set(re.findall(r"`(\w+)`", row[2])) for row in table}


@cache
def _allowed() -> dict[str, set[str]]:
    """What the contracts let each package import: the layers below its own, less what a forbidden contract names."""
    layers = next(c for c in CONTRACTS if c["type"] == "layers" and c.get("containers") == ["router"])["layers"]
    present = _packages()
    allowed: dict[str, set[str]] = {}
    for at, layer in enumerate(layers):
        below = {name.strip("() ") for lower in layers[at + 1 :] for name in re.split(r"[|:]", lower)}
        for name in re.split(r"[|:]", layer):
            allowed[name.strip("() ")] = below & present
    for contract in CONTRACTS:
        if contract["type"] != "forbidden":
            continue
        forbidden = {m.removeprefix("router.") for m in contract["forbidden_modules"] if m.startswith("router.")}
        for source in contract["source_modules"]:
            parts = source.split(".")
            if len(parts) == 2 and parts[1] in allowed:
                allowed[parts[1]] -= forbidden
    return {name: names for name, names in allowed.items() if name in present}


def test_every_package_is_in_a_layer_and_the_table() -> None:
    assert sorted(_allowed()) == sorted(_packages())
    assert sorted(_documented()) == sorted(_packages())


def test_the_table_says_what_the_contracts_allow() -> None:
    assert _documented() == _allowed()


MAX_FLOORS = 10
MAX_ENTRIES = 12
"""Directly under `router/`: `__init__.py`, `__main__.py`, `py.typed` and the packages (`modelroutes/` is coming)."""
MAX_LINES = 500
DECLARATIVE = {"deferred/store/scripts.py"}
"""Tables allowed to run longer: every Lua script with its typed wrapper, kept together."""


def test_router_has_at_most_twelve_entries() -> None:
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert len(entries) <= MAX_ENTRIES, entries


def test_no_module_is_over_500_lines() -> None:
    lengths = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES and name not in DECLARATIVE} == {}


"""The longest chain of module imports (`python -m router` → ... → a leaf), counted in modules."""


def _imports(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    modules = {m for m in graph.modules if m.split(".")[0] == "router"}
    return {m: {t for t in graph.find_modules_directly_imported_by(m) if t in modules} for m in modules}


def test_no_import_cycle() -> None:
    """Not even through imports made only for type checking."""
    imports = _imports(grimp.build_graph("router", cache_dir=None))
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module) :], module))
        if module not in done:
            for target in sorted(imports[module]):
                visit(target, (*path, module))
            done.add(module)

    for module in sorted(imports):
        visit(module, ())


def test_at_most_ten_import_floors() -> None:
    """Floors of the imports a module makes when it runs (an import made only for type checking is no floor: it
    never runs, and it may point anywhere the layers allow)."""
    imports = _imports(grimp.build_graph("router", exclude_type_checking_imports=True, cache_dir=None))
    chains: dict[str, list[str]] = {}

    def chain(module: str) -> list[str]:
        if module not in chains:
            below = [chain(target) for target in sorted(imports[module])]
            chains[module] = [module, *max(below, key=len, default=[])]
        return chains[module]

    longest = max((chain(m) for m in sorted(imports)), key=len)
    assert len(longest) <= MAX_FLOORS, " -> ".join(longest)


def test_each_package_imports_only_what_it_may() -> None:
    graph = grimp.build_graph("router", cache_dir=None)
    imported: dict[str, set[str]] = {}
    for module in graph.modules:
        parts = module.split(".")
        if len(parts) < 2 or parts[1] not in _packages():
            continue
        for target in graph.find_modules_directly_imported_by(module):
            other = target.split(".")
            if other[0] == "router" and len(other) > 1 and other[1] != parts[1]:
                imported.setdefault(parts[1], set()).add(other[1])
    assert {name: names - _allowed()[name] for name, names in imported.items() if names - _allowed()[name]} == {}


def test_every_module_is_in_the_module_table() -> None:
    named = {path for row in _section_tables()[1] for path in re.findall(r"`([\w/]+(?:\.py|/))`", row[0])}
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    packaged = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    covered = {m for m in modules if m in named or any(m.startswith(d) for d in named if d.endswith("/"))}
    assert sorted(modules - covered) == []
    assert sorted(named - modules - packaged - {d for d in named if (PACKAGE / d).is_dir()}) == []  # none gone


def test_contributing_lists_every_import_contract() -> None:
    assert [c["name"] for c in CONTRACTS if c["name"] not in CONTRIBUTING] == []
