"""Message Batches callers create through the router: who owns each, and their usage booked once they end.

A caller's batch goes to Anthropic as it was sent; the router only records its owner (so a tenant sees and
touches its own batches only) and, once the batch has ended, reads its results and books every request in the
metrics and the tenant's `/v1/usage` totals at the batch rate, exactly as deferred calls are booked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from router.core.keys import MESSAGE_BATCH_TTL_S
from router.core.lanes import Origin
from router.core.pricing import usage_from_body
from router.deferred.loops import pace
from router.deferred.store.records import text
from router.telemetry.accounting import Priced

if TYPE_CHECKING:
    from router.core.keys import Keys
    from router.core.settings import BatchSettings
    from router.deferred.store.client import RedisClient
    from router.deferred.store.leases import Leases
    from router.providers.base import UpstreamResponse
    from router.telemetry.accounting import Accounting

log = logging.getLogger(__name__)
BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
MAX_CHECK_INTERVAL_S = 600.0


class Owner(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant that created a batch, and the upstream that runs it."""

    tenant: str
    upstream: str
    created_at: float
    reservation: str = ""
    """The id of the batch's reservation of the tenant's daily budget, settled when it is booked ("" if none)."""


class _Status(msgspec.Struct):
    processing_status: str = ""


class _Message(msgspec.Struct):
    model: str = ""
    usage: dict[str, Any] | None = None


class _Result(msgspec.Struct):
    type: str = ""
    message: _Message | None = None


class _Line(msgspec.Struct):
    result: _Result | None = None


_status_decoder = msgspec.json.Decoder(_Status)
_line_decoder = msgspec.json.Decoder(_Line)


class Owners:
    """The ownership records of callers' Message Batches in Redis (keys in `router/core/keys.py`)."""

    def __init__(self, redis: RedisClient, keys: Keys, leases: Leases) -> None:
        self.redis = redis
        self.keys = keys
        self.leases = leases

    async def record(self, batch_id: str, owner: Owner, first_check: float) -> None:
        """Remember a new batch: its owner, its place in the tenant's list, and when to look for its end."""
        k = self.keys
        index = k.tenant_message_batches(owner.tenant)
        async with self.redis.pipeline(transaction=False) as pipe:  # keys of several cluster slots
            pipe.hset(
                k.message_batch(batch_id),
                mapping={"tenant": owner.tenant, "upstream": owner.upstream, "created_at": repr(owner.created_at)},
            )
            pipe.expire(k.message_batch(batch_id), MESSAGE_BATCH_TTL_S)
            pipe.zadd(index, {batch_id: owner.created_at})
            pipe.zremrangebyscore(index, "-inf", owner.created_at - MESSAGE_BATCH_TTL_S)
            pipe.expire(index, MESSAGE_BATCH_TTL_S)
            pipe.zadd(k.open_message_batches, {batch_id: first_check})
            await pipe.execute()

    async def owner(self, batch_id: str) -> Owner | None:
        """Who owns a batch, or None (not created through the router, expired, deleted, or a malformed id)."""
        if not BATCH_ID.match(batch_id):
            return None
        row = await self.redis.hgetall(self.keys.message_batch(batch_id))
        if not row:
            return None
        found = {text(name): text(value) for name, value in row.items()}
        return Owner(tenant=found["tenant"], upstream=found["upstream"], created_at=float(found["created_at"]))

    async def page(
        self, tenant: str, limit: int, after_id: str | None, before_id: str | None
    ) -> tuple[list[str], bool]:
        """A tenant's batch ids, newest first: `limit` of them after `after_id` (older) or before `before_id`
        (newer); and whether there are more that way. An unknown cursor gives an empty page."""
        index = self.keys.tenant_message_batches(tenant)
        if before_id is not None:
            rank = cast("int | None", await self.redis.zrevrank(index, before_id))
            if rank is None:
                return [], False
            start = max(0, rank - limit)
            return [text(i) for i in await self.redis.zrevrange(index, start, rank - 1)], start > 0
        start = 0
        if after_id is not None:
            rank = cast("int | None", await self.redis.zrevrank(index, after_id))
            if rank is None:
                return [], False
            start = rank + 1
        ids = [text(i) for i in await self.redis.zrevrange(index, start, start + limit)]  # one more: is there more?
        return ids[:limit], len(ids) > limit

    async def forget(self, batch_id: str, tenant: str) -> None:
        """Drop a deleted batch's records."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(k.message_batch(batch_id))
            pipe.zrem(k.tenant_message_batches(tenant), batch_id)
            pipe.zrem(k.open_message_batches, batch_id)
            await pipe.execute()

    async def due(self, now: float, limit: int = 100) -> list[str]:
        """Batches whose end should be looked for now."""
        found = await self.redis.zrangebyscore(self.keys.open_message_batches, "-inf", now, start=0, num=limit)
        return [text(i) for i in found]

    async def check_later(self, batch_id: str, at: float) -> None:
        """Look for the batch's end again at `at` (XX: a batch already closed stays closed)."""
        await self.redis.zadd(self.keys.open_message_batches, {batch_id: at}, xx=True)

    async def close(self, batch_id: str) -> None:
        """Stop looking at a batch (booked, or gone)."""
        await self.redis.zrem(self.keys.open_message_batches, batch_id)

    async def lease(self, batch_id: str, holder: str, seconds: float) -> bool:
        """Take the short lease on checking one batch (a replica that dies lets it lapse)."""
        return await self.leases.lease(self.keys.message_batch_lease(batch_id), holder, seconds)

    async def release(self, batch_id: str, holder: str) -> None:
        """Give the lease on checking a batch back, if it is still `holder`'s."""
        await self.leases.release(self.keys.message_batch_lease(batch_id), holder)

    async def mark_booked(self, batch_id: str) -> bool:
        """Claim the booking of a batch's usage; False when it was booked already (HSETNX: once, whoever asks)."""
        return bool(await self.redis.hsetnx(self.keys.message_batch(batch_id), "booked", repr(time.time())))


class MessagesUpstream(Protocol):
    """What the watcher needs of an upstream of kind `anthropic` (`providers.anthropic.AnthropicProvider`)."""

    name: str

    async def native(
        self, method: str, path: str, *, content: bytes | None = None, params: Mapping[str, str] | None = None
    ) -> UpstreamResponse:
        """One call to Anthropic's API, passed through."""
        ...

    async def native_stream(self, path: str) -> UpstreamResponse:
        """A GET whose answer is relayed as it arrives."""
        ...


class Book(Protocol):
    """Books one finished call in the metrics and its tenant's totals (`RealtimeTotals.record`)."""

    def __call__(self, priced: Priced, *, origin: Origin, upstream: str, model: str, tenant: str, outcome: str) -> None:
        """Count the call once."""
        ...


class MessageBatchWatcher:
    """Looks for the end of callers' Message Batches, then books their usage once (the sixth loop)."""

    def __init__(
        self,
        owners: Owners,
        upstreams: Mapping[str, MessagesUpstream],
        accounting: Accounting,
        book: Book,
        settings: BatchSettings,
        settle: Callable[[str, str, float], Awaitable[None]] | None = None,
    ) -> None:
        self.settle = settle
        """Ends a batch's budget reservation with its booked cost (`Tenants.settle`), if budgets are kept."""
        self.owners = owners
        self.upstreams = upstreams
        """The upstreams of kind `anthropic`, by name: a batch on any other is not one of theirs."""
        self.accounting = accounting
        self.book = book
        self.settings = settings
        self.owner = owners.leases.owner("ledger")

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`."""
        await pace(stop, max(0.05, min(1.0, self.settings.poll_interval_s / 2)), self.run_once, "message-batches")

    def next_check(self, created_at: float) -> float:
        """Look again after a tenth of the batch's age, within [poll interval, 10 min]."""
        age = time.time() - created_at
        return time.time() + min(MAX_CHECK_INTERVAL_S, max(self.settings.poll_interval_s, age / 10))

    async def run_once(self) -> int:
        """Check every due batch once; returns how many were booked (tests call this)."""
        booked = 0
        for batch_id in await self.owners.due(time.time()):
            if not await self.owners.lease(batch_id, self.owner, self.settings.lease_s):
                continue
            try:
                booked += await self.check(batch_id)
            except Exception as exc:  # a bad answer or an outage: this batch waits, the others go on
                log.warning("checking message batch %s failed, will retry: %s", batch_id, exc)
                await self.owners.check_later(batch_id, time.time() + self.settings.poll_interval_s)
            finally:
                await self.owners.release(batch_id, self.owner)
        return booked

    async def check(self, batch_id: str) -> int:
        """Book one batch if it has ended; 1 when this pass booked it."""
        owner = await self.owners.owner(batch_id)
        provider = self.upstreams.get(owner.upstream) if owner is not None else None
        if owner is None or provider is None:
            await self.owners.close(batch_id)
            return 0
        answer = await provider.native("GET", f"/messages/batches/{batch_id}")
        if answer.status == 404:  # deleted at the provider
            await self.owners.close(batch_id)
            return 0
        if answer.status != 200 or _status_decoder.decode(answer.body).processing_status != "ended":
            await self.owners.check_later(batch_id, self.next_check(owner.created_at))
            return 0
        lines = await self._priced_lines(provider, batch_id)
        if lines is None:
            await self.owners.check_later(batch_id, time.time() + self.settings.poll_interval_s)
            return 0
        if not await self.owners.mark_booked(batch_id):
            await self.owners.close(batch_id)
            return 0
        for model, priced, outcome in lines:
            self.book(
                priced, origin=Origin.BATCH, upstream=owner.upstream, model=model, tenant=owner.tenant, outcome=outcome
            )
        if owner.reservation and self.settle is not None:
            cost = sum(priced.cost.actual_usd for _, priced, _ in lines if priced.cost is not None)
            await self.settle(owner.tenant, owner.reservation, cost)
        await self.owners.close(batch_id)
        return 1

    async def _priced_lines(self, provider: MessagesUpstream, batch_id: str) -> list[tuple[str, Priced, str]] | None:
        """(model, price, outcome) of every request that ran: succeeded ones priced at the batch rate, errored
        ones unpriced (not billed); None when the results could not be read."""
        answer = await provider.native_stream(f"/messages/batches/{batch_id}/results")
        if answer.stream is None:
            log.warning("results of message batch %s answered %d; will retry", batch_id, answer.status)
            return None
        out: list[tuple[str, Priced, str]] = []
        async for raw in _lines(answer.stream):
            try:
                result = _line_decoder.decode(raw).result
            except (msgspec.DecodeError, RecursionError):
                continue
            if result is None or result.type not in ("succeeded", "errored"):
                continue  # canceled and expired requests never ran, and are not billed
            message = result.message or _Message()
            usage = usage_from_body({"usage": message.usage}) if message.usage else None
            if result.type == "succeeded":
                out.append((message.model, self.accounting.price(message.model, Origin.BATCH, b"", usage), "ok"))
            else:
                out.append((message.model or "other", Priced(None, None), "error"))
        return out


async def _lines(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The non-empty lines of a JSONL byte stream."""
    pending = b""
    async for chunk in stream:
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            if line.strip():
                yield line
    if pending.strip():
        yield pending
