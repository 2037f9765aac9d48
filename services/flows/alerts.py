"""Alerts: raising (with an AlertRaised event through the outbox), resolving, listing and acknowledging.

An alert raised with an ``open_key`` (``OVERDUE_STORAGE:<facility id>``, ``POSSIBLE_DIVERSION:<event id>``, …)
stands for a condition: while it is OPEN or ACKNOWLEDGED the key is set and unique, so the condition keeps at
most one open alert; raising it again only refreshes that alert (message, batteries, severity) and publishes
nothing. Resolving clears the key, so the same condition coming back later raises a new alert. An alert raised
without a key (a one-off rule hit) is never deduplicated and never resolved automatically.

Everything here works inside the caller's transaction and never commits: the alert row and its AlertRaised
outbox row are committed, or rolled back, together with whatever the caller changed.

Acknowledging (a regulator or platform operator, within its region):

- the first acknowledgement records who and when (``acknowledged_by``, ``acknowledged_at``) and moves the alert
  to ACKNOWLEDGED; its open key stays, so the condition still cannot raise a second alert, and the monitors
  still resolve it when the condition clears;
- acknowledging again (by anyone) keeps the first acknowledger and time, and replaces the note when the new
  note is not empty (a follow-up remark), so a retried request is harmless;
- a RESOLVED alert cannot be acknowledged (FAILED_PRECONDITION, reason ``ALERT_RESOLVED``);
- an unknown alert and one outside the caller's region are both NOT_FOUND, so a region's alerts do not leak.

Times are stored in UTC (a naive datetime is taken as UTC), so SQLite's text timestamps compare correctly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import and_, or_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.config import Component, MeshSettings
from meshkit.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from meshkit.ids import new_id
from meshkit.outbox import append_event
from meshkit.paging import decode_token, encode_token, page_size
from meshkit.subjects import event_subject
from services.flows.domain.identity import parse_urn
from services.flows.mapping import battery_ref_to_proto
from services.flows.tables import AlertRow

log = logging.getLogger(__name__)

KINDS: Final = ("OVERDUE_STORAGE", "POSSIBLE_DIVERSION", "OVERSTOCK", "MASS_BALANCE", "RULE_HIT")
SEVERITIES: Final = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
OPEN: Final = "OPEN"
ACKNOWLEDGED: Final = "ACKNOWLEDGED"
RESOLVED: Final = "RESOLVED"
STATUSES: Final = (OPEN, ACKNOWLEDGED, RESOLVED)

MAX_ALERT_BATTERIES: Final = 100
"""Battery keys kept on one alert; the message carries the full count."""
MAX_NOTE_LENGTH: Final = 500
_RESOLVE_CHUNK: Final = 500  # keys per UPDATE … IN (…), well below every driver's parameter limit


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime (a naive one, as SQLite gives back, is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _keys_json(battery_keys: Sequence[str]) -> str:
    unique = list(dict.fromkeys(battery_keys))[:MAX_ALERT_BATTERIES]
    return json.dumps(unique, separators=(",", ":"))


def refresh_alert(row: AlertRow, *, message: str, severity: str, battery_keys: Sequence[str] | None) -> bool:
    """Bring an open alert up to date with its condition (``None`` keys: leave them); True if anything changed.

    The severity follows the condition as it is now (an overdue alert becomes HIGH past twice the limit, and
    MEDIUM again once the oldest batteries have left)."""
    changed = False
    if row.message != message:
        row.message = message
        changed = True
    if row.severity != severity:
        row.severity = severity
        changed = True
    if battery_keys is not None:
        stored = _keys_json(battery_keys)
        if row.battery_keys != stored:
            row.battery_keys = stored
            changed = True
    return changed


def _metadata(settings: MeshSettings, now: datetime, kind: Any = pb.AlertRaised) -> event_pb2.EventMetadata:
    occurred = Timestamp()
    occurred.FromDatetime(now)
    return event_pb2.EventMetadata(
        event_id=new_id(),
        event_type=kind.DESCRIPTOR.full_name,
        province_code=settings.province,
        occurred_at=occurred,
        source_component=Component.FLOWS.value,
    )


async def _insert_unless_open(session: AsyncSession, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT (open_key) DO NOTHING: True when inserted. A concurrent transaction that raised the
    same condition first (another replica's monitors) makes ours a no-op instead of a unique violation."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql_insert(AlertRow).values(**values)
    elif dialect == "sqlite":
        statement = sqlite_insert(AlertRow).values(**values)
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    statement = statement.on_conflict_do_nothing(index_elements=["open_key"]).returning(col(AlertRow.alert_id))
    result = await session.exec(statement)
    return result.first() is not None


async def _open_alert(session: AsyncSession, open_key: str) -> AlertRow | None:
    rows = await session.exec(select(AlertRow).where(col(AlertRow.open_key) == open_key))
    return rows.first()


async def raise_alert(
    session: AsyncSession,
    settings: MeshSettings,
    *,
    kind: str,
    severity: str,
    message: str,
    now: datetime,
    facility_id: str = "",
    county_code: str = "",
    battery_keys: Sequence[str] = (),
    rule_id: str = "",
    open_key: str | None = None,
) -> AlertRow | None:
    """Add an OPEN alert and stage its AlertRaised event in the caller's transaction; returns the new row.

    With an ``open_key`` that is already open, no alert is added and nothing is published: the open alert's
    message, severity and batteries are refreshed and None is returned. Battery keys (URNs) are kept
    de-duplicated, in order, at most :data:`MAX_ALERT_BATTERIES`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind!r}; expected one of {', '.join(KINDS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}")
    now = utc(now)
    if open_key is not None:
        existing = await _open_alert(session, open_key)
        if existing is not None:
            refresh_alert(existing, message=message, severity=severity, battery_keys=battery_keys)
            return None
    values: dict[str, Any] = {
        "alert_id": new_id(),
        "kind": kind,
        "severity": severity,
        "status": OPEN,
        "facility_id": facility_id,
        "county_code": county_code,
        "battery_keys": _keys_json(battery_keys),
        "rule_id": rule_id,
        "message": message,
        "raised_at": now,
        "acknowledged_by": "",
        "acknowledged_at": None,
        "note": "",
        "resolved_at": None,
        "open_key": open_key,
    }
    if open_key is None:
        row = AlertRow(**values)
        session.add(row)
    else:
        if not await _insert_unless_open(session, values):
            # Another transaction raised the same condition between our look-up and our insert.
            existing = await _open_alert(session, open_key)
            if existing is not None:
                refresh_alert(existing, message=message, severity=severity, battery_keys=battery_keys)
            return None
        inserted = await session.get(AlertRow, values["alert_id"])
        assert inserted is not None
        row = inserted
    metadata = _metadata(settings, now)
    subject = event_subject(settings.province, Component.FLOWS, pb.AlertRaised)
    append_event(
        session, subject, pb.AlertRaised(metadata=metadata, alert=alert_to_proto(row)), event_id=metadata.event_id
    )
    return row


def stage_status_change(session: AsyncSession, settings: MeshSettings, row: AlertRow, now: datetime) -> None:
    """Stage the alert's ``AlertStatusChanged`` event in the caller's transaction (acknowledged or resolved), so
    that whoever counts open alerts from the stream (the national view) sees them close."""
    metadata = _metadata(settings, utc(now), pb.AlertStatusChanged)
    subject = event_subject(settings.province, Component.FLOWS, pb.AlertStatusChanged)
    change = pb.AlertStatusChanged(metadata=metadata, alert=alert_to_proto(row))
    append_event(session, subject, change, event_id=metadata.event_id)


async def resolve_alerts(session: AsyncSession, settings: MeshSettings, open_keys: Iterable[str], now: datetime) -> int:
    """Resolve the open alerts of these conditions (unknown or already resolved keys are ignored): status
    RESOLVED, ``resolved_at`` = now, open key cleared, an ``AlertStatusChanged`` staged for each. Returns how
    many were resolved."""
    keys = sorted(set(open_keys))
    now = utc(now)
    resolved = 0
    for start in range(0, len(keys), _RESOLVE_CHUNK):
        chunk = keys[start : start + _RESOLVE_CHUNK]
        rows = (await session.exec(select(AlertRow).where(col(AlertRow.open_key).in_(chunk)))).all()
        for row in rows:
            row.status, row.resolved_at, row.open_key = RESOLVED, now, None
            session.add(row)
            stage_status_change(session, settings, row, now)
        resolved += len(rows)
    return resolved


# ---- to the wire ----------------------------------------------------------------------------------


def _enum(wrapper: Any, prefix: str, name: str) -> int:
    try:
        return int(wrapper.Value(prefix + name))
    except ValueError:
        return 0


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(utc(moment))
    return stamp


def alert_to_proto(row: AlertRow) -> pb.Alert:
    """The wire form; battery keys that are not GreenMesh battery URNs are left out (logged)."""
    refs: list[pb.BatteryRef] = []
    for key in json.loads(row.battery_keys or "[]"):
        try:
            refs.append(battery_ref_to_proto(parse_urn(key)))
        except ValueError:
            log.warning("alert %s: battery key %r is not a battery URN; left out", row.alert_id, key)
    return pb.Alert(
        alert_id=row.alert_id,
        kind=_enum(pb.AlertKind, "ALERT_KIND_", row.kind),  # type: ignore[arg-type]
        severity=_enum(pb.Severity, "SEVERITY_", row.severity),  # type: ignore[arg-type]
        status=_enum(pb.AlertStatus, "ALERT_STATUS_", row.status),  # type: ignore[arg-type]
        facility_id=row.facility_id,
        county_code=row.county_code,
        batteries=refs,
        rule_id=row.rule_id,
        message=row.message,
        raised_at=_timestamp(row.raised_at),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=_timestamp(row.acknowledged_at),
        note=row.note,
        resolved_at=_timestamp(row.resolved_at),
    )


# ---- queries --------------------------------------------------------------------------------------


def _region_matches_nothing(region_prefix: str) -> bool:
    # Caller.region_prefix() gives "\0" for a regulator without a valid region: it must match nothing
    # (and a NUL may not even reach PostgreSQL).
    return bool(region_prefix) and not region_prefix.isdigit()


def _enum_filter(wrapper: Any, prefix: str, number: int, field: str) -> str:
    """The stored name for a filter enum ("" for UNSPECIFIED = any), or INVALID_ARGUMENT for unknown numbers."""
    if number == 0:
        return ""
    try:
        return str(wrapper.Name(number)).removeprefix(prefix)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, f"unknown value {number}")]) from None


def _page_key(row: AlertRow) -> str:
    return f"{utc(row.raised_at).isoformat()}|{row.alert_id}"


def _parse_page_key(key: str) -> tuple[datetime, str]:
    moment, sep, alert_id = key.partition("|")
    try:
        if not sep or not alert_id:
            raise ValueError("no alert id")
        return utc(datetime.fromisoformat(moment)), alert_id
    except ValueError:
        raise InvalidArgument([FieldViolation("page_token", "not a token this service issued")]) from None


async def list_alerts(
    session: AsyncSession, request: pb.ListAlertsRequest, *, region_prefix: str
) -> pb.ListAlertsResponse:
    """Alerts newest first (``raised_at``, then id), filtered by kind, status, facility and division prefix
    (2, 4 or 6 digits), and always restricted to the caller's region (``region_prefix``, "" = the whole
    country; an alert without a county is only visible nationally). Page tokens are bound to the filters and
    the region."""
    limit = page_size(request.page_size)
    kind = _enum_filter(pb.AlertKind, "ALERT_KIND_", request.kind, "kind")
    status = _enum_filter(pb.AlertStatus, "ALERT_STATUS_", request.status, "status")
    prefix = request.division_prefix.strip()
    if prefix and (not prefix.isdigit() or len(prefix) not in (2, 4, 6)):
        raise InvalidArgument([FieldViolation("division_prefix", "2, 4 or 6 digits (province, city or county)")])
    facility_id = request.facility_id.strip()
    filters = {"kind": kind, "status": status, "prefix": prefix, "facility": facility_id, "region": region_prefix}
    after = decode_token(request.page_token, filters)
    if _region_matches_nothing(region_prefix):
        return pb.ListAlertsResponse()
    query = select(AlertRow)
    if kind:
        query = query.where(col(AlertRow.kind) == kind)
    if status:
        query = query.where(col(AlertRow.status) == status)
    if facility_id:
        query = query.where(col(AlertRow.facility_id) == facility_id)
    for division in (prefix, region_prefix):
        if division:
            query = query.where(col(AlertRow.county_code).startswith(division))
    if after is not None:
        moment, alert_id = _parse_page_key(after)
        query = query.where(
            or_(
                col(AlertRow.raised_at) < moment,
                and_(col(AlertRow.raised_at) == moment, col(AlertRow.alert_id) < alert_id),
            )
        )
    query = query.order_by(col(AlertRow.raised_at).desc(), col(AlertRow.alert_id).desc()).limit(limit + 1)
    rows = list((await session.exec(query)).all())
    token = encode_token(_page_key(rows[limit - 1]), filters) if len(rows) > limit else ""
    return pb.ListAlertsResponse(alerts=[alert_to_proto(r) for r in rows[:limit]], next_page_token=token)


async def acknowledge_alert(
    session: AsyncSession,
    settings: MeshSettings,
    alert_id: str,
    *,
    by: str,
    note: str,
    now: datetime,
    region_prefix: str,
) -> AlertRow:
    """Acknowledge an open alert in the caller's transaction (see the module docstring for a repeat), staging
    its ``AlertStatusChanged`` when the status or the note changed."""
    violations: list[FieldViolation] = []
    if not alert_id:
        violations.append(FieldViolation("alert_id", "required"))
    if len(note) > MAX_NOTE_LENGTH:
        violations.append(FieldViolation("note", f"at most {MAX_NOTE_LENGTH} characters, got {len(note)}"))
    if violations:
        raise InvalidArgument(violations)
    if _region_matches_nothing(region_prefix):
        raise NotFound("alert", alert_id)
    query = select(AlertRow).where(col(AlertRow.alert_id) == alert_id).with_for_update()
    row = (await session.exec(query)).first()
    if row is None or not row.county_code.startswith(region_prefix):
        raise NotFound("alert", alert_id)
    if row.status == RESOLVED:
        raise FailedPrecondition(
            f"alert {alert_id} is already resolved", reason="ALERT_RESOLVED", metadata={"alert_id": alert_id}
        )
    changed = False
    if row.status != ACKNOWLEDGED:
        row.status = ACKNOWLEDGED
        row.acknowledged_by = by
        row.acknowledged_at = utc(now)
        changed = True
    if note and note != row.note:
        row.note = note
        changed = True
    if changed:
        stage_status_change(session, settings, row, now)
    return row
