"""The one seam between the router and a provider: what every adapter offers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Literal, ParamSpec, Protocol, TypeVar

import msgspec

BatchProgress = Literal["running", "ended", "failed", "missing"]
"""Where a provider batch stands, in the router's words (our own batches' states are `core.states.BatchState`)."""
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Upstream answers that mean "not now": the call was not run (nor billed), so sending it again is safe."""
ANTHROPIC_ENDPOINTS = frozenset({"/messages", "/messages/count_tokens"})
"""Endpoints of Anthropic's own API: only an Anthropic upstream serves them, untranslated."""


OFF_LOOP_BYTES = 1 << 20
"""Work over this many bytes (encoding a batch file, say) runs in a worker thread: 200 MB inline would stall
every request the process serves for a fraction of a second."""

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(size: int, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args, **kwargs)`, in a worker thread when `size` bytes are over `OFF_LOOP_BYTES`, else inline."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter, capped at 8 s."""
    return min(8.0, 0.25 * 2.0**attempt) * (0.5 + random.random() / 2)


def retry_after_s(headers: Iterable[tuple[str, str]]) -> float | None:
    """Seconds from a `Retry-After` (or OpenAI's `retry-after-ms`) header, if present and numeric."""
    found = {name.lower(): value for name, value in headers}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        if value := found.get(name):
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                continue
    return None


class UpstreamResponse(msgspec.Struct, kw_only=True):
    """An upstream answer: a full body, or a byte stream the caller must drain or close."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    close: Callable[[], Awaitable[None]] | None = None
    elapsed: float = 0.0


class BatchLine(msgspec.Struct, kw_only=True):
    """One call of a batch, in the provider-neutral form the batcher hands over."""

    custom_id: str
    body: bytes
    endpoint: str = ""
    """The endpoint the caller used, when it differs from the batch's (`/messages` in a chat-completions
    queue: its body is the provider's own request, sent untranslated); empty means the batch's."""


class BatchStatus(msgspec.Struct, kw_only=True):
    """Where a provider batch stands, in the router's words."""

    state: BatchProgress
    provider_status: str
    output_ref: str | None = None
    error_ref: str | None = None
    message: str | None = None


class LineResult(msgspec.Struct, kw_only=True):
    """The outcome of one line: an HTTP status and body; status 0 means the provider never ran it."""

    custom_id: str
    status: int
    body: bytes
    billed: bool


class Rival(msgspec.Struct, frozen=True, kw_only=True):
    """Another batch still being built: it may have created a provider batch that it has not recorded yet."""

    claimed_at: float
    requests: int
    live: bool
    """Its lease holds: its builder may record (or be creating) a provider batch any moment."""


class Ledger(msgspec.Struct, frozen=True, kw_only=True):
    """What the router accounts for, read after the provider's batches were listed (so none listed is missed)."""

    recorded: frozenset[str]
    """Provider batch ids the router has recorded, among those asked about."""
    rivals: Sequence[Rival]


class Lapsed(msgspec.Struct, frozen=True, kw_only=True):
    """A batch whose builder lost its lease before recording the provider's id: what recovery knows of it."""

    batch_id: str
    claimed_at: float
    """When its calls were claimed; the provider created nothing for it before."""
    lapsed_at: float
    """When recovery first found the builder's lease lapsed; a dead builder created nothing much later."""
    custom_ids: frozenset[str]
    lines: Sequence[BatchLine]
    """The claimed calls that still have a body (a call answered meanwhile has none)."""
    ledger: Callable[[Sequence[str]], Awaitable[Ledger]]
    """Asks the router which of these provider ids it has recorded, and which other batches are being built."""


class Found(msgspec.Struct, frozen=True, kw_only=True):
    """Recovery's answer: the provider batch to record, or `wait` to look again later, or neither (submit again)."""

    provider_id: str | None = None
    wait: bool = False


class Provider(Protocol):
    """An upstream adapter; adding a provider touches `providers/` and config only."""

    name: str
    kind: str

    async def forward(
        self, endpoint: str, body: bytes, *, stream: bool, headers: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """Send one real-time call, retrying only what is safe; raise UpstreamUnavailable/Timeout."""
        ...

    def check(self, endpoint: str, body: bytes) -> None:
        """Raise the error real time would answer if this adapter cannot serve the call (endpoint, parameters),
        so a deferred call is refused at admission, not when its batch is built."""
        ...

    async def get(self, path: str) -> UpstreamResponse:
        """A GET on the upstream API (e.g. `/models`)."""
        ...

    async def ping(self) -> bool:
        """Whether the upstream answers at all."""
        ...

    async def submit_batch(self, batch_id: str, endpoint: str, model: str, lines: Sequence[BatchLine]) -> str:
        """Create a provider batch from `lines` with our `batch_id` in its metadata; return the provider's id."""
        ...

    async def find_batch(self, lapsed: Lapsed) -> Found:
        """The provider batch a crashed builder created for `lapsed`, if it can be told (crash recovery)."""
        ...

    async def poll(self, provider_batch_id: str) -> BatchStatus:
        """The batch's current state."""
        ...

    def results(self, status: BatchStatus) -> AsyncIterator[LineResult]:
        """Stream every line's outcome of a finished batch (output and error files)."""
        ...

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask the provider to cancel a batch."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...
