"""The task of a call: the kind of work its evidence is kept under.

A named task comes, in this order, from the policy rule that matched, the `X-Router-Task` header, `metadata.task`
in the body, or the tenant (`tenant:<name>`). A call with none gets an automatic one from its prompt's features,
which need no downloaded weights: whether JSON or tools were asked for (`auto:json`, `auto:tools`, else
`auto:text`), and, when a route has embedding clusters (embeddings.py), the nearest cluster (`auto:text:c12`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

TASK_HEADER = "x-router-task"
_NAME_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,64}$")
EMBED_CHARS = 500
"""The prompt text embedded for a task-less call: its system text and last user message, cut to this length."""


def valid_task(name: str | None) -> str | None:
    """`name` stripped if it is a usable task name (1-64 of letters, digits and ._:/@+-), else None."""
    if name is None:
        return None
    name = name.strip()
    return name if _NAME_RE.match(name) else None


def resolve_task(
    *, rule: str | None = None, header: str | None = None, metadata: str | None = None, tenant: str | None = None
) -> str | None:
    """The call's named task: the first usable one of the policy rule's, the header's, the body's metadata's,
    and the tenant's; None when the call has none (its prompt then gives it an automatic one)."""
    for name in (rule, header, metadata):
        if (task := valid_task(name)) is not None:
            return task
    tenant_name = valid_task(tenant)
    return None if tenant_name is None else valid_task(f"tenant:{tenant_name}"[:64])


def metadata_task(body: Mapping[str, Any]) -> str | None:
    """`metadata.task` of a request body when it is a string."""
    metadata = body.get("metadata")
    task = metadata.get("task") if isinstance(metadata, Mapping) else None
    return task if isinstance(task, str) else None


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """What a call's body says about its kind of work without running a model."""

    text: str
    """The text to embed: system text and last user message, at most EMBED_CHARS characters."""
    chars: int
    """Characters of all the prompt's text."""
    json: bool
    """A JSON answer was asked for (`response_format` json_object / json_schema)."""
    tools: bool
    """Tools were offered."""

    @property
    def shape(self) -> str:
        """`json`, `tools` or `text`: calls of different shapes never share automatic evidence."""
        return "tools" if self.tools else "json" if self.json else "text"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return ""


def features(body: Mapping[str, Any]) -> Features:
    """The features of a chat completions (OpenAI) or messages (Anthropic) request body."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    system = [_text(body.get("system"))]
    last_user = ""
    total = len(system[0])
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        text = _text(message.get("content"))
        total += len(text)
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            last_user = text
    if not messages and isinstance(body.get("prompt"), str):  # legacy completions
        last_user = body["prompt"]
        total += len(last_user)
    head = "\n".join(s for s in system if s)[: EMBED_CHARS // 4]
    text = f"{head}\n{last_user}" if head else last_user
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    tools = body.get("tools") or body.get("functions")
    return Features(
        text=text[:EMBED_CHARS],
        chars=total,
        json=kind in ("json_object", "json_schema"),
        tools=bool(tools),
    )


def auto_task(feats: Features, cluster: int | None = None) -> str:
    """The automatic task of a call with no named one: its shape, and its nearest embedding cluster if any."""
    return f"auto:{feats.shape}" if cluster is None else f"auto:{feats.shape}:c{cluster}"


def prompt_of(prompt: str | list[Any]) -> dict[str, Any]:
    """A request body carrying `prompt` (a string, or a list of chat messages) as `routes learn` lines give it."""
    if isinstance(prompt, str):
        return {"messages": [{"role": "user", "content": prompt}]}
    return {"messages": prompt}
