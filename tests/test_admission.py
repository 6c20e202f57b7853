"""Admission without HTTP: the headers that steer a call, and the lane `plan` gives it (a gateway on real Redis,
an upstream that is never contacted)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest

from router.core.errors import BadRequest, InvalidDeadline
from router.core.settings import load_settings
from router.deferred.store import client as redis_client
from router.http.admission import (
    Arrival,
    delivery_asked,
    is_retry,
    prefers_async,
    read_deadline,
    reattach_allowed,
)
from router.http.app import make_providers
from router.http.delivery import Asked
from router.http.gateway import Gateway
from tests.helpers.servers import NO_POLICIES, ROOT

NOW = 1_800_000_000.0
MAX_S = 7 * 86400.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (None, False)),
        ({"x-deadline": "2h"}, (NOW + 7200, False)),
        ({"x-deadline": "90"}, (NOW + 90, False)),
        ({"x-deadline": "now"}, (None, True)),
        ({"x-deadline": "0"}, (None, True)),
    ],
)
def test_read_deadline(headers: Mapping[str, str], expected: tuple[float | None, bool]) -> None:
    assert read_deadline(headers, NOW, MAX_S) == expected


@pytest.mark.parametrize("raw", ["soon", "8d", "-5m"])
def test_read_deadline_refuses(raw: str) -> None:
    with pytest.raises(InvalidDeadline):
        read_deadline({"x-deadline": raw}, NOW, MAX_S)


@pytest.mark.parametrize(
    ("headers", "retry"),
    [({}, False), ({"x-stainless-retry-count": "0"}, False), ({"x-stainless-retry-count": " 2 "}, True),
     ({"x-stainless-retry-count": "x"}, False), ({"x-stainless-retry-count": "-1"}, False)],
)  # fmt: skip
def test_is_retry(headers: Mapping[str, str], retry: bool) -> None:
    assert is_retry(headers) is retry


@pytest.mark.parametrize(
    ("prefer", "wanted"),
    [("", False), ("respond-async", True), ("wait=10, Respond-Async", True), ("return=minimal", False)],
)
def test_prefers_async(prefer: str, wanted: bool) -> None:
    assert prefers_async({"prefer": prefer}) is wanted


@pytest.mark.parametrize(("value", "allowed"), [(None, True), ("always", True), ("never", False), ("0", False),
                                                ("OFF", False), ("false", False)])  # fmt: skip
def test_reattach_allowed(value: str | None, allowed: bool) -> None:
    assert reattach_allowed({} if value is None else {"x-router-reattach": value}) is allowed


def test_delivery_asked_reads_every_header() -> None:
    headers = {"prefer": "respond-async", "idempotency-key": "k1", "x-stainless-retry-count": "1",
               "x-router-reattach": "never"}  # fmt: skip
    assert delivery_asked(headers, "https://hooks.example/x") == Asked(
        held=False, webhook="https://hooks.example/x", idempotency_key="k1", retry=True, reattach=False
    )
    assert delivery_asked({}, None) == Asked()


@pytest.fixture
async def gateway(redis_url: str, key_prefix: str) -> AsyncIterator[Gateway]:
    settings = load_settings(
        None,
        {},
        {
            # Never contacted: planning reads the policies, the catalog and Redis only.
            "upstreams": [{"name": "openai", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "redis_url": redis_url,
            "key_prefix": key_prefix,
            "policies_dir": str(NO_POLICIES),
            "pricing_file": str(ROOT / "config" / "pricing.yaml"),
        },
    )
    gateway = Gateway(settings, make_providers(settings, {}), loops=False)
    yield gateway
    await redis_client.close(gateway.redis)


def _arrival(body: bytes, endpoint: str = "/chat/completions", **headers: str) -> Arrival:
    return Arrival(tenant="default", endpoint=endpoint, body=body, headers=headers)


CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


@pytest.mark.parametrize(
    ("body", "endpoint", "headers", "lane", "reason"),
    [
        (CHAT, "/chat/completions", {}, "realtime", "policy"),
        (CHAT, "/chat/completions", {"x-deadline": "now"}, "realtime", "policy"),
        (CHAT, "/chat/completions", {"x-deadline": "24h"}, "batch", "fits"),
        (CHAT, "/chat/completions", {"x-deadline": "10s"}, "realtime", "too_soon"),
        (b'{"model":"no-such-model","messages":[]}', "/chat/completions", {"x-deadline": "24h"}, "realtime",
         "no_batch"),
        (b'{"model":"gpt-4o-mini","input":"hi"}', "/responses", {"x-deadline": "24h"}, "batch", "fits"),
    ],
)  # fmt: skip
async def test_plan_picks_the_lane(
    gateway: Gateway, body: bytes, endpoint: str, headers: dict[str, str], lane: str, reason: str
) -> None:
    arrival = _arrival(body, endpoint, **headers)
    chosen = await gateway.admission.plan(arrival, gateway.admission.routing_view(body), NOW)
    assert (chosen.choice.lane, chosen.choice.reason, chosen.provider.name) == (lane, reason, "openai")


async def test_plan_refuses_what_admission_refuses(gateway: Gateway) -> None:
    with pytest.raises(BadRequest, match="model parameter"):
        gateway.admission.routing_view(b'{"messages":[]}')
    with pytest.raises(InvalidDeadline):
        await gateway.admission.plan(
            _arrival(CHAT, **{"x-deadline": "soon"}), gateway.admission.routing_view(CHAT), NOW
        )
    with pytest.raises(BadRequest, match="respond-async"):
        gateway.admission.webhook_url({"x-webhook-url": "https://hooks.example/x"})
