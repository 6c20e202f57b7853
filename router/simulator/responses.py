"""The Responses API's answers: text, JSON under `text.format`, and calls of the request's function tools.

One pure function per request, shared by real time and batch, as `openai_bodies` does for the other endpoints.
A function tool is called as chat's are (`tool_choice` `auto`, `required`, one named function, or an allowed
subset); `auto` answers in text once the last input item is a tool's output, which ends an agent's tool loop.
Hosted tools (`web_search`, `file_search`, ...) are echoed and never called.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from router.simulator import openai_tools as tools
from router.simulator import structured, text
from router.simulator.errors import OpenAIError
from router.simulator.ids import new_id
from router.simulator.openai_checks import check_model, decode_with, service_tier
from router.simulator.openai_types import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
)
from router.simulator.outcomes import Outcomes

_DECODER = msgspec.json.Decoder(ResponsesRequest)
_ENCODE = msgspec.json.Encoder()


def decode(raw: bytes) -> ResponsesRequest:
    """The Responses request in `raw`, or a 400 in OpenAI's shape."""
    return decode_with(_DECODER, raw)


def conversation(req: ResponsesRequest) -> text.Conversation:
    """The turns of a Responses request: its tools, `instructions`, then `input` (a string or a list of items)."""
    turns: list[tuple[str, str]] = []
    if req.tools:
        turns.append(("tools", _ENCODE.encode(req.tools).decode()))
    if req.instructions:
        turns.append(("system", req.instructions))
    if isinstance(req.input, str):
        turns.append(("user", req.input))
    elif req.input is not None:
        for item in req.input:
            if not isinstance(item, dict):
                raise OpenAIError(400, "Invalid 'input': items must be objects.", param="input", code="invalid_type")
            role = item.get("role")
            if isinstance(role, str):
                turns.append((role, tools.part_text(item.get("content"))))
            else:  # tool calls, tool outputs, reasoning items: their JSON is the text
                turns.append(("tool", _ENCODE.encode(item).decode()))
    if not any(role != "tools" for role, _ in turns):
        raise OpenAIError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    return text.Conversation(turns)


def _prompt(convo: text.Conversation) -> str:
    """What the caller wrote (system and user turns): where a library spells out the schema it wants."""
    return "\n".join(content for role, content in convo.turns if role in ("system", "user"))


def _text(req: ResponsesRequest, convo: text.Conversation) -> str:
    """The output text: the reply, or JSON when `text.format` asks for it (valid against its schema)."""
    fmt = req.text.format if req.text is not None else {}
    kind = fmt.get("type", "text")
    salt = structured.seed(convo.digest, "text.format")
    if kind == "json_object":
        return structured.json_answer(_prompt(convo), convo.reply(), salt)
    if kind != "json_schema":
        return structured.text_answer(_prompt(convo), convo.last_user, convo.reply(), salt)
    schema, name = fmt.get("schema"), fmt.get("name")
    if not isinstance(schema, dict):
        problem: str | None = "'schema' must be an object."
    else:
        problem = structured.strict_problem(schema) if fmt.get("strict") else None
        if problem is None:
            try:
                return structured.json_text(schema, salt)
            except structured.SchemaError as exc:
                problem = f"{exc}."
    raise OpenAIError(400, f"Invalid schema for response_format '{name}': {problem}", param="text.format.schema")


def _bad_tool_choice(message: str) -> OpenAIError:
    return OpenAIError(400, f"Invalid value for 'tool_choice': {message}", param="tool_choice", code="invalid_value")


def _functions(req: ResponsesRequest) -> dict[str, dict[str, Any]]:
    """The request's function tools by name, checked as the API checks them (a name; a strict schema)."""
    functions: dict[str, dict[str, Any]] = {}
    for at, tool in enumerate(req.tools or ()):
        if tool.get("type") != "function":
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise OpenAIError(400, f"Missing required parameter: 'tools[{at}].name'.", param=f"tools[{at}].name")
        parameters = tool.get("parameters")
        if tool.get("strict") and (problem := structured.strict_problem(parameters)):
            raise OpenAIError(
                400,
                f"Invalid schema for function '{name}': {problem}",
                param=f"tools[{at}].parameters",
                code="invalid_function_parameters",
            )
        functions[name] = tool
    return functions


def _choice(req: ResponsesRequest, functions: dict[str, dict[str, Any]]) -> tuple[str, list[str]]:
    """The tool mode in force (`none`, `auto`, `required`) and the names of the functions it may call."""
    choice = req.tool_choice
    names = list(functions)
    if choice is None:
        return ("auto" if names else "none"), names
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _bad_tool_choice(f"{choice!r} is not one of 'none', 'auto', 'required'.")
        if choice == "required" and not req.tools:
            raise _bad_tool_choice("'required' needs at least one tool in 'tools'.")
        return choice, names
    kind = choice.get("type")
    if kind == "function":
        name = choice.get("name")
        if name not in functions:
            raise _bad_tool_choice(f"no function named {name!r} is specified in 'tools'.")
        return "required", [name]
    if kind == "allowed_tools":
        allowed = {t.get("name") for t in choice.get("tools") or [] if isinstance(t, dict)}
        mode = choice.get("mode")
        if mode not in ("auto", "required"):
            raise _bad_tool_choice("'mode' must be 'auto' or 'required'.")
        return str(mode), [n for n in names if n in allowed]
    if any(t.get("type") == kind for t in req.tools or ()):  # a hosted tool: the simulator never calls one
        return "none", []
    raise _bad_tool_choice(f"a tool choice of type {kind!r} needs that tool in 'tools'.")


def _calls(
    req: ResponsesRequest, functions: dict[str, dict[str, Any]], names: list[str], convo: text.Conversation
) -> tuple[list[FunctionCallItem], int, bool]:
    """The function calls of the answer, their token count, and whether `max_output_tokens` cut them short."""
    picked = structured.pick_tools(names, convo.last_user, req.parallel_tool_calls is not False, convo.digest)
    calls: list[FunctionCallItem] = []
    tokens, cut, limit = 0, False, req.max_output_tokens
    for name in picked:
        try:
            value = structured.arguments(functions[name].get("parameters"), structured.seed(convo.digest, name))
        except structured.SchemaError as exc:
            raise OpenAIError(400, f"Invalid schema for function '{name}': {exc}.", param="tools") from exc
        budget = None if limit is None else max(0, limit - tokens - text.count_tokens(name))
        args, cut = text.clip_to_tokens(_ENCODE.encode(value).decode(), budget)
        status = "incomplete" if cut else "completed"
        calls.append(
            FunctionCallItem(id=new_id("fc_"), call_id=new_id("call_"), name=name, arguments=args, status=status)
        )
        tokens += text.count_tokens(name) + text.count_tokens(args)
        if cut:
            break
    return calls, tokens, cut


def _answers_a_tool(req: ResponsesRequest) -> bool:
    """Whether the last input item is a tool's output: `auto` then answers in text, ending the tool loop."""
    last = req.input[-1] if isinstance(req.input, list) and req.input else None
    return isinstance(last, dict) and str(last.get("type", "")).endswith("_call_output")


def response(req: ResponsesRequest, cache: text.PrefixCache, outcomes: Outcomes | None = None) -> ResponseObject:
    """A completed (or `incomplete` when cut by `max_output_tokens`) Responses API object: one message, or the
    calls of function tools when the tools and `tool_choice` call for them."""
    check_model(req.model)
    tier = service_tier(req.service_tier)
    functions = _functions(req)
    mode, names = _choice(req, functions)
    convo = conversation(req)
    if outcomes is not None:
        convo.recorded = outcomes.reply(req.model, convo.last_user)
    input_tokens = convo.chat_prompt_tokens()
    cached = cache.hit(req.model, convo.text, input_tokens)
    calling = bool(names) and (mode == "required" or (mode == "auto" and not _answers_a_tool(req)))
    output: list[OutputMessage | FunctionCallItem]
    if calling:
        calls, output_tokens, cut = _calls(req, functions, names, convo)
        output = list(calls)
    else:
        reply, cut = text.clip_to_tokens(_text(req, convo), req.max_output_tokens)
        output_tokens = text.count_tokens(reply)
        status = "incomplete" if cut else "completed"
        output = [OutputMessage(id=new_id("msg_"), status=status, content=[OutputText(text=reply)])]
    now = int(time.time())
    return ResponseObject(
        id=new_id("resp_"),
        object="response",
        created_at=now,
        status="incomplete" if cut else "completed",
        completed_at=None if cut else now,
        error=None,
        incomplete_details=IncompleteDetails("max_output_tokens") if cut else None,
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        model=req.model,
        output=output,
        parallel_tool_calls=req.parallel_tool_calls is not False,
        previous_response_id=req.previous_response_id,
        reasoning=None,
        service_tier=tier,
        store=req.store is not False,
        temperature=1.0 if req.temperature is None else req.temperature,
        text=req.text or TextConfig(),
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        tools=list(req.tools or ()),
        top_p=1.0 if req.top_p is None else req.top_p,
        truncation="disabled",
        metadata=req.metadata or {},
        usage=ResponseUsage(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(),
            total_tokens=input_tokens + output_tokens,
        ),
    )
