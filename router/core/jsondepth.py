"""How deep arrays and objects nest in a JSON body, bounded over the raw bytes before any decoder recurses.

msgspec (like every recursive decoder) raises RecursionError somewhere near Python's recursion limit, at a
depth that depends on the caller's own stack; this check makes the limit a setting and the answer a 400.
Every step is a C-speed pass over bytes (`translate`, `replace`, `count`, one regex), never a Python loop
per byte: `bench/RESULTS.md` has its cost on 1 MB bodies.
"""

from __future__ import annotations

import re

_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"\\[]{}')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone and only quotes and brackets are left
_RUN = re.compile(rb"\[+|\]+")
_OPEN = ord("[")


def too_deep(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in `body` nest more than `limit` levels deep (exact for valid JSON).

    Invalid JSON may be answered either way; its decoder refuses it next.
    """
    structure = body.translate(None, _NOT_STRUCTURE)
    if structure.count(b"[") + structure.count(b"{") <= limit:
        return False  # the common case: fewer opening brackets, even counting those inside strings, than the limit
    if b'\\"' in structure:  # a quote right after a backslash in `body` (or, rarely, a false alarm: both is fine)
        # Inside strings (the only place valid JSON has a backslash) `\\` and `\"` are the escapes that could hide
        # or fake a quote; dropping them leaves plain quotes around strings.
        structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    shape = structure.translate(_SQUARE, b"\\").replace(b'""', b"")
    if b'"' in shape:
        shape = _STRING.sub(b"", shape)  # strings that held brackets
    if shape.count(b"[") <= limit:
        return False
    return _height_exceeds(shape, limit)


def _height_exceeds(shape: bytes, limit: int) -> bool:
    """Whether a balanced `[`/`]` sequence nests more than `limit` deep.

    Each pass deletes every innermost `[]` pair, lowering the nesting by exactly one; that is cheap while it
    removes much. Once a pass removes little (few pairs, so few runs of brackets), walking the runs is cheaper.
    """
    for removed in range(limit):
        if b"[" * (limit - removed + 1) in shape:
            return True  # one long run, the shape of the usual attack (`[[[[...`), found without walking it
        lower = shape.replace(b"[]", b"")
        if not lower or len(lower) == len(shape):
            return False  # all gone within the limit, or not balanced (not JSON: the decoder says so)
        if (len(shape) - len(lower)) * 8 < len(shape):
            return _runs_exceed(lower, limit - removed - 1)
        shape = lower
    return True


def _runs_exceed(shape: bytes, limit: int) -> bool:
    """Whether the running depth of `shape` passes `limit`, walked one run of equal brackets at a time."""
    depth = 0
    for run in _RUN.findall(shape):
        if run[0] == _OPEN:
            depth += len(run)
            if depth > limit:
                return True
        else:
            depth -= len(run)
    return False
