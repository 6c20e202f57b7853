"""OpenAI chat completions ⇄ Anthropic Messages: requests, answers, errors, model lists and SSE (pure, no I/O)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

from router.core.errors import BadRequest
from router.core.schema import error_body

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires `max_tokens`; OpenAI callers may omit it."""


class _FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class _ToolCall(msgspec.Struct):
    id: str
    function: _FunctionCall


class _ImageURL(msgspec.Struct):
    url: str


class _File(msgspec.Struct):
    file_data: str | None = None


class _Part(msgspec.Struct):
    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: _ImageURL | None = None
    file: _File | None = None
    cache_control: dict[str, Any] | None = None  # a prompt-cache breakpoint, carried to the block it becomes


class _ChatMessage(msgspec.Struct):
    role: str
    content: str | list[_Part] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None


class _FunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(msgspec.Struct):
    type: str = "function"
    function: _FunctionDef | None = None
    cache_control: dict[str, Any] | None = None


class _Named(msgspec.Struct):
    name: str


class _NamedChoice(msgspec.Struct):
    function: _Named


class _JsonSchema(msgspec.Struct):
    schema: dict[str, Any] | None = None


class _ResponseFormat(msgspec.Struct):
    type: str
    json_schema: _JsonSchema | None = None


class _StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    """The fields of a chat request with an Anthropic meaning; others (logprobs, penalties, seed, user) are dropped."""

    model: str
    messages: list[_ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    tools: list[_Tool] | None = None
    tool_choice: str | _NamedChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _ResponseFormat | None = None
    thinking: dict[str, Any] | None = None
    functions: list[Any] | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream should end with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_json_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_DATA_URL = re.compile(r"data:(?P<media>[\w.+/-]+);base64,(?P<data>.*)", re.DOTALL)
_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def parse_chat(body: bytes) -> ChatRequest:
    """The chat request in `body`, or a 400 saying what is wrong with it."""
    try:
        return _chat_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("We could not parse the JSON body of your request.") from exc
    except RecursionError as exc:
        raise BadRequest("The JSON body of your request nests too deeply to be read.", code="json_too_deep") from exc


def to_params(req: ChatRequest) -> dict[str, Any]:
    """Anthropic Messages params for `req`, without `stream` (the caller adds it for real-time streams)."""
    if req.n not in (None, 1):
        raise BadRequest("Anthropic models answer one choice per call: `n` must be 1.", param="n", code="invalid_value")
    if req.functions is not None:
        raise BadRequest("`functions` is deprecated and not translated; use `tools`.", param="functions")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    system, messages = _turns(req.messages)
    params: dict[str, Any] = {
        "model": req.model,
        "max_tokens": DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
    }
    if system:
        params["system"] = system[0]["text"] if len(system) == 1 and "cache_control" not in system[0] else system
    params["messages"] = messages
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if stops := [s for s in stops if s.strip()]:  # Anthropic refuses whitespace-only stop sequences
        params["stop_sequences"] = stops
    if req.temperature is not None:
        params["temperature"] = min(req.temperature, 1.0)
    if req.top_p is not None:
        params["top_p"] = req.top_p
    if req.tools:
        params["tools"] = [_tool(tool, i) for i, tool in enumerate(req.tools)]
        if choice := _tool_choice(req.tool_choice, req.parallel_tool_calls):
            params["tool_choice"] = choice
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema and fmt.json_schema.schema is not None:
        params["output_config"] = {"format": {"type": "json_schema", "schema": fmt.json_schema.schema}}
    if req.thinking is not None:
        params["thinking"] = req.thinking
    return params


def _turns(messages: list[_ChatMessage]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, alternating turns); tool results join the user turn that follows the tool calls."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        content: str | list[dict[str, Any]]
        if message.role in ("system", "developer"):
            system += [b for b in _blocks(message.content, where) if b["type"] == "text" and b["text"]]
            continue
        if message.role == "user":
            role, content = "user", _content(message.content, where)
        elif message.role == "assistant":
            role, content = "assistant", _assistant(message, where)
        elif message.role == "tool":
            if not message.tool_call_id:
                raise BadRequest(f"Missing required parameter: '{where}.tool_call_id'.", param=f"{where}.tool_call_id")
            result = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            role, content = "user", [result | {"content": _content(message.content, where)}]
        else:
            raise BadRequest(f"Invalid value for '{where}.role': {message.role!r}.", param=f"{where}.role")
        if turns and turns[-1]["role"] == role:  # Anthropic wants alternating turns
            turns[-1]["content"] = _listed(turns[-1]["content"]) + _listed(content)
        else:
            turns.append({"role": role, "content": content})
    return system, turns


def _listed(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _content(content: str | list[_Part] | None, where: str) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else _blocks(content, where)


def _blocks(parts: str | list[_Part] | None, where: str) -> list[dict[str, Any]]:
    if parts is None:
        return []
    if isinstance(parts, str):
        return [{"type": "text", "text": parts}]
    marks = [{"cache_control": p.cache_control} if p.cache_control else {} for p in parts]
    return [_block(part, f"{where}.content[{j}]") | marks[j] for j, part in enumerate(parts)]


def _block(part: _Part, where: str) -> dict[str, Any]:
    if part.type in ("text", "refusal"):
        return {"type": "text", "text": part.text if part.type == "text" else part.refusal or ""}
    if part.type == "image_url" and part.image_url is not None:
        url = part.image_url.url
        if found := _DATA_URL.fullmatch(url):
            return {"type": "image", "source": {"type": "base64", "media_type": found["media"], "data": found["data"]}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    if part.type == "file" and part.file and part.file.file_data:
        found = _DATA_URL.fullmatch(part.file.file_data)
        if found and found["media"] == "application/pdf":
            return {
                "type": "document",
                "source": {"type": "base64", "media_type": found["media"], "data": found["data"]},
            }
    raise BadRequest(f"Content parts of type {part.type!r} are not supported by Anthropic models.", param=where)


def _assistant(message: _ChatMessage, where: str) -> str | list[dict[str, Any]]:
    if isinstance(message.content, str) and not message.tool_calls:
        return message.content
    blocks = [b for b in _blocks(message.content, where) if b.get("text")]  # empty text blocks are refused
    for j, call in enumerate(message.tool_calls or ()):
        try:
            arguments = _json_decoder.decode(call.function.arguments or "{}")
        except (msgspec.DecodeError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):
            param = f"{where}.tool_calls[{j}].function.arguments"
            raise BadRequest(f"Invalid value for '{param}': expected a JSON object.", param=param)
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return blocks


def _tool(tool: _Tool, i: int) -> dict[str, Any]:
    fn = tool.function
    if tool.type != "function" or fn is None:
        raise BadRequest(f"Tools of type {tool.type!r} are not supported by Anthropic models.", param=f"tools[{i}]")
    out: dict[str, Any] = {"name": fn.name}
    if fn.description is not None:
        out["description"] = fn.description
    out["input_schema"] = fn.parameters if fn.parameters is not None else {"type": "object", "properties": {}}
    if fn.strict:
        out["strict"] = True
    return out | ({"cache_control": tool.cache_control} if tool.cache_control else {})


def _tool_choice(choice: str | _NamedChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif isinstance(choice, str):
        if choice not in _CHOICES:
            raise BadRequest(f"Invalid value for 'tool_choice': {choice!r}.", param="tool_choice")
        out = {"type": _CHOICES[choice]}
    else:
        out = {"type": "tool", "name": choice.function.name}
    if parallel is False and (out is None or out["type"] != "none"):
        out = (out or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return out


class _NativeParams(msgspec.Struct):
    """What Anthropic refuses at once in a Messages request (the rest of it is theirs to judge)."""

    model: str
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    messages: Annotated[list[Any], msgspec.Meta(min_length=1)]


_params_decoder = msgspec.json.Decoder(_NativeParams)


def check_params(body: bytes) -> None:
    """A 400 for a Messages request Anthropic would refuse outright (missing `max_tokens`, no `messages`), so a
    deferred call is refused at admission rather than when its batch line errors."""
    try:
        _params_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid request body: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadRequest("We could not parse the JSON body of your request.") from exc
    except RecursionError as exc:
        raise BadRequest("The JSON body of your request nests too deeply to be read.", code="json_too_deep") from exc


# --- answers -------------------------------------------------------------------------------------------------


class Usage(msgspec.Struct):
    """Anthropic `usage`; every field optional because `message_delta` sends only what changed."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class Block(msgspec.Struct):
    """A content block of a Message (text, tool_use; others are skipped)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class Message(msgspec.Struct):
    """The Anthropic `Message` answer."""

    id: str = ""
    model: str = ""
    content: list[Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)


class _Function(msgspec.Struct):
    name: str
    arguments: str


class _OutToolCall(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: _Function


class _OutMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[_OutToolCall] | None = None


class _Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: _OutMessage
    logprobs: None = None
    finish_reason: str


class _Details(msgspec.Struct):
    cached_tokens: int


class OutUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _Details
    cache_creation_input_tokens: int = 0
    """Anthropic's cache writes (part of `prompt_tokens`), kept so they are priced at their own rate; omitted at 0."""


class _Completion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[_Choice]
    usage: OutUsage


FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
message_decoder = msgspec.json.Decoder(Message)


def out_usage(u: Usage) -> OutUsage:
    read = u.cache_read_input_tokens or 0
    prompt = (u.input_tokens or 0) + read + (u.cache_creation_input_tokens or 0)
    done = u.output_tokens or 0
    return OutUsage(prompt, done, prompt + done, _Details(read), u.cache_creation_input_tokens or 0)


def chat_completion(message: Message, created: int) -> bytes:
    """The OpenAI `ChatCompletion` for an Anthropic `Message`."""
    texts = [b.text for b in message.content if b.type == "text" and b.text is not None]
    calls = [
        _OutToolCall(id=b.id or "", function=_Function(b.name or "", _encoder.encode(b.input or {}).decode()))
        for b in message.content
        if b.type == "tool_use"
    ]
    out = _OutMessage("assistant", "".join(texts) if texts or not calls else None, calls or None)
    finish = FINISH_REASONS.get(message.stop_reason or "", "stop")
    choice = _Choice(message=out, finish_reason=finish)
    usage = out_usage(message.usage)
    return _encoder.encode(
        _Completion(id=message.id, created=created, model=message.model, choices=[choice], usage=usage)
    )


# --- errors ---------------------------------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct):
    """The inner object of an Anthropic error."""

    type: str = "api_error"
    message: str = ""


class ErrorEnvelope(msgspec.Struct):
    """`{"type": "error", "error": {"type", "message"}}`."""

    error: ErrorDetail


# Anthropic error type → (HTTP status, OpenAI error type, OpenAI code).
_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request_error": (400, "invalid_request_error", None),
    "authentication_error": (401, "invalid_request_error", "invalid_api_key"),
    "billing_error": (402, "insufficient_quota", "billing_error"),
    "permission_error": (403, "permission_error", None),
    "not_found_error": (404, "invalid_request_error", "not_found"),
    "request_too_large": (413, "invalid_request_error", "request_too_large"),
    "rate_limit_error": (429, "rate_limit_error", "rate_limit_exceeded"),
    "api_error": (500, "server_error", None),
    "timeout_error": (504, "server_error", "timeout"),
    "overloaded_error": (503, "server_error", "overloaded"),
}
_error_decoder = msgspec.json.Decoder(ErrorEnvelope)


def native_status(error_type: str) -> int:
    """The HTTP status Anthropic answers an error of this type with (529 when overloaded)."""
    return 529 if error_type == "overloaded_error" else _ERRORS.get(error_type, (500, "", None))[0]


def openai_status(status: int) -> int:
    """Anthropic's 529 "overloaded" is a 503 to OpenAI clients."""
    return 503 if status == 529 else status


def translate_error(error: ErrorDetail) -> tuple[int, bytes]:
    """(status, OpenAI error body) for an Anthropic error object."""
    status, kind, code = _ERRORS.get(error.type, (500, "server_error", error.type))
    return status, error_body(error.message or error.type, kind, None, code)


def error_answer(status: int, body: bytes) -> tuple[int, bytes]:
    """(status, body) of an Anthropic error answer in OpenAI's terms; a body of another shape is kept as is."""
    try:
        error = _error_decoder.decode(body).error
    except (msgspec.DecodeError, RecursionError):
        return openai_status(status), body
    return openai_status(status), translate_error(error)[1]


# --- model lists -----------------------------------------------------------------------------------


class Model(msgspec.Struct):
    """One of Anthropic's `ModelInfo`s, as far as the router reads it."""

    id: str
    created_at: datetime | None = None
    created: int | None = None  # OpenAI-shaped servers (the simulator) answer `created`


class ModelList(msgspec.Struct):
    """A page of `GET /v1/models`."""

    data: list[Model]


class OpenAIModel(msgspec.Struct, kw_only=True):
    """The same model in OpenAI's shape."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "anthropic"


model_decoder = msgspec.json.Decoder(Model)
models_decoder = msgspec.json.Decoder(ModelList)


def openai_model(model: Model) -> OpenAIModel:
    """An Anthropic model as OpenAI lists one."""
    created = int(model.created_at.timestamp()) if model.created_at else model.created or 0
    return OpenAIModel(id=model.id, created=created)
