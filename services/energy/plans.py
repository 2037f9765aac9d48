"""M&V plans: a plan checked against its measure, the site's meters and independent series, its interval and its
periods (``CreateMvPlan``); the stored row and its message; and the slots of a period.

**Intervals.** A 15-minute, hourly or daily plan has a fixed interval that divides one day; its slots are counted
from 00:00 China Standard Time (:data:`CALENDAR_ZONE`, UTC+8, no daylight saving), so a daily slot is a calendar
day and an hourly one a clock hour. A monthly plan's slots are the calendar months of the same zone. Every period
of a plan (baseline, reporting, normal conditions) starts and ends on slot boundaries, so no slot is cut short.

**Sources.** The boundary's energy comes from energy meters of the measure's site; each independent variable from a
meter or an independent series of the site. A source's values must tile the plan's slots: its interval divides a
fixed plan interval, or, for a monthly plan, divides one day (irregular sources pass: each reading that lies inside
one slot counts, see :mod:`.evaluations`).

**Normal conditions** (normalised savings): a period, and for every plan variable the source of its values over it:
the plan variable's own source unless the plan names another (a normal-year series).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from google.protobuf.duration_pb2 import Duration
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.errors import FieldViolation, InvalidArgument
from services.energy import store
from services.energy.domain.readings import Period, ReadingMode
from services.energy.domain.savings import CALENDAR_MONTH, IpmvpOption, Measure, MeasureType, MvPlan, plan_violations
from services.energy.domain.units import Dimension, Unit
from services.energy.mapping import (
    IPMVP_OPTIONS,
    duration_from_proto,
    period_from_proto,
    period_to_proto,
    utc,
)
from services.energy.tables import IndependentSeriesRow, MeasureRow, MeterRow, MvPlanRow

CALENDAR_ZONE: Final = dt.timezone(dt.timedelta(hours=8), "CST")
DAY: Final = 86_400
_OFFSET: Final = 8 * 3600


# ---- sources ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a variable's values come from: one meter or one independent series (exactly one id is set)."""

    name: str
    meter_id: str = ""
    series_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "meter_id": self.meter_id} if self.meter_id else {
            "name": self.name, "series_id": self.series_id
        }  # fmt: skip

    @classmethod
    def from_json(cls, item: Mapping[str, str]) -> Source:
        return cls(str(item["name"]), str(item.get("meter_id", "")), str(item.get("series_id", "")))

    def to_proto(self) -> pb.IndependentVariable:
        if self.meter_id:
            return pb.IndependentVariable(name=self.name, meter_id=self.meter_id)
        return pb.IndependentVariable(name=self.name, series_id=self.series_id)


def sources_from_json(text: str) -> tuple[Source, ...]:
    return tuple(Source.from_json(item) for item in json.loads(text))


def sources_to_json(sources: Sequence[Source]) -> str:
    return json.dumps([s.to_json() for s in sources])


# ---- slots -----------------------------------------------------------------------------------------------------


def _local(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(CALENDAR_ZONE)


def on_month_start(moment: dt.datetime) -> bool:
    local = _local(moment)
    return local.day == 1 and local.time() == dt.time(0)


def on_slot_boundary(moment: dt.datetime, interval_s: int) -> bool:
    """Whether ``moment`` starts a slot of ``interval_s`` (a divisor of one day) counted from 00:00 UTC+8."""
    seconds = int(moment.timestamp())
    return moment.microsecond == 0 and (seconds + _OFFSET) % interval_s == 0


def _next_month(local: dt.datetime) -> dt.datetime:
    return local.replace(year=local.year + local.month // 12, month=local.month % 12 + 1)


def slot_edges(period: Period, interval_s: int | None) -> npt.NDArray[np.int64]:
    """The slot boundaries of ``period`` in Unix seconds, first and last included: every ``interval_s`` from its
    start, or (``None``) the calendar months of UTC+8 it holds. A trailing part shorter than a slot is left out;
    a plan's periods have none (:func:`period_fit_violations`)."""
    start, end = int(period.start.timestamp()), int(period.end.timestamp())
    if interval_s is not None:
        slots = max((end - start) // interval_s, 0)
        return start + interval_s * np.arange(slots + 1, dtype=np.int64)
    edges = [start]
    local = _local(period.start)
    while True:
        local = _next_month(local)
        if int(local.timestamp()) > end:
            break
        edges.append(int(local.timestamp()))
    return np.asarray(edges, dtype=np.int64)


def period_fit_violations(period: Period, interval_s: int | None, field: str) -> list[FieldViolation]:
    """A plan's period starts and ends on its slot boundaries (module docstring)."""
    found: list[FieldViolation] = []
    for name, moment in (("start_time", period.start), ("end_time", period.end)):
        if interval_s is None and not on_month_start(moment):
            found.append(
                FieldViolation(f"{field}.{name}", "a monthly plan's periods start and end at 00:00 (UTC+8) on the 1st")
            )
        elif interval_s is not None and not on_slot_boundary(moment, interval_s):
            what = "00:00 (UTC+8)" if interval_s == DAY else f"a multiple of {interval_s} s from 00:00 (UTC+8)"
            found.append(FieldViolation(f"{field}.{name}", f"must fall on the plan's slots: {what}"))
    return found


# ---- checking a plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedPlan:
    plan: MvPlan
    measure: Measure
    energy_meter_ids: tuple[str, ...]
    variables: tuple[Source, ...]
    monthly: bool
    normal_variables: tuple[Source, ...]  # one per plan variable, in its order; () without normal conditions

    @property
    def interval_s(self) -> int | None:
        return None if self.monthly else int(self.plan.interval.total_seconds())


def domain_measure(measure: MeasureRow) -> Measure:
    return Measure(
        measure_id=measure.measure_id,
        measure_type=MeasureType(measure.measure_type),
        installation=Period(utc(measure.installation_start), utc(measure.installation_end)),
        asset_ids=tuple(i for i in measure.asset_ids.split(",") if i),
    )


def _source_of(
    message: pb.IndependentVariable, field: str, found: list[FieldViolation], name: str | None = None
) -> Source | None:
    which = message.WhichOneof("source")
    if which is None or not getattr(message, which):
        found.append(FieldViolation(field, "a meter_id or a series_id of the measure's site"))
        return None
    if which == "meter_id":
        return Source(name if name is not None else message.name.strip(), meter_id=message.meter_id)
    return Source(name if name is not None else message.name.strip(), series_id=message.series_id)


class _Sources:
    """The meters and series a plan names, looked up once; each use is checked where it is named."""

    def __init__(self, meters: Mapping[str, MeterRow], series: Mapping[str, IndependentSeriesRow], site: str) -> None:
        self.meters, self.series, self.site = meters, series, site

    def interval_of(self, source: Source) -> tuple[str, int | None] | None:
        """(what to call it, its interval) when it exists at the site; ``None`` otherwise."""
        if source.meter_id:
            meter = self.meters.get(source.meter_id)
            return (
                None if meter is None or meter.site_id != self.site else (f"meter {meter.meter_id}", meter.interval_s)
            )
        series = self.series.get(source.series_id)
        return None if series is None or series.site_id != self.site else (f"series {series.name}", series.interval_s)


def _unknown(source: Source) -> str:
    return f"no such {'meter' if source.meter_id else 'independent series'} at the measure's site"


def _source_field(field: str, source: Source) -> str:
    return f"{field}.{'meter_id' if source.meter_id else 'series_id'}"


async def check_plan(session: AsyncSession, message: pb.MvPlan, measure: MeasureRow) -> CheckedPlan:
    """The plan of a CreateMvPlan request, checked completely (``InvalidArgument`` naming every problem)."""
    found: list[FieldViolation] = []
    option = IPMVP_OPTIONS.required(message.option, "plan.option", found)
    baseline = period_from_proto(message, "baseline_period", "plan.baseline_period", found)
    reporting = period_from_proto(message, "reporting_period", "plan.reporting_period", found)
    monthly = message.monthly
    interval = duration_from_proto(message, "interval", "plan.interval", found, required=not monthly)
    if monthly and message.HasField("interval"):
        found.append(FieldViolation("plan.interval", "leave it unset for a monthly plan (calendar months)"))
        interval = None
    elif interval is not None and (interval > dt.timedelta(days=1) or DAY % int(interval.total_seconds())):
        found.append(
            FieldViolation(
                "plan.interval", "must divide one day (15 minutes, one hour, one day); set monthly for calendar months"
            )
        )
        interval = None
    step = None if monthly else (int(interval.total_seconds()) if interval is not None else 0)
    confidence = message.confidence or 0.9

    variables: list[Source] = []
    for i, variable in enumerate(message.independent_variables):
        source = _source_of(variable, f"plan.independent_variables[{i}]", found)
        if source is not None:
            variables.append(source)
    normal_period: Period | None = None
    normal_given: dict[str, tuple[int, Source]] = {}
    if message.HasField("normal_conditions"):
        normal = message.normal_conditions
        normal_period = period_from_proto(normal, "period", "plan.normal_conditions.period", found)
        names = {v.name.strip() for v in message.independent_variables}
        for i, variable in enumerate(normal.variables):
            field = f"plan.normal_conditions.variables[{i}]"
            name = variable.name.strip()
            if name not in names:
                found.append(FieldViolation(f"{field}.name", f"{name!r} is not a variable of the plan"))
            elif name in normal_given:
                found.append(FieldViolation(f"{field}.name", f"{name!r} is listed twice"))
            else:
                source = _source_of(variable, field, found, name)
                if source is not None:
                    normal_given[name] = (i, source)

    if not message.energy_meter_ids:
        found.append(FieldViolation("plan.energy_meter_ids", "at least one energy meter"))
    wanted_meters = (
        {*message.energy_meter_ids} | {s.meter_id for s in variables} | {s.meter_id for _, s in normal_given.values()}
    )
    wanted_series = {s.series_id for s in variables} | {s.series_id for _, s in normal_given.values()}
    meters = await store.meters(session, wanted_meters - {""})
    series = await store.independent_series_many(session, wanted_series - {""})
    sources = _Sources(meters, series, measure.site_id)

    used: list[tuple[str, str, int | None]] = []  # (field, what, interval) of every source in use
    for i, meter_id in enumerate(message.energy_meter_ids):
        field = f"plan.energy_meter_ids[{i}]"
        row = meters.get(meter_id)
        if row is None or row.site_id != measure.site_id:
            found.append(FieldViolation(field, "no such meter at the measure's site"))
        elif Unit(row.unit).dimension is not Dimension.ENERGY or row.mode == ReadingMode.AVERAGE.value:
            found.append(FieldViolation(field, "must be an energy meter (kWh, MJ …)"))
        else:
            used.append((field, f"meter {row.meter_id}", row.interval_s))
    for i, source in enumerate(variables):
        field = _source_field(f"plan.independent_variables[{i}]", source)
        known = sources.interval_of(source)
        if known is None:
            found.append(FieldViolation(field, _unknown(source)))
        else:
            used.append((field, *known))
    for i, source in normal_given.values():
        field = _source_field(f"plan.normal_conditions.variables[{i}]", source)
        known = sources.interval_of(source)
        if known is None:
            found.append(FieldViolation(field, _unknown(source)))
        else:
            used.append((field, *known))
    for field, what, source_interval in used:
        if not source_interval:
            continue  # irregular: readings count where they lie inside one slot
        if monthly and DAY % source_interval:
            found.append(FieldViolation(field, f"{what}'s {source_interval} s interval does not divide a day"))
        elif step and step % source_interval:
            found.append(FieldViolation("plan.interval", f"not a multiple of {what}'s {source_interval} s interval"))

    slot = None if monthly else step
    if monthly or step:
        for name, period in (
            ("plan.baseline_period", baseline),
            ("plan.reporting_period", reporting),
            ("plan.normal_conditions.period", normal_period),
        ):
            if period is not None:
                found += period_fit_violations(period, slot, name)
    if found:
        raise InvalidArgument(found)
    assert option is not None and baseline is not None and reporting is not None
    assert monthly or interval is not None
    domain_plan = MvPlan(
        option=option,
        measurement_boundary=tuple(message.measurement_boundary),
        baseline_period=baseline,
        reporting_period=reporting,
        interval=CALENDAR_MONTH if monthly else interval,  # type: ignore[arg-type]
        independent_variables=tuple(s.name for s in variables),
        confidence=confidence,
        normal_period=normal_period,
    )
    measure_of = domain_measure(measure)
    problems = plan_violations(domain_plan, measure_of)
    if problems:
        raise InvalidArgument(
            [FieldViolation(p.field if p.field.startswith("measure.") else f"plan.{p.field}", p.description)
             for p in problems]
        )  # fmt: skip
    normal_variables = (
        tuple(normal_given[s.name][1] if s.name in normal_given else s for s in variables)
        if normal_period is not None
        else ()
    )
    return CheckedPlan(
        domain_plan, measure_of, tuple(message.energy_meter_ids), tuple(variables), monthly, normal_variables
    )


# ---- the stored plan -------------------------------------------------------------------------------------------


def plan_row(plan_id: str, checked: CheckedPlan, now: dt.datetime) -> MvPlanRow:
    plan = checked.plan
    return MvPlanRow(
        plan_id=plan_id,
        measure_id=checked.measure.measure_id,
        option=plan.option.value,
        boundary=",".join(plan.measurement_boundary),
        energy_meter_ids=",".join(checked.energy_meter_ids),
        variables_json=sources_to_json(checked.variables),
        baseline_start=plan.baseline_period.start,
        baseline_end=plan.baseline_period.end,
        reporting_start=plan.reporting_period.start,
        reporting_end=plan.reporting_period.end,
        interval_s=checked.interval_s or 0,
        confidence=plan.confidence,
        created_at=now,
        monthly=checked.monthly,
        normal_start=plan.normal_period.start if plan.normal_period else None,
        normal_end=plan.normal_period.end if plan.normal_period else None,
        normal_variables_json=sources_to_json(checked.normal_variables),
    )


def stored_plan(row: MvPlanRow, measure: MeasureRow) -> CheckedPlan:
    """A stored plan as it was checked (the inverse of :func:`plan_row`)."""
    variables = sources_from_json(row.variables_json)
    normal = (
        Period(utc(row.normal_start), utc(row.normal_end))
        if row.normal_start is not None and row.normal_end is not None
        else None
    )
    domain_plan = MvPlan(
        option=IpmvpOption(row.option),
        measurement_boundary=tuple(i for i in row.boundary.split(",") if i),
        baseline_period=Period(utc(row.baseline_start), utc(row.baseline_end)),
        reporting_period=Period(utc(row.reporting_start), utc(row.reporting_end)),
        interval=CALENDAR_MONTH if row.monthly else dt.timedelta(seconds=row.interval_s),
        independent_variables=tuple(s.name for s in variables),
        confidence=row.confidence,
        normal_period=normal,
    )
    return CheckedPlan(
        domain_plan,
        domain_measure(measure),
        tuple(i for i in row.energy_meter_ids.split(",") if i),
        variables,
        row.monthly,
        sources_from_json(row.normal_variables_json),
    )


def plan_message(row: MvPlanRow) -> pb.MvPlan:
    message = pb.MvPlan(
        plan_id=row.plan_id,
        measure_id=row.measure_id,
        option=IPMVP_OPTIONS.name_to_proto(row.option),
        measurement_boundary=[b for b in row.boundary.split(",") if b],
        energy_meter_ids=[m for m in row.energy_meter_ids.split(",") if m],
        baseline_period=period_to_proto(Period(utc(row.baseline_start), utc(row.baseline_end))),
        reporting_period=period_to_proto(Period(utc(row.reporting_start), utc(row.reporting_end))),
        independent_variables=[s.to_proto() for s in sources_from_json(row.variables_json)],
        confidence=row.confidence,
        monthly=row.monthly,
    )
    if not row.monthly:
        message.interval.CopyFrom(Duration(seconds=row.interval_s))
    if row.normal_start is not None and row.normal_end is not None:
        message.normal_conditions.CopyFrom(
            pb.NormalConditions(
                period=period_to_proto(Period(utc(row.normal_start), utc(row.normal_end))),
                variables=[s.to_proto() for s in sources_from_json(row.normal_variables_json)],
            )
        )
    return message
