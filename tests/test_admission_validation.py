"""Errors at admission, not after the wait: every body the real-time lane refuses (the simulator refuses what the
APIs refuse) is refused at once in the deferred lane too, with the same status and error type (and parameter, where
the real-time answer names one), and nothing reaches a batch."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from router.core.errors import BadRequest
from router.core.validation import check
from router.telemetry import metrics
from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic

HI = [{"role": "user", "content": "hi"}]
GPT = "gpt-4o-mini"
CLAUDE = "claude-3-5-haiku-latest"
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("chat: no messages", "/v1/chat/completions", {"model": GPT}),
    ("chat: empty messages", "/v1/chat/completions", {"model": GPT, "messages": []}),
    ("chat: unknown role", "/v1/chat/completions", {"model": GPT, "messages": [{"role": "wizard", "content": "x"}]}),
    ("chat: max_tokens 0", "/v1/chat/completions", {"model": GPT, "messages": HI, "max_tokens": 0}),
    ("chat: max_completion_tokens 0", "/v1/chat/completions",
     {"model": GPT, "messages": HI, "max_completion_tokens": 0}),
    ("chat: max_tokens a string", "/v1/chat/completions", {"model": GPT, "messages": HI, "max_tokens": "ten"}),
    ("chat: n 0", "/v1/chat/completions", {"model": GPT, "messages": HI, "n": 0}),
    ("chat: n 129", "/v1/chat/completions", {"model": GPT, "messages": HI, "n": 129}),
    ("chat: temperature 3", "/v1/chat/completions", {"model": GPT, "messages": HI, "temperature": 3}),
    ("chat: temperature -1", "/v1/chat/completions", {"model": GPT, "messages": HI, "temperature": -1}),
    ("chat: top_p 1.5", "/v1/chat/completions", {"model": GPT, "messages": HI, "top_p": 1.5}),
    ("claude chat: max_completion_tokens 0 (the measured case)", "/v1/chat/completions",
     {"model": CLAUDE, "messages": HI, "max_completion_tokens": 0}),
    ("claude chat: max_tokens 0", "/v1/chat/completions", {"model": CLAUDE, "messages": HI, "max_tokens": 0}),
    ("messages: max_tokens 0", "/v1/messages", {"model": CLAUDE, "messages": HI, "max_tokens": 0}),
    ("messages: no max_tokens", "/v1/messages", {"model": CLAUDE, "messages": HI}),
    ("messages: empty messages", "/v1/messages", {"model": CLAUDE, "messages": [], "max_tokens": 8}),
    ("messages: system role", "/v1/messages",
     {"model": CLAUDE, "messages": [{"role": "system", "content": "x"}], "max_tokens": 8}),
    ("embeddings: no input", "/v1/embeddings", {"model": "text-embedding-3-small"}),
    ("embeddings: dimensions 0", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x", "dimensions": 0}),
]  # fmt: skip


def _error(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()
    error = body["error"]
    return response.status_code, error["type"], error.get("param")


def test_what_real_time_refuses_the_deferred_lane_refuses_at_once(start_router: RouterFactory, sim: Sim) -> None:
    headers = {"authorization": "Bearer dev", "anthropic-version": "2023-06-01"}
    with start_router(upstreams=with_anthropic(sim), batch=FAST) as base, httpx.Client(timeout=30) as client:
        for name, path, body in CASES:
            now = client.post(base + path, json=body, headers=headers)
            assert 400 <= now.status_code < 500, f"{name}: real time answered {now.status_code}"
            later = client.post(base + path, json=body, headers=headers | {"x-deadline": "2h"})
            status, kind, param = _error(now)
            got_status, got_kind, got_param = _error(later)
            assert (got_status, got_kind) == (status, kind), f"{name}: {later.text} vs {now.text}"
            if param is not None:
                assert got_param == param, f"{name}: {later.text} vs {now.text}"
            if path == "/v1/messages":
                assert later.json()["type"] == "error", name  # Anthropic's shape on its own path
    stats = sim.stats()
    assert stats["batch_lines_submitted"] == 0
    assert stats["realtime_calls_billed"] == 0


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("/chat/completions", {"model": GPT, "messages": HI, "max_tokens": 5, "temperature": 0.2, "top_p": 1, "n": 2}),
        ("/chat/completions", {"model": GPT, "messages": HI, "unknown_new_field": {"x": 1}}),
        ("/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "max_tokens": 0}),
        ("/embeddings", {"model": "text-embedding-3-small", "input": ["a"], "dimensions": 8}),
        ("/responses", {"model": GPT, "input": "x", "max_output_tokens": 32}),
        ("/messages", {"model": CLAUDE, "messages": HI, "max_tokens": 1, "temperature": 1, "top_k": 0}),
    ],
)
def test_valid_bodies_pass(endpoint: str, body: dict[str, Any]) -> None:
    check(endpoint, httpx.Request("POST", "/", json=body).content)


def test_a_refusal_names_its_parameter() -> None:
    with pytest.raises(BadRequest) as refused:
        check("/chat/completions", b'{"model": "m", "messages": [{"role": "user"}], "max_completion_tokens": 0}')
    assert refused.value.param == "max_completion_tokens"
    assert refused.value.code == "integer_below_min_value"


def test_the_batch_line_error_counter_is_exported() -> None:
    before = metrics.REGISTRY.get_sample_value(
        "hybrid_router_batch_line_errors_total", {"upstream": "u-test", "model": "m", "status": "400"}
    )
    metrics.batch_line_errors.labels("u-test", "m", "400").inc()
    after = metrics.REGISTRY.get_sample_value(
        "hybrid_router_batch_line_errors_total", {"upstream": "u-test", "model": "m", "status": "400"}
    )
    assert after == (before or 0) + 1
