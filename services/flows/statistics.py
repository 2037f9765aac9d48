"""The ministry's periodic dispatch statistics (定期调度) for a division and a period (research note §6.6,
"StatisticsService": units and kg collected by recycling mode, delivered to recyclers and recycled; closure
ratio; late-report rate; open exceptions).

Three aggregate queries, whatever the size of the event log:

1. ``flow_event`` in the period and division, grouped by (business step, collection mode, facility type):
   collected (COLLECTING, by mode), delivered to recyclers (RECEIVING at a dismantling base or recycling
   plant), recycled (RECYCLING) and late reports (any step) all come from this one pass. The step is
   constrained to the closed list of business steps so that an index led by ``biz_step`` serves the period
   as one range per step (SQLite has no skip scan): ``(biz_step, event_time)`` today; a county's figures
   use ``(county_code, event_time)`` instead.
2. ``battery`` whose first collection is in the period and division (``ix_battery_collected``): the
   compliant-channel rate.
3. ``alert`` open or acknowledged in the division (``ix_alert_status_county``), by kind, whatever the period.

Measured with 1,000,000 events of one province over a year (in capture order, 400,000 batteries, on a busy
two-core machine): a month of the province takes 0.2-0.4 s on SQLite and about 0.1 s on PostgreSQL, a
county under 0.05 s; a quarter 0.8 s / 0.4 s; the whole year 3 s / 0.6-1.6 s, as each event row of the
period is fetched from the table and, on SQLite, sorted for the GROUP BY. An index ``(biz_step,
collection_mode, facility_type, event_time, county_code, declared, late, battery_count, mass_kg)`` makes
query 1 index-only and its GROUP BY sort-free on SQLite (which then picks it for this very query: the year
in 0.5 s, a month in 0.12 s), and ``reached_recycler`` as a third column of ``ix_battery_collected`` makes
query 2 index-only (the year's rate 0.7 s → 0.07 s on SQLite).

Events declared in error (``declared``) never count. The division is a GB/T 2260 prefix of the facility's
county code: 2 digits for a province, 4 for a prefecture, 6 for a county; a code padded with zeros
(``320000``, ``320100``) means the same as its prefix (``32``, ``3201``). Times are compared in UTC, as the
tables store them; the period is [start, end).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import ColumnElement, and_, case, func, select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.errors import FieldViolation
from services.flows.domain.directory import TREATMENT_FACILITIES
from services.flows.domain.events import BizStep, CollectionMode
from services.flows.tables import AlertRow, BatteryRow, FlowEventRow

MAX_PERIOD: Final = dt.timedelta(days=400)
"""The longest period one request may cover: a year (leap or not) and a margin."""

DIVISION_LENGTHS: Final = (2, 4, 6)
ACTIVE_ALERT_STATUSES: Final = ("OPEN", "ACKNOWLEDGED")
RECYCLER_FACILITIES: Final = frozenset(str(kind) for kind in TREATMENT_FACILITIES)
"""Where a RECEIVING counts as delivered to a recycler: dismantling bases and recycling plants."""

KILOGRAM_DECIMALS: Final = 3  # masses are reported to the gram
KNOWN_MODES: Final = frozenset(str(mode) for mode in CollectionMode)


@dataclass(frozen=True)
class ModeFigure:
    """Batteries collected by one mode. `mode` is a CollectionMode name, or "" for COLLECTING events that
    carry no mode (only listed when there are some, so the modes always add up to the totals)."""

    mode: str
    batteries: int
    kilograms: float


@dataclass(frozen=True)
class AlertFigure:
    """Alerts of one kind (an AlertKind name) that are open or acknowledged."""

    kind: str
    open: int


@dataclass(frozen=True)
class DispatchFigures:
    """Everything in ``GetDispatchStatisticsResponse``, plus the rate's numerator and denominator.

    `compliant_channel_rate` = `rate_reached_recycler` / `rate_denominator`: among the identified batteries
    whose first collection lies in the period and division, the share that has reached a listed recycling
    enterprise. It is 0.0 when the denominator is 0 (nothing collected): read it together with
    `rate_denominator`. Batteries collected by quantity only (no identifier) are in the collected figures but
    cannot be followed, so they are not in the rate.
    """

    division_code: str
    period_start: dt.datetime
    period_end: dt.datetime
    collected_by_mode: tuple[ModeFigure, ...]
    collected_batteries: int
    collected_kilograms: float
    delivered_to_recyclers_batteries: int
    delivered_to_recyclers_kilograms: float
    recycled_batteries: int
    recycled_kilograms: float
    compliant_channel_rate: float
    rate_denominator: int
    rate_reached_recycler: int
    open_alerts: tuple[AlertFigure, ...]
    late_reports: int


# ---- the division --------------------------------------------------------------------------------------


def division_prefix(division_code: str) -> str:
    """The county-code prefix a division covers: 32 for 32 or 320000, 3201 for 3201 or 320100."""
    prefix = division_code
    while len(prefix) > 2 and prefix.endswith("00"):
        prefix = prefix[:-2]
    return prefix


def _in_division(column: Any, prefix: str) -> ColumnElement[bool]:
    """`column` starts with `prefix`, written as an index range (LIKE 'xx%' cannot use a plain index on
    SQLite, nor on PostgreSQL under a non-C collation). County codes are digits, so '32' ≤ code < '33'."""
    if len(prefix) == 6:
        return col(column) == prefix
    upper = str(int(prefix) + 1).zfill(len(prefix))
    if len(upper) > len(prefix):  # 99, 9999: nothing sorts above the prefix's range
        return col(column) >= prefix
    return and_(col(column) >= prefix, col(column) < upper)


def _utc(moment: dt.datetime) -> dt.datetime:
    # Stored times are UTC (SQLite keeps the wall clock of what was written, without its offset).
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


# ---- the figures ---------------------------------------------------------------------------------------


async def dispatch_statistics(
    session: AsyncSession, division_code: str, start: dt.datetime, end: dt.datetime
) -> DispatchFigures:
    """The dispatch figures of the division (a GB/T 2260 code or prefix) for events in [start, end).

    The compliant-channel rate is 0.0 when no battery was first collected in the period and division (an
    empty denominator); `rate_denominator` tells that case from a true 0 %.
    """
    prefix = division_prefix(division_code)
    start, end = _utc(start), _utc(end)
    connection = await session.connection()  # plain Core rows: (step, mode, type, sums...)
    event = FlowEventRow
    late_count = func.sum(case((col(event.late), 1), else_=0))
    events = (
        select(
            col(event.biz_step),
            col(event.collection_mode),
            col(event.facility_type),
            func.sum(col(event.battery_count)),
            func.sum(col(event.mass_kg)),
            late_count,
        )
        .where(
            # The closed list of steps makes the (biz_step, event_time) index one range per step.
            col(event.biz_step).in_([str(step) for step in BizStep]),
            col(event.event_time) >= start,
            col(event.event_time) < end,
            _in_division(event.county_code, prefix),
            col(event.declared) == False,  # noqa: E712 (SQL, not Python)
        )
        .group_by(col(event.biz_step), col(event.collection_mode), col(event.facility_type))
    )
    by_mode: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    delivered = [0, 0.0]
    recycled = [0, 0.0]
    late = 0
    for step, mode, facility_type, batteries, kilograms, late_here in (await connection.execute(events)).all():
        batteries, kilograms = int(batteries or 0), float(kilograms or 0.0)
        late += int(late_here or 0)
        if step == BizStep.COLLECTING:
            figure = by_mode[mode or ""]
        elif step == BizStep.RECEIVING and facility_type in RECYCLER_FACILITIES:
            figure = delivered
        elif step == BizStep.RECYCLING:
            figure = recycled
        else:
            continue
        figure[0] += batteries
        figure[1] += kilograms

    battery = BatteryRow
    rate_query = select(func.count(), func.sum(case((col(battery.reached_recycler), 1), else_=0))).where(
        _in_division(battery.collected_county, prefix),
        col(battery.collected_at) >= start,
        col(battery.collected_at) < end,
    )
    denominator, reached = (await connection.execute(rate_query)).one()
    denominator, reached = int(denominator or 0), int(reached or 0)

    alert = AlertRow
    alert_query = (
        select(col(alert.kind), func.count())
        .where(col(alert.status).in_(ACTIVE_ALERT_STATUSES), _in_division(alert.county_code, prefix))
        .group_by(col(alert.kind))
    )
    open_by_kind = {str(kind): int(count) for kind, count in (await connection.execute(alert_query)).all()}

    modes = [ModeFigure(str(mode), int(by_mode[mode][0]), _kg(by_mode[mode][1])) for mode in CollectionMode]
    stray = [figure for name, figure in by_mode.items() if name not in KNOWN_MODES]  # no mode, or an unknown one
    if stray:
        modes.append(ModeFigure("", int(sum(f[0] for f in stray)), _kg(sum(f[1] for f in stray))))
    return DispatchFigures(
        division_code=division_code,
        period_start=start,
        period_end=end,
        collected_by_mode=tuple(modes),
        collected_batteries=sum(int(f[0]) for f in by_mode.values()),
        collected_kilograms=_kg(sum(f[1] for f in by_mode.values())),
        delivered_to_recyclers_batteries=int(delivered[0]),
        delivered_to_recyclers_kilograms=_kg(delivered[1]),
        recycled_batteries=int(recycled[0]),
        recycled_kilograms=_kg(recycled[1]),
        compliant_channel_rate=reached / denominator if denominator else 0.0,
        rate_denominator=denominator,
        rate_reached_recycler=reached,
        open_alerts=_alert_figures(open_by_kind),
        late_reports=late,
    )


def _kg(value: float) -> float:
    return round(value, KILOGRAM_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


ALERT_KINDS: Final = tuple(
    value.name.removeprefix("ALERT_KIND_") for value in pb.AlertKind.DESCRIPTOR.values if value.number != 0
)


def _alert_figures(open_by_kind: dict[str, int]) -> tuple[AlertFigure, ...]:
    """Every kind, in the proto's order (0 where none is open), then any kind the proto does not know."""
    known = [AlertFigure(kind, open_by_kind.get(kind, 0)) for kind in ALERT_KINDS]
    stray = [AlertFigure(kind, count) for kind, count in sorted(open_by_kind.items()) if kind not in ALERT_KINDS]
    return (*known, *stray)


# ---- the wire ------------------------------------------------------------------------------------------


def _enum_value(enum: Any, prefix: str, name: str) -> Any:
    try:
        return enum.Value(prefix + name) if name else 0
    except ValueError:
        return 0  # UNSPECIFIED


def _timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(_utc(moment))
    return stamp


def figures_to_proto(figures: DispatchFigures) -> pb.GetDispatchStatisticsResponse:
    """The response message (the rate's numerator and denominator have no field in it)."""
    return pb.GetDispatchStatisticsResponse(
        division_code=figures.division_code,
        period_start=_timestamp(figures.period_start),
        period_end=_timestamp(figures.period_end),
        collected_by_mode=[
            pb.ModeFigure(
                mode=_enum_value(pb.CollectionMode, "COLLECTION_MODE_", m.mode),
                batteries=m.batteries,
                kilograms=m.kilograms,
            )
            for m in figures.collected_by_mode
        ],
        collected_batteries=figures.collected_batteries,
        collected_kilograms=figures.collected_kilograms,
        delivered_to_recyclers_batteries=figures.delivered_to_recyclers_batteries,
        delivered_to_recyclers_kilograms=figures.delivered_to_recyclers_kilograms,
        recycled_batteries=figures.recycled_batteries,
        recycled_kilograms=figures.recycled_kilograms,
        compliant_channel_rate=figures.compliant_channel_rate,
        open_alerts=[
            pb.AlertCount(kind=_enum_value(pb.AlertKind, "ALERT_KIND_", a.kind), open=a.open)
            for a in figures.open_alerts
        ],
        late_reports=figures.late_reports,
    )


def statistics_violations(request: pb.GetDispatchStatisticsRequest) -> list[FieldViolation]:
    """What is wrong with a request: the division code (2, 4 or 6 digits) and the period (both ends set,
    start before end, at most MAX_PERIOD long)."""
    found: list[FieldViolation] = []
    code = request.division_code
    if not (len(code) in DIVISION_LENGTHS and code.isascii() and code.isdigit()):
        found.append(
            FieldViolation(
                "division_code",
                f"{code!r} is not a GB/T 2260 division code: 2 digits for a province (32), 4 for a prefecture "
                "(3201) or 6 for a county (320102)",
            )
        )
    ends: list[dt.datetime] = []
    for name in ("period_start", "period_end"):
        if not request.HasField(name):
            found.append(FieldViolation(name, "required"))
            continue
        try:
            ends.append(getattr(request, name).ToDatetime(tzinfo=dt.UTC))
        except (ValueError, OverflowError) as error:
            found.append(FieldViolation(name, f"not a valid timestamp: {error}"))
    if len(ends) == 2:
        start, end = ends
        if end <= start:
            found.append(FieldViolation("period_end", "must be after period_start"))
        elif end - start > MAX_PERIOD:
            found.append(
                FieldViolation(
                    "period_end",
                    f"the period may span at most {MAX_PERIOD.days} days; this one spans {_days(end - start)}",
                )
            )
    return found


def _days(span: dt.timedelta) -> str:
    days = span / dt.timedelta(days=1)
    return f"{days:g} days" if days == int(days) else f"{days:.1f} days"


__all__: Sequence[str] = (
    "ACTIVE_ALERT_STATUSES",
    "ALERT_KINDS",
    "MAX_PERIOD",
    "RECYCLER_FACILITIES",
    "AlertFigure",
    "DispatchFigures",
    "ModeFigure",
    "dispatch_statistics",
    "division_prefix",
    "figures_to_proto",
    "statistics_violations",
)
