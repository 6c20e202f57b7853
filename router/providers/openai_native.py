"""An OpenAI upstream's Files and Batches API, passed through with the router's key (the native Batch API)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping

import httpx

from router.core.errors import UpstreamError
from router.providers.base import UpstreamResponse
from router.providers.openai import OpenAIProvider, pass_headers
from router.providers.transport import read_all, translate_error

DOWNLOAD_HEADERS = ("content-type", "content-length", "content-disposition", "x-request-id")


class OpenAINative:
    """`/files` and `/batches` of one OpenAI upstream, over that upstream's pooled client."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self.name = provider.name
        self.client = provider.client

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """One request with a JSON body (or none); the whole answer, whatever its status."""
        sent = dict(headers or {}) | ({"content-type": "application/json"} if body is not None else {})
        try:
            response = await self.client.request(method, path, params=params, content=body, headers=sent)
        except httpx.HTTPError as exc:
            raise translate_error(self.name, exc) from exc
        return UpstreamResponse(status=response.status_code, headers=pass_headers(response), body=response.content)

    async def upload(self, chunks: AsyncIterable[bytes], headers: Mapping[str, str]) -> UpstreamResponse:
        """`POST /files` with the caller's multipart body sent on as it arrives, never held whole."""
        request = self.client.build_request("POST", "/files", content=chunks, headers=headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise translate_error(self.name, exc) from exc
        body = await read_all(response, self.name)
        return UpstreamResponse(status=response.status_code, headers=pass_headers(response), body=body)

    async def download(self, path: str) -> UpstreamResponse:
        """A GET whose 200 body is relayed as a stream (the caller drains it or calls `close`); errors read whole."""
        try:
            response = await self.client.send(self.client.build_request("GET", path), stream=True)
        except httpx.HTTPError as exc:
            raise translate_error(self.name, exc) from exc
        if response.status_code != 200:
            body = await read_all(response, self.name)
            return UpstreamResponse(status=response.status_code, headers=pass_headers(response), body=body)
        headers = [(name, value) for name in DOWNLOAD_HEADERS if (value := response.headers.get(name)) is not None]
        return UpstreamResponse(status=200, headers=headers, stream=self._relay(response), close=response.aclose)

    async def _relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            raise translate_error(self.name, exc) from exc
        finally:
            await response.aclose()

    async def fetch(self, path: str) -> bytes | None:
        """A GET's JSON body, None on a 404; any other error status raises `UpstreamError`."""
        answer = await self.call("GET", path)
        if answer.status == 404:
            return None
        if answer.status >= 400:
            raise UpstreamError(answer.status, answer.body)
        return answer.body

    async def file_lines(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The non-empty lines of a file's content, streamed."""
        try:
            async with self.client.stream("GET", f"/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    raise UpstreamError(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if line.strip():
                        yield line.encode()
        except httpx.HTTPError as exc:
            raise translate_error(self.name, exc) from exc
