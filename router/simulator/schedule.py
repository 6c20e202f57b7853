"""A batch's timeline: how long it takes, when it starts, how much of it is done at any moment, and when it ends."""

from __future__ import annotations

import math
import random

import msgspec

from router.simulator.config import SimConfig

VALIDATING_SHARE = 0.1
"""Share of the turnaround spent `validating` (OpenAI) before lines start."""
FINALIZING_SHARE = 0.2
"""Share of the turnaround spent `finalizing` (OpenAI) after the last line."""


def drawn_turnaround(config: SimConfig, seq: int) -> float:
    """The duration of the `seq`-th batch: a draw from the configured `Turnaround`, reproducible from the seed."""
    return config.turnaround().draw(random.Random(f"{config.seed}:{seq}:turnaround"))


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """The knobs in force when a batch was created, frozen so later config changes leave it alone.

    Lines finish at an even pace from `started` to `finalizing`. A batch expires either by the
    `batch_expire_s` knob (`done_fraction` set: that share of the lines done by then) or because its
    drawn `turnaround` overran the `window` (`done_fraction` None: the lines done by the pace so far).
    """

    created: float
    turnaround: float
    window: float
    expire_after: float | None
    done_fraction: float | None
    cancel_delay: float

    @classmethod
    def of(cls, config: SimConfig, created: float, seq: int) -> Schedule:
        """The schedule the `seq`-th batch, created now, gets; `batch_expire_s` only counts when it comes first."""
        turnaround = drawn_turnaround(config, seq)
        window = config.turnaround().max
        knob = config.batch_expire_s
        expire_after: float | None = None
        done_fraction: float | None = None
        if knob is not None and knob < turnaround and knob <= window:
            expire_after, done_fraction = knob, config.batch_expire_done_fraction
        elif turnaround > window:
            expire_after = window
        return cls(
            created=created,
            turnaround=turnaround,
            window=window,
            expire_after=expire_after,
            done_fraction=done_fraction,
            cancel_delay=config.batch_cancel_delay_s,
        )

    @property
    def started(self) -> float:
        """When validation ends and lines start running (always within the window)."""
        return self.created + self._start

    @property
    def finalizing(self) -> float:
        """When the last line is done (OpenAI moves to `finalizing`), had the batch not expired first."""
        return self.created + self._finish

    @property
    def completes(self) -> float:
        """When a batch that neither expires nor is cancelled is finished."""
        return self.created + self.turnaround

    @property
    def expires(self) -> float | None:
        """When the batch expires, if it does (never before validation has ended)."""
        return None if self.expire_after is None else self.created + max(self.expire_after, self._start)

    def fraction_done(self, at: float) -> float:
        """Share of lines finished by `at`: linear while running, stopped at expiry (see the class docstring).

        Worked out in seconds since creation, and from the expiry offset itself once past it, so the share
        at expiry is exact rather than blurred by the rounding of absolute clock times.
        """
        elapsed, start = at - self.created, self._start
        if self.expire_after is not None:
            end = max(self.expire_after, start)
            if self.done_fraction is not None:
                span = end - start
                return self.done_fraction * (_clamp((elapsed - start) / span) if span > 0 else 1.0)
            elapsed = min(elapsed, end)
        span = self._finish - start
        return _clamp((elapsed - start) / span) if span > 0 else float(elapsed >= start)

    @property
    def _start(self) -> float:
        return VALIDATING_SHARE * min(self.turnaround, self.window)

    @property
    def _finish(self) -> float:
        return (1 - FINALIZING_SHARE) * self.turnaround

    def lines_done(self, at: float, total: int) -> int:
        """Lines finished by `at`, out of `total`."""
        return min(total, math.floor(self.fraction_done(at) * total + 1e-9))


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))
