"""Capturing reported events: validate, classify resubmissions, judge against the custody state machine and the
rules, then write the event log and its projections in the caller's transaction.

One :class:`Capture` handles one batch (a unary report is a batch of one; an upload is a series of batches).
It reads everything it needs up front in a few set-wise queries (stored hashes, battery states, models,
shipment candidates), judges the events in order in memory (a later event of the batch sees the state the
earlier ones left), and writes with multi-row statements. Nothing is written when the batch is rolled back.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.bus import CONTENT_TYPE_HEADER, EVENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE
from meshkit.config import Component, MeshSettings
from meshkit.errors import FieldViolation
from meshkit.ids import new_id
from meshkit.national import receipt_subject, transfer_subject
from meshkit.outbox import append_event
from meshkit.subjects import event_subject
from meshkit.tables import OutboxEvent, utcnow
from services.flows import alerts, store
from services.flows.domain import (
    BatteryId,
    BatteryState,
    BizStep,
    Decision,
    Directory,
    ErrorDeclaration,
    FlowEvent,
    Replay,
    RuleConfig,
    RuleContext,
    RuleHit,
    Severity,
    Unit,
    advance,
    decide,
    evaluate_all,
    event_hash,
    event_violations,
    make_judge,
    match_shipment,
    needs_replay,
    replay,
)
from services.flows.domain.custody import is_listed_treatment
from services.flows.domain.deadlines import is_late
from services.flows.domain.directory import TREATMENT_FACILITIES
from services.flows.domain.identity import parse_urn
from services.flows.domain.transfers import province_of, sparing_imported, transfer_destination
from services.flows.mapping import (
    declaration_to_proto,
    event_from_proto,
    event_to_proto,
    hit_to_proto,
    hits_to_json,
)
from services.flows.tables import EventBatteryRow, ShipmentRow

log = logging.getLogger(__name__)

MAX_BATCH = 1_000
INTAKE_STEPS = frozenset({BizStep.COLLECTING, BizStep.RECEIVING})
OUTGOING_STEPS = frozenset({BizStep.SHIPPING, BizStep.RETAIL_SELLING, BizStep.INSTALLING})
CONSUMING_STEPS = frozenset({BizStep.DISMANTLING, BizStep.RECYCLING, BizStep.DESTROYING})


@dataclass
class Judged:
    """One event of a batch and what the capture decided about it."""

    index: int
    event_id: str
    outcome: pb.EventOutcome.ValueType = pb.EVENT_OUTCOME_UNSPECIFIED
    event: FlowEvent | None = None
    event_hash: str = ""
    hits: list[RuleHit] = field(default_factory=list)
    problems: list[FieldViolation] = field(default_factory=list)
    facility_type: str = ""
    county_code: str = ""
    mass_kg: float = 0.0
    units: int = 0
    answered_shipments: list[str] = field(default_factory=list)  # event ids of the shipments a receipt closes
    # Of those, the ones shipped from another province (imported here): shipment event id -> origin province.
    answered_transfers: dict[str, str] = field(default_factory=dict)
    replay_keys: list[str] = field(default_factory=list)  # batteries this event reached out of order
    # Each battery's state after this event, as judged here (its event_battery link keeps it for the trace).
    states_after: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    message: pb.FlowEvent | None = None  # the stored form, built once for the row and the outbox

    @property
    def stored(self) -> bool:
        return self.outcome in (pb.EVENT_OUTCOME_ACCEPTED, pb.EVENT_OUTCOME_QUARANTINED)

    def result(self) -> pb.EventResult:
        return pb.EventResult(
            event_id=self.event_id,
            outcome=self.outcome,
            event_hash=self.event_hash,
            rule_hits=[hit_to_proto(h) for h in self.hits],
            field_problems=[pb.FieldProblem(field=p.field, description=p.description) for p in self.problems],
        )


@dataclass
class BatchResult:
    judged: list[Judged]
    rolled_back: bool
    # Refused for a CRITICAL rule: recorded as alerts even when the batch stores nothing.
    critical_rejections: list[Judged]

    def results(self) -> list[pb.EventResult]:
        return [j.result() for j in self.judged]


@dataclass
class Capture:
    session: AsyncSession
    settings: MeshSettings
    directory: Directory
    config: RuleConfig
    now: dt.datetime
    states: dict[str, BatteryState] = field(default_factory=dict)
    facts: dict[str, store.BatteryFacts] = field(default_factory=dict)
    # Seqs of shipping events referenced by battery states (loaded rows and this batch).
    shipment_seq: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, list[store.ShipmentView]] = field(default_factory=lambda: defaultdict(list))
    masses: dict[str, float] = field(default_factory=dict)

    # ---- judging ----------------------------------------------------------------------------------

    def convert(self, index: int, message: pb.FlowEvent, reporter_id: str) -> Judged:
        judged = Judged(index=index, event_id=message.event_id)
        event, problems = event_from_proto(message, reporter_id=reporter_id, record_time=self.now)
        if event is not None:
            problems = event_violations(event, now=self.now, clock_skew=self.config.clock_skew)
        if problems or event is None:
            judged.outcome = pb.EVENT_OUTCOME_REJECTED
            judged.problems = problems
            return judged
        judged.event = event
        judged.event_hash = event_hash(event)
        return judged

    async def prepare(self, judged: Sequence[Judged]) -> None:
        """Classify resubmissions and load what the rules will read, in a few set-wise queries."""
        valid = [j for j in judged if j.event is not None]
        stored = await store.existing_hashes(self.session, {j.event_id for j in valid})
        first_in_batch: dict[str, str] = {}
        for j in valid:
            known = stored.get(j.event_id, first_in_batch.get(j.event_id))
            if known is not None:
                j.outcome = pb.EVENT_OUTCOME_DUPLICATE if known == j.event_hash else pb.EVENT_OUTCOME_CONFLICT
                if j.outcome == pb.EVENT_OUTCOME_CONFLICT:
                    j.problems = [FieldViolation("event.event_id", "already used for an event with other content")]
            else:
                first_in_batch[j.event_id] = j.event_hash
        fresh = [j for j in valid if j.outcome == pb.EVENT_OUTCOME_UNSPECIFIED]
        keys = {b.urn for j in fresh for b in j.event.batteries}  # type: ignore[union-attr]
        states, rows = await store.load_states(self.session, keys)
        self.states.update(states)
        for key, row in rows.items():
            self.facts[key] = store.facts_of(row)
            shipment = states[key].open_shipment
            if shipment is not None and row.open_shipment_seq:
                self.shipment_seq[shipment.event_id] = row.open_shipment_seq
        model_ids = {s.model_id for s in states.values()} | {j.event.model_id for j in fresh if j.event}
        model_ids |= {q.product_class for j in fresh if j.event for q in j.event.quantities}
        self.masses = await store.model_masses(self.session, model_ids)
        receiving = {
            j.event.facility_id
            for j in fresh
            if j.event and j.event.biz_step is BizStep.RECEIVING and (j.event.quantities or not j.event.batteries)
        }
        for facility_id in sorted(receiving):
            self.candidates[facility_id] = await store.shipments_to(self.session, facility_id)
            for view in self.candidates[facility_id]:
                self.shipment_seq[view.event.event_id] = view.row.event_seq

    def judge(self, j: Judged) -> None:
        event = j.event
        assert event is not None
        facility = self.directory.facility(event.facility_id)
        j.facility_type, j.county_code = (facility.facility_type, facility.county_code) if facility else ("", "")
        before = {b: self.state(b) for b in event.batteries}
        shipment, prior = self.matched_shipment(event)
        context = RuleContext(
            now=self.now,
            config=self.config,
            shipment=shipment,
            prior_receipts=prior,
        )
        j.hits = evaluate_all(event, before, self.directory, context)
        decision = decide(j.hits)
        if decision is Decision.REJECT:
            j.outcome = pb.EVENT_OUTCOME_REJECTED
            return
        j.outcome = pb.EVENT_OUTCOME_QUARANTINED if decision is Decision.QUARANTINE else pb.EVENT_OUTCOME_ACCEPTED
        j.units, j.mass_kg = self.amounts(event, before)
        if event.biz_step is BizStep.RECEIVING:
            answered = {
                s.open_shipment.event_id: s.open_shipment
                for s in before.values()
                if s.open_shipment is not None
                and s.open_shipment.effective_destination_facility_id == event.facility_id
            }
            if shipment is not None and not prior:
                answered[shipment.event_id] = shipment
            j.answered_shipments = sorted(answered)
            j.answered_transfers = self.transfer_origins(answered.values())
        for battery, state in before.items():
            if needs_replay(state, event):
                j.replay_keys.append(battery.urn)
            self.states[battery.urn] = advance(state, event, self.directory, j.hits)
            j.states_after[battery.urn] = self.states[battery.urn].state.value
            self.facts[battery.urn] = self.next_facts(battery.urn, state, self.states[battery.urn], event, j)

    def state(self, battery: BatteryId) -> BatteryState:
        return self.states.get(battery.urn) or BatteryState(battery)

    def matched_shipment(self, event: FlowEvent) -> tuple[FlowEvent | None, tuple[FlowEvent, ...]]:
        if event.biz_step is not BizStep.RECEIVING or event.facility_id not in self.candidates:
            return None, ()
        views = self.candidates[event.facility_id]
        shipment = match_shipment(event, [v.event for v in views])
        if shipment is None:
            return None, ()
        view = next(v for v in views if v.event.event_id == shipment.event_id)
        return shipment, (view.receipt,) if view.receipt is not None else ()

    def transfer_origins(self, shipments: Iterable[FlowEvent]) -> dict[str, str]:
        """The shipments that came from another province (their facility's county there): event id -> province."""
        origins: dict[str, str] = {}
        for shipment in shipments:
            facility = self.directory.facility(shipment.facility_id)
            origin = province_of(facility.county_code) if facility is not None else ""
            if origin and origin != self.settings.province:
                origins[shipment.event_id] = origin
        return origins

    def amounts(self, event: FlowEvent, before: dict[BatteryId, BatteryState]) -> tuple[int, float]:
        """Pieces and kilograms the event moves: identified batteries (by their model's mass) and quantities."""
        units = len(before)
        kilograms = sum(self.masses.get(s.model_id or event.model_id, 0.0) for s in before.values())
        for quantity in event.quantities:
            if quantity.unit is Unit.KILOGRAMS:
                kilograms += quantity.amount
            else:
                units += round(quantity.amount)
                kilograms += quantity.amount * self.masses.get(quantity.product_class, 0.0)
        return units, kilograms

    def next_facts(
        self, key: str, before: BatteryState, after: BatteryState, event: FlowEvent, j: Judged
    ) -> store.BatteryFacts:
        known = self.facts.get(key)
        facts = copy.copy(known) if known is not None else store.BatteryFacts()
        if after.holder_facility_id and after.holder_facility_id != before.holder_facility_id:
            facts.held_since = event.event_time
        elif not after.holder_facility_id:
            facts.held_since = None
        if event.biz_step is BizStep.COLLECTING and facts.collected_at is None:
            facts.collected_at = event.event_time
            facts.collected_county = j.county_code
            facts.collected_mode = event.collection_mode.value if event.collection_mode else ""
        return facts

    # ---- writing ----------------------------------------------------------------------------------

    async def write(self, judged: Sequence[Judged]) -> None:
        stored = [j for j in judged if j.stored]
        if not stored:
            return
        rows = [self.event_row(j) for j in stored]
        for j, seq in zip(stored, await store.insert_events(self.session, rows), strict=True):
            j.seq = seq
            if j.event is not None and j.event.biz_step is BizStep.SHIPPING:
                self.shipment_seq[j.event_id] = seq
        links: list[dict[str, Any]] = []
        shipments: list[dict[str, Any]] = []
        receipts: dict[int, tuple[int, dt.datetime]] = {}
        ledger: dict[str, store.LedgerDelta] = defaultdict(store.LedgerDelta)
        for j in stored:
            event = j.event
            assert event is not None
            links += [
                {"battery_key": key, "event_seq": j.seq, "state_after": j.states_after.get(key)}
                for key in store.battery_keys_of(event)
            ]
            if event.biz_step is BizStep.SHIPPING:
                destination = transfer_destination(event, self.directory, self.settings.province)
                if destination:
                    # A cross-province transfer: sent to the destination province in this transaction, which
                    # imports the shipment and watches it for diversion (it sees the receipt, this province does not).
                    self.append_transfer(j, destination)
                else:
                    shipments.append(self.shipment_row(j))
            for shipment_id in j.answered_shipments:
                shipment_seq = self.shipment_seq.get(shipment_id)
                if shipment_seq is not None:
                    receipts.setdefault(shipment_seq, (j.seq, event.event_time))
            for shipment_id, origin in sorted(j.answered_transfers.items()):
                # The origin province learns that its shipment arrived (services.flows.transfers.import_receipt).
                self.append_receipt(j, shipment_id, origin)
            for facility_id, delta in ledger_effects(j).items():
                ledger[facility_id].add(delta)
        await store.insert_rows(self.session, EventBatteryRow, links)
        await store.insert_rows(self.session, ShipmentRow, shipments)
        await store.mark_received(self.session, receipts)
        await store.apply_ledger(self.session, ledger)
        touched = sorted({b.urn for j in stored if j.event for b in j.event.batteries})
        await store.upsert_batteries(self.session, [self.battery_values(key) for key in touched])
        # One multi-row INSERT for the batch's FlowEventRecorded events: meshkit.outbox.append_event adds one
        # ORM object per event, and flushing those costs an INSERT (a thread round trip) per row on SQLite.
        headers_json = outbox_headers(pb.FlowEventRecorded)
        await store.insert_rows(
            self.session,
            OutboxEvent,
            [self.outbox_row(j, row, headers_json) for j, row in zip(stored, rows, strict=True)],
        )
        for j in stored:
            if j.outcome == pb.EVENT_OUTCOME_QUARANTINED:
                await self.raise_rule_alert(j)
        late_ones = sorted({key for j in stored for key in j.replay_keys})
        if late_ones:
            # Advanced at face value above; the replay puts the late event where its event time belongs.
            await recompute(self.session, late_ones, self.directory, self.config)

    def event_row(self, j: Judged) -> dict[str, Any]:
        event = j.event
        assert event is not None
        message = j.message = event_to_proto(
            event, event_hash=j.event_hash, outcome=j.outcome, county_code=j.county_code
        )
        record_offset = event.local_event_time.tzinfo or dt.UTC
        late = is_late(
            event.biz_step.value,
            j.facility_type,
            event.local_event_time.date(),
            self.now.astimezone(record_offset).date(),
        )
        return {
            "event_id": j.event_id,
            "event_hash": j.event_hash,
            "biz_step": event.biz_step.value,
            "event_time": event.event_time,
            "record_time": self.now,
            "reporter_id": event.reporter_id,
            "facility_id": event.facility_id,
            "facility_type": j.facility_type,
            "county_code": j.county_code,
            "source_facility_id": event.source_facility_id,
            "destination_facility_id": event.destination_facility_id,
            "collection_mode": event.collection_mode.value if event.collection_mode else "",
            "outcome": pb.EventOutcome.Name(j.outcome).removeprefix("EVENT_OUTCOME_"),
            "battery_count": j.units,
            "mass_kg": j.mass_kg,
            "late": late,
            "declared": False,
            "hits_json": hits_to_json(j.hits),
            "payload": message.SerializeToString(deterministic=True),
            "origin_province": "",
            "at_listed_recycler": is_listed_treatment(self.directory.facility(event.facility_id), self.directory),
        }

    def append_transfer(self, j: Judged, destination: str) -> None:
        """The shipment's ``TransferShipped`` outbox event, on greenmesh.<here>.flows.v1.transfer_shipped.<there>."""
        assert j.message is not None  # event_row built it
        metadata = event_metadata(self.settings, pb.TransferShipped, self.now)
        transfer = pb.TransferShipped(
            metadata=metadata,
            origin_province=self.settings.province,
            destination_province=destination,
            event=j.message,
            outcome=j.outcome,
            rule_hits=[hit_to_proto(h) for h in j.hits],
            origin_facility_type=j.facility_type,
        )
        append_event(
            self.session, transfer_subject(self.settings.province, destination), transfer, event_id=metadata.event_id
        )

    def append_receipt(self, j: Judged, shipment_id: str, origin: str) -> None:
        """The receipt's ``TransferReceived`` outbox event, on greenmesh.<here>.flows.v1.transfer_received.<origin>."""
        assert j.message is not None  # event_row built it
        metadata = event_metadata(self.settings, pb.TransferReceived, self.now)
        receipt = pb.TransferReceived(
            metadata=metadata,
            origin_province=origin,
            destination_province=self.settings.province,
            shipment_event_id=shipment_id,
            event=j.message,
            outcome=j.outcome,
            facility_type=j.facility_type,
        )
        subject = receipt_subject(self.settings.province, origin)
        append_event(self.session, subject, receipt, event_id=metadata.event_id)

    def shipment_row(self, j: Judged) -> dict[str, Any]:
        event = j.event
        assert event is not None
        return {
            "event_seq": j.seq,
            "event_id": j.event_id,
            "source_facility_id": event.effective_source_facility_id,
            "destination_facility_id": event.destination_facility_id,
            "reporter_id": event.reporter_id,
            "county_code": j.county_code,
            "shipped_at": event.event_time,
            "battery_count": j.units,
            "mass_kg": j.mass_kg,
            "received_seq": None,
            "received_at": None,
        }

    def battery_values(self, key: str) -> dict[str, Any]:
        state = self.states[key]
        shipment = state.open_shipment
        seq = self.shipment_seq.get(shipment.event_id) if shipment is not None else None
        return store.battery_values(state, self.facts.get(key) or store.BatteryFacts(), seq)

    def outbox_row(self, j: Judged, event_row: dict[str, Any], headers_json: str) -> dict[str, Any]:
        """The event's FlowEventRecorded outbox row, as meshkit.outbox.append_event would write it, with what the
        statistics keep of the event (``event_row``, its flow_event row) for the national view."""
        assert j.event is not None
        metadata = event_metadata(self.settings, pb.FlowEventRecorded, self.now)
        message = j.message or event_to_proto(
            j.event, event_hash=j.event_hash, outcome=j.outcome, county_code=j.county_code
        )
        recorded = pb.FlowEventRecorded(
            metadata=metadata,
            event=message,
            outcome=j.outcome,
            rule_hits=[hit_to_proto(h) for h in j.hits],
            facility_type=j.facility_type,
            late=event_row["late"],
            battery_count=j.units,
            mass_kg=j.mass_kg,
            at_listed_recycler=event_row["at_listed_recycler"],
        )
        return {
            "event_id": metadata.event_id,
            "subject": event_subject(self.settings.province, Component.FLOWS, pb.FlowEventRecorded),
            "event_type": metadata.event_type,
            "payload": recorded.SerializeToString(deterministic=True),
            "headers_json": headers_json,
            "created_at": utcnow(),
            "published_at": None,
            "attempts": 0,
            "last_error": None,
        }

    async def raise_rule_alert(self, j: Judged) -> None:
        assert j.event is not None
        worst = max(j.hits, key=lambda h: h.severity.rank)
        await alerts.raise_alert(
            self.session,
            self.settings,
            kind="RULE_HIT",
            severity=worst.severity.value,
            message=f"event {j.event_id} ({j.event.biz_step.value}): "
            + "; ".join(f"{h.rule_id}: {h.message}" for h in j.hits[:5]),
            now=self.now,
            facility_id=j.event.facility_id,
            county_code=j.county_code,
            battery_keys=sorted({h.battery.urn for h in j.hits if h.battery is not None}),
            rule_id=worst.rule_id,
        )


def ledger_effects(j: Judged, sign: int = 1) -> dict[str, store.LedgerDelta]:
    """How one stored event changes facility stock and mass balance (sign -1 undoes a declared event)."""
    event = j.event
    assert event is not None
    effects: dict[str, store.LedgerDelta] = {}
    step = event.biz_step
    delta = store.LedgerDelta(county_code=j.county_code)
    if step in INTAKE_STEPS or step is BizStep.COMMISSIONING:
        delta.units_in, delta.kg_in = sign * j.units, sign * j.mass_kg
        if j.facility_type in TREATMENT_FACILITIES and step is BizStep.RECEIVING:
            delta.treated_kg = sign * j.mass_kg
    elif step in OUTGOING_STEPS or step in CONSUMING_STEPS:
        delta.units_out, delta.kg_out = sign * j.units, sign * j.mass_kg
    if step in (BizStep.DISMANTLING, BizStep.RECYCLING):
        delta.output_kg = sign * sum(q.amount for q in event.outputs if q.unit is Unit.KILOGRAMS)
    if delta.units_in or delta.units_out or delta.kg_in or delta.kg_out or delta.treated_kg or delta.output_kg:
        effects[event.facility_id] = delta
    return effects


def outbox_headers(message_type: Any) -> str:
    """The headers_json meshkit.outbox.append_event records for an event of this type written now: its type,
    the content type and the current trace context (the same for every event of a batch)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers = {
        EVENT_TYPE_HEADER: message_type.DESCRIPTOR.full_name,
        CONTENT_TYPE_HEADER: PROTOBUF_CONTENT_TYPE,
        **carrier,
    }
    return json.dumps(headers, sort_keys=True)


def event_metadata(settings: MeshSettings, message_type: Any, now: dt.datetime) -> event_pb2.EventMetadata:
    metadata = event_pb2.EventMetadata(
        event_id=new_id(),
        event_type=message_type.DESCRIPTOR.full_name,
        province_code=settings.province,
        source_component=Component.FLOWS.value,
    )
    metadata.occurred_at.FromDatetime(now)
    return metadata


def stage_error_declared(
    session: AsyncSession, settings: MeshSettings, event_id: str, declaration: ErrorDeclaration
) -> None:
    """The declaration's ``ErrorDeclared`` event, in the declaring transaction (the national view stops counting the
    event when it arrives)."""
    metadata = event_metadata(settings, pb.ErrorDeclared, declaration.declaration_time)
    declared = pb.ErrorDeclared(metadata=metadata, event_id=event_id, declaration=declaration_to_proto(declaration))
    subject = event_subject(settings.province, Component.FLOWS, pb.ErrorDeclared)
    append_event(session, subject, declared, event_id=metadata.event_id)


async def capture_batch(
    session: AsyncSession,
    settings: MeshSettings,
    directory: Directory,
    config: RuleConfig,
    messages: Sequence[pb.FlowEvent],
    reporter_ids: str | Sequence[str],
    *,
    rollback_on_error: bool,
    now: dt.datetime | None = None,
) -> BatchResult:
    """Judge and (unless rolled back) store a batch in the session's transaction. The reporter is one
    authenticated caller for the whole batch, or one per message (single reports captured together)."""
    capture = Capture(session, settings, directory, config, now or dt.datetime.now(dt.UTC))
    reporters = [reporter_ids] * len(messages) if isinstance(reporter_ids, str) else reporter_ids
    judged = [capture.convert(i, m, r) for i, (m, r) in enumerate(zip(messages, reporters, strict=True))]
    await capture.prepare(judged)
    for j in judged:
        if j.event is not None and j.outcome == pb.EVENT_OUTCOME_UNSPECIFIED:
            capture.judge(j)
    critical = [
        j
        for j in judged
        if j.outcome == pb.EVENT_OUTCOME_REJECTED and any(h.severity is Severity.CRITICAL for h in j.hits)
    ]
    bad = any(j.outcome in (pb.EVENT_OUTCOME_REJECTED, pb.EVENT_OUTCOME_CONFLICT) for j in judged)
    if rollback_on_error and bad:
        for j in judged:
            if j.stored:
                j.outcome = pb.EVENT_OUTCOME_NOT_STORED
        return BatchResult(judged, rolled_back=True, critical_rejections=critical)
    await capture.write(judged)
    return BatchResult(judged, rolled_back=False, critical_rejections=critical)


async def record_critical_rejections(
    session: AsyncSession, settings: MeshSettings, rejected: Sequence[Judged], now: dt.datetime
) -> None:
    """A refused refurbishment is not stored as a flow, but the attempt must not be lost: alert and publish."""
    for j in rejected:
        assert j.event is not None
        message = event_to_proto(j.event, event_hash=j.event_hash, outcome=j.outcome, county_code=j.county_code)
        metadata = event_metadata(settings, pb.EventRejected, now)
        append_event(
            session,
            event_subject(settings.province, Component.FLOWS, pb.EventRejected),
            pb.EventRejected(metadata=metadata, event=message, rule_hits=[hit_to_proto(h) for h in j.hits]),
            event_id=metadata.event_id,
        )
        critical = [h for h in j.hits if h.severity is Severity.CRITICAL]
        await alerts.raise_alert(
            session,
            settings,
            kind="RULE_HIT",
            severity=Severity.CRITICAL.value,
            message=f"refused event {j.event_id} ({j.event.biz_step.value}) by {j.event.reporter_id}: "
            + "; ".join(f"{h.rule_id}: {h.message}" for h in critical[:5]),
            now=now,
            facility_id=j.event.facility_id,
            county_code=j.county_code,
            battery_keys=sorted({h.battery.urn for h in critical if h.battery is not None}),
            rule_id=critical[0].rule_id,
        )


# ---- recomputing states -------------------------------------------------------------------------


def facts_from_replay(result: Replay, battery: BatteryId) -> store.BatteryFacts:
    facts = store.BatteryFacts()
    for step in result.trail_of(battery):
        if not step.applied:
            continue
        event = step.event
        if step.after.holder_facility_id and step.after.holder_facility_id != step.before.holder_facility_id:
            facts.held_since = event.event_time
        elif not step.after.holder_facility_id:
            facts.held_since = None
        if event.biz_step is BizStep.COLLECTING and facts.collected_at is None:
            facts.collected_at = event.event_time
            facts.collected_county = step.county_code
            facts.collected_mode = event.collection_mode.value if event.collection_mode else ""
    return facts


async def recompute(
    session: AsyncSession, keys: Sequence[str], directory: Directory, config: RuleConfig
) -> dict[str, BatteryState]:
    """Rebuild these batteries' states from their whole effective history (after a late event, an error
    declaration or a release): history is never rewritten, the projection is."""
    if not keys:
        return {}
    history = await store.battery_history(session, keys)
    result = replay(
        history.events,
        directory,
        judge=sparing_imported(make_judge(config, recorded_hits=history.recorded_hits), history.imported_hits),
        releases=history.releases,
    )
    values = []
    states: dict[str, BatteryState] = {}
    for key in keys:
        battery = parse_urn(key)
        state = result.state(battery)
        states[key] = state
        shipment = state.open_shipment
        seq = history.seq_of.get(shipment.event_id) if shipment is not None else None
        values.append(store.battery_values(state, facts_from_replay(result, battery), seq))
    await store.upsert_batteries(session, values)
    return states
