"""The simulator's OpenAI Files and Batch APIs over real sockets, through the official SDK, checked against the spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types import Batch

from router.ops.serving import serve_in_thread
from router.simulator import SimConfig, create_simulator
from tests.helpers.openapi import validate
from tests.helpers.waiting import wait_until

KEY = {"Authorization": "Bearer sk-test"}
FAST = {"batch_turnaround_s": 0.2}
TERMINAL = {"completed", "failed", "expired", "cancelled"}
LIFECYCLE = ["validating", "in_progress", "finalizing", "completed"]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(create_simulator(SimConfig(batch_turnaround_s=0.3))) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=KEY) as c:
        yield c


@pytest.fixture(autouse=True)
def base(server: str, http: httpx.Client) -> str:
    """Reset state and knobs before every test (turnaround 0.3 s)."""
    http.post("/_sim/reset").raise_for_status()
    http.post("/_sim/config", json=msgspec.structs.asdict(SimConfig(batch_turnaround_s=0.3))).raise_for_status()
    return server


@pytest.fixture
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as c:
        yield c


def configure(http: httpx.Client, **knobs: Any) -> None:
    http.post("/_sim/config", json=knobs).raise_for_status()


def chat_line(i: int, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"Question number {i}?"}]}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body, **extra}


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((line if isinstance(line, bytes) else msgspec.json.encode(line)) + b"\n" for line in lines)


def submit(client: openai.OpenAI, lines: list[Any], endpoint: str = "/v1/chat/completions") -> Batch:
    uploaded = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    raw = client.batches.with_raw_response.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]  # any string, to exercise validation
        completion_window="24h",
    )
    validate("Batch", raw.http_response.json())
    return raw.parse()


def wait(
    client: openai.OpenAI, batch_id: str, until: set[str] = TERMINAL, timeout: float = 10
) -> tuple[Batch, list[str]]:
    """Poll until the status is in `until`; returns the batch and the distinct statuses seen, in order."""
    seen: list[str] = []

    def reached() -> Batch | None:
        raw = client.batches.with_raw_response.retrieve(batch_id)
        validate("Batch", raw.http_response.json())
        batch = raw.parse()
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        return batch if batch.status in until else None

    return wait_until(reached, timeout, f"the batch to reach {sorted(until)} (seen: {seen})", every=0.03), seen


def lines_done(client: openai.OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts else 0


def file_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [msgspec.json.decode(line) for line in client.files.content(file_id).content.splitlines()]


def test_files_upload_retrieve_list_content_delete(client: openai.OpenAI) -> None:
    data = jsonl([chat_line(1)])
    raw = client.files.with_raw_response.create(file=("input.jsonl", data), purpose="batch")
    validate("OpenAIFile", raw.http_response.json())
    uploaded = raw.parse()
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data) and uploaded.filename == "input.jsonl"
    assert uploaded.purpose == "batch" and uploaded.expires_at == uploaded.created_at + 30 * 86400
    short = client.files.create(
        file=("notes.txt", b"hello"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert short.expires_at == short.created_at + 3600
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).content == data
    listed = client.files.with_raw_response.list()
    validate("ListFilesResponse", listed.http_response.json())
    assert [f.id for f in listed.parse()] == [short.id, uploaded.id]  # newest first
    assert [f.id for f in client.files.list(purpose="batch")] == [uploaded.id]
    deleted = client.files.with_raw_response.delete(uploaded.id)
    validate("DeleteFileResponse", deleted.http_response.json())
    assert deleted.parse().deleted is True
    with pytest.raises(openai.NotFoundError) as gone:
        client.files.retrieve(uploaded.id)
    validate("ErrorResponse", gone.value.response.json())
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("x.jsonl", data), purpose="nonsense")  # type: ignore[arg-type]


def test_chat_batch_full_lifecycle(client: openai.OpenAI, http: httpx.Client) -> None:
    lines = [chat_line(i) for i in range(12)]
    created = submit(client, lines)
    assert created.id.startswith("batch_") and created.status == "validating"
    assert created.endpoint == "/v1/chat/completions" and created.completion_window == "24h"
    assert created.expires_at == created.created_at + 86400 and created.model == "gpt-4o-mini"
    batch, seen = wait(client, created.id)
    assert batch.status == "completed"
    # Seen in the documented order; a busy host's polls may miss a brief state, but its timestamp says it was there.
    assert [s for s in LIFECYCLE if s in seen] == seen and seen[-1] == "completed"
    assert batch.in_progress_at is not None and batch.finalizing_at is not None and batch.completed_at is not None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (12, 12, 0)
    assert batch.error_file_id is None and batch.errors is None

    output = file_lines(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    assert [line["custom_id"] for line in output] != [line["custom_id"] for line in lines]  # order not kept
    by_id = {line["custom_id"]: line for line in lines}
    input_tokens = output_tokens = 0
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"].startswith("req_")
        body = line["response"]["body"]
        validate("CreateChatCompletionResponse", body)
        direct = http.post("/v1/chat/completions", json=by_id[line["custom_id"]]["body"]).json()
        assert body["choices"] == direct["choices"] and body["usage"] == direct["usage"]
        assert body["model"] == direct["model"] and body["object"] == "chat.completion"
        input_tokens += body["usage"]["prompt_tokens"]
        output_tokens += body["usage"]["completion_tokens"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)
    assert batch.usage.total_tokens == input_tokens + output_tokens
    output_file = client.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output"
    stats = http.get("/_sim/stats").json()
    assert (stats["batches_created"], stats["batch_lines_submitted"], stats["files_uploaded"]) == (1, 12, 1)
    assert stats["realtime_calls"] == {"/v1/chat/completions": 12}  # only the direct calls above


@pytest.mark.parametrize(
    ("endpoint", "body", "component"),
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a b", "c"]}, "CreateEmbeddingResponse"),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}, "CreateCompletionResponse"),
        ("/v1/responses", {"model": "gpt-4.1-mini", "input": "Say hi"}, "Response"),
    ],
)
def test_other_endpoints_batch_like_real_time(
    client: openai.OpenAI, http: httpx.Client, endpoint: str, body: dict[str, Any], component: str
) -> None:
    configure(http, **FAST)
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body} for i in range(3)]
    batch, _ = wait(client, submit(client, lines, endpoint).id)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 3
    direct = http.post(endpoint, json=body).json()
    for line in file_lines(client, batch.output_file_id):
        validate(component, line["response"]["body"])
        got = line["response"]["body"]
        assert got.get("data", got.get("choices", got.get("output")))[0] is not None
        if endpoint == "/v1/responses":
            assert got["output"][0]["content"] == direct["output"][0]["content"] and got["usage"] == direct["usage"]
        else:
            assert got.get("data", got.get("choices")) == direct.get("data", direct.get("choices"))
    assert batch.usage and batch.usage.input_tokens > 0


async def test_list_batches_paginates_newest_first(base: str, client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, **FAST)
    ids = [submit(client, [chat_line(i)]).id for i in range(3)]
    raw = client.batches.with_raw_response.list(limit=2)
    validate("ListBatchesResponse", raw.http_response.json())
    page = raw.http_response.json()
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert page["first_id"] == ids[2] and page["last_id"] == ids[1]
    rest = client.batches.list(limit=2, after=page["last_id"])
    assert [b.id for b in rest.data] == [ids[0]] and rest.has_more is False
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0) as aclient:
        walked = [b.id async for b in aclient.batches.list(limit=1)]
        assert walked == ids[::-1]
        one = await aclient.batches.retrieve(ids[0])
        assert one.id == ids[0]


@pytest.mark.parametrize(
    ("lines", "code", "line", "param"),
    [
        ([chat_line(1), b"{not json"], "invalid_json_line", 2, None),
        ([chat_line(1, method="GET")], "invalid_method", 1, "method"),
        ([chat_line(1, url="/v1/embeddings")], "invalid_url", 1, "url"),
        ([chat_line(1), chat_line(2, model="gpt-4o")], "model_mismatch", 2, "body.model"),
        ([chat_line(1), chat_line(1)], "duplicate_custom_id", 2, "custom_id"),
        (
            [{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions"}],
            "missing_required_parameter",
            1,
            "body",
        ),
    ],
)
def test_invalid_input_files_fail_validation(
    client: openai.OpenAI, http: httpx.Client, lines: list[Any], code: str, line: int, param: str | None
) -> None:
    configure(http, **FAST)
    created = submit(client, lines)
    batch, seen = wait(client, created.id)
    # Validating, then failed: the first poll of a busy host may come after validation has ended.
    assert created.status == "validating" and seen[-1] == "failed" and set(seen) <= {"validating", "failed"}
    assert batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data
    first = batch.errors.data[0]
    assert (first.code, first.line, first.param) == (code, line, param)
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.request_counts and batch.request_counts.total == 0


def test_streaming_lines_and_the_batch_fail_knob_fail_validation(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, **FAST)
    streaming = chat_line(1)
    streaming["body"]["stream"] = True
    failed, _ = wait(client, submit(client, [streaming]).id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert failed.errors.data[0].param == "body.stream"
    configure(http, batch_fail=True)
    knob, _ = wait(client, submit(client, [chat_line(1)]).id)
    assert knob.status == "failed" and knob.errors and knob.errors.data
    assert knob.errors.data[0].code == "token_limit_exceeded"
    configure(http, batch_fail=False)
    assert wait(client, submit(client, [chat_line(1)]).id)[0].status == "completed"


def test_more_than_50000_lines_fail_validation(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=0)
    line = b'{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[]}}'
    data = b"\n".join(line % i for i in range(50_001))
    uploaded = client.files.create(file=("big.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.errors and batch.errors.data
    assert [e.code for e in batch.errors.data] == ["too_many_requests"]


def test_create_rejects_bad_parameters(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("input.jsonl", jsonl([chat_line(1)])), purpose="batch")
    other = client.files.create(file=("input.jsonl", jsonl([chat_line(1)])), purpose="user_data")
    good: dict[str, Any] = {
        "input_file_id": uploaded.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    bad_cases: list[tuple[dict[str, Any], type[openai.APIStatusError], str | None]] = [
        ({"completion_window": "1h"}, openai.BadRequestError, "completion_window"),
        ({"endpoint": "/v1/audio/speech"}, openai.BadRequestError, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, openai.BadRequestError, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, openai.BadRequestError, "metadata"),
        ({"input_file_id": "file-missing"}, openai.NotFoundError, "input_file_id"),
        ({"input_file_id": other.id}, openai.BadRequestError, "input_file_id"),
    ]
    for change, error, param in bad_cases:
        with pytest.raises(error) as caught:
            client.batches.create(**{**good, **change})
        validate("ErrorResponse", caught.value.response.json())
        assert caught.value.param == param
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")
    ok = client.batches.create(**good, metadata={f"k{i}": "v" for i in range(16)})
    assert ok.metadata == {f"k{i}": "v" for i in range(16)}


def test_expired_batch_keeps_partial_output(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=5, batch_expire_s=0.2, batch_expire_done_fraction=0.5)
    lines = [chat_line(i) for i in range(10)]
    batch, seen = wait(client, submit(client, lines).id)
    assert batch.status == "expired" and seen[-1] == "expired" and batch.expired_at is not None
    assert batch.completed_at is None and batch.request_counts
    assert (batch.request_counts.total, batch.request_counts.completed) == (10, 5)
    done = file_lines(client, batch.output_file_id)
    expired = file_lines(client, batch.error_file_id)
    assert len(done) == 5 and len(expired) == 5
    assert {line["custom_id"] for line in done} | {line["custom_id"] for line in expired} == {
        f"req-{i}" for i in range(10)
    }
    assert all(line["response"] is None and line["error"]["code"] == "batch_expired" for line in expired)


def test_cancel_keeps_finished_lines_and_cancels_the_rest(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=3.0, batch_cancel_delay_s=0.2)
    lines = [chat_line(i) for i in range(10)]
    created = submit(client, lines)
    # Cancel once some lines are done (ten lines finish from 0.3 s to 2.4 s), so seconds are left to cancel the rest.
    wait_until(lambda: lines_done(client, created.id), what="the first line to finish")
    raw = client.batches.with_raw_response.cancel(created.id)
    validate("Batch", raw.http_response.json())
    cancelling = raw.parse()
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    assert client.batches.cancel(created.id).status == "cancelling"  # idempotent
    batch, seen = wait(client, created.id)
    # The cancel answered `cancelling`; a busy host's first poll may come after the cancel has ended.
    assert seen[-1] == "cancelled" and "completed" not in seen and batch.cancelled_at is not None
    done = file_lines(client, batch.output_file_id)
    cancelled = file_lines(client, batch.error_file_id)
    assert 0 < len(done) < 10 and len(done) + len(cancelled) == 10
    assert batch.request_counts and batch.request_counts.completed == len(done)
    assert all(line["error"]["code"] == "batch_cancelled" and line["response"] is None for line in cancelled)
    assert http.get("/_sim/stats").json()["batches_cancelled"] == 1
    configure(http, **FAST)
    finished, _ = wait(client, submit(client, [chat_line(1)]).id)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(finished.id)


def test_line_failures_go_to_the_error_file(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, batch_turnaround_s=0.2, batch_line_failure_rate=0.3)
    batch, _ = wait(client, submit(client, [chat_line(i) for i in range(10)]).id)
    assert batch.status == "completed" and batch.request_counts
    assert (batch.request_counts.completed, batch.request_counts.failed) == (7, 3)
    failures = file_lines(client, batch.error_file_id)
    assert len(failures) == 3 and len(file_lines(client, batch.output_file_id)) == 7
    for line in failures:
        assert line["response"]["status_code"] == 500 and line["error"] is None
        validate("ErrorResponse", line["response"]["body"])


def test_requests_the_endpoint_rejects_become_error_lines(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, **FAST)
    batch, _ = wait(client, submit(client, [chat_line(i, model="gpt-unknown") for i in range(3)]).id)
    assert batch.status == "completed" and batch.output_file_id is None
    assert batch.request_counts and batch.request_counts.failed == 3
    for line in file_lines(client, batch.error_file_id):
        assert line["response"]["status_code"] == 404
        validate("ErrorResponse", line["response"]["body"])
        assert line["response"]["body"]["error"]["code"] == "model_not_found"


def test_stats_track_submissions_per_custom_id(client: openai.OpenAI, http: httpx.Client) -> None:
    configure(http, **FAST)
    first = submit(client, [chat_line(i) for i in range(4)])
    submit(client, [chat_line(i) for i in range(2, 6)])
    stats = http.get("/_sim/stats").json()
    assert stats["max_submissions_per_custom_id"] == 2
    assert (stats["batches_created"], stats["batch_lines_submitted"], stats["files_uploaded"]) == (2, 8, 2)
    wait(client, first.id)
    assert http.get("/_sim/stats").json()["max_submissions_per_custom_id"] == 2
    http.post("/_sim/reset").raise_for_status()
    assert http.get("/_sim/stats").json()["max_submissions_per_custom_id"] == 0
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve(first.id)
