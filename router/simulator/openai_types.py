"""OpenAI wire types: lenient request views and the response objects, as msgspec Structs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# --- request views: lenient (unknown fields ignored), only what the simulator reads -----------------------


class StreamOptions(msgspec.Struct):
    """`stream_options` of chat and legacy completions."""

    include_usage: bool = False


class ChatMessage(msgspec.Struct):
    """One input message of a chat completion request."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Any] | None = None
    tool_calls: list[Any] | None = None


class FunctionDefinition(msgspec.Struct, omit_defaults=True):
    """`FunctionObject`: a function tool's name and the JSON Schema of its arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct, omit_defaults=True):
    """One entry of `tools`: a function tool (custom tools carry no `function` and are never called)."""

    type: str
    function: FunctionDefinition | None = None


class JsonSchemaFormat(msgspec.Struct):
    """`ResponseFormatJsonSchema.json_schema`."""

    name: str
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct):
    """`response_format`: text, any JSON object, or JSON valid against a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatRequest(msgspec.Struct):
    """The fields of `CreateChatCompletionRequest` the simulator reads."""

    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    prompt_cache_key: str | None = None
    n: int = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    service_tier: str | None = None
    tools: list[ChatTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(msgspec.Struct):
    """The fields of the legacy `CreateCompletionRequest` the simulator reads."""

    model: str
    prompt: str | list[Any]
    max_tokens: int | None = 16  # the legacy endpoint's documented default
    n: int = 1
    logprobs: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None


class EmbeddingRequest(msgspec.Struct):
    """The fields of `CreateEmbeddingRequest` the simulator reads."""

    model: str
    input: str | list[Any]
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    encoding_format: Literal["float", "base64"] = "float"


class ResponsesRequest(msgspec.Struct):
    """The fields of `CreateResponse` the simulator reads."""

    model: str
    input: str | list[Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    stream: bool | None = False
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = True
    temperature: float | None = None
    top_p: float | None = None
    previous_response_id: str | None = None
    parallel_tool_calls: bool | None = True
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    background: bool | None = False


# --- response objects ------------------------------------------------------------------------------------


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    """`CompletionUsage.prompt_tokens_details`."""

    cached_tokens: int = 0
    audio_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct, kw_only=True):
    """`CompletionUsage.completion_tokens_details`."""

    reasoning_tokens: int = 0
    audio_tokens: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class CompletionUsage(msgspec.Struct, kw_only=True):
    """`CompletionUsage` of chat and legacy completions."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class FunctionCall(msgspec.Struct, kw_only=True):
    """A tool call's function: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCall(msgspec.Struct, kw_only=True):
    """`ChatCompletionMessageToolCall`."""

    id: str
    type: str = "function"
    function: FunctionCall


class AssistantMessage(msgspec.Struct, kw_only=True):
    """`ChatCompletionResponseMessage`; `tool_calls` only when the model called tools (then `content` is null)."""

    role: str = "assistant"
    content: str | None
    refusal: None = None
    annotations: list[Any] = msgspec.field(default_factory=list)
    tool_calls: list[ToolCall] | msgspec.UnsetType = msgspec.UNSET


class TopLogprob(msgspec.Struct, kw_only=True):
    """One of the most likely tokens at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct, kw_only=True):
    """`ChatCompletionTokenLogprob`: a generated token, its log probability and the likeliest alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    """A chat choice's `logprobs`: one entry per content token (null when the model called tools)."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(msgspec.Struct, kw_only=True):
    """`CreateChatCompletionResponse`."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    service_tier: str
    system_fingerprint: str


class LegacyLogprobs(msgspec.Struct, kw_only=True):
    """A legacy completion choice's `logprobs`: parallel lists, `text_offset` counted in characters."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(msgspec.Struct, kw_only=True):
    """One choice of a legacy completion (also a streamed chunk's choice)."""

    text: str
    index: int
    logprobs: LegacyLogprobs | None = None
    finish_reason: str | None


class Completion(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`CreateCompletionResponse`; streamed chunks share the shape (usage only on the last)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[TextChoice]
    system_fingerprint: str
    usage: CompletionUsage | None = None


class EmbeddingItem(msgspec.Struct, kw_only=True):
    """`Embedding`: a list of floats, or a base64 string when asked for."""

    object: str = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(msgspec.Struct):
    """`CreateEmbeddingResponse.usage`."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    """`CreateEmbeddingResponse`."""

    object: str = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


class OutputText(msgspec.Struct, kw_only=True):
    """`OutputTextContent`."""

    type: str = "output_text"
    text: str
    annotations: list[Any] = msgspec.field(default_factory=list)
    logprobs: list[Any] = msgspec.field(default_factory=list)


class OutputMessage(msgspec.Struct, kw_only=True):
    """`OutputMessage`: the assistant's message item in a Response's `output`."""

    type: str = "message"
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputText]


class FunctionCallItem(msgspec.Struct, kw_only=True):
    """`ResponseFunctionToolCall`: a call of one of the request's function tools in a Response's `output`."""

    type: str = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: str = "completed"


class InputTokensDetails(msgspec.Struct, kw_only=True):
    """`ResponseUsage.input_tokens_details`."""

    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    """`ResponseUsage.output_tokens_details`."""

    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    """`ResponseUsage`."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    """Why a Response stopped early."""

    reason: str


class TextConfig(msgspec.Struct, kw_only=True):
    """`ResponseTextParam`: the output format (`text`, `json_object`, or `json_schema` with `name` and `schema`);
    read from a request and echoed back in the Response."""

    format: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "text"})


class ResponseObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The Responses API `Response`; fields without a default are always sent (the spec requires them)."""

    id: str
    object: str
    created_at: int
    status: str
    completed_at: int | None
    error: None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputMessage | FunctionCallItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: None
    service_tier: str
    store: bool
    temperature: float
    text: TextConfig
    tool_choice: str | dict[str, Any]
    tools: list[Any]
    top_p: float
    truncation: str
    metadata: dict[str, str]
    usage: ResponseUsage | None = None
    background: bool = False


class Tokens(msgspec.Struct, kw_only=True):
    """Token totals of one answer, in the Batch object's `usage` terms."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
