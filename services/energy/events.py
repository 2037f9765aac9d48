"""The energy service's events, written through the outbox in the same transaction as the change they record:
``AssetLifecycleChanged`` (registration and every transition), ``EvaluationVerified`` and
``EfficiencyDriftDetected``, on ``greenmesh.<province>.energy.v1.<event>``."""

from __future__ import annotations

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.config import Component, MeshSettings
from meshkit.ids import new_id
from meshkit.outbox import append_event
from meshkit.subjects import event_subject


def _metadata(settings: MeshSettings, message_type: type[Message]) -> event_pb2.EventMetadata:
    now = Timestamp()
    now.GetCurrentTime()
    return event_pb2.EventMetadata(
        event_id=new_id(),
        event_type=message_type.DESCRIPTOR.full_name,
        province_code=settings.province,
        occurred_at=now,
        source_component=Component.ENERGY.value,
    )


def _append(session: AsyncSession, settings: MeshSettings, event: Message, metadata: event_pb2.EventMetadata) -> None:
    append_event(
        session, event_subject(settings.province, Component.ENERGY, type(event)), event, event_id=metadata.event_id
    )


def asset_lifecycle_changed(
    session: AsyncSession, settings: MeshSettings, asset: pb.Asset, transition: pb.LifecycleTransition
) -> None:
    metadata = _metadata(settings, pb.AssetLifecycleChanged)
    event = pb.AssetLifecycleChanged(metadata=metadata, asset=asset, transition=transition)
    _append(session, settings, event, metadata)


def evaluation_verified(session: AsyncSession, settings: MeshSettings, evaluation: pb.Evaluation) -> None:
    metadata = _metadata(settings, pb.EvaluationVerified)
    _append(session, settings, pb.EvaluationVerified(metadata=metadata, evaluation=evaluation), metadata)


def efficiency_drift_detected(
    session: AsyncSession,
    settings: MeshSettings,
    *,
    finding_id: str,
    asset_id: str,
    site_id: str,
    windows: list[pb.EfficiencyWindow],
    threshold_pp: float,
    input_meter_ids: list[str],
    output_meter_ids: list[str],
) -> None:
    metadata = _metadata(settings, pb.EfficiencyDriftDetected)
    event = pb.EfficiencyDriftDetected(
        metadata=metadata,
        finding_id=finding_id,
        asset_id=asset_id,
        site_id=site_id,
        windows=windows,
        threshold_pp=threshold_pp,
        input_meter_ids=input_meter_ids,
        output_meter_ids=output_meter_ids,
    )
    _append(session, settings, event, metadata)
