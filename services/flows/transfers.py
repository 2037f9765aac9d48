"""Cross-province transfers (issue 7), the service side: what a province's flows takes in from the nation.

With ``GREENMESH_NATIONAL_LINK=true`` the flows service declares the province's stream
``GREENMESH_<p>_INBOUND`` (``meshkit.national.inbound_stream_config``): through the national hub's domain it
sources every province's ``facility_changed`` and ``participant_changed`` events, and the ``transfer_shipped.<p>``
and ``transfer_received.<p>`` events addressed to this province. One durable, idempotent consumer
(``flows--inbound``, ``meshkit.inbox``, in the single writer's transaction: ``CaptureQueue.exclusive``) applies
them:

- another province's facility or participant → ``remote_facility`` / ``remote_participant`` (a newer version
  replaces an older one; this province's own entries are ignored: its registry's directory has them) and the
  :class:`~services.flows.directory_view.DirectoryView`, which consults them for ids its own directory does not
  know. So a shipment from here to another province's facility is judged like a local one (FLOW-002, FLOW-003).
  The durable consumer hands each message to one replica, so every replica also follows the tables
  (:func:`follow_remote_directory`);
- a ``TransferShipped`` to this province → the shipment is imported (:func:`import_transfer`): the shipping event is
  stored here with its origin province (``flow_event.origin_province``), the batteries become known here, in transit
  to the destination facility, and the shipment is watched for diversion here. The ordinary receipt here then
  answers it (no FLOW-005) and the chain continues. Redelivery applies once (the inbox, and the event id).
- a ``TransferReceived`` from another province (the receipt there of a shipment from here) → the receipt is
  imported the same way (:func:`import_receipt`): stored with the receiving province as its origin, never judged
  here, its batteries advanced with it, so they are no longer in transit here and, received by a listed
  recycling enterprise, have reached the compliant channel in this province's figures too.

The sending side is in :mod:`services.flows.capture` (``TransferShipped`` in the shipping event's transaction,
``TransferReceived`` in the receipt's).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.bus import ConsumerSpec
from meshkit.inbox import decoded, idempotent_handler
from meshkit.national import (
    INBOUND_REGISTRY_SUBJECTS,
    ensure_inbound_stream,
    inbound_stream_config,
    inbound_stream_name,
    receipt_subject,
    transfer_subject,
)
from meshkit.server import ServiceRuntime
from meshkit.tables import utcnow
from services.flows import capture, store
from services.flows.directory_view import DirectoryView, _enum_name
from services.flows.domain import (
    BatteryState,
    BizStep,
    Directory,
    FacilityInfo,
    ParticipantInfo,
    RuleConfig,
    needs_replay,
)
from services.flows.domain.custody import is_listed_treatment
from services.flows.domain.events import FlowEvent, Unit
from services.flows.domain.identity import BatteryId
from services.flows.domain.transfers import import_states, province_of
from services.flows.ingest import CaptureQueue
from services.flows.mapping import stored_event_from_proto
from services.flows.tables import BatteryRow, EventBatteryRow, RemoteFacilityRow, RemoteParticipantRow, ShipmentRow

log = logging.getLogger(__name__)

INBOUND_CONSUMER = "flows--inbound"
REMOTE_DIRECTORY_POLL_SECONDS = 5.0
REMOTE_DIRECTORY_OVERLAP = dt.timedelta(seconds=60)


# ---- the other provinces' directory -----------------------------------------------------------------------------


def facility_info(facility: rpb.Facility) -> FacilityInfo:
    return FacilityInfo(
        facility_id=facility.facility_id,
        facility_type=_enum_name(rpb.FacilityType.DESCRIPTOR, facility.facility_type, "FACILITY_TYPE_"),
        accreditation=_enum_name(
            rpb.AccreditationStatus.DESCRIPTOR, facility.accreditation.status, "ACCREDITATION_STATUS_"
        ),
        operator_id=facility.operator_id,
        county_code=facility.county_code,
    )


def participant_info(participant: rpb.Participant) -> ParticipantInfo:
    return ParticipantInfo(
        participant_id=participant.participant_id,
        credit_code=participant.credit_code,
        roles=frozenset(
            _enum_name(rpb.ParticipantRole.DESCRIPTOR, role, "PARTICIPANT_ROLE_")
            for role in participant.roles
            if role != rpb.PARTICIPANT_ROLE_UNSPECIFIED
        ),
        status=_enum_name(rpb.ParticipantStatus.DESCRIPTOR, participant.status, "PARTICIPANT_STATUS_"),
    )


def _facility_from_row(row: RemoteFacilityRow) -> FacilityInfo:
    return FacilityInfo(row.facility_id, row.facility_type, row.accreditation, row.operator_id, row.county_code)


def _participant_from_row(row: RemoteParticipantRow) -> ParticipantInfo:
    roles = frozenset(role for role in row.roles.split(",") if role)
    return ParticipantInfo(row.participant_id, row.credit_code, roles, row.status)


async def load_remote_directory(session: AsyncSession, view: DirectoryView, *, since: dt.datetime | None = None) -> int:
    """Put the stored entries of the other provinces into the view (all at start; with ``since``, those written
    from then on); returns how many were read. An entry older than the one held changes nothing."""
    count = 0
    facilities = select(RemoteFacilityRow)
    participants = select(RemoteParticipantRow)
    if since is not None:
        facilities = facilities.where(col(RemoteFacilityRow.updated_at) >= since)
        participants = participants.where(col(RemoteParticipantRow.updated_at) >= since)
    for facility in (await session.exec(facilities)).all():
        view.apply_remote_facility(_facility_from_row(facility), facility.province, facility.version)
        count += 1
    for participant in (await session.exec(participants)).all():
        view.apply_remote_participant(_participant_from_row(participant), participant.province, participant.version)
        count += 1
    return count


async def follow_remote_directory(
    runtime: ServiceRuntime, view: DirectoryView, *, interval: float = REMOTE_DIRECTORY_POLL_SECONDS
) -> None:
    """Keep the view up to date with what every replica's consumer writes (the durable consumer hands each message
    to one replica only): read the rows written since the last look, with a margin for clocks and commits."""
    since = utcnow() - REMOTE_DIRECTORY_OVERLAP
    while True:
        await asyncio.sleep(interval)
        started = utcnow()
        try:
            async with runtime.database.session() as session:
                await load_remote_directory(session, view, since=since)
        except Exception as exc:  # the database is away: readiness says so; try again next time
            log.debug("reading the other provinces' directory failed: %r", exc)
            continue
        since = started - REMOTE_DIRECTORY_OVERLAP


async def _keep_newer(
    session: AsyncSession,
    row_class: type[RemoteFacilityRow] | type[RemoteParticipantRow],
    key: tuple[str, str],
    values: dict[str, Any],
) -> bool:
    """Insert the row whose primary key is `key` (column, value), or update it unless the stored one has a newer
    `version`; False when it was newer."""
    column, value = key
    row: Any = await session.get(row_class, value)
    if row is not None and row.version > values["version"]:
        return False
    if row is None:
        session.add(row_class(**{column: value, **values}))
    else:
        for name, value in values.items():
            setattr(row, name, value)
        session.add(row)
    return True


async def upsert_remote_facility(
    session: AsyncSession, view: DirectoryView, own_province: str, facility: rpb.Facility, province: str
) -> bool:
    """Keep another province's facility (its newest version); False when ignored (ours, or not newer)."""
    province = province or province_of(facility.county_code)
    if not facility.facility_id or not province or province == own_province:
        return False
    info = facility_info(facility)
    values: dict[str, Any] = {
        "province": province,
        "operator_id": info.operator_id,
        "facility_type": info.facility_type,
        "accreditation": info.accreditation,
        "county_code": info.county_code,
        "version": facility.version,
        "updated_at": utcnow(),
    }
    if not await _keep_newer(session, RemoteFacilityRow, ("facility_id", facility.facility_id), values):
        return False
    view.apply_remote_facility(info, province, facility.version)
    return True


async def upsert_remote_participant(
    session: AsyncSession, view: DirectoryView, own_province: str, participant: rpb.Participant, province: str
) -> bool:
    """Keep a participant of another province (its newest version); False when ignored (ours, or not newer)."""
    if not participant.participant_id or not province or province == own_province:
        return False
    info = participant_info(participant)
    values: dict[str, Any] = {
        "province": province,
        "credit_code": info.credit_code,
        "roles": ",".join(sorted(info.roles)),
        "status": info.status,
        "version": participant.version,
        "updated_at": utcnow(),
    }
    if not await _keep_newer(session, RemoteParticipantRow, ("participant_id", participant.participant_id), values):
        return False
    view.apply_remote_participant(info, province, participant.version)
    return True


# ---- imported shipments -----------------------------------------------------------------------------------------


def _amounts(shipment: FlowEvent, batteries: int) -> tuple[int, float]:
    """Pieces and kilograms the shipment moves, as far as this province can tell (it may not know the models)."""
    units, kilograms = batteries, 0.0
    for quantity in shipment.quantities:
        if quantity.unit is Unit.KILOGRAMS:
            kilograms += quantity.amount
        else:
            units += round(quantity.amount)
    return units, kilograms


@dataclass(frozen=True)
class _Stored:
    """An imported event once stored: its seq, its batteries' keys, their rows and states before and after it."""

    seq: int
    keys: list[str]
    rows: dict[str, BatteryRow]
    before: dict[BatteryId, BatteryState]
    after: dict[BatteryId, BatteryState]
    units: int
    kilograms: float


def _readable(message: pb.FlowEvent, step: BizStep, what: str) -> FlowEvent | None:
    """The domain event another province sent, or None (logged) when it does not convert or is not ``step``."""
    try:
        event = stored_event_from_proto(message)
    except ValueError:
        log.exception("%s %s does not hold a readable event; ignored", what, message.event_id)
        return None
    if event.biz_step is not step:
        log.warning("%s %s holds a %s event, not %s; ignored", what, event.event_id, event.biz_step, step)
        return None
    return event


def _for_here(province: str, here: str, there: str, what: str, event_id: str) -> bool:
    """Whether a transfer message between ``here`` (must be this ``province``) and ``there`` (another) is ours."""
    if here == province and there and there != province:
        return True
    log.warning("%s %s between %r and %r is not for province %s; ignored", what, event_id, here, there, province)
    return False


async def _store_imported(
    session: AsyncSession,
    directory: Directory,
    event: FlowEvent,
    message: pb.FlowEvent,
    *,
    origin: str,
    outcome: pb.EventOutcome.ValueType,
    facility_type: str,
    at_listed_recycler: bool,
) -> _Stored | None:
    """Store an event another province captured (and judged) with its battery links, and the states it leads
    to (not yet written); None when it is here already (redelivered, or the id is taken): applied once."""
    if await store.existing_hashes(session, {event.event_id}):
        return None
    keys = store.battery_keys_of(event)
    states, rows = await store.load_states(session, keys)
    before = {state.battery: state for state in states.values()}
    after = import_states(event, before, directory)
    units, kilograms = _amounts(event, len(after))
    name = pb.EventOutcome.Name(outcome).removeprefix("EVENT_OUTCOME_")
    row = {
        "event_id": event.event_id,
        "event_hash": message.event_hash,
        "biz_step": event.biz_step.value,
        "event_time": event.event_time,
        "record_time": event.record_time or utcnow(),
        "reporter_id": event.reporter_id,
        "facility_id": event.facility_id,
        "facility_type": facility_type,
        "county_code": message.county_code,
        "source_facility_id": event.source_facility_id,
        "destination_facility_id": event.destination_facility_id,
        "collection_mode": "",
        "outcome": name if name in ("ACCEPTED", "QUARANTINED") else "ACCEPTED",
        "battery_count": units,
        "mass_kg": kilograms,
        "late": False,
        "declared": False,
        "hits_json": "[]",  # judged in the province that captured it (see sparing_imported)
        "payload": message.SerializeToString(deterministic=True),
        "origin_province": origin,
        "at_listed_recycler": at_listed_recycler,
    }
    [seq] = await store.insert_events(session, [row])
    await store.insert_rows(session, EventBatteryRow, [{"battery_key": key, "event_seq": seq} for key in keys])
    return _Stored(seq, keys, rows, before, after, units, kilograms)


async def import_transfer(
    session: AsyncSession,
    province: str,
    directory: Directory,
    config: RuleConfig,
    transfer: pb.TransferShipped,
) -> bool:
    """Store a shipment another province sent to this one and advance its batteries (in the caller's transaction,
    which must hold the single writer's lock); False when it was not for here, not a shipment, or already in."""
    message = transfer.event
    if not _for_here(province, transfer.destination_province, transfer.origin_province, "transfer", message.event_id):
        return False
    shipment = _readable(message, BizStep.SHIPPING, "transfer")
    if shipment is None:
        return False
    stored = await _store_imported(
        session,
        directory,
        shipment,
        message,
        origin=transfer.origin_province,
        outcome=transfer.outcome,
        facility_type=transfer.origin_facility_type,
        at_listed_recycler=False,  # shipped from the origin's facility, which is not here
    )
    if stored is None:
        return False
    # Watched for diversion here: the destination province is the one that sees whether it arrives.
    await store.insert_rows(
        session,
        ShipmentRow,
        [
            {
                "event_seq": stored.seq,
                "event_id": shipment.event_id,
                "source_facility_id": shipment.effective_source_facility_id,
                "destination_facility_id": shipment.destination_facility_id,
                "reporter_id": shipment.reporter_id,
                "county_code": message.county_code,
                "shipped_at": shipment.event_time,
                "battery_count": stored.units,
                "mass_kg": stored.kilograms,
                "received_seq": None,
                "received_at": None,
            }
        ],
    )
    await _write_states(session, stored, stored.seq)
    late = sorted(b.urn for b, state in stored.before.items() if needs_replay(state, shipment))
    if late:
        # A battery known here with later events (e.g. a receipt reported before the transfer arrived): its state
        # is rebuilt from its whole history, the imported shipment where its event time puts it.
        states_now = await capture.recompute(session, late, directory, config)
        if any(state.received_via == shipment.event_id for state in states_now.values()):
            await _close_with_earlier_receipt(session, late, shipment, stored.seq)
    return True


async def import_receipt(
    session: AsyncSession,
    province: str,
    directory: Directory,
    config: RuleConfig,
    received: pb.TransferReceived,
) -> bool:
    """Store the receipt, in another province, of a shipment this province sent there, and advance its batteries
    (in the caller's transaction, which holds the single writer's lock): they are no longer in transit here and,
    received by a listed recycling enterprise, have reached the compliant channel (the province's own dispatch
    statistics count them). False when it was not for here, not a receipt, or already in."""
    message = received.event
    if not _for_here(province, received.origin_province, received.destination_province, "receipt", message.event_id):
        return False
    receipt = _readable(message, BizStep.RECEIVING, "receipt")
    if receipt is None:
        return False
    stored = await _store_imported(
        session,
        directory,
        receipt,
        message,
        origin=received.destination_province,
        outcome=received.outcome,
        facility_type=received.facility_type,
        at_listed_recycler=is_listed_treatment(directory.facility(receipt.facility_id), directory),
    )
    if stored is None:
        return False
    await _write_states(session, stored, None)
    late = sorted(b.urn for b, state in stored.before.items() if needs_replay(state, receipt))
    if late:  # later events known here: rebuilt with the receipt where its event time puts it
        await capture.recompute(session, late, directory, config)
    return True


async def _write_states(session: AsyncSession, stored: _Stored, shipment_seq: int | None) -> None:
    """The batteries' rows after the imported event (``shipment_seq``: the open shipment it is, if it is one)."""
    await store.upsert_batteries(
        session,
        [
            store.battery_values(
                state, _facts(stored.rows.get(battery.urn), state), shipment_seq if state.open_shipment else None
            )
            for battery, state in stored.after.items()
        ],
    )


async def _close_with_earlier_receipt(session: AsyncSession, keys: list[str], shipment: FlowEvent, seq: int) -> None:
    """A receipt reported here before the shipment arrived answers it now: the shipment is received (no diversion
    alert for it), by the first effective receipt at its destination from its time on."""
    history = await store.battery_history(session, keys)
    declared = {event.event_id for event in history.events if event.error_declaration is not None}
    receipts = [
        event
        for event in history.events
        if event.biz_step is BizStep.RECEIVING
        and event.error_declaration is None
        and event.event_id not in declared
        and event.facility_id == shipment.destination_facility_id
        and event.event_time >= shipment.event_time
    ]
    if receipts:
        first = min(receipts, key=lambda event: (event.event_time, history.seq_of[event.event_id]))
        await store.mark_received(session, {seq: (history.seq_of[first.event_id], first.event_time)})


def _facts(row: BatteryRow | None, state: BatteryState) -> store.BatteryFacts:
    """The battery's stored facts (collection, holding time); an imported battery is held by nobody here yet."""
    facts = store.facts_of(row)
    if not state.holder_facility_id:
        facts.held_since = None
    return facts


# ---- the consumer -----------------------------------------------------------------------------------------------


def inbound_subjects(province: str) -> list[str]:
    return [*INBOUND_REGISTRY_SUBJECTS, transfer_subject("*", province), receipt_subject("*", province)]


def inbound_consumer(
    runtime: ServiceRuntime, directory: DirectoryView, captures: CaptureQueue, config: RuleConfig
) -> ConsumerSpec:
    """The durable consumer of ``GREENMESH_<p>_INBOUND``; each delivery declares (or updates) the stream first."""
    settings = runtime.settings
    province = settings.province
    stream = inbound_stream_config(
        province,
        max_age_days=settings.stream_max_age_days,
        replicas=settings.stream_replicas,
        duplicate_window=settings.stream_duplicate_window_seconds,
    )

    async def declare(js: JetStreamContext) -> None:
        await ensure_inbound_stream(js, stream)

    async def on_facility(session: AsyncSession, message: Msg) -> None:
        event = decoded(rpb.FacilityChanged, message)
        if event is not None:
            await upsert_remote_facility(session, directory, province, event.facility, event.metadata.province_code)

    async def on_participant(session: AsyncSession, message: Msg) -> None:
        event = decoded(rpb.ParticipantChanged, message)
        if event is not None:
            origin = event.metadata.province_code or _subject_province(message.subject)
            await upsert_remote_participant(session, directory, province, event.participant, origin)

    async def on_transfer(session: AsyncSession, message: Msg) -> None:
        transfer = decoded(pb.TransferShipped, message)
        if transfer is not None and await import_transfer(session, province, directory, config, transfer):
            log.info("imported shipment %s from province %s", transfer.event.event_id, transfer.origin_province)

    async def on_receipt(session: AsyncSession, message: Msg) -> None:
        received = decoded(pb.TransferReceived, message)
        if received is not None and await import_receipt(session, province, directory, config, received):
            log.info("imported receipt %s in province %s", received.event.event_id, received.destination_province)

    effects = {
        rpb.FacilityChanged.DESCRIPTOR.full_name: on_facility,
        rpb.ParticipantChanged.DESCRIPTOR.full_name: on_participant,
        pb.TransferShipped.DESCRIPTOR.full_name: on_transfer,
        pb.TransferReceived.DESCRIPTOR.full_name: on_receipt,
    }
    return ConsumerSpec(
        durable=INBOUND_CONSUMER,
        source=runtime.component,
        filter_subjects=inbound_subjects(province),
        handler=idempotent_handler(runtime.database, INBOUND_CONSUMER, effects, transaction=captures.exclusive),
        stream=inbound_stream_name(province),
        declare=declare,
    )


def _subject_province(subject: str) -> str:
    parts = subject.split(".")
    return parts[1] if len(parts) > 1 else ""
