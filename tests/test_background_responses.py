"""The Responses API's background mode through the router, with the official `openai` SDK: deferred (an
`X-Deadline`) it is a call of the batch lane the router answers as a queued `Response`, retrieves and cancels;
without a deadline it is the upstream's, passed through. A typed SDK call that asks `Prefer: respond-async` is
refused, since it cannot read the 202."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from router.core.background import call_id_of
from tests.helpers.metrics import metric
from tests.helpers.servers import FAST, RouterFactory, Sim, with_anthropic
from tests.helpers.waiting import wait_until

Client = Callable[..., openai.OpenAI]
LATER = {"X-Deadline": "2h"}
NODE_DIR = Path(__file__).parent / "node"
KEYS = [
    {"sha256": hashlib.sha256(b"sk-a").hexdigest(), "tenant": "a"},
    {"sha256": hashlib.sha256(b"sk-b").hexdigest(), "tenant": "b"},
]


def _finished(client: openai.OpenAI, rid: str) -> Any:
    found: list[Any] = []

    def done() -> bool:
        found[:] = [client.responses.retrieve(rid)]
        return found[0].status not in ("queued", "in_progress")

    wait_until(done, 30, what=f"{rid} finished")
    return found[0]


def test_background_response_is_deferred_retrieved_and_billed_once(
    oai: Client, start_router: RouterFactory, sim: Sim
) -> None:
    with start_router(batch=FAST, auth="keys", keys=KEYS) as base:
        client = oai(base, api_key="sk-a")
        created = client.responses.create(
            model="gpt-4o-mini", input="Name three rivers.", background=True, extra_headers=LATER
        )
        assert created.status in ("queued", "in_progress")
        assert created.background is True
        assert created.model == "gpt-4o-mini"
        assert created.output == []
        assert created.id.startswith("resp_dfr_")
        with pytest.raises(openai.NotFoundError):
            oai(base, api_key="sk-b").responses.retrieve(created.id)  # another tenant's id is unknown to it
        done = _finished(client, created.id)
        assert done.status == "completed"
        assert done.id == created.id
        assert done.background is True
        assert done.output_text
        with pytest.raises(openai.BadRequestError):
            client.responses.cancel(created.id)  # an answered response is not cancelled, as the API answers
    stats = sim.stats()
    assert stats["batch_lines_billed"] == 1
    assert stats["realtime_calls_billed"] == 0


def test_cancel_of_a_queued_call_leaves_its_queue_unsent(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    # A batch is built only when two calls wait: the first is cancelled before, so the batch holds the next two.
    with start_router(batch=FAST | {"max_wait_s": 600.0, "max_requests": 2}) as base:
        client = oai(base)
        first = client.responses.create(model="gpt-4o-mini", input="one", background=True, extra_headers=LATER)
        cancelled = client.responses.cancel(first.id)
        assert cancelled.status == "cancelled"
        assert client.responses.cancel(first.id).status == "cancelled"  # idempotent
        assert client.responses.retrieve(first.id).status == "cancelled"
        rest = [
            client.responses.create(model="gpt-4o-mini", input=text, background=True, extra_headers=LATER)
            for text in ("two", "three")
        ]
        assert [_finished(client, r.id).status for r in rest] == ["completed", "completed"]
        assert client.responses.retrieve(first.id).status == "cancelled"
    stats = sim.stats()
    assert stats["batch_lines_submitted"] == 2
    assert stats["batch_lines_billed"] == 2
    assert stats["realtime_calls_billed"] == 0


def test_cancel_of_a_submitted_call_drops_its_late_result(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=2.0)
    with start_router(batch=FAST) as base:
        client = oai(base)
        created = client.responses.create(model="gpt-4o-mini", input="late", background=True, extra_headers=LATER)
        wait_until(lambda: sim.stats()["batch_lines_submitted"] == 1, what="the call submitted in a batch")
        assert client.responses.retrieve(created.id).status == "in_progress"
        late = metric(httpx.get(base + "/metrics").text, "hybrid_router_late_batch_results_total")
        assert client.responses.cancel(created.id).status == "cancelled"
        # The provider still runs the line (and bills it, as OpenAI bills a cancelled background response's work);
        # the router drops the result when it ingests the batch.
        wait_until(
            lambda: metric(httpx.get(base + "/metrics").text, "hybrid_router_late_batch_results_total") == late + 1,
            20,
            "the cancelled call's batch result dropped",
        )
        assert sim.stats()["batch_lines_billed"] == 1
        assert client.responses.retrieve(created.id).status == "cancelled"
        deferred = httpx.get(f"{base}/v1/deferred/{_call_id(created.id)}", headers={"authorization": "Bearer dev"})
        assert deferred.json()["status"] == "cancelled"


def _call_id(rid: str) -> str:
    found = call_id_of(rid)
    assert found is not None
    return found


def test_without_a_deadline_background_is_the_upstreams(oai: Client, router_url: str, sim: Sim) -> None:
    client = oai(router_url)
    created = client.responses.create(model="gpt-4o-mini", input="Now, in the background.", background=True)
    assert created.status == "queued"
    assert created.background is True
    assert not created.id.startswith("resp_dfr_")
    done = client.responses.retrieve(created.id)
    assert done.status == "completed"
    assert done.output_text
    other = client.responses.create(model="gpt-4o-mini", input="Cancel me.", background=True)
    assert client.responses.cancel(other.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_unknown")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_dfr_" + "x" * 10)  # looks like the router's, is nobody's
    stats = sim.stats()
    assert stats["realtime_calls_billed"] == 2
    assert stats["batch_lines_submitted"] == 0


def test_typed_sdk_call_asking_respond_async_is_refused(oai: Client, start_router: RouterFactory, sim: Sim) -> None:
    asked = LATER | {"Prefer": "respond-async"}
    with start_router(upstreams=with_anthropic(sim), batch=FAST) as base:
        client = oai(base)
        messages: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=messages, extra_headers=asked)
        assert refused.value.code == "respond_async_needs_raw_response"
        assert "with_raw_response" in refused.value.message
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, extra_headers=asked
        )
        assert raw.status_code == 202
        assert raw.http_response.json()["object"] == "deferred.call"
        claude = anthropic.Anthropic(base_url=base, api_key="dev", max_retries=0)
        try:
            with pytest.raises(anthropic.BadRequestError) as refused_claude:
                claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=16, messages=messages,
                                       extra_headers=asked)  # fmt: skip
            assert refused_claude.value.body is not None
            assert "with_raw_response" in str(refused_claude.value.message)
            raw_claude = claude.messages.with_raw_response.create(
                model="claude-3-5-haiku-latest", max_tokens=16, messages=messages, extra_headers=asked
            )
            assert raw_claude.status_code == 202
            assert raw_claude.http_response.json()["object"] == "deferred.call"
        finally:
            claude.close()
    assert sim.stats()["realtime_calls_billed"] == 0


def test_openai_node_background_create_retrieve_cancel(start_router: RouterFactory, sim: Sim) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: this case needs Node.js 20+ and `make node`")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail("openai-node is not installed: run `make node`")
    # The second call is cancelled while queued: a batch is built only when two calls wait, or after 1 s.
    with start_router(batch=FAST | {"max_wait_s": 1.0}) as base:
        ran = subprocess.run(
            [node, "background.mjs", base], cwd=NODE_DIR, capture_output=True, text=True, timeout=60, check=False
        )
    assert ran.returncode == 0, ran.stderr[-3000:]
    seen = json.loads(ran.stdout)
    assert seen["created"]["id"].startswith("resp_dfr_")
    assert seen["created"]["status"] in ("queued", "in_progress")
    assert seen["created"]["background"] is True
    assert seen["done"] == {"id": seen["created"]["id"], "status": "completed", "text": seen["done"]["text"]}
    assert seen["done"]["text"]
    assert seen["cancelled"] == ["cancelled", "cancelled"]
    wait_until(lambda: sim.stats()["batch_lines_billed"] >= 1, what="the first call's line billed")
    stats = sim.stats()
    assert stats["realtime_calls_billed"] == 0
    assert stats["batch_lines_billed_by_custom_id"] and max(stats["batch_lines_billed_by_custom_id"].values()) == 1
