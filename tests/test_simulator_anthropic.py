"""The simulator's Anthropic Messages and Message Batches APIs over real sockets, through the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import anthropic
import httpx
import msgspec
import openai
import pytest
from anthropic.types.messages import MessageBatch

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.waiting import wait_until

HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-4-6"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.3))) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=HEADERS) as c:
        yield c


@pytest.fixture(autouse=True)
def base(server: str, http: httpx.Client) -> str:
    """Reset state and knobs before every test (turnaround 0.3 s)."""
    http.post("/_sim/reset").raise_for_status()
    http.post("/_sim/config", json=msgspec.structs.asdict(SimConfig(batch_turnaround_s=0.3))).raise_for_status()
    return server


@pytest.fixture
def client(base: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0) as c:
        yield c


def configure(http: httpx.Client, **knobs: Any) -> None:
    http.post("/_sim/config", json=knobs).raise_for_status()


def requests(n: int, **params: Any) -> list[Any]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {"model": MODEL, "max_tokens": 200, "messages": [{"role": "user", "content": f"Q{i}"}], **params},
        }
        for i in range(n)
    ]


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10) -> tuple[MessageBatch, list[str]]:
    seen: list[str] = []

    def ended() -> MessageBatch | None:
        batch = client.messages.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.processing_status:
            seen.append(batch.processing_status)
        return batch if batch.processing_status == "ended" else None

    return wait_until(ended, timeout, f"the batch to end (seen: {seen})", every=0.03), seen


def test_message_is_deterministic_with_usage(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=200, messages=HELLO)
    message = raw.parse()
    again = client.messages.create(model=MODEL, max_tokens=200, messages=HELLO)
    other = client.messages.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Bye"}])
    assert raw.headers["request-id"].startswith("req_")
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL and message.stop_reason == "end_turn" and message.stop_sequence is None
    block = message.content[0]
    assert block.type == "text" and block.text.startswith("Simulated reply")
    assert again.content[0].type == "text" and again.content[0].text == block.text
    assert other.content[0].type == "text" and other.content[0].text != block.text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert message.usage.service_tier == "standard"


def test_same_conversation_gets_the_same_answer_as_openai(client: anthropic.Anthropic, base: str) -> None:
    """A chat and its Anthropic translation (system → top-level `system`) are answered identically."""
    message = client.messages.create(model=MODEL, max_tokens=500, system="Be terse.", messages=HELLO)
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as oai:
        chat = oai.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be terse."}, *HELLO])
    assert message.content[0].type == "text" and message.content[0].text == chat.choices[0].message.content
    assert chat.usage and message.usage.input_tokens == chat.usage.prompt_tokens


def test_max_tokens_and_stop_sequences(client: anthropic.Anthropic) -> None:
    cut = client.messages.create(model=MODEL, max_tokens=3, messages=HELLO)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens <= 3
    stopped = client.messages.create(model=MODEL, max_tokens=200, messages=HELLO, stop_sequences=["reply"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "reply"
    assert stopped.content[0].type == "text" and stopped.content[0].text == "Simulated "


def test_streaming_events_follow_the_documented_sequence(client: anthropic.Anthropic, http: httpx.Client) -> None:
    plain = client.messages.create(model=MODEL, max_tokens=200, messages=HELLO)
    with client.messages.stream(model=MODEL, max_tokens=200, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 3 and plain.content[0].type == "text" and "".join(pieces) == plain.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == plain.usage.output_tokens

    body = {"model": MODEL, "max_tokens": 200, "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/messages", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    names = [e for e in events if e != "ping"]
    deltas = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert deltas >= 3


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": MODEL, "messages": HELLO}, 400, "invalid_request_error"),
        ({"model": MODEL, "max_tokens": 0, "messages": HELLO}, 400, "invalid_request_error"),
        ({"model": MODEL, "max_tokens": 10, "messages": []}, 400, "invalid_request_error"),
        ({"model": "gpt-4o", "max_tokens": 10, "messages": HELLO}, 404, "not_found_error"),
    ],
)
def test_bad_requests_in_anthropic_shape(http: httpx.Client, body: dict[str, Any], status: int, kind: str) -> None:
    r = http.post("/v1/messages", json=body)
    assert r.status_code == status
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == kind and r.json()["error"]["message"]
    if status == 400 and "max_tokens" not in body:
        assert r.json()["error"]["message"] == "max_tokens: Field required"


def test_auth_and_version_headers_are_required(base: str, http: httpx.Client) -> None:
    with httpx.Client(base_url=base) as anonymous:
        no_key = anonymous.post("/v1/messages", json={}, headers={"anthropic-version": "2023-06-01"})
        no_version = anonymous.post("/v1/messages", json={}, headers={"x-api-key": "k"})
        no_key_batches = anonymous.get("/v1/messages/batches", headers={"anthropic-version": "2023-06-01"})
        bearer = anonymous.get(
            "/v1/messages/batches", headers={"authorization": "Bearer k", "anthropic-version": "2023-06-01"}
        )
    assert no_key.status_code == 401 and no_key_batches.status_code == 401
    assert no_key.json()["type"] == "error" and no_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400 and no_version.json()["error"]["type"] == "invalid_request_error"
    assert bearer.status_code == 200  # current SDKs send the key as a Bearer token
    configure(http, api_key="sk-ant-right")
    with (
        anthropic.Anthropic(base_url=base, api_key="sk-ant-wrong", max_retries=0) as wrong,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        wrong.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert caught.value.response.json()["error"]["type"] == "authentication_error"
    assert http.post("/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": HELLO}).status_code == 401
    right = {"x-api-key": "sk-ant-right"}
    assert http.post(
        "/v1/messages", json={"model": MODEL, "max_tokens": 5, "messages": HELLO}, headers=right
    ).is_success


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, anthropic.RateLimitError), (500, anthropic.InternalServerError), (529, anthropic.InternalServerError)],
)
def test_injected_errors(client: anthropic.Anthropic, status: int, error: type[anthropic.APIStatusError]) -> None:
    with pytest.raises(error) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, extra_headers={"X-Sim-Error": str(status)})
    assert caught.value.status_code == status and caught.value.response.json()["type"] == "error"
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "0"


def test_error_rate_applies_to_messages(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, error_rate=1.0)
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model=MODEL, max_tokens=10, messages=HELLO)
    assert http.get("/_sim/stats").json()["realtime_calls"] == {"/v1/messages": 2}


def _time(value: datetime) -> float:
    assert value.tzinfo is not None  # RFC 3339 with an offset
    return value.timestamp()


def test_message_batch_lifecycle_and_results(client: anthropic.Anthropic, base: str, http: httpx.Client) -> None:
    # Results only once ended: asked of a batch that runs for minutes, so it surely has not ended yet.
    configure(http, batch_turnaround_s=600)
    running = client.messages.batches.create(requests=requests(1, max_tokens=10))
    early = http.get(f"/v1/messages/batches/{running.id}/results")
    assert early.status_code == 400 and early.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(running.id)
    configure(http, batch_turnaround_s=0.3)
    created = client.messages.batches.create(requests=requests(6))
    assert created.id.startswith("msgbatch_") and created.type == "message_batch"
    assert created.processing_status == "in_progress" and created.results_url is None
    counts = created.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (6, 0, 0, 0, 0)
    assert created.expires_at - created.created_at == timedelta(hours=24)
    raw = http.get(f"/v1/messages/batches/{created.id}").json()
    assert raw["created_at"].endswith("Z") and datetime.fromisoformat(raw["created_at"]).tzinfo is not None
    batch, seen = wait_ended(client, created.id)
    assert seen[-1] == "ended" and batch.ended_at is not None
    assert _time(batch.ended_at) >= _time(batch.created_at)
    assert batch.results_url == f"{base}/v1/messages/batches/{created.id}/results"
    assert batch.request_counts.succeeded == 6 and batch.request_counts.processing == 0
    results = list(client.messages.batches.results(created.id))
    assert sorted(r.custom_id for r in results) == [f"req-{i}" for i in range(6)]
    assert [r.custom_id for r in results] != [f"req-{i}" for i in range(6)]
    direct = client.messages.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "Q0"}])
    for result in results:
        assert result.result.type == "succeeded"
        assert result.result.message.usage.service_tier == "batch"
        if result.custom_id == "req-0":
            assert result.result.message.content == direct.content
    stats = http.get("/_sim/stats").json()
    assert stats["message_batches_created"] == 2 and stats["message_batch_requests_submitted"] == 1 + 6


def test_message_batch_list_and_delete(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=0.1)
    ids = [client.messages.batches.create(requests=requests(1)).id for _ in range(3)]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more is True
    assert [b.id for b in client.messages.batches.list(limit=2, after_id=ids[1]).data] == [ids[0]]
    assert [b.id for b in client.messages.batches.list(limit=1)] == ids[::-1]  # auto-pagination
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_missing")
    configure(http, batch_turnaround_s=30)
    running = client.messages.batches.create(requests=requests(1))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(running.id)
    wait_ended(client, ids[0])
    deleted = client.messages.batches.delete(ids[0])
    assert deleted.id == ids[0] and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(ids[0])


def test_message_batch_list_pages_both_ways_as_documented(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=0.05)
    empty = client.messages.batches.list()
    assert (empty.data, empty.has_more, empty.first_id, empty.last_id) == ([], False, None, None)
    ids = [client.messages.batches.create(requests=requests(i + 1)).id for i in range(5)]
    newest = ids[::-1]
    assert [b.id for b in client.messages.batches.list()] == newest  # default limit 20: one page
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest[:2] and (first.first_id, first.last_id) == (newest[0], newest[1])
    assert first.has_more is True
    # after_id: the page right after (older); has_more says whether older ones remain.
    assert first.last_id is not None
    older = client.messages.batches.list(limit=2, after_id=first.last_id)
    assert [b.id for b in older.data] == newest[2:4] and older.has_more is True
    assert older.last_id is not None
    last = client.messages.batches.list(limit=2, after_id=older.last_id)
    assert [b.id for b in last.data] == newest[4:] and last.has_more is False
    # before_id: the page right before (newer), still newest first; has_more looks in that direction.
    newer = client.messages.batches.list(limit=2, before_id=newest[4])
    assert [b.id for b in newer.data] == newest[2:4] and newer.has_more is True
    assert newer.first_id is not None
    top = client.messages.batches.list(limit=2, before_id=newer.first_id)
    assert [b.id for b in top.data] == newest[:2] and top.has_more is False
    # The SDK walks either way: after_id pages from the newest, before_id pages (first_id) toward the newest.
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest
    walked = [b.id for b in client.messages.batches.list(limit=1, before_id=newest[4])]
    assert sorted(walked) == sorted(newest[:4])
    counts = [b.request_counts for b in client.messages.batches.list()]
    assert [c.processing + c.succeeded + c.errored + c.canceled + c.expired for c in counts] == [5, 4, 3, 2, 1]
    # A deleted batch leaves the list, but its id still works as a cursor (a walk in progress goes on).
    wait_ended(client, ids[2])
    client.messages.batches.delete(ids[2])
    assert [b.id for b in client.messages.batches.list(after_id=ids[2])] == newest[3:]
    assert [b.id for b in client.messages.batches.list(before_id=ids[2])] == newest[:2]
    assert ids[2] not in [b.id for b in client.messages.batches.list()]
    for bad in (
        {"limit": 0},
        {"limit": 1001},
        {"after_id": "msgbatch_never"},
        {"after_id": ids[0], "before_id": ids[1]},
    ):
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.list(**bad)


def test_message_batch_cancel(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=3.0, batch_cancel_delay_s=0.2)
    created = client.messages.batches.create(requests=requests(10))
    # Cancel once some requests ran (ten run over about two seconds, leaving seconds to cancel the rest; the counts
    # show only at the end, the bill at once).
    wait_until(lambda: http.get("/_sim/stats").json()["message_batch_requests_billed"], what="a request to run")
    cancelling = client.messages.batches.cancel(created.id)
    assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at is not None
    batch, seen = wait_ended(client, created.id)
    assert seen[-1] == "ended" and seen[0] in ("canceling", "ended")  # the cancel answered `canceling` (above)
    counts = batch.request_counts
    assert 0 < counts.succeeded < 10 and counts.succeeded + counts.canceled == 10
    kinds = [r.result.type for r in client.messages.batches.results(created.id)]
    assert kinds.count("canceled") == counts.canceled and kinds.count("succeeded") == counts.succeeded
    assert http.get("/_sim/stats").json()["batches_cancelled"] == 1
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(created.id)


def test_message_batch_expiry_line_failures_and_batch_fail(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=5, batch_expire_s=0.1, batch_expire_done_fraction=0.5)
    expired, _ = wait_ended(client, client.messages.batches.create(requests=requests(10)).id)
    assert (expired.request_counts.succeeded, expired.request_counts.expired) == (5, 5)
    assert (
        sorted(r.result.type for r in client.messages.batches.results(expired.id))
        == ["expired"] * 5 + ["succeeded"] * 5
    )

    configure(http, batch_turnaround_s=0.1, batch_expire_s=None, batch_line_failure_rate=0.2)
    failing, _ = wait_ended(client, client.messages.batches.create(requests=requests(10)).id)
    assert (failing.request_counts.succeeded, failing.request_counts.errored) == (8, 2)
    errored = [r.result for r in client.messages.batches.results(failing.id) if r.result.type == "errored"]
    assert all(e.error.error.type == "api_error" for e in errored)

    configure(http, batch_line_failure_rate=0, batch_fail=True)
    rejected, _ = wait_ended(client, client.messages.batches.create(requests=requests(3)).id)
    assert rejected.request_counts.errored == 3


def test_invalid_params_are_errored_results(client: anthropic.Anthropic, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=0.1)
    reqs = requests(3)
    del reqs[0]["params"]["max_tokens"]
    reqs[1]["params"]["stream"] = True
    reqs[2]["params"]["model"] = "not-a-model"
    batch, _ = wait_ended(client, client.messages.batches.create(requests=reqs).id)
    assert batch.request_counts.errored == 3
    errors = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    kinds = {cid: result.error.error.type for cid, result in errors.items() if result.type == "errored"}
    assert kinds == {"req-0": "invalid_request_error", "req-1": "invalid_request_error", "req-2": "not_found_error"}


@pytest.mark.parametrize(
    "reqs",
    [
        [],
        [{"custom_id": "has space", "params": {"model": MODEL, "max_tokens": 1, "messages": HELLO}}],
        [{"custom_id": "x" * 65, "params": {"model": MODEL, "max_tokens": 1, "messages": HELLO}}],
        requests(1) + requests(1),
        [{"custom_id": "no-params"}],
    ],
)
def test_create_validates_requests_synchronously(http: httpx.Client, reqs: list[Any]) -> None:
    r = http.post("/v1/messages/batches", json={"requests": reqs})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert http.get("/_sim/stats").json()["message_batches_created"] == 0


def test_submissions_are_counted_across_both_apis(client: anthropic.Anthropic, base: str, http: httpx.Client) -> None:
    client.messages.batches.create(requests=requests(2))
    client.messages.batches.create(requests=requests(1))
    assert http.get("/_sim/stats").json()["max_submissions_per_custom_id"] == 2
    line = b'{"custom_id":"req-0","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[]}}'
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as oai:
        uploaded = oai.files.create(file=("in.jsonl", line + b"\n"), purpose="batch")
        oai.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    stats = http.get("/_sim/stats").json()
    assert stats["max_submissions_per_custom_id"] == 3 and stats["batch_lines_submitted"] == 4
