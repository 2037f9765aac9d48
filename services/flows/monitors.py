"""Continuous alert evaluation over the flows projections (``battery``, ``shipment``, ``facility_ledger``).

Every pass evaluates four conditions, each with a stable open key, raises an alert for each condition that
holds and has no open alert yet, refreshes the open ones (an overdue count stays current), and resolves the
open alerts whose condition no longer holds:

=====================  ======================================  ===========================================
 kind (open key)        condition                               alert
=====================  ======================================  ===========================================
 OVERDUE_STORAGE        batteries in a storage phase (COLLECTED, one per facility, listing the overdue
 (``:<facility>``)      IN_TEMP_STORAGE, AT_SORTING_CENTER)      batteries (count in the message, oldest
                        held longer than the facility's          first, keys capped); MEDIUM, HIGH once
                        ``max_dwell_days`` (when > 0)            the oldest is past twice the limit
 POSSIBLE_DIVERSION     a shipment not received within           one per shipment, HIGH
 (``:<event id>``)      ``diversion_days``
 OVERSTOCK              ledger stock above ``max_stock_units``   one per facility, MEDIUM
 (``:<facility>``)      or ``max_stock_kg`` (each when > 0)
 MASS_BALANCE           ``output_kg > treated_kg * (1 + tol/100)  one per facility, HIGH
 (``:<facility>``)      + 0.01 kg``
=====================  ======================================  ===========================================

A facility the directory does not know (``facility()`` and ``limits()`` both None: an unknown id, or the
directory view not loaded yet after a start) neither raises nor resolves: its OVERDUE_STORAGE or OVERSTOCK
alert is left as it is until the facility is known again, so a restart does not resolve and re-raise every
alert. A known facility without limits (``limits()`` None, or 0 in a field) has no such condition, so its
alert is resolved.
RULE_HIT alerts are never resolved here.

The batteries are never loaded into Python wholesale: one grouped query finds each facility's oldest storage
battery, and only the facilities past their limit are counted and listed (at most 100 keys each).

:func:`monitor_loop` runs a pass every ``interval_s`` in one transaction. On PostgreSQL a pass first takes a
transaction-scoped advisory lock and is skipped when another replica holds it; the inserts are also
``ON CONFLICT (open_key) DO NOTHING``, so even overlapping passes never duplicate an alert.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Protocol

from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.config import MeshSettings
from meshkit.db import Database
from meshkit.server import ServiceRuntime
from meshkit.tables import utcnow
from services.flows.alerts import raise_alert, refresh_alert, resolve_alerts, utc
from services.flows.domain.custody import CustodyState
from services.flows.domain.directory import FacilityInfo
from services.flows.tables import AlertRow, BatteryRow, EventBatteryRow, FacilityLedgerRow, ShipmentRow

log = logging.getLogger(__name__)

OVERDUE_STORAGE: Final = "OVERDUE_STORAGE"
POSSIBLE_DIVERSION: Final = "POSSIBLE_DIVERSION"
OVERSTOCK: Final = "OVERSTOCK"
MASS_BALANCE: Final = "MASS_BALANCE"
MONITOR_KINDS: Final = (OVERDUE_STORAGE, POSSIBLE_DIVERSION, OVERSTOCK, MASS_BALANCE)
"""The kinds the monitors own (raise and resolve); RULE_HIT is not one of them."""
_NEEDS_LIMITS: Final = frozenset({OVERDUE_STORAGE, OVERSTOCK})

STORAGE_PHASES: Final = (CustodyState.COLLECTED, CustodyState.IN_TEMP_STORAGE, CustodyState.AT_SORTING_CENTER)
MASS_EPSILON_KG: Final = 0.01
"""Absolute slack of the mass balance, for rounding in reported weights."""
STOCK_EPSILON_KG: Final = 1e-6
ALERT_KEY_SAMPLE: Final = 100
MONITOR_LOCK_KEY: Final = 0x67726D6D6F6E  # "grmmon": one monitor pass at a time across replicas (PostgreSQL)


@dataclass(frozen=True)
class MonitorConfig:
    diversion_days: float = 7.0
    mass_balance_tolerance_pct: float = 2.0
    interval_s: float = 60.0


class StorageLimits(Protocol):
    """A facility's storage limits (registry ``StorageLimits``); 0 means no limit."""

    @property
    def max_stock_kg(self) -> float: ...

    @property
    def max_stock_units(self) -> int: ...

    @property
    def max_dwell_days(self) -> int: ...


class FacilityLimits(Protocol):
    """What the monitors need from the directory view."""

    def facility(self, facility_id: str) -> FacilityInfo | None: ...

    def limits(self, facility_id: str) -> StorageLimits | None: ...


@dataclass
class MonitorReport:
    raised: int
    resolved: int


@dataclass(frozen=True)
class Finding:
    """A condition that holds now. ``battery_keys`` None: leave an open alert's stored keys as they are."""

    kind: str
    open_key: str
    severity: str
    message: str
    facility_id: str
    county_code: str
    battery_keys: tuple[str, ...] | None


def open_key(kind: str, subject: str) -> str:
    return f"{kind}:{subject}"


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _known(facilities: FacilityLimits, facility_id: str) -> bool:
    """Whether the directory can judge this facility's limits now (a known facility without limits has none)."""
    return facilities.limits(facility_id) is not None or facilities.facility(facility_id) is not None


def _county(facilities: FacilityLimits, facility_id: str, fallback: str = "") -> str:
    info = facilities.facility(facility_id)
    return (info.county_code if info is not None else "") or fallback


# ---- the four checks ------------------------------------------------------------------------------


async def _overdue_storage(session: AsyncSession, facilities: FacilityLimits, now: datetime) -> list[Finding]:
    in_storage = (
        col(BatteryRow.phase).in_([str(p) for p in STORAGE_PHASES]),
        col(BatteryRow.held_since).is_not(None),
        col(BatteryRow.holder_facility_id) != "",
    )
    oldest_by_facility = await session.exec(
        select(BatteryRow.holder_facility_id, func.min(BatteryRow.held_since))
        .where(*in_storage)
        .group_by(col(BatteryRow.holder_facility_id))
    )
    findings: list[Finding] = []
    for facility_id, oldest_raw in oldest_by_facility.all():
        limits = facilities.limits(facility_id)
        if limits is None or limits.max_dwell_days <= 0 or oldest_raw is None:
            continue
        oldest = utc(oldest_raw)
        cutoff = now - timedelta(days=limits.max_dwell_days)
        if oldest >= cutoff:
            continue
        overdue = (*in_storage, col(BatteryRow.holder_facility_id) == facility_id, col(BatteryRow.held_since) < cutoff)
        count = int((await session.exec(select(func.count()).select_from(BatteryRow).where(*overdue))).one())
        keys = await session.exec(
            select(BatteryRow.battery_key)
            .where(*overdue)
            .order_by(col(BatteryRow.held_since), col(BatteryRow.battery_key))
            .limit(ALERT_KEY_SAMPLE)
        )
        severity = "HIGH" if oldest < now - timedelta(days=2 * limits.max_dwell_days) else "MEDIUM"
        findings.append(
            Finding(
                kind=OVERDUE_STORAGE,
                open_key=open_key(OVERDUE_STORAGE, facility_id),
                severity=severity,
                message=(
                    f"{_plural(count, 'battery', 'batteries')} in storage at facility {facility_id} beyond its "
                    f"{limits.max_dwell_days}-day limit; the oldest held since {oldest:%Y-%m-%d %H:%M} UTC"
                ),
                facility_id=facility_id,
                county_code=_county(facilities, facility_id),
                battery_keys=tuple(keys.all()),
            )
        )
    return findings


async def _possible_diversion(
    session: AsyncSession, now: datetime, config: MonitorConfig, already_open: set[str]
) -> list[Finding]:
    cutoff = now - timedelta(days=config.diversion_days)
    shipments = await session.exec(
        select(ShipmentRow)
        .where(col(ShipmentRow.received_seq).is_(None), col(ShipmentRow.shipped_at) < cutoff)
        .order_by(col(ShipmentRow.event_seq))
    )
    findings: list[Finding] = []
    for shipment in shipments.all():
        key = open_key(POSSIBLE_DIVERSION, shipment.event_id)
        keys: tuple[str, ...] | None = None
        if key not in already_open:  # the batteries of a shipment never change: list them once, when raising
            found = await session.exec(
                select(EventBatteryRow.battery_key)
                .where(col(EventBatteryRow.event_seq) == shipment.event_seq)
                .order_by(col(EventBatteryRow.battery_key))
                .limit(ALERT_KEY_SAMPLE)
            )
            keys = tuple(found.all())
        findings.append(
            Finding(
                kind=POSSIBLE_DIVERSION,
                open_key=key,
                severity="HIGH",
                message=(
                    f"shipment {shipment.event_id} ({_plural(shipment.battery_count, 'battery', 'batteries')}, "
                    f"{shipment.mass_kg:g} kg) from facility {shipment.source_facility_id} to "
                    f"{shipment.destination_facility_id}, shipped {utc(shipment.shipped_at):%Y-%m-%d %H:%M} UTC, "
                    f"not received within {config.diversion_days:g} days"
                ),
                facility_id=shipment.source_facility_id,
                county_code=shipment.county_code,
                battery_keys=keys,
            )
        )
    return findings


async def _overstock(session: AsyncSession, facilities: FacilityLimits) -> list[Finding]:
    units = col(FacilityLedgerRow.units_in) - col(FacilityLedgerRow.units_out)
    kilograms = col(FacilityLedgerRow.kg_in) - col(FacilityLedgerRow.kg_out)
    ledgers = await session.exec(
        select(FacilityLedgerRow).where(or_(units > 0, kilograms > 0)).order_by(col(FacilityLedgerRow.facility_id))
    )
    findings: list[Finding] = []
    for ledger in ledgers.all():
        limits = facilities.limits(ledger.facility_id)
        if limits is None:
            continue
        stock_units = ledger.units_in - ledger.units_out
        stock_kg = ledger.kg_in - ledger.kg_out
        over: list[str] = []
        if limits.max_stock_units > 0 and stock_units > limits.max_stock_units:
            over.append(f"{stock_units} units (limit {limits.max_stock_units})")
        if limits.max_stock_kg > 0 and stock_kg > limits.max_stock_kg + STOCK_EPSILON_KG:
            over.append(f"{stock_kg:.1f} kg (limit {limits.max_stock_kg:g} kg)")
        if not over:
            continue
        findings.append(
            Finding(
                kind=OVERSTOCK,
                open_key=open_key(OVERSTOCK, ledger.facility_id),
                severity="MEDIUM",
                message=f"facility {ledger.facility_id} holds {' and '.join(over)}",
                facility_id=ledger.facility_id,
                county_code=_county(facilities, ledger.facility_id, ledger.county_code),
                battery_keys=(),
            )
        )
    return findings


async def _mass_balance(session: AsyncSession, facilities: FacilityLimits, config: MonitorConfig) -> list[Finding]:
    factor = 1 + config.mass_balance_tolerance_pct / 100
    ledgers = await session.exec(
        select(FacilityLedgerRow)
        .where(col(FacilityLedgerRow.output_kg) > col(FacilityLedgerRow.treated_kg) * factor + MASS_EPSILON_KG)
        .order_by(col(FacilityLedgerRow.facility_id))
    )
    findings: list[Finding] = []
    for ledger in ledgers.all():
        if ledger.treated_kg > 0:
            excess = f"{(ledger.output_kg / ledger.treated_kg - 1) * 100:.1f}% above"
        else:
            excess = "with no"
        findings.append(
            Finding(
                kind=MASS_BALANCE,
                open_key=open_key(MASS_BALANCE, ledger.facility_id),
                severity="HIGH",
                message=(
                    f"facility {ledger.facility_id} reported {ledger.output_kg:.1f} kg of output, {excess} its "
                    f"treated input of {ledger.treated_kg:.1f} kg (tolerance {config.mass_balance_tolerance_pct:g}%)"
                ),
                facility_id=ledger.facility_id,
                county_code=_county(facilities, ledger.facility_id, ledger.county_code),
                battery_keys=(),
            )
        )
    return findings


# ---- one pass -------------------------------------------------------------------------------------


async def run_monitors_once(
    session: AsyncSession, settings: MeshSettings, facilities: FacilityLimits, now: datetime, config: MonitorConfig
) -> MonitorReport:
    """Evaluate every condition once in the caller's transaction (no commit): raise, refresh, resolve."""
    now = utc(now)
    open_rows = await session.exec(
        select(AlertRow).where(col(AlertRow.kind).in_(MONITOR_KINDS), col(AlertRow.open_key).is_not(None))
    )
    open_alerts = {row.open_key: row for row in open_rows.all() if row.open_key is not None}
    findings = [
        *await _overdue_storage(session, facilities, now),
        *await _possible_diversion(session, now, config, set(open_alerts)),
        *await _overstock(session, facilities),
        *await _mass_balance(session, facilities, config),
    ]
    current = {finding.open_key for finding in findings}
    stale = [
        key
        for key, row in open_alerts.items()
        if key not in current and not (row.kind in _NEEDS_LIMITS and not _known(facilities, row.facility_id))
    ]
    resolved = await resolve_alerts(session, settings, stale, now) if stale else 0
    raised = 0
    for finding in findings:
        existing = open_alerts.get(finding.open_key)
        if existing is not None:
            refresh_alert(
                existing, message=finding.message, severity=finding.severity, battery_keys=finding.battery_keys
            )
            continue
        row = await raise_alert(
            session,
            settings,
            kind=finding.kind,
            severity=finding.severity,
            message=finding.message,
            now=now,
            facility_id=finding.facility_id,
            county_code=finding.county_code,
            battery_keys=finding.battery_keys or (),
            open_key=finding.open_key,
        )
        raised += row is not None
    return MonitorReport(raised=raised, resolved=resolved)


async def _take_pass_lock(session: AsyncSession) -> bool:
    """PostgreSQL: a transaction-scoped advisory lock, so replicas take turns; SQLite has one writer anyway."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    result = await session.exec(select(func.pg_try_advisory_xact_lock(MONITOR_LOCK_KEY)))
    return bool(result.one())


async def monitor_pass(
    database: Database,
    settings: MeshSettings,
    facilities: FacilityLimits,
    config: MonitorConfig,
    now: datetime | None = None,
) -> MonitorReport | None:
    """One pass in its own transaction; None when another replica's pass holds the lock."""
    async with database.transaction() as session:
        if not await _take_pass_lock(session):
            return None
        return await run_monitors_once(session, settings, facilities, now or utcnow(), config)


async def monitor_loop(runtime: ServiceRuntime, facilities: FacilityLimits, config: MonitorConfig) -> None:
    """Background coroutine (``ServiceDefinition.background``): a pass at once, then one every ``interval_s``.

    A failed pass is logged and the loop carries on; a cancellation ends it (between passes or inside one, in
    which case that pass's transaction is rolled back). After a pass that raised alerts the outbox relay is
    woken, when the runtime has one, so the AlertRaised events go out without waiting for its poll.
    """
    if config.interval_s <= 0:
        raise ValueError("MonitorConfig.interval_s must be positive")
    relay = getattr(runtime, "relay", None)
    while True:
        try:
            report = await monitor_pass(runtime.database, runtime.settings, facilities, config)
            if report is not None and (report.raised or report.resolved):
                log.info("alert monitors: %d raised, %d resolved", report.raised, report.resolved)
            if report is not None and report.raised and relay is not None:
                relay.notify()
        except Exception:
            # A cancellation that surfaced as another error (a driver's) must still stop the loop.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            log.exception("alert monitors: pass failed; retrying in %gs", config.interval_s)
        await asyncio.sleep(config.interval_s)
