"""Crash recovery for Message Batches, which carry no metadata: which listed batch a crashed builder created.

The listing's shape, the candidates (unrecorded batches whose size and age fit the lapsed batch) and the verdict on
them under the upstream's `orphan_policy` (see docs/anthropic.md); the adapter does the reading and the cancelling.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from router.core.settings import OrphanPolicy
from router.providers.base import Rival

SKEW_S = 10.0
"""Crash recovery's slack on times: how far Anthropic's clock (`created_at`) and ours may differ, and how late the
create call of a builder that was losing its lease may still land."""
LIST_LIMIT = 1000  # the largest page Anthropic serves
MAX_LIST_PAGES = 100


class Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class ListedBatch(msgspec.Struct):
    id: str
    processing_status: str
    created_at: datetime
    request_counts: Counts


class BatchPage(msgspec.Struct):
    data: list[ListedBatch]
    has_more: bool = False
    last_id: str | None = None


class CustomId(msgspec.Struct):
    custom_id: str


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    """An unrecorded Message Batch, still running, whose size and age fit a batch whose builder crashed."""

    id: str
    created_at: float
    requests: int
    canceling: bool = False


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What recovery does with the candidates: adopt one, or cancel some (then submit again), or wait for more."""

    adopt: str | None = None
    cancel: tuple[str, ...] = ()
    wait: bool = False


def claimable(candidate: Candidate, rival: Rival) -> bool:
    """Whether another batch being built could have created `candidate` (its claim came first, it is big enough)."""
    return candidate.requests <= rival.requests and candidate.created_at >= rival.claimed_at - SKEW_S


def judge(policy: OrphanPolicy, running: Sequence[Candidate], rivals: Sequence[Rival], complete: bool) -> Verdict:
    """Decide on the running candidates of one lapsed batch (those already ended were told apart by their results).

    Count and time alone adopt only the one candidate no other batch being built could have created, and only when
    the listing covered the whole window. Otherwise `adopt` waits (the candidates end within 24 h and their results
    name their calls); the cancel policies cancel every candidate no live builder may be about to record, and
    submit again (lines that ran before the cancel are paid twice).
    """
    if not running:
        return Verdict()
    contested = [c for c in running if any(claimable(c, r) for r in rivals)]
    if policy != "cancel" and complete and len(running) == 1 and not contested:
        return Verdict(adopt=running[0].id)
    if policy == "adopt":
        return Verdict(wait=True)
    spared = {c.id for c in running if any(claimable(c, r) for r in rivals if r.live)}
    return Verdict(cancel=tuple(c.id for c in running if c.id not in spared and not c.canceling))


def size(batch: ListedBatch) -> int:
    counts = batch.request_counts
    return counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired


page_decoder = msgspec.json.Decoder(BatchPage)
custom_id_decoder = msgspec.json.Decoder(CustomId)
