"""Fuzzing the API: whatever a client sends (body or headers), the answer is never a 500 and every error is
OpenAI-shaped."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]
# A module-scoped router serves every example; how fast examples are drawn is no property (the profile in
# conftest.py suppresses too_slow too, but a test's own list replaces the profile's).
SUPPRESSED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
models = st.sampled_from(["gpt-4o-mini", "text-embedding-3-small", "no-such-model", "", "x" * 300]) | st.text(
    max_size=12
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": models | json_values,
        "messages": st.just([{"role": "user", "content": "hi"}]) | json_values,
        "input": st.just("hello") | json_values,
        "prompt": st.just("hi") | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.just({"include_usage": True}) | json_values,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2) | json_values,
        "user": st.text(max_size=8) | json_values,
        "service_tier": st.sampled_from(["flex", "auto"]) | json_values,
        "max_tokens": st.integers(-5, 50) | json_values,
    },
)
# Header values a well-formed HTTP client can send (visible ASCII, no leading or trailing space).
header_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
deadlines = st.one_of(
    st.none(),
    st.sampled_from(["now", "0", "2h", "PT1H", "90s", "-1m", "2001-01-01T00:00:00Z", "9999d", "1e400", "nan"]),
    header_text,
)
nested = st.integers(0, 3000).map(lambda n: b'{"model": "gpt-4o-mini", "messages": ' + b"[" * n + b"]" * n + b"}")
raw_bodies = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    nested,
    st.text(alphabet='[]{}",:\\ ab', max_size=200).map(str.encode),  # bracket soup, brackets inside strings
)

KEY = "sk-fuzz"
TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# Headers httpx frames itself (a wrong value would be a broken request, not a test of the router) and X-Sim-*
# (the simulator's error injection, passed through by design).
FRAMED = {"content-length", "transfer-encoding", "host", "connection"}
SPECIAL = ["authorization", "api-key", "x-deadline", "idempotency-key", "prefer", "x-webhook-url", "content-type",
           "openai-organization", "openai-project", "openai-beta", "accept", "cookie", "user-agent"]  # fmt: skip
header_names = st.sampled_from(SPECIAL) | st.text(alphabet=TOKEN, min_size=1, max_size=24).filter(
    lambda name: name.lower() not in FRAMED and not name.lower().startswith("x-sim")
)
header_values = st.one_of(
    header_text,
    st.sampled_from([f"Bearer {KEY}", "Bearer", "Basic abc", "respond-async", "1h", "application/json"]),
    st.text(alphabet=string.printable.strip() + " ", max_size=200).map(str.strip),
    st.integers(0, 20_000).map(lambda n: "v" * n),  # past the app's limit, and past the server's bound
)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=70)


@pytest.fixture(scope="module")
def fuzz_router(sim_server: Any, redis_url: str) -> Iterator[str]:
    """One router for the whole module (hypothesis runs many examples against it)."""
    import secrets

    from router.http.app import create_app
    from router.ops.serving import serve_in_thread
    from tests.helpers.servers import router_settings

    prefix = "hrfuzz-" + secrets.token_hex(4)
    fast = {"max_wait_s": 0.2, "poll_interval_s": 0.2, "turnaround_prior_s": 1.0, "margin_s": 1.0}
    settings = router_settings(sim_server, redis_url, prefix, batch=fast, limits={"max_body_bytes": 4096})
    with serve_in_thread(create_app(settings, {"SIM_KEY": "sk"})) as base:
        yield base
    import redis

    with redis.Redis.from_url(redis_url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*"))
        if keys:
            r.delete(*keys)


@pytest.fixture(scope="module")
def keyed_router(sim_server: Any, redis_url: str) -> Iterator[str]:
    """A router with `auth: keys` and small header limits, served with the server's bound those limits imply."""
    import secrets

    from router.http.app import create_app
    from router.ops.serving import serve_in_thread
    from tests.helpers.servers import router_settings

    prefix = "hrfuzz-" + secrets.token_hex(4)
    keys = [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "fuzz"}]
    limits = {"max_body_bytes": 4096, "max_header_bytes": 4096, "max_headers": 40}
    settings = router_settings(sim_server, redis_url, prefix, auth="keys", keys=keys, limits=limits)
    with serve_in_thread(create_app(settings, {"SIM_KEY": "sk"}), limits=settings.limits) as base:
        yield base
    import redis

    with redis.Redis.from_url(redis_url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*"))
        if keys:
            r.delete(*keys)


def check(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    assert response.status_code < 500 or response.status_code in (502, 503, 504)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and error["message"]


@settings(max_examples=120, deadline=None, suppress_health_check=SUPPRESSED)
@given(endpoint=st.sampled_from(ENDPOINTS), body=bodies, deadline=deadlines, idem=st.none() | header_text)
def test_json_bodies_never_500(
    fuzz_router: str, endpoint: str, body: dict[str, Any], deadline: str | None, idem: str | None
) -> None:
    headers = {"prefer": "respond-async"}  # deferred calls answer 202 at once instead of holding
    if deadline is not None:
        headers["x-deadline"] = deadline
    if idem is not None:
        headers["idempotency-key"] = idem
    check(httpx.post(fuzz_router + endpoint, content=json.dumps(body).encode(), headers=headers, timeout=30))


@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESSED)
@given(endpoint=st.sampled_from(ENDPOINTS), raw=raw_bodies)
def test_raw_bytes_never_500(fuzz_router: str, endpoint: str, raw: bytes) -> None:
    check(httpx.post(fuzz_router + endpoint, content=raw, timeout=30))


@settings(max_examples=40, deadline=None, suppress_health_check=SUPPRESSED)
@given(path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/_-.%", max_size=30), wait=st.text(max_size=6))
def test_any_path_or_query_never_500(fuzz_router: str, path: str, wait: str) -> None:
    check(httpx.get(f"{fuzz_router}/v1/deferred/{path}", params={"wait": wait}, timeout=30))
    check(httpx.get(f"{fuzz_router}/{path}", timeout=30))


@settings(max_examples=80, deadline=None, suppress_health_check=SUPPRESSED)
@given(
    target=st.sampled_from(["POST /v1/chat/completions", "POST /v1/embeddings", "GET /v1/models", "GET /metrics"]),
    headers=header_lists,
    body=bodies,
)
def test_any_headers_never_500(keyed_router: str, target: str, headers: list[tuple[str, str]], body: Any) -> None:
    method, path = target.split(" ")
    content = json.dumps(body).encode() if method == "POST" else None
    check(httpx.request(method, keyed_router + path, content=content, headers=headers, timeout=30))
