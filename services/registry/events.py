"""The registry's events (through the outbox) and the directory it keeps in a JetStream key-value bucket.

Every change goes out as ParticipantChanged, FacilityChanged, CooperationLinked, CredentialIssued or
CredentialRevoked on
greenmesh.<province>.registry.v1.<event>. The registry consumes its own participant and facility events
to keep the compact directory (`GREENMESH_<province>_DIRECTORY`) that other services read instead of
calling the registry; an entry is only replaced by a newer version, so redeliveries never roll it back.
"""

from __future__ import annotations

import logging

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.bus import Bus
from meshkit.config import Component, MeshSettings
from meshkit.ids import new_id
from meshkit.outbox import append_event
from meshkit.subjects import event_subject

log = logging.getLogger(__name__)


def directory_bucket(province: str) -> str:
    return f"GREENMESH_{province}_DIRECTORY"


def _metadata(settings: MeshSettings, message_type: type[Message]) -> event_pb2.EventMetadata:
    now = Timestamp()
    now.GetCurrentTime()
    return event_pb2.EventMetadata(
        event_id=new_id(),
        event_type=message_type.DESCRIPTOR.full_name,
        province_code=settings.province,
        occurred_at=now,
        source_component=Component.REGISTRY.value,
    )


def _append(session: AsyncSession, settings: MeshSettings, event: Message, metadata: event_pb2.EventMetadata) -> None:
    subject = event_subject(settings.province, Component.REGISTRY, type(event))
    append_event(session, subject, event, event_id=metadata.event_id)


def participant_changed(
    session: AsyncSession, settings: MeshSettings, change: str, participant: pb.Participant
) -> None:
    metadata = _metadata(settings, pb.ParticipantChanged)
    _append(
        session, settings, pb.ParticipantChanged(metadata=metadata, change=change, participant=participant), metadata
    )


def facility_changed(session: AsyncSession, settings: MeshSettings, change: str, facility: pb.Facility) -> None:
    metadata = _metadata(settings, pb.FacilityChanged)
    _append(session, settings, pb.FacilityChanged(metadata=metadata, change=change, facility=facility), metadata)


def cooperation_linked(session: AsyncSession, settings: MeshSettings, cooperation: pb.Cooperation) -> None:
    metadata = _metadata(settings, pb.CooperationLinked)
    _append(session, settings, pb.CooperationLinked(metadata=metadata, cooperation=cooperation), metadata)


def credential_issued(session: AsyncSession, settings: MeshSettings, credential: pb.Credential) -> None:
    metadata = _metadata(settings, pb.CredentialIssued)
    _append(session, settings, pb.CredentialIssued(metadata=metadata, credential=credential), metadata)


def credential_revoked(session: AsyncSession, settings: MeshSettings, credential: pb.Credential) -> None:
    metadata = _metadata(settings, pb.CredentialRevoked)
    _append(session, settings, pb.CredentialRevoked(metadata=metadata, credential=credential), metadata)


# ---- the directory ------------------------------------------------------------------------------


def participant_entry(participant: pb.Participant) -> pb.DirectoryEntry:
    return pb.DirectoryEntry(
        participant=pb.DirectoryParticipant(
            participant_id=participant.participant_id,
            credit_code=participant.credit_code,
            roles=participant.roles,
            status=participant.status,
            supervised_division_code=participant.supervised_division_code,
        ),
        version=participant.version,
    )


def facility_entry(facility: pb.Facility) -> pb.DirectoryEntry:
    return pb.DirectoryEntry(
        facility=pb.DirectoryFacility(
            facility_id=facility.facility_id,
            operator_id=facility.operator_id,
            facility_type=facility.facility_type,
            accreditation=facility.accreditation.status,
            county_code=facility.county_code,
            storage_limits=facility.storage_limits,
        ),
        version=facility.version,
    )


class DirectoryProjector:
    """Inbox effects that write the directory entries; an entry only moves forward in version."""

    def __init__(self, bus: Bus, province: str) -> None:
        self.bus = bus
        self.bucket = directory_bucket(province)

    async def _put(self, key: str, entry: pb.DirectoryEntry) -> None:
        kv = await self.bus.key_value(self.bucket)
        try:
            current = pb.DirectoryEntry.FromString((await kv.get(key)).value or b"")
            if current.version >= entry.version:
                return  # a redelivered or reordered older change
        except Exception:  # no entry yet (KeyNotFoundError) or an unreadable one: write ours
            pass
        await kv.put(key, entry.SerializeToString(deterministic=True))

    async def on_participant(self, _session: AsyncSession, message: Msg) -> None:
        event = pb.ParticipantChanged.FromString(message.data)
        await self._put(f"participant.{event.participant.participant_id}", participant_entry(event.participant))

    async def on_facility(self, _session: AsyncSession, message: Msg) -> None:
        event = pb.FacilityChanged.FromString(message.data)
        await self._put(f"facility.{event.facility.facility_id}", facility_entry(event.facility))
