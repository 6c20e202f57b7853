"""Vendor the part of the official OpenAI OpenAPI spec that the tests validate against.

Usage: `python tests/data/vendor_openapi.py path/to/openai-openapi.yaml` rewrites `tests/data/openai-openapi.json`
with the schemas named in `ROOTS` and every schema they reference, plus where they came from (the spec's
version and the SHA-256 of the source file). The tests read only the vendored file; run this again when the
spec is updated or a test needs a schema that is not in `ROOTS` yet.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

SOURCE = "https://github.com/openai/openai-openapi (openapi.yaml)"
OUT = Path(__file__).with_name("openai-openapi.json")
ROOTS = (
    "Batch",
    "ChatCompletionTokenLogprob",
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "DeleteFileResponse",
    "ErrorResponse",
    "ListBatchesResponse",
    "ListFilesResponse",
    "ListModelsResponse",
    "Model",
    "OpenAIFile",
    "Response",
    "ResponseStreamEvent",
)
_PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    """The schema names that `node` references anywhere inside it."""
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"].removeprefix(_PREFIX)} if isinstance(node.get("$ref"), str) else set()
    return found.union(*(_refs(value) for value in node.values()))


def closure(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """`roots` and every schema reachable from them through `$ref`, sorted by name."""
    todo, seen = list(roots), set[str]()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_refs(schemas[name]) - seen)
    return {name: schemas[name] for name in sorted(seen)}


def main(source: Path) -> None:
    raw = source.read_bytes()
    spec = yaml.load(raw, Loader=yaml.CSafeLoader)
    vendored = {
        "x-vendored-from": {
            "source": SOURCE,
            "info.version": spec["info"]["version"],
            "sha256": hashlib.sha256(raw).hexdigest(),
            "roots": list(ROOTS),
            "script": "tests/data/vendor_openapi.py",
        },
        "components": {"schemas": closure(spec["components"]["schemas"], ROOTS)},
    }
    OUT.write_text(json.dumps(vendored, indent=1, sort_keys=False) + "\n")
    print(f"{OUT.name}: {len(vendored['components']['schemas'])} schemas from spec {spec['info']['version']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
