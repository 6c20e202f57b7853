"""OpenTelemetry traces, across the wait: off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and then exported over OTLP/HTTP (protobuf).

Every part that traces is given a `Tracing` (`from_environ`, built once by the gateway); switched off it is `OFF`,
whose methods return shared no-op objects, so the hot path pays a method call and nothing else (measured:
`bench/tracing.py`). The `opentelemetry` packages are the optional extra `otel`; without them, a set endpoint is
logged once and tracing stays off.

What is traced (the spans' names, kinds and attributes are listed in `docs/architecture.md`):
- a real-time call: one span, continuing the caller's `traceparent`, with its lane, model, tenant and cost;
- a deferred call: an admission span (continuing `traceparent`), whose context is stored with the call in Redis
  (`CallMeta.trace`) so that any replica's batcher, poller or guard can refer to it; a batch's spans (submit, each
  poll, ingest) form a trace of their own, the submit span linked to each call's admission span, its context kept
  in the batch's hash (`trace`); when the call is answered, a `deferred.wait` span in the call's trace runs from
  its arrival to its answer and links to the batch's submit and ingest spans; an escalation is a span of the call's
  trace. So a call that waited an hour shows where the hour went: the flush, the upload, each poll, the ingest.
Span contexts travel as W3C `traceparent` strings (`00-<trace id>-<span id>-<flags>`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Link, Tracer

    from router.core.lanes import Origin
    from router.telemetry.accounting import Priced

log = logging.getLogger(__name__)
SERVICE = "hybrid-router"
Attributes = Mapping[str, str | int | float | bool | None]


class Span:
    """A span being recorded; this base class is the no-op one (`NO_SPAN`)."""

    traceparent = ""
    """Its context as a W3C `traceparent` ("" when tracing is off)."""

    def set(self, attributes: Attributes) -> None:
        """Add attributes (None values are left out)."""

    def fail(self, exc: BaseException) -> None:
        """Mark it failed by `exc`, and end it."""

    def end(self, attributes: Attributes | None = None) -> None:
        """End it, with these attributes."""


NO_SPAN = Span()
_NO_SPAN_CONTEXT = contextlib.nullcontext(NO_SPAN)


class Tracing:
    """Spans of the router's work; this base class is tracing switched off (`OFF`): every method is a no-op."""

    enabled = False

    def start(self, name: str, parent: str | None, attributes: Attributes, *, server: bool = False) -> Span:
        """A span started now, continuing `parent` (a traceparent) when given; the caller ends it."""
        return NO_SPAN

    def span(
        self, name: str, parent: str | None, attributes: Attributes, links: Sequence[str] = ()
    ) -> contextlib.AbstractContextManager[Span]:
        """A span around a block (failed if the block raises), with links to other spans (traceparents)."""
        return _NO_SPAN_CONTEXT

    def record(self, name: str, parent: str | None, start: float, attributes: Attributes, links: Sequence[str]) -> None:
        """A span that started at `start` (Unix seconds) and ends now, e.g. the whole wait of a deferred call."""

    def shutdown(self) -> None:
        """Send what is buffered and stop (the app's shutdown)."""


OFF = Tracing()


def cost_attributes(origin: Origin, status: int, priced: Priced) -> dict[str, str | int | float | bool | None]:
    """A call span's lane, status and cost (what was paid, the real-time baseline, the savings)."""
    cost = priced.cost
    return {
        "router.lane": origin.lane.value,
        "http.response.status_code": status,
        "router.cost_usd": cost.actual_usd if cost else None,
        "router.baseline_usd": cost.baseline_usd if cost else None,
        "router.savings_usd": cost.savings_usd if cost else None,
    }


def traces_endpoint(environ: Mapping[str, str]) -> str | None:
    """Where spans go, by the standard variables: the traces endpoint as given, or the base endpoint's
    `/v1/traces`; None when neither is set (or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    explicit = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if explicit:
        return explicit
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return base.rstrip("/") + "/v1/traces" if base else None


def from_environ(environ: Mapping[str, str]) -> Tracing:
    """`OFF`, unless an OTLP endpoint is set and the `otel` extra is installed."""
    endpoint = traces_endpoint(environ)
    if endpoint is None:
        return OFF
    try:
        return _Exporting(endpoint, environ)
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the opentelemetry packages are not installed "
                    "(pip install 'hybrid-router[otel]'): tracing stays off")  # fmt: skip
        return OFF


def _headers(value: str) -> dict[str, str]:
    """`OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs, comma-separated (values percent-encoded)."""
    from urllib.parse import unquote

    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return {unquote(k.strip()): unquote(v.strip()) for k, v in pairs}


class _Live(Span):
    """A span of the OpenTelemetry SDK."""

    def __init__(self, span: Any) -> None:
        self.span = span
        ctx = span.get_span_context()
        self.traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def set(self, attributes: Attributes) -> None:
        self.span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        self.span.end()

    def end(self, attributes: Attributes | None = None) -> None:
        if attributes:
            self.set(attributes)
        self.span.end()


class _Exporting(Tracing):
    """Tracing on: an SDK tracer provider of this app's own (not the global one), exporting in batches."""

    enabled = True

    def __init__(self, endpoint: str, environ: Mapping[str, str]) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        service = environ.get("OTEL_SERVICE_NAME", "").strip() or SERVICE
        self.provider: TracerProvider = TracerProvider(resource=Resource.create({"service.name": service}))
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=_headers(environ.get("OTEL_EXPORTER_OTLP_HEADERS", "")))
        delay = float(environ.get("OTEL_BSP_SCHEDULE_DELAY", "") or 5000)
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=delay))
        self.tracer: Tracer = self.provider.get_tracer("router")
        self.propagator = TraceContextTextMapPropagator()
        log.info("tracing: OTLP/HTTP spans to %s as %s", endpoint, service)

    def _context(self, traceparent: str | None) -> Context | None:
        return self.propagator.extract({"traceparent": traceparent}) if traceparent else None

    def _links(self, traceparents: Sequence[str]) -> list[Link]:
        from opentelemetry.trace import Link, get_current_span

        links = []
        for traceparent in traceparents:
            context = self._context(traceparent)
            span_context = get_current_span(context).get_span_context() if context is not None else None
            if span_context is not None and span_context.is_valid:
                links.append(Link(span_context))
        return links

    def start(self, name: str, parent: str | None, attributes: Attributes, *, server: bool = False) -> Span:
        from opentelemetry.trace import SpanKind

        span = self.tracer.start_span(
            name,
            context=self._context(parent),
            kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        return _Live(span)

    @contextlib.contextmanager
    def span(self, name: str, parent: str | None, attributes: Attributes, links: Sequence[str] = ()) -> Iterator[Span]:
        span = self.tracer.start_span(
            name,
            context=self._context(parent),
            links=self._links(links),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        live = _Live(span)
        try:
            yield live
        except BaseException as exc:
            live.fail(exc)
            raise
        span.end()

    def record(self, name: str, parent: str | None, start: float, attributes: Attributes, links: Sequence[str]) -> None:
        span = self.tracer.start_span(
            name,
            context=self._context(parent),
            links=self._links(links),
            start_time=int(start * 1e9),
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        span.end(end_time=time.time_ns())

    def shutdown(self) -> None:
        self.provider.shutdown()
