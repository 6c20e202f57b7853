"""OpenTelemetry traces, received over real OTLP/HTTP by a small receiver on 127.0.0.1 that decodes the protobuf:
a real-time call's span continues the caller's trace with its lane, model, tenant and cost; a deferred call's
trace links it to its batch's spans (submit, poll, ingest); tracing is off unless an endpoint is set."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from router.telemetry import tracing
from tests.helpers.servers import FAST, RouterFactory, Sim
from tests.helpers.waiting import wait_until


class Spans:
    """What the receiver got: every span, flattened, with its resource's service name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                            }
                        )

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [span for span in self.spans if span["name"] == name]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[tuple[str, Spans]]:
    """An OTLP/HTTP traces receiver (`POST /v1/traces`, protobuf) on a free loopback port."""
    spans = Spans()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans.add(request)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def otel_environ(endpoint: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "hr-test"}


def traceparent() -> tuple[str, str, str]:
    """A caller's trace: (trace id, span id, traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def test_tracing_is_off_without_an_endpoint() -> None:
    assert tracing.from_environ({}) is tracing.OFF
    assert tracing.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}) is (
        tracing.OFF
    )
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318/"}) == "http://h:4318/v1/traces"
    assert tracing.traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h/t"}) == "http://h/t"
    # Off, every method hands back the shared no-op objects: nothing is recorded, nothing allocated per call.
    off = tracing.OFF
    span = off.start("x", "00-" + "1" * 32 + "-" + "2" * 16 + "-01", {"a": 1})
    assert span is tracing.NO_SPAN and span.traceparent == ""
    with off.span("x", None, {}) as inner:
        assert inner is tracing.NO_SPAN


def test_a_realtime_call_is_one_span_in_the_callers_trace_with_lane_model_tenant_and_cost(
    start_router: RouterFactory, receiver: tuple[str, Spans], oai: Callable[..., openai.OpenAI]
) -> None:
    endpoint, spans = receiver
    trace_id, parent_id, header = traceparent()
    with start_router(environ=otel_environ(endpoint)) as base:
        answer = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "now"}], extra_headers={"traceparent": header}
        )
        assert answer.headers["x-router-lane"] == "realtime"
        found = wait_until(lambda: spans.named("router.realtime"), 15, "the real-time call's span")
    (span,) = found
    assert span["service"] == "hr-test"
    assert (span["trace_id"], span["parent"]) == (trace_id, parent_id)
    attributes = span["attributes"]
    assert attributes["router.lane"] == "realtime"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["router.tenant"] == "default"
    assert attributes["http.response.status_code"] == 200
    assert attributes["router.cost_usd"] == pytest.approx(float(answer.headers["x-router-cost-usd"]), abs=1e-9)
    assert attributes["router.baseline_usd"] == pytest.approx(attributes["router.cost_usd"])  # real time: no saving


def test_a_deferred_calls_trace_links_the_call_to_its_batch_spans(
    start_router: RouterFactory, receiver: tuple[str, Spans], oai: Callable[..., openai.OpenAI]
) -> None:
    endpoint, spans = receiver
    trace_id, parent_id, header = traceparent()
    with start_router(environ=otel_environ(endpoint), batch=FAST) as base:
        answer = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "later"}],
            extra_headers={"traceparent": header, "X-Deadline": "10m"},
        )
        assert answer.headers["x-router-lane"] == "batch"
        call_id = answer.headers["x-router-request-id"]
        (wait,) = wait_until(lambda: spans.named("router.deferred.wait"), 15, "the call's wait span")
        wait_until(lambda: spans.named("router.batch.ingest"), 15, "the batch's ingest span")
    # The call's trace: the admission span continues the caller's, the wait span is its child.
    (admit,) = spans.named("router.deferred.admit")
    assert (admit["trace_id"], admit["parent"]) == (trace_id, parent_id)
    assert admit["attributes"]["router.call_id"] == call_id
    assert (wait["trace_id"], wait["parent"]) == (trace_id, admit["span_id"])
    assert wait["start"] <= admit["end"] and wait["end"] > admit["end"]  # from the arrival to the answer
    assert wait["attributes"]["router.lane"] == "batch"
    assert wait["attributes"]["router.call_id"] == call_id
    assert wait["attributes"]["router.savings_usd"] > 0
    # The batch's own trace: submit (linked to the call's admission), then polls and the ingest as its children.
    (submit,) = spans.named("router.batch.submit")
    assert submit["trace_id"] != trace_id
    assert (trace_id, admit["span_id"]) in submit["links"]
    assert submit["attributes"]["router.provider_batch_id"] == wait["attributes"]["router.provider_batch_id"]
    polls = spans.named("router.batch.poll")
    (ingest,) = spans.named("router.batch.ingest")
    assert polls and all((p["trace_id"], p["parent"]) == (submit["trace_id"], submit["span_id"]) for p in polls)
    assert (ingest["trace_id"], ingest["parent"]) == (submit["trace_id"], submit["span_id"])
    # And the link that answers "where did the wait go": from the call's wait span to the batch's spans.
    assert (submit["trace_id"], submit["span_id"]) in wait["links"]
    assert (ingest["trace_id"], ingest["span_id"]) in wait["links"]


def test_an_escalated_calls_trace_shows_the_batch_that_was_too_slow_and_the_escalation(
    start_router: RouterFactory, receiver: tuple[str, Spans], sim: Sim, oai: Callable[..., openai.OpenAI]
) -> None:
    endpoint, spans = receiver
    trace_id, parent_id, header = traceparent()
    sim.configure(batch_turnaround_s=120.0)  # the batch cannot be back in time: cut, then escalated
    ladder = FAST | {"cancel_lead_s": 1.0, "probe": False}
    with start_router(environ=otel_environ(endpoint), batch=ladder) as base:
        answer = oai(base).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "soon"}],
            extra_headers={"traceparent": header, "X-Deadline": "8s"},
        )
        (wait,) = wait_until(lambda: spans.named("router.deferred.wait"), 20, "the escalated call's wait span")
    assert answer.parse().choices[0].message.content
    (admit,) = spans.named("router.deferred.admit")
    (escalate,) = spans.named("router.deferred.escalate")
    (submit,) = spans.named("router.batch.submit")
    assert (admit["trace_id"], admit["parent"]) == (trace_id, parent_id)
    assert (escalate["trace_id"], escalate["parent"]) == (trace_id, admit["span_id"])
    assert escalate["attributes"]["router.reason"] == "submitted"  # it was in a batch when it escalated
    assert escalate["attributes"]["router.lane"] == "realtime"
    assert (submit["trace_id"], submit["span_id"]) in escalate["links"]  # the batch that was too slow
    assert (wait["trace_id"], wait["parent"]) == (trace_id, admit["span_id"])
    assert (submit["trace_id"], submit["span_id"]) in wait["links"]
    assert (escalate["trace_id"], escalate["span_id"]) in wait["links"]
    assert wait["attributes"]["router.cost_usd"] > 0
