"""The pooled httpx client every provider uses, over the aiohttp transport (measured faster: bench/RESULTS.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from router.core.errors import UpstreamTimeout, UpstreamUnavailable
from router.core.settings import Upstream
from router.providers.base import RETRY_STATUSES, backoff, retry_after_s

MAX_RETRY_AFTER_S = 20.0


def make_client(upstream: Upstream, headers: dict[str, str]) -> httpx.AsyncClient:
    """One pooled client per upstream: httpx's API, aiohttp's connection pool."""
    limits = httpx.Limits(max_connections=upstream.max_connections, max_keepalive_connections=upstream.max_connections)
    timeout = httpx.Timeout(upstream.timeout_s, connect=upstream.connect_timeout_s, pool=upstream.timeout_s)
    transport: httpx.AsyncBaseTransport
    if upstream.transport == "aiohttp":
        transport = AiohttpTransport(limits=limits, trust_env=False)
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    # Identity encoding: the router relays raw bytes, so a compressed upstream body would reach the caller
    # compressed but without its Content-Encoding.
    headers = {"accept-encoding": "identity"} | headers
    return httpx.AsyncClient(
        base_url=upstream.base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
    )


def never_sent(exc: httpx.HTTPError) -> bool:
    """True when the request surely never reached the upstream, so a retry cannot bill twice."""
    if isinstance(exc, httpx.ConnectError | httpx.PoolTimeout):
        return True
    if isinstance(exc.__cause__, aiohttp.ConnectionTimeoutError):
        return True
    # httpx-aiohttp maps every aiohttp connection error to ConnectTimeout; only a failed connect is safe.
    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, aiohttp.ClientSSLError)


def is_timeout(exc: httpx.HTTPError) -> bool:
    """True when the upstream was reached but did not answer in time."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return False
    if isinstance(cause, aiohttp.ServerTimeoutError | aiohttp.SocketTimeoutError):
        return True
    return isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout) or (
        isinstance(exc, httpx.TimeoutException) and cause is None
    )


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a `Retry-After` (or OpenAI's `retry-after-ms`) header, if present and numeric."""
    return retry_after_s(headers.multi_items())


def translate_error(upstream: str, exc: httpx.HTTPError) -> UpstreamUnavailable:
    """An httpx failure as the router's 502 or 504."""
    if is_timeout(exc):
        return UpstreamTimeout(f"The upstream '{upstream}' did not answer in time.", code="upstream_timeout")
    return UpstreamUnavailable(f"The upstream '{upstream}' could not be reached.", code="upstream_unavailable")


async def read_all(response: httpx.Response, upstream: str) -> bytes:
    """The whole body of a streaming response, which is closed either way."""
    try:
        return await response.aread()
    except httpx.HTTPError as exc:
        raise translate_error(upstream, exc) from exc
    finally:
        await response.aclose()


async def send_retrying(
    client: httpx.AsyncClient,
    upstream: Upstream,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    retry_statuses: Collection[int] = RETRY_STATUSES,
) -> httpx.Response:
    """POST and return the (streaming) response; retry failed connects and retryable statuses, which are
    safe because no byte has gone back to the caller yet and the upstream did not run (or bill) the call."""
    attempt = 0
    while True:
        request = client.build_request("POST", url, content=content, headers=headers)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as exc:
            if never_sent(exc) and attempt < upstream.max_retries:
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            raise translate_error(upstream.name, exc) from exc
        if response.status_code in retry_statuses and attempt < upstream.max_retries:
            wait = retry_after(response.headers)
            if wait is None or wait <= MAX_RETRY_AFTER_S:
                await response.aclose()
                await asyncio.sleep(backoff(attempt) if wait is None else wait)
                attempt += 1
                continue
        return response
