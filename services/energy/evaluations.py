"""Savings evaluations from stored readings: the plan's series aligned to its interval, the domain's IPMVP
evaluation over them, and the versioned record (draft → verified, corrections as new versions).

Alignment (:func:`align`): a reading counts towards the slot ``(start - period.start) // interval`` when it lies
wholly inside that slot; a slot is complete when the readings in it cover it exactly (every meter interval of it
present). Energy and volume meters contribute their interval amounts (``consumption``: the value of an INTERVAL
meter, the register delta of a CUMULATIVE one), summed; the other quantities their time-weighted mean. The boundary
energy is the sum of the plan's energy meters in kWh; a slot any of them misses is missing (NaN), and the domain
counts it against coverage. numpy does the alignment: a year of 15-minute readings is a few bincounts.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    BaselineModel,
    CriterionResult,
    Evaluation,
    EvaluationStatus,
    IpmvpOption,
    Measure,
    MeasureType,
    MvPlan,
    NonRoutineAdjustment,
    SavingsResult,
    SavingsUncertainty,
    SeriesData,
    SufficiencyVerdict,
    evaluate_savings,
)
from services.energy.domain.units import Unit
from services.energy.mapping import (
    CRITERIA,
    EVALUATION_STATUSES,
    IPMVP_OPTIONS,
    MEASURE_TYPES,
    NMBE_CONVENTIONS,
    PERIOD_ROLES,
    moment_to_proto,
    savings_result_to_proto,
    utc,
)
from services.energy.tables import EvaluationRow, MeasureRow, MeterRow, MvPlanRow

FloatArray = npt.NDArray[np.float64]


def align(
    starts: Sequence[int],
    ends: Sequence[int],
    values: Sequence[float | None],
    period: tuple[int, int],
    interval_s: int,
    *,
    summed: bool,
) -> FloatArray:
    """One value per slot of ``period`` (NaN where the slot is not covered completely); see the module doc."""
    p0, p1 = period
    slots = (p1 - p0) // interval_s
    result = np.full(slots, np.nan)
    if not starts or slots <= 0:
        return result
    s = np.asarray(starts, dtype=np.int64)
    e = np.asarray(ends, dtype=np.int64)
    v = np.asarray([np.nan if x is None else x for x in values], dtype=np.float64)
    slot = (s - p0) // interval_s
    keep = (s >= p0) & (e <= p0 + slots * interval_s) & ((e - 1 - p0) // interval_s == slot) & np.isfinite(v)
    slot, s, e, v = slot[keep], s[keep], e[keep], v[keep]
    length = (e - s).astype(np.float64)
    covered = np.bincount(slot, weights=length, minlength=slots)
    amount = np.bincount(slot, weights=v if summed else v * length, minlength=slots)
    complete = covered == interval_s
    result[complete] = amount[complete] if summed else amount[complete] / interval_s
    return result


@dataclass(frozen=True)
class PlanInputs:
    plan: MvPlan
    measure: Measure
    energy_meter_ids: tuple[str, ...]
    variable_meters: tuple[tuple[str, str], ...]  # (name, meter_id)


def plan_inputs(plan: MvPlanRow, measure: MeasureRow) -> PlanInputs:
    variables = tuple((str(n), str(m)) for n, m in json.loads(plan.variables_json))
    domain_plan = MvPlan(
        option=IpmvpOption(plan.option),
        measurement_boundary=tuple(i for i in plan.boundary.split(",") if i),
        baseline_period=Period(utc(plan.baseline_start), utc(plan.baseline_end)),
        reporting_period=Period(utc(plan.reporting_start), utc(plan.reporting_end)),
        interval=dt.timedelta(seconds=plan.interval_s),
        independent_variables=tuple(n for n, _ in variables),
        confidence=plan.confidence,
    )
    domain_measure = Measure(
        measure_id=measure.measure_id,
        measure_type=MeasureType(measure.measure_type),
        installation=Period(utc(measure.installation_start), utc(measure.installation_end)),
        asset_ids=tuple(i for i in measure.asset_ids.split(",") if i),
    )
    return PlanInputs(domain_plan, domain_measure, tuple(i for i in plan.energy_meter_ids.split(",") if i), variables)


def _span(period: Period) -> tuple[int, int]:
    return int(period.start.timestamp()), int(period.end.timestamp())


async def period_series(
    session: AsyncSession, inputs: PlanInputs, meters: Mapping[str, MeterRow], period: Period
) -> SeriesData:
    span = _span(period)
    interval = int(inputs.plan.interval.total_seconds())
    ids = {*inputs.energy_meter_ids, *(m for _, m in inputs.variable_meters)}
    data = await store.series(session, sorted(ids), *span)
    energy: FloatArray | None = None
    for meter_id in inputs.energy_meter_ids:
        starts, ends, _, consumptions, _ = data[meter_id]
        factor = Unit(meters[meter_id].unit).factor  # into kWh
        aligned = align(starts, ends, consumptions, span, interval, summed=True) * factor
        energy = aligned if energy is None else energy + aligned  # NaN in any meter leaves the slot missing
    assert energy is not None
    variables: dict[str, FloatArray] = {}
    for name, meter_id in inputs.variable_meters:
        starts, ends, values, consumptions, _ = data[meter_id]
        integrated = MeterQuantity(meters[meter_id].quantity).integrated
        variables[name] = align(starts, ends, consumptions if integrated else values, span, interval, summed=integrated)
    return SeriesData(energy=energy, variables=variables)


async def compute(
    session: AsyncSession,
    inputs: PlanInputs,
    meters: Mapping[str, MeterRow],
    adjustments: Sequence[NonRoutineAdjustment],
) -> SavingsResult:
    baseline = await period_series(session, inputs, meters, inputs.plan.baseline_period)
    reporting = await period_series(session, inputs, meters, inputs.plan.reporting_period)
    if not np.isfinite(np.asarray(baseline.energy)).any():
        raise FailedPrecondition(
            "the baseline period holds no complete interval of the boundary's energy meters",
            reason="NO_BASELINE_DATA",
        )
    return evaluate_savings(inputs.plan, inputs.measure, baseline, reporting, adjustments=adjustments)


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
        baseline_period=Period(
            message.baseline_period.start_time.ToDatetime(tzinfo=dt.UTC),
            message.baseline_period.end_time.ToDatetime(tzinfo=dt.UTC),
        ),
        reporting_period=Period(
            message.reporting_period.start_time.ToDatetime(tzinfo=dt.UTC),
            message.reporting_period.end_time.ToDatetime(tzinfo=dt.UTC),
        ),
        variables=tuple(message.variables),
        model=BaselineModel(
            variables=tuple(m.variables),
            intercept=m.intercept,
            coefficients=tuple(m.coefficients),
            n=m.n,
            r_squared=m.r_squared,
            adjusted_r_squared=m.adjusted_r_squared,
            cv_rmse=m.cv_rmse,
            nmbe=m.nmbe,
            mean_observed=m.mean_observed,
            rho1=m.rho1,
            n_prime=m.n_prime,
        ),
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
