"""The native Batch API through the router, with the official SDK: files and batches per tenant, pages, limits,
and each batch's usage booked once at the batch rate (metrics and /v1/usage), across restarts and crashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
import redis

from router.core.pricing import load_pricing, usage_from_body
from router.core.settings import BatchSettings, Upstream
from router.deferred.store import Store
from router.deferred.store.client import close, connect
from router.passthrough import native_batches
from router.passthrough.native_batches import NativeStore, NativeUpstream, NativeWatcher
from router.providers.openai import OpenAIProvider
from router.providers.openai_native import OpenAINative
from router.telemetry import metrics
from router.telemetry.accounting import Accounting
from tests.helpers.openapi import validate
from tests.helpers.servers import ROOT, RouterFactory, Sim
from tests.helpers.waiting import wait_until, wait_until_async

T = TypeVar("T")
Client = Callable[..., openai.OpenAI]
KEYS = {"key-a": "team-a", "key-b": "team-b"}
AUTH: dict[str, Any] = {
    "auth": "keys",
    "keys": [{"sha256": hashlib.sha256(key.encode()).hexdigest(), "tenant": tenant} for key, tenant in KEYS.items()],
}
FAST = {"poll_interval_s": 0.2, "lease_s": 5.0}
PRICES = load_pricing(ROOT / "config" / "pricing.yaml")


def jsonl(n: int, tag: str = "r", model: str = "gpt-4o-mini") -> bytes:
    lines = (
        {"custom_id": f"{tag}{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": f"Summarise document {tag}{i}."}]}}
        for i in range(n)
    )  # fmt: skip
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something other than None (or fail after `timeout`)."""
    found: list[T] = []

    def given() -> bool:
        value = probe()
        if value is not None:
            found.append(value)
        return value is not None

    wait_until(given, timeout, "a value")
    return found[0]


def ended(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    def probe() -> openai.types.Batch | None:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in native_batches.TERMINAL else None

    return wait_for(probe)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(f"hybrid_router_{name}", labels) or 0.0


def native_usage(base: str, key: str) -> dict[str, float]:
    lanes: dict[str, dict[str, float]] = httpx.get(base + "/v1/usage", headers=_bearer(key)).json()["lanes"]
    return lanes.get("native", {})


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def expected_cost(output: bytes) -> tuple[int, float, float]:
    """(lines billed, cost, savings) of an output file, priced here from the price table at the batch rate."""
    count, cost, savings = 0, 0.0, 0.0
    for raw in output.splitlines():
        line = json.loads(raw)
        if line["response"]["status_code"] != 200:
            continue
        usage = usage_from_body(line["response"]["body"])
        priced = PRICES.cost(line["response"]["body"]["model"], usage, "batch") if usage else None
        assert priced is not None
        count, cost, savings = count + 1, cost + priced.actual_usd, savings + priced.savings_usd
    return count, cost, savings


@pytest.fixture
def clients(oai: Client) -> Callable[[str], tuple[openai.OpenAI, openai.OpenAI]]:
    def make(base: str) -> tuple[openai.OpenAI, openai.OpenAI]:
        return oai(base, api_key="key-a"), oai(base, api_key="key-b")

    return make


def test_round_trip_and_tenant_scoping(start_router: RouterFactory, clients: Any, sim: Sim) -> None:
    with start_router(batch=FAST, **AUTH) as base:
        a, b = clients(base)
        raw = a.files.with_raw_response.create(file=("in.jsonl", jsonl(3)), purpose="batch")
        validate("OpenAIFile", raw.http_response.json())
        uploaded = raw.parse()
        assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(3))
        raw_batch = a.batches.with_raw_response.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
            metadata={"job": "nightly"},
        )  # fmt: skip
        validate("Batch", raw_batch.http_response.json())
        done = ended(a, raw_batch.parse().id)
        assert done.status == "completed" and done.request_counts and done.request_counts.completed == 3
        validate("Batch", a.batches.with_raw_response.retrieve(done.id).http_response.json())
        assert done.output_file_id is not None
        output = a.files.content(done.output_file_id).read()
        assert sorted(json.loads(line)["custom_id"] for line in output.splitlines()) == ["r0", "r1", "r2"]
        assert a.files.retrieve(done.output_file_id).purpose == "batch_output"

        listed = a.files.with_raw_response.list()
        validate("ListFilesResponse", listed.http_response.json())
        assert [f.id for f in listed.parse().data] == [done.output_file_id, uploaded.id]
        batches = a.batches.with_raw_response.list()
        validate("ListBatchesResponse", batches.http_response.json())
        assert [x.id for x in batches.parse().data] == [done.id]

        # The other tenant sees none of it, and cannot tell it exists: the same 404 as for an id nobody has.
        assert b.files.list().data == [] and b.batches.list().data == []
        file_actions: list[tuple[str | None, Callable[[], object]]] = [
            (uploaded.id, lambda: b.files.retrieve(uploaded.id)),
            (done.output_file_id, lambda: b.files.content(done.output_file_id or "")),
            (uploaded.id, lambda: b.files.delete(uploaded.id)),
            ("file-0123456789abcdef01234567", lambda: b.files.retrieve("file-0123456789abcdef01234567")),
        ]
        for file_id, action in file_actions:
            with pytest.raises(openai.NotFoundError) as caught:
                action()
            validate("ErrorResponse", caught.value.response.json())
            assert caught.value.body == {
                "message": f"No such File object: {file_id}", "type": "invalid_request_error", "param": "id",
                "code": None,
            }  # fmt: skip
        batch_actions: list[Callable[[], object]] = [
            lambda: b.batches.retrieve(done.id),
            lambda: b.batches.cancel(done.id),
        ]
        for batch_action in batch_actions:
            with pytest.raises(openai.NotFoundError) as caught:
                batch_action()
            assert caught.value.body == {
                "message": f"No batch found with id '{done.id}'.", "type": "invalid_request_error",
                "param": "batch_id", "code": None,
            }  # fmt: skip
        with pytest.raises(openai.NotFoundError) as caught:
            b.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert caught.value.param == "input_file_id"

        deleted = a.files.with_raw_response.delete(uploaded.id)
        validate("DeleteFileResponse", deleted.http_response.json())
        assert deleted.parse().deleted
        with pytest.raises(openai.NotFoundError):
            a.files.retrieve(uploaded.id)
    assert sim.stats()["batches_created"] == 1


def test_savings_counted_once_across_a_restart(start_router: RouterFactory, clients: Any, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=1.0)
    labels = {"lane": "native", "model": "gpt-4o-mini", "tenant": "team-a"}
    before = {name: sample(f"{name}_total", **labels) for name in ("savings_usd", "cost_usd")}

    def counted() -> float:
        return sample("requests_total", upstream="openai", outcome="ok", **labels)

    requests_before = counted()
    with start_router(loops=False, batch=FAST, **AUTH) as base:  # no watcher: submits, stops unbooked
        a, _ = clients(base)
        uploaded = a.files.create(file=("in.jsonl", jsonl(4)), purpose="batch")
        batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert native_usage(base, "key-a") == {}
    with start_router(batch=FAST, **AUTH) as base:  # restarted (same Redis and prefix): books it
        a, _ = clients(base)
        done = wait_for(lambda: native_usage(base, "key-a") or None)
        assert native_usage(base, "key-b") == {}
        output = a.files.content(ended(a, batch.id).output_file_id or "").read()
        count, cost, savings = expected_cost(output)
        # The metrics count a chunk of lines after Redis booked it (`_book_chunk`): wait for them too.
        wait_until(lambda: counted() - requests_before >= count, 10, "the booked lines counted in the metrics")
    with start_router(batch=FAST, **AUTH) as base:  # and another: nothing left to book, nothing booked again
        a, _ = clients(base)
        a.batches.retrieve(batch.id)  # an ended batch seen again is not booked again
        usage = native_usage(base, "key-a")
    assert count == 4
    assert usage == done
    assert usage["requests"] == count
    assert usage["cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert usage["savings_usd"] == pytest.approx(savings, rel=1e-9) and savings > 0
    assert usage["baseline_usd"] == pytest.approx(cost + savings, rel=1e-9)
    assert counted() - requests_before == count
    assert sample("savings_usd_total", **labels) - before["savings_usd"] == pytest.approx(savings, rel=1e-9)
    assert sample("cost_usd_total", **labels) - before["cost_usd"] == pytest.approx(cost, rel=1e-9)


def test_an_output_deleted_first_is_booked_first(
    start_router: RouterFactory, clients: Any, sim: Sim, redis_url: str, key_prefix: str
) -> None:
    with start_router(loops=False, batch=FAST, **AUTH) as base:  # no watcher: only the delete can book it
        a, _ = clients(base)
        uploaded = a.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
        batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        output_id = ended(a, batch.id).output_file_id or ""
        output = a.files.content(output_id).read()
        assert native_usage(base, "key-a") == {}
        assert a.files.delete(output_id).deleted
        count, cost, _ = expected_cost(output)
        assert native_usage(base, "key-a")["requests"] == count == 3
        assert native_usage(base, "key-a")["cost_usd"] == pytest.approx(cost, rel=1e-9)
        # Deleted upstream behind the router's back: nothing can be read, so the batch is closed unbooked.
        second = a.files.create(file=("in2.jsonl", jsonl(2, "s")), purpose="batch")
        gone = a.batches.create(input_file_id=second.id, endpoint="/v1/chat/completions", completion_window="24h")
        with openai.OpenAI(base_url=sim.v1, api_key="sk-sim") as direct:
            direct.files.delete(ended(a, gone.id).output_file_id or "")
        with pytest.raises(openai.NotFoundError):
            a.files.content(ended(a, gone.id).output_file_id or "")
    with start_router(batch=FAST, **AUTH) as base, redis.Redis.from_url(redis_url) as plain:
        # Booking the batch and leaving the watch list are two steps: wait for the end state of both.
        key, watch = f"{key_prefix}:{{n:team-a}}:batch:{gone.id}", f"{key_prefix}:{{n:team-a}}:watch"
        wait_for(lambda: (plain.hget(key, "booked") and plain.zcard(watch) == 0) or None)
        assert native_usage(base, "key-a")["requests"] == 3


class _CrashAfter:
    """The real upstream, whose output download breaks off after `lines` lines (a replica dying mid-booking)."""

    def __init__(self, upstream: OpenAINative, lines: int) -> None:
        self.upstream = upstream
        self.name = upstream.name
        self.lines = lines
        self.call, self.upload, self.download = upstream.call, upstream.upload, upstream.download
        self.fetch = upstream.fetch

    async def file_lines(self, file_id: str) -> AsyncGenerator[bytes, None]:
        sent = 0
        async with contextlib.aclosing(self.upstream.file_lines(file_id)) as lines:
            async for line in lines:
                if sent == self.lines:
                    raise ConnectionResetError("the download broke off")
                sent += 1
                yield line


async def test_a_crash_mid_booking_books_each_line_once(
    start_router: RouterFactory, clients: Any, sim: Sim, redis_url: str, key_prefix: str, monkeypatch: Any
) -> None:
    with start_router(loops=False, batch=FAST, **AUTH) as base:
        a, _ = clients(base)
        uploaded = a.files.create(file=("in.jsonl", jsonl(5)), purpose="batch")
        batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        done = ended(a, batch.id)
        output = a.files.content(done.output_file_id or "").read()
    monkeypatch.setattr(native_batches, "BOOK_CHUNK", 2)
    client = connect(redis_url, max_connections=8)
    provider = OpenAIProvider(Upstream(name="openai", base_url=sim.v1), "sk-sim")
    real = OpenAINative(provider)
    leases = Store(client, key_prefix, result_ttl_s=60, idempotency_ttl_s=60).leases
    store = NativeStore(client, key_prefix)
    accounting = Accounting(PRICES)
    labels = {"lane": "native", "model": "gpt-4o-mini", "tenant": "team-a", "upstream": "openai", "outcome": "ok"}
    before = sample("requests_total", **labels)

    def watcher(upstream: NativeUpstream) -> NativeWatcher:
        return NativeWatcher(store, leases, {"openai": upstream}, BatchSettings(poll_interval_s=0.01), accounting)

    try:
        assert await store.due("team-a", time.time()) == [batch.id]  # retrieve saw it end: due now
        assert await watcher(_CrashAfter(real, 3)).run_once() == 0  # two lines booked, then the crash
        assert (await store.totals("team-a", _day(done)))["native:requests"] == 2
        await wait_async(lambda: store.due("team-a", time.time()))  # rescheduled after the failure
        assert await watcher(real).run_once() == 1
        assert await store.due("team-a", time.time() + 3600) == []
        await watcher(real).book("team-a", real, native_batches.batch_decoder.decode(done.model_dump_json()))
        totals = await store.totals("team-a", _day(done))
    finally:
        await provider.aclose()
        await close(client)
    count, cost, _ = expected_cost(output)
    assert totals["native:requests"] == count == 5
    assert totals["native:cost_usd"] == pytest.approx(cost, rel=1e-9)
    assert sample("requests_total", **labels) - before == count


def _day(batch: openai.types.Batch) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(batch.completed_at or 0))


async def wait_async(probe: Callable[[], Any]) -> None:
    await wait_until_async(probe, 10, every=0.02)


def test_pages_hold_only_the_tenants_own_in_order(start_router: RouterFactory, clients: Any) -> None:
    with start_router(batch=FAST, **AUTH) as base:
        a, b = clients(base)
        mine: list[str] = []
        for i in range(5):
            mine.append(a.files.create(file=(f"a{i}.jsonl", jsonl(1, f"a{i}")), purpose="batch").id)
            b.files.create(file=(f"b{i}.jsonl", jsonl(1, f"b{i}")), purpose="batch")
            b.files.create(file=(f"u{i}.txt", b"notes"), purpose="user_data")
        newest_first = list(reversed(mine))
        # The SDK follows `after` page by page; each page is cut from the tenant's own list, never from the
        # upstream's (which holds the other tenant's files too).
        assert [f.id for f in a.files.list(limit=2)] == newest_first
        assert [f.id for f in a.files.list(limit=2, order="asc")] == mine
        page = a.files.list(limit=2)
        assert [f.id for f in page.data] == newest_first[:2] and page.has_more
        assert len(list(b.files.list(limit=3))) == 10
        assert len(list(b.files.list(limit=3, purpose="user_data"))) == 5
        # A page may start after a file deleted since the previous page.
        a.files.delete(newest_first[1])
        assert [f.id for f in a.files.list(after=newest_first[1], limit=10)] == newest_first[2:]
        assert [f.id for f in a.files.list(limit=2)] == [newest_first[0], *newest_first[2:]]

        batches = [
            a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
            for file_id in (mine[0], mine[1], mine[2])
        ]
        b_file = b.files.create(file=("b.jsonl", jsonl(1, "bb")), purpose="batch")
        b.batches.create(input_file_id=b_file.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert [x.id for x in a.batches.list(limit=1)] == list(reversed(batches))
        last = a.batches.list(limit=2, after=batches[1])
        assert [x.id for x in last.data] == [batches[0]] and not last.has_more
        with pytest.raises(openai.BadRequestError) as caught:
            a.batches.list(limit=101)
        assert caught.value.code == "invalid_value" and caught.value.param == "limit"


def test_cancel_is_passed_on_and_the_batch_still_booked(
    start_router: RouterFactory, clients: Any, sim: Sim, redis_url: str, key_prefix: str
) -> None:
    sim.configure(batch_turnaround_s=60.0)
    with start_router(batch=FAST, **AUTH) as base:
        a, _ = clients(base)
        uploaded = a.files.create(file=("in.jsonl", jsonl(2)), purpose="batch")
        batch = a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        cancelled = a.batches.with_raw_response.cancel(batch.id)
        validate("Batch", cancelled.http_response.json())
        assert cancelled.parse().status in ("cancelling", "cancelled")
        assert ended(a, batch.id).status == "cancelled"
        key = f"{key_prefix}:{{n:team-a}}:batch:{batch.id}"
        with redis.Redis.from_url(redis_url) as plain:
            # Booked, then no longer watched (`NativeStore.finish`: two steps, in that order).
            watch = f"{key_prefix}:{{n:team-a}}:watch"
            wait_for(lambda: (plain.hget(key, "booked") and plain.zcard(watch) == 0) or None)
        assert native_usage(base, "key-a") == {}  # nothing ran before the cancel, so nothing was billed
    assert sim.stats()["batches_cancelled"] == 1


def test_uploads_stream_past_the_body_limit_up_to_the_file_limit(
    start_router: RouterFactory, clients: Any, sim: Sim
) -> None:
    limits = {"max_body_bytes": 64 * 1024, "max_file_bytes": 1024 * 1024}
    with start_router(limits=limits, **AUTH) as base:
        a, _ = clients(base)
        big = jsonl(2) + b" " * (512 * 1024) + b"\n"
        assert a.files.create(file=("big.jsonl", big), purpose="batch").bytes == len(big)  # over max_body_bytes
        with pytest.raises(openai.APIStatusError) as caught:
            a.files.create(file=("huge.jsonl", big * 3), purpose="batch")
        assert caught.value.status_code == 413 and caught.value.code == "request_too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
            yield b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="c.jsonl"\r\n\r\n'
            for _ in range(24):
                yield b" " * 65536
            yield b"\r\n--x--\r\n"

        headers = _bearer("key-a") | {"content-type": "multipart/form-data; boundary=x"}
        refused = httpx.post(base + "/v1/files", content=chunked(), headers=headers, timeout=30)
        assert refused.status_code == 413
        validate("ErrorResponse", refused.json())
        # A caller that leaves mid-upload leaves no file behind (the upstream request, promised more bytes, is
        # aborted rather than left waiting for them).
        with socket.create_connection((httpx.URL(base).host, httpx.URL(base).port or 80)) as raw:
            raw.sendall(b"POST /v1/files HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                        b"content-type: multipart/form-data; boundary=x\r\ncontent-length: 100000\r\n\r\n"
                        b'--x\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n')  # fmt: skip
        assert [f.filename for f in a.files.list()] == ["big.jsonl"]
    assert sim.stats()["files_uploaded"] == 1


def test_bad_requests_are_refused_in_openai_shape(start_router: RouterFactory, clients: Any) -> None:
    with start_router(**AUTH) as base:
        a, _ = clients(base)
        uploaded = a.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
        with pytest.raises(openai.BadRequestError) as caught:
            a.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                             metadata={"hybrid_router_batch": "b0"})  # fmt: skip
        assert caught.value.param == "metadata"
        with pytest.raises(openai.BadRequestError) as caught:
            a.files.list(order="sideways")
        assert caught.value.param == "order"
        with pytest.raises(openai.NotFoundError):
            a.batches.retrieve("batch_../../etc")
        missing = httpx.post(base + "/v1/batches", json={"endpoint": "/v1/chat/completions"}, headers=_bearer("key-a"))
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_required_parameter"
        unauthenticated = httpx.get(base + "/v1/files")
        assert unauthenticated.status_code == 401
        validate("ErrorResponse", unauthenticated.json())
