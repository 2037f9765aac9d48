"""The flows service's queries. Only this module (and the migrations, the alert and statistics modules) touches
the flows tables; the capture and the servicer speak domain objects and call these functions.

Bulk paths use SQLAlchemy Core statements (multi-row INSERT … RETURNING, ON CONFLICT upserts) because the
capture writes thousands of rows a second; the ORM unit of work would cost more than the database does.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import JSON, Connection, Table, and_, any_, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from services.flows.domain import (
    BatteryState,
    CustodyState,
    ErrorDeclaration,
    ErrorReason,
    FlowEvent,
    QuarantineCause,
    QuarantineRelease,
    RuleHit,
    declare_error,
)
from services.flows.domain.identity import parse_urn
from services.flows.mapping import hits_from_json, stored_event_from_proto
from services.flows.tables import (
    BatteryModelRow,
    BatteryRow,
    ErrorDeclarationRow,
    EventBatteryRow,
    FacilityLedgerRow,
    FlowEventRow,
    QuarantineReleaseRow,
    ShipmentRow,
)

T = TypeVar("T")
# Bound parameters per statement stay well under SQLite's limit (32,766) and PostgreSQL's (65,535).
IN_CHUNK = 500


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


async def execute(session: AsyncSession, statement: Any, parameters: Any = None) -> Any:
    """A Core statement on the session's connection (inside its transaction), without the ORM's bookkeeping."""
    connection = await session.connection()
    return await connection.execute(statement, parameters)


# ---- stored events ------------------------------------------------------------------------------


def to_utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes for aware columns; every stored time is UTC."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def stored_event(payload: bytes) -> FlowEvent:
    """A stored event's domain form (see :func:`services.flows.mapping.stored_event_from_proto`: the capture
    validated it, so it is not validated again)."""
    return stored_event_from_proto(pb.FlowEvent.FromString(payload))


def declaration_of(row: ErrorDeclarationRow) -> ErrorDeclaration:
    return ErrorDeclaration(
        declaration_time=to_utc(row.declaration_time),
        reason=ErrorReason(row.reason),
        corrective_event_ids=tuple(i for i in row.corrective_event_ids.split(",") if i),
        explanation=row.explanation,
        declared_by=row.declared_by,
    )


async def existing_hashes(session: AsyncSession, event_ids: Collection[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in chunks(sorted(event_ids)):
        rows = await session.exec(
            select(FlowEventRow.event_id, FlowEventRow.event_hash).where(col(FlowEventRow.event_id).in_(part))
        )
        found.update({event_id: event_hash for event_id, event_hash in rows.all()})
    return found


async def event_row(session: AsyncSession, event_id: str) -> FlowEventRow | None:
    return (await session.exec(select(FlowEventRow).where(col(FlowEventRow.event_id) == event_id))).first()


async def events_by_seq(session: AsyncSession, seqs: Collection[int]) -> dict[int, FlowEventRow]:
    found: dict[int, FlowEventRow] = {}
    for part in chunks(sorted(seqs)):
        rows = await session.exec(select(FlowEventRow).where(col(FlowEventRow.seq).in_(part)))
        found.update({row.seq: row for row in rows.all() if row.seq is not None})
    return found


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert flow_event rows with the next seqs, in input order; returns them.

    The capture is the only writer of flow_event and runs one at a time (services.flows.ingest: a lock in the
    process, an advisory lock across replicas on PostgreSQL), so it numbers the rows itself from the current
    maximum and inserts them with one executemany, which the drivers run in C (sqlite3) or as one pipelined
    batch (asyncpg). `INSERT ... RETURNING seq` instead costs SQLAlchemy a rendered multi-row statement per
    chunk, three times the insert itself on SQLite. Seqs then also commit in order, which subscriptions resuming
    from a seq rely on. On PostgreSQL the column's sequence is moved past the new rows, so that any insert
    relying on the default (none in the service; tests do) cannot collide."""
    if not rows:
        return []
    flow_event = table(FlowEventRow)
    last = (await execute(session, select(func.coalesce(func.max(flow_event.c.seq), 0)))).scalar_one()
    seqs = list(range(int(last) + 1, int(last) + 1 + len(rows)))
    await execute(session, insert(flow_event), [{**row, "seq": seq} for row, seq in zip(rows, seqs, strict=True)])
    if session.get_bind().dialect.name == "postgresql":
        await execute(session, select(func.setval(func.pg_get_serial_sequence("flow_event", "seq"), seqs[-1])))
    return seqs


async def insert_rows(session: AsyncSession, model: Any, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await execute(session, insert(table(model)), list(rows))


# ---- battery states -----------------------------------------------------------------------------


def _date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text) if text else None


def state_of(row: BatteryRow, open_shipment: FlowEvent | None) -> BatteryState:
    extra = json.loads(row.state_json or "{}")
    return BatteryState(
        battery=parse_urn(row.battery_key),
        phase=CustodyState(row.phase),
        holder_id=row.holder_id,
        holder_facility_id=row.holder_facility_id,
        waste=row.waste,
        scrap_recommended=extra.get("scrap", False),
        discharged=extra.get("discharged", False),
        sorted=extra.get("sorted", False),
        reached_recycler=row.reached_recycler,
        model_id=row.model_id,
        producer_id=row.producer_id,
        production_date=_date(extra.get("production_date")),
        open_shipment=open_shipment,
        received_via=extra.get("received_via", ""),
        last_event_id=extra.get("last_event_id", ""),
        last_event_time=to_utc(row.last_event_time) if row.last_event_time else None,
        event_count=extra.get("event_count", 0),
        quarantine=tuple(QuarantineCause(*cause) for cause in extra.get("quarantine", [])),
    )


@dataclass
class BatteryFacts:
    """What the battery table keeps beside the domain state: the times monitors and statistics read."""

    held_since: dt.datetime | None = None
    collected_at: dt.datetime | None = None
    collected_county: str = ""
    collected_mode: str = ""


def facts_of(row: BatteryRow | None) -> BatteryFacts:
    if row is None:
        return BatteryFacts()
    return BatteryFacts(
        held_since=to_utc(row.held_since) if row.held_since else None,
        collected_at=to_utc(row.collected_at) if row.collected_at else None,
        collected_county=row.collected_county,
        collected_mode=row.collected_mode,
    )


def battery_values(state: BatteryState, facts: BatteryFacts, open_shipment_seq: int | None) -> dict[str, Any]:
    extra = {
        "scrap": state.scrap_recommended,
        "discharged": state.discharged,
        "sorted": state.sorted,
        "production_date": state.production_date.isoformat() if state.production_date else None,
        "received_via": state.received_via,
        "last_event_id": state.last_event_id,
        "event_count": state.event_count,
        "quarantine": [[c.rule_id, c.event_id, c.message] for c in state.quarantine],
    }
    battery = state.battery
    return {
        "battery_key": battery.urn,
        "scheme": battery.scheme.value,
        "namespace": battery.namespace,
        "value": battery.value,
        "state": state.state.value,
        "phase": state.phase.value,
        "holder_id": state.holder_id,
        "holder_facility_id": state.holder_facility_id,
        "waste": state.waste,
        "reached_recycler": state.reached_recycler,
        "model_id": state.model_id,
        "producer_id": state.producer_id,
        "last_event_time": state.last_event_time,
        "held_since": facts.held_since,
        "collected_at": facts.collected_at,
        "collected_county": facts.collected_county,
        "collected_mode": facts.collected_mode,
        "open_shipment_seq": open_shipment_seq,
        "state_json": json.dumps(extra, ensure_ascii=False, separators=(",", ":")),
    }


async def battery_rows(session: AsyncSession, keys: Collection[str]) -> dict[str, BatteryRow]:
    """The battery rows of these keys, read with Core: plain rows with the same attributes as the model, without
    the ORM's identity map and instrumentation (a capture reads hundreds per batch and never changes them)."""
    battery = table(BatteryRow)
    found: dict[str, Any] = {}
    for part in chunks(sorted(keys)):
        result = await execute(session, sa_select(battery).where(battery.c.battery_key.in_(part)))
        found.update({row.battery_key: row for row in result})
    return found


async def payloads_by_seq(session: AsyncSession, seqs: Collection[int]) -> dict[int, bytes]:
    flow_event = table(FlowEventRow)
    found: dict[int, bytes] = {}
    for part in chunks(sorted(seqs)):
        result = await execute(
            session, sa_select(flow_event.c.seq, flow_event.c.payload).where(flow_event.c.seq.in_(part))
        )
        found.update({int(seq): bytes(payload) for seq, payload in result})
    return found


async def load_states(
    session: AsyncSession, keys: Collection[str]
) -> tuple[dict[str, BatteryState], dict[str, BatteryRow]]:
    """The stored states of these batteries (with their open shipments), and their rows. A shipment of many
    batteries is read and converted once."""
    rows = await battery_rows(session, keys)
    payloads = await payloads_by_seq(session, {r.open_shipment_seq for r in rows.values() if r.open_shipment_seq})
    shipments = {seq: stored_event(payload) for seq, payload in payloads.items()}
    states = {
        key: state_of(row, shipments[row.open_shipment_seq] if row.open_shipment_seq else None)
        for key, row in rows.items()
    }
    return states, rows


@functools.lru_cache(maxsize=8)
def _battery_upsert(dialect: str, columns: tuple[str, ...]) -> Any:
    # Built once per dialect: building the ON CONFLICT clause costs more than executing it for a small batch.
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table(BatteryRow))
    updated = {name: statement.excluded[name] for name in columns if name != "battery_key"}
    return statement.on_conflict_do_update(index_elements=["battery_key"], set_=updated)


async def upsert_batteries(session: AsyncSession, values: Sequence[dict[str, Any]]) -> None:
    if not values:
        return
    statement = _battery_upsert(session.get_bind().dialect.name, tuple(values[0]))
    for part in chunks(values, 200):
        await execute(session, statement, list(part))


async def battery_row(session: AsyncSession, key: str) -> BatteryRow | None:
    return await session.get(BatteryRow, key)


def read_battery_row(connection: Connection, key: str) -> BatteryRow | None:
    """A battery's row as a plain Core row (the model's attribute names), for ``Database.read``."""
    battery = table(BatteryRow)
    return connection.execute(sa_select(battery).where(battery.c.battery_key == key)).first()  # type: ignore[return-value]


# ---- shipments and ledgers ----------------------------------------------------------------------


@dataclass(frozen=True)
class ShipmentView:
    row: ShipmentRow
    event: FlowEvent
    receipt: FlowEvent | None


async def shipments_to(session: AsyncSession, facility_id: str, limit: int = 50) -> list[ShipmentView]:
    """The latest shipments addressed to a facility (open or received): candidates for a receipt by quantity."""
    rows = list(
        (
            await session.exec(
                select(ShipmentRow)
                .where(col(ShipmentRow.destination_facility_id) == facility_id)
                .order_by(col(ShipmentRow.event_seq).desc())
                .limit(limit)
            )
        ).all()
    )
    wanted = {r.event_seq for r in rows} | {r.received_seq for r in rows if r.received_seq}
    events = await events_by_seq(session, wanted)
    return [
        ShipmentView(
            row,
            stored_event(events[row.event_seq].payload),
            stored_event(events[row.received_seq].payload) if row.received_seq else None,
        )
        for row in rows
    ]


async def mark_received(session: AsyncSession, receipts: Mapping[int, tuple[int, dt.datetime]]) -> None:
    """shipment seq → (receipt seq, receipt time), for shipments not received yet."""
    if not receipts:
        return
    shipment = table(ShipmentRow)
    statement = (
        update(shipment)
        .where(and_(shipment.c.event_seq == bindparam("b_seq"), shipment.c.received_seq.is_(None)))
        .values(received_seq=bindparam("b_received"), received_at=bindparam("b_at"))
    )
    rows = [{"b_seq": s, "b_received": r, "b_at": at} for s, (r, at) in receipts.items()]
    await execute(session, statement, rows)


@dataclass
class LedgerDelta:
    county_code: str = ""
    units_in: int = 0
    units_out: int = 0
    kg_in: float = 0.0
    kg_out: float = 0.0
    treated_kg: float = 0.0
    output_kg: float = 0.0

    def add(self, other: LedgerDelta) -> None:
        for name in ("units_in", "units_out", "kg_in", "kg_out", "treated_kg", "output_kg"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.county_code = self.county_code or other.county_code


async def apply_ledger(session: AsyncSession, deltas: Mapping[str, LedgerDelta]) -> None:
    if not deltas:
        return
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    ledger = table(FacilityLedgerRow)
    statement = module.insert(ledger)
    sums = ("units_in", "units_out", "kg_in", "kg_out", "treated_kg", "output_kg")
    statement = statement.on_conflict_do_update(
        index_elements=["facility_id"],
        set_={name: ledger.c[name] + statement.excluded[name] for name in sums},
    )
    rows = [{"facility_id": facility, **dataclasses.asdict(delta)} for facility, delta in sorted(deltas.items())]
    await execute(session, statement, rows)


async def model_masses(session: AsyncSession, model_ids: Collection[str]) -> dict[str, float]:
    found: dict[str, float] = {}
    for part in chunks(sorted(i for i in model_ids if i)):
        rows = await session.exec(
            select(BatteryModelRow.model_id, BatteryModelRow.mass_kg).where(col(BatteryModelRow.model_id).in_(part))
        )
        found.update(dict(rows.all()))
    return found


# ---- a battery's history ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event row as a history holds it: the columns shown beside the event and the stored message (parsed
    once, for the domain event and for the message a trace returns)."""

    seq: int
    event_id: str
    event_hash: str
    outcome: str
    county_code: str
    facility_type: str
    message: pb.FlowEvent


@dataclass
class BatteryHistory:
    """Everything replay needs for some batteries: their events in capture order (declarations appended as
    EPCIS error-declaration events), the hits recorded at capture, the releases, and each event's seq; with
    ``with_batteries``, the batteries' rows as well."""

    events: list[FlowEvent] = field(default_factory=list)
    recorded_hits: dict[str, list[RuleHit]] = field(default_factory=dict)
    releases: list[QuarantineRelease] = field(default_factory=list)
    seq_of: dict[str, int] = field(default_factory=dict)
    rows: dict[str, StoredEvent] = field(default_factory=dict)
    batteries: dict[str, BatteryRow] = field(default_factory=dict)
    # Shipments imported from another province (event id → its origin province): judged there, never here.
    imported: dict[str, str] = field(default_factory=dict)

    @property
    def imported_hits(self) -> dict[str, list[RuleHit]]:
        """The recorded hits of the imported events (none), which a replay gives them instead of judging them."""
        return {event_id: self.recorded_hits.get(event_id, []) for event_id in self.imported}


# error_declaration's columns, read beside each event (labelled declaration_<name>)
DECLARATION_COLUMNS = ("event_id", "reason", "corrective_event_ids", "explanation", "declared_by", "declaration_time")


@functools.lru_cache(maxsize=2)
def _history_query(with_batteries: bool) -> Any:
    """battery_history's statement, built once: building it and its cache key costs more than running it.

    Per key of ``:keys``, event_battery's key range; each event by flow_event's key with its error declaration
    (if any) and how many releases its battery has; with ``with_batteries``, the battery's row."""
    flow_event, link, declared = table(FlowEventRow), table(EventBatteryRow), table(ErrorDeclarationRow)
    battery, release = table(BatteryRow), table(QuarantineReleaseRow)
    released = select(func.count()).where(release.c.battery_key == link.c.battery_key).scalar_subquery()
    columns: list[Any] = [
        link.c.battery_key.label("link_battery_key"),
        released.label("release_count"),
        *(flow_event.c[name] for name in ("seq", "event_id", "event_hash", "outcome", "county_code")),
        *(flow_event.c[name] for name in ("facility_type", "declared", "hits_json", "payload", "origin_province")),
        flow_event.c.event_time,
        flow_event.c.record_time,
        link.c.state_after.label("link_state_after"),
        *(declared.c[name].label(f"declaration_{name}") for name in DECLARATION_COLUMNS),
    ]
    joined = link.join(flow_event, flow_event.c.seq == link.c.event_seq).outerjoin(
        declared, declared.c.event_id == flow_event.c.event_id
    )
    if with_batteries:
        columns += [c.label(f"battery_{c.name}") for c in battery.c]
        joined = joined.outerjoin(battery, battery.c.battery_key == link.c.battery_key)
    return select(*columns).select_from(joined).where(link.c.battery_key.in_(bindparam("keys", expanding=True)))


async def battery_history(
    session: AsyncSession, keys: Collection[str], *, with_batteries: bool = False
) -> BatteryHistory:
    """The history of these batteries inside the session's transaction (:func:`read_battery_history`); what the
    session has added but not flushed is flushed first, since Core statements do not autoflush."""
    await session.flush()
    connection = await session.connection()
    return await connection.run_sync(read_battery_history, keys, with_batteries)


def read_battery_history(connection: Connection, keys: Collection[str], with_batteries: bool = False) -> BatteryHistory:
    """The history of these batteries in one statement per chunk of keys (:func:`_history_query`); only
    batteries with releases cost a second one. Synchronous, so that ``Database.read`` runs it whole on one
    pysqlite connection on SQLite, where every statement through aiosqlite is several thread round trips."""
    return _history_from_rows(connection, _read_history_rows(connection, keys, with_batteries))


@dataclass
class _HistoryRows:
    """battery_history's rows before any event is parsed: by seq, the batteries with releases, the battery rows."""

    rows: dict[int, Any] = field(default_factory=dict)
    with_releases: set[str] = field(default_factory=set)
    batteries: dict[str, BatteryRow] = field(default_factory=dict)


def _read_history_rows(connection: Connection, keys: Collection[str], with_batteries: bool) -> _HistoryRows:
    found = _HistoryRows()
    for part in chunks(sorted(keys)):
        for row in connection.execute(_history_query(with_batteries), {"keys": list(part)}):
            found.rows[row.seq] = row
            if row.release_count:
                found.with_releases.add(row.link_battery_key)
            if with_batteries and row.battery_battery_key is not None and row.link_battery_key not in found.batteries:
                # A plain record with the model's attribute names (as battery_rows returns), not an ORM instance.
                found.batteries[row.link_battery_key] = _battery_record()(*(row[i] for i in _battery_indexes(row)))
    return found


def _history_from_rows(connection: Connection, found: _HistoryRows) -> BatteryHistory:
    history = BatteryHistory(batteries=found.batteries)
    declarations: list[tuple[dt.datetime, FlowEvent, ErrorDeclarationRow]] = []
    for seq in sorted(found.rows):
        row = found.rows[seq]
        stored = _stored_of(row)
        event = stored_event_from_proto(stored.message)
        history.events.append(event)
        history.recorded_hits[event.event_id] = hits_from_json(row.hits_json)
        history.seq_of[event.event_id] = seq
        if row.origin_province:
            history.imported[event.event_id] = row.origin_province
        history.rows[event.event_id] = stored
        if row.declared and row.declaration_event_id is not None:
            declaration = ErrorDeclarationRow(
                **{name: getattr(row, f"declaration_{name}") for name in DECLARATION_COLUMNS}
            )
            declarations.append((to_utc(declaration.declaration_time), event, declaration))
    for _, event, declaration in sorted(declarations, key=lambda item: item[0]):
        history.events.append(declare_error(event, declaration_of(declaration)))
    release = table(QuarantineReleaseRow)
    for part in chunks(sorted(found.with_releases)):
        released = connection.execute(sa_select(release).where(release.c.battery_key.in_(part)))
        history.releases += [
            QuarantineRelease(parse_urn(r.battery_key), to_utc(r.released_at), r.released_by, r.note) for r in released
        ]
    return history


def _stored_of(row: Any) -> StoredEvent:
    message = pb.FlowEvent.FromString(row.payload)
    return StoredEvent(row.seq, row.event_id, row.event_hash, row.outcome, row.county_code, row.facility_type, message)


@dataclass(frozen=True)
class RecordedStep:
    """One event of a battery as its capture recorded it: the stored event, the battery's state after it, the
    event's rule hits."""

    stored: StoredEvent
    state_after: CustodyState
    hits: list[RuleHit]


@dataclass
class TraceSource:
    """What one battery's trace is built from (:func:`read_trace_source`): its row, and either the steps its
    capture recorded (``recorded``) or the history to replay (``history``)."""

    battery: BatteryRow | None
    recorded: list[RecordedStep] | None = None
    history: BatteryHistory | None = None


def read_trace_source(connection: Connection, key: str) -> TraceSource:
    """A battery's row and history in one statement; when the recorded steps are the whole story
    (:func:`_recorded_steps_suffice`) the events are not turned into domain events, since nothing will replay
    them. For ``Database.read``."""
    found = _read_history_rows(connection, [key], with_batteries=True)
    battery = found.batteries.get(key)
    if battery is None or not _recorded_steps_suffice(found, battery):
        return TraceSource(battery, history=_history_from_rows(connection, found))
    steps = [
        RecordedStep(_stored_of(row), CustodyState(row.link_state_after), hits_from_json(row.hits_json))
        for row in (found.rows[seq] for seq in sorted(found.rows))
    ]
    return TraceSource(battery, recorded=steps)


def _recorded_steps_suffice(found: _HistoryRows, battery: BatteryRow) -> bool:
    """Whether a replay would only repeat the capture: no event declared in error, no release, no event imported
    from another province (judged there), every link with the state its capture judged, the events captured in
    the order a replay applies them (event time, then record time: a late event was re-judged by a recompute),
    and the battery's stored state the last step's (nothing recomputed it since)."""
    if not found.rows or found.with_releases:
        return False
    previous: tuple[dt.datetime, dt.datetime] | None = None
    last = None
    for seq in sorted(found.rows):
        row = found.rows[seq]
        if row.declared or row.origin_province or row.link_state_after is None:
            return False
        moment = (to_utc(row.event_time), to_utc(row.record_time))
        if previous is not None and moment < previous:
            return False
        previous, last = moment, row
    return last is not None and last.link_state_after == battery.state


@functools.lru_cache(maxsize=1)
def _battery_record() -> Any:
    """A named tuple with battery's column names, the type of read_battery_history's battery rows."""
    return collections.namedtuple("BatteryRecord", [c.name for c in table(BatteryRow).c])


def _battery_indexes(row: Any) -> list[int]:
    """Where the battery's columns (labelled battery_<name>) sit in a history row, in the table's order."""
    return _battery_indexes_of(tuple(row._fields))


@functools.lru_cache(maxsize=4)
def _battery_indexes_of(fields: tuple[str, ...]) -> list[int]:
    return [fields.index(f"battery_{c.name}") for c in table(BatteryRow).c]


async def has_reported_for(session: AsyncSession, key: str, reporter_id: str) -> bool:
    """Whether this participant reported any event of the battery (it may then read the battery's trace)."""
    query = (
        select(func.count())
        .select_from(EventBatteryRow)
        .join(FlowEventRow, col(FlowEventRow.seq) == col(EventBatteryRow.event_seq))
        .where(col(EventBatteryRow.battery_key) == key, col(FlowEventRow.reporter_id) == reporter_id)
    )
    return int((await session.exec(query)).one()) > 0


# ---- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventAccess:
    """The events an enterprise may read: those it reported, and those that happened at (`facility_id`), left
    from (`source_facility_id`) or went to (`destination_facility_id`) a facility it operates."""

    participant_id: str
    # The facilities the participant operates now (the registry directory's operator of each).
    facility_ids: Collection[str] = ()


@dataclass(frozen=True)
class EventFilter:
    biz_steps: Sequence[str] = ()
    event_time_from: dt.datetime | None = None
    event_time_to: dt.datetime | None = None
    record_time_from: dt.datetime | None = None
    record_time_to: dt.datetime | None = None
    facility_id: str = ""
    source_facility_id: str = ""
    destination_facility_id: str = ""
    battery_key: str = ""
    division_prefix: str = ""
    # Access for an enterprise: None = no restriction (oversight, or a battery the caller may read whole).
    access: EventAccess | None = None
    # Access for regulators: the region's division prefix ("" = national).
    region_prefix: str = ""


def _among(column: Any, ids: Sequence[str], dialect: str) -> Any:
    """`column IN ids`. A short list is bound value by value, which lets the planners see the values; a long one
    (an operator of thousands of sites) is one parameter, so that three of them cannot reach the drivers' limits
    on bound parameters: a JSON array read by json_each on SQLite, an array with `= ANY` on PostgreSQL."""
    if len(ids) <= IN_CHUNK:
        return column.in_(ids)
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(column.type)))
    listed = func.json_each(bindparam(None, list(ids), type_=JSON)).table_valued("value")
    return column.in_(sa_select(listed.c.value))


def _visible(access: EventAccess, dialect: str) -> Any:
    """`reporter_id = p OR facility_id IN f OR source_facility_id IN f OR destination_facility_id IN f`.

    Query plans (SQLite and PostgreSQL, 300,000 events): as for the reporter alone before, the page is read along
    the primary key from its seq on with this as a filter, or through the other filters' index (facility, battery,
    county and time) when there is one. No index serves the OR itself: reporter, source and destination have none,
    and an index union would need all three on the log's hottest insert path. Reading by the primary key costs
    what it did for the reporter alone; it scans far only for a participant with few events among many."""
    c = FlowEventRow
    reported = col(c.reporter_id) == access.participant_id
    ids = sorted(set(access.facility_ids))
    if not ids:
        return reported
    columns = (c.facility_id, c.source_facility_id, c.destination_facility_id)
    return or_(reported, *(_among(col(column), ids, dialect) for column in columns))


def _filtered(query: Any, f: EventFilter, dialect: str) -> Any:
    c = FlowEventRow
    if f.biz_steps:
        query = query.where(col(c.biz_step).in_(list(f.biz_steps)))
    if f.event_time_from:
        query = query.where(col(c.event_time) >= f.event_time_from)
    if f.event_time_to:
        query = query.where(col(c.event_time) < f.event_time_to)
    if f.record_time_from:
        query = query.where(col(c.record_time) >= f.record_time_from)
    if f.record_time_to:
        query = query.where(col(c.record_time) < f.record_time_to)
    if f.facility_id:
        query = query.where(col(c.facility_id) == f.facility_id)
    if f.source_facility_id:
        query = query.where(col(c.source_facility_id) == f.source_facility_id)
    if f.destination_facility_id:
        query = query.where(col(c.destination_facility_id) == f.destination_facility_id)
    if f.division_prefix:
        query = query.where(col(c.county_code).startswith(f.division_prefix))
    if f.region_prefix:
        query = query.where(col(c.county_code).startswith(f.region_prefix))
    if f.access is not None:
        query = query.where(_visible(f.access, dialect))
    if f.battery_key:
        query = query.where(
            col(c.seq).in_(select(EventBatteryRow.event_seq).where(col(EventBatteryRow.battery_key) == f.battery_key))
        )
    return query


async def query_events(session: AsyncSession, f: EventFilter, *, after_seq: int, limit: int) -> list[FlowEventRow]:
    dialect = session.get_bind().dialect.name
    query = _filtered(select(FlowEventRow), f, dialect).where(col(FlowEventRow.seq) > after_seq)
    rows = await session.exec(query.order_by(col(FlowEventRow.seq)).limit(limit))
    return list(rows.all())


async def latest_seq(session: AsyncSession) -> int:
    latest = (await session.exec(select(func.max(FlowEventRow.seq)))).one()
    return int(latest or 0)


async def declarations(session: AsyncSession, event_ids: Iterable[str]) -> dict[str, ErrorDeclaration]:
    ids = sorted(set(event_ids))
    found: dict[str, ErrorDeclaration] = {}
    for part in chunks(ids):
        rows = await session.exec(select(ErrorDeclarationRow).where(col(ErrorDeclarationRow.event_id).in_(part)))
        found.update({row.event_id: declaration_of(row) for row in rows.all()})
    return found


def battery_keys_of(event: FlowEvent) -> list[str]:
    return sorted({b.urn for b in event.batteries})
