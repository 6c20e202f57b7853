"""The native Batch API's state and loop: which tenant owns which file and batch, and each batch's usage booked
once, at the batch rate, when it ends (lane `native` in the metrics and `/v1/usage`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

from router.core.errors import UpstreamError
from router.core.keys import NATIVE_BATCH_TTL_S, NATIVE_FILE_TTL_S, TOTALS_TTL_S, Keys
from router.core.lanes import Origin
from router.deferred.loops import pace
from router.deferred.store.leases import LeaseLost, while_leased
from router.deferred.store.records import text
from router.deferred.store.scripts import Scripts
from router.telemetry.accounting import Priced

if TYPE_CHECKING:
    from router.core.settings import BatchSettings
    from router.deferred.store.client import RedisClient
    from router.deferred.store.leases import Leases
    from router.providers.base import UpstreamResponse
    from router.telemetry.accounting import Accounting

log = logging.getLogger(__name__)
Kind = Literal["file", "batch"]
Settle = Callable[[str, str, float], Awaitable[None]]
"""(tenant, reservation id, cost) → the reservation ended with that cost."""
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_POLL_INTERVAL_S = 600.0
BOOK_CHUNK = 256  # result lines booked per script run
PAGE_WINDOW = 200  # list entries read per round trip while filtering a page


class NativeUpstream(Protocol):
    """The Files and Batches API of one upstream (`providers.openai_native.OpenAINative`)."""

    name: str

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """One request with a JSON body (or none); the whole answer, whatever its status."""
        ...

    async def upload(self, chunks: AsyncIterable[bytes], headers: Mapping[str, str]) -> UpstreamResponse:
        """`POST /files`, the body streamed through."""
        ...

    async def download(self, path: str) -> UpstreamResponse:
        """A GET whose 200 body is a stream."""
        ...

    async def fetch(self, path: str) -> bytes | None:
        """A GET's JSON body, None on a 404."""
        ...

    def file_lines(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The non-empty lines of a file's content."""
        ...


class FileView(msgspec.Struct):
    """What the router keeps of an `OpenAIFile`."""

    id: str
    created_at: int = 0
    expires_at: int | None = None
    purpose: str = ""


class BatchView(msgspec.Struct):
    """What the router reads of a `Batch`."""

    id: str
    status: str
    created_at: int = 0
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed_at: int | None = None
    cancelled_at: int | None = None
    expired_at: int | None = None
    failed_at: int | None = None

    def ended_at(self) -> float:
        """When the batch ended (now if it did not say)."""
        return float(self.completed_at or self.cancelled_at or self.expired_at or self.failed_at or time.time())


class Owned(msgspec.Struct, frozen=True):
    """A file or batch a tenant owns: the upstream it lives on and the last object seen of it."""

    id: str
    upstream: str
    object: bytes
    purpose: str = ""
    booked: bool = False
    outputs: bool = False
    polls: int = 0
    batch: str = ""
    """For an output or error file: the batch it came from."""


class _LineResponse(msgspec.Struct):
    status_code: int
    body: msgspec.Raw = msgspec.Raw(b"null")


class _Line(msgspec.Struct):
    custom_id: str
    response: _LineResponse | None = None


class _Model(msgspec.Struct):
    model: str | None = None


file_decoder = msgspec.json.Decoder(FileView)
batch_decoder = msgspec.json.Decoder(BatchView)
_line_decoder = msgspec.json.Decoder(_Line)
_model_decoder = msgspec.json.Decoder(_Model)
_FIELDS = ["upstream", "object", "purpose", "booked", "outputs", "polls", "batch"]


class NativeStore:
    """Every Redis operation of the native Batch API, one tenant's keys under one hash tag."""

    def __init__(self, redis: RedisClient, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._scripts = Scripts(redis, self.keys)

    async def record(
        self, tenant: str, kind: Kind, object_id: str, created_at: int, until: float, **fields: str | bytes
    ) -> None:
        """The tenant owns this file or batch until `until` (epoch seconds): its hash and its list entry."""
        await self._scripts.native_record(
            tenant=tenant,
            kind=kind,
            object_id=object_id,
            created_at=created_at,
            expire_at=int(until),
            now=time.time(),
            fields=fields,
        )

    async def record_file(
        self, tenant: str, upstream: str, raw: bytes, view: FileView, until: float | None = None, batch: str = ""
    ) -> None:
        """Own an uploaded (or a batch's output) file until the provider drops it: `expires_at`, else `until`, else
        `NATIVE_FILE_TTL_S` from now."""
        end = view.expires_at or until or time.time() + NATIVE_FILE_TTL_S
        await self.record(tenant, "file", view.id, view.created_at, end, upstream=upstream, object=raw,
                          purpose=view.purpose, batch=batch)  # fmt: skip

    async def record_batch(
        self, tenant: str, upstream: str, raw: bytes, view: BatchView, first_poll: float, *, reservation: str = ""
    ) -> None:
        """Own a batch just created (with its budget reservation's id, if any), and watch it until it is booked."""
        k = self.keys
        await self.redis.sadd(k.native_tenants(), tenant)  # first: a watched batch is never on a tenant not walked
        until = (view.created_at or time.time()) + NATIVE_BATCH_TTL_S
        extra = {"reservation": reservation} if reservation else {}
        await self.record(tenant, "batch", view.id, view.created_at, until, upstream=upstream, object=raw, **extra)
        await self.redis.zadd(k.native_watch(tenant), {view.id: first_poll})

    async def get(self, tenant: str, kind: Kind, object_id: str) -> Owned | None:
        """The tenant's file or batch, or None (unknown, another tenant's, deleted or expired)."""
        key = self.keys.native_object(tenant, kind, object_id)
        row: list[bytes | None] = await self.redis.hmget(key, _FIELDS)  # type: ignore[assignment]
        return _owned(object_id, row)

    async def update(self, tenant: str, kind: Kind, object_id: str, **fields: str | bytes) -> bool:
        """Set fields of a record that still exists."""
        return await self._scripts.native_update(tenant=tenant, kind=kind, object_id=object_id, fields=fields)

    async def forget(self, tenant: str, kind: Kind, object_id: str) -> None:
        """Drop the tenant's record (a deleted file); its list entry stays until its end, so paging after it works."""
        await self.redis.delete(self.keys.native_object(tenant, kind, object_id))

    async def page(
        self, tenant: str, kind: Kind, *, after: str | None, limit: int, ascending: bool, keep: Callable[[Owned], bool]
    ) -> tuple[list[Owned], bool]:
        """Up to `limit` live records after `after` in the tenant's list (by created_at), and whether more follow."""
        k = self.keys
        index = k.native_index(tenant, kind)
        start = 0
        if after is not None:
            ranked = self.redis.zrank(index, after) if ascending else self.redis.zrevrank(index, after)
            rank: int | None = await ranked  # type: ignore[assignment]
            if rank is None:
                return [], False
            start = rank + 1
        found: list[Owned] = []
        window = min(max(limit + 1, PAGE_WINDOW), 1000)
        while len(found) <= limit:
            ids = [text(i) for i in await self.redis.zrange(index, start, start + window - 1, desc=not ascending)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for object_id in ids:
                    pipe.hmget(k.native_object(tenant, kind, object_id), _FIELDS)
                rows = await pipe.execute()
            for object_id, row in zip(ids, rows, strict=True):
                owned = _owned(object_id, row)
                if owned is not None and keep(owned):
                    found.append(owned)
            if len(ids) < window:
                break
            start += window
        return found[:limit], len(found) > limit

    # --- the watcher's side ------------------------------------------------------------------------

    async def tenants(self) -> list[str]:
        """Every tenant that ever created a native batch."""
        return sorted(text(t) for t in await self.redis.smembers(self.keys.native_tenants()))

    async def due(self, tenant: str, now: float, limit: int = 100) -> list[str]:
        """The tenant's batches whose next poll is due."""
        due = await self.redis.zrangebyscore(self.keys.native_watch(tenant), "-inf", now, start=0, num=limit)
        return [text(b) for b in due]

    async def schedule(self, tenant: str, batch_id: str, at: float) -> None:
        """Poll a watched batch next at `at` (a batch no longer watched stays so)."""
        await self.redis.zadd(self.keys.native_watch(tenant), {batch_id: at}, xx=True)

    async def unwatch(self, tenant: str, batch_id: str) -> None:
        """Stop polling a batch (booked, or gone)."""
        await self.redis.zrem(self.keys.native_watch(tenant), batch_id)

    async def book(self, tenant: str, batch_id: str, day: str, lines: list[tuple[str, Priced]]) -> list[int]:
        """Add lines (custom_id, price) to the tenant's totals of `day`, each once per batch; the positions (from 0)
        of the lines booked by this call."""
        return await self._scripts.native_book(
            tenant=tenant,
            batch_id=batch_id,
            day=day,
            origin=Origin.NATIVE,
            ttl=NATIVE_BATCH_TTL_S,
            totals_ttl=TOTALS_TTL_S,
            lines=[(custom_id, priced.as_tuple(), priced.prompt_cache_usd) for custom_id, priced in lines],
        )

    async def reservation(self, tenant: str, batch_id: str) -> str:
        """The id of the batch's budget reservation ("" when it made none)."""
        return text(await self.redis.hget(self.keys.native_object(tenant, "batch", batch_id), "reservation"))

    async def finish(self, tenant: str, batch_id: str) -> None:
        """The batch is booked: nothing more is added for it, and it is no longer polled."""
        k = self.keys
        await self.update(tenant, "batch", batch_id, booked="1")  # first: from here on NATIVE_BOOK adds nothing
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(k.native_watch(tenant), batch_id)
            pipe.delete(k.native_booked(tenant, batch_id))
            await pipe.execute()

    async def totals(self, tenant: str, day: str) -> dict[str, float]:
        """The tenant's native batch totals for one UTC day."""
        row = await self.redis.hgetall(self.keys.native_totals(tenant, day))
        return {text(field): float(value) for field, value in row.items()}


def _owned(object_id: str, row: list[bytes | None]) -> Owned | None:
    upstream, raw, purpose, booked, outputs, polls, batch = row
    if upstream is None or raw is None:
        return None
    return Owned(object_id, text(upstream), raw, text(purpose), booked == b"1", outputs == b"1", int(polls or 0),
                 text(batch))  # fmt: skip


async def record_outputs(store: NativeStore, upstream: NativeUpstream, tenant: str, view: BatchView) -> None:
    """Make an ended batch's output and error files the tenant's (once per batch)."""
    until = (view.created_at or time.time()) + NATIVE_BATCH_TTL_S
    for file_id in (view.output_file_id, view.error_file_id):
        raw = await upstream.fetch(f"/files/{file_id}") if file_id else None
        if raw is not None:
            await store.record_file(tenant, upstream.name, raw, file_decoder.decode(raw), until, batch=view.id)
    await store.update(tenant, "batch", view.id, outputs="1")


class NativeWatcher:
    """Polls the native batches tenants created until they end, then books every line's usage exactly once."""

    def __init__(
        self,
        store: NativeStore,
        leases: Leases,
        upstreams: Mapping[str, NativeUpstream],
        settings: BatchSettings,
        accounting: Accounting,
        settle: Settle | None = None,
    ) -> None:
        self.settle_budget = settle
        """Ends a batch's budget reservation with its booked cost (`Tenants.settle`), if budgets are kept."""
        self.store = store
        self.leases = leases
        self.upstreams = upstreams
        self.settings = settings
        self.accounting = accounting
        self.owner = leases.owner("native")
        self._booked_cost: dict[str, float] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`."""
        await pace(stop, max(0.05, min(1.0, self.settings.poll_interval_s / 2)), self.run_once, "native-batches")

    def next_poll(self, polls: int) -> float:
        """Backoff with jitter: the configured interval, growing by half per poll, capped."""
        base = min(MAX_POLL_INTERVAL_S, self.settings.poll_interval_s * 1.5 ** min(polls, 20))
        return time.time() + base * (0.8 + 0.4 * random.random())

    async def run_once(self) -> int:
        """Poll every due batch once; returns how many were booked (tests call this)."""
        booked = 0
        for tenant in await self.store.tenants():
            for batch_id in await self.store.due(tenant, time.time()):
                lease = self.store.keys.native_lease(tenant, batch_id)
                if not await self.leases.lease(lease, self.owner, self.settings.lease_s):
                    continue
                renew = functools.partial(self.leases.renew, lease, self.owner, self.settings.lease_s)
                try:
                    booked += await while_leased(self.check(tenant, batch_id), renew, self.settings.lease_s)
                except LeaseLost:
                    log.warning("lost the lease of native batch %s; another replica carries on", batch_id)
                except Exception as exc:
                    log.warning("checking native batch %s failed, will retry: %s", batch_id, exc)
                    await self.store.schedule(tenant, batch_id, self.next_poll(0))
                finally:
                    await self.leases.release(lease, self.owner)
        return booked

    async def check(self, tenant: str, batch_id: str) -> int:
        """Poll one batch; book it if it ended."""
        owned = await self.store.get(tenant, "batch", batch_id)
        upstream = self.upstreams.get(owned.upstream) if owned is not None else None
        if owned is None or owned.booked or upstream is None:
            await self.store.unwatch(tenant, batch_id)  # expired, booked, or its upstream left the config
            return 0
        raw = await upstream.fetch(f"/batches/{batch_id}")
        if raw is None:
            log.warning("native batch %s is gone from upstream %s; nothing to book", batch_id, upstream.name)
            await self.store.unwatch(tenant, batch_id)
            return 0
        view = batch_decoder.decode(raw)
        await self.store.update(tenant, "batch", batch_id, object=raw, polls=str(owned.polls + 1))
        if view.status not in TERMINAL:
            await self.store.schedule(tenant, batch_id, self.next_poll(owned.polls))
            return 0
        if not owned.outputs:
            await record_outputs(self.store, upstream, tenant, view)
        await self.book(tenant, upstream, view)
        return 1

    async def book(self, tenant: str, upstream: NativeUpstream, view: BatchView) -> None:
        """Price and book every line of an ended batch's output and error files, then mark it booked."""
        day = time.strftime("%Y-%m-%d", time.gmtime(view.ended_at()))
        for file_id in (view.output_file_id, view.error_file_id):
            if not file_id:
                continue
            try:
                await self._book_file(tenant, upstream, view, file_id, day)
            except UpstreamError as exc:
                if exc.upstream_status != 404:
                    raise
                # Deleted behind the router's back, or expired: its lines cannot be read, so cannot be booked.
                log.warning("native batch %s: file %s is gone upstream, its lines are not booked", view.id, file_id)
        await self.store.finish(tenant, view.id)
        hold = await self.store.reservation(tenant, view.id)
        if hold and self.settle_budget is not None:
            # The day's booked native cost of this batch (a pass that crashed mid-booking left the rest to this one).
            await self.settle_budget(tenant, hold, self._booked_cost.pop(view.id, 0.0))

    async def _book_file(self, tenant: str, upstream: NativeUpstream, view: BatchView, file_id: str, day: str) -> None:
        chunk: list[tuple[str, Priced, str, str]] = []
        async with contextlib.aclosing(upstream.file_lines(file_id)) as lines:  # closes the download on failure
            async for raw in lines:
                line = self._read(raw, view)
                if line is not None:
                    chunk.append(line)
                if len(chunk) >= BOOK_CHUNK:
                    await self._book_chunk(tenant, upstream.name, view.id, day, chunk)
                    chunk = []
        await self._book_chunk(tenant, upstream.name, view.id, day, chunk)

    async def settle(self, tenant: str, batch_id: str) -> None:
        """Book an ended batch now, before a handler deletes the output that holds its usage; if another replica
        holds its lease, wait (up to a lease) for it to finish."""
        lease = self.store.keys.native_lease(tenant, batch_id)
        until = time.monotonic() + self.settings.lease_s
        while time.monotonic() < until:
            owned = await self.store.get(tenant, "batch", batch_id)
            if owned is None or owned.booked:
                return
            if await self.leases.lease(lease, self.owner, self.settings.lease_s):
                renew = functools.partial(self.leases.renew, lease, self.owner, self.settings.lease_s)
                try:
                    await while_leased(self.check(tenant, batch_id), renew, self.settings.lease_s)
                    return
                except LeaseLost:
                    continue  # another replica has it now: wait for it as for any other
                finally:
                    await self.leases.release(lease, self.owner)
            await asyncio.sleep(0.1)

    def _read(self, raw: bytes, view: BatchView) -> tuple[str, Priced, str, str] | None:
        """(custom_id, price, model label, outcome) of one result line; None for a line that never ran."""
        try:
            line = _line_decoder.decode(raw)
            model = _model_decoder.decode(line.response.body).model if line.response else None
        except (msgspec.DecodeError, RecursionError) as exc:
            log.warning("native batch %s: a result line could not be read, not booked: %s", view.id, exc)
            return None
        if line.response is None:  # expired or cancelled before it ran: not billed
            return None
        model = model or view.model or ""
        price = self.accounting.prices.lookup(model)
        label = price.name if price is not None else "other"  # keep label values bounded
        if line.response.status_code != 200:
            return line.custom_id, Priced(None, None), label, "error"
        return line.custom_id, self.accounting.price(model, Origin.NATIVE, bytes(line.response.body)), label, "ok"

    async def _book_chunk(
        self, tenant: str, upstream: str, batch_id: str, day: str, chunk: list[tuple[str, Priced, str, str]]
    ) -> None:
        if not chunk:
            return
        new = await self.store.book(tenant, batch_id, day, [(custom_id, priced) for custom_id, priced, _, _ in chunk])
        for position in new:
            _, priced, label, outcome = chunk[position]
            if priced.cost is not None:
                self._booked_cost[batch_id] = self._booked_cost.get(batch_id, 0.0) + priced.cost.actual_usd
            self.accounting.book(
                priced, origin=Origin.NATIVE, upstream=upstream, model=label, tenant=tenant, outcome=outcome
            )
