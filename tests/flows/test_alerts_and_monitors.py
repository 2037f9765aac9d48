"""Alerts (raise, resolve, list, acknowledge) and the alert monitors, on SQLite and on a real PostgreSQL.

The projections are filled by inserting rows directly: these tests exercise the monitors, not the capture.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.config import Component, MeshSettings
from meshkit.db import Database
from meshkit.errors import FailedPrecondition, InvalidArgument, NotFound
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from meshkit.server import ServiceDefinition, ServiceRuntime
from meshkit.tables import OutboxEvent
from services.flows.alerts import (
    MAX_ALERT_BATTERIES,
    acknowledge_alert,
    alert_to_proto,
    list_alerts,
    raise_alert,
    resolve_alerts,
)
from services.flows.domain.directory import FacilityInfo
from services.flows.domain.identity import BatteryId, IdentifierScheme
from services.flows.monitors import (
    MONITOR_LOCK_KEY,
    MonitorConfig,
    MonitorReport,
    monitor_loop,
    monitor_pass,
    run_monitors_once,
)
from services.flows.tables import AlertRow, BatteryRow, EventBatteryRow, FacilityLedgerRow, ShipmentRow
from tests.conftest import eventually

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "flows" / "migrations" / "versions"
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PRODUCER = "91320102MA1W2X3Y4K"
CONFIG = MonitorConfig()
ALERT_SUBJECT = "greenmesh.32.flows.v1.alert_raised"
STATUS_SUBJECT = "greenmesh.32.flows.v1.alert_status_changed"


# ---- fixtures and helpers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_stock_kg: float = 0.0
    max_stock_units: int = 0
    max_dwell_days: int = 0


class Sites:
    """A FacilityLimits: facilities with their counties and (optional) storage limits."""

    def __init__(self) -> None:
        self.infos: dict[str, FacilityInfo] = {}
        self.caps: dict[str, Limits] = {}

    def add(self, facility_id: str, county: str = "320102", limits: Limits | None = None) -> Sites:
        self.infos[facility_id] = FacilityInfo(facility_id, "TEMP_STORAGE_POINT", "LISTED", "op-1", county)
        self.caps.pop(facility_id, None)
        if limits is not None:
            self.caps[facility_id] = limits
        return self

    def forget(self, facility_id: str) -> None:
        self.infos.pop(facility_id, None)
        self.caps.pop(facility_id, None)

    def facility(self, facility_id: str) -> FacilityInfo | None:
        return self.infos.get(facility_id)

    def limits(self, facility_id: str) -> Limits | None:
        return self.caps.get(facility_id)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate(db, MIGRATIONS)
    yield db
    await db.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> MeshSettings:
    options: dict[str, Any] = {"data_dir": tmp_path / "data"}  # through a dict, as mypy sees no defaults
    return MeshSettings(**options)


def urn(n: int) -> str:
    return BatteryId(IdentifierScheme.MANUFACTURER_SERIAL, PRODUCER, f"SN{n:05d}").urn


def battery(n: int, facility_id: str, phase: str, held_days: float) -> BatteryRow:
    return BatteryRow(
        battery_key=urn(n),
        scheme="MANUFACTURER_SERIAL",
        namespace=PRODUCER,
        value=f"SN{n:05d}",
        state=phase,
        phase=phase,
        holder_id="op-1",
        holder_facility_id=facility_id,
        waste=True,
        held_since=NOW - timedelta(days=held_days),
    )


def shipment(
    seq: int, source: str, destination: str, shipped_days_ago: float, *, received: bool = False
) -> ShipmentRow:
    shipped = NOW - timedelta(days=shipped_days_ago)
    return ShipmentRow(
        event_seq=seq,
        event_id=f"00000000-0000-4000-8000-{seq:012d}",
        source_facility_id=source,
        destination_facility_id=destination,
        reporter_id="op-1",
        county_code="320205",
        shipped_at=shipped,
        battery_count=2,
        mass_kg=24.5,
        received_seq=seq + 1000 if received else None,
        received_at=shipped + timedelta(days=1) if received else None,
    )


def ledger(facility_id: str, county: str = "", **figures: Any) -> FacilityLedgerRow:
    return FacilityLedgerRow(facility_id=facility_id, county_code=county, **figures)


async def insert(database: Database, rows: Sequence[Any]) -> None:
    async with database.transaction() as session:
        session.add_all(rows)


async def run(
    database: Database, settings: MeshSettings, sites: Sites, now: datetime = NOW, config: MonitorConfig = CONFIG
) -> MonitorReport:
    async with database.transaction() as session:
        return await run_monitors_once(session, settings, sites, now, config)


async def alerts_in(database: Database, kind: str | None = None) -> list[AlertRow]:
    async with database.session() as session:
        query = select(AlertRow).order_by(col(AlertRow.raised_at), col(AlertRow.alert_id))
        if kind is not None:
            query = query.where(col(AlertRow.kind) == kind)
        return list((await session.exec(query)).all())


async def outbox(database: Database) -> list[OutboxEvent]:
    async with database.session() as session:
        return list((await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all())


async def raised_events(database: Database) -> list[pb.AlertRaised]:
    rows = await outbox(database)
    assert all(r.event_type == "greenmesh.flows.v1.AlertRaised" and r.subject == ALERT_SUBJECT for r in rows)
    return [pb.AlertRaised.FromString(r.payload) for r in rows]


def aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def add_alert(session: AsyncSession, settings: MeshSettings, *, at: datetime = NOW, **fields: Any) -> AlertRow:
    values: dict[str, Any] = {"kind": "RULE_HIT", "severity": "HIGH", "message": "m", **fields}
    row = await raise_alert(session, settings, now=at, **values)
    assert row is not None
    return row


# ---- raise_alert, resolve_alerts, alert_to_proto --------------------------------------------------


async def test_raise_alert_adds_the_row_and_its_alert_raised_event(database: Database, settings: MeshSettings) -> None:
    keys = [urn(0), *(urn(i) for i in range(150))]  # a repeat, and over the cap
    async with database.transaction() as session:
        row = await raise_alert(
            session,
            settings,
            kind="RULE_HIT",
            severity="CRITICAL",
            message="FLOW-003: a waste battery went back to the market",
            now=NOW,
            facility_id="F-DEALER",
            county_code="320102",
            battery_keys=keys,
            rule_id="FLOW-003-WASTE-TO-MARKET",
        )
        assert row is not None
    [stored] = await alerts_in(database)
    assert (stored.kind, stored.severity, stored.status, stored.open_key) == ("RULE_HIT", "CRITICAL", "OPEN", None)
    assert json.loads(stored.battery_keys) == [urn(i) for i in range(MAX_ALERT_BATTERIES)]
    assert len(stored.alert_id) == 36 and stored.alert_id[14] == "7"  # a UUIDv7
    [event] = await raised_events(database)
    assert event.alert == alert_to_proto(stored)
    assert event.alert.kind == pb.ALERT_KIND_RULE_HIT and event.alert.severity == pb.SEVERITY_CRITICAL
    assert event.metadata.event_type == "greenmesh.flows.v1.AlertRaised"
    assert (event.metadata.province_code, event.metadata.source_component) == ("32", "flows")
    assert event.metadata.occurred_at.ToDatetime(tzinfo=UTC) == NOW
    assert (await outbox(database))[0].event_id == event.metadata.event_id
    # Without an open key nothing is deduplicated: the same hit again is a second alert.
    async with database.transaction() as session:
        assert await raise_alert(session, settings, kind="RULE_HIT", severity="HIGH", message="again", now=NOW)
    assert len(await alerts_in(database)) == 2


async def test_an_open_key_keeps_one_alert_and_refreshes_it(database: Database, settings: MeshSettings) -> None:
    async with database.transaction() as session:
        first = await add_alert(session, settings, kind="OVERSTOCK", severity="MEDIUM", open_key="OVERSTOCK:F1")
        again = await raise_alert(
            session,
            settings,
            kind="OVERSTOCK",
            severity="HIGH",
            message="now worse",
            now=NOW + timedelta(hours=1),
            battery_keys=[urn(1)],
            open_key="OVERSTOCK:F1",
        )
        assert again is None
    [row] = await alerts_in(database)
    assert row.alert_id == first.alert_id
    assert (row.message, row.severity, json.loads(row.battery_keys)) == ("now worse", "HIGH", [urn(1)])
    assert aware(row.raised_at) == NOW
    assert len(await outbox(database)) == 1
    # Resolved, the key is free again: the same condition later is a new alert.
    async with database.transaction() as session:
        assert (
            await resolve_alerts(session, settings, ["OVERSTOCK:F1", "OVERSTOCK:unknown"], NOW + timedelta(days=1)) == 1
        )
        assert await resolve_alerts(session, settings, ["OVERSTOCK:F1"], NOW + timedelta(days=1)) == 0
    [row] = await alerts_in(database)
    assert (row.status, row.open_key, aware(row.resolved_at)) == ("RESOLVED", None, NOW + timedelta(days=1))
    # The resolution is published once (the second call resolved nothing), with the alert as it is now.
    [_raised, changed] = await outbox(database)
    assert changed.event_type == "greenmesh.flows.v1.AlertStatusChanged" and changed.subject == STATUS_SUBJECT
    resolution = pb.AlertStatusChanged.FromString(changed.payload).alert
    assert (resolution.alert_id, resolution.status) == (row.alert_id, pb.ALERT_STATUS_RESOLVED)
    assert resolution.resolved_at.ToDatetime(tzinfo=UTC) == NOW + timedelta(days=1)
    async with database.transaction() as session:
        assert await raise_alert(
            session, settings, kind="OVERSTOCK", severity="MEDIUM", message="back", now=NOW, open_key="OVERSTOCK:F1"
        )
    assert len(await alerts_in(database)) == 2 and len(await outbox(database)) == 3


async def test_raise_alert_rolls_back_with_the_callers_transaction(database: Database, settings: MeshSettings) -> None:
    with pytest.raises(RuntimeError):
        async with database.transaction() as session:
            await add_alert(session, settings, open_key="RULE_HIT:x")
            await add_alert(session, settings)
            raise RuntimeError("the capture failed")
    assert await alerts_in(database) == [] and await outbox(database) == []


async def test_raise_alert_refuses_unknown_kinds_and_severities(database: Database, settings: MeshSettings) -> None:
    async with database.transaction() as session:
        with pytest.raises(ValueError, match="kind"):
            await raise_alert(session, settings, kind="ALERT_KIND_OVERSTOCK", severity="LOW", message="m", now=NOW)
        with pytest.raises(ValueError, match="severity"):
            await raise_alert(session, settings, kind="OVERSTOCK", severity="SEVERE", message="m", now=NOW)


async def test_resolve_alerts_handles_more_keys_than_one_statement_takes(
    database: Database, settings: MeshSettings
) -> None:
    async with database.transaction() as session:
        for i in range(3):
            await add_alert(session, settings, kind="OVERSTOCK", open_key=f"OVERSTOCK:F{i}")
    # More than the 32,767 parameters PostgreSQL (and SQLite 3.32+) take in one statement.
    keys = [f"OVERSTOCK:none{i}" for i in range(40_000)] + ["OVERSTOCK:F0", "OVERSTOCK:F2"]
    async with database.transaction() as session:
        assert await resolve_alerts(session, settings, keys, NOW) == 2
    assert [a.status for a in await alerts_in(database)].count("RESOLVED") == 2


async def test_a_concurrent_raise_of_the_same_condition_is_not_an_error(
    database: Database, settings: MeshSettings
) -> None:
    """Two replicas' passes raising the same condition at once: the second insert waits for the first
    transaction and then does nothing (ON CONFLICT), refreshing the winner's alert instead of failing."""
    if not database.is_postgres:
        pytest.skip("SQLite has a single writer; concurrent transactions are a PostgreSQL matter")
    async with database.transaction() as first:
        await add_alert(first, settings, kind="OVERSTOCK", severity="MEDIUM", message="first", open_key="OVERSTOCK:F")

        async def second_replica() -> AlertRow | None:
            async with database.transaction() as second:
                return await raise_alert(
                    second,
                    settings,
                    kind="OVERSTOCK",
                    severity="MEDIUM",
                    message="second",
                    now=NOW,
                    open_key="OVERSTOCK:F",
                )

        racing = asyncio.create_task(second_replica())
        await asyncio.sleep(0.3)
        assert not racing.done()  # blocked on the first transaction's uncommitted key
    assert await asyncio.wait_for(racing, 5) is None
    [row] = await alerts_in(database)
    assert row.message == "second" and len(await outbox(database)) == 1


async def test_alert_to_proto(database: Database, settings: MeshSettings) -> None:
    async with database.transaction() as session:
        row = await add_alert(
            session,
            settings,
            kind="POSSIBLE_DIVERSION",
            severity="HIGH",
            facility_id="F1",
            county_code="320205",
            battery_keys=[urn(7), "not-a-urn", BatteryId(IdentifierScheme.GBT34014, "", "ABC").urn],
            rule_id="",
        )
        row.status, row.acknowledged_by, row.acknowledged_at, row.note = "ACKNOWLEDGED", "reg-1", NOW, "on it"
    [stored] = await alerts_in(database)
    message = alert_to_proto(stored)
    assert message.kind == pb.ALERT_KIND_POSSIBLE_DIVERSION
    assert (message.severity, message.status) == (pb.SEVERITY_HIGH, pb.ALERT_STATUS_ACKNOWLEDGED)
    assert list(message.batteries) == [
        pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=PRODUCER, value="SN00007"),
        pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_GBT34014, value="ABC"),
    ]
    assert (message.facility_id, message.county_code, message.message) == ("F1", "320205", "m")
    assert message.raised_at.ToDatetime(tzinfo=UTC) == NOW
    assert message.acknowledged_at.ToDatetime(tzinfo=UTC) == NOW
    assert (message.acknowledged_by, message.note) == ("reg-1", "on it")
    assert not pb.Alert(alert_id="x").HasField("acknowledged_at")
    assert not alert_to_proto(AlertRow(**{**stored.model_dump(), "acknowledged_at": None})).HasField("acknowledged_at")


# ---- the monitors ---------------------------------------------------------------------------------


async def test_overdue_storage(database: Database, settings: MeshSettings) -> None:
    sites = Sites().add("F-STORE", "320102", Limits(max_dwell_days=30)).add("F-NOLIMIT", "320102", Limits())
    await insert(
        database,
        [
            battery(1, "F-STORE", "COLLECTED", 40),
            battery(2, "F-STORE", "IN_TEMP_STORAGE", 45),
            battery(3, "F-STORE", "AT_SORTING_CENTER", 31),
            battery(4, "F-STORE", "IN_TEMP_STORAGE", 10),  # within the limit
            battery(5, "F-STORE", "AT_RECYCLER", 100),  # not a storage phase
            battery(6, "F-STORE", "IN_TRANSIT_REVERSE", 100),
            battery(7, "F-NOLIMIT", "IN_TEMP_STORAGE", 400),  # max_dwell_days 0: no limit
            battery(8, "F-UNKNOWN", "IN_TEMP_STORAGE", 400),  # not in the directory
        ],
    )
    assert await run(database, settings, sites) == MonitorReport(raised=1, resolved=0)
    [alert] = await alerts_in(database)
    assert (alert.kind, alert.severity, alert.status) == ("OVERDUE_STORAGE", "MEDIUM", "OPEN")
    assert (alert.facility_id, alert.county_code, alert.open_key) == ("F-STORE", "320102", "OVERDUE_STORAGE:F-STORE")
    assert alert.message.startswith("3 batteries in storage at facility F-STORE beyond its 30-day limit")
    assert json.loads(alert.battery_keys) == [urn(2), urn(1), urn(3)]  # oldest first
    [event] = await raised_events(database)
    assert event.alert.alert_id == alert.alert_id and len(event.alert.batteries) == 3

    # Nothing new on a second pass.
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)
    assert len(await alerts_in(database)) == 1 and len(await outbox(database)) == 1

    # One more overdue battery: the same alert, its count and list updated.
    await insert(database, [battery(9, "F-STORE", "COLLECTED", 35)])
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)
    [alert] = await alerts_in(database)
    assert alert.message.startswith("4 batteries ") and len(json.loads(alert.battery_keys)) == 4
    assert len(await outbox(database)) == 1

    # 20 days later the oldest (battery 2) is 65 days in: past twice the limit, HIGH. Battery 4 is at exactly
    # 30 days, not beyond.
    later = NOW + timedelta(days=20)
    assert await run(database, settings, sites, later) == MonitorReport(raised=0, resolved=0)
    [alert] = await alerts_in(database)
    assert alert.severity == "HIGH" and alert.message.startswith("4 batteries ")

    # The batteries leave storage while the directory does not know the facility: the alert is kept.
    async with database.transaction() as session:
        await session.exec(
            update(BatteryRow).where(col(BatteryRow.holder_facility_id) == "F-STORE").values(phase="AT_RECYCLER")
        )
    limits = sites.caps["F-STORE"]
    sites.forget("F-STORE")
    assert await run(database, settings, sites, later) == MonitorReport(raised=0, resolved=0)
    # Known again: resolved.
    sites.add("F-STORE", "320102", limits)
    assert await run(database, settings, sites, later) == MonitorReport(raised=0, resolved=1)
    [alert] = await alerts_in(database)
    assert (alert.status, alert.open_key, aware(alert.resolved_at)) == ("RESOLVED", None, later)

    # The condition comes back: a new alert.
    await insert(database, [battery(10, "F-STORE", "COLLECTED", 50)])
    assert await run(database, settings, sites) == MonitorReport(raised=1, resolved=0)
    assert [a.status for a in await alerts_in(database)] == ["RESOLVED", "OPEN"]
    # raised, resolved (AlertStatusChanged), raised again
    assert [r.event_type.rsplit(".", 1)[1] for r in await outbox(database)] == [
        "AlertRaised",
        "AlertStatusChanged",
        "AlertRaised",
    ]


async def test_an_overdue_alert_lists_at_most_100_batteries_but_counts_all(
    database: Database, settings: MeshSettings
) -> None:
    sites = Sites().add("F-STORE", limits=Limits(max_dwell_days=5))
    await insert(database, [battery(i, "F-STORE", "IN_TEMP_STORAGE", 6 + i / 100) for i in range(120)])
    assert await run(database, settings, sites) == MonitorReport(raised=1, resolved=0)
    [alert] = await alerts_in(database)
    assert alert.message.startswith("120 batteries ")
    assert json.loads(alert.battery_keys) == [urn(i) for i in range(119, 19, -1)]  # the 100 oldest


async def test_possible_diversion(database: Database, settings: MeshSettings) -> None:
    sites = Sites()
    await insert(
        database,
        [
            shipment(1, "F-OUTLET", "F-SORTER", 10),
            shipment(2, "F-OUTLET", "F-SORTER", 3),  # still within the 7 days
            shipment(3, "F-OUTLET", "F-SORTER", 20, received=True),
            EventBatteryRow(battery_key=urn(2), event_seq=1),
            EventBatteryRow(battery_key=urn(1), event_seq=1),
            EventBatteryRow(battery_key=urn(3), event_seq=3),
        ],
    )
    assert await run(database, settings, sites) == MonitorReport(raised=1, resolved=0)
    [alert] = await alerts_in(database)
    event_id = "00000000-0000-4000-8000-000000000001"
    assert (alert.kind, alert.severity, alert.open_key) == (
        "POSSIBLE_DIVERSION",
        "HIGH",
        f"POSSIBLE_DIVERSION:{event_id}",
    )
    assert (alert.facility_id, alert.county_code) == ("F-OUTLET", "320205")
    assert event_id in alert.message and "F-SORTER" in alert.message and "7 days" in alert.message
    assert json.loads(alert.battery_keys) == [urn(1), urn(2)]
    assert len(await raised_events(database)) == 1

    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)
    assert len(await alerts_in(database)) == 1
    # A shorter window also catches shipment 2.
    shorter = MonitorConfig(diversion_days=2)
    assert await run(database, settings, sites, config=shorter) == MonitorReport(raised=1, resolved=0)

    async with database.transaction() as session:
        await session.exec(update(ShipmentRow).values(received_seq=99, received_at=NOW))
    assert await run(database, settings, sites, config=shorter) == MonitorReport(raised=0, resolved=2)
    assert {a.status for a in await alerts_in(database)} == {"RESOLVED"}


async def test_overstock(database: Database, settings: MeshSettings) -> None:
    sites = (
        Sites()
        .add("F1", "320102", Limits(max_stock_units=100))
        .add("F2", "320102", Limits(max_stock_units=100, max_stock_kg=500))
        .add("F3", "", Limits(max_stock_kg=800))
        .add("F4", "320102", Limits())
    )
    await insert(
        database,
        [
            ledger("F1", units_in=150, units_out=20, kg_in=5000),  # 130 units over 100 (no kg limit)
            ledger("F2", units_in=100, kg_in=500),  # exactly at both limits
            ledger("F3", "320205", units_in=900, kg_in=1000, kg_out=100),  # 900 kg over 800 (no unit limit)
            ledger("F4", units_in=10**6, kg_in=10**6),  # no limits
            ledger("F5", units_in=10**6, kg_in=10**6),  # unknown facility
        ],
    )
    assert await run(database, settings, sites) == MonitorReport(raised=2, resolved=0)
    by_facility = {a.facility_id: a for a in await alerts_in(database, "OVERSTOCK")}
    assert set(by_facility) == {"F1", "F3"}
    assert by_facility["F1"].message == "facility F1 holds 130 units (limit 100)"
    assert by_facility["F3"].message == "facility F3 holds 900.0 kg (limit 800 kg)"
    assert {a.severity for a in by_facility.values()} == {"MEDIUM"}
    assert (by_facility["F1"].county_code, by_facility["F3"].county_code) == ("320102", "320205")  # ledger fallback
    assert len(await raised_events(database)) == 2
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)

    # F1 ships 40 units out (90 left): resolved. F3 drops below its limit while unknown: kept.
    async with database.transaction() as session:
        await session.exec(
            update(FacilityLedgerRow).where(col(FacilityLedgerRow.facility_id) == "F1").values(units_out=60)
        )
        await session.exec(
            update(FacilityLedgerRow).where(col(FacilityLedgerRow.facility_id) == "F3").values(kg_out=900)
        )
    sites.forget("F3")
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=1)
    assert {a.facility_id: a.status for a in await alerts_in(database)} == {"F1": "RESOLVED", "F3": "OPEN"}
    # Known again, without any limits: nothing to exceed, resolved.
    sites.add("F3", "320205", None)
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=1)


async def test_mass_balance(database: Database, settings: MeshSettings) -> None:
    sites = Sites()
    await insert(
        database,
        [
            ledger("F1", "320111", treated_kg=1000, output_kg=1020.009),  # within 2 % + 0.01 kg
            ledger("F2", "320111", treated_kg=1000, output_kg=1030),  # 3 % above
            ledger("F3", "320111", treated_kg=0, output_kg=0.005),  # within the absolute epsilon
            ledger("F4", "320111"),
        ],
    )
    assert await run(database, settings, sites, config=MonitorConfig(mass_balance_tolerance_pct=5)) == MonitorReport(
        raised=0, resolved=0
    )
    assert await run(database, settings, sites) == MonitorReport(raised=1, resolved=0)
    [alert] = await alerts_in(database)
    assert (alert.kind, alert.severity, alert.facility_id, alert.county_code) == (
        "MASS_BALANCE",
        "HIGH",
        "F2",
        "320111",
    )
    assert alert.open_key == "MASS_BALANCE:F2"
    assert "1030.0 kg of output, 3.0% above its treated input of 1000.0 kg" in alert.message
    assert len(await raised_events(database)) == 1
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)

    # More output: the message follows. Then more input: resolved.
    async with database.transaction() as session:
        await session.exec(
            update(FacilityLedgerRow).where(col(FacilityLedgerRow.facility_id) == "F2").values(output_kg=1050)
        )
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=0)
    assert "5.0% above" in (await alerts_in(database))[0].message
    async with database.transaction() as session:
        await session.exec(
            update(FacilityLedgerRow).where(col(FacilityLedgerRow.facility_id) == "F2").values(treated_kg=1100)
        )
    assert await run(database, settings, sites) == MonitorReport(raised=0, resolved=1)


async def test_monitors_leave_rule_hits_and_keep_acknowledged_alerts_acknowledged(
    database: Database, settings: MeshSettings
) -> None:
    async with database.transaction() as session:
        await add_alert(session, settings, open_key="RULE_HIT:FLOW-003:e1", facility_id="F2")
        await add_alert(session, settings, facility_id="F2")
    await insert(database, [ledger("F2", "320111", treated_kg=10, output_kg=100)])
    assert await run(database, settings, Sites()) == MonitorReport(raised=1, resolved=0)
    [balance] = await alerts_in(database, "MASS_BALANCE")
    async with database.transaction() as session:
        await acknowledge_alert(session, settings, balance.alert_id, by="reg-1", note="", now=NOW, region_prefix="")
    assert await run(database, settings, Sites()) == MonitorReport(raised=0, resolved=0)
    [balance] = await alerts_in(database, "MASS_BALANCE")
    assert (balance.status, balance.open_key) == ("ACKNOWLEDGED", "MASS_BALANCE:F2")
    async with database.transaction() as session:
        await session.exec(update(FacilityLedgerRow).values(treated_kg=100))
    assert await run(database, settings, Sites()) == MonitorReport(raised=0, resolved=1)
    assert [a.status for a in await alerts_in(database, "MASS_BALANCE")] == ["RESOLVED"]
    assert [a.status for a in await alerts_in(database, "RULE_HIT")] == ["OPEN", "OPEN"]


async def test_a_pass_is_skipped_while_another_replica_holds_the_lock(
    database: Database, settings: MeshSettings
) -> None:
    await insert(database, [ledger("F2", treated_kg=10, output_kg=100)])
    if database.is_postgres:
        async with database.transaction() as other_replica:
            await other_replica.exec(select(func.pg_advisory_xact_lock(MONITOR_LOCK_KEY)))
            assert await monitor_pass(database, settings, Sites(), CONFIG, NOW) is None
            assert await alerts_in(database) == []
    assert await monitor_pass(database, settings, Sites(), CONFIG, NOW) == MonitorReport(raised=1, resolved=0)


# ---- listing and acknowledging --------------------------------------------------------------------


@dataclass
class Listed:
    jiangsu_overdue: AlertRow
    wuxi_diversion: AlertRow
    zhejiang_overstock: AlertRow
    resolved_rule_hit: AlertRow
    no_county_balance: AlertRow
    tied_rule_hit: AlertRow


@pytest.fixture
async def listed(database: Database, settings: MeshSettings) -> Listed:
    t = [NOW + timedelta(minutes=i) for i in range(5)]
    async with database.transaction() as session:
        a = Listed(
            jiangsu_overdue=await add_alert(
                session, settings, at=t[0], kind="OVERDUE_STORAGE", facility_id="F1", county_code="320102"
            ),
            wuxi_diversion=await add_alert(
                session, settings, at=t[1], kind="POSSIBLE_DIVERSION", facility_id="F2", county_code="320205"
            ),
            zhejiang_overstock=await add_alert(
                session, settings, at=t[2], kind="OVERSTOCK", facility_id="F3", county_code="330106"
            ),
            resolved_rule_hit=await add_alert(
                session, settings, at=t[3], facility_id="F1", county_code="320102", open_key="RULE_HIT:r"
            ),
            no_county_balance=await add_alert(session, settings, at=t[4], kind="MASS_BALANCE", facility_id="F4"),
            tied_rule_hit=await add_alert(session, settings, at=t[3], facility_id="F1", county_code="320104"),
        )
        await resolve_alerts(session, settings, ["RULE_HIT:r"], t[4])
    return a


async def ids(database: Database, region: str = "", **fields: Any) -> list[str]:
    async with database.session() as session:
        response = await list_alerts(session, pb.ListAlertsRequest(**fields), region_prefix=region)
    return [a.alert_id for a in response.alerts]


async def test_list_alerts_filters_and_region(database: Database, listed: Listed) -> None:
    a = listed
    tied = sorted([a.resolved_rule_hit.alert_id, a.tied_rule_hit.alert_id], reverse=True)
    national = [a.no_county_balance.alert_id, *tied, a.zhejiang_overstock.alert_id, a.wuxi_diversion.alert_id]
    national.append(a.jiangsu_overdue.alert_id)
    assert await ids(database) == national  # newest first; a tie by id
    jiangsu = [i for i in national if i not in (a.zhejiang_overstock.alert_id, a.no_county_balance.alert_id)]
    assert await ids(database, "32") == jiangsu
    assert await ids(database, "3201") == [*tied, a.jiangsu_overdue.alert_id]
    assert await ids(database, "320205") == [a.wuxi_diversion.alert_id]
    assert await ids(database, "\0") == []  # Caller.region_prefix() of a regulator without a valid region
    assert await ids(database, kind=pb.ALERT_KIND_OVERSTOCK) == [a.zhejiang_overstock.alert_id]
    assert await ids(database, "32", kind=pb.ALERT_KIND_OVERSTOCK) == []
    assert await ids(database, status=pb.ALERT_STATUS_RESOLVED) == [a.resolved_rule_hit.alert_id]
    assert await ids(database, facility_id="F1", status=pb.ALERT_STATUS_OPEN) == [
        a.tied_rule_hit.alert_id,
        a.jiangsu_overdue.alert_id,
    ]
    assert await ids(database, division_prefix="3202") == [a.wuxi_diversion.alert_id]
    assert await ids(database, division_prefix="33") == [a.zhejiang_overstock.alert_id]
    assert await ids(database, "32", division_prefix="33") == []  # outside the caller's region
    assert await ids(database, "3201", division_prefix="32") == await ids(database, "3201")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"division_prefix": "3"}, "division_prefix"),
        ({"division_prefix": "32010"}, "division_prefix"),
        ({"division_prefix": "32a1"}, "division_prefix"),
        ({"kind": 99}, "kind"),
        ({"status": 42}, "status"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "garbage!"}, "page_token"),
    ],
)
async def test_list_alerts_refuses_bad_requests(database: Database, fields: dict[str, Any], field: str) -> None:
    async with database.session() as session:
        with pytest.raises(InvalidArgument) as caught:
            await list_alerts(session, pb.ListAlertsRequest(**fields), region_prefix="")
    assert [v.field for v in caught.value.violations] == [field]


async def test_list_alerts_pages(database: Database, listed: Listed) -> None:
    everything = await ids(database)
    seen: list[str] = []
    token = ""
    pages = 0
    async with database.session() as session:
        while True:
            response = await list_alerts(session, pb.ListAlertsRequest(page_size=2, page_token=token), region_prefix="")
            seen += [x.alert_id for x in response.alerts]
            pages += 1
            token = response.next_page_token
            if not token:
                break
        assert (seen, pages) == (everything, 3)
        # Regional pages, through the tie.
        first = await list_alerts(session, pb.ListAlertsRequest(page_size=2), region_prefix="32")
        rest = await list_alerts(
            session, pb.ListAlertsRequest(page_size=10, page_token=first.next_page_token), region_prefix="32"
        )
        assert [x.alert_id for x in [*first.alerts, *rest.alerts]] == await ids(database, "32")
        assert rest.next_page_token == ""
        # A token is bound to its filters and region.
        for request, region in [
            (pb.ListAlertsRequest(page_size=2, page_token=first.next_page_token), ""),
            (pb.ListAlertsRequest(page_size=2, page_token=first.next_page_token, kind=pb.ALERT_KIND_RULE_HIT), "32"),
        ]:
            with pytest.raises(InvalidArgument) as caught:
                await list_alerts(session, request, region_prefix=region)
            assert caught.value.violations[0].field == "page_token"
        # A key edited by hand (a valid token shape, the right filters) is refused too.
        from meshkit.paging import encode_token

        filters = {"kind": "", "status": "", "prefix": "", "facility": "", "region": ""}
        with pytest.raises(InvalidArgument):
            await list_alerts(
                session, pb.ListAlertsRequest(page_token=encode_token("yesterday", filters)), region_prefix=""
            )


async def test_acknowledge_alert(database: Database, settings: MeshSettings, listed: Listed) -> None:
    alert_id = listed.wuxi_diversion.alert_id
    async with database.transaction() as session:
        row = await acknowledge_alert(
            session, settings, alert_id, by="reg-js", note="calling the carrier", now=NOW, region_prefix="32"
        )
        assert (row.status, row.acknowledged_by, aware(row.acknowledged_at), row.note) == (
            "ACKNOWLEDGED",
            "reg-js",
            NOW,
            "calling the carrier",
        )
    # Again, by someone else: the first acknowledger and time stay; a non-empty note replaces the note.
    later = NOW + timedelta(hours=2)
    async with database.transaction() as session:
        row = await acknowledge_alert(
            session, settings, alert_id, by="platform", note="carrier confirmed", now=later, region_prefix=""
        )
    async with database.transaction() as session:
        row = await acknowledge_alert(
            session, settings, alert_id, by="reg-wx", note="", now=later, region_prefix="3202"
        )
    [stored] = [a for a in await alerts_in(database) if a.alert_id == alert_id]
    assert (stored.status, stored.acknowledged_by, aware(stored.acknowledged_at), stored.note) == (
        "ACKNOWLEDGED",
        "reg-js",
        NOW,
        "carrier confirmed",
    )
    assert stored.open_key == listed.wuxi_diversion.open_key
    # Published when something changed (the acknowledgement, then the note), not for the repeat that changed nothing.
    changes = [
        pb.AlertStatusChanged.FromString(row.payload).alert
        for row in await outbox(database)
        if row.subject == STATUS_SUBJECT
    ]
    assert [(a.status, a.note) for a in changes if a.alert_id == alert_id] == [
        (pb.ALERT_STATUS_ACKNOWLEDGED, "calling the carrier"),
        (pb.ALERT_STATUS_ACKNOWLEDGED, "carrier confirmed"),
    ]


@pytest.mark.parametrize(
    ("case", "region", "error"),
    [
        ("unknown", "", NotFound),
        ("outside", "3201", NotFound),
        ("outside", "33", NotFound),
        ("outside", "\0", NotFound),
        ("no county", "32", NotFound),
        ("resolved", "", FailedPrecondition),
        ("long note", "", InvalidArgument),
        ("empty id", "", InvalidArgument),
    ],
)
async def test_acknowledge_alert_refusals(
    database: Database, settings: MeshSettings, listed: Listed, case: str, region: str, error: type[Exception]
) -> None:
    alert_id, note = {
        "unknown": ("01890000-0000-7000-8000-000000000000", ""),
        "outside": (listed.wuxi_diversion.alert_id, ""),
        "no county": (listed.no_county_balance.alert_id, ""),
        "resolved": (listed.resolved_rule_hit.alert_id, ""),
        "long note": (listed.wuxi_diversion.alert_id, "x" * 501),
        "empty id": ("", ""),
    }[case]
    async with database.transaction() as session:
        with pytest.raises(error) as caught:
            await acknowledge_alert(session, settings, alert_id, by="reg", note=note, now=NOW, region_prefix=region)
    if isinstance(caught.value, FailedPrecondition):
        assert caught.value.reason == "ALERT_RESOLVED"
    if isinstance(caught.value, InvalidArgument):
        assert [v.field for v in caught.value.violations] == ["note" if case == "long note" else "alert_id"]
    assert all(a.status != "ACKNOWLEDGED" for a in await alerts_in(database))
    # Exactly 500 characters is fine.
    async with database.transaction() as session:
        await acknowledge_alert(
            session, settings, listed.wuxi_diversion.alert_id, by="reg", note="y" * 500, now=NOW, region_prefix=""
        )


# ---- the loop -------------------------------------------------------------------------------------


MONITORED = ServiceDefinition(component=Component.FLOWS, register=lambda _server, _runtime: [], migrations=MIGRATIONS)


async def test_monitor_loop_runs_at_once_publishes_and_stops_when_cancelled(
    nats_server: NatsServer, database_url: str, tmp_path: Path
) -> None:
    # A real runtime (database, NATS, outbox relay) whose relay polls only every 30 s: the AlertRaised event
    # goes out at once only because the loop wakes the relay after a pass that raised something.
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "nats_url": nats_server.url,
        "database_url": database_url,
        "grpc_port": 0,
        "outbox_poll_seconds": 30,
        "shutdown_grace_seconds": 1,
    }
    runtime = ServiceRuntime(MONITORED, MeshSettings(**options))
    await runtime.start()
    try:
        await insert(runtime.database, [ledger("F2", treated_kg=10, output_kg=100)])
        loop = asyncio.create_task(monitor_loop(runtime, Sites(), MonitorConfig(interval_s=30)))

        async def alert_published() -> bool:
            rows = await outbox(runtime.database)
            return len(rows) == 1 and rows[0].published_at is not None

        await eventually(alert_published)  # the first pass runs at once, not after the interval
        assert [a.kind for a in await alerts_in(runtime.database)] == ["MASS_BALANCE"]
        loop.cancel()
        done, _ = await asyncio.wait({loop}, timeout=1)  # promptly, and without waiting on a stuck task
        assert loop in done and loop.cancelled()
    finally:
        await runtime.stop()


class FailingOnce(Sites):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def limits(self, facility_id: str) -> Limits | None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("directory hiccup")
        return super().limits(facility_id)


async def test_monitor_loop_logs_a_failed_pass_and_carries_on(
    database: Database, settings: MeshSettings, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = ServiceRuntime(MONITORED, settings)  # not started: the loop needs only its database and settings
    runtime.database = database
    sites = FailingOnce().add("F1", limits=Limits(max_stock_units=1))
    await insert(database, [ledger("F1", units_in=5)])
    caplog.set_level(logging.ERROR, logger="services.flows.monitors")
    loop = asyncio.create_task(monitor_loop(runtime, sites, MonitorConfig(interval_s=0.05)))
    try:

        async def raised() -> bool:
            return len(await alerts_in(database)) == 1

        await eventually(raised)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert any("pass failed" in r.getMessage() and r.exc_info for r in caplog.records)
    assert len(await outbox(database)) == 1  # the failed pass rolled back and left nothing behind
