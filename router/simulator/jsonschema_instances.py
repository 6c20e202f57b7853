"""Deterministic JSON instances of a JSON Schema: the simulator's stand-in for structured output and tool arguments.

Why not a library: the ones that generate instances draw from a global or test-time random source and bring heavy
dependencies (hypothesis-jsonschema needs Hypothesis and is meant for tests; jsf pulls Faker, pydantic and
smart-open; jsonschema-default pins its one dependency exactly and uses the global `random`). The simulator needs the
same instance for the same prompt, cheaply, for the subset structured outputs and Pydantic use: objects, arrays and
tuples, enums and consts, `anyOf`/`oneOf`/`allOf`, local `$ref` into `$defs` (recursion included), string formats and
numeric bounds. Regular expressions (`pattern`) are the one part left to a library, `rstr` (pure Python, no
dependencies), driven by our seeded generator.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote

import rstr

MAX_DEPTH = 6
"""Below this nesting, optional properties are filled and arrays get 1 to 3 items; past it only what is required."""
MAX_NODES = 2000
"""Past this many values generated, the rest is kept to what is required, so wide recursive schemas stay small."""
HARD_DEPTH = 64
_PATTERN_TRIES = 8
_NONE = object()


class SchemaError(ValueError):
    """A schema no instance can be generated for (a bad `$ref`, a `false` schema, a required recursion)."""


def instance(schema: Any, seed: bytes, words: Sequence[str]) -> Any:
    """A JSON value valid against `schema` (JSON Schema 2020-12, local refs), the same for the same seed; its strings
    are made of `words`."""
    return _Generator(schema, seed, words).value(schema, 0)


def _words(rng: random.Random, words: Sequence[str], count: int) -> str:
    return " ".join(rng.choice(words) for _ in range(count))


def _date(rng: random.Random) -> str:
    return f"20{rng.randrange(20, 30)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"


_FORMATS: dict[str, Callable[[random.Random, Sequence[str]], str]] = {
    "date-time": lambda rng, _: f"{_date(rng)}T{_time(rng)}",
    "date": lambda rng, _: _date(rng),
    "time": lambda rng, _: _time(rng),
    "duration": lambda rng, _: f"P{rng.randrange(1, 30)}DT{rng.randrange(1, 24)}H",
    "email": lambda rng, words: f"{rng.choice(words)}@example.com",
    "idn-email": lambda rng, words: f"{rng.choice(words)}@example.com",
    "hostname": lambda rng, words: f"{rng.choice(words)}.example.com",
    "idn-hostname": lambda rng, words: f"{rng.choice(words)}.example.com",
    "ipv4": lambda rng, _: ".".join(str(rng.randrange(1, 255)) for _ in range(4)),
    "ipv6": lambda rng, _: ":".join(f"{rng.randrange(1 << 16):x}" for _ in range(8)),
    "uuid": lambda rng, _: str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    "uri": lambda rng, words: f"https://example.com/{rng.choice(words)}",
    "iri": lambda rng, words: f"https://example.com/{rng.choice(words)}",
    "uri-reference": lambda rng, words: f"/{rng.choice(words)}",
    "iri-reference": lambda rng, words: f"/{rng.choice(words)}",
    "json-pointer": lambda rng, words: f"/{rng.choice(words)}",
}

_TYPE_HINTS = (
    ("object", ("properties", "required", "additionalProperties", "minProperties", "patternProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems", "contains")),
    ("string", ("minLength", "maxLength", "pattern", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two schemas that must both hold, as one (the keywords this generator reads; later wins for the rest)."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif key == "properties":
            props = dict(out[key])
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
            out[key] = max(out[key], value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
            out[key] = min(out[key], value)
        elif key == "type":
            left = set(out[key]) if isinstance(out[key], list) else {out[key]}
            right = set(value) if isinstance(value, list) else {value}
            both = left & right or ({"integer"} if {"integer", "number"} <= left | right else right)
            out[key] = sorted(both) if len(both) > 1 else next(iter(both))
        elif key == "enum":
            out[key] = [v for v in out[key] if v in value] or value
        elif key == "allOf":
            out[key] = [*out[key], *value]
        elif key in ("anyOf", "oneOf"):  # both lists of alternatives must hold: keep the second under `allOf`
            out["allOf"] = [*out.get("allOf", []), {key: value}]
        else:
            out[key] = value
    return out


class _Generator:
    """One walk over a schema with one seeded random source."""

    __slots__ = ("nodes", "rng", "root", "words")

    def __init__(self, root: Any, seed: bytes, words: Sequence[str]) -> None:
        self.root = root
        self.words = words
        self.rng = random.Random(int.from_bytes(hashlib.blake2b(seed, digest_size=16).digest(), "big"))
        self.nodes = 0

    def value(self, schema: Any, depth: int) -> Any:
        """An instance of `schema` met `depth` levels below the root."""
        if depth > HARD_DEPTH:
            raise SchemaError("the schema requires a value nested without end")
        self.nodes += 1
        if isinstance(schema, bool):
            if not schema:
                raise SchemaError("a `false` schema has no valid value")
            return _words(self.rng, self.words, 2)
        if not isinstance(schema, dict):
            raise SchemaError("a schema must be an object or a boolean")
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise SchemaError("`enum` must be a non-empty array")
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                rest = {k: v for k, v in schema.items() if k != key}
                return self.value(_merge(rest, self.branch(schema[key], depth)), depth)
        return self.typed(schema, self.kind(schema, depth), depth)

    def typed(self, schema: dict[str, Any], kind: str, depth: int) -> Any:
        """An instance of a resolved schema of one type."""
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, depth)
        if kind == "string":
            return self.string(schema)
        if kind in ("integer", "number"):
            return self.number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        raise SchemaError(f"unknown type {kind!r}")

    def shallow(self, depth: int) -> bool:
        return depth >= MAX_DEPTH or self.nodes > MAX_NODES

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """`schema` with its `$ref` followed (sibling keywords kept, as in 2020-12) and its `allOf` merged."""
        for _ in range(100):
            ref = schema.get("$ref")
            if ref is None:
                break
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            target = self.lookup(ref)
            schema = _merge(target, rest) if rest else target
        else:
            raise SchemaError("`$ref` loops without reaching a schema")
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list):
                raise SchemaError("`allOf` must be an array")
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if part is False:
                    raise SchemaError("a `false` schema has no valid value")
                if isinstance(part, dict):
                    merged = _merge(merged, self.resolve(part))
            return self.resolve(merged)
        return schema

    def lookup(self, ref: Any) -> dict[str, Any]:
        """The schema a local reference (`#`, `#/$defs/Name`, any JSON pointer) points to."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local references are supported, not {ref!r}")
        node = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            key = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise SchemaError(f"`$ref` {ref!r} points to nothing")
        if node is True:
            return {}
        if not isinstance(node, dict):
            raise SchemaError(f"`$ref` {ref!r} does not point to a schema")
        return node

    def branch(self, branches: Any, depth: int) -> dict[str, Any]:
        """One alternative: a non-null one while nesting is shallow (values say more), else the null or a leaf."""
        if not isinstance(branches, list) or not branches:
            raise SchemaError("`anyOf` and `oneOf` must be non-empty arrays")
        options = [self.resolve(b) if isinstance(b, dict) else {} if b is True else None for b in branches]
        usable = [b for b in options if b is not None]
        if not usable:
            raise SchemaError("no alternative of `anyOf`/`oneOf` can hold")
        nulls = [b for b in usable if b.get("type") == "null"]
        if self.shallow(depth):
            leaves = [b for b in usable if b.get("type") not in ("object", "array") and "$ref" not in b]
            return (nulls or leaves or usable)[0]
        values = [b for b in usable if b.get("type") != "null"] or usable
        return self.rng.choice(values)

    def kind(self, schema: dict[str, Any], depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            if not declared:
                raise SchemaError("`type` must not be an empty array")
            non_null = [t for t in declared if t != "null"]
            if "null" in declared and (self.shallow(depth) or not non_null):
                return "null"
            return str(self.rng.choice(non_null))
        if isinstance(declared, str):
            return declared
        for kind, keywords in _TYPE_HINTS:
            if any(k in schema for k in keywords):
                return kind
        return "string"

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        props: dict[str, Any] = schema.get("properties") or {}
        required: list[str] = list(schema.get("required") or [])
        extra = schema.get("additionalProperties", True)
        shallow = self.shallow(depth)
        out: dict[str, Any] = {}
        for name in [*props, *(r for r in required if r not in props)]:
            if name in required or not shallow:
                out[name] = self.value(props.get(name, extra if isinstance(extra, dict) else True), depth + 1)
        low = int(schema.get("minProperties", 0))
        high = schema.get("maxProperties")
        # A map (no `properties`, a schema for the values, as Pydantic writes `dict[str, X]`) gets an entry or two.
        is_map = "properties" not in schema and isinstance(extra, dict) and not shallow
        wanted = max(low, 1 + self.rng.randrange(2) if is_map else 0)
        if high is not None:
            wanted = min(wanted, int(high))
        while len(out) < wanted and extra is not False:
            key = self.rng.choice(self.words) + (str(len(out)) if len(out) >= len(self.words) else "")
            if key not in out:
                out[key] = self.value(extra if isinstance(extra, dict) else True, depth + 1)
        if high is not None and len(out) > int(high):
            for name in [n for n in out if n not in required][: len(out) - int(high)]:
                del out[name]
        return out

    def array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        items = schema.get("items", True)
        prefix: list[Any] = schema.get("prefixItems") or (items if isinstance(items, list) else [])
        rest = schema.get("additionalItems", True) if isinstance(items, list) else items
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, len(prefix)) + 3))
        count = max(low, len(prefix)) if self.shallow(depth) else max(low, 1 + self.rng.randrange(3), len(prefix))
        count = min(count, high)
        if rest is False:
            count = min(count, len(prefix))
        if count < low:
            raise SchemaError("`minItems` cannot be met")
        out: list[Any] = []
        unique = bool(schema.get("uniqueItems"))
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else rest
            item = self.value(sub, depth + 1)
            if unique and item in out:
                item = self.distinct(sub, out, depth + 1)
                if item is _NONE:
                    if len(out) >= low:
                        break
                    raise SchemaError("`uniqueItems` cannot be met")
            out.append(item)
        return out

    def distinct(self, schema: Any, taken: list[Any], depth: int) -> Any:
        """An instance of `schema` not in `taken` (an unused `enum` value, else a few more draws), or `_NONE`."""
        resolved = self.resolve(schema) if isinstance(schema, dict) else {}
        if isinstance(resolved.get("enum"), list):
            return next((v for v in resolved["enum"] if v not in taken), _NONE)
        for _ in range(16):
            item = self.value(schema, depth)
            if item not in taken:
                return item
        return _NONE

    def string(self, schema: dict[str, Any]) -> str:
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        pattern = schema.get("pattern")
        fmt = schema.get("format")
        if isinstance(pattern, str):
            return self.matching(pattern, low, high)
        if isinstance(fmt, str) and fmt in _FORMATS:
            text = _FORMATS[fmt](self.rng, self.words)
        else:
            text = _words(self.rng, self.words, 1 + self.rng.randrange(3))
        while len(text) < low:
            text += " " + _words(self.rng, self.words, 1)
        return text if high is None else text[: int(high)]

    def matching(self, pattern: str, low: int, high: Any) -> str:
        """A string the regular expression finds a match in, within the length bounds when one can be found."""
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"`pattern` {pattern!r} is not a valid regular expression") from exc
        maker = rstr.Rstr(self.rng)
        text = ""
        for _ in range(_PATTERN_TRIES):
            text = maker.xeger(compiled)
            if compiled.search(text) and low <= len(text) <= (math.inf if high is None else int(high)):
                return text
        return text

    def number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low, high = self.bounds(schema, integer)
        step = schema.get("multipleOf")
        if isinstance(step, int | float) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            if first > last:
                raise SchemaError("no multiple of `multipleOf` lies within the bounds")
            k = self.rng.randint(first, min(last, first + 100))
            value = k * step
            if isinstance(step, float):
                value = round(value, _decimals(step))
            return int(value) if integer else value
        if integer:
            lo, hi = math.ceil(low), math.floor(high)
            if lo > hi:
                raise SchemaError("no integer lies within the bounds")
            return self.rng.randint(lo, min(hi, lo + 1000))
        value = round(self.rng.uniform(low, min(high, low + 1000)), 2)
        return value if low <= value <= high else (low + high) / 2

    def bounds(self, schema: dict[str, Any], integer: bool) -> tuple[float, float]:
        """The inclusive range a value may take (an exclusive bound moved inside by one unit or a hundredth)."""
        nudge = 1 if integer else 0.01
        low: float | None = schema.get("minimum")
        high: float | None = schema.get("maximum")
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if ex_low is True and low is not None:  # draft 4 booleans
            low += nudge
        elif isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
            low = max(low, ex_low + nudge) if low is not None else ex_low + nudge
        if ex_high is True and high is not None:
            high -= nudge
        elif isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
            high = min(high, ex_high - nudge) if high is not None else ex_high - nudge
        if low is None:  # an open end: a range of about a hundred, from 0 where the bounds allow
            low = 0 if high is None or high >= 0 else high - 100
        if high is None:
            high = 100 if low < 100 else low + 100
        if low > high:
            raise SchemaError("the bounds leave no value")
        return low, high


def _decimals(step: float) -> int:
    text = repr(step)
    return len(text.split(".")[1]) if "." in text and "e" not in text else 10
