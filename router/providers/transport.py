"""The pooled httpx client every provider uses, over the aiohttp transport (measured faster: bench/RESULTS.md)."""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from router.settings import Upstream


def make_client(upstream: Upstream, headers: dict[str, str]) -> httpx.AsyncClient:
    """One pooled client per upstream: httpx's API, aiohttp's connection pool."""
    limits = httpx.Limits(max_connections=upstream.max_connections, max_keepalive_connections=upstream.max_connections)
    timeout = httpx.Timeout(upstream.timeout_s, connect=upstream.connect_timeout_s, pool=upstream.timeout_s)
    transport: httpx.AsyncBaseTransport
    if upstream.transport == "aiohttp":
        transport = AiohttpTransport(limits=limits, trust_env=False)
    else:
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
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
