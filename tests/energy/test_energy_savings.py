"""Measures, M&V plans and savings evaluations over gRPC on SQLite and PostgreSQL: an evaluation computed from
stored readings and an independent-variable series, verification that freezes it, a correction as version n + 1,
and the totals of verified savings."""

from __future__ import annotations

import datetime as dt
import random

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from greenmesh.energy.v1 import energy_pb2 as pb
from tests.energy.conftest import T0, Energy, has_violation, minutes, period, readings, reason_of
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM

HOUR = 3600
BASELINE_DAYS = 20
INSTALLED = (T0 + dt.timedelta(days=BASELINE_DAYS), T0 + dt.timedelta(days=BASELINE_DAYS + 1))
REPORTING_DAYS = 20


def series() -> tuple[list[float], list[float]]:
    """Hourly IT load (kWh) and facility energy = 40 + 1.3 · IT (+ noise), 5 % less after the installation."""
    rng = random.Random(7)
    hours = 24 * (BASELINE_DAYS + 1 + REPORTING_DAYS)
    it = [round(300 + 60 * ((h % 24) / 24) + rng.gauss(0, 5), 3) for h in range(hours)]
    energy = []
    for h, load in enumerate(it):
        value = 40 + 1.3 * load + rng.gauss(0, 2)
        energy.append(round(value * (0.95 if h >= 24 * (BASELINE_DAYS + 1) else 1.0), 3))
    return it, energy


async def setup(energy: Energy) -> tuple[pb.Measure, pb.Meter, pb.Meter]:
    facility = await energy.meter(role=pb.METER_ROLE_FACILITY_TOTAL, interval=minutes(60))
    it_meter = await energy.meter(
        role=pb.METER_ROLE_IT_LOAD, it_measurement_point=pb.IT_MEASUREMENT_POINT_UPS_OUTPUT, interval=minutes(60)
    )
    it, consumption = series()
    await energy.upsert(facility, readings(T0, consumption, step=HOUR))
    await energy.upsert(it_meter, readings(T0, it, step=HOUR))
    asset = await energy.asset()
    measure = (
        await energy.call(
            "CreateMeasure",
            pb.CreateMeasureRequest(
                measure=pb.Measure(
                    site_id=energy.data_center.id,
                    measure_type=pb.MEASURE_TYPE_AI_CONTROL,
                    description="AI cooling control",
                    asset_ids=[asset.asset_id],
                    installation=period(*INSTALLED),
                    claimed_savings_kwh_per_year=150_000,
                )
            ),
            energy.data_center.caller,
        )
    ).measure
    return measure, facility, it_meter


def plan_for(measure: pb.Measure, facility: pb.Meter, it_meter: pb.Meter, **fields: object) -> pb.MvPlan:
    plan = pb.MvPlan(
        measure_id=measure.measure_id,
        option=pb.IPMVP_OPTION_C,
        measurement_boundary=[measure.site_id],
        energy_meter_ids=[facility.meter_id],
        baseline_period=period(T0, INSTALLED[0]),
        reporting_period=period(INSTALLED[1], INSTALLED[1] + dt.timedelta(days=REPORTING_DAYS)),
        interval=minutes(60),
        independent_variables=[pb.IndependentVariable(name="it_load_kwh", meter_id=it_meter.meter_id)],
    )
    for name, value in fields.items():
        if isinstance(value, pb.Period | Duration):
            getattr(plan, name).CopyFrom(value)
        else:
            setattr(plan, name, value)
    return plan


async def test_plans_must_fit_the_measure(energy: Energy) -> None:
    measure, facility, it_meter = await setup(energy)
    overlapping = plan_for(
        measure,
        facility,
        it_meter,
        baseline_period=period(T0, INSTALLED[0] + dt.timedelta(hours=6)),
        reporting_period=period(INSTALLED[0] + dt.timedelta(hours=12), INSTALLED[1] + dt.timedelta(days=5)),
    )
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=overlapping), energy.data_center.caller)
    assert has_violation(error, "plan.baseline_period.end", "installation")
    assert has_violation(error, "plan.reporting_period.start", "installation")
    odd = plan_for(measure, facility, it_meter, interval=minutes(45))
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=odd), energy.data_center.caller)
    assert has_violation(error, "plan.interval", "multiple")
    unknown = plan_for(measure, facility, it_meter)
    unknown.energy_meter_ids.append("no-such-meter")
    unknown.independent_variables.append(pb.IndependentVariable(name="Outdoor Temp", meter_id=it_meter.meter_id))
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=unknown), energy.data_center.caller)
    assert has_violation(error, "plan.energy_meter_ids[1]", "no such meter")
    unknown.energy_meter_ids.pop()
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=unknown), energy.data_center.caller)
    assert has_violation(error, "plan.independent_variables[1]", "snake_case")
    denied = await energy.refused(
        "CreateMvPlan", pb.CreateMvPlanRequest(plan=plan_for(measure, facility, it_meter)), energy.shenzhen.caller
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await energy.count("mv_plan") == 0


async def test_an_evaluation_is_computed_verified_frozen_and_corrected(energy: Energy) -> None:
    measure, facility, it_meter = await setup(energy)
    plan = (
        await energy.call(
            "CreateMvPlan",
            pb.CreateMvPlanRequest(plan=plan_for(measure, facility, it_meter)),
            energy.data_center.caller,
        )
    ).plan
    assert plan.confidence == 0.9

    draft = (
        await energy.call("EvaluateSavings", pb.EvaluateSavingsRequest(plan_id=plan.plan_id), energy.data_center.caller)
    ).evaluation
    result = draft.result
    assert (draft.version, draft.status) == (1, pb.EVALUATION_STATUS_DRAFT)
    assert result.model.n == 24 * BASELINE_DAYS and result.reporting_points == 24 * REPORTING_DAYS
    assert result.model.coefficients[0] == pytest.approx(1.3, abs=0.05)
    assert result.savings_fraction == pytest.approx(0.05, abs=0.005)
    assert result.baseline_coverage == 1.0 and result.reporting_coverage == 1.0
    assert result.verdict.passed and result.verdict.thresholds.rule_set == "G14_BASELINE_HOURLY"
    assert result.nmbe_convention == pb.NMBE_CONVENTION_OBSERVED_MINUS_PREDICTED
    assert result.uncertainty.HasField("fsu") and result.uncertainty.confidence == 0.9

    # A draft may be recomputed, here with a documented non-routine adjustment.
    revised = (
        await energy.call(
            "EvaluateSavings",
            pb.EvaluateSavingsRequest(
                plan_id=plan.plan_id,
                adjustments=[pb.NonRoutineAdjustment(amount_kwh=-500, note="a row of racks removed on day 25")],
            ),
            energy.data_center.caller,
        )
    ).evaluation
    assert (revised.evaluation_id, revised.version) == (draft.evaluation_id, 1)
    assert revised.result.non_routine_kwh == -500
    assert revised.result.savings_kwh == pytest.approx(result.savings_kwh - 500)

    # Verification: not by the enterprise itself, not by another province's regulator.
    verify = pb.VerifyEvaluationRequest(evaluation_id=draft.evaluation_id, version=1)
    for caller in (energy.data_center.caller, GUANGDONG_REGULATOR):
        denied = await energy.refused("VerifyEvaluation", verify, caller)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    verified = (await energy.call("VerifyEvaluation", verify, JIANGSU_REGULATOR)).evaluation
    assert verified.status == pb.EVALUATION_STATUS_VERIFIED
    assert verified.verified_by == JIANGSU_REGULATOR.participant_id and verified.HasField("verify_time")
    events = [
        pb.EvaluationVerified.FromString(p) for p in await energy.outbox("greenmesh.energy.v1.EvaluationVerified")
    ]
    assert [e.evaluation for e in events] == [verified]

    # Frozen: neither recomputed nor verified again; the stored version does not move.
    frozen = await energy.refused(
        "EvaluateSavings", pb.EvaluateSavingsRequest(plan_id=plan.plan_id), energy.data_center.caller
    )
    assert frozen.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(frozen) == "EVALUATION_FROZEN"
    twice = await energy.refused("VerifyEvaluation", verify, PLATFORM)
    assert reason_of(twice) == "EVALUATION_FROZEN"
    got = await energy.call("GetEvaluation", pb.GetEvaluationRequest(evaluation_id=draft.evaluation_id), PLATFORM)
    assert got.evaluation == verified and list(got.versions) == [1]

    # The totals count the verified version.
    totals = await energy.call(
        "GetVerifiedSavingsTotals",
        pb.GetVerifiedSavingsTotalsRequest(group_by=[pb.SAVINGS_DIMENSION_MEASURE_TYPE, pb.SAVINGS_DIMENSION_PROVINCE]),
        JIANGSU_REGULATOR,
    )
    assert [(t.measure_type, t.province_code, t.evaluations) for t in totals.totals] == [
        (pb.MEASURE_TYPE_AI_CONTROL, "32", 1)
    ]
    assert totals.totals[0].verified_savings_kwh == pytest.approx(verified.result.savings_kwh)

    # A correction is version 2, a draft naming the version it supersedes; version 1 stays as it was.
    no_note = await energy.refused(
        "CorrectEvaluation", pb.CorrectEvaluationRequest(evaluation_id=draft.evaluation_id), energy.data_center.caller
    )
    assert has_violation(no_note, "note")
    corrected = (
        await energy.call(
            "CorrectEvaluation",
            pb.CorrectEvaluationRequest(evaluation_id=draft.evaluation_id, note="the adjustment was double counted"),
            energy.data_center.caller,
        )
    ).evaluation
    assert (corrected.version, corrected.status, corrected.supersedes) == (2, pb.EVALUATION_STATUS_DRAFT, 1)
    assert corrected.result.non_routine_kwh == 0 and corrected.result.savings_kwh == pytest.approx(result.savings_kwh)
    first = await energy.call(
        "GetEvaluation", pb.GetEvaluationRequest(evaluation_id=draft.evaluation_id, version=1), JIANGSU_REGULATOR
    )
    assert first.evaluation == verified and list(first.versions) == [1, 2]
    again = await energy.refused(
        "CorrectEvaluation",
        pb.CorrectEvaluationRequest(evaluation_id=draft.evaluation_id, note="once more"),
        energy.data_center.caller,
    )
    assert reason_of(again) == "EVALUATION_NOT_VERIFIED"
    stale = await energy.refused(
        "VerifyEvaluation", pb.VerifyEvaluationRequest(evaluation_id=draft.evaluation_id, version=1), PLATFORM
    )
    assert reason_of(stale) == "NOT_LATEST_VERSION"
    # Until version 2 is verified the totals keep version 1; then they count version 2 only.
    await energy.call(
        "VerifyEvaluation", pb.VerifyEvaluationRequest(evaluation_id=draft.evaluation_id, version=2), PLATFORM
    )
    totals = await energy.call(
        "GetVerifiedSavingsTotals",
        pb.GetVerifiedSavingsTotalsRequest(group_by=[pb.SAVINGS_DIMENSION_OPERATOR]),
        PLATFORM,
    )
    assert [(t.operator_id, t.evaluations) for t in totals.totals] == [(energy.data_center.operator.participant_id, 1)]
    assert totals.totals[0].verified_savings_kwh == pytest.approx(corrected.result.savings_kwh)
    assert (
        await energy.call("GetVerifiedSavingsTotals", pb.GetVerifiedSavingsTotalsRequest(), energy.shenzhen.caller)
    ).totals == []


async def test_an_evaluation_short_of_data_cannot_be_verified(energy: Energy) -> None:
    measure, facility, it_meter = await setup(energy)
    # The reporting period runs 20 days past the readings: coverage 50 %.
    long = plan_for(
        measure,
        facility,
        it_meter,
        reporting_period=period(INSTALLED[1], INSTALLED[1] + dt.timedelta(days=2 * REPORTING_DAYS)),
    )
    plan = (await energy.call("CreateMvPlan", pb.CreateMvPlanRequest(plan=long), energy.data_center.caller)).plan
    evaluation = (
        await energy.call("EvaluateSavings", pb.EvaluateSavingsRequest(plan_id=plan.plan_id), PLATFORM)
    ).evaluation
    assert evaluation.result.reporting_coverage == pytest.approx(0.5)
    assert not evaluation.result.verdict.passed
    refused = await energy.refused(
        "VerifyEvaluation", pb.VerifyEvaluationRequest(evaluation_id=evaluation.evaluation_id), JIANGSU_REGULATOR
    )
    assert reason_of(refused) == "SUFFICIENCY_NOT_MET"
    assert await energy.outbox("greenmesh.energy.v1.EvaluationVerified") == []
