"""The real-time lane through the official openai SDK, over real sockets, against the built-in simulator."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers.servers import RouterFactory, Sim, upstream
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the proxy."}]
Client = Callable[..., openai.OpenAI]


def test_chat_completion_passes_through(oai: Client, router_url: str, sim: Sim) -> None:
    raw = oai(router_url).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-router-lane"] == "realtime"
    assert raw.headers["x-router-request-id"].startswith("req_")
    assert sim.stats()["realtime_calls"]["/v1/chat/completions"] == 1


def test_answer_is_the_upstreams_answer(oai: Client, router_url: str, sim: Sim) -> None:
    direct = oai(sim.v1).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    proxied = oai(router_url).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert proxied.choices[0].message.content == direct.choices[0].message.content


def test_stream_with_usage(oai: Client, router_url: str) -> None:
    stream = oai(router_url).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_first_chunk_arrives_before_upstream_finishes(oai: Client, router_url: str, sim: Sim) -> None:
    sim.configure(stream_chunk_delay_ms=300)
    with oai(router_url).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a long story " * 20}], stream=True
    ) as stream:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        # The upstream is still producing: the proxy did not wait for the whole stream.
        assert sim.stats()["open_streams"] >= 1
        rest = list(stream)
    assert rest and rest[-1].choices[0].finish_reason == "stop"
    # The simulator closes its side after it sent the last chunk: wait for that, not just for the chunk.
    wait_until(lambda: sim.stats()["open_streams"] == 0, 10, "the upstream stream to close")


async def test_async_client_every_endpoint(router_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=router_url + "/v1", api_key="dev", max_retries=0) as c:
        chat = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert chat.choices[0].message.content
        stream = await c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        pieces = [chunk async for chunk in stream]
        assert pieces[-1].choices[0].finish_reason == "stop"
        emb = await c.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=64)
        assert len(emb.data) == 2 and len(emb.data[0].embedding) == 64
        comp = await c.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=16)
        assert comp.choices[0].text
        resp = await c.responses.create(model="gpt-4o-mini", input="Write one line.")
        assert resp.output_text
        models = await c.models.list()
        assert any(m.id == "gpt-4o-mini" for m in models.data)


def test_sync_endpoints(oai: Client, router_url: str) -> None:
    c = oai(router_url)
    emb = c.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(emb.data[0].embedding) == 1536
    emb64 = c.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="base64")
    assert len(emb64.data[0].embedding) > 0
    comp = c.completions.create(model="gpt-4o-mini", prompt="Hi", stream=True)
    assert "".join(ch.choices[0].text for ch in comp if ch.choices)
    assert c.responses.create(model="gpt-4o-mini", input="hi").status == "completed"
    assert c.models.retrieve("gpt-4o").id == "gpt-4o"


def test_upstream_key_is_injected_and_client_key_is_not_forwarded(oai: Client, router_url: str, sim: Sim) -> None:
    sim.configure(api_key="sk-sim")  # the simulator now refuses any other key
    completion = oai(router_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.choices[0].message.content


# --- errors --------------------------------------------------------------------------------------------


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


def test_bad_json_is_400(router_url: str) -> None:
    r = httpx.post(router_url + "/v1/chat/completions", content=b"{not json", headers={"authorization": "Bearer x"})
    assert r.status_code == 400
    assert _error(r)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [{"messages": MESSAGES}, {"model": 42, "messages": MESSAGES}, [1, 2], {"model": "gpt-4o", "stream": "yes"}],
)
def test_bad_fields_are_400(router_url: str, body: object) -> None:
    r = httpx.post(router_url + "/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert _error(r)["type"] == "invalid_request_error"


def test_missing_model_via_sdk(oai: Client, router_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(router_url).chat.completions.create(model="", messages=MESSAGES)
    assert info.value.status_code == 400


def test_unknown_route_is_404(router_url: str) -> None:
    r = httpx.get(router_url + "/v1/nothing-here")
    assert r.status_code == 404
    assert _error(r)["code"] == "unknown_url"


def test_wrong_method_is_405(router_url: str) -> None:
    r = httpx.get(router_url + "/v1/chat/completions")
    assert r.status_code == 405
    assert _error(r)["type"] == "invalid_request_error"


def test_unknown_model_is_404_from_upstream(oai: Client, router_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai(router_url).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_model_no_upstream_serves_is_404(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    upstreams = [upstream(sim.v1, models=["gpt-*"])]
    with start_router(upstreams=upstreams) as base, pytest.raises(openai.NotFoundError) as info:
        oai(base).chat.completions.create(model="claude-sonnet-4", messages=MESSAGES)
    assert info.value.code == "model_not_found"


def test_body_over_limit_is_413(start_router: RouterFactory) -> None:
    with start_router(limits={"max_body_bytes": 1024}) as base:
        big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 4096}]}
        r = httpx.post(base + "/v1/chat/completions", json=big)
    assert r.status_code == 413
    assert _error(r)["code"] == "request_too_large"


def test_proxy_keys_map_to_tenants(oai: Client, start_router: RouterFactory) -> None:
    keys = [{"sha256": hashlib.sha256(b"sk-team-a").hexdigest(), "tenant": "team-a"}]
    with start_router(auth="keys", keys=keys) as base:
        with pytest.raises(openai.AuthenticationError) as info:
            oai(base).chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert info.value.code == "invalid_api_key"
        ok = oai(base, api_key="sk-team-a").chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert ok.choices[0].message.content
        assert httpx.get(base + "/v1/models").status_code == 401


def test_upstream_down_is_502(oai: Client, start_router: RouterFactory) -> None:
    from router.ops.serving import free_port

    dead = [upstream(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)]
    with start_router(upstreams=dead) as base, pytest.raises(openai.APIStatusError) as info:
        oai(base).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unavailable"


def test_upstream_timeout_is_504(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    slow = [upstream(sim.v1, timeout_s=0.3, max_retries=0)]
    with start_router(upstreams=slow) as base, pytest.raises(openai.APIStatusError) as info:
        oai(base).chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"X-Sim-Latency-Ms": "2000"})
    assert info.value.status_code == 504


def test_upstream_errors_pass_through_after_bounded_retries(oai: Client, router_url: str, sim: Sim) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        oai(router_url).chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"X-Sim-Error": "429"})
    assert info.value.status_code == 429
    assert sim.stats()["realtime_calls"]["/v1/chat/completions"] == 3  # the call and two retries


def test_retry_recovers_from_transient_errors(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(error_rate=0.3)
    with start_router(upstreams=[upstream(sim.v1, max_retries=6)]) as base:
        c = oai(base)
        answers = [c.chat.completions.create(model="gpt-4o", messages=MESSAGES) for _ in range(6)]
    assert all(a.choices[0].message.content for a in answers)
    assert sim.stats()["realtime_calls"]["/v1/chat/completions"] > 6  # some were retried, none reached the caller


def test_upstream_400_is_passed_through(oai: Client, router_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai(router_url).chat.completions.create(model="gpt-4o", messages=[])
    assert info.value.status_code == 400


def test_client_disconnect_cancels_the_upstream_call(router_url: str, sim: Sim) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            router_url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"X-Sim-Latency-Ms": "3000"},
            timeout=0.5,
        )
    wait_until(lambda: sim.stats().get("cancelled_calls", 0) >= 1, 5, "the upstream call to be cancelled")
    assert sim.stats()["cancelled_calls"] == 1


def test_health_ready_metrics(oai: Client, router_url: str) -> None:
    assert httpx.get(router_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(router_url + "/readyz")
    assert ready.status_code == 200
    assert json.loads(ready.content)["checks"] == {"redis": True, "upstream:openai": True}
    oai(router_url).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    text = httpx.get(router_url + "/metrics").text
    assert "hybrid_router_upstream_latency_seconds_bucket" in text
    assert "hybrid_router_proxy_overhead_seconds_count" in text


def test_readyz_reports_a_dead_upstream(start_router: RouterFactory) -> None:
    from router.ops.serving import free_port

    dead = [upstream(f"http://127.0.0.1:{free_port()}/v1")]
    with start_router(upstreams=dead) as base:
        r = httpx.get(base + "/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["upstream:openai"] is False


def test_usage_totals_per_tenant_and_day_survive_a_restart(oai: Client, start_router: RouterFactory) -> None:
    keys = [{"sha256": hashlib.sha256(b"sk-usage").hexdigest(), "tenant": "usage-team"}]
    with start_router(auth="keys", keys=keys) as base:
        oai(base, api_key="sk-usage").chat.completions.create(model="gpt-4o", messages=MESSAGES)
        oai(base, api_key="sk-usage").embeddings.create(model="text-embedding-3-small", input="x")
    with start_router(auth="keys", keys=keys) as base:  # a new process' worth of router, same Redis
        r = httpx.get(base + "/v1/usage", headers={"authorization": "Bearer sk-usage"})
        bad = httpx.get(base + "/v1/usage?day=yesterday", headers={"authorization": "Bearer sk-usage"})
    assert r.status_code == 200
    usage = r.json()
    assert usage["tenant"] == "usage-team"
    assert usage["lanes"]["realtime"]["requests"] == 2
    assert usage["lanes"]["realtime"]["cost_usd"] > 0
    assert usage["lanes"]["realtime"]["savings_usd"] == 0
    assert bad.status_code == 400
