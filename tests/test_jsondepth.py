"""The JSON depth bound: exact on valid JSON, whatever its strings hold, against a plain recursive count."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.jsondepth import too_deep


def depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


# Strings full of what could fool a scan: brackets, quotes, backslashes, escapes of all of them.
tricky_text = st.text(alphabet='[]{}"\\/ ,:abn\n\u00e9\u2028', max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=60,
)


@given(value=values, limit=st.integers(1, 12))
def test_exact_for_valid_json(value: Any, limit: int) -> None:
    expected = depth(value) > limit
    assert too_deep(msgspec.json.encode(value), limit) is expected
    assert too_deep(json.dumps(value, indent=1).encode(), limit) is expected
    assert too_deep(json.dumps(value, ensure_ascii=False).encode(), limit) is expected


def nest(levels: int, inner: Any = 0) -> Any:
    for i in range(levels):
        inner = [inner] if i % 2 else {"k": inner}
    return inner


@pytest.mark.parametrize(
    ("body", "limit", "expected"),
    [
        (b"[]", 1, False),
        (b"[[]]", 1, True),
        (b"{}", 64, False),
        (b"[" * 64 + b"]" * 64, 64, False),
        (b"[" * 65 + b"]" * 65, 64, True),
        (b"[" * 100_000 + b"]" * 100_000, 64, True),
        (b"[" * 100_000, 64, True),  # unbalanced, and deep: refused before the decoder sees it
        (b'["' + b"[" * 1000 + b'"]', 64, False),  # brackets inside a string
        (b'["\\"' + b"[" * 1000 + b'"]', 64, False),  # after an escaped quote, still inside the string
        (b'["\\\\"' + b",[" * 70 + b"]" * 70 + b"]", 64, True),  # an escaped backslash ends the string
        (msgspec.json.encode([nest(63)] * 50), 64, False),  # wide, 64 deep
        (msgspec.json.encode([nest(30)] * 5000 + [nest(64)]), 64, True),  # many shallow chains hide one deep one
        (msgspec.json.encode([[]] * 100_000), 64, False),
    ],
)
def test_cases(body: bytes, limit: int, expected: bool) -> None:
    assert too_deep(body, limit) is expected
