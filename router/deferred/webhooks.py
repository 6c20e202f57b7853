"""Signed webhooks (Standard Webhooks): tell a caller's `X-Webhook-URL` that its deferred call ended."""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import httpx
import msgspec
from standardwebhooks import Webhook

from router.core.deadline import format_deadline
from router.core.errors import BadRequest
from router.core.schema import DeferredCall
from router.deferred.loops import pace
from router.deferred.store.records import deferred_object
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.settings import WebhookSettings
    from router.deferred.store.leases import Leases
    from router.deferred.store.queues import Queues
    from router.deferred.store.results import ResultStore
    from router.deferred.store.webhooks import WebhookSchedule

log = logging.getLogger(__name__)
HEADER = "X-Webhook-URL"
MAX_URL_LENGTH = 2048
MAX_BACKOFF_S = 3600.0
CONCURRENCY = 32
LEASE_SLACK_S = 5.0
Outcome = Literal["delivered", "retried", "dropped"]
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""A host and port → the addresses it resolves to (the event loop's `getaddrinfo` unless a test injects one)."""
METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"),
            ipaddress.ip_network("100.100.100.200/32"))  # fmt: skip
"""Cloud metadata services (AWS, GCP and Azure share the first; AWS over IPv6; Alibaba): never a webhook target."""


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, by the event loop's resolver."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return sorted(found, key=lambda a: ":" in a)  # IPv4 first: the address connected to is the first


def forbidden(address: str) -> str | None:
    """Why a webhook may not be sent to `address` (an internal range), or None when it is a public address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in METADATA):
        return "metadata"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private or ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "private"
    return None


class RefusedAddress(Exception):
    """A webhook host resolved to an address in a range the router never sends to (an SSRF or DNS rebinding)."""


class Event(msgspec.Struct):
    """The webhook body: what happened and the call as `GET /v1/deferred/{id}` shows it (never its result)."""

    type: str
    timestamp: str
    data: DeferredCall


_encoder = msgspec.json.Encoder()


def check_url(url: str, allowed_hosts: Sequence[str], allowed_ports: Collection[int] = (443, 80)) -> str:
    """The URL if it is http(s) to a host matching one of `allowed_hosts`, on one of `allowed_ports`, else a 400
    naming the header."""
    try:
        parsed = httpx.URL(url) if len(url) <= MAX_URL_LENGTH else None
    except httpx.InvalidURL:
        parsed = None
    # Parsed by the client that will send to it, so the host checked is the host connected to; userinfo is
    # refused because `https://allowed@evil/` style URLs exist to fool exactly this kind of check.
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host or parsed.userinfo:
        raise BadRequest(
            f"`{HEADER}` must be an absolute http:// or https:// URL without credentials.",
            param=HEADER,
            code="invalid_webhook_url",
        )
    host = parsed.host.lower()
    if not any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed_hosts):
        raise BadRequest(
            f"`{HEADER}` names the host `{host}`, which this router does not deliver webhooks to.",
            param=HEADER,
            code="webhook_host_not_allowed",
        )
    port = parsed.port or (443 if parsed.scheme == "https" else 80)  # httpx leaves out a scheme's default port
    if port not in allowed_ports:
        # An allowed name may still front other services; the port keeps webhooks off admin and database ports.
        raise BadRequest(
            f"`{HEADER}` names the port {port}, which this router does not deliver webhooks to.",
            param=HEADER,
            code="webhook_port_not_allowed",
        )
    return url


class WebhookSender:
    """Delivers each stored result's event to its call's webhook, retrying with backoff; one replica per event."""

    def __init__(
        self,
        queues: Queues,
        schedule: WebhookSchedule,
        results: ResultStore,
        leases: Leases,
        settings: WebhookSettings,
        secret: str | None,
        resolver: Resolve = resolve,
    ) -> None:
        self.resolve = resolver
        self.queues = queues
        self.schedule = schedule
        self.results = results
        self.leases = leases
        self.settings = settings
        self.signer = Webhook(secret) if secret else None
        self.owner = leases.owner("webhooks")
        # Redirects are not followed: a redirect could lead past the allowed hosts.
        self.client = httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False)
        self._slots = asyncio.Semaphore(CONCURRENCY)

    @property
    def enabled(self) -> bool:
        """Whether webhooks can be sent at all: a signing secret and at least one allowed host."""
        return self.signer is not None and bool(self.settings.allowed_hosts)

    def check(self, url: str) -> str:
        """The caller's webhook URL if this router may deliver to it, else a 400."""
        if not self.enabled:
            raise BadRequest(f"Webhooks are not enabled on this router; omit `{HEADER}`.", param=HEADER,
                             code="webhooks_disabled")  # fmt: skip
        return check_url(url, self.settings.allowed_hosts, self.settings.allowed_ports)

    def sign(self, msg_id: str, body: bytes, now: float) -> dict[str, str]:
        """The Standard Webhooks headers for one attempt at sending `body`."""
        assert self.signer is not None
        timestamp = datetime.fromtimestamp(int(now), UTC)
        return {
            "content-type": "application/json",
            "user-agent": "hybrid-router-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self.signer.sign(msg_id, timestamp, body.decode()),
        }

    def backoff(self, attempt: int) -> float:
        """Seconds before the next attempt: doubling from `backoff_s`, capped, with ±20% jitter."""
        base = min(MAX_BACKOFF_S, self.settings.backoff_s * 2.0 ** min(attempt - 1, 20))
        return base * (0.8 + 0.4 * random.random())

    async def run_once(self) -> int:
        """Attempt every due delivery once; returns how many were delivered (tests call this)."""
        now = time.time()
        due = [
            call_id for tag in await self.queues.queue_tags() for call_id in await self.schedule.webhooks_due(tag, now)
        ]
        outcomes = await asyncio.gather(*(self.deliver(call_id) for call_id in due))
        return outcomes.count("delivered")

    async def deliver(self, call_id: str) -> Outcome | None:
        """One attempt for one call's event, if no other replica is making it; None when skipped."""
        lease = self.leases.keys.webhook_lease(call_id)
        async with self._slots:
            if not await self.leases.lease(lease, self.owner, self.settings.timeout_s + LEASE_SLACK_S):
                return None
            try:
                # Re-check under the lease: another replica may have finished or rescheduled it since we looked.
                due_at = await self.schedule.webhook_due_at(call_id)
                if due_at is None or due_at > time.time():
                    return None
                outcome = await self._attempt(call_id)
            except Exception:
                log.exception("webhook delivery for %s failed; it stays due", call_id)
                return None
            finally:
                await self.leases.release(lease, self.owner)
        metrics.webhook_deliveries.labels(outcome).inc()
        return outcome

    async def _attempt(self, call_id: str) -> Outcome:
        call = await self.results.get_call(call_id)
        result = await self.results.get_result(call_id) if call is not None else None
        if call is None or result is None or call.meta.webhook is None:
            await self.schedule.end_webhook(call_id)  # expired: there is nothing left to fetch
            return "dropped"
        url = call.meta.webhook
        try:
            self.check(url)  # the settings may have changed since the call was admitted
        except BadRequest as exc:
            log.warning("dropping the webhook of %s: %s", call_id, exc.code)
            await self.schedule.end_webhook(call_id)
            return "dropped"
        data = deferred_object(call, result)
        body = _encoder.encode(Event(type=f"deferred.call.{data.status}", timestamp=format_deadline(result.finished_at),
                                     data=data))  # fmt: skip
        attempt = await self.schedule.count_webhook_attempt(call_id)
        try:
            delivered = await self._post(url, body, self.sign(f"msg_{call_id}", body, time.time()))
        except RefusedAddress as exc:
            log.warning("dropping the webhook of %s: its host resolves to %s", call_id, exc)
            await self.schedule.end_webhook(call_id)
            return "dropped"
        if delivered:
            await self.schedule.end_webhook(call_id)
            return "delivered"
        if attempt >= self.settings.max_attempts:
            log.warning("dropping the webhook of %s after %d attempts", call_id, attempt)
            await self.schedule.end_webhook(call_id)
            return "dropped"
        await self.schedule.reschedule_webhook(call_id, time.time() + self.backoff(attempt))
        return "retried"

    async def pin(self, url: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
        """The URL to connect to (its host replaced by a checked address), its `Host` header and, for https, the
        name for SNI and the certificate check; raises `RefusedAddress` when any address the host resolves to is
        internal (unless `allow_private`). The connection goes to the address checked: there is no second lookup
        a DNS rebinding could answer differently."""
        parsed = httpx.URL(url)
        host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
        addresses = await self.resolve(host, port)
        if not addresses:
            raise OSError(f"{host} resolves to no address")
        if not self.settings.allow_private:
            for address in addresses:
                if (why := forbidden(address)) is not None:
                    raise RefusedAddress(f"{address} ({why})")
        address = addresses[0]
        authority = host if parsed.port is None else f"{host}:{parsed.port}"
        pinned = parsed.copy_with(host=address)
        extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
        return pinned, {"host": authority}, extensions

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        """Whether the receiver answered 2xx; its body is never read (it could be anything, of any size)."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                target, host, extensions = await self.pin(url)
                request = self.client.build_request(
                    "POST", target, content=body, headers=headers | host, extensions=extensions
                )
                response = await self.client.send(request, stream=True)
                try:
                    return 200 <= response.status_code < 300
                finally:
                    await response.aclose()
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.info("webhook POST failed: %s", type(exc).__name__)
            return False

    async def run(self, stop: asyncio.Event) -> None:
        """Pace `run_once` until `stop`."""
        await pace(stop, max(0.05, min(1.0, self.settings.backoff_s / 4)), self.run_once, "webhooks")

    async def aclose(self) -> None:
        """Close the delivery pool."""
        await self.client.aclose()
