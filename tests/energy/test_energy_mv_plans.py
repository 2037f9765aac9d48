"""M&V plans over gRPC on SQLite and PostgreSQL, beyond the hourly meter-only case of test_energy_savings:
independent variables from independent series (any series, not only a meter of the site), normalised savings on
stated normal conditions, daily and monthly plans whose readings are aggregated to the plan's slots before the
regression, and reading back measures and plans (GetMeasure, ListMeasures, GetMvPlan)."""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from sqlalchemy import text

from greenmesh.energy.v1 import energy_pb2 as pb
from services.energy.domain.savings import Granularity, fsu_alpha
from tests.energy.conftest import CN, T0, Energy, Site, has_violation, minutes, period, readings, reason_of, ts
from tests.energy.test_energy_series import create_series
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM

HOUR = 3600
DAY = 86_400
BASELINE = (T0, T0 + dt.timedelta(days=20))
INSTALLED = (T0 + dt.timedelta(days=20), T0 + dt.timedelta(days=21))
REPORTING = (T0 + dt.timedelta(days=21), T0 + dt.timedelta(days=41))
HOURS = 24 * 41


async def create_measure(
    energy: Energy, installation: tuple[dt.datetime, dt.datetime] = INSTALLED, site: Site | None = None, **fields: Any
) -> pb.Measure:
    site = site or energy.data_center
    measure = pb.Measure(
        site_id=site.id,
        measure_type=fields.pop("measure_type", pb.MEASURE_TYPE_AI_CONTROL),
        installation=period(*installation),
        **fields,
    )
    return (await energy.call("CreateMeasure", pb.CreateMeasureRequest(measure=measure), site.caller)).measure  # type: ignore[no-any-return]


async def create_plan(energy: Energy, plan: pb.MvPlan, site: Site | None = None) -> pb.MvPlan:
    caller = (site or energy.data_center).caller
    return (await energy.call("CreateMvPlan", pb.CreateMvPlanRequest(plan=plan), caller)).plan  # type: ignore[no-any-return]


async def delete_reading(energy: Energy, meter: pb.Meter, start: dt.datetime) -> None:
    """Remove one stored reading behind the service's back: a gap in the meter's data."""
    async with energy.runtime.database.transaction() as session:
        connection = await session.connection()
        await connection.execute(
            text("DELETE FROM reading WHERE meter_id = :m AND start_s = :s"),
            {"m": meter.meter_id, "s": int(start.timestamp())},
        )


async def evaluate(energy: Energy, plan: pb.MvPlan) -> pb.Evaluation:
    reply = await energy.call("EvaluateSavings", pb.EvaluateSavingsRequest(plan_id=plan.plan_id), PLATFORM)
    return reply.evaluation  # type: ignore[no-any-return]


# ---- independent series as variables; normalised savings ------------------------------------------------------


def hourly_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IT load (kWh per hour), outdoor temperature (°C) and facility energy: E = 40 + 1.3·IT + 2·T before the
    installation, 0.95 of it after (exact, so the two models are known)."""
    rng = np.random.default_rng(5)
    it = np.round(300 + 40 * rng.random(HOURS), 3)
    temperature = np.round(10 + 15 * rng.random(HOURS), 2)
    energy = 40 + 1.3 * it + 2 * temperature
    energy[24 * 21 :] *= 0.95
    return it, temperature, np.round(energy, 6)


async def hourly_site(energy: Energy) -> tuple[pb.Meter, pb.IndependentSeries, pb.IndependentSeries]:
    it, temperature, consumption = hourly_inputs()
    facility = await energy.meter(role=pb.METER_ROLE_FACILITY_TOTAL, interval=minutes(60))
    await energy.upsert(facility, readings(T0, list(consumption), step=HOUR))
    it_series = await create_series(
        energy, name="it_load_kwh", unit=pb.UNIT_KWH, interval=minutes(60), source="DCIM export"
    )
    temp_series = await create_series(
        energy, name="outdoor_temp_c", unit=pb.UNIT_DEG_C, interval=minutes(60), source="CMA station 58238"
    )
    for series, values in ((it_series, it), (temp_series, temperature)):
        await energy.call(
            "UpsertSeriesValues",
            pb.UpsertSeriesValuesRequest(series_id=series.series_id, values=readings(T0, list(values), step=HOUR)),
            energy.data_center.caller,
        )
    return facility, it_series, temp_series


async def test_series_variables_and_normalised_savings(energy: Energy) -> None:
    facility, it_series, temp_series = await hourly_site(energy)
    # A normal-year temperature profile for the first week, kept as its own series.
    normal_temps = np.round(12 + 6 * np.sin(np.arange(24 * 7) / 24 * 2 * np.pi), 3)
    tmy = await create_series(energy, name="tmy_temp_c", unit=pb.UNIT_DEG_C, interval=minutes(60), source="TMY")
    await energy.call(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=tmy.series_id, values=readings(T0, list(normal_temps), step=HOUR)),
        energy.data_center.caller,
    )
    measure = await create_measure(energy)
    plan = pb.MvPlan(
        measure_id=measure.measure_id,
        option=pb.IPMVP_OPTION_C,
        measurement_boundary=[energy.data_center.id],
        energy_meter_ids=[facility.meter_id],
        baseline_period=period(*BASELINE),
        reporting_period=period(*REPORTING),
        interval=minutes(60),
        independent_variables=[
            pb.IndependentVariable(name="it_load_kwh", series_id=it_series.series_id),
            pb.IndependentVariable(name="outdoor_temp_c", series_id=temp_series.series_id),
        ],
        normal_conditions=pb.NormalConditions(
            period=period(T0, T0 + dt.timedelta(days=7)),
            variables=[pb.IndependentVariable(name="outdoor_temp_c", series_id=tmy.series_id)],
        ),
    )
    created = await create_plan(energy, plan)
    # Every variable's normal source is stated: the IT load keeps its own series, the temperature takes the TMY.
    assert [(v.name, v.series_id) for v in created.normal_conditions.variables] == [
        ("it_load_kwh", it_series.series_id),
        ("outdoor_temp_c", tmy.series_id),
    ]
    assert created.independent_variables[0].WhichOneof("source") == "series_id"

    evaluation = await evaluate(energy, created)
    result = evaluation.result
    assert result.model.n == 24 * 20 and result.reporting_points == 24 * 20
    assert list(result.model.coefficients) == pytest.approx([1.3, 2.0], abs=1e-6)
    assert result.savings_fraction == pytest.approx(0.05, abs=1e-9)
    normalised = result.normalised
    assert list(normalised.reporting_model.coefficients) == pytest.approx([1.235, 1.9], abs=1e-6)
    assert normalised.reporting_model.intercept == pytest.approx(38.0, abs=1e-4)
    it, _, _ = hourly_inputs()
    week = slice(0, 24 * 7)
    expected_base = float(np.sum(40 + 1.3 * it[week] + 2 * normal_temps))
    assert normalised.baseline_kwh == pytest.approx(expected_base, rel=1e-9)
    assert normalised.savings_kwh == pytest.approx(0.05 * expected_base, rel=1e-6)
    assert normalised.savings_fraction == pytest.approx(0.05, abs=1e-9)
    assert (normalised.points, normalised.coverage) == (24 * 7, 1.0)
    assert normalised.normal_period == period(T0, T0 + dt.timedelta(days=7))

    # Normal conditions the stored data do not cover cannot give normalised savings: nothing is made up.
    blank = pb.MvPlan()
    blank.CopyFrom(plan)
    blank.normal_conditions.period.CopyFrom(period(T0 + dt.timedelta(days=60), T0 + dt.timedelta(days=61)))
    uncovered = await create_plan(energy, blank)
    refused = await energy.refused("EvaluateSavings", pb.EvaluateSavingsRequest(plan_id=uncovered.plan_id))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(refused) == "EVALUATION_NOT_COMPUTABLE"
    assert "normal_conditions" in (refused.details() or "")

    # Verified, the evaluation keeps its normalised savings as they were computed.
    await energy.call(
        "VerifyEvaluation", pb.VerifyEvaluationRequest(evaluation_id=evaluation.evaluation_id), JIANGSU_REGULATOR
    )
    stored = await energy.call("GetEvaluation", pb.GetEvaluationRequest(evaluation_id=evaluation.evaluation_id))
    assert stored.evaluation.result.normalised == normalised


async def test_plan_sources_and_normal_conditions_are_checked(energy: Energy) -> None:
    facility, it_series, _ = await hourly_site(energy)
    elsewhere = await create_series(energy, site=energy.shenzhen, name="it_load_kwh", unit=pb.UNIT_KWH)
    coarse = await create_series(energy, name="daily_temp_c", unit=pb.UNIT_DEG_C, interval=Duration(seconds=DAY))
    measure = await create_measure(energy)
    plan = pb.MvPlan(
        measure_id=measure.measure_id,
        option=pb.IPMVP_OPTION_C,
        measurement_boundary=[energy.data_center.id],
        energy_meter_ids=[facility.meter_id],
        baseline_period=period(*BASELINE),
        reporting_period=period(*REPORTING),
        interval=minutes(60),
        independent_variables=[
            pb.IndependentVariable(name="it_load_kwh", series_id=elsewhere.series_id),
            pb.IndependentVariable(name="no_source"),
            pb.IndependentVariable(name="daily_temp_c", series_id=coarse.series_id),
        ],
        normal_conditions=pb.NormalConditions(
            period=period(T0 + dt.timedelta(minutes=30), T0 + dt.timedelta(days=7)),
            variables=[pb.IndependentVariable(name="humidity", series_id=it_series.series_id)],
        ),
    )
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=plan), energy.data_center.caller)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert has_violation(error, "plan.independent_variables[0].series_id", "no such independent series")
    assert has_violation(error, "plan.independent_variables[1]", "a meter_id or a series_id")
    assert has_violation(error, "plan.interval", f"not a multiple of series daily_temp_c's {DAY} s interval")
    assert has_violation(error, "plan.normal_conditions.variables[0].name", "not a variable of the plan")
    assert has_violation(error, "plan.normal_conditions.period.start_time", "slots")
    assert await energy.count("mv_plan") == 0


# ---- daily and monthly plans -----------------------------------------------------------------------------------


async def test_a_daily_plan_aggregates_hourly_readings_to_calendar_days(energy: Energy) -> None:
    facility, it_series, _ = await hourly_site(energy)
    # One missing hour on day 3: that day is incomplete and left out, not summed short.
    await delete_reading(energy, facility, T0 + dt.timedelta(days=2, hours=5))
    measure = await create_measure(energy)
    plan = pb.MvPlan(
        measure_id=measure.measure_id,
        option=pb.IPMVP_OPTION_C,
        measurement_boundary=[energy.data_center.id],
        energy_meter_ids=[facility.meter_id],
        baseline_period=period(*BASELINE),
        reporting_period=period(*REPORTING),
        interval=Duration(seconds=DAY),
        independent_variables=[pb.IndependentVariable(name="it_load_kwh", series_id=it_series.series_id)],
    )
    created = await create_plan(energy, plan)
    result = (await evaluate(energy, created)).result
    _, _, consumption = hourly_inputs()
    daily = consumption[: 24 * 20].reshape(20, 24).sum(axis=1)
    kept = np.delete(daily, 2)
    assert result.model.n == 19 and result.baseline_coverage == pytest.approx(19 / 20)
    assert result.model.mean_observed == pytest.approx(float(kept.mean()), rel=1e-12)
    assert result.reporting_points == 20
    assert result.verdict.thresholds.rule_set == "G14_BASELINE_DAILY"
    months = (REPORTING[1] - REPORTING[0]) / dt.timedelta(days=365.25 / 12)
    assert result.uncertainty.alpha == pytest.approx(fsu_alpha(Granularity.DAILY, months))

    # A day of a daily plan starts at 00:00 (UTC+8); an interval must divide one day.
    late = pb.MvPlan()
    late.CopyFrom(plan)
    late.baseline_period.CopyFrom(period(T0 + dt.timedelta(hours=6), BASELINE[1]))
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=late), energy.data_center.caller)
    assert has_violation(error, "plan.baseline_period.start_time", "00:00 (UTC+8)")
    odd = pb.MvPlan()
    odd.CopyFrom(plan)
    odd.interval.CopyFrom(Duration(seconds=2 * DAY))
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=odd), energy.data_center.caller)
    assert has_violation(error, "plan.interval", "divide one day")


def month_start(year: int, month: int) -> dt.datetime:
    return dt.datetime(year + (month - 1) // 12, (month - 1) % 12 + 1, 1, tzinfo=CN)


MONTHS = 19  # January 2025 to July 2026
M0 = month_start(2025, 1)


def monthly_inputs() -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Days per month, daily temperature, monthly traffic (TB) and daily energy: 100 + 30·T + 2·traffic/days,
    10 % less from February 2026 (after the installation month). The small base load keeps the months' lengths
    (28 to 31 days) from blurring a model on monthly totals."""
    rng = np.random.default_rng(8)
    days = [calendar.monthrange(2025 + (m // 12), m % 12 + 1)[1] for m in range(MONTHS)]
    total = sum(days)
    day_of_year = np.arange(total)
    temperature = np.round(16 - 12 * np.cos(day_of_year / 365 * 2 * np.pi) + rng.normal(0, 2, total), 2)
    traffic = np.round(rng.uniform(400, 900, MONTHS), 1)
    per_day = np.repeat(2 * traffic / np.array(days), days)
    energy = 100 + 30 * temperature + per_day
    energy[sum(days[:13]) :] *= 0.9
    return days, temperature, traffic, np.round(energy, 6)


async def test_a_monthly_plan_of_twelve_baseline_months(energy: Energy) -> None:
    days, temperature, traffic, consumption = monthly_inputs()
    facility = await energy.meter(role=pb.METER_ROLE_FACILITY_TOTAL, interval=Duration(seconds=DAY))
    await energy.upsert(facility, readings(M0, list(consumption), step=DAY))
    temp_series = await create_series(energy, name="outdoor_temp_c", unit=pb.UNIT_DEG_C, interval=Duration(seconds=DAY))
    await energy.call(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=temp_series.series_id, values=readings(M0, list(temperature), step=DAY)),
        energy.data_center.caller,
    )
    # Traffic comes as one value per calendar month: an irregular series.
    traffic_series = await create_series(
        energy, name="traffic_tb", unit_label="TB", aggregation=pb.SERIES_AGGREGATION_SUM, source="OMC monthly"
    )
    monthly = [
        pb.Reading(start_time=ts(month_start(2025, m + 1)), end_time=ts(month_start(2025, m + 2)), value=v)
        for m, v in enumerate(traffic)
    ]
    await energy.call(
        "UpsertSeriesValues",
        pb.UpsertSeriesValuesRequest(series_id=traffic_series.series_id, values=monthly),
        energy.data_center.caller,
    )
    measure = await create_measure(energy, (month_start(2026, 1), month_start(2026, 2)))
    plan = pb.MvPlan(
        measure_id=measure.measure_id,
        option=pb.IPMVP_OPTION_C,
        measurement_boundary=[energy.data_center.id],
        energy_meter_ids=[facility.meter_id],
        baseline_period=period(month_start(2025, 1), month_start(2026, 1)),
        reporting_period=period(month_start(2026, 2), month_start(2026, 8)),
        monthly=True,
        independent_variables=[
            pb.IndependentVariable(name="outdoor_temp_c", series_id=temp_series.series_id),
            pb.IndependentVariable(name="traffic_tb", series_id=traffic_series.series_id),
        ],
    )
    created = await create_plan(energy, plan)
    assert created.monthly and not created.HasField("interval")
    result = (await evaluate(energy, created)).result
    assert (result.model.n, result.reporting_points) == (12, 6)
    assert result.baseline_coverage == 1.0 and result.reporting_coverage == 1.0
    sums = np.add.reduceat(consumption, np.cumsum([0, *days[:-1]]))
    assert result.model.mean_observed == pytest.approx(float(sums[:12].mean()), rel=1e-12)
    assert result.reporting_kwh == pytest.approx(float(sums[13:19].sum()), rel=1e-12)
    assert result.verdict.thresholds.rule_set == "G14_BASELINE_MONTHLY"
    months = (month_start(2026, 8) - month_start(2026, 2)) / dt.timedelta(days=365.25 / 12)
    assert result.uncertainty.alpha == pytest.approx(fsu_alpha(Granularity.MONTHLY, months))
    # The monthly model (mean temperature, traffic) finds the 10 % saving.
    assert result.savings_fraction == pytest.approx(0.10, abs=0.015)

    # A month missing one daily reading is missing as a whole.
    await delete_reading(energy, facility, dt.datetime(2025, 3, 10, tzinfo=CN))
    again = (await evaluate(energy, created)).result
    assert again.model.n == 11 and again.baseline_coverage == pytest.approx(11 / 12)

    # Monthly periods run from the 1st at 00:00 (UTC+8); a monthly plan has no fixed interval; its sources tile days.
    wrong = pb.MvPlan()
    wrong.CopyFrom(plan)
    wrong.baseline_period.CopyFrom(period(dt.datetime(2025, 1, 15, tzinfo=CN), month_start(2026, 1)))
    wrong.interval.CopyFrom(Duration(seconds=DAY))
    seven = await create_series(energy, name="odd_temp_c", unit=pb.UNIT_DEG_C, interval=Duration(seconds=7 * HOUR))
    wrong.independent_variables.append(pb.IndependentVariable(name="odd_temp_c", series_id=seven.series_id))
    error = await energy.refused("CreateMvPlan", pb.CreateMvPlanRequest(plan=wrong), energy.data_center.caller)
    assert has_violation(error, "plan.interval", "unset for a monthly plan")
    assert has_violation(error, "plan.baseline_period.start_time", "on the 1st")
    assert has_violation(error, "plan.independent_variables[2].series_id", "does not divide a day")


# ---- reading measures and plans back ---------------------------------------------------------------------------


async def test_measures_and_plans_are_read_back_with_filters_and_pages(energy: Energy) -> None:
    ai = await create_measure(energy, description="AI cooling")
    hibernation = await create_measure(energy, measure_type=pb.MEASURE_TYPE_MODULE_HIBERNATION)
    station = await create_measure(energy, site=energy.base_station, measure_type=pb.MEASURE_TYPE_VOLTAGE_UPGRADE)
    shenzhen = await create_measure(energy, site=energy.shenzhen)

    facility = await energy.meter(interval=minutes(60))
    plan = await create_plan(
        energy,
        pb.MvPlan(
            measure_id=ai.measure_id,
            option=pb.IPMVP_OPTION_C,
            measurement_boundary=[energy.data_center.id],
            energy_meter_ids=[facility.meter_id],
            baseline_period=period(*BASELINE),
            reporting_period=period(*REPORTING),
            interval=minutes(60),
        ),
    )
    got = await energy.call("GetMeasure", pb.GetMeasureRequest(measure_id=ai.measure_id), JIANGSU_REGULATOR)
    assert got.measure == ai and list(got.plan_ids) == [plan.plan_id]
    for caller in (GUANGDONG_REGULATOR, energy.base_station.caller):
        denied = await energy.refused("GetMeasure", pb.GetMeasureRequest(measure_id=ai.measure_id), caller)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    missing = await energy.refused("GetMeasure", pb.GetMeasureRequest(measure_id="nope"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND

    got_plan = await energy.call("GetMvPlan", pb.GetMvPlanRequest(plan_id=plan.plan_id), energy.data_center.caller)
    assert got_plan.plan == plan and got_plan.evaluation_id == ""
    await energy.upsert(facility, readings(T0, [100.0 + (h % 7) for h in range(HOURS)], step=HOUR))
    evaluation = await evaluate(energy, plan)
    got_plan = await energy.call("GetMvPlan", pb.GetMvPlanRequest(plan_id=plan.plan_id), PLATFORM)
    assert got_plan.evaluation_id == evaluation.evaluation_id
    hidden = await energy.refused("GetMvPlan", pb.GetMvPlanRequest(plan_id=plan.plan_id), energy.shenzhen.caller)
    assert hidden.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await energy.refused("GetMvPlan", pb.GetMvPlanRequest(plan_id="nope"))).code() == grpc.StatusCode.NOT_FOUND

    async def ids(request: pb.ListMeasuresRequest, caller: Any = PLATFORM) -> set[str]:
        return {m.measure_id for m in (await energy.call("ListMeasures", request, caller)).measures}

    assert await ids(pb.ListMeasuresRequest()) == {m.measure_id for m in (ai, hibernation, station, shenzhen)}
    assert await ids(pb.ListMeasuresRequest(), JIANGSU_REGULATOR) == {
        ai.measure_id,
        hibernation.measure_id,
        station.measure_id,
    }
    assert await ids(pb.ListMeasuresRequest(), energy.data_center.caller) == {ai.measure_id, hibernation.measure_id}
    assert await ids(pb.ListMeasuresRequest(site_id=energy.base_station.id)) == {station.measure_id}
    assert await ids(pb.ListMeasuresRequest(operator_id=energy.shenzhen.operator.participant_id)) == {
        shenzhen.measure_id
    }
    assert await ids(pb.ListMeasuresRequest(measure_type=pb.MEASURE_TYPE_AI_CONTROL), JIANGSU_REGULATOR) == {
        ai.measure_id
    }
    # Another operator's filter does not widen what an enterprise sees.
    assert (
        await ids(
            pb.ListMeasuresRequest(operator_id=energy.shenzhen.operator.participant_id), energy.data_center.caller
        )
        == set()
    )

    request = pb.ListMeasuresRequest(page_size=1, measure_type=pb.MEASURE_TYPE_AI_CONTROL)
    first = await energy.call("ListMeasures", request, PLATFORM)
    assert len(first.measures) == 1 and first.next_page_token
    request.page_token = first.next_page_token
    second = await energy.call("ListMeasures", request, PLATFORM)
    assert len(second.measures) == 1 and not second.next_page_token
    assert {m.measure_id for m in [*first.measures, *second.measures]} == {ai.measure_id, shenzhen.measure_id}
    other = await energy.refused(
        "ListMeasures", pb.ListMeasuresRequest(page_size=1, page_token=first.next_page_token), PLATFORM
    )
    assert has_violation(other, "page_token", "other filters")
    bad = await energy.refused("ListMeasures", pb.ListMeasuresRequest(measure_type=99))  # type: ignore[arg-type]
    assert has_violation(bad, "measure_type", "unknown")
