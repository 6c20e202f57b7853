"""The deferred lane's front door: what an upstream offers a call, what its queue's turnaround says now, and the
call enqueued (with its tenant's `max_deferred` place, re-attached to the call it repeats when its caller is gone)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from router.core.errors import TooManyRequests
from router.core.keys import REPLICA_TTL_S, RESERVATION_SLACK_S, queue_tag
from router.core.lanes import Outlook
from router.core.schema import decode_body
from router.core.states import EnqueueOutcome
from router.deferred.store.intake import QueuesFull
from router.deferred.store.records import ASYNC_HOLDER, CallMeta, new_call_id
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.lanes import Capabilities, Planner
    from router.core.schema import RequestView
    from router.deferred.store.batches import BatchStore
    from router.deferred.store.intake import Intake
    from router.deferred.tenants import Tenants
    from router.providers.upstreams import Upstreams

QUEUES_FULL_RETRY_S = 60.0
"""`Retry-After` of a call refused for `limits.max_queues`: idle queues are pruned every few seconds, but a queue
empties only when its batch is answered."""
_body_encoder = msgspec.json.Encoder()


def batch_body(body: bytes, view: RequestView) -> bytes:
    """The body as a batch line may carry it: valid as a whole (one bad line must not fail a whole batch)
    and without `stream`/`stream_options` (batch APIs refuse them)."""
    obj = decode_body(body)
    if "stream" not in obj and "stream_options" not in obj:
        return body
    obj.pop("stream", None)
    obj.pop("stream_options", None)
    return _body_encoder.encode(obj)


def call_digest(tenant: str, endpoint: str, body: bytes) -> str:
    """What identifies identical requests: the tenant, the endpoint and the body's bytes."""
    h = hashlib.sha256(tenant.encode())
    h.update(b"\n" + endpoint.encode() + b"\n")
    h.update(body)
    return h.hexdigest()[:32]


class DeferredLane:
    """Entry to the batch lane: capabilities, the queue's outlook, and enqueuing a call."""

    def __init__(
        self,
        intake: Intake,
        batches: BatchStore,
        tenants: Tenants,
        upstreams: Upstreams,
        planner: Planner,
        known: Callable[[str, str], bool],
        *,
        reattach: bool = True,
    ) -> None:
        self.intake = intake
        self.batches = batches
        self.tenants = tenants
        self.upstreams = upstreams
        self.planner = planner
        self.known = known
        """Whether (upstream, model) names a model the upstream surely serves (`catalog.ModelCatalog.known`)."""
        self.reattach = reattach
        """`batch.reattach`: a held request identical to a call whose caller is gone may take that call over."""

    async def outlook(self, upstream: str, endpoint: str, model: str, now: float) -> Outlook:
        """What the queue's turnaround model says now (read from Redis): its admission quantile for a batch one
        call larger than what waits, and whether a probe may go."""
        tag = queue_tag(upstream, endpoint, model)
        turnaround = self.planner.model
        observations, waiting, batches = await self.batches.outlook(tag)
        quantile = turnaround.quantile(observations, now, lines=waiting + 1)
        probe = self.planner.probe and not waiting and not batches and not turnaround.enough(observations, now)
        return Outlook(quantile_s=quantile, may_probe=probe)

    def capabilities(self, upstream: str, endpoint: str, model: str, *, stream: bool = False) -> Capabilities:
        """What the upstream offers this kind of call (`lanes.Catalog`). A batch only for a known model: any
        other name would open a queue in Redis, while in real time the upstream answers it and nothing is stored."""
        caps = self.planner.catalog.of(upstream, endpoint, model, stream=stream)
        if caps.batch and not self.known(upstream, model):
            metrics.unknown_model.labels(upstream).inc()
            return msgspec.structs.replace(caps, batch=False)
        return caps

    async def enqueue(
        self,
        *,
        endpoint: str,
        body: bytes,
        view: RequestView,
        upstream: str,
        tenant: str,
        deadline: float,
        rule: str | None,
        idempotency_key: str | None,
        webhook: str | None = None,
        holder: str = "",
        retry: bool = False,
        reattach: bool = True,
        asked_model: str | None = None,
        identity: bytes | None = None,
        trace: str | None = None,
        answer_key: str | None = None,
    ) -> tuple[str, EnqueueOutcome]:
        """Queue the call, or attach to the live call it repeats (see `Intake.enqueue`); (call id, outcome).

        With `reattach`, a held request identical to a call whose caller is gone takes that call over; `retry`
        (the client says this request retries an earlier attempt) also takes over a call whose old connection
        has not been seen to drop yet. Identical means the same tenant, endpoint and `identity` (the body as the
        caller sent it; `body` when not given).
        """
        meta = CallMeta(
            tenant=tenant,
            upstream=upstream,
            endpoint=endpoint,
            model=view.model or "",
            deadline=deadline,
            received_at=time.time(),
            stream=bool(view.stream),
            include_usage=bool(view.stream_options and view.stream_options.include_usage),
            rule=rule,
            webhook=webhook,
            asked_model=asked_model,
            trace=trace or None,
            answer_key=answer_key,
            budget=self.tenants.budgeted(tenant),
        )
        digest = call_digest(tenant, endpoint, body if identity is None else identity)
        tag = queue_tag(upstream, endpoint, meta.model)
        attach_to = None
        if reattach and holder != ASYNC_HOLDER and self.reattach:
            replica = holder.partition("/")[0]
            attach_to = await self.intake.reattachable(
                tag, digest, retry=retry, replica=replica, settle_s=REPLICA_TTL_S
            )
        new_id = new_call_id(tag)
        expires_at = deadline + self.upstreams.timeout_s(upstream) + RESERVATION_SLACK_S
        worst = self.tenants.worst_case(asked_model or meta.model, "batch", body, view)
        refusal = await self.tenants.reserve_deferred(tenant, new_id, expires_at, worst)
        if refusal is not None and idempotency_key is None and attach_to is None:
            raise self.tenants.refuse(tenant, refusal)
        try:
            call_id, outcome = await self.intake.enqueue(
                meta, batch_body(body, view), idempotency_key, digest=digest, holder=holder, attach_to=attach_to,
                call_id=new_id, attach_only=refusal is not None,
            )  # fmt: skip
        except QueuesFull as full:
            if refusal is None:
                await self.tenants.release_deferred(tenant, new_id)  # the reservation made no new call
            metrics.queues_refused.inc()
            raise TooManyRequests(
                f"The router has as many deferred queues as it may ({full.cap}, `limits.max_queues`); "
                "a new model can be deferred once queues drain. Send the call without `X-Deadline` to answer it in "
                "real time now.",
                code="too_many_queues",
                retry_after=QUEUES_FULL_RETRY_S,
                should_retry=False,
            ) from None
        except BaseException:
            if refusal is None:  # best effort: an unreleased reservation lapses at `expires_at`
                with contextlib.suppress(Exception):
                    await self.tenants.release_deferred(tenant, new_id)
            raise
        if refusal is None and outcome != EnqueueOutcome.NEW:
            await self.tenants.release_deferred(tenant, new_id)  # the reservation made no new call
        if refusal is not None and outcome == EnqueueOutcome.OVER_LIMIT:
            raise self.tenants.refuse(tenant, refusal)
        if outcome == EnqueueOutcome.NEW:
            metrics.admitted.labels(upstream, meta.model, tenant).inc()
        elif outcome == EnqueueOutcome.ATTACHED:
            metrics.reattached.inc()
        return call_id, outcome
