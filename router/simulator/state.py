"""Everything one simulator instance remembers; `reset()` forgets it all but the config."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from router.simulator.background import Background
from router.simulator.config import SimConfig
from router.simulator.outcomes import Outcomes
from router.simulator.store import FileStore, Stats
from router.simulator.text import BreakpointCache, PrefixCache

if TYPE_CHECKING:
    from router.simulator.batches import BatchJob
    from router.simulator.message_batches import MessageBatchJob

INJECTED_STATUSES = (429, 500)


class SimState:
    """The live config, counters, files, batches and prompt cache of one simulator app."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.outcomes = Outcomes.load(Path(config.outcomes)) if config.outcomes else None
        self.reset()

    def reset(self) -> None:
        """Clear all state and counters; the config stays."""
        self.stats = Stats()
        self.files = FileStore()
        self.cache = PrefixCache()
        self.anthropic_cache = BreakpointCache()
        self.batches: dict[str, BatchJob] = {}
        self.message_batches: dict[str, MessageBatchJob] = {}
        self.batch_seq = 0
        self.background = Background()
        self._rng = random.Random(self.config.seed)
        self._injected = 0

    def set_config(self, config: SimConfig) -> None:
        """Replace the live config; error injection restarts from the (possibly new) seed."""
        if config.outcomes != self.config.outcomes:
            self.outcomes = Outcomes.load(Path(config.outcomes)) if config.outcomes else None
        self.config = config
        self._rng = random.Random(config.seed)
        self._injected = 0

    def next_batch_seq(self) -> int:
        """A per-instance sequence number that, with the seed, makes each batch's shuffles reproducible."""
        self.batch_seq += 1
        return self.batch_seq

    def advance_batches(self) -> None:
        """Bring every batch of both APIs up to the clock, so the lines they finished by now are run and billed."""
        now = time.time()
        for job in self.batches.values():
            job.advance(now, self.files, self.cache)
        for message_job in self.message_batches.values():
            message_job.advance(now)

    def injected_error(self) -> int | None:
        """The status to inject for this real-time call (429 and 500 alternate), or None; driven by `error_rate`."""
        rate = self.config.error_rate
        if rate <= 0 or (rate < 1 and self._rng.random() >= rate):
            return None
        status = INJECTED_STATUSES[self._injected % len(INJECTED_STATUSES)]
        self._injected += 1
        return status
