"""Anthropic Message Batches: create-time validation, the time-driven lifecycle, and the results JSONL."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from router.simulator import anthropic_bodies as bodies
from router.simulator.config import SimConfig
from router.simulator.errors import AnthropicError
from router.simulator.ids import new_id
from router.simulator.outcomes import Outcomes
from router.simulator.schedule import Schedule
from router.simulator.store import Stats
from router.simulator.text import BreakpointCache

MAX_REQUESTS = 100_000
MAX_LIST_LIMIT = 1000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class BatchRequest(msgspec.Struct):
    """One entry of `requests`: params stay raw, as the real API validates them only when it runs them."""

    custom_id: str
    params: msgspec.Raw


class CreateMessageBatch(msgspec.Struct):
    """The body of `POST /v1/messages/batches`."""

    requests: Annotated[list[BatchRequest], msgspec.Meta(min_length=1, max_length=MAX_REQUESTS)]


class RequestCounts(msgspec.Struct, kw_only=True):
    """`MessageBatchRequestCounts`: all but `processing` stay 0 until the batch ends."""

    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class MessageBatchObject(msgspec.Struct, kw_only=True):
    """The `MessageBatch` object."""

    id: str
    type: str = "message_batch"
    processing_status: str
    request_counts: RequestCounts
    ended_at: str | None
    created_at: str
    expires_at: str
    archived_at: str | None = None
    cancel_initiated_at: str | None
    results_url: str | None


class DeletedMessageBatch(msgspec.Struct, kw_only=True):
    """The answer to `DELETE /v1/messages/batches/{id}`."""

    id: str
    type: str = "message_batch_deleted"


_CREATE = msgspec.json.Decoder(CreateMessageBatch)
_ENCODE = msgspec.json.Encoder()
_LINE_FAILURE = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}


def rfc3339(t: float) -> str:
    """`t` as an RFC 3339 UTC timestamp with microseconds, as the Anthropic API writes them."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def decode_create(raw: bytes) -> CreateMessageBatch:
    """The create body, checked the way the API checks it synchronously (ids, duplicates, count)."""
    try:
        req = _CREATE.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise bodies.invalid_params(exc) from exc
    seen: set[str] = set()
    for index, item in enumerate(req.requests):
        if not CUSTOM_ID.match(item.custom_id):
            raise AnthropicError(
                400,
                "invalid_request_error",
                f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
            )
        if item.custom_id in seen:
            raise AnthropicError(
                400, "invalid_request_error", f"requests.{index}.custom_id: duplicate custom_id {item.custom_id!r}"
            )
        if not bytes(item.params).lstrip().startswith(b"{"):
            raise AnthropicError(400, "invalid_request_error", f"requests.{index}.params: Input should be an object")
        seen.add(item.custom_id)
    return req


class MessageBatchJob:
    """One Message Batch: its frozen schedule, its requests in processing order, its results once ended.

    Requests run as the clock says (as OpenAI lines do) and each `succeeded` one is billed into `stats` then,
    but the counts and the results file only show once the batch has ended, as the real API does.
    """

    def __init__(
        self,
        req: CreateMessageBatch,
        config: SimConfig,
        seq: int,
        now: float,
        stats: Stats,
        outcomes: Outcomes | None = None,
        cache: BreakpointCache | None = None,
    ) -> None:
        self.id = new_id("msgbatch_")
        self.cache = cache
        self.outcomes = outcomes
        self.stats = stats
        self.schedule = Schedule.of(config, now, seq)
        rng = random.Random(f"{config.seed}:{seq}")
        requests = [(item.custom_id, item.params) for item in req.requests]
        order = list(requests)
        rng.shuffle(order)
        if len(order) > 1 and order == requests:  # results are never in request order
            order.reverse()
        self.requests = order
        self.failing = frozenset(rng.sample(range(len(order)), round(config.batch_line_failure_rate * len(order))))
        self.fail_all = config.batch_fail
        self.cancel_at: float | None = None
        self.done: list[dict[str, Any]] = []
        self.results: bytes | None = None
        self.counts = RequestCounts(processing=len(order), succeeded=0, errored=0, canceled=0, expired=0)
        self.deleted = False  # kept as a tombstone, so its id still works as a list cursor

    def ends(self) -> float:
        """When processing ends: after cancelling, at expiry, or at the turnaround."""
        s = self.schedule
        if self.cancel_at is not None:
            return self.cancel_at + s.cancel_delay
        expires = s.expires
        return expires if expires is not None else s.completes

    def status(self, now: float) -> str:
        """`in_progress`, `canceling` or `ended` at `now`."""
        if now >= self.ends():
            return "ended"
        return "in_progress" if self.cancel_at is None else "canceling"

    def cancel(self, now: float) -> bool:
        """Start cancelling; False once ended (cancelling twice is a no-op)."""
        status = self.status(now)
        if status == "in_progress":
            self.cancel_at = now
        return status != "ended"

    def lines_done(self, now: float) -> int:
        """Requests finished by `now`; frozen at the moment of cancellation, and at expiry by the schedule."""
        at = now if self.cancel_at is None else min(now, self.cancel_at)
        return self.schedule.lines_done(at, len(self.requests))

    def advance(self, now: float) -> str:
        """Run the requests that have finished by `now`, build the results once ended; returns the status."""
        status = self.status(now)
        for position in range(len(self.done), self.lines_done(now)):
            custom_id, params = self.requests[position]
            result = self._run(position, params)
            if result["type"] == "succeeded":
                self.stats.billed(custom_id, anthropic=True)
            self.done.append(result)
        if status == "ended" and self.results is None:
            self._finish()
        return status

    def _finish(self) -> None:
        rest = {"type": "canceled" if self.cancel_at is not None else "expired"}
        counts = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for position, (custom_id, _) in enumerate(self.requests):
            result = self.done[position] if position < len(self.done) else rest
            counts[result["type"]] += 1
            lines.append(_ENCODE.encode({"custom_id": custom_id, "result": result}))
        self.results = b"\n".join(lines) + b"\n"
        self.counts = RequestCounts(processing=0, **counts)

    def _run(self, position: int, params: msgspec.Raw) -> dict[str, Any]:
        if position in self.failing:
            return {"type": "errored", "error": _LINE_FAILURE}
        if self.fail_all:
            return _errored(AnthropicError(400, "invalid_request_error", "Simulated validation failure (batch_fail)."))
        try:
            req = bodies.decode_params(params)
            if req.stream:
                return _errored(AnthropicError(400, "invalid_request_error", "stream: not supported in batches"))
            if req.speed is not None:
                return _errored(AnthropicError(400, "invalid_request_error", "speed: not supported in batches"))
            answer = bodies.message(req, service_tier="batch", outcomes=self.outcomes, cache=self.cache)
            self.stats.billed_usage(answer.usage)
            return {"type": "succeeded", "message": answer}
        except AnthropicError as exc:
            return _errored(exc)

    def view(self, now: float, base_url: str) -> MessageBatchObject:
        """The `MessageBatch` object as of `now`; `results_url` is absolute, built on `base_url`."""
        status = self.advance(now)
        s = self.schedule
        ended = status == "ended"
        return MessageBatchObject(
            id=self.id,
            processing_status=status,
            request_counts=self.counts,
            ended_at=rfc3339(self.ends()) if ended else None,
            created_at=rfc3339(s.created),
            expires_at=rfc3339(s.created + s.window),
            cancel_initiated_at=rfc3339(self.cancel_at) if self.cancel_at is not None else None,
            results_url=f"{base_url.rstrip('/')}/v1/messages/batches/{self.id}/results" if ended else None,
        )


def list_page(
    jobs: Sequence[MessageBatchJob], limit: str, after_id: str | None, before_id: str | None
) -> tuple[list[MessageBatchJob], bool]:
    """One page of `GET /v1/messages/batches` from the jobs in creation order, and its `has_more`.

    As documented: newest first; `limit` 1 to 1000 (default 20); `after_id` gives the page right after that batch
    (older ones), `before_id` the page right before it (newer ones, still newest first); `has_more` says whether
    more lie in that direction. A deleted batch's id still works as a cursor. Undocumented, so chosen here: both
    cursors at once, or an id this API never issued, is a 400.
    """
    size = int(limit) if limit.isdigit() else 0
    if not 1 <= size <= MAX_LIST_LIMIT:
        raise AnthropicError(400, "invalid_request_error", f"limit: must be between 1 and {MAX_LIST_LIMIT}")
    if after_id and before_id:
        raise AnthropicError(400, "invalid_request_error", "Only one of after_id and before_id may be given.")
    newest_first = list(reversed(jobs))
    position = {job.id: i for i, job in enumerate(newest_first)}
    cursor = after_id or before_id
    if cursor and cursor not in position:
        param = "after_id" if after_id else "before_id"
        raise AnthropicError(400, "invalid_request_error", f"{param}: no Message Batch has the id {cursor!r}")
    if before_id:
        newer = [job for job in newest_first[: position[before_id]] if not job.deleted]
        return newer[-size:], len(newer) > size
    older = [job for job in newest_first[position[after_id] + 1 if after_id else 0 :] if not job.deleted]
    return older[:size], len(older) > size


def _errored(exc: AnthropicError) -> dict[str, Any]:
    return {"type": "errored", "error": exc.body}


def create(
    raw: bytes,
    stats: Stats,
    config: SimConfig,
    seq: int,
    outcomes: Outcomes | None = None,
    cache: BreakpointCache | None = None,
) -> MessageBatchJob:
    """Validate a create body into a new job, counting its submission."""
    req = decode_create(raw)
    stats.message_batches_created += 1
    stats.message_batch_requests_submitted += len(req.requests)
    stats.submitted(item.custom_id for item in req.requests)
    return MessageBatchJob(req, config, seq, time.time(), stats, outcomes, cache)
