"""The simulator's knobs: one msgspec Struct, set at start and patched live through `POST /_sim/config`."""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Annotated, Any

import msgspec

Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]

WINDOW_S = 24 * 3600.0
"""The providers' completion window: a batch still running this long after creation expires."""
Z95 = NormalDist().inv_cdf(0.95)
LOGNORMAL = "lognormal:"


class Turnaround(msgspec.Struct, frozen=True, kw_only=True):
    """How long batches take: a lognormal by its median and 95th percentile (equal: a fixed duration).

    A drawn duration beyond `max` (the completion window) means the batch expires at `max`.
    """

    median: float
    p95: float
    max: float = WINDOW_S

    @classmethod
    def parse(cls, spec: str) -> Turnaround:
        """`"30"` (fixed seconds) or `"lognormal:median=S,p95=S[,max=S]"`; raises ValueError naming the problem."""
        text = spec.strip()
        if not text.startswith(LOGNORMAL):
            seconds = _seconds(text, "turnaround", expected="seconds or lognormal:median=S,p95=S[,max=S]")
            return cls(median=seconds, p95=seconds)
        values: dict[str, float] = {}
        for part in text.removeprefix(LOGNORMAL).split(","):
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or key not in ("median", "p95", "max"):
                raise ValueError(f"expected median=S, p95=S and optionally max=S, got {part.strip()!r}")
            if key in values:
                raise ValueError(f"{key} given twice")
            values[key] = _seconds(value, key)
        missing = [key for key in ("median", "p95") if key not in values]
        if missing:
            raise ValueError(f"lognormal needs {' and '.join(missing)}")
        turnaround = cls(**values)
        if turnaround.median <= 0 or turnaround.p95 < turnaround.median:
            raise ValueError("lognormal needs 0 < median <= p95")
        if turnaround.max <= 0:
            raise ValueError("max must be above 0")
        return turnaround

    def draw(self, rng: random.Random) -> float:
        """One batch's duration in seconds (the median itself when the spread is 0)."""
        if self.p95 == self.median:
            return self.median
        return rng.lognormvariate(math.log(self.median), math.log(self.p95 / self.median) / Z95)


def _seconds(text: str, name: str, expected: str = "a number of seconds") -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {text!r}")
    return value


class SimConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How the simulated OpenAI and Anthropic upstreams behave; every field has a harmless default."""

    latency_ms: NonNegative = 0
    """Added before every real-time answer (overridden per call by `X-Sim-Latency-Ms`)."""
    stream_chunk_delay_ms: NonNegative = 0
    """Pause between SSE chunks, so a test can see chunks arrive before the stream ends."""
    error_rate: Fraction = 0
    """Fraction of real-time calls answered with an injected error, alternating 429 and 500."""
    batch_turnaround_s: NonNegative = 2.0
    """Time from batch creation to `completed` (OpenAI) or `ended` (Anthropic), unless `batch_turnaround` is set."""
    batch_turnaround: str | None = None
    """A `Turnaround` spec (`"30"` or `"lognormal:median=S,p95=S[,max=S]"`) each batch draws its duration from,
    seeded by `seed` and the batch's sequence number; replaces `batch_turnaround_s` while set (a live patch of
    `batch_turnaround_s` alone clears it). Durations beyond `max` (default 24 h) expire at `max`."""
    batch_expire_s: NonNegative | None = None
    """If set and shorter than the turnaround, batches end `expired` at this age with partial output."""
    batch_expire_done_fraction: Fraction = 0.5
    """Share of the lines a batch expiring by `batch_expire_s` finishes before it expires."""
    batch_cancel_delay_s: NonNegative = 0.5
    """How long a cancelled batch stays `cancelling` / `canceling`."""
    batch_fail: bool = False
    """New batches fail validation (OpenAI `failed`; Anthropic: every request `errored`)."""
    batch_line_failure_rate: Fraction = 0
    """Fraction of batch lines that end in the error file with a 500 body."""
    flex_unavailable: bool = False
    """Every `service_tier: "flex"` call is answered 429 `resource_unavailable`, as when flex lacks capacity."""
    seed: int = 0
    """Seeds error injection, line failures, output order and drawn batch durations."""
    api_key: str | None = None
    """If set, the only key accepted (Bearer token or `x-api-key`); otherwise any key, or none at all."""
    outcomes: str | None = None
    """A JSONL file of recorded outcomes (the `routes learn` format, `simulator.outcomes`): a known prompt is answered
    the way the asked model did there, so models of different skill can be played end to end."""

    def __post_init__(self) -> None:
        if self.batch_turnaround is not None:
            try:
                Turnaround.parse(self.batch_turnaround)
            except ValueError as exc:
                # Worded like msgspec's own errors, so `/_sim/config` names the field in `param`.
                raise ValueError(f"{exc} - at `$.batch_turnaround`") from None

    def turnaround(self) -> Turnaround:
        """The distribution new batches draw their duration from."""
        if self.batch_turnaround is None:
            return Turnaround(median=self.batch_turnaround_s, p95=self.batch_turnaround_s)
        return Turnaround.parse(self.batch_turnaround)


_PATCH = msgspec.json.Decoder(dict[str, Any])


def patched(config: SimConfig, patch: bytes) -> SimConfig:
    """A copy of `config` with the fields of the JSON object `patch` replaced; raises msgspec errors.

    Setting `batch_turnaround_s` without `batch_turnaround` clears the spec, so the last turnaround set wins.
    """
    changes = _PATCH.decode(patch)
    merged = msgspec.structs.asdict(config)
    if "batch_turnaround_s" in changes:
        merged["batch_turnaround"] = None
    merged.update(changes)
    return msgspec.convert(merged, SimConfig)
