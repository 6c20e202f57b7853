"""What a chat completion asks beyond its messages: tools and `tool_choice`, `response_format` (strict schemas
included), `logprobs`; the checks OpenAI makes of them and the content they lead to."""

from __future__ import annotations

from typing import Any

import msgspec

from router.simulator import logprobs, structured, text
from router.simulator.errors import OpenAIError
from router.simulator.ids import new_id
from router.simulator.openai_types import ChatRequest, FunctionCall, FunctionDefinition, ToolCall

_ENCODE = msgspec.json.Encoder()


def part_text(content: str | list[Any] | None) -> str:
    """The text of a message's content: a string, or the text parts of a list (other parts as placeholders)."""
    if content is None or isinstance(content, str):
        return content or ""
    pieces = []
    for part in content:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif isinstance(part, str):
            pieces.append(part)
        else:
            kind = part.get("type", "part") if isinstance(part, dict) else "part"
            pieces.append(f"[{kind}]")
    return "\n".join(pieces)


def top_logprobs(req: ChatRequest) -> int | None:
    """How many likeliest tokens to report at each position, or None when `logprobs` is off."""
    top = req.top_logprobs
    if top is not None:
        if not 0 <= top <= logprobs.MAX_TOP_CHAT:
            raise OpenAIError(
                400,
                f"Invalid 'top_logprobs': must be between 0 and {logprobs.MAX_TOP_CHAT}, got {top}.",
                param="top_logprobs",
                code="invalid_value",
            )
        if not req.logprobs:
            raise OpenAIError(
                400,
                "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                param="top_logprobs",
                code="invalid_value",
            )
    return (top or 0) if req.logprobs else None


def _bad_tool_choice(message: str) -> OpenAIError:
    return OpenAIError(400, f"Invalid value for 'tool_choice': {message}", param="tool_choice", code="invalid_value")


def tool_choice(req: ChatRequest) -> tuple[str, list[FunctionDefinition]]:
    """The tool mode in force (`none`, `auto`, `required` or `named`) and the functions it may call."""
    functions = [t.function for t in req.tools or [] if t.type == "function" and t.function is not None]
    choice = req.tool_choice
    if choice is None:
        return ("auto" if functions else "none"), functions
    if not req.tools:
        raise _bad_tool_choice("'tool_choice' is only allowed when 'tools' are specified.")
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad_tool_choice(f"{choice!r} is not one of 'none', 'auto', 'required'.")
        return choice, functions
    kind = choice.get("type")
    if kind == "function":
        name = (choice.get("function") or {}).get("name")
        named = [f for f in functions if f.name == name]
        if not named:
            raise _bad_tool_choice(f"no function named {name!r} is specified in 'tools'.")
        return "named", named
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {(t.get("function") or {}).get("name") for t in allowed.get("tools") or [] if isinstance(t, dict)}
        if allowed.get("mode") not in ("auto", "required"):
            raise _bad_tool_choice("'allowed_tools.mode' must be 'auto' or 'required'.")
        return str(allowed["mode"]), [f for f in functions if f.name in names]
    raise _bad_tool_choice(f"a tool choice of type {kind!r} is not simulated.")


def check_strict(req: ChatRequest) -> None:
    """Raise OpenAI's 400 for a `strict` response format or function whose schema strict mode cannot take."""
    for at, tool in enumerate(req.tools or ()):
        function = tool.function
        if function is not None and function.strict and (problem := structured.strict_problem(function.parameters)):
            raise OpenAIError(
                400,
                f"Invalid schema for function '{function.name}': {problem}",
                param=f"tools[{at}].function.parameters",
                code="invalid_function_parameters",
            )
    fmt = req.response_format
    spec = fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None
    if spec is not None and spec.strict and (problem := structured.strict_problem(spec.schema)):
        raise OpenAIError(400, f"Invalid schema for response_format '{spec.name}': {problem}", param="response_format")


def check_format(req: ChatRequest) -> None:
    """Raise the 400s OpenAI gives for a `response_format` it cannot use."""
    fmt = req.response_format
    if fmt is None:
        return
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise OpenAIError(
            400,
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
            code="missing_required_parameter",
        )
    if fmt.type == "json_object" and not any("json" in part_text(m.content).lower() for m in req.messages):
        raise OpenAIError(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
            param="messages",
        )


def content(req: ChatRequest, convo: text.Conversation, index: int, salt: bytes) -> str:
    """The answer's text: the reply, or JSON when `response_format` asks for it (valid against its schema)."""
    fmt = req.response_format
    prompt = "\n".join(content for role, content in convo.turns if role in ("system", "user"))
    if fmt is None or fmt.type == "text":
        return structured.text_answer(prompt, convo.last_user, convo.reply(index), salt)
    if fmt.type == "json_object":
        return structured.json_answer(prompt, convo.reply(index), salt)
    assert fmt.json_schema is not None  # check_format
    try:
        return structured.json_text(fmt.json_schema.schema, salt)
    except structured.SchemaError as exc:
        raise OpenAIError(
            400,
            f"Invalid schema for response_format '{fmt.json_schema.name}': {exc}.",
            param="response_format",
            code="invalid_value",
        ) from exc


def tool_calls(
    req: ChatRequest, functions: list[FunctionDefinition], convo: text.Conversation, salt: bytes, limit: int | None
) -> tuple[list[ToolCall], int, bool]:
    """The calls one choice makes, their token count, and whether `limit` cut their arguments short."""
    by_name = {f.name: f for f in functions}
    names = structured.pick_tools(list(by_name), convo.last_user, req.parallel_tool_calls is not False, salt)
    calls, tokens, cut = [], 0, False
    for name in names:
        try:
            args = _ENCODE.encode(structured.arguments(by_name[name].parameters, structured.seed(salt, name))).decode()
        except structured.SchemaError as exc:
            at = next(i for i, t in enumerate(req.tools or []) if t.function is by_name[name])
            raise OpenAIError(
                400,
                f"Invalid schema for function '{name}': {exc}.",
                param=f"tools[{at}].function.parameters",
                code="invalid_value",
            ) from exc
        budget = None if limit is None else max(0, limit - tokens - text.count_tokens(name))
        args, clipped = text.clip_to_tokens(args, budget)
        calls.append(ToolCall(id=new_id("call_"), function=FunctionCall(name=name, arguments=args)))
        tokens += text.count_tokens(name) + text.count_tokens(args)
        if clipped:
            cut = True
            break
    return calls, tokens, cut
