"""Anthropic upstreams behind the router: OpenAI chat completions translated to Messages, Anthropic's own
`/messages` passed through, both in real time and in Message Batches."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import msgspec

from router.core.errors import BadRequest, UpstreamError, UpstreamUnavailable
from router.core.schema import error_body
from router.core.settings import Upstream
from router.providers import anthropic_translate as tr
from router.providers.anthropic_orphans import (
    LIST_LIMIT,
    MAX_LIST_PAGES,
    SKEW_S,
    Candidate,
    ListedBatch,
    custom_id_decoder,
    judge,
    page_decoder,
    size,
)
from router.providers.anthropic_stream import StreamTranslator
from router.providers.base import (
    ANTHROPIC_ENDPOINTS,
    RETRY_STATUSES,
    BatchLine,
    BatchProgress,
    BatchStatus,
    Found,
    Lapsed,
    LineResult,
    UpstreamResponse,
    off_loop,
)
from router.providers.transport import make_client, read_all, retry_after, send_retrying, translate_error

log = logging.getLogger(__name__)
API_VERSION = "2023-06-01"
RETRY = RETRY_STATUSES | {529}  # 529: Anthropic is overloaded
FRESH_S = 60.0
"""A batch this young may still answer 404 (anthropics/anthropic-sdk-python#1432): it counts as running."""
LOCAL_PREFIX = "local-"
"""Id of a batch whose every line was refused before upload: nothing was sent, so nothing can be polled."""
NATIVE_LINE = "m-"
"""`custom_id` prefix of a batch request sent as the caller's own Messages params: its result goes back as is.
Call ids start with a hex queue tag, so no translated line's id starts with it."""
PASS_HEADERS = ("content-type", "request-id", "retry-after", "x-should-retry")
"""Upstream headers handed to callers of Anthropic's own API."""

_STATES: dict[str, BatchProgress] = {"in_progress": "running", "canceling": "running", "ended": "ended"}
_NO_RESULT = frozenset({"canceled", "expired"})


class _MessageBatch(msgspec.Struct):
    id: str
    processing_status: str
    results_url: str | None = None


def _absent() -> msgspec.Raw:
    return msgspec.Raw(b"")


class _Result(msgspec.Struct):
    # Raw: a native line's message and error go back byte for byte. msgspec cannot decode `Raw | None`; an
    # empty Raw stands for "absent".
    type: str
    message: msgspec.Raw = msgspec.field(default_factory=_absent)
    error: msgspec.Raw = msgspec.field(default_factory=_absent)


class _ResultLine(msgspec.Struct):
    custom_id: str
    result: _Result


T = TypeVar("T")
_JSON = {"content-type": "application/json"}
_PIECE_BYTES = 1 << 20
_encoder = msgspec.json.Encoder()
_batch_decoder = msgspec.json.Decoder(_MessageBatch)
_result_decoder = msgspec.json.Decoder(_ResultLine)
_envelope_decoder = msgspec.json.Decoder(tr.ErrorEnvelope)


class AnthropicProvider:
    """An upstream speaking the Anthropic API, offered to callers as OpenAI chat completions."""

    kind = "anthropic"

    def __init__(self, upstream: Upstream, api_key: str | None, client: httpx.AsyncClient | None = None) -> None:
        self.name = upstream.name
        self.upstream = upstream
        headers = {"anthropic-version": API_VERSION} | ({"x-api-key": api_key} if api_key else {})
        self.client = client or make_client(upstream, headers)
        # Anthropic's documented base URL has no /v1; accept one written out of OpenAI habit.
        self.v1 = "" if upstream.base_url.rstrip("/").endswith("/v1") else "/v1"
        self._created: dict[str, float] = {}  # provider batch id → monotonic submit time, for FRESH_S
        self._refused: dict[str, dict[str, bytes]] = {}  # provider batch id → custom_id → 400 body

    def _decode(self, decoder: msgspec.json.Decoder[T], raw: bytes | str) -> T:
        try:
            return decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested deeper than msgspec follows
            raise UpstreamUnavailable(
                f"The upstream '{self.name}' sent an answer that could not be read: {exc}"
            ) from exc

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint != "/chat/completions" and endpoint not in ANTHROPIC_ENDPOINTS:
            raise BadRequest(
                f"The upstream '{self.name}' serves chat completions only; `{endpoint}` is not available here.",
                code="unsupported_endpoint",
            )

    def check(self, endpoint: str, body: bytes) -> None:
        """The endpoint and the translation to Messages (or, for `/messages`, what Anthropic refuses outright)."""
        self._check_endpoint(endpoint)
        if endpoint in ANTHROPIC_ENDPOINTS:
            tr.check_params(body)
        else:
            tr.to_params(tr.parse_chat(body))

    def _translate(self, exc: httpx.HTTPError) -> UpstreamUnavailable:
        return translate_error(self.name, exc)

    async def forward(
        self, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """Translate a chat completion to Messages, POST it (retrying like the OpenAI adapter), translate back;
        Anthropic's own endpoints are passed through untranslated."""
        self._check_endpoint(endpoint)
        if endpoint in ANTHROPIC_ENDPOINTS:
            return await self._forward_native(endpoint, body, stream=stream, headers=headers)
        req = tr.parse_chat(body)
        params = tr.to_params(req) | ({"stream": True} if stream else {})
        content = _encoder.encode(params)
        sent = dict(headers or {}) | _JSON
        response = await send_retrying(self.client, self.upstream, f"{self.v1}/messages", content, sent, RETRY)
        if stream and response.status_code == 200:
            translator = StreamTranslator(model=req.model, created=int(time.time()), include_usage=req.include_usage)
            return UpstreamResponse(
                status=200,
                headers=self._headers(response, "text/event-stream"),
                stream=self._relay(response, translator),
                close=response.aclose,
            )
        return await self._answer(response)

    async def _forward_native(
        self, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None
    ) -> UpstreamResponse:
        sent = dict(headers or {}) | _JSON
        response = await send_retrying(self.client, self.upstream, f"{self.v1}{endpoint}", body, sent, RETRY)
        if stream and response.status_code == 200:
            return UpstreamResponse(
                status=200, headers=_native_headers(response), stream=self._relay_raw(response), close=response.aclose
            )
        raw = await read_all(response, self.name)
        return UpstreamResponse(status=response.status_code, headers=_native_headers(response), body=raw)

    async def native(
        self, method: str, path: str, *, content: bytes | None = None, params: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """One call to Anthropic's API passed through untranslated and unretried (Message Batches of callers)."""
        response = await self._request(
            method, self.v1 + path, content=content, params=params, headers=_JSON if content is not None else None
        )
        return UpstreamResponse(status=response.status_code, headers=_native_headers(response), body=response.content)

    async def native_stream(self, path: str) -> UpstreamResponse:
        """A GET whose answer is relayed as it arrives (a Message Batch's results); an error answer is read whole."""
        try:
            response = await self.client.send(self.client.build_request("GET", self.v1 + path), stream=True)
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        if response.status_code != 200:
            raw = await read_all(response, self.name)
            return UpstreamResponse(status=response.status_code, headers=_native_headers(response), body=raw)
        return UpstreamResponse(
            status=200, headers=_native_headers(response), stream=self._relay_raw(response), close=response.aclose
        )

    async def _relay_raw(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        finally:
            await response.aclose()

    def _headers(self, response: httpx.Response, content_type: str) -> list[tuple[str, str]]:
        out = [("content-type", content_type)]
        for ours, theirs in (("x-request-id", "request-id"), ("retry-after", "retry-after")):
            if (value := response.headers.get(theirs)) is not None:
                out.append((ours, value))
        return out

    async def _answer(self, response: httpx.Response) -> UpstreamResponse:
        raw = await read_all(response, self.name)
        headers = self._headers(response, "application/json")
        if response.status_code != 200:
            status, body = tr.error_answer(response.status_code, raw)
            return UpstreamResponse(status=status, headers=headers, body=body)
        body = tr.chat_completion(self._decode(tr.message_decoder, raw), int(time.time()))
        return UpstreamResponse(status=200, headers=headers, body=body)

    async def _relay(self, response: httpx.Response, translator: StreamTranslator) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes():  # decoded: the translator reads the events
                if out := translator.feed(chunk):
                    yield out
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        finally:
            await response.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc

    async def _json(self, method: str, path: str, **kwargs: Any) -> bytes:
        response = await self._request(method, path, **kwargs)
        if response.status_code >= 400:
            status, body = tr.error_answer(response.status_code, response.content)
            raise UpstreamError(status, body, retry_after=retry_after(response.headers))
        return response.content

    async def get(self, path: str) -> UpstreamResponse:
        """`/models` and `/models/{id}` in OpenAI's shape; errors translated."""
        response = await self._request("GET", self.v1 + path, params={"limit": "1000"} if path == "/models" else None)
        headers = self._headers(response, "application/json")
        if response.status_code != 200:
            status, body = tr.error_answer(response.status_code, response.content)
            return UpstreamResponse(status=status, headers=headers, body=body)
        if path == "/models":
            page = self._decode(tr.models_decoder, response.content)
            body = _encoder.encode({"object": "list", "data": [tr.openai_model(m) for m in page.data]})
        elif path.startswith("/models/"):
            body = _encoder.encode(tr.openai_model(self._decode(tr.model_decoder, response.content)))
        else:
            body = response.content
        return UpstreamResponse(status=200, headers=headers, body=body)

    async def ping(self) -> bool:
        """Any HTTP answer from `/v1/models` means the upstream is there."""
        try:
            await self.client.get(f"{self.v1}/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return True

    def _params(self, endpoint: str, line: BatchLine) -> dict[str, Any]:
        if endpoint != "/chat/completions":
            raise BadRequest(f"The upstream '{self.name}' serves chat completions only.")
        return tr.to_params(tr.parse_chat(line.body))

    async def submit_batch(self, batch_id: str, endpoint: str, model: str, lines: Sequence[BatchLine]) -> str:
        """Create a Message Batch with the lines inline; lines that cannot be translated are answered 400 later.
        A `/messages` line is the caller's own params, sent as they are (its custom_id marked `NATIVE_LINE`)."""
        size = sum(len(line.body) for line in lines)  # a large batch is translated and encoded off the event loop
        content, refused = await off_loop(size, self._batch_body, endpoint, lines)
        if content is not None:
            headers = _JSON | {"content-length": str(len(content))}
            raw = await self._json("POST", f"{self.v1}/messages/batches", content=_pieces(content), headers=headers)
            provider_id = self._decode(_batch_decoder, raw).id
        else:
            provider_id = LOCAL_PREFIX + batch_id
        now = time.monotonic()
        self._created = {k: t for k, t in self._created.items() if now - t < FRESH_S} | {provider_id: now}
        if refused:
            self._refused[provider_id] = refused
        return provider_id

    def _batch_body(self, endpoint: str, lines: Sequence[BatchLine]) -> tuple[bytearray | None, dict[str, bytes]]:
        """The Message Batch request for the lines that translate (None if none does), and the refused lines.

        Each request is encoded on its own into one growing buffer: one `encode` of the whole batch, or one copy
        of the result, would hold the GIL, and so stall the event loop even from a worker thread.
        """
        body = bytearray(b'{"requests":[')
        refused: dict[str, bytes] = {}
        for line in lines:
            if line.endpoint == "/messages":
                request: dict[str, Any] = {"custom_id": NATIVE_LINE + line.custom_id, "params": msgspec.Raw(line.body)}
            else:
                try:
                    request = {"custom_id": line.custom_id, "params": self._params(endpoint, line)}
                except BadRequest as exc:
                    refused[line.custom_id] = error_body(exc.message, exc.type, exc.param, exc.code)
                    continue
            _encoder.encode_into(request, body, -1)
            body += b","
        if not body.endswith(b","):
            return None, refused
        body[-1:] = b"]}"
        return body, refused

    async def find_batch(self, lapsed: Lapsed) -> Found:
        """The Message Batch a crashed builder created, told apart without metadata (see docs/anthropic.md).

        Candidates: batches created between the claim and the lapse (± `SKEW_S`) with as many requests as the
        builder sent, that the router has not recorded. An ended one is proven by its results' first custom_id;
        running ones are judged by `judge` under the upstream's `orphan_policy`.
        """
        sent = 0
        for line in lapsed.lines:
            if line.endpoint == "/messages":  # the caller's own params: always sent
                sent += 1
                continue
            with contextlib.suppress(BadRequest):  # refused lines were never sent
                self._params("/chat/completions", line)
                sent += 1
        gone = len(lapsed.custom_ids) - len(lapsed.lines)  # answered meanwhile: sent or not, no body is left
        if sent + gone == 0:
            return Found()
        low, high = lapsed.claimed_at - SKEW_S, lapsed.lapsed_at + SKEW_S
        listed, complete = await self._listed_since(low)
        if not complete:
            log.warning("batch %s: too many Message Batches since its claim, only the newest searched", lapsed.batch_id)
        fitting = [b for b in listed if b.created_at.timestamp() <= high and sent <= size(b) <= sent + gone]
        ledger = await lapsed.ledger([b.id for b in fitting])
        running: list[Candidate] = []
        for batch in fitting:
            if batch.id in ledger.recorded:
                continue
            if batch.processing_status != "ended":
                created, canceling = batch.created_at.timestamp(), batch.processing_status == "canceling"
                running.append(Candidate(id=batch.id, created_at=created, requests=size(batch), canceling=canceling))
            elif await self._first_custom_id(batch.id) in lapsed.custom_ids:
                log.info("batch %s: adopting Message Batch %s (its results name our calls)", lapsed.batch_id, batch.id)
                return Found(provider_id=batch.id)
        verdict = judge(self.upstream.orphan_policy, running, ledger.rivals, complete)
        if verdict.adopt:
            log.info("batch %s: adopting Message Batch %s (the one that fits)", lapsed.batch_id, verdict.adopt)
        for provider_batch_id in verdict.cancel:
            log.warning(
                "batch %s: cancelling Message Batch %s, which nothing records", lapsed.batch_id, provider_batch_id
            )
            try:
                await self.cancel(provider_batch_id)
            except UpstreamError:  # it ended meanwhile: its results will tell whose it is
                return Found(wait=True)
        return Found(provider_id=verdict.adopt, wait=verdict.wait)

    async def _listed_since(self, since: float) -> tuple[list[ListedBatch], bool]:
        """The Message Batches created since `since` (newest first, `after_id` pages); False if there were too many."""
        found: list[ListedBatch] = []
        params = {"limit": str(LIST_LIMIT)}
        for _ in range(MAX_LIST_PAGES):
            page = self._decode(page_decoder, await self._json("GET", f"{self.v1}/messages/batches", params=params))
            for batch in page.data:
                if batch.created_at.timestamp() < since:
                    return found, True
                found.append(batch)
            if not page.has_more or page.last_id is None:
                return found, True
            params = {"limit": str(LIST_LIMIT), "after_id": page.last_id}
        return found, False

    async def _first_custom_id(self, provider_batch_id: str) -> str | None:
        """The custom_id of the first line of an ended batch's results (one line names its whole batch)."""
        try:
            async with self.client.stream("GET", f"{self.v1}/messages/batches/{provider_batch_id}/results") as response:
                if response.status_code >= 400:
                    raise UpstreamError(*tr.error_answer(response.status_code, await response.aread()))
                async for text in response.aiter_lines():
                    if text.strip():
                        return self._decode(custom_id_decoder, text).custom_id.removeprefix(NATIVE_LINE)
        except httpx.HTTPError as exc:
            raise self._translate(exc) from exc
        return None

    async def poll(self, provider_batch_id: str) -> BatchStatus:
        """in_progress/canceling → running, ended → ended; 404 → missing, unless the batch is only just created."""
        if provider_batch_id.startswith(LOCAL_PREFIX):
            return BatchStatus(state="ended", provider_status="ended", error_ref=provider_batch_id)
        try:
            raw = await self._json("GET", f"{self.v1}/messages/batches/{provider_batch_id}")
        except UpstreamError as exc:
            if exc.upstream_status != 404:
                raise
            created = self._created.get(provider_batch_id)
            if created is not None and time.monotonic() - created < FRESH_S:
                return BatchStatus(state="running", provider_status="not_found_yet")
            self._refused.pop(provider_batch_id, None)
            return BatchStatus(state="missing", provider_status="not_found")
        batch = self._decode(_batch_decoder, raw)
        state = _STATES.get(batch.processing_status, "failed")
        results = f"{self.v1}/messages/batches/{provider_batch_id}/results"
        if batch.results_url and self._same_origin(batch.results_url):
            results = batch.results_url
        # error_ref carries the batch id: Anthropic has no error file, and the id names the lines refused here.
        return BatchStatus(
            state=state, provider_status=batch.processing_status, output_ref=results, error_ref=provider_batch_id
        )

    def _same_origin(self, url: str) -> bool:
        """Only follow a results_url on our own upstream: the API key goes with the request."""
        there, here = httpx.URL(url), self.client.base_url
        return (there.scheme, there.host, there.port) == (here.scheme, here.host, here.port)

    async def results(self, status: BatchStatus) -> AsyncIterator[LineResult]:
        """Stream the results JSONL, then the lines refused before upload."""
        if status.output_ref:
            try:
                async with self.client.stream("GET", status.output_ref) as response:
                    if response.status_code >= 400:
                        raise UpstreamError(*tr.error_answer(response.status_code, await response.aread()))
                    async for text in response.aiter_lines():
                        if text.strip():
                            yield self._line_result(self._decode(_result_decoder, text))
            except httpx.HTTPError as exc:
                raise self._translate(exc) from exc
        for custom_id, body in self._refused.pop(status.error_ref or "", {}).items():
            yield LineResult(custom_id=custom_id, status=400, body=body, billed=False)

    def _line_result(self, line: _ResultLine) -> LineResult:
        """One result in its caller's dialect: a native line's message or error as Anthropic wrote it, a
        translated line's as OpenAI's."""
        result = line.result
        native = line.custom_id.startswith(NATIVE_LINE)
        custom_id = line.custom_id.removeprefix(NATIVE_LINE)
        if result.type == "succeeded" and _present(result.message):
            if native:
                return LineResult(custom_id=custom_id, status=200, body=bytes(result.message), billed=True)
            body = tr.chat_completion(self._decode(tr.message_decoder, result.message), int(time.time()))
            return LineResult(custom_id=custom_id, status=200, body=body, billed=True)
        if result.type in _NO_RESULT:  # never ran: the router re-queues or escalates it
            return LineResult(custom_id=custom_id, status=0, body=b"", billed=False)
        envelope = self._envelope(result)
        if native:
            body = bytes(result.error) if _present(result.error) else _encoder.encode(envelope)
            return LineResult(
                custom_id=custom_id, status=tr.native_status(envelope.error.type), body=body, billed=False
            )
        status, body = tr.translate_error(envelope.error)
        return LineResult(custom_id=custom_id, status=status, body=body, billed=False)

    def _envelope(self, result: _Result) -> tr.ErrorEnvelope:
        if _present(result.error):
            try:
                return _envelope_decoder.decode(result.error)
            except (msgspec.DecodeError, RecursionError):
                pass
        return tr.ErrorEnvelope(tr.ErrorDetail("api_error", f"The line ended {result.type}."))

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; lines finished before it still arrive as results."""
        if not provider_batch_id.startswith(LOCAL_PREFIX):
            await self._json("POST", f"{self.v1}/messages/batches/{provider_batch_id}/cancel")

    async def aclose(self) -> None:
        """Close the pool."""
        await self.client.aclose()


def _present(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def _native_headers(response: httpx.Response) -> list[tuple[str, str]]:
    return [(name, value) for name in PASS_HEADERS if (value := response.headers.get(name)) is not None]


async def _pieces(body: bytearray) -> AsyncIterator[bytes]:
    """A request body sent 1 MiB at a time: a copy of all of it at once would stall the event loop."""
    view = memoryview(body)
    for start in range(0, len(view), _PIECE_BYTES):
        yield bytes(view[start : start + _PIECE_BYTES])
