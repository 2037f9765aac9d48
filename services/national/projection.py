"""The national view's tables, kept from the hub's flows stream (``GREENMESH_NATIONAL_FLOWS``): the same schema as a
province's flows database (migrations of services/flows), so that the dispatch statistics read them with the same
queries (services.flows.statistics), but filled from events instead of reports.

- ``FlowEventRecorded`` → a ``flow_event`` row (with the province's facility type, lateness, pieces, kilograms and
  whether it happened at a listed recycler, as the province's capture judged them), its ``event_battery`` links,
  and the ``battery`` rows' figures (services.national.figures). ``origin_province`` is the reporting province.
- ``ErrorDeclared`` → the ``error_declaration`` row; the event is marked declared and its batteries' figures are
  computed again without it. A declaration that arrives before its event (never within one province's stream,
  which keeps order) is kept and applied when the event arrives.
- ``AlertRaised`` / ``AlertStatusChanged`` → the ``alert`` row, so open alerts count as in the province.

Each effect runs in the inbox transaction of its message (meshkit.inbox) and never commits. A province's cross-
province shipment reaches the hub once (the destination province stores its copy but does not publish it); an
event id seen twice is applied once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import select as core_select
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from services.flows import store
from services.flows.domain.identity import parse_urn
from services.flows.mapping import battery_ref_from_proto, stored_event_from_proto
from services.flows.tables import AlertRow, ErrorDeclarationRow, EventBatteryRow, FlowEventRow
from services.national.figures import BatteryFigures, EventFacts, battery_figures

log = logging.getLogger(__name__)


def _name(enum: Any, number: int, prefix: str) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN_{number}"


def _time(stamp: Any) -> dt.datetime | None:
    return stamp.ToDatetime(tzinfo=dt.UTC) if stamp.seconds or stamp.nanos else None


# ---- events ------------------------------------------------------------------------------------------------------


async def record_event(session: AsyncSession, recorded: pb.FlowEventRecorded, province: str) -> bool:
    """Store a province's event and update its batteries' figures; False when the event id is already here."""
    return await record_events(session, [(recorded, province)]) == 1


async def record_events(session: AsyncSession, items: Sequence[tuple[pb.FlowEventRecorded, str]]) -> int:
    """Store provinces' events (each with the province that reported it) with their battery links, and update
    their batteries' figures, with a few statements for the lot; returns how many were new (an event id already
    here, or repeated in ``items``, is applied once)."""
    fresh: dict[str, tuple[pb.FlowEventRecorded, str]] = {}
    for recorded, province in items:
        if recorded.event.event_id:
            fresh.setdefault(recorded.event.event_id, (recorded, province))
    if not fresh:
        return 0
    for known in await store.existing_hashes(session, list(fresh)):
        del fresh[known]
    if not fresh:
        return 0
    declared: set[str] = set()
    for part in store.chunks(sorted(fresh)):
        found = await session.exec(
            select(ErrorDeclarationRow.event_id).where(col(ErrorDeclarationRow.event_id).in_(part))
        )
        declared.update(found.all())
    rows, keys_of = [], []
    for event_id, (recorded, province) in fresh.items():
        message = recorded.event
        event = stored_event_from_proto(message)
        keys_of.append(store.battery_keys_of(event))
        rows.append(
            {
                "event_id": event_id,
                "event_hash": message.event_hash,
                "biz_step": event.biz_step.value,
                "event_time": event.event_time,
                "record_time": _time(message.record_time) or event.event_time,
                "reporter_id": message.reporter_id,
                "facility_id": event.facility_id,
                "facility_type": recorded.facility_type,
                "county_code": message.county_code,
                "source_facility_id": event.source_facility_id,
                "destination_facility_id": event.destination_facility_id,
                "collection_mode": event.collection_mode.value if event.collection_mode else "",
                "outcome": _name(pb.EventOutcome, recorded.outcome, "EVENT_OUTCOME_"),
                "battery_count": recorded.battery_count,
                "mass_kg": recorded.mass_kg,
                "late": recorded.late,
                "declared": event_id in declared,
                "hits_json": json.dumps([rule.rule_id for rule in recorded.rule_hits], separators=(",", ":")),
                "payload": message.SerializeToString(deterministic=True),
                "origin_province": province,
                "at_listed_recycler": recorded.at_listed_recycler,
            }
        )
    seqs = await store.insert_events(session, rows)
    pairs = [(key, seq) for seq, keys in zip(seqs, keys_of, strict=True) for key in keys]
    await store.insert_rows(session, EventBatteryRow, [{"battery_key": key, "event_seq": seq} for key, seq in pairs])
    await refresh_batteries(session, sorted({key for key, _ in pairs}))
    return len(rows)


async def declare_error(session: AsyncSession, declared: pb.ErrorDeclared) -> bool:
    """Mark the event declared in error and compute its batteries' figures again; False if already declared."""
    if not declared.event_id or await session.get(ErrorDeclarationRow, declared.event_id) is not None:
        return False
    declaration = declared.declaration
    session.add(
        ErrorDeclarationRow(
            event_id=declared.event_id,
            reason=_name(pb.ErrorReason, declaration.reason, "ERROR_REASON_"),
            corrective_event_ids=",".join(declaration.corrective_event_ids),
            explanation=declaration.explanation,
            declared_by=declaration.declared_by,
            declaration_time=_time(declaration.declaration_time) or dt.datetime.now(dt.UTC),
        )
    )
    row = await store.event_row(session, declared.event_id)
    if row is None:  # the event has not arrived: record_event sees the declaration
        return True
    await session.exec(update(FlowEventRow).where(col(FlowEventRow.seq) == row.seq).values(declared=True))
    keys = (
        await session.exec(select(EventBatteryRow.battery_key).where(col(EventBatteryRow.event_seq) == row.seq))
    ).all()
    await refresh_batteries(session, list(keys))
    return True


async def refresh_batteries(session: AsyncSession, keys: Collection[str]) -> None:
    """Compute the batteries' figures from their effective events and write their rows."""
    if not keys:
        return
    event = FlowEventRow
    facts: list[EventFacts] = []
    for part in store.chunks(sorted(keys)):
        query = (
            core_select(
                col(EventBatteryRow.battery_key),
                col(event.biz_step),
                col(event.event_time),
                col(event.county_code),
                col(event.collection_mode),
                col(event.at_listed_recycler),
            )
            .join(event, col(event.seq) == col(EventBatteryRow.event_seq))
            .where(col(EventBatteryRow.battery_key).in_(part), col(event.declared) == False)  # noqa: E712
        )
        facts += [
            EventFacts(key, step, store.to_utc(time), county, mode, bool(listed))
            for key, step, time, county, mode, listed in (await store.execute(session, query)).all()
        ]
    figures = battery_figures(facts)
    await store.upsert_batteries(session, [battery_values(key, figures.get(key, BatteryFigures())) for key in keys])


def battery_values(key: str, figures: BatteryFigures) -> dict[str, Any]:
    """A ``battery`` row of the national view: identity and figures; the custody state is the provinces' to keep."""
    battery = parse_urn(key)
    return {
        "battery_key": key,
        "scheme": battery.scheme.value,
        "namespace": battery.namespace,
        "value": battery.value,
        "state": "",
        "phase": "",
        "holder_id": "",
        "holder_facility_id": "",
        "waste": False,
        "model_id": "",
        "producer_id": "",
        "held_since": None,
        "open_shipment_seq": None,
        "state_json": "{}",
        "reached_recycler": figures.reached_recycler,
        "last_event_time": figures.last_event_time,
        "collected_at": figures.collected_at,
        "collected_county": figures.collected_county,
        "collected_mode": figures.collected_mode,
    }


# ---- alerts ------------------------------------------------------------------------------------------------------


def alert_values(alert: pb.Alert) -> dict[str, Any]:
    keys = []
    for ref in alert.batteries:
        battery, problems = battery_ref_from_proto(ref, "battery")
        if battery is not None and not problems:
            keys.append(battery.urn)
    return {
        "alert_id": alert.alert_id,
        "kind": _name(pb.AlertKind, alert.kind, "ALERT_KIND_"),
        "severity": _name(pb.Severity, alert.severity, "SEVERITY_"),
        "status": _name(pb.AlertStatus, alert.status, "ALERT_STATUS_"),
        "facility_id": alert.facility_id,
        "county_code": alert.county_code,
        "battery_keys": json.dumps(keys, separators=(",", ":")),
        "rule_id": alert.rule_id,
        "message": alert.message,
        "raised_at": _time(alert.raised_at) or dt.datetime.now(dt.UTC),
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": _time(alert.acknowledged_at),
        "note": alert.note,
        "resolved_at": _time(alert.resolved_at),
        "open_key": None,  # conditions are the provinces' to track
    }


async def record_alert(session: AsyncSession, alert: pb.Alert, *, raised: bool) -> None:
    """An alert raised, or its new status (acknowledged, resolved). A raise never undoes a later status that
    arrived first; a status always wins."""
    if not alert.alert_id:
        return
    values = alert_values(alert)
    row = await session.get(AlertRow, alert.alert_id)
    if row is None:
        session.add(AlertRow(**values))
    elif not raised:
        for name, value in values.items():
            setattr(row, name, value)
        session.add(row)
