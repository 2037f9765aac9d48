"""The mesh probe, a synthetic canary every service serves: EmitProbe writes a ProbeEmitted event
through the outbox; every other service's idempotent consumer records a receipt; GetProbe reads the
receipts back. `greenmesh status --probe` uses it to prove the whole event path end to end."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from opentelemetry import trace
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.errors import FieldViolation, InvalidArgument
from meshkit.outbox import append_event, new_event_id
from meshkit.subjects import event_subject
from meshkit.tables import ProbeEmission, ProbeReceipt, utcnow

if TYPE_CHECKING:
    from meshkit.server import ServiceRuntime

MAX_PROBE_ID = 64
MAX_NOTE = 200


def validate_emit(request: probe_pb2.EmitProbeRequest) -> None:
    violations = []
    if not request.probe_id:
        violations.append(FieldViolation("probe_id", "required"))
    elif len(request.probe_id) > MAX_PROBE_ID or not request.probe_id.isprintable():
        violations.append(FieldViolation("probe_id", f"at most {MAX_PROBE_ID} printable characters"))
    if len(request.note) > MAX_NOTE:
        violations.append(FieldViolation("note", f"at most {MAX_NOTE} characters"))
    if violations:
        raise InvalidArgument(violations)


class MeshProbeServicer(probe_pb2_grpc.MeshProbeServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def EmitProbe(
        self, request: probe_pb2.EmitProbeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> probe_pb2.EmitProbeResponse:
        validate_emit(request)
        runtime = self.runtime
        async with runtime.database.transaction() as session:
            existing = await session.get(ProbeEmission, request.probe_id)
            if existing is not None:
                return probe_pb2.EmitProbeResponse(probe_id=request.probe_id, event_id=existing.event_id, created=False)
            event_id = new_event_id()
            now = utcnow()
            occurred = Timestamp()
            occurred.FromDatetime(now)
            event = probe_pb2.ProbeEmitted(
                metadata=event_pb2.EventMetadata(
                    event_id=event_id,
                    event_type=probe_pb2.ProbeEmitted.DESCRIPTOR.full_name,
                    province_code=runtime.settings.province,
                    occurred_at=occurred,
                    source_component=runtime.component.value,
                ),
                probe_id=request.probe_id,
                note=request.note,
            )
            session.add(ProbeEmission(probe_id=request.probe_id, event_id=event_id, note=request.note, created_at=now))
            append_event(
                session,
                event_subject(runtime.settings.province, runtime.component, probe_pb2.ProbeEmitted),
                event,
                event_id=event_id,
            )
        runtime.relay.notify()
        return probe_pb2.EmitProbeResponse(probe_id=request.probe_id, event_id=event_id, created=True)

    async def GetProbe(
        self, request: probe_pb2.GetProbeRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> probe_pb2.GetProbeResponse:
        if not request.probe_id:
            raise InvalidArgument([FieldViolation("probe_id", "required")])
        async with self.runtime.database.session() as session:
            rows = (
                await session.exec(
                    select(ProbeReceipt)
                    .where(col(ProbeReceipt.probe_id) == request.probe_id)
                    .order_by(col(ProbeReceipt.emitted_by))
                )
            ).all()
            receipts = []
            for row in rows:
                received = Timestamp()
                received.FromDatetime(row.received_at)
                receipts.append(
                    probe_pb2.ProbeReceipt(
                        probe_id=row.probe_id,
                        received_by=self.runtime.component.value,
                        emitted_by=row.emitted_by,
                        received_at=received,
                        trace_id=row.trace_id,
                    )
                )
        return probe_pb2.GetProbeResponse(probe_id=request.probe_id, receipts=receipts)


async def record_probe_receipt(session: AsyncSession, message: Msg) -> None:
    """Inbox effect for ProbeEmitted: one receipt per (probe, emitting component)."""
    event = probe_pb2.ProbeEmitted.FromString(message.data)
    span_context = trace.get_current_span().get_span_context()
    if await session.get(ProbeReceipt, (event.probe_id, event.metadata.source_component)) is None:
        session.add(
            ProbeReceipt(
                probe_id=event.probe_id,
                emitted_by=event.metadata.source_component,
                received_at=utcnow(),
                trace_id=format(span_context.trace_id, "032x") if span_context.is_valid else "",
            )
        )
