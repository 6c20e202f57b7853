"""The webhook delivery schedule: `STORE_RESULT` enters a call with a webhook; the sender
(`router/deferred/webhooks.py`) reads what is due, counts attempts, reschedules and ends deliveries here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.core.keys import tag_of
from router.deferred.store.records import text

if TYPE_CHECKING:
    from router.deferred.store.context import StoreContext


class WebhookSchedule:
    """When each call's webhook is next due, per queue."""

    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def webhooks_due(self, tag: str, now: float, limit: int = 100) -> list[str]:
        """Calls of one queue whose webhook delivery is due."""
        due = await self.ctx.redis.zrangebyscore(self.ctx.keys.webhooks(tag), "-inf", now, start=0, num=limit)
        return [text(i) for i in due]

    async def webhook_due_at(self, call_id: str) -> float | None:
        """When a call's webhook is next due, or None when it is not scheduled."""
        score = await self.ctx.redis.zscore(self.ctx.keys.webhooks(tag_of(call_id)), call_id)
        return float(score) if score is not None else None

    async def count_webhook_attempt(self, call_id: str) -> int:
        """Count one more delivery attempt of a call's webhook; returns the count."""
        return int(await self.ctx.redis.hincrby(self.ctx.keys.call(call_id), "webhook_attempts", 1))

    async def reschedule_webhook(self, call_id: str, at: float) -> None:
        """Make a call's webhook due again at `at` (XX: an entry already removed stays removed)."""
        await self.ctx.redis.zadd(self.ctx.keys.webhooks(tag_of(call_id)), {call_id: at}, xx=True)

    async def end_webhook(self, call_id: str) -> None:
        """Take a call's webhook off the schedule (delivered, given up, or its call expired)."""
        await self.ctx.redis.zrem(self.ctx.keys.webhooks(tag_of(call_id)), call_id)
