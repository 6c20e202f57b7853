"""Anthropic Messages request view and answer, shared by `POST /v1/messages` and Message Batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec

from router.simulator import catalog, structured, text
from router.simulator.errors import AnthropicError, describe_decode_error
from router.simulator.ids import new_id
from router.simulator.outcomes import Outcomes

_ENCODE = msgspec.json.Encoder()


class InputMessage(msgspec.Struct):
    """One turn of a Messages request."""

    role: Literal["user", "assistant"]
    content: str | list[Any]


class Tool(msgspec.Struct, omit_defaults=True):
    """One entry of `tools`; only custom tools (no `type`, or `custom`) are ever called."""

    name: str
    input_schema: dict[str, Any] | None = None
    type: str | None = None
    description: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(msgspec.Struct, omit_defaults=True):
    """`tool_choice`: `auto`, `any`, one named `tool`, or `none`."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class OutputFormat(msgspec.Struct):
    """`output_config.format`: JSON valid against a schema."""

    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(msgspec.Struct, omit_defaults=True):
    """`output_config`."""

    format: OutputFormat | None = None
    effort: str | None = None


class MessagesRequest(msgspec.Struct):
    """The fields of a Messages request the simulator reads."""

    model: str
    max_tokens: int
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    system: str | list[Any] | None = None
    stream: bool | None = False
    stop_sequences: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    speed: str | None = None


class TextBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="text"):
    """A `text` content block."""

    text: str


class ToolUseBlock(msgspec.Struct, kw_only=True, tag_field="type", tag="tool_use"):
    """A `tool_use` content block: the model calls a tool with `input` valid against its `input_schema`."""

    id: str
    name: str
    input: dict[str, Any]


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
    content: list[TextBlock | ToolUseBlock]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: Usage


class CountTokensRequest(msgspec.Struct):
    """The body of `POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""

    model: str
    messages: Annotated[list[InputMessage], msgspec.Meta(min_length=1)]
    system: str | list[Any] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None


class TokenCount(msgspec.Struct):
    """`MessageTokensCount`."""

    input_tokens: int


_MESSAGES = msgspec.json.Decoder(MessagesRequest)
_COUNT = msgspec.json.Decoder(CountTokensRequest)


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
    if req.tools:  # a breakpoint changes nothing of the prompt
        tools = [msgspec.structs.replace(t, cache_control=None) for t in req.tools]
        turns.insert(0, ("tools", _ENCODE.encode(tools).decode()))
    turns.extend((m.role, _block_text(m.content)) for m in req.messages)
    return text.Conversation(turns)


def _marked(content: Any) -> bool:
    return isinstance(content, list) and any(isinstance(b, dict) and "cache_control" in b for b in content)


def cache_prefixes(req: MessagesRequest, convo: text.Conversation) -> list[tuple[str, int]]:
    """The prefixes `req` marks with `cache_control` (whole turns: tools, system, a message), as (text, tokens)."""
    marks = [any(t.cache_control is not None for t in req.tools)] if req.tools else []
    marks += [_marked(req.system)] if req.system else []
    marks += [_marked(m.content) for m in req.messages]
    out: list[tuple[str, int]] = []
    chars = tokens = 0
    for (role, content), marked in zip(convo.turns, marks, strict=True):
        chars += len(role) + len(content) + 2
        tokens += text.MESSAGE_OVERHEAD_TOKENS + text.count_tokens(content)
        if marked:
            out.append((convo.text[:chars], tokens))
    return out


def check(req: MessagesRequest) -> None:
    """Raise the errors the real API gives for a bad model, `max_tokens` or `tool_choice`."""
    if not catalog.anthropic_model_exists(req.model):
        raise AnthropicError(404, "not_found_error", f"model: {req.model}")
    if req.max_tokens < 1:
        raise AnthropicError(400, "invalid_request_error", "max_tokens: Input should be greater than or equal to 1")
    choice = req.tool_choice
    if choice is not None and choice.type != "none" and not req.tools:
        raise AnthropicError(400, "invalid_request_error", "tool_choice may only be specified while providing tools.")
    if choice is not None and choice.type == "tool" and not any(t.name == choice.name for t in req.tools or ()):
        raise AnthropicError(400, "invalid_request_error", f"Tool '{choice.name}' not found in provided tools")


def count_tokens(raw: bytes) -> TokenCount:
    """The input tokens a Messages request with this body would report (the same count as its `usage`)."""
    try:
        req = _COUNT.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise invalid_params(exc) from exc
    if not catalog.anthropic_model_exists(req.model):
        raise AnthropicError(404, "not_found_error", f"model: {req.model}")
    full = MessagesRequest(model=req.model, max_tokens=1, messages=req.messages, system=req.system, tools=req.tools)
    return TokenCount(input_tokens=conversation(full).chat_prompt_tokens())


def _fresh_user_turn(req: MessagesRequest) -> bool:
    """Whether the last turn is the user's own (not tool results to answer, nor an assistant prefill to go on)."""
    last = req.messages[-1]
    if last.role != "user":
        return False
    results = isinstance(last.content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last.content
    )
    return not results


def _tools_to_call(req: MessagesRequest, convo: text.Conversation) -> list[Tool]:
    """The custom tools this turn calls (none unless `tool_choice` and the conversation call for it)."""
    custom = [t for t in req.tools or () if t.type in (None, "custom")]
    choice = req.tool_choice or ToolChoice(type="auto")
    if not custom or choice.type == "none" or (choice.type == "auto" and not _fresh_user_turn(req)):
        return []
    if choice.type == "tool":
        return [t for t in custom if t.name == choice.name][:1]
    by_name = {t.name: t for t in custom}
    parallel = not choice.disable_parallel_tool_use
    return [by_name[n] for n in structured.pick_tools(list(by_name), convo.last_user, parallel, convo.digest)]


def _tool_use(req: MessagesRequest, tool: Tool, salt: bytes) -> ToolUseBlock:
    try:
        value = structured.arguments(tool.input_schema, structured.seed(salt, tool.name))
    except structured.SchemaError as exc:
        at = next(i for i, t in enumerate(req.tools or ()) if t is tool)
        raise AnthropicError(400, "invalid_request_error", f"tools.{at}.custom.input_schema: {exc}") from exc
    return ToolUseBlock(id=new_id("toolu_"), name=tool.name, input=value)


def _reply(req: MessagesRequest, convo: text.Conversation) -> str:
    """The text answer: the reply, or JSON valid against `output_config.format`'s schema."""
    fmt = req.output_config.format if req.output_config is not None else None
    if fmt is None:
        return convo.reply()
    try:
        return structured.json_text(fmt.schema, structured.seed(convo.digest, "output_config"))
    except structured.SchemaError as exc:
        raise AnthropicError(400, "invalid_request_error", f"output_config.format.schema: {exc}") from exc


def message(
    req: MessagesRequest,
    service_tier: str = "standard",
    outcomes: Outcomes | None = None,
    cache: text.BreakpointCache | None = None,
) -> Message:
    """The deterministic answer: tool calls when the tools and `tool_choice` call for them, else text (JSON under
    `output_config.format`), cut at `max_tokens` or at the first stop sequence it contains. With `cache`, the
    prefixes it marks are read from or written to the prompt cache, and billed so in `usage`."""
    check(req)
    convo = conversation(req)
    if outcomes is not None:
        convo.recorded = outcomes.reply(req.model, convo.last_user)
    calls = _tools_to_call(req, convo)
    if calls:
        content, stop_reason, stop_sequence = _tool_content(req, convo, calls)
    else:
        content, stop_reason, stop_sequence = _text_content(req, convo)
    prompt = convo.chat_prompt_tokens()
    read, written = cache.bill(req.model, cache_prefixes(req, convo)) if cache is not None else (0, 0)
    return Message(
        id=new_id("msg_"),
        model=req.model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=Usage(
            input_tokens=prompt - read - written,
            output_tokens=sum(map(_block_tokens, content)),
            cache_creation_input_tokens=written,
            cache_read_input_tokens=read,
            service_tier=service_tier,
        ),
    )


def _block_tokens(block: TextBlock | ToolUseBlock) -> int:
    if isinstance(block, TextBlock):
        return text.count_tokens(block.text)
    return text.count_tokens(block.name) + text.count_tokens(_ENCODE.encode(block.input).decode())


def _tool_content(
    req: MessagesRequest, convo: text.Conversation, calls: list[Tool]
) -> tuple[list[TextBlock | ToolUseBlock], str, None]:
    """`tool_use` blocks, as many as fit in `max_tokens` (a call cut short is dropped, with `max_tokens`)."""
    blocks: list[TextBlock | ToolUseBlock] = []
    used = 0
    for tool in calls:
        block = _tool_use(req, tool, convo.digest)
        used += _block_tokens(block)
        if used > req.max_tokens:
            return blocks, "max_tokens", None
        blocks.append(block)
    return blocks, "tool_use", None


def _text_content(
    req: MessagesRequest, convo: text.Conversation
) -> tuple[list[TextBlock | ToolUseBlock], str, str | None]:
    reply, cut = text.clip_to_tokens(_reply(req, convo), req.max_tokens)
    stop_reason, stop_sequence = ("max_tokens" if cut else "end_turn"), None
    for sequence in req.stop_sequences or ():
        at = reply.find(sequence) if sequence else -1
        if at >= 0:
            reply, stop_reason, stop_sequence = reply[:at], "stop_sequence", sequence
            break
    return [TextBlock(text=reply)], stop_reason, stop_sequence


def stream_events(msg: Message) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documented SSE sequence for `msg`.

    message_start, then per content block content_block_start, content_block_delta (several: `text_delta` for text,
    `input_json_delta` for a tool's input) and content_block_stop, with a ping after the first start; message_delta,
    message_stop.
    """
    start = msgspec.structs.replace(
        msg, content=[], stop_reason=None, stop_sequence=None, usage=msgspec.structs.replace(msg.usage, output_tokens=1)
    )
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(msg.content):
        if isinstance(block, TextBlock):
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in text.split_for_stream(block.text)]
        else:
            opening = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            arguments = _ENCODE.encode(block.input).decode()
            step = max(1, -(-len(arguments) // 6))
            deltas = [
                {"type": "input_json_delta", "partial_json": arguments[i : i + step]}
                for i in range(0, len(arguments), step)
            ]
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}
        if index == 0:
            yield "ping", {"type": "ping"}
        for piece in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": piece}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    delta = {"stop_reason": msg.stop_reason, "stop_sequence": msg.stop_sequence}
    yield (
        "message_delta",
        {"type": "message_delta", "delta": delta, "usage": {"output_tokens": msg.usage.output_tokens}},
    )
    yield "message_stop", {"type": "message_stop"}
