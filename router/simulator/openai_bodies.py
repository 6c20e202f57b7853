"""OpenAI request views and the answers to them: one pure function per endpoint, shared by real time and batch."""

from __future__ import annotations

import functools
import hashlib
import time
from typing import Any

import msgspec

from router.simulator import catalog, logprobs, structured, text
from router.simulator import openai_tools as tools
from router.simulator.errors import OpenAIError
from router.simulator.ids import new_id
from router.simulator.openai_checks import check_model, decode_with, service_tier
from router.simulator.openai_types import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatRequest,
    ChoiceLogprobs,
    Completion,
    CompletionRequest,
    CompletionTokensDetails,
    CompletionUsage,
    EmbeddingItem,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
    PromptTokensDetails,
    ResponseObject,
    TextChoice,
    Tokens,
)
from router.simulator.outcomes import Outcomes

MAX_EMBEDDING_INPUTS = 2048
MAX_CHOICES = 128


@functools.lru_cache(maxsize=256)
def system_fingerprint(model: str) -> str:
    """A stable `fp_…` per model, as the real API reports its backend configuration."""
    return "fp_" + hashlib.blake2b(model.encode(), digest_size=5).hexdigest()


# --- decoding --------------------------------------------------------------------------------------------

_CHAT = msgspec.json.Decoder(ChatRequest)
_COMPLETION = msgspec.json.Decoder(CompletionRequest)
_EMBEDDING = msgspec.json.Decoder(EmbeddingRequest)
_ENCODE = msgspec.json.Encoder()


def decode_chat(raw: bytes) -> ChatRequest:
    """The chat request in `raw`, or a 400 in OpenAI's shape."""
    return decode_with(_CHAT, raw)


def decode_completion(raw: bytes) -> CompletionRequest:
    """The legacy completion request in `raw`, or a 400."""
    return decode_with(_COMPLETION, raw)


def decode_embedding(raw: bytes) -> EmbeddingRequest:
    """The embedding request in `raw`, or a 400."""
    return decode_with(_EMBEDDING, raw)


def _check_n(n: int) -> None:
    if not 1 <= n <= MAX_CHOICES:
        raise OpenAIError(400, f"Invalid 'n': must be between 1 and {MAX_CHOICES}.", param="n", code="invalid_value")


def chat_conversation(req: ChatRequest) -> text.Conversation:
    """The turns a chat request's answer is derived from (tool definitions and calls count as text)."""
    turns: list[tuple[str, str]] = [(m.role, tools.part_text(m.content)) for m in req.messages]
    for i, message in enumerate(req.messages):
        if message.tool_calls:
            role, content = turns[i]
            turns[i] = (role, content + _ENCODE.encode(message.tool_calls).decode())
    if req.tools:
        turns.insert(0, ("tools", _ENCODE.encode(req.tools).decode()))
    return text.Conversation(turns)


def chat_completion(req: ChatRequest, cache: text.PrefixCache, outcomes: Outcomes | None = None) -> ChatCompletion:
    """The `chat.completion` for a request: deterministic text, tool calls or schema-valid JSON, `max_tokens`, `n`
    and `logprobs` honoured, real-looking usage."""
    check_model(req.model)
    _check_n(req.n)
    tier = service_tier(req.service_tier)
    top = tools.top_logprobs(req)
    mode, functions = tools.tool_choice(req)
    tools.check_format(req)
    tools.check_strict(req)
    convo = chat_conversation(req)
    if outcomes is not None:
        convo.recorded = outcomes.reply(req.model, convo.last_user)
    prompt_tokens = convo.chat_prompt_tokens()
    cached = cache.hit(req.model, convo.text, prompt_tokens)
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    # `auto` calls a tool unless the last message is a tool's result: then it answers, which ends a tool loop.
    answers_tool = req.messages[-1].role == "tool"
    calling = bool(functions) and (mode in ("required", "named") or (mode == "auto" and not answers_tool))
    choices = []
    completion_tokens = 0
    for index in range(req.n):
        salt = structured.seed(convo.digest, str(index))
        if calling:
            calls, tokens, cut = tools.tool_calls(req, functions, convo, salt, limit)
            completion_tokens += tokens
            finish = "length" if cut else "stop" if mode == "named" else "tool_calls"  # named: "stop", as OpenAI does
            message = AssistantMessage(content=None, tool_calls=calls)
            choice_logprobs = None if top is None else ChoiceLogprobs(content=None)
        else:
            reply, cut = text.clip_to_tokens(tools.content(req, convo, index, salt), limit)
            completion_tokens += text.count_tokens(reply)
            finish = "length" if cut else "stop"
            message = AssistantMessage(content=reply)
            choice_logprobs = None if top is None else ChoiceLogprobs(content=logprobs.chat(reply, top, salt))
        choices.append(ChatChoice(index=index, message=message, logprobs=choice_logprobs, finish_reason=finish))
    return ChatCompletion(
        id=new_id("chatcmpl-"),
        created=int(time.time()),
        model=req.model,
        choices=choices,
        usage=_usage(prompt_tokens, completion_tokens, cached),
        service_tier=tier,
        system_fingerprint=system_fingerprint(req.model),
    )


def _usage(prompt_tokens: int, completion_tokens: int, cached: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        completion_tokens_details=CompletionTokensDetails(),
    )


def _token_list(value: list[Any]) -> bool:
    return bool(value) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _inputs(value: str | list[Any], param: str) -> list[tuple[str, int]]:
    """Normalise a prompt/input (string, strings, token array, token arrays) to (text key, token count) pairs."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif _token_list(value):
        items = [value]
    else:
        items = value
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, text.count_tokens(item)))
        elif isinstance(item, list) and _token_list(item):
            out.append(("tokens:" + ",".join(map(str, item)), len(item)))
        else:
            raise OpenAIError(
                400, f"Invalid '{param}': expected a string, strings or token arrays.", param=param, code="invalid_type"
            )
    if not out:
        raise OpenAIError(400, f"Invalid '{param}': must not be empty.", param=param, code="invalid_value")
    return out


def completion(req: CompletionRequest, cache: text.PrefixCache) -> Completion:
    """The legacy `text_completion`: one choice per prompt and `n`, cut at `max_tokens` (default 16)."""
    check_model(req.model)
    _check_n(req.n)
    if req.logprobs is not None and not 0 <= req.logprobs <= logprobs.MAX_TOP_LEGACY:
        raise OpenAIError(
            400,
            f"Invalid 'logprobs': must be between 0 and {logprobs.MAX_TOP_LEGACY}, got {req.logprobs}.",
            param="logprobs",
            code="invalid_value",
        )
    prompts = _inputs(req.prompt, "prompt")
    choices = []
    prompt_tokens = completion_tokens = cached = 0
    for p_index, (prompt, tokens) in enumerate(prompts):
        convo = text.Conversation([("user", prompt)])
        prompt_tokens += tokens
        cached += cache.hit(req.model, convo.text, tokens)
        for i in range(req.n):
            reply, cut = text.clip_to_tokens(" " + convo.reply(i), req.max_tokens)
            completion_tokens += text.count_tokens(reply)
            lp = None
            if req.logprobs is not None:
                lp = logprobs.legacy(reply, req.logprobs, structured.seed(convo.digest, str(i)))
            choices.append(
                TextChoice(
                    text=reply, index=p_index * req.n + i, logprobs=lp, finish_reason="length" if cut else "stop"
                )
            )
    return Completion(
        id=new_id("cmpl-"),
        object="text_completion",
        created=int(time.time()),
        model=req.model,
        choices=choices,
        system_fingerprint=system_fingerprint(req.model),
        usage=_usage(prompt_tokens, completion_tokens, cached),
    )


def embeddings(req: EmbeddingRequest, cache: text.PrefixCache) -> EmbeddingList:
    """Deterministic unit vectors, `dimensions` long if given (text-embedding-3 only) else the model's length."""
    del cache  # embeddings are not prompt-cached; the parameter keeps every endpoint's signature alike
    check_model(req.model)
    dims = catalog.embedding_dimensions(req.model)
    if req.dimensions is not None:
        if req.model.startswith("text-embedding-ada-002"):
            raise OpenAIError(
                400, "This model does not support specifying dimensions.", param="dimensions", code="invalid_value"
            )
        dims = req.dimensions
    inputs = _inputs(req.input, "input")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise OpenAIError(
            400, f"Invalid 'input': at most {MAX_EMBEDDING_INPUTS} inputs.", param="input", code="invalid_value"
        )
    data = []
    tokens = 0
    for index, (key, count) in enumerate(inputs):
        if count == 0:
            raise OpenAIError(400, f"Invalid 'input[{index}]': must not be empty.", param="input", code="invalid_value")
        tokens += count
        vector = text.embedding(f"{req.model}\x1f{key}".encode(), dims)
        value: list[float] | str = text.embedding_base64(vector) if req.encoding_format == "base64" else vector.tolist()
        data.append(EmbeddingItem(index=index, embedding=value))
    return EmbeddingList(data=data, model=req.model, usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens))


def tokens_of(body: ChatCompletion | Completion | EmbeddingList | ResponseObject) -> Tokens:
    """The usage of any endpoint's answer, normalised for a batch's totals."""
    if isinstance(body, EmbeddingList):
        return Tokens(input_tokens=body.usage.prompt_tokens)
    if isinstance(body, ResponseObject):
        u = body.usage
        if u is None:  # only in-progress stream snapshots lack usage
            return Tokens()
        return Tokens(
            input_tokens=u.input_tokens,
            cached_tokens=u.input_tokens_details.cached_tokens,
            output_tokens=u.output_tokens,
            reasoning_tokens=u.output_tokens_details.reasoning_tokens,
        )
    usage = body.usage
    if usage is None:  # only streamed chunks lack usage
        return Tokens()
    return Tokens(
        input_tokens=usage.prompt_tokens,
        cached_tokens=usage.prompt_tokens_details.cached_tokens,
        output_tokens=usage.completion_tokens,
        reasoning_tokens=usage.completion_tokens_details.reasoning_tokens,
    )
