"""One trace from a gRPC call through the outbox and NATS to the consuming service."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import nats
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from meshkit.subjects import event_subject, stream_name
from meshkit.telemetry import EXPORT_BATCH_SPANS, export_processor
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import SERVING, wait_health


async def receipts_at(runtime: ServiceRuntime, probe_id: str) -> list[probe_pb2.ProbeReceipt]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        reply = await probe_pb2_grpc.MeshProbeServiceStub(channel).GetProbe(
            probe_pb2.GetProbeRequest(probe_id=probe_id), timeout=5
        )
        return list(reply.receipts)


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def test_grpc_call_outbox_nats_consumer_form_one_trace(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    registry = await make_runtime(REGISTRY, nats_url=nats_server.url, span_processors=[processor])
    flows = await make_runtime(FLOWS, nats_url=nats_server.url, span_processors=[processor])
    await wait_health(registry, SERVING)
    await wait_health(flows, SERVING)
    exporter.clear()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        await probe_pb2_grpc.MeshProbeServiceStub(channel).EmitProbe(
            probe_pb2.EmitProbeRequest(probe_id="traced-probe"), timeout=5
        )

    async def consumed() -> bool:
        return bool(await receipts_at(flows, "traced-probe"))

    await eventually(consumed)
    spans = exporter.get_finished_spans()

    server = [s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("/EmitProbe")]
    assert len(server) == 1
    trace_id = hex_trace(server[0])
    in_trace = [s for s in spans if hex_trace(s) == trace_id]
    producer = [s for s in in_trace if s.kind is SpanKind.PRODUCER]
    consumer = [s for s in in_trace if s.kind is SpanKind.CONSUMER]
    assert len(producer) == 1 and len(consumer) == 1, [(s.name, s.kind) for s in in_trace]

    # The chain: SERVER (registry) -> PRODUCER (registry, relay) -> CONSUMER (flows).
    assert producer[0].parent is not None and server[0].context is not None
    assert producer[0].parent.span_id == server[0].context.span_id
    assert consumer[0].parent is not None and producer[0].context is not None
    assert consumer[0].parent.span_id == producer[0].context.span_id
    assert server[0].resource.attributes["service.name"] == "registry"
    assert producer[0].resource.attributes["service.name"] == "registry"
    assert consumer[0].resource.attributes["service.name"] == "flows"
    assert consumer[0].links and consumer[0].links[0].context.span_id == producer[0].context.span_id
    assert producer[0].attributes is not None
    assert producer[0].attributes["messaging.destination.name"] == "greenmesh.32.registry.v1.probe_emitted"
    # The receipt names the trace, so an operator can go from the data to the trace.
    assert (await receipts_at(flows, "traced-probe"))[0].trace_id == trace_id

    # traceparent survives the JetStream round trip (nats-server < 2.14 could rewrite it).
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        subject = event_subject("32", "registry", probe_pb2.ProbeEmitted)
        stored = await js.get_last_msg(stream_name("32", "registry"), subject)
        assert stored.headers is not None
        version, stored_trace, stored_span, flags = stored.headers["traceparent"].split("-")
        assert (version, stored_trace, stored_span) == ("00", trace_id, format(producer[0].context.span_id, "016x"))
        assert int(flags, 16) & 0x01  # sampled
    finally:
        await client.close()


async def test_link_only_mode_starts_a_new_trace_linked_to_the_producer(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    registry = await make_runtime(REGISTRY, nats_url=nats_server.url, span_processors=[processor])
    flows = await make_runtime(
        FLOWS, nats_url=nats_server.url, span_processors=[processor], trace_consumer_link_only=True
    )
    await wait_health(registry, SERVING)
    await wait_health(flows, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        await probe_pb2_grpc.MeshProbeServiceStub(channel).EmitProbe(
            probe_pb2.EmitProbeRequest(probe_id="linked"), timeout=5
        )

    async def consumed() -> bool:
        return bool(await receipts_at(flows, "linked"))

    await eventually(consumed)
    spans = exporter.get_finished_spans()
    producer = next(s for s in spans if s.kind is SpanKind.PRODUCER)
    consumer = next(
        s for s in spans if s.kind is SpanKind.CONSUMER and s.resource.attributes["service.name"] == "flows"
    )
    assert hex_trace(consumer) != hex_trace(producer)
    assert consumer.parent is None
    assert producer.context is not None
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


async def test_client_interceptors_continue_the_trace_into_the_service(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    """What the gateway's channels use: the service's SERVER span is a child of the caller's CLIENT span."""
    from meshkit.telemetry import client_interceptors, setup_telemetry

    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    registry = await make_runtime(REGISTRY, nats_url=nats_server.url, span_processors=[processor])
    await wait_health(registry, SERVING)
    caller = setup_telemetry("gateway", province="32", data_dir=registry.settings.data_dir, processors=[processor])
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{registry.port}", interceptors=client_interceptors(caller)
    ) as channel:
        await probe_pb2_grpc.MeshProbeServiceStub(channel).GetProbe(probe_pb2.GetProbeRequest(probe_id="x"), timeout=5)
    spans = exporter.get_finished_spans()
    client = next(s for s in spans if s.kind is SpanKind.CLIENT and s.resource.attributes["service.name"] == "gateway")
    server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name.endswith("/GetProbe"))
    assert client.context is not None and server.parent is not None
    assert hex_trace(server) == hex_trace(client)
    assert server.parent.span_id == client.context.span_id
    caller.shutdown()


class _BatchRecorder(SpanExporter):
    """Records the size of every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS


def _export_batches(count: int) -> list[int]:
    recorder = _BatchRecorder()
    provider = TracerProvider()
    provider.add_span_processor(export_processor(recorder))
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"span {index}"):
            pass
    provider.force_flush()
    provider.shutdown()
    return recorder.batches


def test_spans_are_exported_in_short_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long export holds the GIL and stalls the event loop: batches stay at EXPORT_BATCH_SPANS spans."""
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    batches = _export_batches(300)
    assert sum(batches) == 300
    assert max(batches) == EXPORT_BATCH_SPANS == 64


def test_the_standard_variable_sets_the_export_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "150")
    batches = _export_batches(300)
    assert sum(batches) == 300
    assert max(batches) == 150
