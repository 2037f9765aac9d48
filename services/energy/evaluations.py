"""Savings evaluations from stored readings: the plan's series aggregated to its slots, the domain's IPMVP
evaluation over them, and the versioned record (draft → verified, corrections as new versions).

Aggregation (:func:`align`): the slots are those of the plan (:func:`services.energy.plans.slot_edges`: a fixed
interval from 00:00 UTC+8, or calendar months). A reading counts towards the slot its start falls in when it lies
wholly inside that slot; a slot is complete when the readings in it cover it exactly (every reading of it
present), and a slot any source misses is missing (NaN), which the domain counts against coverage. Readings are
aggregated before the regression, so 15-minute readings make hourly, daily or monthly points. Energy and volume
meters contribute their interval amounts (``consumption``: the value of an INTERVAL meter, the register delta of a
CUMULATIVE one), summed; the other quantities their time-weighted mean. Independent series contribute by their
aggregation (SUM or MEAN). The boundary energy is the sum of the plan's energy meters in kWh. numpy does the
alignment: a year of 15-minute readings is a few bincounts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.errors import FailedPrecondition
from services.energy import store
from services.energy.domain.readings import MeterQuantity, Period
from services.energy.domain.savings import (
    AcceptanceThresholds,
    AvoidedEnergy,
    CriterionResult,
    Evaluation,
    EvaluationStatus,
    MeasureType,
    NonRoutineAdjustment,
    NormalisedResult,
    NormalisedSavings,
    SavingsResult,
    SavingsUncertainty,
    SeriesData,
    SufficiencyVerdict,
    evaluate_savings,
)
from services.energy.domain.series import Aggregation
from services.energy.domain.units import Unit
from services.energy.mapping import (
    CRITERIA,
    EVALUATION_STATUSES,
    IPMVP_OPTIONS,
    MEASURE_TYPES,
    NMBE_CONVENTIONS,
    PERIOD_ROLES,
    model_from_proto,
    moment_to_proto,
    savings_result_to_proto,
    utc,
)
from services.energy.plans import CheckedPlan, Source, slot_edges
from services.energy.tables import EvaluationRow, IndependentSeriesRow, MeterRow

FloatArray = npt.NDArray[np.float64]


def fixed_edges(period: tuple[int, int], interval_s: int) -> npt.NDArray[np.int64]:
    """Boundaries of the whole ``interval_s`` slots of ``period`` (Unix seconds), from its start."""
    p0, p1 = period
    return p0 + interval_s * np.arange(max((p1 - p0) // interval_s, 0) + 1, dtype=np.int64)


def align(
    starts: Sequence[int],
    ends: Sequence[int],
    values: Sequence[float | None],
    edges: Sequence[int] | npt.NDArray[np.int64],
    *,
    summed: bool,
) -> FloatArray:
    """One value per slot between consecutive ``edges`` (NaN where the slot is not covered completely): the sum of
    the readings inside it, or their time-weighted mean; see the module doc."""
    bounds = np.asarray(edges, dtype=np.int64)
    slots = max(bounds.size - 1, 0)
    result = np.full(slots, np.nan)
    if not len(starts) or slots == 0:
        return result
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    slot = np.searchsorted(bounds, s, side="right") - 1
    inside = (slot >= 0) & (slot < slots)
    slot = np.clip(slot, 0, slots - 1)
    keep = inside & (e <= bounds[slot + 1]) & (e > s) & np.isfinite(v)
    slot, s, e, v = slot[keep], s[keep], e[keep], v[keep]
    length = (e - s).astype(np.float64)
    covered = np.bincount(slot, weights=length, minlength=slots)
    amount = np.bincount(slot, weights=v if summed else v * length, minlength=slots)
    span = np.diff(bounds).astype(np.float64)
    complete = covered == span
    result[complete] = amount[complete] if summed else amount[complete] / span[complete]
    return result


def _span(period: Period) -> tuple[int, int]:
    return int(period.start.timestamp()), int(period.end.timestamp())


class Sources:
    """The meters and independent series a plan reads, by id."""

    def __init__(self, meters: Mapping[str, MeterRow], series: Mapping[str, IndependentSeriesRow]) -> None:
        self.meters, self.series = meters, series

    @classmethod
    async def of(cls, session: AsyncSession, plan: CheckedPlan) -> Sources:
        wanted = [*plan.variables, *plan.normal_variables]
        meters = await store.meters(session, {*plan.energy_meter_ids, *(s.meter_id for s in wanted if s.meter_id)})
        series = await store.independent_series_many(session, {s.series_id for s in wanted if s.series_id})
        return cls(meters, series)


async def variable_series(
    session: AsyncSession, sources: Sources, variables: Sequence[Source], edges: npt.NDArray[np.int64]
) -> dict[str, FloatArray]:
    """Each variable aggregated to the slots between ``edges``."""
    span = (int(edges[0]), int(edges[-1]))
    meter_data = await store.series(session, sorted({v.meter_id for v in variables if v.meter_id}), *span)
    series_data = await store.series(
        session, sorted({v.series_id for v in variables if v.series_id}), *span, source=store.SERIES_VALUE
    )
    found: dict[str, FloatArray] = {}
    for variable in variables:
        if variable.meter_id:
            starts, ends, values, consumptions, _ = meter_data[variable.meter_id]
            integrated = MeterQuantity(sources.meters[variable.meter_id].quantity).integrated
            found[variable.name] = align(starts, ends, consumptions if integrated else values, edges, summed=integrated)
        else:
            starts, ends, values, _, _ = series_data[variable.series_id]
            summed = sources.series[variable.series_id].aggregation == Aggregation.SUM.value
            found[variable.name] = align(starts, ends, values, edges, summed=summed)
    return found


async def period_series(session: AsyncSession, plan: CheckedPlan, sources: Sources, period: Period) -> SeriesData:
    """The boundary energy (kWh) and every variable over the slots of ``period``."""
    edges = slot_edges(period, plan.interval_s)
    data = await store.series(session, sorted(set(plan.energy_meter_ids)), int(edges[0]), int(edges[-1]))
    energy: FloatArray | None = None
    for meter_id in plan.energy_meter_ids:
        starts, ends, _, consumptions, _ = data[meter_id]
        factor = Unit(sources.meters[meter_id].unit).factor  # into kWh
        aligned = align(starts, ends, consumptions, edges, summed=True) * factor
        energy = aligned if energy is None else energy + aligned  # NaN in any meter leaves the slot missing
    assert energy is not None
    return SeriesData(energy=energy, variables=await variable_series(session, sources, plan.variables, edges))


async def compute(
    session: AsyncSession, plan: CheckedPlan, adjustments: Sequence[NonRoutineAdjustment]
) -> SavingsResult:
    sources = await Sources.of(session, plan)
    baseline = await period_series(session, plan, sources, plan.plan.baseline_period)
    reporting = await period_series(session, plan, sources, plan.plan.reporting_period)
    if not np.isfinite(np.asarray(baseline.energy)).any():
        raise FailedPrecondition(
            "the baseline period holds no complete interval of the boundary's energy meters",
            reason="NO_BASELINE_DATA",
        )
    normal = None
    if plan.plan.normal_period is not None:
        edges = slot_edges(plan.plan.normal_period, plan.interval_s)
        normal = await variable_series(session, sources, plan.normal_variables, edges)
    return evaluate_savings(
        plan.plan, plan.measure, baseline, reporting, adjustments=adjustments, normal_conditions=normal
    )


# ---- the stored record -----------------------------------------------------------------------------------------


def _opt(message: object, name: str) -> float | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


def savings_result_from_proto(message: pb.SavingsResult) -> SavingsResult:
    """The domain result back from its stored message (the inverse of ``savings_result_to_proto``)."""
    m, u, v = message.model, message.uncertainty, message.verdict
    t = v.thresholds
    option = IPMVP_OPTIONS.from_proto(message.option)
    convention = NMBE_CONVENTIONS.from_proto(message.nmbe_convention)
    assert option is not None and convention is not None
    criteria = []
    for c in v.criteria:
        criterion, role = CRITERIA.from_proto(c.criterion), PERIOD_ROLES.from_proto(c.applies_to)
        assert criterion is not None and role is not None
        criteria.append(CriterionResult(criterion, role, _opt(c, "value"), c.threshold, c.passed))
    return SavingsResult(
        option=option,
        baseline_period=_period_of(message.baseline_period),
        reporting_period=_period_of(message.reporting_period),
        variables=tuple(message.variables),
        model=model_from_proto(m),
        avoided=AvoidedEnergy(
            message.adjusted_baseline_kwh, message.reporting_kwh, message.non_routine_kwh, message.reporting_points
        ),
        adjustments=tuple(NonRoutineAdjustment(a.amount_kwh, a.note) for a in message.adjustments),
        uncertainty=SavingsUncertainty(
            u.confidence, _opt(u, "t"), u.degrees_of_freedom, u.alpha, _opt(u, "fsu"), _opt(u, "absolute_kwh")
        ),
        baseline_coverage=message.baseline_coverage,
        reporting_coverage=message.reporting_coverage,
        verdict=SufficiencyVerdict(
            v.passed,
            tuple(criteria),
            AcceptanceThresholds(
                rule_set=t.rule_set,
                max_cv_rmse=t.max_cv_rmse,
                max_abs_nmbe=t.max_abs_nmbe,
                min_coverage=t.min_coverage,
                max_fsu=_opt(t, "max_fsu"),
                fsu_confidence=t.fsu_confidence,
                min_r_squared=_opt(t, "min_r_squared"),
                source=t.source,
            ),
        ),
        nmbe_convention=convention,
        cv_rmse_variant=message.cv_rmse_variant,
        normalised=normalised_from_proto(message.normalised) if message.HasField("normalised") else None,
    )


def _period_of(message: pb.Period) -> Period:
    return Period(message.start_time.ToDatetime(tzinfo=dt.UTC), message.end_time.ToDatetime(tzinfo=dt.UTC))


def normalised_from_proto(message: pb.NormalisedSavings) -> NormalisedResult:
    return NormalisedResult(
        period=_period_of(message.normal_period),
        reporting_model=model_from_proto(message.reporting_model),
        savings=NormalisedSavings(message.baseline_kwh, message.reporting_kwh),
        points=message.points,
        coverage=message.coverage,
    )


def evaluation_of(row: EvaluationRow) -> Evaluation:
    message = pb.Evaluation.FromString(row.payload)
    return Evaluation(
        evaluation_id=row.evaluation_id,
        measure_id=row.measure_id,
        version=row.version,
        status=EvaluationStatus(row.status),
        result=savings_result_from_proto(message.result),
        verified_by=row.verified_by or None,
        verified_at=utc(row.verified_at) if row.verified_at else None,
        supersedes=row.supersedes,
        correction_note=row.correction_note,
    )


def evaluation_message(evaluation: Evaluation, row: EvaluationRow) -> pb.Evaluation:
    message = pb.Evaluation(
        evaluation_id=evaluation.evaluation_id,
        version=evaluation.version,
        plan_id=row.plan_id,
        measure_id=evaluation.measure_id,
        measure_type=MEASURE_TYPES.to_proto(MeasureType(row.measure_type)),
        site_id=row.site_id,
        operator_id=row.operator_id,
        status=EVALUATION_STATUSES.to_proto(evaluation.status),
        result=savings_result_to_proto(evaluation.result),
        verified_by=evaluation.verified_by or "",
        supersedes=evaluation.supersedes or 0,
        correction_note=evaluation.correction_note,
        create_time=moment_to_proto(utc(row.created_at)),
    )
    if evaluation.verified_at is not None:
        message.verify_time.FromDatetime(evaluation.verified_at)
    return message


def write_row(row: EvaluationRow, evaluation: Evaluation, now: dt.datetime) -> pb.Evaluation:
    """Bring ``row`` in line with ``evaluation`` (status, verification, savings, payload); returns the message."""
    row.status = evaluation.status.value
    row.savings_kwh = evaluation.result.avoided.savings_kwh
    row.verified_by = evaluation.verified_by or ""
    row.verified_at = evaluation.verified_at
    row.supersedes = evaluation.supersedes
    row.correction_note = evaluation.correction_note
    row.updated_at = now
    message = evaluation_message(evaluation, row)
    row.payload = message.SerializeToString(deterministic=True)
    return message
