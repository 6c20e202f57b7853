"""Prompt caching, decided without I/O: where a call's stable prefix ends, how long it is, and what marks it.

Anthropic caches a prompt prefix only where a request marks it with `cache_control` (a *breakpoint*, at most four a
request), bills the first such request 1.25x the input rate for the prefix (a write) and later ones within five
minutes 0.1x (a read), and ignores a prefix shorter than the model's minimum. OpenAI caches every prompt of 1,024
tokens or more by itself; `prompt_cache_key` only steers calls with one prefix to one cache machine.

The stable prefix of a call is, in Anthropic's order, its tools and system prompt (*system*), then those plus every
turn but the last (*turns*). Each is a `Candidate`: its estimated length and a digest of the tenant, the model and
its bytes. The router marks a candidate only when it is at least the model's minimum and was seen before within
the cache's lifetime (`http/prompt_cache.py` counts digests in Redis), so the write is paid only where reads are
likely to follow. A request that carries any `cache_control` of its own is left as it is.

Token counts are estimated as the JSON bytes of the prefix over four: cheap, and close enough to choose between
"well above the minimum" and "below it" (a prefix near the minimum may be marked and not cached, which costs nothing).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import msgspec

Shape = Literal["chat", "messages"]
"""The body's shape: an OpenAI chat call (translated to Messages by the provider) or an Anthropic Messages call."""
Where = Literal["system", "turns"]

MAX_BREAKPOINTS = 4
"""Anthropic's limit of `cache_control` blocks in one request; the router marks at most two."""
CACHE_TTL_S = 300
"""Anthropic's default cache lifetime (refreshed by every read), the window in which a prefix counts as seen."""
OPENAI_MIN_TOKENS = 1024
"""OpenAI caches prompts of at least this many tokens."""
BYTES_PER_TOKEN = 4
MIN_BODY_BYTES = 1024 * BYTES_PER_TOKEN
"""A body shorter than this holds no prefix any provider caches (1,024 tokens is everyone's least): left unread."""
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
_OWN_MARK = b'"cache_control"'
_encoder = msgspec.json.Encoder(order="deterministic")
_MARKABLE = frozenset({"text", "image", "document", "tool_use", "tool_result", "search_result"})
"""Anthropic content blocks that take `cache_control` (thinking blocks do not)."""
_MIN_4096 = re.compile(r"opus-4[-.]5|haiku-4[-.]5")
_MIN_2048 = re.compile(r"haiku")


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix Anthropic caches for `model` (its docs): 4,096 tokens for Opus 4.5 and Haiku 4.5, 2,048
    for the Haiku 3 and 3.5 models, 1,024 for the others (Sonnet, Opus)."""
    name = model.lower()
    if _MIN_4096.search(name):
        return 4096
    if _MIN_2048.search(name):
        return 2048
    return 1024


def estimate_tokens(data: bytes) -> int:
    """A prefix's tokens, estimated as its bytes over four."""
    return len(data) // BYTES_PER_TOKEN


def has_own_breakpoints(body: bytes) -> bool:
    """Whether the caller marked anything itself (then the router leaves the request alone)."""
    return _OWN_MARK in body


class Candidate(msgspec.Struct, frozen=True):
    """A stable prefix the router may mark: which one, its estimated tokens, its digest (tenant, model, bytes)."""

    where: Where
    tokens: int
    digest: str


def _digest(tenant: str, model: str, data: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in (tenant.encode(), model.encode(), data):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") in ("system", "developer")


def _segments(obj: dict[str, Any], shape: Shape) -> tuple[list[Any], list[Any]]:
    """(the system part: tools and system prompt; the leading turns: every turn but the last)."""
    messages = obj.get("messages")
    messages = messages if isinstance(messages, list) else []
    tools = obj.get("tools") or []
    if shape == "chat":
        system = [m for m in messages if _is_system(m)]
        turns = [m for m in messages if not _is_system(m)]
    else:
        system = [obj["system"]] if obj.get("system") else []
        turns = messages
    return [tools, system], turns[:-1]


def candidates(obj: dict[str, Any], shape: Shape, tenant: str, model: str) -> list[Candidate]:
    """The prefixes of a call long enough for `model`'s cache and that a breakpoint can mark, shortest first."""
    system, leading = _segments(obj, shape)
    minimum = min_cacheable_tokens(model)
    out: list[Candidate] = []
    head = _encoder.encode(system)
    if (system[0] or system[1]) and _target(obj, shape, "system") is not None:
        tokens = estimate_tokens(head)
        if tokens >= minimum:
            out.append(Candidate("system", tokens, _digest(tenant, model, head)))
    if leading and _target(obj, shape, "turns") is not None:
        data = head + _encoder.encode(leading)
        tokens = estimate_tokens(data)
        if tokens >= minimum:
            out.append(Candidate("turns", tokens, _digest(tenant, model, data)))
    return out[:MAX_BREAKPOINTS]


def _last_block(content: Any, chat: bool) -> tuple[list[Any], int] | None:
    """(the content list, the index of its last block) where a breakpoint can go; None if it cannot."""
    if not isinstance(content, list) or not content:
        return None
    block = content[-1]
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if chat:
        return (content, len(content) - 1) if kind == "text" and block.get("text") else None
    return (content, len(content) - 1) if kind in _MARKABLE else None


def _markable_message(message: Any, chat: bool) -> bool:
    if not isinstance(message, dict):
        return False
    if chat and (message.get("role") not in ("user", "assistant", "system", "developer") or message.get("tool_calls")):
        return False  # a chat tool turn or tool-call turn becomes blocks the router does not mark
    content = message.get("content")
    return (isinstance(content, str) and bool(content)) or _last_block(content, chat) is not None


def _target(obj: dict[str, Any], shape: Shape, where: Where) -> tuple[str, Any] | None:
    """What a breakpoint at `where` marks: ("message", the message), ("system", the body) or ("tool", the tool)."""
    chat = shape == "chat"
    messages = obj.get("messages") if isinstance(obj.get("messages"), list) else []
    assert isinstance(messages, list)
    if where == "turns":
        turns = [m for m in messages if not (chat and _is_system(m))]
        if len(turns) < 2:
            return None
        return ("message", turns[-2]) if _markable_message(turns[-2], chat) else None
    if chat:
        system = [m for m in messages if _is_system(m)]
        if system:
            return ("message", system[-1]) if _markable_message(system[-1], chat) else None
    else:
        value = obj.get("system")
        if isinstance(value, str) and value:
            return ("system", obj)
        if value:
            return ("system", obj) if _last_block(value, chat) is not None else None
    tools = obj.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[-1], dict):
        return "tool", tools[-1]
    return None


def _mark_content(holder: dict[str, Any], field: str, chat: bool) -> None:
    content = holder[field]
    if isinstance(content, str):
        holder[field] = [{"type": "text", "text": content, "cache_control": dict(EPHEMERAL)}]
        return
    found = _last_block(content, chat)
    assert found is not None
    blocks, index = found
    blocks[index] = blocks[index] | {"cache_control": dict(EPHEMERAL)}


def mark(obj: dict[str, Any], shape: Shape, wheres: list[Where]) -> dict[str, Any]:
    """`obj` with a breakpoint at each of `wheres` (candidates the caller chose), changed in place."""
    chat = shape == "chat"
    for where in wheres[:MAX_BREAKPOINTS]:
        target = _target(obj, shape, where)
        if target is None:
            continue
        kind, holder = target
        if kind == "tool":
            holder["cache_control"] = dict(EPHEMERAL)
        elif kind == "system":
            _mark_content(holder, "system", chat)
        else:
            _mark_content(holder, "content", chat)
    return obj


def count_breakpoints(obj: Any) -> int:
    """How many `cache_control` marks a body carries, anywhere."""
    if isinstance(obj, dict):
        return int("cache_control" in obj) + sum(count_breakpoints(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(count_breakpoints(v) for v in obj)
    return 0


def openai_cache_key(obj: dict[str, Any], endpoint: str, tenant: str) -> str | None:
    """The `prompt_cache_key` for an OpenAI call that has none: a digest of the tenant and the call's stable prefix
    (tools, system and developer messages or `instructions`; with the leading turns when those alone are short),
    when that prefix is long enough to be cached; else None."""
    model = str(obj.get("model") or "")
    if endpoint == "/chat/completions":
        system, leading = _segments(obj, "chat")
        parts = [_encoder.encode(system), _encoder.encode(system) + _encoder.encode(leading)]
    elif endpoint == "/responses":
        items = obj.get("input") if isinstance(obj.get("input"), list) else []
        assert isinstance(items, list)
        head = [obj.get("tools") or [], obj.get("instructions") or "", [i for i in items if _is_system(i)]]
        parts = [_encoder.encode(head)]
    else:
        return None
    for data in parts:
        if estimate_tokens(data) >= OPENAI_MIN_TOKENS:
            return "hr-" + _digest(tenant, model, data)[:32]
    return None
