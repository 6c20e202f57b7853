"""Replay a finished answer as the SSE events a streaming client expects: ChatCompletion and Completion chunks
(`data:` lines ending with `[DONE]`), the Responses API's typed events (`response.created` …
`response.completed`), or Anthropic's Messages events (`message_start` … `message_stop`); and a finished call's cost
as an SSE comment, as headers, or as the `"router"` object of its JSON body (`router_note`, `with_note`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from router.core.lanes import LEVERS, Origin, lever_split
from router.core.schema import anthropic_error_body, as_anthropic_error, error_body

if TYPE_CHECKING:
    from router.deferred.store.records import Result
    from router.telemetry.accounting import Priced

_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()
PIECE_CHARS = 64
_KEEP = ("id", "created", "model", "system_fingerprint", "service_tier")


UNREADABLE = (
    b"data: "
    + error_body(
        "The stored result of this call could not be read as a completion.", "upstream_error", None, "unreadable_result"
    )
    + b"\n\n"
)


ANTHROPIC = "/messages"
"""The endpoint whose callers speak Anthropic's dialect: its errors and streams take Anthropic's shapes."""


def _decoded(body: bytes) -> dict[str, Any] | None:
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):  # an upstream body nested deeper than msgspec follows from here
        return None


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def _named(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(obj) + b"\n\n"


def set_cost_headers(headers: dict[str, str], cost_usd: float, savings_usd: float) -> None:
    """`X-Router-Cost-USD` and `X-Router-Savings-USD`, precise enough to add up to the metrics."""
    headers["x-router-cost-usd"] = f"{cost_usd:.12f}"
    headers["x-router-savings-usd"] = f"{savings_usd:.12f}"


def cost_comment(cost_usd: float | None, savings_usd: float | None) -> bytes:
    """The SSE comment that carries a streamed call's cost, since its headers left before the usage was known."""
    if cost_usd is None:
        return b""
    return f": x-router-cost-usd={cost_usd:.12f} x-router-savings-usd={savings_usd or 0.0:.12f}\n\n".encode()


NO_USAGE = "no_usage"
"""Why an answer has no cost: its body reports no usage."""
NO_PRICE = "no_price"
"""Why an answer has no cost: its model (or its model at this price tier) has no price."""


class Figures(Protocol):
    """What a note says of a call's cost: a `Cost`, or a stored result's figures."""

    @property
    def actual_usd(self) -> float: ...
    @property
    def baseline_usd(self) -> float: ...
    @property
    def savings_usd(self) -> float: ...
    @property
    def route_usd(self) -> float: ...
    @property
    def prompt_cache_usd(self) -> float: ...


def router_note(*, origin: Origin, call_id: str, model: str, cost: Figures | None, unpriced: str = NO_PRICE) -> bytes:
    """The `"router"` object an answer body carries: its lane, cost, savings (by lever) and call id, the same
    figures as the headers and the metrics. Unpriced: the cost fields are null and `unpriced` says why."""
    note: dict[str, Any] = {"lane": origin.lane.value, "call_id": call_id, "model": model}
    if cost is None:
        note |= {"cost_usd": None, "baseline_usd": None, "savings_usd": None, "savings_by_lever": None}
        note["unpriced"] = unpriced
    else:
        by_lever = dict.fromkeys(LEVERS, 0.0) | lever_split(
            origin, cost.savings_usd, cost.route_usd, cost.prompt_cache_usd
        )
        note |= {"cost_usd": cost.actual_usd, "baseline_usd": cost.baseline_usd, "savings_usd": cost.savings_usd,
                 "savings_by_lever": by_lever}  # fmt: skip
    if origin is Origin.ESCALATED:
        note["escalated"] = True
    if origin is Origin.CACHE:
        note["cache"] = "hit"
    return _encoder.encode(note)


def priced_note(*, origin: Origin, call_id: str, model: str, priced: Priced) -> bytes:
    """`router_note` for a call just priced."""
    reason = NO_USAGE if priced.usage is None else NO_PRICE
    return router_note(origin=origin, call_id=call_id, model=model, cost=priced.cost, unpriced=reason)


class _StoredCost(msgspec.Struct, frozen=True):
    """A stored result's `Figures`."""

    actual_usd: float
    baseline_usd: float
    savings_usd: float
    route_usd: float
    prompt_cache_usd: float


class _Usage(msgspec.Struct):
    usage: dict[str, Any] | None = None


_usage_decoder = msgspec.json.Decoder(_Usage)


def _reports_usage(body: bytes) -> bool:
    try:
        return bool(_usage_decoder.decode(body).usage)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return False


def result_note(call_id: str, model: str, result: Result) -> bytes:
    """`router_note` for a stored result of a deferred call."""
    if result.cost_usd is not None:
        cost = _StoredCost(result.cost_usd, result.baseline_usd or 0.0, result.savings_usd or 0.0, result.route_usd,
                           result.prompt_cache_usd)  # fmt: skip
        return router_note(origin=result.origin, call_id=call_id, model=model, cost=cost)
    reason = NO_PRICE if _reports_usage(result.body) else NO_USAGE
    return router_note(origin=result.origin, call_id=call_id, model=model, cost=None, unpriced=reason)


_WHITESPACE = b" \t\r\n"


def with_note(body: bytes, note: bytes) -> bytes:
    """`body` (a JSON object) with `"router": note` as its last member, spliced in without decoding the body: a
    large answer is not re-encoded. A body that is not an object is returned as it is."""
    end = len(body)
    while end and body[end - 1] in _WHITESPACE:
        end -= 1
    start = 0
    while start < end and body[start] in _WHITESPACE:
        start += 1
    if end - start < 2 or body[start] != 0x7B or body[end - 1] != 0x7D:  # { ... }
        return body
    first = start + 1
    while first < end - 1 and body[first] in _WHITESPACE:
        first += 1
    comma = b"" if first == end - 1 else b","
    return body[: end - 1] + comma + b'"router":' + note + body[end - 1 :]


def _pieces(text: str) -> list[str]:
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


def _text_choice(index: int, text: str, finish_reason: str | None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}


def _delta(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return choice


def _content_pieces(message: dict[str, Any], logprobs: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The content in pieces, each with its tokens' logprobs when the answer has them (whole tokens per piece,
    as OpenAI streams them)."""
    content = message.get("content") or ""
    tokens = (logprobs or {}).get("content")
    if not tokens or "".join(t.get("token", "") for t in tokens) != content:
        return [(piece, None) for piece in _pieces(content)] if content else []
    out: list[tuple[str, Any]] = []
    for start in range(0, len(tokens), 16):
        group = tokens[start : start + 16]
        out.append(("".join(t["token"] for t in group), {"content": group, "refusal": None}))
    return out


def sse_chunks(endpoint: str, body: bytes, *, include_usage: bool, cost: bytes = b"") -> Iterator[bytes]:
    """The events for a finished `/chat/completions`, `/completions`, `/responses` or `/messages` body; `cost`
    (an SSE comment) follows the usage chunk (for `/messages`, the `message_delta` event), or the final event."""
    if endpoint == "/responses":
        yield from response_events(body)
        yield cost
        return
    if endpoint == ANTHROPIC:
        yield from message_events(body, cost)
        return
    done = _decoded(body)
    if done is None:
        yield UNREADABLE
        return
    base: dict[str, Any] = {k: done[k] for k in _KEEP if k in done}
    if endpoint == "/chat/completions":
        base["object"] = "chat.completion.chunk"
        for choice in done.get("choices", []):
            index, message = choice.get("index", 0), choice.get("message") or {}
            first: dict[str, Any] = {"role": message.get("role", "assistant"), "content": ""}
            if message.get("refusal") is not None:
                first["refusal"] = message["refusal"]
            yield _event(base | {"choices": [_delta(index, first)]})
            for piece, logprobs in _content_pieces(message, choice.get("logprobs")):
                yield _event(base | {"choices": [_delta(index, {"content": piece}, logprobs=logprobs)]})
            if message.get("tool_calls"):
                calls = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
                yield _event(base | {"choices": [_delta(index, {"tool_calls": calls})]})
            yield _event(base | {"choices": [_delta(index, {}, choice.get("finish_reason"))]})
    else:
        base["object"] = "text_completion"
        for choice in done.get("choices", []):
            index = choice.get("index", 0)
            for piece in _pieces(choice.get("text") or ""):
                yield _event(base | {"choices": [_text_choice(index, piece, None)]})
            yield _event(
                base | {"choices": [_text_choice(index, "", choice.get("finish_reason"), choice.get("logprobs"))]}
            )
    if include_usage and done.get("usage") is not None:
        yield _event(base | {"choices": [], "usage": done["usage"]})
    yield cost
    yield b"data: [DONE]\n\n"


def response_events(body: bytes) -> Iterator[bytes]:
    """A finished Response as its event stream, numbered by `sequence_number`: each output item is added, its
    text or arguments streamed in pieces, and done; then `response.completed` (or `.incomplete`/`.failed`)."""
    done = _decoded(body)
    if done is None:
        yield UNREADABLE
        return
    seq = iter(range(1 << 30))
    pending = done | {"status": "in_progress", "output": [], "usage": None}
    if "completed_at" in done:
        pending["completed_at"] = None
    for name in ("response.created", "response.in_progress"):
        yield _named(name, {"type": name, "response": pending, "sequence_number": next(seq)})
    for index, item in enumerate(done.get("output") or []):
        yield from _item_events(index, item, seq)
    status = done.get("status")
    final = {"incomplete": "response.incomplete", "failed": "response.failed"}.get(status or "", "response.completed")
    yield _named(final, {"type": final, "response": done, "sequence_number": next(seq)})


def _item_events(index: int, item: dict[str, Any], seq: Iterator[int]) -> Iterator[bytes]:
    kind = item.get("type")
    item_id = item.get("id", "")
    if kind == "message":
        opened = item | {"status": "in_progress", "content": []}
        yield _named("response.output_item.added", _item("response.output_item.added", index, opened, seq))
        for part_index, part in enumerate(item.get("content") or []):
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            if part.get("type") == "output_text":
                empty = part | {"text": "", "annotations": []}
                yield _named("response.content_part.added", _part("response.content_part.added", where, empty, seq))
                for piece in _pieces(part.get("text") or ""):
                    delta = {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
                    yield _named("response.output_text.delta", delta | {"sequence_number": next(seq)})
                text_done = {"type": "response.output_text.done", **where, "text": part.get("text") or ""}
                text_done |= {"logprobs": part.get("logprobs") or [], "sequence_number": next(seq)}
                yield _named("response.output_text.done", text_done)
            else:
                yield _named("response.content_part.added", _part("response.content_part.added", where, part, seq))
            yield _named("response.content_part.done", _part("response.content_part.done", where, part, seq))
    elif kind == "function_call":
        opened = item | {"status": "in_progress", "arguments": ""}
        yield _named("response.output_item.added", _item("response.output_item.added", index, opened, seq))
        where = {"item_id": item_id, "output_index": index}
        for piece in _pieces(item.get("arguments") or ""):
            delta = {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            yield _named("response.function_call_arguments.delta", delta | {"sequence_number": next(seq)})
        args_done = {"type": "response.function_call_arguments.done", **where, "arguments": item.get("arguments")}
        yield _named("response.function_call_arguments.done", args_done | {"sequence_number": next(seq)})
    else:
        yield _named("response.output_item.added", _item("response.output_item.added", index, item, seq))
    yield _named("response.output_item.done", _item("response.output_item.done", index, item, seq))


def _item(name: str, index: int, item: dict[str, Any], seq: Iterator[int]) -> dict[str, Any]:
    return {"type": name, "output_index": index, "item": item, "sequence_number": next(seq)}


def _part(name: str, where: dict[str, Any], part: dict[str, Any], seq: Iterator[int]) -> dict[str, Any]:
    return {"type": name, **where, "part": part, "sequence_number": next(seq)}


def error_answer(endpoint: str, status: int, body: bytes) -> bytes:
    """An error body in the dialect of the endpoint's callers (stored errors are OpenAI-shaped when the router
    itself wrote them)."""
    return as_anthropic_error(status, body) if endpoint == ANTHROPIC else body


def error_event(endpoint: str, status: int, body: bytes) -> bytes:
    """An error as the event that ends a stream: Anthropic's `error` event, or OpenAI's `data:` error object
    (the SDKs raise on either)."""
    if endpoint == ANTHROPIC:
        return b"event: error\ndata: " + as_anthropic_error(status, body) + b"\n\n"
    return b"data: " + body + b"\n\n"


def message_events(body: bytes, cost: bytes = b"") -> Iterator[bytes]:
    """A finished Anthropic `Message` as its event stream: `message_start` (no content yet), each content block
    started, streamed in deltas where Anthropic streams it (text, tool input, thinking) and stopped, then
    `message_delta` with the stop reason and the final usage, `cost`, and `message_stop`."""
    done = _decoded(body)
    if done is None:
        yield error_event(ANTHROPIC, 500, anthropic_error_body(500, "The stored result could not be read."))
        return
    found = done.get("usage")
    usage: dict[str, Any] = found if isinstance(found, dict) else {}
    opened = done | {"content": [], "stop_reason": None, "stop_sequence": None, "usage": usage | {"output_tokens": 0}}
    if "stop_details" in done:
        opened["stop_details"] = None
    yield _named("message_start", {"type": "message_start", "message": opened})
    for index, block in enumerate(done.get("content") or []):
        if isinstance(block, dict):
            yield from _block_events(index, block)
    delta = {"stop_reason": done.get("stop_reason"), "stop_sequence": done.get("stop_sequence")}
    delta |= {k: done[k] for k in ("stop_details", "container") if k in done}
    yield _named("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    yield cost
    yield _named("message_stop", {"type": "message_stop"})


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    opened = block
    if kind == "text":
        opened = block | {"text": ""} | ({"citations": None} if "citations" in block else {})
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block.get("text") or "")]
        deltas += [{"type": "citations_delta", "citation": c} for c in block.get("citations") or []]
    elif kind in ("tool_use", "server_tool_use"):  # the kinds whose input the SDKs assemble from deltas
        opened = block | {"input": {}}
        arguments = _encoder.encode(block.get("input") or {}).decode()
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _pieces(arguments)]
    elif kind == "thinking":
        opened = block | {"thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(block.get("thinking") or "")]
        deltas.append({"type": "signature_delta", "signature": block.get("signature") or ""})
    yield _named("content_block_start", {"type": "content_block_start", "index": index, "content_block": opened})
    for delta in deltas:
        yield _named("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
    yield _named("content_block_stop", {"type": "content_block_stop", "index": index})
