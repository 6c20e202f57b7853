"""Tenant limits over real sockets: a tenant over `rpm`, `max_deferred` or its budget gets 429, another does not."""

from __future__ import annotations

import calendar
import hashlib
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import redis

from router.deferred.store import scripts
from router.deferred.tenants import until_midnight, utc_day
from tests.helpers.servers import RouterFactory, Sim
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

Client = Callable[..., openai.OpenAI]
FAST = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0, "lease_s": 5.0}
KEYS = [
    {"sha256": hashlib.sha256(b"sk-a").hexdigest(), "tenant": "a"},
    {"sha256": hashlib.sha256(b"sk-b").hexdigest(), "tenant": "b"},
]
QUEUED = {"prefer": "respond-async", "x-deadline": "2h"}


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarise memo number {i}."}]


def chat(client: openai.OpenAI, i: int, **headers: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=prompt(i),  # type: ignore[arg-type]
        extra_headers=headers or None,
    )


def capped(client: openai.OpenAI, i: int, **headers: str) -> Any:
    """`chat` with at most 10 output tokens: a small worst case to reserve against a budget."""
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=prompt(i),  # type: ignore[arg-type]
        max_tokens=10,
        extra_headers=headers or None,
    )


def usage_limits(base: str, key: str) -> dict[str, Any]:
    usage = httpx.get(base + "/v1/usage", headers={"authorization": f"Bearer {key}"})
    usage.raise_for_status()
    limits: dict[str, Any] = usage.json()["limits"]
    return limits


def metric_lines(base: str, name: str) -> list[str]:
    return [line for line in httpx.get(base + "/metrics").text.splitlines() if line.startswith(name + "{")]


def counter(base: str, series: str) -> float:
    """One series' value (0 before its first increment)."""
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_tenant_over_its_rpm_gets_429_on_every_replica_and_another_tenant_does_not(
    oai: Client, start_router: RouterFactory
) -> None:
    # Tenants of this test's own: the metrics registry is the process's, and a gauge series an earlier test set
    # (tenant b's budget headroom, say) stays in it.
    a, b = "rpm-a-" + secrets.token_hex(3), "rpm-b-" + secrets.token_hex(3)
    keys = [key | {"tenant": {"a": a, "b": b}[key["tenant"]]} for key in KEYS]
    tree = {"auth": "keys", "keys": keys, "tenants": {a: {"rpm": 3}}, "batch": FAST}
    with start_router(**tree) as one, start_router(**tree) as two:
        a1, a2 = oai(one, api_key="sk-a"), oai(two, api_key="sk-a")
        assert chat(a1, 1).http_response.status_code == 200
        assert chat(a2, 2).http_response.status_code == 200  # the other replica shares the allowance
        assert usage_limits(one, "sk-a") == {"rpm": {"limit": 3, "remaining": 1}}
        assert chat(a1, 3).http_response.status_code == 200
        with pytest.raises(openai.RateLimitError) as refused:
            chat(a2, 4)
        b1 = oai(one, api_key="sk-b")
        assert [chat(b1, i).http_response.status_code for i in range(5)] == [200] * 5
        deferred = chat(a1, 5, **QUEUED)  # the deferred lane does not spend real-time calls
        headroom = metric_lines(one, "hybrid_router_tenant_headroom")
        refusals = counter(two, f'hybrid_router_tenant_refused_total{{limit="rpm",tenant="{a}"}}')
        assert usage_limits(one, "sk-b") == {}
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "requests per min (RPM): Limit 3" in error["message"]
    headers = refused.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    assert deferred.http_response.status_code == 202
    assert f'hybrid_router_tenant_headroom{{limit="rpm",tenant="{a}"}} 0.0' in headroom
    assert not [line for line in headroom if f'tenant="{b}"' in line]  # a tenant without limits has no series
    assert refusals == 1


def test_a_tenant_at_max_deferred_gets_429_but_its_retries_still_attach(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=5)  # a's two calls stay in flight for seconds while the refusals are checked
    tree = {"auth": "keys", "keys": KEYS, "tenants": {"a": {"max_deferred": 2}}, "batch": FAST}
    with start_router(**tree) as base:
        a, b = oai(base, api_key="sk-a"), oai(base, api_key="sk-b")
        first = chat(a, 1, **QUEUED, **{"idempotency-key": "job-1"})
        chat(a, 2, **QUEUED)
        assert usage_limits(base, "sk-a")["max_deferred"] == {"limit": 2, "in_use": 2, "remaining": 0}
        with pytest.raises(openai.RateLimitError) as refused:
            chat(a, 3, **QUEUED)
        retry = chat(a, 1, **QUEUED, **{"idempotency-key": "job-1"})  # a retry of a stored call is not a new one
        others = [chat(b, i, **QUEUED).http_response.status_code for i in range(4)]
        done = httpx.get(f"{base}/v1/deferred/{first.parse().id}?wait=30", headers={"authorization": "Bearer sk-a"},
                         timeout=40)  # fmt: skip
        wait_until(lambda: usage_limits(base, "sk-a")["max_deferred"]["in_use"] == 0, 30, "a's calls answered")
        later = chat(a, 4, **QUEUED)
    error = refused.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
    assert "deferred calls queued or in flight: limit 2" in error["message"]
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert retry.http_response.status_code == 202
    assert retry.headers["x-router-reattached"] == "true"
    assert retry.headers["x-router-request-id"] == first.headers["x-router-request-id"]
    assert others == [202] * 4
    assert done.status_code == 200
    assert later.http_response.status_code == 202  # answered calls free their places


def test_a_tenant_over_its_daily_budget_gets_insufficient_quota_in_both_lanes(
    oai: Client, start_router: RouterFactory
) -> None:
    # Each call reserves its worst case (here its 10 output tokens and its body as input) and settles what it cost;
    # once what is spent leaves no room for another call's worst case, calls are refused in both lanes.
    tree = {"auth": "keys", "keys": KEYS, "tenants": {"*": {"daily_budget_usd": 0.00005}}, "batch": FAST}
    with start_router(**tree) as base:
        a, b = oai(base, api_key="sk-a"), oai(base, api_key="sk-b")
        paid = []
        with pytest.raises(openai.RateLimitError) as realtime:
            for i in range(50):
                paid.append(capped(a, i))
        with pytest.raises(openai.RateLimitError) as deferred:
            capped(a, 99, **QUEUED)
        other = capped(b, 1)
        budget = usage_limits(base, "sk-a")["daily_budget_usd"]
        headroom = metric_lines(base, "hybrid_router_tenant_headroom")
    assert paid and other.http_response.status_code == 200
    assert all(p.http_response.status_code == 200 for p in paid)
    for refused in (realtime.value, deferred.value):
        error = refused.body
        assert isinstance(error, dict)
        assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
        assert "daily budget" in error["message"]
        assert 1 <= int(refused.response.headers["retry-after"]) <= 86400  # until 00:00 UTC
        assert refused.response.headers["x-should-retry"] == "false"
    assert budget["limit"] == 0.00005
    spent = sum(float(p.headers["x-router-cost-usd"]) for p in paid)
    assert budget["spent"] == pytest.approx(spent)
    assert spent <= 0.00005  # never more than the budget: each call fitted before it was admitted
    assert budget["remaining"] == pytest.approx(0.00005 - spent)
    assert any('hybrid_router_tenant_headroom{limit="daily_budget_usd",tenant="a"}' in line for line in headroom)
    assert any('limit="daily_budget_usd",tenant="b"' in line for line in headroom)  # "*" covers every key's tenant


def test_the_rpm_bucket_refills_at_rpm_a_minute(redis_url: str, key_prefix: str) -> None:
    """`scripts.TAKE_CALL` with the clock passed in: a burst of `rpm`, then one call per 60/rpm seconds."""
    with redis.Redis.from_url(redis_url) as client:
        take = client.register_script(scripts.TAKE_CALL)
        key = f"{key_prefix}:tenant:t:rate"

        def at(ms: float) -> list[int]:
            return [int(v) for v in take(keys=[key], args=[repr(ms), repr(60_000 / 3), 3])]

        t0 = 1.7e12
        assert [at(t0), at(t0), at(t0)] == [[1, 2], [1, 1], [1, 0]]
        assert at(t0 + 1000) == [0, 19_000]  # the next call is allowed 20 s after the first
        assert at(t0 + 20_000) == [1, 0]
        assert at(t0 + 60_000) == [1, 1]  # 40 s later two more have come back, one of them taken now
        assert 0 < int(client.pttl(key)) <= 40_001  # gone once the bucket would be full again


def test_budgets_start_again_at_midnight_utc() -> None:
    assert until_midnight(calendar.timegm((2026, 11, 27, 23, 59, 30))) == 30
    assert until_midnight(calendar.timegm((2026, 12, 31, 0, 0, 0))) == 86400
    assert utc_day(calendar.timegm((2026, 12, 31, 23, 59, 59))) == "2026-12-31"
