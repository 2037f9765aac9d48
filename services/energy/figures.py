"""The figures, computed from stored records with the domain formulas: PUE per site and period, load-rate
statistics per asset, efficiency drift against the catalogue curve, the line-loss comparison of a voltage upgrade,
and the share of high-efficiency equipment. Each function reads what it needs through :mod:`store` and answers
with the proto response; a figure that cannot be computed from what is stored (no meter of the needed role, no
readings in the period) is ``FAILED_PRECONDITION`` with a reason, never a made-up number."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.energy import store
from services.energy.domain.catalogue import (
    CurvePosition,
    EfficiencyCurve,
    EquipmentClass,
    ExtrapolationPolicy,
    GradeRating,
    ProcurementRecord,
    VoltageClass,
)
from services.energy.domain.kpis import (
    EfficiencyDrift,
    ItMeasurementPoint,
    LineLoss,
    RedundancyScheme,
    ShareAsset,
    conductor_resistance_ohm,
    design_max_load_rate,
    drift_alert,
    efficiency_drift,
    efficient_share,
    load_rate_stats,
    measured_efficiency,
    pue,
    voltage_upgrade_comparison,
)
from services.energy.domain.lifecycle import LifecycleState
from services.energy.domain.readings import (
    Figure,
    MeterQuantity,
    MeterRole,
    Period,
    ReadingMode,
    excluded_readings,
)
from services.energy.domain.units import Dimension, Quantity, Unit
from services.energy.ingest import stored_state
from services.energy.mapping import (
    CONDUCTORS,
    CURVE_POSITIONS,
    EQUIPMENT_CLASSES,
    IT_POINTS,
    PUE_CATEGORIES,
    REDUNDANCY_SCHEMES,
    VOLTAGE_CLASSES,
    period_to_proto,
    quantity_to_proto,
)
from services.energy.tables import AssetRow, CatalogueEntryRow, MeterRow

ENERGY_QUANTITIES = frozenset({MeterQuantity.ACTIVE_ENERGY})
HOURS_PER_YEAR = 8_760


def seconds(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _energy_meter(row: MeterRow) -> bool:
    return MeterQuantity(row.quantity) in ENERGY_QUANTITIES and ReadingMode(row.mode) is not ReadingMode.AVERAGE


@dataclass(frozen=True)
class _Span:
    start: dt.datetime
    end: dt.datetime


def _spans(starts: Sequence[int], ends: Sequence[int]) -> list[_Span]:
    return [
        _Span(dt.datetime.fromtimestamp(s, dt.UTC), dt.datetime.fromtimestamp(e, dt.UTC))
        for s, e in zip(starts, ends, strict=True)
    ]


async def _excluded(
    session: AsyncSession, asset_id: str, starts: Sequence[int], ends: Sequence[int], figure: Figure
) -> frozenset[int]:
    if not starts:
        return frozenset()
    rows = await store.states_overlapping(session, asset_id, min(starts), max(ends))
    if not rows:
        return frozenset()
    return excluded_readings(_spans(starts, ends), [stored_state(r) for r in rows], figure)


# ---- PUE -------------------------------------------------------------------------------------------------------


async def site_pue(session: AsyncSession, site_id: str, period: Period) -> pb.GetPueResponse:
    meters = [m for m in await store.site_meters(session, site_id) if _energy_meter(m)]
    facility = sorted((m for m in meters if m.role == MeterRole.FACILITY_TOTAL.value), key=lambda m: m.meter_id)
    it = sorted((m for m in meters if m.role == MeterRole.IT_LOAD.value), key=lambda m: m.meter_id)
    if not facility or not it:
        raise FailedPrecondition(
            "PUE needs at least one FACILITY_TOTAL and one IT_LOAD energy meter at the site",
            reason="PUE_METERS_MISSING",
            metadata={"site_id": site_id},
        )
    points = {m.it_measurement_point for m in it}
    if len(points) != 1 or "" in points:
        raise FailedPrecondition(
            "the site's IT_LOAD meters must all record the same measurement point (UPS output, PDU output or IT "
            "equipment input)",
            reason="MIXED_IT_MEASUREMENT_POINTS",
            metadata={"site_id": site_id},
        )
    data = await store.series(
        session, [m.meter_id for m in (*facility, *it)], seconds(period.start), seconds(period.end)
    )
    used = 0

    def energy(rows: Sequence[MeterRow]) -> list[Quantity]:
        nonlocal used
        found = []
        for row in rows:
            consumptions = [c for c in data[row.meter_id][3] if c is not None]
            used += len(consumptions)
            found.append(Quantity(math.fsum(consumptions), Unit(row.unit)))
        return found

    facility_energy, it_energy = energy(facility), energy(it)
    if used == 0:
        raise FailedPrecondition("no readings in the period", reason="NO_READINGS", metadata={"site_id": site_id})
    try:
        result = pue(facility_energy, it_energy, ItMeasurementPoint(points.pop()), period)
    except InvalidArgument as error:
        # The readings, not the request, are at fault (a meter in the wrong role, a gap in the IT meter).
        raise FailedPrecondition(
            "; ".join(v.description for v in error.violations), reason="PUE_NOT_COMPUTABLE"
        ) from error
    return pb.GetPueResponse(
        site_id=site_id,
        period=period_to_proto(period),
        pue=result.value,
        dcie=result.dcie,
        facility_energy_kwh=result.facility_energy_kwh,
        it_energy_kwh=result.it_energy_kwh,
        it_measured_at=IT_POINTS.to_proto(result.it_measured_at),
        category=PUE_CATEGORIES.to_proto(result.category),
        facility_meter_ids=[m.meter_id for m in facility],
        it_meter_ids=[m.meter_id for m in it],
        readings_used=used,
    )


# ---- load rate -------------------------------------------------------------------------------------------------


def rated_of(asset: AssetRow) -> Quantity:
    return Quantity(asset.rated_value, Unit(asset.rated_unit))


def _load_meter(meters: Sequence[MeterRow], rated: Quantity) -> MeterRow | None:
    """The asset's OUTPUT meter whose loads compare with the rating: a power meter of the rating's dimension, or
    an energy meter for an active-power rating."""
    outputs = sorted((m for m in meters if m.role == MeterRole.OUTPUT.value), key=lambda m: m.meter_id)
    for row in outputs:
        quantity = MeterQuantity(row.quantity)
        if row.mode == ReadingMode.AVERAGE.value and quantity.dimension is rated.dimension:
            return row
    if rated.dimension is Dimension.POWER:
        return next((m for m in outputs if _energy_meter(m)), None)
    return None


async def load_rate(
    session: AsyncSession, asset: AssetRow, period: Period, group: tuple[str, int | None, int | None] | None
) -> pb.GetLoadRateStatisticsResponse:
    rated = rated_of(asset)
    meter = _load_meter(await store.asset_meters(session, asset.asset_id), rated)
    if meter is None:
        raise FailedPrecondition(
            f"no OUTPUT meter of the asset measures {rated.dimension.lower()} (or energy, for a kW rating)",
            reason="LOAD_METER_MISSING",
            metadata={"asset_id": asset.asset_id},
        )
    starts, ends, values, consumptions, _ = (await store.series(
        session, [meter.meter_id], seconds(period.start), seconds(period.end)
    ))[meter.meter_id]  # fmt: skip
    unit = Unit(meter.unit)
    if meter.mode == ReadingMode.AVERAGE.value:
        loads: list[float | None] = list(values)
        load_unit = unit
    else:  # mean power of the interval, in kW
        factor = unit.factor
        loads = [
            None if c is None else c * factor / ((e - s) / 3600)
            for s, e, c in zip(starts, ends, consumptions, strict=True)
        ]
        load_unit = Unit.KW
    excluded = await _excluded(session, asset.asset_id, starts, ends, Figure.LOAD_RATE)
    kept = [load for i, load in enumerate(loads) if i not in excluded and load is not None and load >= 0]
    if not kept:
        raise FailedPrecondition(
            "no usable load readings in the period", reason="NO_READINGS", metadata={"meter_id": meter.meter_id}
        )
    design_max: float | None = None
    scheme = pb.REDUNDANCY_SCHEME_UNSPECIFIED
    if group is not None:
        name, units, redundant = group
        scheme = REDUNDANCY_SCHEMES.to_proto(RedundancyScheme(name))
        design_max = design_max_load_rate(RedundancyScheme(name), units=units, redundant_units=redundant)
    stats = load_rate_stats(kept, load_unit, rated, design_max=design_max)
    response = pb.GetLoadRateStatisticsResponse(
        asset_id=asset.asset_id,
        meter_id=meter.meter_id,
        rated_capacity=quantity_to_proto(rated),
        intervals=stats.n,
        excluded_intervals=len(excluded),
        mean=stats.mean,
        p95=stats.p95,
        max=stats.max,
        histogram=[
            pb.HistogramBin(lower=b.lower, count=b.count, **({} if math.isinf(b.upper) else {"upper": b.upper}))
            for b in stats.histogram
        ],
        scheme=scheme,
        above_design_max=stats.above_design_max,
        share_above_design_max=stats.share_above_design_max,
    )
    if stats.design_max_load_rate is not None:
        response.design_max_load_rate = stats.design_max_load_rate
    return response


# ---- efficiency drift ------------------------------------------------------------------------------------------


def curve_of(entry: CatalogueEntryRow | None) -> EfficiencyCurve | None:
    points = json.loads(entry.curve_json) if entry is not None else []
    return EfficiencyCurve.of(*((float(a), float(b)) for a, b in points)) if points else None


@dataclass(frozen=True)
class DriftRun:
    response: pb.EvaluateEfficiencyDriftResponse
    drifted_tail: list[pb.EfficiencyWindow]  # the consecutive drifted windows that raise the alert
    window_end_s: int
    worst_drift_pp: float


def drift_meters(
    meters: Sequence[MeterRow], asset_id: str, input_ids: Sequence[str], output_ids: Sequence[str]
) -> tuple[list[MeterRow], list[MeterRow]]:
    """The INPUT and OUTPUT energy meters an efficiency compares: those named (each must be an energy meter of the
    asset in that role, named once), else every one of the role, summed (the catalogue curve describes the whole
    unit: a dual-feed UPS has two input meters and either alone would understate its input). All of them must
    share one interval, as an interval counts only when every meter has it."""
    energy = {m.meter_id: m for m in meters if _energy_meter(m)}
    chosen: dict[str, list[MeterRow]] = {}
    found: list[FieldViolation] = []
    for field, role, named in (
        ("input_meter_ids", MeterRole.INPUT, input_ids),
        ("output_meter_ids", MeterRole.OUTPUT, output_ids),
    ):
        if not named:
            chosen[field] = sorted((m for m in energy.values() if m.role == role.value), key=lambda m: m.meter_id)
            continue
        rows: list[MeterRow] = []
        for i, meter_id in enumerate(named):
            row = energy.get(meter_id)
            if row is None or row.role != role.value:
                found.append(FieldViolation(f"{field}[{i}]", f"not an {role.value} energy meter of the asset"))
            elif row in rows:
                found.append(FieldViolation(f"{field}[{i}]", "named twice"))
            else:
                rows.append(row)
        chosen[field] = rows
    if found:
        raise InvalidArgument(found)
    inputs, outputs = chosen["input_meter_ids"], chosen["output_meter_ids"]
    if not inputs or not outputs:
        raise FailedPrecondition(
            "efficiency needs an INPUT and an OUTPUT energy meter on the asset", reason="EFFICIENCY_METERS_MISSING",
            metadata={"asset_id": asset_id},
        )  # fmt: skip
    intervals = {m.interval_s for m in (*inputs, *outputs)}
    if len(intervals) > 1:
        description = (
            "the meters compared have different intervals ("
            + ", ".join(f"{m.meter_id}: {m.interval_s or 'irregular'} s" for m in (*inputs, *outputs))
            + "); an interval counts only when every meter has it"
        )
        if input_ids or output_ids:
            raise InvalidArgument([FieldViolation("input_meter_ids" if input_ids else "output_meter_ids", description)])
        raise FailedPrecondition(
            description + "; name meters of one interval", reason="METER_INTERVALS_DIFFER",
            metadata={"asset_id": asset_id},
        )  # fmt: skip
    return inputs, outputs


def _summed(data: dict[str, store.Columns], rows: Sequence[MeterRow]) -> dict[tuple[int, int], float]:
    """kWh per (start, end) summed over ``rows``, for the intervals every one of them has."""
    total: dict[tuple[int, int], float] = {}
    for index, row in enumerate(rows):
        factor = Unit(row.unit).factor
        starts, ends, _, consumptions, _ = data[row.meter_id]
        mine = {(s, e): c * factor for s, e, c in zip(starts, ends, consumptions, strict=True) if c is not None}
        total = mine if index == 0 else {k: v + mine[k] for k, v in total.items() if k in mine}
    return total


async def efficiency_drift_of(
    session: AsyncSession,
    asset: AssetRow,
    entry: CatalogueEntryRow | None,
    period: Period,
    *,
    window: dt.timedelta,
    threshold_pp: float,
    consecutive: int,
    power_factor: float,
    input_ids: Sequence[str] = (),
    output_ids: Sequence[str] = (),
) -> DriftRun:
    curve = curve_of(entry)
    if curve is None:
        raise FailedPrecondition(
            "the asset's catalogue entry has no efficiency curve", reason="NO_EFFICIENCY_CURVE",
            metadata={"asset_id": asset.asset_id},
        )  # fmt: skip
    meters = await store.asset_meters(session, asset.asset_id)
    inputs, outputs = drift_meters(meters, asset.asset_id, input_ids, output_ids)
    rated = rated_of(asset)
    if rated.dimension is Dimension.POWER:
        rated_kw = rated.value_in(Unit.KW)
    elif rated.dimension is Dimension.APPARENT_POWER:
        rated_kw = rated.value_in(Unit.KVA) * power_factor
    else:
        raise FailedPrecondition(
            f"the asset is rated in {rated.unit.symbol}; a load fraction needs kW or kVA",
            reason="RATING_NOT_POWER", metadata={"asset_id": asset.asset_id},
        )  # fmt: skip
    start_s, end_s = seconds(period.start), seconds(period.end)
    data = await store.series(session, [m.meter_id for m in (*inputs, *outputs)], start_s, end_s)
    energy_in, energy_out = _summed(data, inputs), _summed(data, outputs)
    pairs: list[tuple[int, int, float, float]] = [  # start, end, kWh in, kWh out
        (s, e, kwh, energy_out[(s, e)]) for (s, e), kwh in sorted(energy_in.items()) if (s, e) in energy_out
    ]
    excluded = await _excluded(session, asset.asset_id, [p[0] for p in pairs], [p[1] for p in pairs], Figure.EFFICIENCY)
    step = int(window.total_seconds())
    windows: list[pb.EfficiencyWindow] = []
    drifts: list[EfficiencyDrift] = []
    index = 0
    for w_start in range(start_s, end_s, step):
        w_end = min(w_start + step, end_s)
        e_in = e_out = 0.0
        hours = 0.0
        left_out = 0
        while index < len(pairs) and pairs[index][0] < w_end:
            s, e, kwh_in, kwh_out = pairs[index]
            if index in excluded:
                left_out += 1
            elif e <= w_end:
                e_in += kwh_in
                e_out += kwh_out
                hours += (e - s) / 3600
            index += 1
        message = pb.EfficiencyWindow(
            period=period_to_proto(
                Period(dt.datetime.fromtimestamp(w_start, dt.UTC), dt.datetime.fromtimestamp(w_end, dt.UTC))
            ),
            energy_in_kwh=e_in,
            energy_out_kwh=e_out,
            excluded_intervals=left_out,
        )
        drift: EfficiencyDrift | None = None
        if hours > 0 and e_in > 0 and rated_kw > 0:
            load = e_out / hours / rated_kw
            message.load_fraction = load
            try:
                eta = measured_efficiency(Quantity(e_in, Unit.KWH), Quantity(e_out, Unit.KWH))
            except InvalidArgument:
                eta = None  # output above input: meters swapped or out of step; nothing to compare
            if eta is not None and eta > 0:
                message.measured_efficiency = eta
                drift = efficiency_drift(curve, load, eta, threshold_pp=threshold_pp, policy=ExtrapolationPolicy.REPORT)
                message.position = CURVE_POSITIONS.to_proto(drift.position)
                if drift.expected is not None:
                    message.expected_efficiency = drift.expected
                if drift.drift_pp is not None:
                    message.drift_pp = drift.drift_pp
                message.drifted = drift.drifted
        windows.append(message)
        drifts.append(drift or EfficiencyDrift(0.0, 0.0, None, CurvePosition.INSIDE, None, threshold_pp, False))
    alert = drift_alert(drifts, consecutive)
    tail = windows[-consecutive:] if alert else []
    response = pb.EvaluateEfficiencyDriftResponse(
        asset_id=asset.asset_id,
        windows=windows,
        threshold_pp=threshold_pp,
        consecutive_windows=consecutive,
        alert=alert,
        input_meter_ids=[m.meter_id for m in inputs],
        output_meter_ids=[m.meter_id for m in outputs],
    )
    worst = min((w.drift_pp for w in tail), default=0.0)
    return DriftRun(response, tail, seconds_of_window_end(windows[-1]) if windows else end_s, worst)


def seconds_of_window_end(window: pb.EfficiencyWindow) -> int:
    return int(window.period.end_time.seconds)


# ---- voltage upgrade -------------------------------------------------------------------------------------------


async def voltage_upgrade(
    session: AsyncSession, meter: MeterRow, request: pb.CompareVoltageUpgradeRequest, period: Period
) -> pb.CompareVoltageUpgradeResponse:
    if meter.quantity != MeterQuantity.CURRENT.value or meter.current != "DC" or meter.mode != "AVERAGE":
        raise InvalidArgument([FieldViolation("meter_id", "must be a DC current meter read as AVERAGE")])
    problems: list[FieldViolation] = []
    targets: list[VoltageClass] = []
    for i, number in enumerate(request.targets):
        target = VOLTAGE_CLASSES.required(number, f"targets[{i}]", problems)
        if target is not None:
            targets.append(target)
    material = None
    if request.material:
        material = CONDUCTORS.required(request.material, "material", problems)
    if problems:
        raise InvalidArgument(problems)
    starts, ends, values, _, _ = (
        await store.series(session, [meter.meter_id], seconds(period.start), seconds(period.end))
    )[meter.meter_id]
    if not starts:
        raise FailedPrecondition(
            "no readings in the period", reason="NO_READINGS", metadata={"meter_id": meter.meter_id}
        )
    factor = Unit(meter.unit).factor
    weights = [e - s for s, e in zip(starts, ends, strict=True)]
    current = math.fsum(abs(v) * factor * w for v, w in zip(values, weights, strict=True)) / sum(weights)
    kwargs = {} if material is None else {"material": material}
    resistance = conductor_resistance_ohm(request.length_m, request.cross_section_mm2, **kwargs)  # type: ignore[arg-type]
    comparison = (
        voltage_upgrade_comparison(current, request.voltage_v, resistance, targets)
        if targets
        else voltage_upgrade_comparison(current, request.voltage_v, resistance)
    )

    def loss(value: LineLoss) -> pb.LineLoss:
        return pb.LineLoss(
            voltage_v=value.voltage_v,
            current_a=value.current_a,
            loss_w=value.loss_w,
            voltage_drop_v=value.voltage_drop_v,
            loss_fraction=value.loss_fraction,
        )

    return pb.CompareVoltageUpgradeResponse(
        measured_current_a=current,
        resistance_ohm=resistance,
        present=loss(comparison.present),
        options=[
            pb.UpgradeOption(
                voltage_class=VOLTAGE_CLASSES.to_proto(o.voltage_class),
                loss=loss(o.loss),
                loss_ratio=o.loss_ratio,
                saved_w=o.saved_w,
                saved_kwh_per_year=o.saved_w * HOURS_PER_YEAR / 1000,
            )
            for o in comparison.options
        ],
        readings_used=len(starts),
    )


# ---- high-efficiency share -------------------------------------------------------------------------------------


def procurement_of(asset: AssetRow) -> ProcurementRecord | None:
    if asset.listed_at_procurement is None:
        return None
    grade = (
        GradeRating(asset.grade_at_procurement, asset.grade_standard_at_procurement, asset.grade_edition_at_procurement)
        if asset.grade_at_procurement is not None
        else None
    )
    return ProcurementRecord(asset.listed_at_procurement, grade)


async def share(session: AsyncSession, scope: store.Scope, group_by: Sequence[int]) -> pb.GetEfficientShareResponse:
    rows = await store.assets_in_scope(session, scope)
    by_operator = pb.SHARE_DIMENSION_OPERATOR in group_by
    by_province = pb.SHARE_DIMENSION_PROVINCE in group_by
    by_class = pb.SHARE_DIMENSION_EQUIPMENT_CLASS in group_by
    assets = [
        ShareAsset(
            asset_id=row.asset_id,
            lifecycle_state=LifecycleState(row.lifecycle_state),
            procurement=procurement_of(row),
            equipment_class=EquipmentClass(row.equipment_class),
            operator=row.operator_id,
            province=row.county_code[:2],
            rated_capacity=rated_of(row),
        )
        for row in rows
    ]

    def key(asset: ShareAsset) -> tuple[str, str, str]:
        return (
            asset.operator if by_operator else "",
            asset.province if by_province else "",
            asset.equipment_class.value if by_class else "",
        )

    groups = efficient_share(assets, key)
    response = pb.GetEfficientShareResponse()
    for (operator, province, klass), figures in sorted(groups.items()):
        group = pb.EfficientShareGroup(
            operator_id=operator,
            province_code=province,
            equipment_class=EQUIPMENT_CLASSES.name_to_proto(klass),
            in_service=figures.in_service,
            high_efficiency=figures.high_efficiency,
            share=figures.share or 0.0,
        )
        if figures.capacity_share is not None:
            group.capacity_share = figures.capacity_share
        response.groups.append(group)
    return response
