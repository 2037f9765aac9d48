"""One REST call that reports a flow event is one trace: the gateway's HTTP span, its call to flows, the flows
service's handling, the outbox relay's publish on NATS, and a consumer of the published event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from greenmesh.flows.v1 import flows_pb2 as fpb
from services.flows.servicer import FlowServicer
from tests.conftest import eventually
from tests.flows.conftest import event, ts
from tests.flows.test_flows_reporting import at
from tests.gateway.conftest import Mesh


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes.get("service.name"))


async def test_a_rest_report_is_one_trace_from_the_gateway_to_the_consumer(
    mesh: Mesh, spans: InMemorySpanExporter
) -> None:
    n = mesh.network
    servicer = mesh.flows.runtime.state["servicer"]
    assert isinstance(servicer, FlowServicer)
    # A subscriber (through the gateway too) keeps the flows service listening to its recorded events on NATS.
    subscription = asyncio.create_task(
        mesh.http.get(
            "/v1/events:subscribe",
            params={"bizSteps": "BIZ_STEP_COMMISSIONING"},
            headers={"Authorization": f"Bearer {mesh.keys.platform}", "Grpc-Timeout": "5S"},
        )
    )

    async def listening() -> bool:
        return bool(servicer.wakeups._subscriptions)

    await eventually(listening)
    battery = n.serial()
    message = event(
        fpb.BIZ_STEP_COMMISSIONING,
        n.producer,
        [battery],
        at(-30),
        model_id=n.model_id,
        production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
    )
    from google.protobuf.json_format import MessageToDict

    response = await mesh.http.post(
        "/v1/events",
        json=MessageToDict(message),
        headers={"Authorization": f"Bearer {mesh.keys.producer}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["outcome"] == "EVENT_OUTCOME_ACCEPTED"
    trace_id = int(response.headers["x-trace-id"], 16)

    def of_trace() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]

    async def consumed() -> bool:
        return any(s.kind is SpanKind.CONSUMER for s in of_trace())

    await eventually(consumed, timeout=10)
    streamed = await subscription
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert any(line.get("result", {}).get("event", {}).get("eventId") == message.event_id for line in lines)

    found = of_trace()
    by_id = {s.context.span_id: s for s in found if s.context is not None}
    roots = [s for s in found if s.parent is None]
    assert len(roots) == 1, [s.name for s in roots]
    root = roots[0]
    assert service_of(root) == "gateway" and root.kind is SpanKind.SERVER and root.name == "POST /v1/events"

    def chain(span: ReadableSpan) -> list[ReadableSpan]:
        """The span and its ancestors up to the root: every span of the trace must reach the root."""
        path = [span]
        while path[-1].parent is not None:
            path.append(by_id[path[-1].parent.span_id])
        return path

    kinds = {(service_of(s), s.kind) for s in found}
    assert {
        ("gateway", SpanKind.SERVER),
        ("gateway", SpanKind.CLIENT),
        ("flows", SpanKind.SERVER),
        ("flows", SpanKind.PRODUCER),
        ("flows", SpanKind.CONSUMER),
    } <= kinds, kinds
    consumer = next(s for s in found if s.kind is SpanKind.CONSUMER)
    ancestry = [(service_of(s), s.kind) for s in chain(consumer)]
    assert ancestry[0] == ("flows", SpanKind.CONSUMER)
    assert ("flows", SpanKind.PRODUCER) in ancestry and ("flows", SpanKind.SERVER) in ancestry
    assert ancestry[-2:] == [("gateway", SpanKind.CLIENT), ("gateway", SpanKind.SERVER)]
    assert "flow_event_recorded" in consumer.name
