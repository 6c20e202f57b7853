"""OpenAI Batch jobs: the time-driven lifecycle, the lines answered as the clock says, the output and error files.

Nothing runs in the background: a job's status, counts and files are computed from the clock whenever it is
read, and lines are answered (by the same functions as the real-time endpoints) as the clock says they finish.
"""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec

from router.simulator import openai_bodies as bodies
from router.simulator import openai_types as wire
from router.simulator import responses
from router.simulator.batch_input import BatchError, CreateBatch, Parsed, check_create, parse_input
from router.simulator.config import SimConfig
from router.simulator.errors import OpenAIError, OpenAIErrorBody, OpenAIErrorEnvelope
from router.simulator.ids import new_id
from router.simulator.outcomes import Outcomes
from router.simulator.schedule import Schedule
from router.simulator.store import FileStore, Stats
from router.simulator.text import PrefixCache

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE = frozenset({"validating", "in_progress", "finalizing"})

Answer = wire.ChatCompletion | wire.Completion | wire.EmbeddingList | wire.ResponseObject


class BatchErrors(msgspec.Struct):
    """The `errors` list of a failed batch."""

    object: str
    data: list[BatchError]


class RequestCounts(msgspec.Struct):
    """`BatchRequestCounts`."""

    total: int
    completed: int
    failed: int


class CachedTokens(msgspec.Struct):
    """`usage.input_tokens_details`."""

    cached_tokens: int


class ReasoningTokens(msgspec.Struct):
    """`usage.output_tokens_details`."""

    reasoning_tokens: int


class BatchUsage(msgspec.Struct, kw_only=True):
    """The Batch object's token totals over its finished lines."""

    input_tokens: int
    input_tokens_details: CachedTokens
    output_tokens: int
    output_tokens_details: ReasoningTokens
    total_tokens: int


class BatchObject(msgspec.Struct, kw_only=True, omit_defaults=True):
    """OpenAI's `Batch`; absent timestamps and file ids are left out rather than sent as null."""

    id: str
    object: str
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class LineResponse(msgspec.Struct):
    """`response` of an output line: the real-time status and body."""

    status_code: int
    request_id: str
    body: Any


class LineError(msgspec.Struct):
    """`error` of a line that never ran (expired, cancelled)."""

    code: str
    message: str


class OutputLine(msgspec.Struct):
    """One line of the output or error file (`BatchRequestOutput`)."""

    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


_ENCODE = msgspec.json.Encoder()
_LINE_FAILURE = OpenAIErrorEnvelope(
    OpenAIErrorBody(
        message="The server had an error while processing your request. Sorry about that!",
        type="server_error",
        param=None,
        code=None,
    )
)
_UNFINISHED = {
    "expired": LineError("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": LineError("batch_cancelled", "This request was cancelled before it could be executed."),
}


def answer(endpoint: str, raw: bytes, cache: PrefixCache, outcomes: Outcomes | None = None) -> Answer:
    """Exactly what the real-time `endpoint` answers for the body `raw` (raising the same errors)."""
    if endpoint == "/v1/chat/completions":
        return bodies.chat_completion(bodies.decode_chat(raw), cache, outcomes)
    if endpoint == "/v1/embeddings":
        return bodies.embeddings(bodies.decode_embedding(raw), cache)
    if endpoint == "/v1/completions":
        return bodies.completion(bodies.decode_completion(raw), cache)
    return responses.response(responses.decode(raw), cache, outcomes)


class BatchJob:
    """One batch: its frozen schedule, its lines in processing order, and what has been answered so far.

    Each line answered 200 is billed into `stats` when it runs, whatever the batch's end (a cancelled or
    expired batch bills its finished lines, as OpenAI does).
    """

    def __init__(
        self,
        req: CreateBatch,
        parsed: Parsed,
        config: SimConfig,
        seq: int,
        now: float,
        stats: Stats,
        outcomes: Outcomes | None = None,
    ) -> None:
        self.id = new_id("batch_")
        self.outcomes = outcomes
        self.stats = stats
        self.endpoint = req.endpoint
        self.input_file_id = req.input_file_id
        self.metadata = req.metadata
        self.model = parsed.model
        self.schedule = Schedule.of(config, now, seq)
        self.errors = parsed.errors
        if config.batch_fail and not self.errors:
            self.errors = [
                BatchError(
                    code="token_limit_exceeded",
                    message=f"Enqueued token limit reached for {self.model} in organization org-sim. "
                    "Limit: 90,000 enqueued tokens. Please try again once some in_progress batches have completed.",
                )
            ]
        # Output order must not be input order (the real API makes no promise): shuffle by seed, never identity.
        rng = random.Random(f"{config.seed}:{seq}")
        lines = [] if self.errors else list(parsed.lines)
        rng.shuffle(lines)
        if len(lines) > 1 and lines == parsed.lines:
            lines.reverse()
        self.lines = lines
        failing = round(config.batch_line_failure_rate * len(lines))
        self.failing = frozenset(rng.sample(range(len(lines)), failing))
        self.cancel_at: float | None = None
        self.results: list[bytes] = []
        self.ok: list[bool] = []
        self.tokens = wire.Tokens()
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.settled = False

    def status(self, now: float) -> str:
        """The status the clock gives at `now`."""
        s = self.schedule
        if self.cancel_at is not None:
            return "cancelled" if now >= self.cancel_at + s.cancel_delay else "cancelling"
        if now < s.started:
            return "validating"
        if self.errors:
            return "failed"
        expires = s.expires
        if expires is not None:
            return "expired" if now >= expires else "in_progress"
        if now < s.finalizing:
            return "in_progress"
        return "finalizing" if now < s.completes else "completed"

    def cancel(self, now: float) -> bool:
        """Start cancelling; False if the batch is already finished (cancelling twice is a no-op)."""
        status = self.status(now)
        if status in ("cancelling", "cancelled"):
            return True
        if status not in CANCELLABLE:
            return False
        self.cancel_at = now
        return True

    def lines_done(self, now: float) -> int:
        """Lines finished by `now`; frozen at the moment of cancellation."""
        at = now if self.cancel_at is None else min(now, self.cancel_at)
        return 0 if self.errors else self.schedule.lines_done(at, len(self.lines))

    def advance(self, now: float, files: FileStore, cache: PrefixCache) -> str:
        """Answer the lines that have finished by `now`, write the files once terminal; returns the status."""
        status = self.status(now)
        for position in range(len(self.results), self.lines_done(now)):
            self._run(position, cache)
        if status in TERMINAL and not self.settled:
            self._settle(status, files)
        return status

    def _run(self, position: int, cache: PrefixCache) -> None:
        custom_id, raw = self.lines[position]
        status_code = 200
        body: Any
        if position in self.failing:
            status_code, body = 500, _LINE_FAILURE
        else:
            try:
                body = answer(self.endpoint, raw, cache, self.outcomes)
            except OpenAIError as exc:
                status_code, body = exc.status, exc.body
            else:
                got = bodies.tokens_of(body)
                t = self.tokens
                t.input_tokens += got.input_tokens
                t.cached_tokens += got.cached_tokens
                t.output_tokens += got.output_tokens
                t.reasoning_tokens += got.reasoning_tokens
                self.stats.billed(custom_id)
        line = OutputLine(
            id=new_id("batch_req_"),
            custom_id=custom_id,
            response=LineResponse(status_code=status_code, request_id=new_id("req_"), body=body),
            error=None,
        )
        self.results.append(_ENCODE.encode(line))
        self.ok.append(status_code == 200)

    def _settle(self, status: str, files: FileStore) -> None:
        self.settled = True
        if status == "failed":
            return
        output = [line for line, ok in zip(self.results, self.ok, strict=True) if ok]
        errors = [line for line, ok in zip(self.results, self.ok, strict=True) if not ok]
        unfinished = _UNFINISHED.get(status)
        if unfinished is not None:
            for custom_id, _ in self.lines[len(self.results) :]:
                line = OutputLine(id=new_id("batch_req_"), custom_id=custom_id, response=None, error=unfinished)
                errors.append(_ENCODE.encode(line))
        if output:
            record = files.add(f"{self.id}_output.jsonl", "batch_output", b"\n".join(output) + b"\n")
            self.output_file_id = record.meta.id
        if errors:
            record = files.add(f"{self.id}_error.jsonl", "batch_output", b"\n".join(errors) + b"\n")
            self.error_file_id = record.meta.id

    def view(self, now: float, files: FileStore, cache: PrefixCache) -> BatchObject:
        """The `Batch` object as of `now` (advancing the job first)."""
        status = self.advance(now, files, cache)
        s = self.schedule
        done = len(self.results)
        completed = sum(self.ok)
        t = self.tokens

        # A phase boundary counts once the clock passed it, unless the batch was cancelled before it.
        def reached(at: float) -> bool:
            return now >= at and (self.cancel_at is None or self.cancel_at >= at)

        started = not self.errors and reached(s.started)
        reached_finalizing = s.expires is None and reached(s.finalizing)
        return BatchObject(
            id=self.id,
            object="batch",
            endpoint=self.endpoint,
            model=self.model,
            errors=BatchErrors("list", self.errors) if self.errors and status == "failed" else None,
            input_file_id=self.input_file_id,
            completion_window="24h",
            status=status,
            output_file_id=self.output_file_id,
            error_file_id=self.error_file_id,
            created_at=int(s.created),
            in_progress_at=int(s.started) if started else None,
            expires_at=int(s.created + s.window),
            finalizing_at=int(s.finalizing) if reached_finalizing else None,
            completed_at=int(s.completes) if status == "completed" else None,
            failed_at=int(s.started) if status == "failed" else None,
            expired_at=int(s.expires) if status == "expired" and s.expires is not None else None,
            cancelling_at=int(self.cancel_at) if self.cancel_at is not None else None,
            cancelled_at=int(self.cancel_at + s.cancel_delay)
            if status == "cancelled" and self.cancel_at is not None
            else None,
            request_counts=RequestCounts(
                total=0 if self.errors else len(self.lines), completed=completed, failed=done - completed
            ),
            usage=BatchUsage(
                input_tokens=t.input_tokens,
                input_tokens_details=CachedTokens(t.cached_tokens),
                output_tokens=t.output_tokens,
                output_tokens_details=ReasoningTokens(t.reasoning_tokens),
                total_tokens=t.input_tokens + t.output_tokens,
            ),
            metadata=self.metadata,
        )


def create(
    req: CreateBatch,
    files: FileStore,
    stats: Stats,
    config: SimConfig,
    seq: int,
    outcomes: Outcomes | None = None,
    *,
    azure: bool = False,
) -> BatchJob:
    """Check and parse a create request into a new job, counting its submission (`azure`: created on Azure's
    surface, whose lines may name their url without `/v1`)."""
    content = check_create(req, files)
    parsed = parse_input(content, req.endpoint, azure=azure)
    stats.batches_created += 1
    stats.azure_batches_created += azure
    stats.submitted(parsed.custom_ids)
    return BatchJob(req, parsed, config, seq, time.time(), stats, outcomes)
