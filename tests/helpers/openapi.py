"""The official OpenAI OpenAPI spec as JSON Schema: `validate(component, instance)` for wire-shape tests."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:openai-openapi"
SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "openai-openapi.json"
"""The schemas the tests use, vendored from the official spec by `tests/data/vendor_openapi.py`."""


def _nullable_to_2020(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 `nullable: true`, still scattered through the 3.1 spec, as JSON Schema `anyOf` null.

    Draft 2020-12 ignores `nullable`, so without this a `null` the spec allows (e.g. a chunk's `finish_reason`)
    would fail validation.
    """
    if isinstance(node, list):
        return [_nullable_to_2020(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_to_2020(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SPEC_PATH.read_bytes())
    return {"components": _nullable_to_2020(loaded["components"])}


@functools.cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_spec(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


def component_names() -> frozenset[str]:
    """Every schema name under `#/components/schemas`."""
    return frozenset(_spec()["components"]["schemas"])


@functools.cache
def validator(component: str) -> Draft202012Validator:
    """A cached Draft 2020-12 validator for `#/components/schemas/<component>`, refs resolved in the spec."""
    if component not in component_names():
        raise KeyError(f"no schema named {component!r} in the OpenAI spec")
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=_registry())


def validate(component: str, instance: Any) -> None:
    """Raise `jsonschema.ValidationError` (the most relevant one) unless `instance` matches the component."""
    validator(component).validate(instance)
