"""OpenAI Batch input: the checks `POST /v1/batches` makes at once, and the JSONL validation behind `failed`."""

from __future__ import annotations

from typing import Any

import msgspec

from router.simulator.errors import OpenAIError, describe_decode_error
from router.simulator.store import FileStore

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
MAX_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_EMBEDDING_INPUTS = 50_000
MAX_METADATA_PAIRS = 16
MAX_REPORTED_ERRORS = 100


class CreateBatch(msgspec.Struct):
    """The body of `POST /v1/batches`."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchError(msgspec.Struct, kw_only=True):
    """`BatchError`: one reason the input file failed validation."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class InputLine(msgspec.Struct):
    """One line of the input file (`BatchRequestInput`); the body stays raw until the line runs."""

    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class BodyView(msgspec.Struct):
    """What validation needs from a line's body."""

    model: str | None = None
    stream: bool | None = None


class EmbeddingView(msgspec.Struct):
    """What validation needs from an embeddings body: how many inputs it holds."""

    input: Any = None


_INPUT_LINE = msgspec.json.Decoder(InputLine)
_BODY_VIEW = msgspec.json.Decoder(BodyView)
_EMBEDDING_VIEW = msgspec.json.Decoder(EmbeddingView)


def check_create(req: CreateBatch, files: FileStore) -> bytes:
    """The input file's bytes, after the checks `POST /v1/batches` makes before it accepts a batch."""
    if req.endpoint not in ENDPOINTS:
        raise OpenAIError(
            400,
            f"Invalid value for 'endpoint': {req.endpoint!r} is not supported.",
            param="endpoint",
            code="invalid_value",
        )
    if req.completion_window != "24h":
        raise OpenAIError(
            400,
            "Invalid value for 'completion_window': only '24h' is supported.",
            param="completion_window",
            code="invalid_value",
        )
    meta = req.metadata or {}
    if len(meta) > MAX_METADATA_PAIRS or any(len(k) > 64 or len(v) > 512 for k, v in meta.items()):
        raise OpenAIError(
            400,
            "Invalid 'metadata': at most 16 pairs, keys up to 64 and values up to 512 characters.",
            param="metadata",
            code="invalid_value",
        )
    record = files.get(req.input_file_id)
    if record is None:
        raise OpenAIError(404, f"No such File object: {req.input_file_id}", param="input_file_id")
    if record.meta.purpose != "batch":
        raise OpenAIError(400, "The input file must have purpose 'batch'.", param="input_file_id", code="invalid_value")
    return record.content


class Parsed(msgspec.Struct):
    """An input file after validation: lines in input order, the model, what is wrong, every custom_id seen."""

    lines: list[tuple[str, bytes]]
    model: str | None
    errors: list[BatchError]
    custom_ids: list[str]


def parse_input(content: bytes, endpoint: str, *, azure: bool = False) -> Parsed:
    """Validate a JSONL input file as the Batch API does (format, method, url, model, duplicates, limits); on
    Azure's surface a line's url may leave out `/v1` (`/chat/completions`, as Azure documents it)."""
    parsed = Parsed(lines=[], model=None, errors=[], custom_ids=[])
    errors = parsed.errors
    if len(content) > MAX_FILE_BYTES:
        errors.append(BatchError(code="file_too_large", message="The input file exceeds the 200 MB limit."))
        return parsed
    seen: set[str] = set()
    embedding_inputs = 0
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = _INPUT_LINE.decode(raw)
            view = _BODY_VIEW.decode(line.body)
        except msgspec.ValidationError as exc:  # JSON, but not a request line
            message, param, code = describe_decode_error(exc)
            errors.append(BatchError(code=code or "invalid_value", message=message, param=param, line=number))
            continue
        except (msgspec.DecodeError, RecursionError):
            errors.append(
                BatchError(code="invalid_json_line", message="This line is not parseable as valid JSON.", line=number)
            )
            continue
        parsed.custom_ids.append(line.custom_id)
        if azure and not line.url.startswith("/v1/"):
            line.url = "/v1" + line.url
        problem = _line_problem(line, view, endpoint, parsed.model, seen)
        if problem is not None:
            problem.line = number
            errors.append(problem)
            continue
        seen.add(line.custom_id)
        parsed.model = parsed.model or view.model
        parsed.lines.append((line.custom_id, bytes(line.body)))
        if endpoint == "/v1/embeddings":
            embedding_inputs += _count_inputs(_EMBEDDING_VIEW.decode(line.body).input)
    if not parsed.lines and not errors:
        errors.append(BatchError(code="empty_file", message="The input file contains no requests."))
    if len(parsed.custom_ids) > MAX_LINES:
        errors.append(BatchError(code="too_many_requests", message=f"A batch can hold at most {MAX_LINES:,} requests."))
    if embedding_inputs > MAX_EMBEDDING_INPUTS:
        errors.append(
            BatchError(
                code="too_many_embedding_inputs",
                message=f"An embeddings batch can hold at most {MAX_EMBEDDING_INPUTS:,} inputs.",
            )
        )
    del errors[MAX_REPORTED_ERRORS:]
    return parsed


def _line_problem(
    line: InputLine, view: BodyView, endpoint: str, model: str | None, seen: set[str]
) -> BatchError | None:
    if line.method != "POST":
        return BatchError(code="invalid_method", message="The only supported method is POST.", param="method")
    if line.url != endpoint:
        return BatchError(code="invalid_url", message=f"The url must match the batch endpoint {endpoint}.", param="url")
    if not bytes(line.body).lstrip().startswith(b"{"):
        return BatchError(code="invalid_body", message="The body must be a JSON object.", param="body")
    if line.custom_id in seen:
        return BatchError(
            code="duplicate_custom_id",
            message=f"The custom_id {line.custom_id!r} is used by more than one request.",
            param="custom_id",
        )
    if view.model is None:
        return BatchError(code="missing_required_parameter", message="The body must name a model.", param="body.model")
    if model is not None and view.model != model:
        return BatchError(
            code="model_mismatch",
            message=f"Every request in a batch must use the same model ({model}, not {view.model}).",
            param="body.model",
        )
    if view.stream:
        return BatchError(code="invalid_value", message="Streaming is not supported in a batch.", param="body.stream")
    return None


def _count_inputs(value: Any) -> int:
    if isinstance(value, list) and value and not all(isinstance(x, int) for x in value):
        return len(value)
    return 1
