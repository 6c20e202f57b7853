"""The states a deferred call and a batch of ours go through, and what `ENQUEUE` and `STORE_RESULT` answer.

The Lua scripts in `deferred/store/scripts.py` take these values from here (`${CALL_QUEUED}` in their source);
`tests/test_scripts.py` checks that every state they write or compare is a member here, and the reverse.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class CallState(StrEnum):
    """A deferred call's `state` field: queued → submitted (in a batch) or escalated (real time) → done."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    ESCALATED = "escalated"
    DONE = "done"


class BatchState(StrEnum):
    """A batch's `state` field: building (claimed, being uploaded) → submitted (at the provider) → ingested."""

    BUILDING = "building"
    SUBMITTED = "submitted"
    INGESTED = "ingested"


class EnqueueOutcome(StrEnum):
    """What `ENQUEUE` answers (a full set of queues refuses the call before, with `QueuesFull`)."""

    NEW = "new"
    """Queued as a new call."""
    ATTACHED = "attached"
    """Attached to the live call this request repeats (by Idempotency-Key, or an identical orphaned call)."""
    REUSED = "reused"
    """The Idempotency-Key belongs to a call with another body: nothing is stored."""
    OVER_LIMIT = "over_limit"
    """`attach_only` and nothing to attach to: nothing is stored."""


class StoreOutcome(IntEnum):
    """What `STORE_RESULT` returns."""

    UNKNOWN = -1
    """No such call (expired, or never stored)."""
    LATE = 0
    """The call ended another way or moved on: this result is not stored (a late batch result)."""
    STORED = 1
    """Stored now, and booked in the tenant's totals."""
    REPEATED = 2
    """This very batch result was stored before (the batch is being ingested again after a crash)."""
