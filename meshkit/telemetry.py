"""OpenTelemetry set-up from the standard OTEL_* variables.

Spans go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable) is
set; otherwise they are written as JSON lines under `<data_dir>/traces/`, which `greenmesh traces` reads,
so an operator on one machine can still follow a request. `OTEL_TRACES_EXPORTER=none` turns export off.

Nothing here is global unless `install_global=True`: tests build several providers in one process.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

TRACES_DIRNAME = "traces"
# Spans per export. The exporter encodes spans in Python on its own thread, holding the GIL meanwhile; the SDK's
# default of 512 made a burst of ~13 ms every half second (at ~1,000 spans/s), stalling the event loop's thread in
# the middle of calls: a battery trace's slowest 0.5% went to 5-6 ms and its worst to 9-13 ms, against 2.6-3.9
# and ~5 ms with 64 (bench --only flows.trace, 50,000 events, two alternations). The same work in shorter bursts.
EXPORT_BATCH_SPANS = 64


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file (one file per component)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_record(span), ensure_ascii=False) for span in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def export_processor(exporter: SpanExporter) -> BatchSpanProcessor:
    """The processor that hands finished spans to `exporter`: every half second, in batches of
    `EXPORT_BATCH_SPANS` unless `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` says otherwise."""
    chosen = os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
    return BatchSpanProcessor(
        exporter, schedule_delay_millis=500, max_export_batch_size=None if chosen else EXPORT_BATCH_SPANS
    )


def span_to_record(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name", "?"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": {key: _jsonable(value) for key, value in (span.attributes or {}).items()},
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


def _jsonable(value: object) -> object:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, Sequence):
        return [_jsonable(item) for item in value]
    return str(value)


@dataclass
class Telemetry:
    """The tracer provider of one component and how to flush it."""

    provider: TracerProvider
    component: str
    extra_processors: list[SpanProcessor] = field(default_factory=list)

    def tracer(self, name: str) -> trace.Tracer:
        return self.provider.get_tracer(name)

    def shutdown(self) -> None:
        self.provider.force_flush()
        self.provider.shutdown()


def instrument_engine(engine: AsyncEngine | Engine, telemetry: Telemetry) -> None:
    """SQL spans for one engine with this component's provider (the instrumentor's global
    `instrument()` would patch `create_engine` process-wide and only once)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    counter = get_meter("meshkit.db").create_up_down_counter("db.client.connections.usage")
    EngineTracer(  # type: ignore[no-untyped-call]
        telemetry.tracer("opentelemetry.instrumentation.sqlalchemy"),
        engine.sync_engine if isinstance(engine, AsyncEngine) else engine,
        counter,
    )


def client_interceptors(telemetry: Telemetry) -> list[Any]:
    """gRPC client interceptors that start CLIENT spans and inject `traceparent` (health checks excluded)."""
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    return list(
        aio_client_interceptors(  # type: ignore[no-untyped-call]
            tracer_provider=telemetry.provider, filter_=filters.negate(filters.health_check())
        )
    )


def otlp_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_telemetry(
    component: str,
    *,
    province: str,
    data_dir: Path,
    processors: Sequence[SpanProcessor] = (),
    install_global: bool = False,
) -> Telemetry:
    """Build the component's tracer provider: resource, exporter, and any extra (test) processors."""
    attributes: dict[str, str] = {"service.namespace": "greenmesh", "greenmesh.province": province}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = component
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    exporter_choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_choice != "none" and not processors:
        exporter: SpanExporter
        if otlp_configured() or exporter_choice == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = JsonLinesSpanExporter(data_dir / TRACES_DIRNAME / f"{component}.jsonl")
        provider.add_span_processor(export_processor(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    if install_global:
        trace.set_tracer_provider(provider)
    return Telemetry(provider=provider, component=component, extra_processors=list(processors))
