"""The ministry's periodic dispatch statistics (定期调度) for a division and a period (research note §6.6,
"StatisticsService": units and kg collected by recycling mode, delivered to recyclers and recycled; closure
ratio; late-report rate; open exceptions).

Aggregate queries only, whatever the size of the event log:

1. ``flow_event`` in the period and division, twice, each read from ``ix_flow_event_step_time_covering``
   alone: its key (biz_step, event_time) gives one range per step, as the step is constrained to a closed
   list (SQLite skips over a leading column only with ANALYZE statistics, which the service does not keep),
   and the rest of the entry (county_code, declared, late, collection_mode, facility_type, battery_count,
   mass_kg) answers without a table lookup per event. First the late reports of every step (a count, no
   grouping); then the figures of three steps only, grouped by (step, mode): collected (COLLECTING, by mode),
   delivered to recyclers (RECEIVING at a dismantling base or recycling plant) and recycled (RECYCLING). One
   pass grouped by (step, mode, facility type) over every step cost SQLite a sort of the whole period (0.9 s
   of CPU for a year below, against 0.2 + 0.2 s for the two). A county's queries use ``(county_code,
   event_time)`` and the table instead. On PostgreSQL both are planned for their values (``SET LOCAL
   plan_cache_mode = force_custom_plan``): asyncpg prepares statements, and from a statement's sixth run on a
   connection PostgreSQL may keep a generic plan, blind to the period's width, which took a county range with
   a heap fetch per event (a year: 2.1 s instead of 0.26 s).
2. ``battery`` whose first collection is in the period and division: index-only on ``ix_battery_collected``
   (collected_county, collected_at, reached_recycler). The compliant-channel rate.
3. ``alert`` open or acknowledged in the division (``ix_alert_status_county``), by kind, whatever the period.

Measured in December 2026 with 1,000,000 events of province 32 in 2026 (64,524 batteries on the 16-step life
of tests/flows/test_flows_e2e.py, one in ten stopping at a sorting centre; six counties; 5 % late, 0.2 %
declared; payloads of 300-450 bytes; in capture order) and 3,000 alerts, inserted directly into a database
migrated by flows_0002; `dispatch_statistics` called directly, the median of 9 warm calls, on two cores with a
load average of 5 (other benchmarks running), so the figures are upper bounds. Before → after this index and
these queries, for the province over the year / a quarter / a month, Nanjing (3201) over the year, and Xuanwu
(320102) over the year / a month:

- SQLite 3.40: 2.7 s → 0.39 s / 1.2 → 0.11 / 0.34 → 0.04 / 1.9 → 0.25 / 0.27 → 0.31 / 0.03 → 0.04 (the
  county reads its events through the table twice now).
- PostgreSQL 15, VACUUMed: 2.1-2.8 s → 0.26 s / 0.85-1.5 → 0.11 / 0.37-0.5 → 0.04 / 1.1-1.8 → 0.20 /
  0.26-0.69 → 0.12 / 0.02-0.05 → 0.02 (before: the generic plans from the sixth call; the first five took
  0.5-0.6 s for the year).

An index-only scan on PostgreSQL reads the table for every page the visibility map does not mark all-visible,
and only VACUUM marks them. With the last fifth of the log never vacuumed (what autovacuum leaves at most with
its default insert threshold, 20 % of the table), the same periods took 0.48 / 0.16 / 0.05 / 0.58 / 0.18 s;
with none of it vacuumed (autovacuum off), 0.82 / 0.55 / 0.08 / 0.56 / 0.22 s (bitmap and parallel sequential
scans). A lower ``autovacuum_vacuum_insert_scale_factor`` on flow_event would keep the latest months
index-only as well. The covering index replaced the plain (biz_step, event_time) one rather than joining it:
per 1,000,000 events it takes 81 MB on SQLite (47 before) and 85 MB on PostgreSQL (62), and raw inserts of
events (500 a transaction, 200,000 events) cost 4 % more CPU on SQLite and 1 % on PostgreSQL (within noise),
where an added index keyed (biz_step, collection_mode, facility_type, event_time, ...) cost 11 % and 5 %
(and, with the time fourth in its key, it read the whole log for a month's figures too: 0.44 s on SQLite).

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
from sqlalchemy import ColumnElement, and_, case, func, or_, select, text
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

ALL_STEPS: Final = tuple(str(step) for step in BizStep)
"""Late reports count at any step; listing them all makes the step-and-time index one range per step."""
FIGURE_STEPS: Final = (str(BizStep.COLLECTING), str(BizStep.RECEIVING), str(BizStep.RECYCLING))
"""The steps behind the collected, delivered and recycled figures."""

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


NATION: Final = "00"
"""The division of the whole country (no province has the code 00): what the national view is asked for."""


def division_prefix(division_code: str) -> str:
    """The county-code prefix a division covers: 32 for 32 or 320000, 3201 for 3201 or 320100, "" (every
    county) for the nation, 00 or 000000."""
    prefix = division_code
    while len(prefix) > 2 and prefix.endswith("00"):
        prefix = prefix[:-2]
    return "" if prefix == NATION else prefix


def _in_division(column: Any, prefix: str) -> ColumnElement[bool]:
    """`column` starts with `prefix`, written as an index range (LIKE 'xx%' cannot use a plain index on
    SQLite, nor on PostgreSQL under a non-C collation). County codes are digits, so '32' ≤ code < '33'."""
    if not prefix:
        return col(column) != ""  # the nation: every county (an event without one has no division)
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
    connection = await session.connection()  # plain Core rows
    if connection.dialect.name == "postgresql":
        # asyncpg prepares each statement; from its sixth run on a connection PostgreSQL may switch to a generic
        # plan, which cannot see how wide the period and division are and picks a county range with a heap
        # fetch per event (2 s instead of 0.3 s for a year). Plan these for their values, for this transaction.
        await connection.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    event = FlowEventRow
    # Both queries read `ix_flow_event_step_time_covering` alone: one range of (biz_step, event_time) per step
    # (hence the closed lists of steps), everything else from the index entry.
    counted = (
        col(event.event_time) >= start,
        col(event.event_time) < end,
        _in_division(event.county_code, prefix),
        col(event.declared) == False,  # noqa: E712 (SQL, not Python)
    )
    late_query = select(func.count()).where(col(event.biz_step).in_(ALL_STEPS), *counted, col(event.late))
    late = int((await connection.execute(late_query)).scalar_one() or 0)

    # Only the steps that make figures, so the GROUP BY (a sort on SQLite) sees a fraction of the period.
    figures_query = (
        select(
            col(event.biz_step),
            col(event.collection_mode),
            func.sum(col(event.battery_count)),
            func.sum(col(event.mass_kg)),
        )
        .where(
            col(event.biz_step).in_(FIGURE_STEPS),
            or_(col(event.biz_step) != BizStep.RECEIVING, col(event.facility_type).in_(sorted(RECYCLER_FACILITIES))),
            *counted,
        )
        .group_by(col(event.biz_step), col(event.collection_mode))
    )
    by_mode: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    delivered = [0, 0.0]
    recycled = [0, 0.0]
    for step, mode, batteries, kilograms in (await connection.execute(figures_query)).all():
        if step == BizStep.COLLECTING:
            figure = by_mode[mode or ""]
        elif step == BizStep.RECEIVING:  # at a recycler: the query keeps no other
            figure = delivered
        else:
            figure = recycled
        figure[0] += int(batteries or 0)
        figure[1] += float(kilograms or 0.0)

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
        rate_denominator=figures.rate_denominator,
        rate_reached_recycler=figures.rate_reached_recycler,
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
                "(3201) or 6 for a county (320102), or 00 for the whole country",
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
    "NATION",
    "RECYCLER_FACILITIES",
    "AlertFigure",
    "DispatchFigures",
    "ModeFigure",
    "dispatch_statistics",
    "division_prefix",
    "figures_to_proto",
    "statistics_violations",
)
