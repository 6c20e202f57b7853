"""The shape of router/modelroutes: a pure core, Redis in two modules only, the embeddings extra imported lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "router" / "modelroutes"
WITH_REDIS = {"store.py", "learn.py"}
OPTIONAL = {"numpy", "wordllama"}  # the `embeddings` extra


def top_level_imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions or `if TYPE_CHECKING:`)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_each_module_imports_only_what_its_layer_allows(path: Path) -> None:
    imports = top_level_imports(path)
    roots = {name.split(".")[0] for name in imports}
    assert not roots & {"litestar", "httpx"}, "model routes never speak HTTP"
    assert not roots & OPTIONAL, "the embeddings extra is imported inside functions only"
    allowed = ("router.modelroutes", "router.core")
    assert not {n for n in imports if n.startswith("router.") and not n.startswith(allowed)}
    if path.name not in WITH_REDIS:
        assert "redis" not in roots, "only the store and the import touch Redis"


def test_the_package_imports_without_the_embeddings_extra() -> None:
    import subprocess
    import sys

    blocker = "import sys; sys.modules['numpy'] = None; sys.modules['wordllama'] = None\n"
    check = "import router.modelroutes as m, router.modelroutes.store, router.modelroutes.learn; print(len(m.__all__))"
    run = subprocess.run([sys.executable, "-c", blocker + check], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 10
