"""What a simulated model does with tools and output schemas, for both providers: which tools, and fitting JSON."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from router.simulator.jsonschema_instances import SchemaError, instance

_ENCODE = msgspec.json.Encoder()


def seed(*parts: str | bytes) -> bytes:
    """A seed for a generated value, from the conversation's text and whatever tells values apart (a tool name)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x1f")
    return h.digest()


def pick_tools(names: list[str], mention: str, parallel: bool, salt: bytes) -> list[str]:
    """The tools a model calls: each one the last user turn names (only the first when parallel calls are off),
    else one picked by `salt`, so a prompt that names two tools shows parallel calls and any prompt shows one."""
    named = [name for name in names if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", mention)]
    if named:
        return named if parallel else named[:1]
    return [names[salt[0] % len(names)]]


def arguments(schema: dict[str, Any] | None, salt: bytes) -> dict[str, Any]:
    """Tool arguments (always an object) valid against `schema`; raises `SchemaError` for one no object can meet."""
    if not schema:
        return {}
    value = instance(schema, salt)
    if not isinstance(value, dict):
        raise SchemaError("the arguments of a tool must be an object")
    return value


def json_text(schema: dict[str, Any] | None, salt: bytes) -> str:
    """Compact JSON text valid against `schema`, as a model writes structured output."""
    return _ENCODE.encode(instance(schema if schema is not None else {}, salt)).decode()


__all__ = ["SchemaError", "arguments", "json_text", "pick_tools", "seed"]
