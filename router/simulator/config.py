"""The simulator's knobs: one msgspec Struct, set at start and patched live through `POST /_sim/config`."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class SimConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the simulated OpenAI and Anthropic upstreams behave; every field has a harmless default."""

    latency_ms: NonNegative = 0
    """Added before every real-time answer (overridden per call by `X-Sim-Latency-Ms`)."""
    stream_chunk_delay_ms: NonNegative = 0
    """Pause between SSE chunks, so a test can see chunks arrive before the stream ends."""
    error_rate: Fraction = 0
    """Fraction of real-time calls answered with an injected error, alternating 429 and 500."""
    batch_turnaround_s: NonNegative = 2.0
    """Time from batch creation to `completed` (OpenAI) or `ended` (Anthropic)."""
    batch_expire_s: NonNegative | None = None
    """If set and shorter than the turnaround, batches end `expired` at this age with partial output."""
    batch_expire_done_fraction: Fraction = 0.5
    """Share of the lines an expiring batch finishes before it expires."""
    batch_cancel_delay_s: NonNegative = 0.5
    """How long a cancelled batch stays `cancelling` / `canceling`."""
    batch_fail: bool = False
    """New batches fail validation (OpenAI `failed`; Anthropic: every request `errored`)."""
    batch_line_failure_rate: Fraction = 0
    """Fraction of batch lines that end in the error file with a 500 body."""
    flex_unavailable: bool = False
    """Every `service_tier: "flex"` call is answered 429 `resource_unavailable`, as when flex lacks capacity."""
    seed: int = 0
    """Seeds error injection, line failures and output order."""
    api_key: str | None = None
    """If set, the only key accepted (Bearer token or `x-api-key`); otherwise any key, or none at all."""


_PATCH = msgspec.json.Decoder(dict[str, Any])


def patched(config: SimConfig, patch: bytes) -> SimConfig:
    """A copy of `config` with the fields of the JSON object `patch` replaced; raises msgspec errors."""
    merged = msgspec.structs.asdict(config)
    merged.update(_PATCH.decode(patch))
    return msgspec.convert(merged, SimConfig)
