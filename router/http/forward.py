"""One call sent upstream now, its upstream time measured: what the relay, the cascade and Anthropic's routes share."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.telemetry import metrics

if TYPE_CHECKING:
    from router.providers.base import Provider, UpstreamResponse


async def forward_realtime(
    provider: Provider, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None = None
) -> UpstreamResponse:
    """Send one call upstream now, timing the upstream's part of it."""
    started = time.perf_counter()
    try:
        response = await provider.forward(endpoint, body, stream=stream, headers=headers)
    finally:
        elapsed = time.perf_counter() - started
        metrics.upstream_latency.labels(provider.name).observe(elapsed)
    response.elapsed = elapsed
    return response
