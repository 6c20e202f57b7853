"""The repository stands alone: no file names a path outside it, and the vendored spec is the one tests read."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers.openapi import SPEC_PATH, component_names

ROOT = Path(__file__).resolve().parent.parent
# An absolute path on a developer's or CI machine, or the read-only folder beside the repository.
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/\w|/root/|/Users/\w|\.\./shared/)")


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [p for p in paths if p.is_file() and p.suffix not in {".png", ".json"} and p != Path(__file__)]


def test_no_tracked_file_names_a_machine_path() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert offenders == []


def test_the_vendored_spec_is_inside_the_repository_and_has_the_schemas_tests_use() -> None:
    assert SPEC_PATH.resolve().is_relative_to(ROOT)
    assert {"CreateChatCompletionResponse", "Batch", "ErrorResponse", "ResponseCompletedEvent"} <= component_names()
