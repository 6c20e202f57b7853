"""Signed webhooks for deferred calls: Standard Webhooks events to a real receiver, over real sockets."""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook

from router.core.errors import BadRequest
from router.core.settings import WebhookSettings
from router.deferred.store import Store
from router.deferred.webhooks import RefusedAddress, WebhookSender, check_url, forbidden, resolve
from router.ops.serving import serve_in_thread
from tests.helpers.metrics import metric
from tests.helpers.servers import FAST, RouterFactory
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"a test secret of thirty-two byte").decode()
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise document number 1."}]}
ASYNC = {"prefer": "respond-async", "x-deadline": "1h"}


class Receiver:
    """A raw ASGI webhook receiver: records every request and answers with the next scripted status (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self._lock:
            self.requests.append(({k.decode(): v.decode() for k, v in scope["headers"]}, body))
            status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def receiving(statuses: list[int] | None = None) -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver(statuses)
    with serve_in_thread(receiver) as base:
        yield receiver, base + "/hooks/deferred"


def hooks(**fields: Any) -> dict[str, Any]:
    """Webhook settings that deliver to the local receiver, retrying quickly."""
    return {
        "secret_env": "WEBHOOK_SECRET",
        "allowed_hosts": ["127.0.0.1"],
        "allow_private": True,  # the receiver is on loopback
        "backoff_s": 0.2,
    } | fields


SERIES = 'hybrid_router_webhook_deliveries_total{outcome="%s"}'


def deliveries(base: str, outcome: str) -> float:
    """Webhook attempts with `outcome` counted so far (the registry is process-wide: compare with a reading before)."""
    return metric(httpx.get(base + "/metrics").text, SERIES % outcome)


def start(
    start_router: RouterFactory, receiver: str | None = None, **webhooks: Any
) -> contextlib.AbstractContextManager[str]:
    """A router delivering webhooks to 127.0.0.1 on the default ports and, when given, the receiver's port."""
    if receiver is not None:
        webhooks["allowed_ports"] = [443, 80, httpx.URL(receiver).port]
    return start_router(batch=FAST, webhooks=hooks(**webhooks), environ={"WEBHOOK_SECRET": SECRET})


def test_a_completed_call_delivers_one_signed_event(start_router: RouterFactory) -> None:
    with receiving() as (receiver, url), start(start_router, url) as base:
        before = deliveries(base, "delivered")
        accepted = httpx.post(base + "/v1/chat/completions", json=BODY, headers=ASYNC | {"x-webhook-url": url})
        assert accepted.status_code == 202
        call = accepted.json()
        assert call["webhook"] is True
        # Counted as delivered only once the sender removed the event from its schedule: no second POST can follow.
        wait_until(lambda: deliveries(base, "delivered") == before + 1, 10, "the delivery to be counted")
        fetched = httpx.get(f"{base}/v1/deferred/{call['id']}")
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "deferred.call.completed"
    assert event["timestamp"].endswith("Z")
    assert event["data"]["id"] == call["id"]
    assert event["data"]["status"] == "completed"
    assert event["data"]["lane"] == "batch"
    assert event["data"]["savings_usd"] > 0
    assert "choices" not in body.decode()  # the result itself is fetched, never pushed
    assert headers["webhook-id"]
    assert fetched.status_code == 200


def test_retries_carry_the_same_webhook_id(start_router: RouterFactory) -> None:
    with receiving([500, 500]) as (receiver, url), start(start_router, url) as base:
        before = httpx.get(base + "/metrics").text
        httpx.post(base + "/v1/chat/completions", json=BODY, headers=ASYNC | {"x-webhook-url": url})
        # The third attempt succeeds and ends the schedule (counted after the removal): nothing follows it.
        done = metric(before, SERIES % "delivered") + 1
        wait_until(lambda: deliveries(base, "delivered") == done, 15, "the third attempt to be delivered")
        after = httpx.get(base + "/metrics").text
    assert len(receiver.requests) == 3
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert len(ids) == 1
    for headers, body in receiver.requests:
        Webhook(SECRET).verify(body, headers)
    assert metric(after, SERIES % "retried") - metric(before, SERIES % "retried") == 2
    assert metric(after, SERIES % "delivered") - metric(before, SERIES % "delivered") == 1


def test_a_receiver_that_keeps_failing_is_given_up_on(start_router: RouterFactory) -> None:
    with receiving([500] * 10) as (receiver, url), start(start_router, url, max_attempts=2) as base:
        before = httpx.get(base + "/metrics").text
        httpx.post(base + "/v1/chat/completions", json=BODY, headers=ASYNC | {"x-webhook-url": url})
        # Dropped is counted after the event left the schedule: there is no third attempt to wait for.
        given_up = metric(before, SERIES % "dropped") + 1
        wait_until(lambda: deliveries(base, "dropped") == given_up, 15, "the event to be given up on")
        after = httpx.get(base + "/metrics").text
    assert len(receiver.requests) == 2
    assert metric(after, SERIES % "dropped") - metric(before, SERIES % "dropped") == 1


def _error(base: str, url: str, headers: dict[str, str] = ASYNC) -> dict[str, Any]:
    response = httpx.post(base + "/v1/chat/completions", json=BODY, headers=headers | {"x-webhook-url": url})
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "X-Webhook-URL"
    return error


BAD_URLS = {
    "https://evil.example/hook": "webhook_host_not_allowed",
    "http://169.254.169.254/latest/meta-data": "webhook_host_not_allowed",
    "ftp://127.0.0.1/hook": "invalid_webhook_url",
    "https://127.0.0.1@evil.example/hook": "invalid_webhook_url",
    "/relative/hook": "invalid_webhook_url",
    "http://127.0.0.1:6379/hook": "webhook_port_not_allowed",  # an allowed host, but a port beyond 443 and 80
    "https://127.0.0.1:8443/hook": "webhook_port_not_allowed",
}


def test_bad_webhook_urls_are_400(start_router: RouterFactory) -> None:
    with start(start_router) as base:
        codes = {url: _error(base, url)["code"] for url in BAD_URLS}
    assert codes == BAD_URLS


def test_a_held_call_cannot_have_a_webhook(start_router: RouterFactory) -> None:
    with start(start_router) as base:
        error = _error(base, "http://127.0.0.1/hook", {"x-deadline": "1h"})
    assert error["code"] == "webhook_requires_respond_async"
    assert "respond-async" in error["message"]


def test_webhooks_are_refused_unless_configured(start_router: RouterFactory) -> None:
    with start_router(batch=FAST) as base:
        assert _error(base, "http://127.0.0.1/hook")["code"] == "webhooks_disabled"
    with start_router(batch=FAST, webhooks=hooks()) as base:  # hosts allowed, but the secret's env var is unset
        assert _error(base, "http://127.0.0.1/hook")["code"] == "webhooks_disabled"


@pytest.mark.parametrize(
    ("url", "ports", "allowed"),
    [
        ("https://hooks.example/x", (443, 80), True),  # no port: the scheme's default
        ("http://hooks.example/x", (443, 80), True),
        ("https://hooks.example:443/x", (443, 80), True),
        ("https://hooks.example:8443/x", (443, 80), False),
        ("http://hooks.example:80/x", (443,), False),
        ("https://hooks.example:8443/x", (443, 8443), True),
    ],
)
def test_webhook_ports_are_443_and_80_unless_allowed(url: str, ports: tuple[int, ...], allowed: bool) -> None:
    if allowed:
        assert check_url(url, ["hooks.example"], ports) == url
        return
    with pytest.raises(BadRequest) as info:
        check_url(url, ["hooks.example"], ports)
    assert info.value.code == "webhook_port_not_allowed"


def test_an_allowed_name_that_resolves_to_loopback_is_refused(start_router: RouterFactory) -> None:
    with receiving() as (receiver, url):
        local = url.replace("127.0.0.1", "localhost")  # allowed by name; resolves to loopback
        webhooks = hooks(allowed_hosts=["localhost"], allow_private=False)
        webhooks["allowed_ports"] = [httpx.URL(url).port]
        with start_router(batch=FAST, webhooks=webhooks, environ={"WEBHOOK_SECRET": SECRET}) as base:
            dropped = deliveries(base, "dropped") + 1
            accepted = httpx.post(base + "/v1/chat/completions", json=BODY, headers=ASYNC | {"x-webhook-url": local})
            assert accepted.status_code == 202  # the name is allowed: only its address is not
            wait_until(lambda: deliveries(base, "dropped") == dropped, 10, "the event to be dropped")
    assert receiver.requests == []


def test_with_private_targets_allowed_the_post_goes_to_the_checked_address(start_router: RouterFactory) -> None:
    with receiving() as (receiver, url):
        local = url.replace("127.0.0.1", "localhost")
        webhooks = hooks(allowed_hosts=["localhost"], allow_private=True)
        webhooks["allowed_ports"] = [httpx.URL(url).port]
        with start_router(batch=FAST, webhooks=webhooks, environ={"WEBHOOK_SECRET": SECRET}) as base:
            delivered = deliveries(base, "delivered") + 1
            httpx.post(base + "/v1/chat/completions", json=BODY, headers=ASYNC | {"x-webhook-url": local})
            wait_until(lambda: deliveries(base, "delivered") == delivered, 10, "the delivery to be counted")
    [(headers, body)] = receiver.requests
    assert headers["host"] == f"localhost:{httpx.URL(url).port}"  # the URL's name, sent to the address checked
    Webhook(SECRET).verify(body, headers)


async def rebound_to_metadata(host: str, port: int) -> list[str]:
    """A resolver whose answer for any name is the cloud metadata address (a real lookup of that address), as a
    DNS rebinding would make it."""
    return await resolve("169.254.169.254", port)


async def test_a_name_rebound_to_the_metadata_address_is_refused(redis_url: str, key_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    store = Store(redis, key_prefix, result_ttl_s=60, idempotency_ttl_s=60)
    settings = WebhookSettings(secret_env="WEBHOOK_SECRET", allowed_hosts=["hooks.example.com"])
    parts = (store.queues, store.webhooks, store.results, store.leases)
    sender = WebhookSender(*parts, settings, SECRET, resolver=rebound_to_metadata)
    open_sender = WebhookSender(
        *parts, msgspec.structs.replace(settings, allow_private=True), SECRET, resolver=rebound_to_metadata
    )
    try:
        with pytest.raises(RefusedAddress, match=r"169\.254\.169\.254 \(metadata\)"):
            await sender.pin("https://hooks.example.com/events")
        with pytest.raises(RefusedAddress, match=r"127\.0\.0\.1 \(loopback\)"):
            await WebhookSender(*parts, settings, SECRET).pin("http://localhost/events")  # the system's resolver
        target, host, extensions = await open_sender.pin("https://hooks.example.com/events")
    finally:
        await sender.aclose()
        await open_sender.aclose()
        await redis.aclose()
    assert (target.host, host, extensions) == (
        "169.254.169.254",
        {"host": "hooks.example.com"},
        {"sni_hostname": "hooks.example.com"},
    )
    assert [forbidden(a) for a in ("10.1.2.3", "::1", "fe80::1", "100.64.0.1", "8.8.8.8", "::ffff:127.0.0.1")] == [
        "private",
        "loopback",
        "link-local",
        "private",
        None,
        "loopback",
    ]
