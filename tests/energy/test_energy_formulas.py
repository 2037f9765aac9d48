"""The energy service's formulas against worked examples: units, the catalogue (curves, grades, the
high-efficiency predicate), the KPIs (PUE, redundancy limits, load rate, drift, transformer and line losses,
efficient share) and the IPMVP savings (OLS, CV(RMSE), NMBE, R², t quantiles, FSU, avoided and normalised
energy, plans, the sufficiency verdict, evaluation freezing). Pure domain: no database, gRPC or NATS.

Every hand-computed expectation carries its arithmetic in a comment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import FailedPrecondition, InvalidArgument
from services.energy.domain.catalogue import (
    CatalogueEntry,
    CurrentKind,
    CurvePoint,
    CurvePosition,
    EfficiencyCurve,
    EquipmentClass,
    ExtrapolationPolicy,
    GradeRating,
    HighEfficiencyBasis,
    PowerPort,
    ProcurementRecord,
    TransformerLosses,
    VoltageClass,
    catalogue_entry_violations,
    curve_violations,
    high_efficiency_basis,
    is_high_efficiency,
)
from services.energy.domain.kpis import (
    DEFAULT_DRIFT_THRESHOLD_PP,
    ItMeasurementPoint,
    PueCategory,
    RedundancyScheme,
    ShareAsset,
    conductor_resistance_ohm,
    design_max_load_rate,
    drift_alert,
    efficiency_drift,
    efficient_share,
    line_loss,
    line_loss_ratio,
    load_rate_stats,
    measured_efficiency,
    optimal_load_fraction,
    percentile,
    pue,
    transformer_efficiency,
    transformer_loss_w,
    voltage_upgrade_comparison,
)
from services.energy.domain.lifecycle import LifecycleState
from services.energy.domain.readings import Period
from services.energy.domain.savings import (
    G14_BASELINE_THRESHOLDS,
    G14_CALIBRATION_THRESHOLDS,
    NMBE_CONVENTION,
    AcceptanceThresholds,
    AvoidedEnergy,
    BaselineModel,
    Criterion,
    EvaluationFrozen,
    EvaluationStatus,
    Granularity,
    IpmvpOption,
    Measure,
    MeasureType,
    MvPlan,
    NmbeConvention,
    NonRoutineAdjustment,
    PeriodRole,
    SavingsResult,
    SeriesData,
    avoided_energy,
    correct_evaluation,
    coverage,
    cv_rmse,
    default_thresholds,
    effective_points,
    evaluate_savings,
    fit_baseline,
    fractional_savings_uncertainty,
    fsu_alpha,
    granularity_of,
    incomplete_beta,
    lag1_autocorrelation,
    latest_verified,
    new_evaluation,
    nmbe,
    normalised_savings,
    plan_violations,
    r_squared,
    revise_draft,
    sufficiency_verdict,
    t_cdf,
    t_critical,
    t_quantile,
    verified_savings_totals,
    verify_evaluation,
)
from services.energy.domain.units import (
    Quantity,
    Unit,
    UnitMismatch,
    convert,
    energy_over,
    mean_power,
    parse_unit,
)

CN = dt.timezone(dt.timedelta(hours=8))


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=CN)


def fields_of(error: InvalidArgument) -> set[str]:
    return {v.field for v in error.violations}


# ---------------------------------------------------------------------------------------------
# Units


def test_conversions_within_a_dimension() -> None:
    assert convert(1.0, Unit.MWH, Unit.KWH) == 1000.0
    assert convert(3.6, Unit.MJ, Unit.KWH) == pytest.approx(1.0)  # 1 kWh = 3.6 MJ
    assert convert(2500.0, Unit.W, Unit.KW) == 2.5
    assert convert(1.0, Unit.M3_PER_MIN, Unit.M3_PER_H) == 60.0
    assert convert(50.0, Unit.PERCENT, Unit.RATIO) == 0.5
    assert Quantity(1.0, Unit.MWH) + Quantity(500.0, Unit.KWH) == Quantity(1.5, Unit.MWH)
    assert Quantity(2.0, Unit.KWH) - Quantity(500.0, Unit.WH) == Quantity(1.5, Unit.KWH)
    assert Quantity(2.0, Unit.KW).scaled(0.5) == Quantity(1.0, Unit.KW)
    assert str(Quantity(1.5, Unit.M3)) == "1.5 m³"


def test_power_and_energy_are_not_interchangeable() -> None:
    with pytest.raises(UnitMismatch) as caught:
        convert(10.0, Unit.KW, Unit.KWH, field="facility_energy[0].unit")
    error = caught.value
    assert isinstance(error, InvalidArgument)  # a servicer maps it to INVALID_ARGUMENT with field violations
    assert fields_of(error) == {"facility_energy[0].unit"}
    assert error.violations[0].description.startswith("UNIT_MISMATCH")
    assert error.reason == "UNIT_MISMATCH"
    assert {type(d).__name__ for d in error.details()} == {"BadRequest", "ErrorInfo"}
    with pytest.raises(UnitMismatch):
        Quantity(1.0, Unit.KVA).to(Unit.KW)  # apparent is not active power (energy.md §4.2)


def test_energy_over_an_interval_and_mean_power() -> None:
    quarter = dt.timedelta(minutes=15)
    assert energy_over(Quantity(10.0, Unit.KW), quarter) == Quantity(2.5, Unit.KWH)  # 10 kW · 0.25 h
    assert mean_power(Quantity(2.5, Unit.KWH), quarter) == Quantity(10.0, Unit.KW)
    with pytest.raises(UnitMismatch):
        energy_over(Quantity(10.0, Unit.KWH), quarter)


def test_parse_unit_accepts_names_symbols_and_common_spellings() -> None:
    assert parse_unit("kWh") is Unit.KWH
    assert parse_unit(" KWH ") is Unit.KWH
    assert parse_unit("度") is Unit.KWH
    assert parse_unit("m3") is Unit.M3
    assert parse_unit("m³/min") is Unit.M3_PER_MIN
    with pytest.raises(InvalidArgument) as caught:
        parse_unit("furlongs", field="readings.unit")
    assert fields_of(caught.value) == {"readings.unit"}


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(Unit)), st.sampled_from(list(Unit)), st.floats(-1e9, 1e9, allow_nan=False))
def test_conversion_round_trips_or_refuses(a: Unit, b: Unit, value: float) -> None:
    if a.dimension is b.dimension:
        assert convert(convert(value, a, b), b, a) == pytest.approx(value, rel=1e-12, abs=1e-9)
    else:
        with pytest.raises(UnitMismatch):
            convert(value, a, b)


# ---------------------------------------------------------------------------------------------
# Catalogue: efficiency curves, grades, the high-efficiency predicate

UPS_CURVE = EfficiencyCurve.of((0.25, 0.94), (0.5, 0.96), (0.75, 0.965), (1.0, 0.96))


def test_curve_interpolates_linearly_between_points() -> None:
    # 0.4 lies 0.15/0.25 = 60 % of the way from 0.25 (0.94) to 0.5 (0.96): 0.94 + 0.6 · 0.02 = 0.952
    assert UPS_CURVE.lookup(0.4).efficiency == pytest.approx(0.952)
    assert UPS_CURVE.lookup(0.5).efficiency == pytest.approx(0.96)
    assert UPS_CURVE.lookup(0.25).efficiency == pytest.approx(0.94)
    assert UPS_CURVE.lookup(1.0).position is CurvePosition.INSIDE


def test_curve_never_extrapolates() -> None:
    below = UPS_CURVE.lookup(0.1)
    assert (below.efficiency, below.position, below.clamped) == (None, CurvePosition.BELOW, False)
    clamped = UPS_CURVE.lookup(0.1, ExtrapolationPolicy.CLAMP)
    assert (clamped.efficiency, clamped.position, clamped.clamped) == (0.94, CurvePosition.BELOW, True)
    above = UPS_CURVE.lookup(1.2, ExtrapolationPolicy.CLAMP)
    assert (above.efficiency, above.position) == (0.96, CurvePosition.ABOVE)
    assert UPS_CURVE.lookup(1.2).efficiency is None


@pytest.mark.parametrize(
    ("pairs", "field"),
    [
        (((0.5, 0.96), (0.25, 0.94)), "efficiency_curve[1].load_fraction"),  # not sorted
        (((0.25, 0.94), (0.25, 0.95)), "efficiency_curve[1].load_fraction"),  # duplicate
        (((0.0, 0.9), (0.5, 0.96)), "efficiency_curve[0].load_fraction"),  # 0 is outside (0, 1.5]
        (((0.5, 0.96), (1.6, 0.95)), "efficiency_curve[1].load_fraction"),  # above 150 %
        (((0.25, 0.94), (0.5, 1.01)), "efficiency_curve[1].efficiency"),  # η > 1
        (((0.25, 0.0), (0.5, 0.96)), "efficiency_curve[0].efficiency"),  # η = 0
        (((0.25, math.nan), (0.5, 0.96)), "efficiency_curve[0].efficiency"),
        (((0.5, 0.96),), "efficiency_curve"),  # a single point is a rating, not a curve
    ],
)
def test_curve_validation(pairs: tuple[tuple[float, float], ...], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        EfficiencyCurve.of(*pairs)
    assert field in fields_of(caught.value)
    assert curve_violations([CurvePoint(a, b) for a, b in pairs])  # the list form agrees


@st.composite
def curves(draw: st.DrawFn) -> EfficiencyCurve:
    loads = draw(st.lists(st.integers(1, 150), min_size=2, max_size=10, unique=True))
    etas = draw(st.lists(st.floats(0.5, 1.0), min_size=len(loads), max_size=len(loads)))
    return EfficiencyCurve(tuple(CurvePoint(load / 100, eta) for load, eta in zip(sorted(loads), etas, strict=True)))


@settings(max_examples=200, deadline=None)
@given(curves(), st.floats(0.0, 1.0))
def test_interpolation_stays_within_the_neighbouring_points(curve: EfficiencyCurve, share: float) -> None:
    first, last = curve.points[0].load_fraction, curve.points[-1].load_fraction
    load = first + share * (last - first)
    found = curve.lookup(load)
    assert found.efficiency is not None
    for left, right in zip(curve.points, curve.points[1:], strict=False):
        if left.load_fraction <= load <= right.load_fraction:
            low, high = sorted((left.efficiency, right.efficiency))
            assert low <= found.efficiency <= high
            break


def test_grade_and_high_efficiency_predicate() -> None:
    grade = GradeRating(2, "GB 20052", "2024")
    assert grade.designation == "GB 20052-2024"
    cases = [
        (ProcurementRecord(True, GradeRating(3, "GB 20052", "2024")), HighEfficiencyBasis.LISTED),  # listed wins
        (ProcurementRecord(False, GradeRating(1, "GB 20052", "2024")), HighEfficiencyBasis.GRADE_1),
        (ProcurementRecord(False, grade), HighEfficiencyBasis.GRADE_2),
        (ProcurementRecord(False, GradeRating(3, "GB 20052", "2024")), None),  # grade 3 is only the legal floor
        (ProcurementRecord(False, None), None),
        (None, None),  # legacy units without a procurement record
    ]
    for record, basis in cases:
        assert high_efficiency_basis(record) is basis
        assert is_high_efficiency(record) is (basis is not None)


def _entry(**changes: object) -> CatalogueEntry:
    entry = CatalogueEntry(
        equipment_class=EquipmentClass.UPS,
        manufacturer="Acme Power",
        model="UPS-200",
        rated_capacity=Quantity(200.0, Unit.KVA),
        input=PowerPort(CurrentKind.AC, VoltageClass.AC_380V),
        output=PowerPort(CurrentKind.AC, VoltageClass.AC_380V),
        efficiency_curve=UPS_CURVE,
        grade=GradeRating(1, "GB 20052", "2024"),
        listed_in_recommended_catalogue=True,
        listing_editions=("2024",),
    )
    return dataclasses.replace(entry, **changes)  # type: ignore[arg-type]


def test_catalogue_entry_rules() -> None:
    assert catalogue_entry_violations(_entry()) == []
    hvdc = _entry(
        equipment_class=EquipmentClass.RECTIFIER_HVDC,
        rated_capacity=Quantity(60.0, Unit.KW),
        output=PowerPort(CurrentKind.DC, VoltageClass.DC_240V),
    )
    assert catalogue_entry_violations(hvdc) == []
    transformer = _entry(
        equipment_class=EquipmentClass.TRANSFORMER,
        rated_capacity=Quantity(1000.0, Unit.KVA),
        transformer_losses=TransformerLosses(1000.0, 8000.0),
    )
    assert catalogue_entry_violations(transformer) == []
    cases = [
        (_entry(rated_capacity=Quantity(200.0, Unit.KWH)), "catalogue_entry.rated_capacity.unit"),
        (_entry(rated_capacity=Quantity(0.0, Unit.KVA)), "catalogue_entry.rated_capacity.value"),
        (_entry(output=PowerPort(CurrentKind.AC, VoltageClass.DC_400V)), "catalogue_entry.output.voltage_class"),
        (_entry(transformer_losses=TransformerLosses(1000.0, 8000.0)), "catalogue_entry.transformer_losses"),
        (_entry(grade=GradeRating(4, "GB 20052", "2024")), "catalogue_entry.grade.grade"),
        (_entry(grade=GradeRating(1, "GB 20052", "24")), "catalogue_entry.grade.edition"),
        (_entry(grade=GradeRating(1, " ", "2024")), "catalogue_entry.grade.standard"),
        (_entry(manufacturer=""), "catalogue_entry.manufacturer"),
        (_entry(listed_in_recommended_catalogue=False), "catalogue_entry.listing_editions"),
        (_entry(listing_editions=("2024 ed.",)), "catalogue_entry.listing_editions[0]"),
        (_entry(rated_capacity=Quantity(math.inf, Unit.KVA)), "catalogue_entry.rated_capacity.value"),
    ]
    for entry, field in cases:
        assert field in {v.field for v in catalogue_entry_violations(entry)}, field
    mismatch = catalogue_entry_violations(_entry(rated_capacity=Quantity(200.0, Unit.KWH)))
    assert mismatch[0].description.startswith("UNIT_MISMATCH")


def test_voltage_classes() -> None:
    assert VoltageClass.DC_48V.current is CurrentKind.DC
    assert VoltageClass.AC_10KV.current is CurrentKind.AC
    assert [c.nominal_v for c in (VoltageClass.DC_240V, VoltageClass.DC_336V, VoltageClass.DC_400V)] == [240, 336, 400]
    assert VoltageClass.DC_800V.nominal_v == 800
    assert EquipmentClass.SOLID_STATE_TRANSFORMER.code == "POWER.SST"


# ---------------------------------------------------------------------------------------------
# PUE (ISO/IEC 30134-2)

YEAR = Period(at(2025, 1, 1), at(2026, 1, 1))


def test_pue_is_total_facility_energy_over_it_energy() -> None:
    # facility 1 200 MWh + 300 000 kWh = 1 500 000 kWh; IT 1 000 MWh = 1 000 000 kWh; PUE = 1.5, DCiE = 1/1.5
    result = pue(
        [Quantity(1200.0, Unit.MWH), Quantity(300_000.0, Unit.KWH)],
        [Quantity(1000.0, Unit.MWH)],
        ItMeasurementPoint.UPS_OUTPUT,
        YEAR,
    )
    assert result.value == pytest.approx(1.5)
    assert result.dcie == pytest.approx(2 / 3)
    assert (result.facility_energy_kwh, result.it_energy_kwh) == (1_500_000.0, 1_000_000.0)
    assert result.category is PueCategory.CATEGORY_1


@pytest.mark.parametrize(
    ("point", "category"),
    [
        (ItMeasurementPoint.UPS_OUTPUT, PueCategory.CATEGORY_1),
        (ItMeasurementPoint.PDU_OUTPUT, PueCategory.CATEGORY_2),
        (ItMeasurementPoint.IT_EQUIPMENT_INPUT, PueCategory.CATEGORY_3),
    ],
)
def test_pue_category_follows_where_it_energy_is_measured(point: ItMeasurementPoint, category: PueCategory) -> None:
    assert pue([Quantity(2.0, Unit.KWH)], [Quantity(1.0, Unit.KWH)], point, YEAR).category is category


def test_pue_refuses_power_units_impossible_ratios_and_bad_periods() -> None:
    with pytest.raises(UnitMismatch) as caught:
        pue([Quantity(1500.0, Unit.KW)], [Quantity(1000.0, Unit.KWH)], ItMeasurementPoint.UPS_OUTPUT, YEAR)
    assert fields_of(caught.value) == {"facility_energy[0].unit"}
    with pytest.raises(InvalidArgument) as below_one:  # total below IT: PUE < 1 is impossible
        pue([Quantity(900.0, Unit.KWH)], [Quantity(1000.0, Unit.KWH)], ItMeasurementPoint.UPS_OUTPUT, YEAR)
    assert fields_of(below_one.value) == {"facility_energy"}
    with pytest.raises(InvalidArgument) as no_it:
        pue([Quantity(900.0, Unit.KWH)], [Quantity(0.0, Unit.KWH)], ItMeasurementPoint.UPS_OUTPUT, YEAR)
    assert fields_of(no_it.value) == {"it_energy"}
    with pytest.raises(InvalidArgument) as empty:
        pue([], [Quantity(1.0, Unit.KWH)], ItMeasurementPoint.UPS_OUTPUT, YEAR)
    assert fields_of(empty.value) == {"facility_energy"}
    with pytest.raises(InvalidArgument) as reversed_period:
        pue(
            [Quantity(2.0, Unit.KWH)],
            [Quantity(1.0, Unit.KWH)],
            ItMeasurementPoint.UPS_OUTPUT,
            Period(YEAR.end, YEAR.start),
        )
    assert fields_of(reversed_period.value) == {"period.end"}


# ---------------------------------------------------------------------------------------------
# Redundancy limits and load-rate statistics (energy.md §4.2)


@pytest.mark.parametrize(
    ("scheme", "units", "redundant", "expected"),
    [
        (RedundancyScheme.N, None, None, 1.0),
        (RedundancyScheme.N_PLUS_1, 4, None, 0.75),  # 4 modules, one may fail: 3/4
        (RedundancyScheme.N_PLUS_1, 3, None, 2 / 3),  # the note's example: 3 units → 66.7 %
        (RedundancyScheme.N_PLUS_1, 2, None, 0.5),
        (RedundancyScheme.N_PLUS_M, 6, 2, 4 / 6),
        (RedundancyScheme.TWO_N, None, None, 0.5),
        (RedundancyScheme.DISTRIBUTED_REDUNDANT, 3, None, 2 / 3),  # 3-to-make-2
        (RedundancyScheme.DISTRIBUTED_REDUNDANT, 4, None, 0.75),  # 4-to-make-3
    ],
)
def test_design_max_load_rate(
    scheme: RedundancyScheme, units: int | None, redundant: int | None, expected: float
) -> None:
    assert design_max_load_rate(scheme, units=units, redundant_units=redundant) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scheme", "units", "redundant", "field"),
    [
        (RedundancyScheme.N_PLUS_1, None, None, "units"),
        (RedundancyScheme.N_PLUS_1, 1, None, "units"),
        (RedundancyScheme.N_PLUS_M, 4, 4, "redundant_units"),
        (RedundancyScheme.N_PLUS_M, 4, None, "redundant_units"),
        (RedundancyScheme.DISTRIBUTED_REDUNDANT, 2, None, "units"),
    ],
)
def test_design_max_load_rate_needs_a_sensible_unit_count(
    scheme: RedundancyScheme, units: int | None, redundant: int | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        design_max_load_rate(scheme, units=units, redundant_units=redundant)
    assert fields_of(caught.value) == {field}


def test_load_rate_statistics() -> None:
    # loads 5, 15, …, 105 kW on a 100 kW unit: β = 0.05, 0.15, …, 1.05 (11 values)
    loads = [5.0 + 10.0 * i for i in range(11)]
    stats = load_rate_stats(loads, Unit.KW, Quantity(100.0, Unit.KW), design_max=0.75)
    assert stats.n == 11
    assert stats.mean == pytest.approx(0.55)  # (0.05 + 1.05) / 2 for an arithmetic series
    # P95 (type 7): h = (11 - 1) · 0.95 = 9.5 → β[9] + 0.5 · (β[10] - β[9]) = 0.95 + 0.5 · 0.1 = 1.00
    assert stats.p95 == pytest.approx(1.0)
    assert stats.max == pytest.approx(1.05)
    assert [b.count for b in stats.histogram] == [1] * 11  # ten 10 % bins and the > 100 % bin
    assert (stats.histogram[-1].lower, stats.histogram[-1].upper) == (1.0, math.inf)
    assert stats.above_design_max == 3  # 0.85, 0.95, 1.05
    assert stats.share_above_design_max == pytest.approx(3 / 11)


def test_load_rate_bin_edges_and_design_limit_are_inclusive() -> None:
    stats = load_rate_stats([100.0, 75.0, 0.0], Unit.KW, Quantity(0.1, Unit.MW), design_max=0.75)
    counts = [b.count for b in stats.histogram]
    assert counts[9] == 1 and counts[10] == 0  # exactly 100 % is in the last regular bin, not the overload
    assert counts[7] == 1 and counts[0] == 1  # 0.75 in [0.7, 0.8), 0 in [0, 0.1)
    assert stats.above_design_max == 1  # only 1.0: 0.75, at the limit, is not above it


def test_load_rate_refuses_mixed_dimensions_and_bad_loads() -> None:
    with pytest.raises(UnitMismatch):
        load_rate_stats([50.0], Unit.KW, Quantity(100.0, Unit.KVA))  # kW against kVA (energy.md §4.2)
    with pytest.raises(InvalidArgument) as negative:
        load_rate_stats([50.0, -1.0], Unit.KW, Quantity(100.0, Unit.KW))
    assert fields_of(negative.value) == {"loads[1]"}
    with pytest.raises(InvalidArgument):
        load_rate_stats([], Unit.KW, Quantity(100.0, Unit.KW))


# ---------------------------------------------------------------------------------------------
# Efficiency, drift, transformer losses


def test_measured_efficiency() -> None:
    assert measured_efficiency(Quantity(1.0, Unit.MWH), Quantity(950.0, Unit.KWH)) == pytest.approx(0.95)
    with pytest.raises(InvalidArgument) as caught:  # η > 1: the meters' roles are swapped
        measured_efficiency(Quantity(950.0, Unit.KWH), Quantity(1000.0, Unit.KWH))
    assert fields_of(caught.value) == {"energy_out.value"}
    with pytest.raises(UnitMismatch):
        measured_efficiency(Quantity(1.0, Unit.KW), Quantity(1.0, Unit.KWH))


def test_efficiency_drift_against_the_curve() -> None:
    assert DEFAULT_DRIFT_THRESHOLD_PP == 2.0
    # curve at 0.4 = 0.952 (above); 0.930 → (0.930 - 0.952) · 100 = -2.2 pp, beyond -2 pp
    drifted = efficiency_drift(UPS_CURVE, 0.4, 0.930)
    assert drifted.expected == pytest.approx(0.952)
    assert drifted.drift_pp == pytest.approx(-2.2)
    assert drifted.drifted
    # 0.933 → -1.9 pp: within the threshold
    assert not efficiency_drift(UPS_CURVE, 0.4, 0.933).drifted
    # better than the catalogue is not a drift of the equipment
    assert not efficiency_drift(UPS_CURVE, 0.4, 0.99).drifted
    # a tighter threshold flags the smaller drift
    assert efficiency_drift(UPS_CURVE, 0.4, 0.933, threshold_pp=1.0).drifted


def test_efficiency_drift_outside_the_curve() -> None:
    reported = efficiency_drift(UPS_CURVE, 0.1, 0.80)
    assert (reported.expected, reported.drift_pp, reported.drifted) == (None, None, False)
    assert reported.position is CurvePosition.BELOW
    clamped = efficiency_drift(UPS_CURVE, 0.1, 0.80, policy=ExtrapolationPolicy.CLAMP)
    assert clamped.expected == 0.94 and clamped.drifted  # 0.80 - 0.94 = -14 pp


def test_drift_alert_needs_consecutive_windows() -> None:
    bad, good = efficiency_drift(UPS_CURVE, 0.4, 0.93), efficiency_drift(UPS_CURVE, 0.4, 0.95)
    assert drift_alert([good, bad, bad, bad])
    assert not drift_alert([bad, bad, good, bad])
    assert not drift_alert([bad, bad])
    assert drift_alert([bad], consecutive=1)


def test_transformer_losses_at_half_load() -> None:
    losses = TransformerLosses(no_load_loss_w=1000.0, load_loss_w=8000.0)
    # ΔP(0.5) = P0 + 0.5² · Pk = 1000 + 0.25 · 8000 = 3000 W
    assert transformer_loss_w(losses, 0.5) == pytest.approx(3000.0)
    assert transformer_loss_w(losses, 0.0) == pytest.approx(1000.0)  # iron loss alone at no load
    assert transformer_loss_w(losses, 1.0) == pytest.approx(9000.0)
    # η(0.5) at 1000 kVA, cosφ = 1: 500 kW / (500 kW + 3 kW) = 0.994036
    assert transformer_efficiency(losses, Quantity(1000.0, Unit.KVA), 0.5) == pytest.approx(500 / 503)
    # β_opt = √(1000 / 8000) = 0.353553
    assert optimal_load_fraction(losses) == pytest.approx(math.sqrt(1 / 8))
    assert transformer_efficiency(losses, Quantity(1000.0, Unit.KVA), 0.0) == 0.0  # no output, only iron loss
    with pytest.raises(InvalidArgument):
        transformer_loss_w(TransformerLosses(-1.0, 8000.0), 0.5)
    with pytest.raises(UnitMismatch):
        transformer_efficiency(losses, Quantity(1000.0, Unit.KW), 0.5)


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 1e5), st.floats(1.0, 1e6), st.floats(0.01, 1.5))
def test_transformer_efficiency_peaks_at_the_optimal_load(p0: float, pk: float, beta: float) -> None:
    losses = TransformerLosses(p0, pk)
    rated = Quantity(1000.0, Unit.KVA)
    best = transformer_efficiency(losses, rated, optimal_load_fraction(losses))
    assert transformer_efficiency(losses, rated, beta) <= best + 1e-12


# ---------------------------------------------------------------------------------------------
# Line losses for a voltage upgrade (energy.md §4.3)


def test_line_loss_ratio_is_the_square_of_the_voltage_ratio() -> None:
    assert line_loss_ratio(48, 240) == pytest.approx(0.04)  # (48/240)² = 1/25: 25 times less loss
    assert 1 / line_loss_ratio(48, 240) == pytest.approx(25.0)
    assert line_loss_ratio(240, 400) == pytest.approx(0.36)
    assert line_loss_ratio(400, 800) == pytest.approx(0.25)
    assert line_loss_ratio(240, 336) == pytest.approx(0.5102, abs=1e-4)


def test_conductor_resistance_and_loss() -> None:
    # copper 1/58 Ω·mm²/m, 50 m two-wire run of 35 mm²: R = (1/58) · 100 / 35 = 0.0492611 Ω
    resistance = conductor_resistance_ohm(50.0, 35.0)
    assert resistance == pytest.approx(100 / (58 * 35))
    # 4.8 kW at 48 V: I = 100 A, loss = 100² · 0.0492611 = 492.611 W, ΔV = 4.926 V, 10.3 % of the power
    loss = line_loss(4800.0, 48.0, resistance)
    assert loss.current_a == pytest.approx(100.0)
    assert loss.loss_w == pytest.approx(492.611, rel=1e-5)
    assert loss.voltage_drop_v == pytest.approx(4.92611, rel=1e-5)
    assert loss.loss_fraction == pytest.approx(492.611 / 4800, rel=1e-5)
    with pytest.raises(InvalidArgument) as caught:
        conductor_resistance_ohm(0.0, -1.0)
    assert fields_of(caught.value) == {"length_m", "cross_section_mm2"}


def test_voltage_upgrade_comparison_from_measured_current() -> None:
    resistance = 100 / (58 * 35)
    comparison = voltage_upgrade_comparison(100.0, 48.0, resistance)
    assert [o.voltage_class for o in comparison.options] == [
        VoltageClass.DC_240V,
        VoltageClass.DC_336V,
        VoltageClass.DC_400V,
        VoltageClass.DC_800V,
    ]
    at_240 = comparison.options[0]
    # same 4.8 kW at 240 V: I = 20 A, loss = 400 · 0.0492611 = 19.704 W, ratio 0.04
    assert at_240.loss.current_a == pytest.approx(20.0)
    assert at_240.loss.loss_w == pytest.approx(19.7044, rel=1e-5)
    assert at_240.loss_ratio == pytest.approx(0.04)
    assert at_240.saved_w == pytest.approx(492.611 - 19.7044, rel=1e-5)
    assert comparison.options[-1].loss_ratio == pytest.approx((48 / 800) ** 2)
    with pytest.raises(InvalidArgument) as caught:
        voltage_upgrade_comparison(100.0, 48.0, resistance, targets=[VoltageClass.AC_380V])
    assert fields_of(caught.value) == {"targets[0]"}


# ---------------------------------------------------------------------------------------------
# High-efficiency share


def _asset(asset_id: str, state: LifecycleState, record: ProcurementRecord | None, **fields: object) -> ShareAsset:
    values: dict[str, object] = {"equipment_class": EquipmentClass.UPS, "operator": "op-a", "province": "32"}
    values.update(fields)
    return ShareAsset(asset_id, state, record, **values)  # type: ignore[arg-type]


def grade(g: int) -> ProcurementRecord:
    return ProcurementRecord(False, GradeRating(g, "GB 20052", "2024"))


def kva(value: float) -> Quantity:
    return Quantity(value, Unit.KVA)


def test_efficient_share_by_class_counts_only_assets_in_service() -> None:
    assets = [
        _asset("a1", LifecycleState.IN_SERVICE, ProcurementRecord(True), rated_capacity=kva(200.0)),
        _asset("a2", LifecycleState.IN_SERVICE, grade(2), rated_capacity=kva(100.0)),
        _asset("a3", LifecycleState.IN_SERVICE, grade(3), rated_capacity=kva(100.0)),
        _asset("a4", LifecycleState.IN_SERVICE, None, equipment_class=EquipmentClass.RECTIFIER_48V),
        _asset("a5", LifecycleState.STANDBY, grade(1)),
        _asset("a6", LifecycleState.RETIRED, ProcurementRecord(True)),
    ]
    by_class = efficient_share(assets, key=lambda a: a.equipment_class)
    ups = by_class[EquipmentClass.UPS]
    # UPS in service: a1 (listed), a2 (grade 2), a3 (grade 3) → 2/3; capacity (200 + 100) / 400 = 0.75
    assert (ups.in_service, ups.high_efficiency) == (3, 2)
    assert ups.share == pytest.approx(2 / 3)
    assert ups.capacity_share == pytest.approx(0.75)
    rectifiers = by_class[EquipmentClass.RECTIFIER_48V]
    assert (rectifiers.share, rectifiers.capacity_share) == (0.0, None)  # no capacity given
    # with the live network (standby included) a5 counts too: 3 of 5
    live = efficient_share(
        assets, key=lambda a: (a.operator, a.province), states=frozenset(LifecycleState) - {LifecycleState.RETIRED}
    )
    assert live[("op-a", "32")].high_efficiency == 3


def test_efficient_share_capacity_needs_one_dimension() -> None:
    assets = [
        _asset("a1", LifecycleState.IN_SERVICE, ProcurementRecord(True), rated_capacity=Quantity(1.0, Unit.KVA)),
        _asset("a2", LifecycleState.IN_SERVICE, None, rated_capacity=Quantity(1.0, Unit.KW)),
    ]
    share = efficient_share(assets, key=lambda a: a.operator)["op-a"]
    assert share.share == 0.5 and share.capacity_share is None


# ---------------------------------------------------------------------------------------------
# Statistics: OLS, CV(RMSE), NMBE, R², autocorrelation, Student t


def test_ols_recovers_an_exact_line() -> None:
    x1 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    x2 = [10.0, 8.0, 9.0, 4.0, 7.0, 1.0]
    energy = [3 + 2 * a - 0.5 * b for a, b in zip(x1, x2, strict=True)]  # E = 3 + 2·x1 - 0.5·x2
    model = fit_baseline(energy, {"it_load": x1, "temp": x2})
    assert model.intercept == pytest.approx(3.0)
    assert model.coefficient("it_load") == pytest.approx(2.0)
    assert model.coefficient("temp") == pytest.approx(-0.5)
    assert model.r_squared == pytest.approx(1.0)
    assert model.cv_rmse == pytest.approx(0.0, abs=1e-12)
    assert model.parameters == 3 and model.n == 6
    assert list(model.predict({"it_load": [10.0], "temp": [2.0]})) == pytest.approx([22.0])


def test_ols_drops_incomplete_rows_and_refuses_unidentifiable_models() -> None:
    model = fit_baseline([5.0, 7.0, math.nan, 11.0, 13.0], {"x": [1.0, 2.0, 3.0, 4.0, math.nan]})
    assert model.n == 3 and model.coefficient("x") == pytest.approx(2.0)  # rows 3 and 5 dropped
    with pytest.raises(InvalidArgument) as constant:
        fit_baseline([1.0, 2.0, 3.0, 4.0], {"x": [5.0, 5.0, 5.0, 5.0]})  # collinear with the intercept
    assert fields_of(constant.value) == {"independent_variables"}
    with pytest.raises(InvalidArgument) as collinear:
        fit_baseline([1.0, 2.0, 3.0, 5.0], {"a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 4.0, 6.0, 8.0]})
    assert fields_of(collinear.value) == {"independent_variables"}
    with pytest.raises(InvalidArgument) as too_few:
        fit_baseline([1.0, 2.0], {"x": [1.0, 2.0]})  # 2 points, 2 parameters: no degree of freedom left
    assert fields_of(too_few.value) == {"baseline.energy"}
    with pytest.raises(InvalidArgument):
        fit_baseline([1.0, 2.0, 3.0], {"x": [1.0, 2.0]})  # lengths differ


def test_cv_rmse_nmbe_and_r_squared_by_hand() -> None:
    observed = [10.0, 12.0, 14.0, 16.0]
    predicted = [11.0, 12.0, 13.0, 17.0]
    # residuals y - ŷ = -1, 0, 1, -1; SSE = 3; n - p = 4 - 2 = 2; ȳ = 13
    # CV(RMSE) = √(3 / 2) / 13 = 1.2247449 / 13 = 0.0942111
    assert cv_rmse(observed, predicted, 2) == pytest.approx(math.sqrt(1.5) / 13)
    # NMBE = Σ(y - ŷ) / ((n - p)·ȳ) = -1 / (2 · 13) = -0.0384615: negative, the model over-predicts
    assert nmbe(observed, predicted, 2) == pytest.approx(-1 / 26)
    assert NMBE_CONVENTION is NmbeConvention.OBSERVED_MINUS_PREDICTED
    # SST = 9 + 1 + 1 + 9 = 20; R² = 1 - 3/20 = 0.85
    assert r_squared(observed, predicted) == pytest.approx(0.85)
    with pytest.raises(InvalidArgument):
        cv_rmse(observed, predicted, 4)  # n - p = 0
    with pytest.raises(InvalidArgument):
        cv_rmse([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 1)  # ȳ = 0: CV undefined


def test_lag1_autocorrelation_and_effective_points() -> None:
    # alternating residuals 1, -1, 1, -1: Σ e_t·e_{t-1} = -3, Σ e² = 4 → rho = -0.75
    assert lag1_autocorrelation([1.0, -1.0, 1.0, -1.0]) == pytest.approx(-0.75)
    # 1, 1, -1, -1: Σ e_t·e_{t-1} = 1 - 1 + 1 = 1 → rho = 0.25
    assert lag1_autocorrelation([1.0, 1.0, -1.0, -1.0]) == pytest.approx(0.25)
    assert effective_points(100, 0.25) == pytest.approx(60.0)  # 100 · 0.75 / 1.25
    assert effective_points(100, -0.75) == 100  # negative rho never inflates n'
    assert lag1_autocorrelation([2.0, 2.0, 2.0]) == 0.0
    assert lag1_autocorrelation([2.0]) == 0.0


def test_r_squared_of_a_constant_series() -> None:
    assert r_squared([5.0, 5.0], [5.0, 5.0]) == 1.0  # matched exactly
    assert r_squared([5.0, 5.0], [4.0, 6.0]) == 0.0


def test_incomplete_beta_identities() -> None:
    assert incomplete_beta(2.0, 3.0, 0.0) == 0.0 and incomplete_beta(2.0, 3.0, 1.0) == 1.0
    assert incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # the uniform distribution
    assert incomplete_beta(3.0, 1.0, 0.5) == pytest.approx(0.125)  # I_x(a, 1) = x^a
    # I_x(a, b) = 1 - I_(1-x)(b, a)
    assert incomplete_beta(2.5, 4.0, 0.2) == pytest.approx(1 - incomplete_beta(4.0, 2.5, 0.8), abs=1e-14)


@pytest.mark.parametrize(
    ("probability", "df", "table"),
    [
        (0.95, 10, 1.812461),  # one-sided 95 %, df 10
        (0.975, 10, 2.228139),  # two-sided 95 %, df 10
        (0.975, 1, 12.706205),
        (0.995, 5, 4.032143),
        (0.975, 30, 2.042272),
        (0.99, 20, 2.527977),
        (0.975, 6, 2.446912),
        (0.95, 1e9, 1.644854),  # the normal limit
    ],
)
def test_t_quantile_matches_tables(probability: float, df: float, table: float) -> None:
    assert t_quantile(probability, df) == pytest.approx(table, abs=1e-6)
    assert t_quantile(1 - probability, df) == pytest.approx(-table, abs=1e-6)


def test_t_critical_two_sided_and_one_sided() -> None:
    assert t_critical(0.90, 10) == pytest.approx(1.812461, abs=1e-6)  # two-sided 90 % = one-sided 95 %
    assert t_critical(0.95, 10) == pytest.approx(2.228139, abs=1e-6)
    assert t_critical(0.95, 10, two_sided=False) == pytest.approx(1.812461, abs=1e-6)
    assert t_critical(0.68, 1e9) == pytest.approx(0.994458, abs=1e-6)  # G14's 68 %: about one sigma
    with pytest.raises(InvalidArgument):
        t_quantile(1.0, 10)
    with pytest.raises(InvalidArgument):
        t_quantile(0.9, 0)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 0.999))
def test_t_quantile_against_closed_forms(p: float) -> None:
    # df = 1 (Cauchy): tan(π(p - ½)); df = 2: (2p - 1) / √(2p(1 - p))
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9, abs=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 0.999), st.floats(0.5, 1e5))
def test_t_cdf_inverts_t_quantile(p: float, df: float) -> None:
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Savings: avoided and normalised energy, FSU


def _model(**fields: float) -> BaselineModel:
    values: dict[str, float] = {
        "intercept": 10.0,
        "r_squared": 0.9,
        "adjusted_r_squared": 0.9,
        "cv_rmse": 0.1,
        "nmbe": 0.0,
        "mean_observed": 100.0,
        "rho1": 0.0,
        "n_prime": 12.0,
    }
    values.update(fields)
    return BaselineModel(variables=("x",), coefficients=(2.0,), n=12, **values)


def test_avoided_energy_with_a_non_routine_adjustment() -> None:
    model = _model()  # E = 10 + 2x
    # complete reporting rows: x = 1, 2, 3 → baseline 12 + 14 + 16 = 42; observed 11 + 13 + 15 = 39
    plain = avoided_energy_of(model, [11.0, 13.0, 15.0, 20.0], [1.0, 2.0, 3.0, math.nan])
    assert (plain.adjusted_baseline_kwh, plain.reporting_kwh, plain.points) == (42.0, 39.0, 3)
    assert plain.savings_kwh == pytest.approx(3.0)
    assert plain.savings_fraction == pytest.approx(3 / 42)
    # + 1.5 kWh for racks added inside the boundary: adjusted baseline 43.5, savings 4.5
    adjusted = avoided_energy_of(model, [11.0, 13.0, 15.0], [1.0, 2.0, 3.0], [NonRoutineAdjustment(1.5, "added racks")])
    assert adjusted.savings_kwh == pytest.approx(4.5)
    with pytest.raises(InvalidArgument) as caught:
        avoided_energy_of(model, [11.0], [1.0], [NonRoutineAdjustment(1.5, " ")])
    assert fields_of(caught.value) == {"adjustments[0].note"}


def avoided_energy_of(
    model: BaselineModel, energy: list[float], x: list[float], adjustments: list[NonRoutineAdjustment] | None = None
) -> AvoidedEnergy:
    return avoided_energy(model, energy, {"x": x}, adjustments or [])


def test_normalised_savings_on_fixed_conditions() -> None:
    baseline = _model()  # 10 + 2x
    reporting = dataclasses.replace(_model(intercept=8.0), coefficients=(1.8,))  # 8 + 1.8x
    # X* = 1, 2, 3: baseline 12 + 14 + 16 = 42; reporting 9.8 + 11.6 + 13.4 = 34.8; savings 7.2
    result = normalised_savings(baseline, reporting, {"x": [1.0, 2.0, 3.0]})
    assert result.baseline_kwh == pytest.approx(42.0)
    assert result.reporting_kwh == pytest.approx(34.8)
    assert result.savings_kwh == pytest.approx(7.2)
    assert result.savings_fraction == pytest.approx(7.2 / 42)
    other = dataclasses.replace(reporting, variables=("y",))
    with pytest.raises(InvalidArgument):
        normalised_savings(baseline, other, {"x": [1.0]})


def test_fractional_savings_uncertainty_by_hand() -> None:
    # n = n' = 12, p = 2, CV = 0.1, m = 12, F = 100/1000 = 0.1, 95 % two-sided → t(0.975, 10) = 2.228139
    # FSU = 2.228139 · 1.26 · 0.1 · √((12/12)(1 + 2/12)/12) / 0.1 = 2.228139 · 1.26 · 0.3118048 = 0.875378
    avoided = AvoidedEnergy(1000.0, 900.0, 0.0, 12)
    result = fractional_savings_uncertainty(_model(), avoided, confidence=0.95, alpha=1.26)
    assert result.t == pytest.approx(2.228139, abs=1e-6)
    assert result.degrees_of_freedom == 10
    assert result.fsu == pytest.approx(0.875378, rel=1e-6)
    assert result.absolute_kwh == pytest.approx(0.875378 * 100, rel=1e-6)
    # rho = 0.2 → n' = 12 · 0.8/1.2 = 8, df = 6, t(0.975, 6) = 2.446912
    # FSU = 2.446912 · 1.26 · 0.1 · √((12/8)(1 + 2/8)/12) / 0.1 = 2.446912 · 1.26 · 0.3952847 = 1.218706
    correlated = fractional_savings_uncertainty(_model(rho1=0.2, n_prime=8.0), avoided, confidence=0.95, alpha=1.26)
    assert correlated.degrees_of_freedom == 6
    assert correlated.fsu == pytest.approx(1.218706, rel=1e-6)


def test_fsu_is_undefined_without_savings_or_degrees_of_freedom() -> None:
    no_savings = fractional_savings_uncertainty(
        _model(), AvoidedEnergy(1000.0, 1000.0, 0.0, 12), confidence=0.9, alpha=1.26
    )
    assert no_savings.fsu is None and no_savings.t is not None
    no_dof = fractional_savings_uncertainty(
        _model(n_prime=2.0), AvoidedEnergy(1000.0, 900.0, 0.0, 12), confidence=0.9, alpha=1.26
    )
    assert no_dof.fsu is None and no_dof.t is None


def test_fsu_alpha_by_granularity() -> None:
    assert fsu_alpha(Granularity.HOURLY, 12) == 1.26
    # CalTRACK daily: -0.00024·12² + 0.03535·12 + 1.00286 = -0.03456 + 0.4242 + 1.00286 = 1.3925
    assert fsu_alpha(Granularity.DAILY, 12) == pytest.approx(1.3925)
    # monthly: -0.00022·144 + 0.03306·12 + 0.94054 = -0.03168 + 0.39672 + 0.94054 = 1.30558
    assert fsu_alpha(Granularity.MONTHLY, 12) == pytest.approx(1.30558)
    assert granularity_of(dt.timedelta(minutes=15)) is Granularity.HOURLY
    assert granularity_of(dt.timedelta(days=1)) is Granularity.DAILY
    assert granularity_of(dt.timedelta(days=30)) is Granularity.MONTHLY


# ---------------------------------------------------------------------------------------------
# Plans and the sufficiency verdict

INSTALL = Period(at(2026, 1, 1), at(2026, 1, 15))
MEASURE = Measure("m-1", MeasureType.VOLTAGE_UPGRADE, INSTALL, ("asset-1",))
QUARTER_HOUR = dt.timedelta(minutes=15)


def _plan(**changes: object) -> MvPlan:
    plan = MvPlan(
        option=IpmvpOption.OPTION_C,
        measurement_boundary=("meter-site",),
        baseline_period=Period(at(2025, 1, 1), at(2026, 1, 1)),
        reporting_period=Period(at(2026, 1, 15), at(2026, 4, 15)),
        interval=QUARTER_HOUR,
        independent_variables=("it_load_kwh", "outdoor_temp_c"),
    )
    return dataclasses.replace(plan, **changes)  # type: ignore[arg-type]


def test_a_valid_plan() -> None:
    assert plan_violations(_plan(), MEASURE) == []
    assert _plan().granularity is Granularity.HOURLY


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"reporting_period": Period(at(2025, 6, 1), at(2026, 3, 1))}, "reporting_period"),  # overlaps the baseline
        ({"baseline_period": Period(at(2025, 1, 1), at(2026, 1, 2))}, "baseline_period.end"),  # into the install
        ({"reporting_period": Period(at(2026, 1, 10), at(2026, 4, 1))}, "reporting_period.start"),  # before it ends
        ({"baseline_period": Period(at(2026, 1, 1), at(2025, 1, 1))}, "baseline_period.end"),  # reversed
        ({"measurement_boundary": ()}, "measurement_boundary"),
        ({"measurement_boundary": ("m", "m")}, "measurement_boundary"),
        ({"independent_variables": ("it_load", "it_load")}, "independent_variables[1]"),
        ({"independent_variables": ("IT Load",)}, "independent_variables[0]"),
        ({"independent_variables": tuple(f"x{i}" for i in range(9))}, "independent_variables"),  # at most 8
        ({"confidence": 1.0}, "confidence"),
        ({"interval": dt.timedelta(0)}, "interval"),
    ],
)
def test_plan_rules(changes: dict[str, object], field: str) -> None:
    assert field in {v.field for v in plan_violations(_plan(**changes), MEASURE)}


def test_plan_with_a_naive_period_is_refused() -> None:
    naive = Period(dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1))
    assert "baseline_period.start" in {v.field for v in plan_violations(_plan(baseline_period=naive), MEASURE)}


def test_default_thresholds_and_their_provenance() -> None:
    hourly = G14_BASELINE_THRESHOLDS[Granularity.HOURLY]
    assert (hourly.max_cv_rmse, hourly.max_abs_nmbe, hourly.min_coverage) == (0.30, 0.00005, 0.90)
    assert (hourly.max_fsu, hourly.fsu_confidence) == (0.50, 0.68)  # G14: < 50 % of savings at 68 %
    assert G14_BASELINE_THRESHOLDS[Granularity.MONTHLY].max_cv_rmse == 0.20
    assert G14_BASELINE_THRESHOLDS[Granularity.DAILY].max_cv_rmse == 0.25
    assert "energy.md" in hourly.source
    assert default_thresholds(_plan()) is hourly
    calibration = default_thresholds(_plan(option=IpmvpOption.OPTION_D, interval=dt.timedelta(days=30)))
    assert calibration is G14_CALIBRATION_THRESHOLDS[Granularity.MONTHLY]
    assert (calibration.max_cv_rmse, calibration.max_abs_nmbe) == (0.15, 0.05)


def test_coverage_counts_complete_intervals() -> None:
    # 10 slots; energy missing in one, a variable missing in another: 8 / 10
    energy = [1.0] * 9 + [math.nan]
    x = [1.0, math.nan] + [1.0] * 8
    assert coverage(energy, {"x": x}, 10) == pytest.approx(0.8)


def test_sufficiency_verdict_reports_every_criterion() -> None:
    rules = AcceptanceThresholds("TEST", max_cv_rmse=0.2, max_abs_nmbe=0.01, min_r_squared=0.5)
    passing = sufficiency_verdict(_model(), baseline_coverage=0.95, reporting_coverage=0.9, fsu=0.3, thresholds=rules)
    assert passing.passed and passing.failed() == ()
    assert passing.thresholds is rules
    roles = {c.criterion: c.applies_to for c in passing.criteria}
    assert roles[Criterion.BASELINE_COVERAGE] is PeriodRole.BASELINE
    assert roles[Criterion.REPORTING_COVERAGE] is PeriodRole.REPORTING
    assert set(roles) == set(Criterion)
    failing = sufficiency_verdict(
        _model(cv_rmse=0.25, nmbe=-0.02, r_squared=0.4),
        baseline_coverage=0.85,
        reporting_coverage=0.95,
        fsu=None,
        thresholds=rules,
    )
    assert not failing.passed
    assert set(failing.failed()) == {
        Criterion.BASELINE_COVERAGE,
        Criterion.CV_RMSE,
        Criterion.NMBE,  # |-0.02| > 0.01
        Criterion.R_SQUARED,
        Criterion.FSU,  # not computable fails
    }
    without_optional = AcceptanceThresholds("TEST", max_cv_rmse=0.2, max_abs_nmbe=0.01, max_fsu=None)
    verdict = sufficiency_verdict(
        _model(), baseline_coverage=1, reporting_coverage=1, fsu=None, thresholds=without_optional
    )
    assert verdict.passed and Criterion.FSU not in {c.criterion for c in verdict.criteria}


# ---------------------------------------------------------------------------------------------
# A full evaluation over one year of 15-minute readings (35 040 points)


def _series(period: Period, rng: np.random.Generator, saving: float, missing: float = 0.0) -> SeriesData:
    n = period.duration // QUARTER_HOUR
    hour = (np.arange(n) % 96) / 4.0
    it_load = 250.0 + 50.0 * np.sin(hour / 24 * 2 * np.pi) + rng.normal(0, 5, n)  # kWh per 15 min
    temp = 20.0 + 8.0 * np.cos((hour - 15) / 24 * 2 * np.pi) + rng.normal(0, 1, n)
    energy = (40.0 + 1.3 * it_load + 2.0 * temp) * (1 - saving) + rng.normal(0, 4, n)
    if missing:
        energy[rng.random(n) < missing] = np.nan
    return SeriesData(energy, {"it_load_kwh": it_load, "outdoor_temp_c": temp})


def test_evaluate_savings_over_a_year_of_quarter_hours() -> None:
    rng = np.random.default_rng(2026)
    plan = _plan()
    baseline = _series(plan.baseline_period, rng, saving=0.0)
    assert len(baseline.energy) == 35_040
    reporting = _series(plan.reporting_period, rng, saving=0.10)
    result = evaluate_savings(plan, MEASURE, baseline, reporting)
    assert result.model.n == 35_040
    assert result.model.coefficient("it_load_kwh") == pytest.approx(1.3, rel=0.01)
    assert result.model.coefficient("outdoor_temp_c") == pytest.approx(2.0, rel=0.05)
    assert result.avoided.savings_fraction == pytest.approx(0.10, abs=0.005)
    assert result.baseline_coverage == 1.0 and result.reporting_coverage == 1.0
    assert abs(result.model.nmbe) < 1e-9  # OLS with an intercept has no bias on its training data
    assert result.uncertainty.confidence == 0.90 and result.uncertainty.fsu is not None
    assert result.uncertainty.fsu < 0.05
    assert result.verdict.passed
    assert result.verdict.thresholds.rule_set == "G14_BASELINE_HOURLY"
    assert result.nmbe_convention is NmbeConvention.OBSERVED_MINUS_PREDICTED
    assert result.cv_rmse_variant == "N_MINUS_P"


def test_evaluate_savings_with_thin_data_fails_coverage() -> None:
    rng = np.random.default_rng(7)
    plan = _plan()
    result = evaluate_savings(
        plan, MEASURE, _series(plan.baseline_period, rng, 0.0, missing=0.2), _series(plan.reporting_period, rng, 0.1)
    )
    assert result.baseline_coverage == pytest.approx(0.8, abs=0.01)
    assert result.verdict.failed() == (Criterion.BASELINE_COVERAGE,)


def test_evaluate_savings_refuses_misaligned_series_and_bad_plans() -> None:
    rng = np.random.default_rng(1)
    plan = _plan()
    baseline = _series(plan.baseline_period, rng, 0.0)
    reporting = _series(plan.reporting_period, rng, 0.1)
    short = SeriesData(list(baseline.energy)[:-1], {k: list(v)[:-1] for k, v in baseline.variables.items()})
    with pytest.raises(InvalidArgument) as caught:
        evaluate_savings(plan, MEASURE, short, reporting)
    assert fields_of(caught.value) == {"baseline.energy"}
    with pytest.raises(InvalidArgument) as unknown:
        evaluate_savings(
            plan, MEASURE, SeriesData(baseline.energy, {"it_load_kwh": baseline.variables["it_load_kwh"]}), reporting
        )
    assert fields_of(unknown.value) == {"baseline.variables"}
    overlapping = _plan(reporting_period=Period(at(2025, 12, 1), at(2026, 3, 1)))
    with pytest.raises(InvalidArgument):
        evaluate_savings(overlapping, MEASURE, baseline, reporting)


# ---------------------------------------------------------------------------------------------
# Evaluation versions: a verified evaluation is frozen, a correction is version n + 1


@pytest.fixture(scope="module")
def small_result() -> SavingsResult:
    rng = np.random.default_rng(3)
    plan = _plan(
        baseline_period=Period(at(2025, 12, 1), at(2026, 1, 1)),
        reporting_period=Period(at(2026, 1, 15), at(2026, 2, 15)),
        interval=dt.timedelta(hours=1),
    )
    hours_b, hours_r = 31 * 24, 31 * 24
    x_b, x_r = rng.uniform(100, 200, hours_b), rng.uniform(100, 200, hours_r)
    t_b, t_r = rng.uniform(10, 30, hours_b), rng.uniform(10, 30, hours_r)
    baseline = SeriesData(5 + x_b + t_b + rng.normal(0, 2, hours_b), {"it_load_kwh": x_b, "outdoor_temp_c": t_b})
    reporting = SeriesData(0.9 * (5 + x_r + t_r), {"it_load_kwh": x_r, "outdoor_temp_c": t_r})
    return evaluate_savings(plan, MEASURE, baseline, reporting)


def test_verified_evaluation_is_frozen_and_corrections_are_new_versions(small_result: SavingsResult) -> None:
    other = dataclasses.replace(small_result, adjustments=(NonRoutineAdjustment(10.0, "meter swap"),))
    draft = new_evaluation("ev-1", "m-1", small_result)
    assert (draft.version, draft.status) == (1, EvaluationStatus.DRAFT)
    revised = revise_draft(draft, other)
    assert revised.version == 1 and revised.result is other
    verified = verify_evaluation(revised, "auditor-1", at(2026, 3, 1))
    assert (verified.status, verified.verified_by) == (EvaluationStatus.VERIFIED, "auditor-1")
    with pytest.raises(EvaluationFrozen) as frozen:
        revise_draft(verified, small_result)
    assert isinstance(frozen.value, FailedPrecondition)
    assert frozen.value.reason == "EVALUATION_FROZEN"
    assert frozen.value.metadata == {"evaluation_id": "ev-1", "version": "1"}
    with pytest.raises(EvaluationFrozen):
        verify_evaluation(verified, "auditor-2", at(2026, 3, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.result = small_result  # type: ignore[misc]
    corrected = correct_evaluation(verified, small_result, "baseline meter CT ratio fixed")
    assert (corrected.version, corrected.status, corrected.supersedes) == (2, EvaluationStatus.DRAFT, 1)
    assert verified.result is other  # version 1 is untouched
    with pytest.raises(EvaluationFrozen) as not_verified:
        correct_evaluation(corrected, small_result, "again")
    assert not_verified.value.reason == "EVALUATION_NOT_VERIFIED"
    with pytest.raises(InvalidArgument):
        correct_evaluation(verified, small_result, "  ")
    with pytest.raises(InvalidArgument):
        verify_evaluation(corrected, "auditor-1", dt.datetime(2026, 3, 1))  # naive time


def test_totals_count_the_latest_verified_version_only(small_result: SavingsResult) -> None:
    v1 = verify_evaluation(new_evaluation("ev-1", "m-1", small_result), "a", at(2026, 3, 1))
    v2_result = dataclasses.replace(
        small_result,
        avoided=dataclasses.replace(small_result.avoided, reporting_kwh=small_result.avoided.reporting_kwh + 100),
    )
    v2 = verify_evaluation(correct_evaluation(v1, v2_result, "fix"), "a", at(2026, 3, 2))
    v3_draft = correct_evaluation(v2, small_result, "pending")
    other = verify_evaluation(new_evaluation("ev-2", "m-2", small_result), "a", at(2026, 3, 1))
    latest = latest_verified([v1, v2, v3_draft, other])
    assert latest["ev-1"] is v2 and latest["ev-2"] is other
    kinds = {"m-1": MeasureType.VOLTAGE_UPGRADE, "m-2": MeasureType.AI_CONTROL}
    totals = verified_savings_totals([v1, v2, v3_draft, other], key=lambda e: kinds[e.measure_id])
    assert totals[MeasureType.VOLTAGE_UPGRADE] == pytest.approx(small_result.avoided.savings_kwh - 100)
    assert totals[MeasureType.AI_CONTROL] == pytest.approx(small_result.avoided.savings_kwh)


def test_monthly_evaluation_uses_the_monthly_rules_and_caltrack_alpha() -> None:
    rng = np.random.default_rng(11)
    plan = _plan(
        baseline_period=Period(at(2024, 1, 1), at(2026, 1, 1)),
        reporting_period=Period(at(2026, 1, 15), at(2027, 1, 15)),
        interval=dt.timedelta(days=30),
        independent_variables=("it_load_mwh",),
        confidence=0.68,
    )
    load_b, load_r = rng.uniform(800, 1200, 24), rng.uniform(800, 1200, 12)
    baseline = SeriesData(list(200 + 1.4 * load_b + rng.normal(0, 10, 24)), {"it_load_mwh": list(load_b)})
    reporting = SeriesData([None, *list(0.9 * (200 + 1.4 * load_r[1:]))], {"it_load_mwh": list(load_r)})
    result = evaluate_savings(plan, MEASURE, baseline, reporting)
    assert result.verdict.thresholds.rule_set == "G14_BASELINE_MONTHLY"
    assert result.reporting_coverage == pytest.approx(11 / 12)  # one month missing; months are counted as given
    months = (365 * 24) / (365.25 / 12 * 24)
    assert result.uncertainty.alpha == pytest.approx(fsu_alpha(Granularity.MONTHLY, months))
    assert result.uncertainty.confidence == 0.68  # the plan's confidence is the G14 one: one computation
    fsu = next(c for c in result.verdict.criteria if c.criterion is Criterion.FSU)
    assert fsu.value == result.uncertainty.fsu


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda: pue([Quantity(-1.0, Unit.KWH)], [Quantity(1.0, Unit.KWH)], ItMeasurementPoint.UPS_OUTPUT, YEAR),
            "facility_energy[0].value",
        ),
        (lambda: load_rate_stats([1.0], Unit.KW, Quantity(100.0, Unit.KW), edges=[0.5, 1.0]), "edges"),
        (lambda: load_rate_stats([1.0], Unit.KW, Quantity(0.0, Unit.KW)), "rated_capacity.value"),
        (lambda: percentile([], 0.95), "loads"),
        (lambda: measured_efficiency(Quantity(0.0, Unit.KWH), Quantity(0.0, Unit.KWH)), "energy_in.value"),
        (lambda: measured_efficiency(Quantity(1.0, Unit.KWH), Quantity(-1.0, Unit.KWH)), "energy_out.value"),
        (lambda: efficiency_drift(UPS_CURVE, 0.5, 1.2), "measured_efficiency"),
        (lambda: efficiency_drift(UPS_CURVE, 0.5, 0.9, threshold_pp=-1.0), "threshold_pp"),
        (lambda: UPS_CURVE.lookup(math.nan), "load_fraction"),
        (lambda: drift_alert([], consecutive=0), "consecutive"),
        (lambda: transformer_loss_w(TransformerLosses(1.0, 0.0), 0.5), "transformer_losses.load_loss_w"),
        (lambda: transformer_loss_w(TransformerLosses(1.0, 1.0), -0.5), "load_fraction"),
        (
            lambda: transformer_efficiency(TransformerLosses(1.0, 1.0), kva(1.0), 0.5, power_factor=0.0),
            "power_factor",
        ),
        (lambda: conductor_resistance_ohm(1.0, 1.0, conductors=0), "conductors"),
        (lambda: line_loss(0.0, 48.0, 0.1), "power_w"),
        (lambda: line_loss_ratio(0.0, 48.0), "voltage_v"),
        (lambda: voltage_upgrade_comparison(0.0, 48.0, 0.1), "measured_current_a"),
        (lambda: mean_power(Quantity(1.0, Unit.KWH), dt.timedelta(0)), "energy"),
        (lambda: t_cdf(1.0, 0), "degrees_of_freedom"),
        (lambda: t_critical(1.5, 10), "confidence"),
        (lambda: cv_rmse([1.0], [1.0, 2.0], 1), "observed"),
        (lambda: coverage([1.0], {}, 0), "expected"),
        (
            lambda: fractional_savings_uncertainty(
                _model(), AvoidedEnergy(1.0, 0.5, 0.0, 1), confidence=1.0, alpha=1.26
            ),
            "confidence",
        ),
        (lambda: normalised_savings(_model(), _model(), {"x": [math.nan]}), "normal_conditions"),
        (
            lambda: avoided_energy(_model(), [1.0], {"x": [1.0]}, [NonRoutineAdjustment(math.nan, "meter swap")]),
            "adjustments[0].amount_kwh",
        ),
    ],
)
def test_guards_name_the_offending_field(call: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        call()
    assert field in fields_of(caught.value)


def test_verifying_needs_a_verifier(small_result: SavingsResult) -> None:
    with pytest.raises(InvalidArgument) as caught:
        verify_evaluation(new_evaluation("ev-9", "m-1", small_result), " ", at(2026, 3, 1))
    assert fields_of(caught.value) == {"verifier"}
