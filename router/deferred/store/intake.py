"""Calls in: a deferred call enqueued (or attached to the live call it repeats), the connections that hold calls,
and replicas' heartbeats, which tell a held call from an orphan."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from router.core.keys import queue_endpoint, queue_tag
from router.core.states import EnqueueOutcome
from router.deferred.store.records import ASYNC_HOLDER, CallMeta, meta_encoder, new_call_id, text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext

SETTLE_POLL_S = 0.2
"""How often `reattachable` looks again at a replica that may have died."""


class QueuesFull(Exception):
    """The call would open a queue past `limits.max_queues`; nothing was stored."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"the set of queues is full ({cap})")
        self.cap = cap


class Intake:
    """Enqueues deferred calls, and keeps who holds each and which replicas are alive."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def enqueue(
        self,
        meta: CallMeta,
        body: bytes,
        idempotency_key: str | None = None,
        *,
        digest: str = "",
        holder: str = "",
        attach_to: str | None = None,
        call_id: str | None = None,
        attach_only: bool = False,
    ) -> tuple[str, EnqueueOutcome]:
        """Queue a call, or attach to the live call this request repeats; (call id, outcome). Raises `QueuesFull`
        when the call would open a queue past the cap.

        `digest` identifies identical requests (tenant, endpoint, body); `holder` names the connection that waits
        for the answer (empty for none, `async` for a 202 call); `attach_to` is an identical call whose caller is
        gone (found by `reattachable`), which this request takes over if it still can. `call_id` is the id a new
        call gets (made here if not given); with `attach_only` the request may attach but not queue a new call.
        """
        ctx = self.ctx
        tag = queue_tag(meta.upstream, meta.endpoint, meta.model)
        call_id = call_id or new_call_id(tag)
        ttl = int(max(0.0, meta.deadline - time.time()) + ctx.result_ttl)
        # The set of queues first: a call is never in a queue the batcher cannot find (and a full set refuses it).
        if not await ctx.scripts.enrol(tag=tag, cap=ctx.max_queues):
            raise QueuesFull(ctx.max_queues)
        enqueued = await ctx.scripts.enqueue(
            tag=tag,
            call_id=call_id,
            tenant=meta.tenant,
            idempotency_key=idempotency_key,
            digest=digest,
            meta=meta_encoder.encode(meta),
            body=body,
            deadline=meta.deadline,
            received_at=meta.received_at,
            ttl=ttl,
            idempotency_ttl=ctx.idempotency_ttl,
            upstream=meta.upstream,
            endpoint=queue_endpoint(meta.endpoint),
            model=meta.model,
            webhook=meta.webhook,
            holder=holder,
            attach_to=attach_to,
            attach_only=attach_only,
        )
        if enqueued.created:
            # The queue was pruned (or is new) since the tag was entered above: enter it again (see scripts.PRUNE).
            await ctx.redis.sadd(ctx.keys.queues, tag)
        return enqueued.call_id, enqueued.outcome

    async def reattachable(
        self, tag: str, digest: str, *, retry: bool, replica: str = "", settle_s: float = 0.0, limit: int = 10
    ) -> str | None:
        """The live, undelivered held call with this digest whose caller is gone, or None.

        Gone: no connection holds it, or the replica that held it is dead. With `retry` (the client says this is
        a retry of an earlier attempt) the newest such call is taken even if its old connection still looks
        held: the router may not have seen that connection drop yet.

        A replica killed outright looks alive until its heartbeat lapses, and an application's own retry (a new
        request, not marked as a retry) can come back within that time. So when such a call is held by another
        replica (not `replica`, which knows its own connections and releases them as they drop), this waits up
        to `settle_s` (the heartbeat's lifetime) for that replica to be seen dead before it answers None: an
        identical request that really is another caller's waits that long, once, before it is queued.
        """
        redis, k = self.ctx.redis, self.ctx.keys
        ids = [text(i) for i in await redis.zrevrange(k.digest(tag, digest), 0, limit - 1)]
        if not ids:
            return None
        async with redis.pipeline(transaction=False) as pipe:
            for call_id in ids:
                pipe.hmget(k.call(call_id), ["holder", "delivered", "digest"])
            rows = await pipe.execute()
        candidates = [
            (cid, text(row[0]))
            for cid, row in zip(ids, rows, strict=True)
            if row[2] is not None and text(row[1]) != "1" and text(row[0]) != ASYNC_HOLDER
        ]
        replicas = {holder.partition("/")[0] for _, holder in candidates if holder}
        settled_by = time.monotonic() + settle_s
        while True:
            alive = await self._alive(replicas)
            for call_id, holder in candidates:
                if not holder or holder.partition("/")[0] not in alive:
                    return call_id
            if retry and candidates:
                return candidates[0][0]
            if not alive - {replica} or time.monotonic() >= settled_by:
                return None
            await asyncio.sleep(SETTLE_POLL_S)

    async def unhold(self, call_id: str, holder: str, *, delivered: bool) -> None:
        """A connection stops holding a call (see `scripts.RELEASE`)."""
        await self.ctx.scripts.release(call_id=call_id, holder=holder, delivered=delivered)

    async def heartbeat(self, replica_id: str, ttl_s: float) -> None:
        """Say this replica is alive for `ttl_s` more seconds."""
        await self.ctx.redis.set(self.ctx.keys.replica(replica_id), "1", px=int(ttl_s * 1000))

    async def retire(self, replica_id: str) -> None:
        """This replica is stopping: the calls it held are orphaned from now on."""
        await self.ctx.redis.delete(self.ctx.keys.replica(replica_id))

    async def _alive(self, replica_ids: set[str]) -> set[str]:
        """The replicas among `replica_ids` whose heartbeat has not lapsed."""
        ordered = sorted(replica_ids)
        if not ordered:
            return set()
        async with self.ctx.redis.pipeline(transaction=False) as pipe:
            for replica_id in ordered:
                pipe.exists(self.ctx.keys.replica(replica_id))
            found = await pipe.execute()
        return {rid for rid, there in zip(ordered, found, strict=True) if there}
