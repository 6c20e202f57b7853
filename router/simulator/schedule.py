"""A batch's timeline: when it starts, how much of it is done at any moment, and when it ends."""

from __future__ import annotations

import math

import msgspec

from router.simulator.config import SimConfig

VALIDATING_SHARE = 0.1
"""Share of the turnaround spent `validating` (OpenAI) before lines start."""
FINALIZING_SHARE = 0.2
"""Share of the turnaround spent `finalizing` (OpenAI) after the last line."""


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """The knobs in force when a batch was created, frozen so later config changes leave it alone."""

    created: float
    turnaround: float
    expire_after: float | None
    done_fraction: float
    cancel_delay: float

    @classmethod
    def of(cls, config: SimConfig, created: float) -> Schedule:
        """The schedule a batch created now gets; `batch_expire_s` only counts when shorter than the turnaround."""
        expire = config.batch_expire_s
        return cls(
            created=created,
            turnaround=config.batch_turnaround_s,
            expire_after=expire if expire is not None and expire < config.batch_turnaround_s else None,
            done_fraction=config.batch_expire_done_fraction,
            cancel_delay=config.batch_cancel_delay_s,
        )

    @property
    def started(self) -> float:
        """When validation ends and lines start running."""
        return self.created + VALIDATING_SHARE * self.turnaround

    @property
    def finalizing(self) -> float:
        """When the last line is done (OpenAI moves to `finalizing`)."""
        return self.created + (1 - FINALIZING_SHARE) * self.turnaround

    @property
    def completes(self) -> float:
        """When a batch that neither expires nor is cancelled is finished."""
        return self.created + self.turnaround

    @property
    def expires(self) -> float | None:
        """When the batch expires, if it does (never before validation has ended)."""
        return None if self.expire_after is None else max(self.created + self.expire_after, self.started)

    def fraction_done(self, at: float) -> float:
        """Share of lines finished by `at`: linear while running, capped at `done_fraction` if it expires."""
        expires = self.expires
        if expires is not None:
            span = expires - self.started
            return self.done_fraction * (_clamp((at - self.started) / span) if span > 0 else 1.0)
        span = self.finalizing - self.started
        return _clamp((at - self.started) / span) if span > 0 else float(at >= self.started)

    def lines_done(self, at: float, total: int) -> int:
        """Lines finished by `at`, out of `total`."""
        return min(total, math.floor(self.fraction_done(at) * total + 1e-9))


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))
