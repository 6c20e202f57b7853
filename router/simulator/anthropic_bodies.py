"""Anthropic Messages request view and answer, shared by `POST /v1/messages` and Message Batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec

from router.simulator import catalog, text
from router.simulator.errors import AnthropicError, describe_decode_error
from router.simulator.ids import new_id

_ENCODE = msgspec.json.Encoder()


class InputMessage(msgspec.Struct):
    """One turn of a Messages request."""

    role: Literal["user", "assistant"]
    content: str | list[Any]


class MessagesRequest(msgspec.Struct):
    """The fields of a Messages request the simulator reads."""

    model: str
    max_tokens: int
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    system: str | list[Any] | None = None
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    tools: list[Any] | None = None
    speed: str | None = None


class TextBlock(msgspec.Struct, kw_only=True):
    """A `text` content block."""

    type: str = "text"
    text: str


class Usage(msgspec.Struct, kw_only=True):
    """Anthropic `Usage`; `service_tier` is `batch` for Message Batch results."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    service_tier: str = "standard"


class Message(msgspec.Struct, kw_only=True):
    """The Anthropic `Message` answer."""

    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[TextBlock]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: Usage


_MESSAGES = msgspec.json.Decoder(MessagesRequest)


def decode_messages(raw: bytes) -> MessagesRequest:
    """The Messages request in `raw`, or Anthropic's 400 `invalid_request_error`."""
    try:
        return _MESSAGES.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise invalid_params(exc) from exc


def decode_params(params: msgspec.Raw) -> MessagesRequest:
    """A batch request's `params` (kept raw until the request is processed)."""
    return decode_messages(bytes(params))


def invalid_params(exc: msgspec.DecodeError | RecursionError) -> AnthropicError:
    """Anthropic's 400 for a body msgspec could not decode, worded like the real API (`field: Field required`)."""
    message, param, code = describe_decode_error(exc)
    if code == "missing_required_parameter":
        message = f"{param}: Field required"
    elif param is not None:
        message = f"{param}: {message}"
    elif code is None:
        message = "There was an error parsing the body of your request: invalid JSON"
    return AnthropicError(400, "invalid_request_error", message)


def _block_text(content: str | list[Any] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    pieces = []
    for block in content:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            pieces.append(block["text"])
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            pieces.append(_block_text(block.get("content")))
        else:  # tool_use, images, documents: their JSON stands in for the text
            pieces.append(_ENCODE.encode(block).decode())
    return "\n".join(pieces)


def conversation(req: MessagesRequest) -> text.Conversation:
    """The turns the answer is derived from; `system` comes first, as an OpenAI system message would."""
    turns = [("system", _block_text(req.system))] if req.system else []
    if req.tools:
        turns.insert(0, ("tools", _ENCODE.encode(req.tools).decode()))
    turns.extend((m.role, _block_text(m.content)) for m in req.messages)
    return text.Conversation(turns)


def check(req: MessagesRequest) -> None:
    """Raise the errors the real API gives for a bad model or `max_tokens`."""
    if not catalog.anthropic_model_exists(req.model):
        raise AnthropicError(404, "not_found_error", f"model: {req.model}")
    if req.max_tokens < 1:
        raise AnthropicError(400, "invalid_request_error", "max_tokens: Input should be greater than or equal to 1")


def message(req: MessagesRequest, service_tier: str = "standard") -> Message:
    """The deterministic answer: cut at `max_tokens` or at the first stop sequence it contains."""
    check(req)
    convo = conversation(req)
    reply, cut = text.clip_to_tokens(convo.reply(), req.max_tokens)
    stop_reason, stop_sequence = ("max_tokens" if cut else "end_turn"), None
    for sequence in req.stop_sequences or ():
        at = reply.find(sequence) if sequence else -1
        if at >= 0:
            reply, stop_reason, stop_sequence = reply[:at], "stop_sequence", sequence
            break
    return Message(
        id=new_id("msg_"),
        model=req.model,
        content=[TextBlock(text=reply)],
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=Usage(
            input_tokens=convo.chat_prompt_tokens(),
            output_tokens=text.count_tokens(reply),
            service_tier=service_tier,
        ),
    )


def stream_events(msg: Message) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documented SSE sequence for `msg`.

    message_start, content_block_start, ping, content_block_delta (several), content_block_stop, message_delta,
    message_stop.
    """
    start = msgspec.structs.replace(
        msg, content=[], stop_reason=None, stop_sequence=None, usage=msgspec.structs.replace(msg.usage, output_tokens=1)
    )
    yield "message_start", {"type": "message_start", "message": start}
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    yield "ping", {"type": "ping"}
    for piece in text.split_for_stream(msg.content[0].text):
        yield (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
        )
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    delta = {"stop_reason": msg.stop_reason, "stop_sequence": msg.stop_sequence}
    yield (
        "message_delta",
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": msg.usage.output_tokens}},
    )
    yield "message_stop", {"type": "message_stop"}
