"""The energy service's conversions and series alignment, without a server: every proto enum maps onto its
domain enum and back, stored savings results come back as the same domain values, and readings align to a plan's
intervals only where they cover a slot completely."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest

from meshkit.errors import InvalidArgument
from services.energy.domain.readings import Period
from services.energy.domain.savings import (
    IpmvpOption,
    Measure,
    MeasureType,
    MvPlan,
    NonRoutineAdjustment,
    SeriesData,
    evaluate_savings,
)
from services.energy.evaluations import align, fixed_edges, savings_result_from_proto
from services.energy.mapping import ENUM_MAPS, savings_result_to_proto
from services.energy.store import FLAG_BITS, bits_to_flags, flags_to_bits


@pytest.mark.parametrize("enum_map", ENUM_MAPS, ids=lambda m: m.proto_name)
def test_every_enum_maps_both_ways(enum_map: object) -> None:
    assert enum_map.proto_only == ()  # type: ignore[attr-defined]
    assert enum_map.domain_only == ()  # type: ignore[attr-defined]
    for member in enum_map.domain:  # type: ignore[attr-defined]
        assert enum_map.from_proto(enum_map.to_proto(member)) is member  # type: ignore[attr-defined]


def test_quality_flags_round_trip_through_their_bits() -> None:
    assert len(set(FLAG_BITS.values())) == len(FLAG_BITS)
    for flag in FLAG_BITS:
        assert bits_to_flags(flags_to_bits({flag})) == [flag]
    assert flags_to_bits(FLAG_BITS) == 31


def test_alignment_sums_or_averages_complete_slots_only() -> None:
    t0 = 1_767_196_800
    q = 900
    starts = [t0 + i * q for i in range(8) if i != 5]  # the 6th quarter is missing
    ends = [s + q for s in starts]
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0]
    hourly = align(starts, ends, values, fixed_edges((t0, t0 + 3 * 3600), 3600), summed=True)
    assert hourly[0] == 10.0 and math.isnan(hourly[1]) and math.isnan(hourly[2])
    mean = align(starts, ends, values, fixed_edges((t0, t0 + 3600), 3600), summed=False)
    assert mean[0] == 2.5
    # A reading that straddles two slots, one outside the period, and a missing value count for nothing.
    straddling = align([t0 + 1800], [t0 + 5400], [4.0], fixed_edges((t0, t0 + 7200), 3600), summed=True)
    assert np.isnan(straddling).all()
    assert np.isnan(align([t0], [t0 + 3600], [None], fixed_edges((t0, t0 + 3600), 3600), summed=True)).all()
    assert align([], [], [], fixed_edges((t0, t0 + 3600), 3600), summed=True).size == 1


def test_a_savings_result_comes_back_from_its_message() -> None:
    rng = np.random.default_rng(3)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    it = 300 + rng.normal(0, 20, 24 * 40)
    energy = 40 + 1.3 * it + rng.normal(0, 2, it.size)
    energy[24 * 21 :] *= 0.95
    plan = MvPlan(
        option=IpmvpOption.OPTION_B,
        measurement_boundary=("ups-1",),
        baseline_period=Period(start, start + dt.timedelta(days=20)),
        reporting_period=Period(start + dt.timedelta(days=21), start + dt.timedelta(days=40)),
        interval=dt.timedelta(hours=1),
        independent_variables=("it_load_kwh",),
    )
    measure = Measure(
        "m", MeasureType.MODULE_HIBERNATION, Period(plan.baseline_period.end, plan.reporting_period.start)
    )
    result = evaluate_savings(
        plan,
        measure,
        SeriesData(energy[: 24 * 20], {"it_load_kwh": it[: 24 * 20]}),
        SeriesData(energy[24 * 21 :], {"it_load_kwh": it[24 * 21 :]}),
        adjustments=[NonRoutineAdjustment(120.0, "new racks")],
    )
    assert savings_result_from_proto(savings_result_to_proto(result)) == result


def test_normalised_savings_come_back_from_their_message() -> None:
    rng = np.random.default_rng(4)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    it = 300 + rng.normal(0, 20, 24 * 40)
    energy = 40 + 1.3 * it + rng.normal(0, 2, it.size)
    energy[24 * 21 :] *= 0.95
    plan = MvPlan(
        option=IpmvpOption.OPTION_C,
        measurement_boundary=("site-1",),
        baseline_period=Period(start, start + dt.timedelta(days=20)),
        reporting_period=Period(start + dt.timedelta(days=21), start + dt.timedelta(days=40)),
        interval=dt.timedelta(hours=1),
        independent_variables=("it_load_kwh",),
        normal_period=Period(start, start + dt.timedelta(days=2)),
    )
    measure = Measure("m", MeasureType.AI_CONTROL, Period(plan.baseline_period.end, plan.reporting_period.start))
    normal = list(it[:48])
    normal[5] = math.nan  # a gap in the normal conditions lowers their coverage
    result = evaluate_savings(
        plan,
        measure,
        SeriesData(energy[: 24 * 20], {"it_load_kwh": it[: 24 * 20]}),
        SeriesData(energy[24 * 21 :], {"it_load_kwh": it[24 * 21 :]}),
        normal_conditions={"it_load_kwh": normal},
    )
    assert result.normalised is not None
    assert result.normalised.points == 47 and result.normalised.coverage == pytest.approx(47 / 48)
    assert result.normalised.savings.savings_fraction == pytest.approx(0.05, abs=0.01)
    assert savings_result_from_proto(savings_result_to_proto(result)) == result
    with pytest.raises(InvalidArgument):  # the plan states a normal period: the conditions are required
        evaluate_savings(
            plan,
            measure,
            SeriesData(energy[: 24 * 20], {"it_load_kwh": it[: 24 * 20]}),
            SeriesData(energy[24 * 21 :], {"it_load_kwh": it[24 * 21 :]}),
        )
