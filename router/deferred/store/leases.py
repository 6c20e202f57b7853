"""Short exclusive leases (SET NX PX) that make one replica do a piece of work, and `while_leased`, which keeps one
renewed while the work runs.

A lease follows its owner's liveness: an owner is named `<replica id>/<role>-<hex>` (`Leases.owner`), and a lease
held by a replica whose heartbeat (`P:replica:<id>`, `REPLICA_TTL_S`) has lapsed is taken over at once, whatever is
left of its length. A dead replica's work thus resumes within the heartbeat's lifetime plus one pass, not at the
end of `batch.lease_s`. A replica taken for dead that still runs (its heartbeat missed a Redis blip) loses the
lease at its next renewal and stops, as a stalled one always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from router.deferred.store.records import text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext

log = logging.getLogger(__name__)
T = TypeVar("T")


class Leases:
    """Take, renew and give back leases under any key."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx
        self.keys = ctx.keys
        """The key names leases are taken under (`flush_lease`, `batch_lease`, `webhook_lease`, ...)."""

    def owner(self, role: str) -> str:
        """A new owner name for one of this replica's loops: its replica's id first, so its liveness can be read."""
        return f"{self.ctx.replica_id}/{role}-{secrets.token_hex(6)}"

    async def lease(self, key: str, owner: str, seconds: float) -> bool:
        """Take a short exclusive lease (SET NX PX); it lapses by itself, and is taken over at once from an owner
        whose replica's heartbeat lapsed."""
        ms = int(seconds * 1000)
        if await self.ctx.redis.set(key, owner, nx=True, px=ms):
            return True
        holder = text(await self.ctx.redis.get(key))
        if not holder or holder == owner or not await self.dead({holder}):
            return False
        # Compare-and-set on the one key: a holder that changed meanwhile (another replica took it) keeps it.
        return await self.ctx.scripts.take_lease(key=key, dead=holder, owner=owner, ms=ms)

    async def dead(self, owners: set[str]) -> set[str]:
        """The owners among `owners` whose replica's heartbeat has lapsed (an owner naming no replica never is, nor
        one of this replica's own: it knows it is alive)."""
        replicas = {o: r for o in owners if "/" in o and (r := o.partition("/")[0]) != self.ctx.replica_id}
        if not replicas:
            return set()
        ordered = sorted(set(replicas.values()))
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for replica_id in ordered:
                pipe.exists(self.keys.replica(replica_id))
            found = await pipe.execute()
        gone = {r for r, n in zip(ordered, found, strict=True) if not n}
        return {o for o, r in replicas.items() if r in gone}

    async def renew(self, key: str, owner: str, seconds: float) -> bool:
        """Extend a lease we still hold."""
        return await self.ctx.scripts.renew_lease(key=key, owner=owner, ms=int(seconds * 1000))

    async def release(self, key: str, owner: str) -> None:
        """Give a lease back early, if it is still ours."""
        if text(await self.ctx.redis.get(key)) == owner:
            await self.ctx.redis.delete(key)


class LeaseLost(Exception):
    """The lease guarding some work lapsed or was taken over: the work was stopped so it is not done twice."""


async def while_leased(work: Awaitable[T], renew: Callable[[], Awaitable[bool]], lease_s: float) -> T:
    """Await `work`, renewing its lease every third of `lease_s`; stop it cleanly when the lease is lost.

    A renewal that fails because Redis is briefly away is retried; only when the lease is known to be someone
    else's (the renewal says so) or has surely lapsed (no renewal for a whole lease) is `work` cancelled and
    `LeaseLost` raised. A renewal error never replaces the result of work that succeeded.
    """
    task = asyncio.ensure_future(work)
    renewed_at = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lease_s / 3)
            if done:
                return task.result()
            try:
                held = await renew()
            except Exception as exc:  # Redis away: keep working while the lease may still hold
                log.warning("renewing a lease failed, will retry: %s", exc)
                held = time.monotonic() - renewed_at < lease_s
            else:
                renewed_at = time.monotonic() if held else renewed_at
            if not held and not task.done():
                raise LeaseLost()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
