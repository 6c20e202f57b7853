"""The states a deferred call and a batch of ours go through, and what `STORE_RESULT` answers.

The Lua scripts in `scripts.py` write and compare the same values as string literals;
`tests/test_scripts.py` checks that every literal they use is a member here, and the reverse.
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
