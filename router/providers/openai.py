"""OpenAI and OpenAI-compatible upstreams: real-time forwarding, Files and the Batch API."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import IO, Any, TypeVar

import httpx
import msgspec

from router.core.errors import BadRequest, UpstreamError, UpstreamUnavailable
from router.core.schema import error_body
from router.core.settings import Upstream
from router.providers.base import (
    ANTHROPIC_ENDPOINTS,
    BatchLine,
    BatchStatus,
    Found,
    Lapsed,
    LineResult,
    UpstreamResponse,
    off_loop,
)
from router.providers.transport import make_client, read_all, retry_after, send_retrying, translate_error

PASS_HEADERS = ("content-type", "x-request-id", "openai-processing-ms", "openai-version", "retry-after")
METADATA_KEY = "hybrid_router_batch"
_SPOOL_BYTES = 8 * 1024 * 1024
_FIND_PAGES = 10

_RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_ENDED = frozenset({"completed", "expired", "cancelled"})


class _InputLine(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class _LineResponse(msgspec.Struct):
    status_code: int
    body: msgspec.Raw


class _LineError(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _OutputLine(msgspec.Struct):
    custom_id: str
    response: _LineResponse | None = None
    error: _LineError | None = None


class _BatchObject(msgspec.Struct):
    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    metadata: dict[str, str] | None = None
    errors: dict[str, Any] | None = None


class _BatchList(msgspec.Struct):
    data: list[_BatchObject]
    has_more: bool = False
    last_id: str | None = None


class _FileObject(msgspec.Struct):
    id: str
    status: str | None = None


T = TypeVar("T")
_encoder = msgspec.json.Encoder()
_output_decoder = msgspec.json.Decoder(_OutputLine)
_batch_decoder = msgspec.json.Decoder(_BatchObject)
_batch_list_decoder = msgspec.json.Decoder(_BatchList)
_file_decoder = msgspec.json.Decoder(_FileObject)

# Lines the provider never ran: they get another chance (re-queue or real time), never an error.
NO_RESULT_CODES = frozenset({"batch_expired", "batch_cancelled", "request_timeout"})


def _decode(decoder: msgspec.json.Decoder[T], raw: bytes | str, upstream: str) -> T:
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested deeper than msgspec follows
        raise UpstreamUnavailable(f"The upstream '{upstream}' sent an answer that could not be read: {exc}") from exc


def pass_headers(response: httpx.Response) -> list[tuple[str, str]]:
    """The upstream headers worth handing to the caller."""
    return [(name, value) for name in PASS_HEADERS if (value := response.headers.get(name)) is not None]


class OpenAIProvider:
    """An upstream speaking the OpenAI API."""

    kind = "openai"

    def __init__(self, upstream: Upstream, api_key: str | None, client: httpx.AsyncClient | None = None) -> None:
        self.name = upstream.name
        self.upstream = upstream
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or make_client(upstream, headers)

    def check(self, endpoint: str, body: bytes) -> None:
        """An OpenAI upstream takes every endpoint the router routes but Anthropic's own (`/messages`)."""
        if endpoint in ANTHROPIC_ENDPOINTS:
            raise BadRequest(
                f"The model is served by the upstream '{self.name}', which speaks the OpenAI API: `/v1{endpoint}` "
                "needs an upstream of kind `anthropic`. Use `/v1/chat/completions`.",
                code="unsupported_endpoint",
            )

    async def forward(
        self, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """POST `body` to `endpoint`; retry connect failures and 429/5xx before any byte went back."""
        self.check(endpoint, body)
        path, body = self.route(endpoint, body)
        sent = {"content-type": "application/json"} | dict(headers or {})
        response = await send_retrying(self.client, self.upstream, path, body, sent)
        return await self._wrap(response, stream=stream and response.status_code == 200)

    def route(self, endpoint: str, body: bytes) -> tuple[str, bytes]:
        """The path (under `base_url`) and body a real-time call is sent with; OpenAI's are the caller's."""
        return endpoint, body

    def batch_url(self, endpoint: str) -> str:
        """The `url` of a batch's lines and its `endpoint`: the API path, not our base URL's."""
        return "/v1" + endpoint

    def line_body(self, body: bytes) -> bytes:
        """A batch line's body as the upstream wants it; OpenAI's is the caller's."""
        return body

    async def uploaded(self, file_id: str, status: str | None) -> None:
        """Called with a batch input file's id and status once uploaded; OpenAI's can be used at once."""

    async def _wrap(self, response: httpx.Response, *, stream: bool) -> UpstreamResponse:
        headers = pass_headers(response)
        if stream:
            return UpstreamResponse(
                status=response.status_code,
                headers=headers,
                stream=self._relay(response),
                close=response.aclose,
            )
        content = await read_all(response, self.name)
        return UpstreamResponse(status=response.status_code, headers=headers, body=content)

    async def _relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        finally:
            await response.aclose()

    def _translate(self, exc: httpx.HTTPError) -> UpstreamUnavailable:
        return translate_error(self.name, exc)

    async def get(self, path: str) -> UpstreamResponse:
        """A GET with the same error translation as `forward`."""
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        return UpstreamResponse(status=response.status_code, headers=pass_headers(response), body=response.content)

    async def ping(self) -> bool:
        """Any HTTP answer from `/models` means the upstream is there."""
        try:
            await self.client.get("/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return True

    async def _json(self, method: str, path: str, **kwargs: object) -> bytes:
        try:
            response = await self.client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        if response.status_code >= 400:
            raise UpstreamError(response.status_code, response.content, retry_after=retry_after(response.headers))
        return response.content

    async def submit_batch(self, batch_id: str, endpoint: str, model: str, lines: Sequence[BatchLine]) -> str:
        """Spool the JSONL (bounded memory; a large file off the event loop), upload it, create the batch."""
        url = self.batch_url(endpoint)
        size = sum(len(line.body) for line in lines)
        with await off_loop(size, _spool, lines, url, self.line_body) as spool:
            uploaded = await self._json(
                "POST",
                "/files",
                files={"file": (f"{batch_id}.jsonl", spool, "application/jsonl")},
                data={"purpose": "batch"},
            )
        file = _decode(_file_decoder, uploaded, self.name)
        file_id = file.id
        await self.uploaded(file_id, file.status)
        created = await self._json(
            "POST",
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": url,
                "completion_window": "24h",
                "metadata": {METADATA_KEY: batch_id, "model": model},
            },
        )
        return _decode(_batch_decoder, created, self.name).id

    async def find_batch(self, lapsed: Lapsed) -> Found:
        """Look through recent batches for the one whose metadata names our batch id."""
        after: str | None = None
        for _ in range(_FIND_PAGES):
            params = {"limit": "100"} | ({"after": after} if after else {})
            page = _decode(_batch_list_decoder, await self._json("GET", "/batches", params=params), self.name)
            for batch in page.data:
                if (batch.metadata or {}).get(METADATA_KEY) == lapsed.batch_id:
                    return Found(provider_id=batch.id)
            if not page.has_more or not page.data:
                return Found()
            after = page.data[-1].id
        return Found()

    async def poll(self, provider_batch_id: str) -> BatchStatus:
        """Map the Batch object's status onto running / ended / failed / missing."""
        try:
            raw = await self._json("GET", f"/batches/{provider_batch_id}")
        except UpstreamError as exc:
            if exc.upstream_status == 404:
                return BatchStatus(state="missing", provider_status="not_found")
            raise
        batch = _decode(_batch_decoder, raw, self.name)
        if batch.status in _RUNNING:
            state: str = "running"
        elif batch.status in _ENDED:
            state = "ended"
        else:
            state = "failed"
        return BatchStatus(
            state=state,  # type: ignore[arg-type]
            provider_status=batch.status,
            output_ref=batch.output_file_id,
            error_ref=batch.error_file_id,
            message=_errors_text(batch.errors),
        )

    async def results(self, status: BatchStatus) -> AsyncIterator[LineResult]:
        """Stream the output file, then the error file, line by line."""
        for file_id in (status.output_ref, status.error_ref):
            if not file_id:
                continue
            try:
                async with self.client.stream("GET", f"/files/{file_id}/content") as response:
                    if response.status_code >= 400:
                        raise UpstreamError(response.status_code, await response.aread())
                    async for text in response.aiter_lines():
                        if text.strip():
                            yield _line_result(_decode(_output_decoder, text, self.name))
            except httpx.HTTPError as exc:
                raise self._translate(exc) from exc

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; finished lines still arrive in the output file."""
        await self._json("POST", f"/batches/{provider_batch_id}/cancel")

    async def aclose(self) -> None:
        """Close the pool."""
        await self.client.aclose()


def _spool(lines: Sequence[BatchLine], url: str, body_of: Callable[[bytes], bytes]) -> IO[bytes]:
    """The batch input file: one request per line, in memory up to `_SPOOL_BYTES`, then on disk; rewound."""
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115 (the caller closes it)
    try:
        for line in lines:
            spool.write(_encoder.encode(_InputLine(line.custom_id, "POST", url, msgspec.Raw(body_of(line.body)))))
            spool.write(b"\n")
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _errors_text(errors: dict[str, Any] | None) -> str | None:
    data = (errors or {}).get("data") or []
    return "; ".join(str(e.get("message") or e.get("code")) for e in data if isinstance(e, dict)) or None


def _line_result(line: _OutputLine) -> LineResult:
    if line.response is not None:
        status = line.response.status_code
        return LineResult(custom_id=line.custom_id, status=status, body=bytes(line.response.body), billed=status == 200)
    code = line.error.code if line.error else None
    if code in NO_RESULT_CODES:
        return LineResult(custom_id=line.custom_id, status=0, body=b"", billed=False)
    message = (line.error.message if line.error else None) or "The batch line failed without a message."
    return LineResult(
        custom_id=line.custom_id,
        status=500,
        body=error_body(message, "server_error", None, code),
        billed=False,
    )
