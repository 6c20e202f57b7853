"""What a simulated model does with tools and output schemas, for both providers: which tools, and fitting JSON."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgspec

from router.simulator.jsonschema_instances import SchemaError, instance
from router.simulator.text import WORDS

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
    value = instance(schema, salt, WORDS)
    if not isinstance(value, dict):
        raise SchemaError("the arguments of a tool must be an object")
    return value


def json_text(schema: dict[str, Any] | None, salt: bytes) -> str:
    """Compact JSON text valid against `schema`, as a model writes structured output."""
    return _ENCODE.encode(instance(schema if schema is not None else {}, salt, WORDS)).decode()


def strict_problem(schema: Any) -> str | None:
    """What OpenAI's strict mode refuses in `schema`, worded as the API words it, or None.

    Strict mode needs an object at the root and, on every object, `additionalProperties: false` and every property
    listed in `required` (optional fields are spelled as a union with null instead).
    """
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind != "object":
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."
    return _strict_walk(schema, ())


def _strict_walk(node: Any, context: tuple[str, ...]) -> str | None:
    if isinstance(node, list):
        return next((p for i, sub in enumerate(node) if (p := _strict_walk(sub, (*context, str(i))))), None)
    if not isinstance(node, dict):
        return None
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties") is not False:
            return f"In context={context!r}, 'additionalProperties' is required to be supplied and to be false."
        required = node.get("required") or []
        missing = [name for name in node.get("properties") or {} if name not in required]
        if missing:
            return (
                f"In context={context!r}, 'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'."
            )
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (node.get(key) or {}).items():
            if problem := _strict_walk(sub, (*context, key, name)):
                return problem
    for key in ("items", "prefixItems", "anyOf", "allOf", "oneOf"):
        if key in node and (problem := _strict_walk(node[key], (*context, key))):
            return problem
    return None


__all__ = ["SchemaError", "arguments", "json_text", "pick_tools", "seed", "strict_problem"]


_SCHEMA_SCAN_LIMIT = 256 * 1024
_SCHEMA_SCAN_MISSES = 32
_FENCE_ASKED = re.compile(r"```json|json (?:code ?block|markdown)", re.IGNORECASE)
_JSON = msgspec.json.Decoder()


def schema_in_prompt(prompt: str) -> dict[str, Any] | None:
    """The last JSON Schema a prompt spells out (an object with `properties`, `$defs` or `"type": "object"`), or
    None. Libraries that ask for JSON without a response schema (instructor's `JSON` and `MD_JSON` modes) write the
    schema into a system message; a real model answers with an instance of it, and so does the simulator."""
    if "properties" not in prompt or len(prompt) > _SCHEMA_SCAN_LIMIT:
        return None
    found: dict[str, Any] | None = None
    misses = 0  # prose braces that start no JSON object: a few are tried, not every one of a long prompt's
    at = prompt.find("{")
    while at != -1 and misses < _SCHEMA_SCAN_MISSES:
        end = _balanced_end(prompt, at)
        try:
            value = None if end is None else _JSON.decode(prompt[at:end])
        except msgspec.DecodeError:
            value = None
        if end is None or value is None:
            misses += 1
            at = prompt.find("{", at + 1)
            continue
        if isinstance(value, dict) and ("properties" in value or "$defs" in value or value.get("type") == "object"):
            found = value
        at = prompt.find("{", end)
    return found


def _balanced_end(text: str, start: int) -> int | None:
    """The index after the `}` closing the `{` at `start` (braces inside JSON strings skipped), or None."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def fence_asked(last_user: str) -> bool:
    """Whether the last user turn asks for the answer in a fenced ```json block (instructor's `MD_JSON` mode)."""
    return _FENCE_ASKED.search(last_user) is not None


def json_answer(prompt: str, reply: str, salt: bytes) -> str:
    """A `json_object` answer: an instance of the schema the prompt describes, else the reply under `answer`."""
    schema = schema_in_prompt(prompt)
    if schema is None:
        return _ENCODE.encode({"answer": reply}).decode()
    try:
        return json_text(schema, salt)
    except SchemaError:
        return _ENCODE.encode({"answer": reply}).decode()


def text_answer(prompt: str, last_user: str, reply: str, salt: bytes) -> str:
    """A plain-text answer: the reply, or a fenced JSON block when the last user turn asks for one."""
    if not fence_asked(last_user):
        return reply
    return "```json\n" + json_answer(prompt, reply, salt) + "\n```"
