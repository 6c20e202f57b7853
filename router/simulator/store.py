"""In-memory records the simulator keeps: uploaded and generated files, and the counters `/_sim/stats` shows."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

import msgspec

from router.simulator.ids import new_id

FILE_PURPOSES = frozenset(
    {
        "assistants",
        "assistants_output",
        "batch",
        "batch_output",
        "fine-tune",
        "fine-tune-results",
        "vision",
        "user_data",
    }
)
BATCH_FILE_TTL_S = 30 * 24 * 3600
"""`purpose=batch` files expire after 30 days unless `expires_after` says otherwise."""


class FileObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    """OpenAI's `OpenAIFile`."""

    id: str
    object: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: str


class FileRecord:
    """One stored file: its metadata and its bytes."""

    __slots__ = ("content", "meta")

    def __init__(self, meta: FileObject, content: bytes) -> None:
        self.meta = meta
        self.content = content


class FileStore:
    """Files by id, in upload order."""

    def __init__(self) -> None:
        self._files: dict[str, FileRecord] = {}

    def add(self, filename: str, purpose: str, content: bytes, expires_after_s: int | None = None) -> FileRecord:
        """Store `content` under a fresh `file-…` id."""
        now = int(time.time())
        if expires_after_s is None and purpose == "batch":
            expires_after_s = BATCH_FILE_TTL_S
        meta = FileObject(
            id=new_id("file-"),
            object="file",
            bytes=len(content),
            created_at=now,
            expires_at=now + expires_after_s if expires_after_s is not None else None,
            filename=filename,
            purpose=purpose,
            status="processed",
        )
        record = FileRecord(meta, content)
        self._files[meta.id] = record
        return record

    def get(self, file_id: str) -> FileRecord | None:
        """The file, or None."""
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Remove the file; False if there was none."""
        return self._files.pop(file_id, None) is not None

    def all(self) -> list[FileRecord]:
        """Every file, oldest first."""
        return list(self._files.values())


class StatsView(msgspec.Struct, kw_only=True):
    """The JSON of `GET /_sim/stats`.

    `batch_lines_submitted` and `max_submissions_per_custom_id` cover both APIs (OpenAI batch lines and
    Anthropic batch requests, counted at creation, including batches that later fail validation);
    `batches_cancelled` counts cancels of either kind; `message_batch_requests_submitted` is the Anthropic part;
    `azure_batches_created` counts the batches created on Azure's surface (`/openai/batches`), `azure_requests`
    the requests Azure's surface accepted, by the OpenAI path they stand for (`/v1/chat/completions`);
    `open_streams` is the number of SSE answers still being sent; `cancelled_calls` counts real-time calls whose
    client went away before the answer was complete.

    What a provider would charge for: `realtime_calls_billed` counts real-time calls answered 200 (a stream cut
    short included); `batch_lines_billed` counts batch lines of either API that ran and succeeded (OpenAI status
    200, Anthropic `succeeded`), in cancelled and expired batches too, with the Anthropic part in
    `message_batch_requests_billed` and the count per custom_id in `batch_lines_billed_by_custom_id`. Batches
    are brought up to the clock before the counts are read.
    """

    realtime_calls: dict[str, int]
    open_streams: int
    cancelled_calls: int
    errors_injected: int
    batches_created: int
    azure_batches_created: int
    azure_requests: dict[str, int]
    batch_lines_submitted: int
    max_submissions_per_custom_id: int
    files_uploaded: int
    message_batches_created: int
    message_batch_requests_submitted: int
    batches_cancelled: int
    realtime_calls_billed: int
    batch_lines_billed: int
    message_batch_requests_billed: int
    batch_lines_billed_by_custom_id: dict[str, int]
    anthropic_usage: dict[str, int]
    prompt_cache_keys: dict[str, int]
    """Real-time chat calls per `prompt_cache_key` they carried."""
    """Anthropic input tokens billed, real time and Message Batches: `input_tokens` (uncached),
    `cache_creation_input_tokens` (written), `cache_read_input_tokens` (read)."""


class Stats:
    """Counters for tests and benchmarks; `submissions` counts every custom_id across all batches of both APIs."""

    def __init__(self) -> None:
        self.realtime_calls: Counter[str] = Counter()
        self.open_streams = 0
        self.cancelled_calls = 0
        self.errors_injected = 0
        self.batches_created = 0
        self.azure_batches_created = 0
        self.azure_requests: Counter[str] = Counter()
        self.batch_lines_submitted = 0
        self.files_uploaded = 0
        self.message_batches_created = 0
        self.message_batch_requests_submitted = 0
        self.batches_cancelled = 0
        self.submissions: Counter[str] = Counter()
        self.max_submissions = 0
        self.realtime_calls_billed = 0
        self.batch_lines_billed = 0
        self.message_batch_requests_billed = 0
        self.billed_by_custom_id: Counter[str] = Counter()
        self.anthropic_usage: Counter[str] = Counter()
        self.prompt_cache_keys: Counter[str] = Counter()

    def submitted(self, custom_ids: Iterable[str]) -> None:
        """Count one submission of each custom_id (a line of any batch, OpenAI or Anthropic)."""
        submissions = self.submissions
        for custom_id in custom_ids:
            submissions[custom_id] += 1
            self.batch_lines_submitted += 1
            self.max_submissions = max(self.max_submissions, submissions[custom_id])

    def billed(self, custom_id: str, *, anthropic: bool = False) -> None:
        """Count one batch line the provider ran and would charge for."""
        self.batch_lines_billed += 1
        if anthropic:
            self.message_batch_requests_billed += 1
        self.billed_by_custom_id[custom_id] += 1

    def billed_usage(self, usage: object) -> None:
        """Add an Anthropic answer's input tokens to what was billed."""
        for field in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            self.anthropic_usage[field] += getattr(usage, field)

    def view(self) -> StatsView:
        """A snapshot for the wire."""
        return StatsView(
            realtime_calls=dict(self.realtime_calls),
            open_streams=self.open_streams,
            cancelled_calls=self.cancelled_calls,
            errors_injected=self.errors_injected,
            batches_created=self.batches_created,
            azure_batches_created=self.azure_batches_created,
            azure_requests=dict(self.azure_requests),
            batch_lines_submitted=self.batch_lines_submitted,
            max_submissions_per_custom_id=self.max_submissions,
            files_uploaded=self.files_uploaded,
            message_batches_created=self.message_batches_created,
            message_batch_requests_submitted=self.message_batch_requests_submitted,
            batches_cancelled=self.batches_cancelled,
            realtime_calls_billed=self.realtime_calls_billed,
            batch_lines_billed=self.batch_lines_billed,
            message_batch_requests_billed=self.message_batch_requests_billed,
            batch_lines_billed_by_custom_id=dict(self.billed_by_custom_id),
            anthropic_usage=dict(self.anthropic_usage),
            prompt_cache_keys=dict(self.prompt_cache_keys),
        )
