"""The figures over gRPC on SQLite and PostgreSQL, from stored readings: PUE with its category, load-rate
statistics against the redundancy design maximum (operating states excluded), efficiency drift with its event,
the line-loss comparison of a voltage upgrade, and the share of high-efficiency equipment in service."""

from __future__ import annotations

import datetime as dt
import math

import grpc
import pytest

from greenmesh.energy.v1 import energy_pb2 as pb
from services.energy.domain.catalogue import VoltageClass
from services.energy.domain.kpis import conductor_resistance_ohm, voltage_upgrade_comparison
from tests.energy.conftest import T0, Energy, day, has_violation, kw, minutes, period, readings, reason_of, ts
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM

DAY = dt.timedelta(days=1)


async def test_pue_of_a_site_and_period(energy: Energy) -> None:
    facility = await energy.meter(role=pb.METER_ROLE_FACILITY_TOTAL)
    it = await energy.meter(role=pb.METER_ROLE_IT_LOAD, it_measurement_point=pb.IT_MEASUREMENT_POINT_PDU_OUTPUT)
    await energy.upsert(facility, readings(T0, [150.0] * 96))
    await energy.upsert(it, readings(T0, [100.0] * 95 + [101.0]))
    reply = await energy.call(
        "GetPue", pb.GetPueRequest(site_id=energy.data_center.id, period=period(T0, T0 + DAY)), JIANGSU_REGULATOR
    )
    assert reply.facility_energy_kwh == 150.0 * 96 and reply.it_energy_kwh == 100.0 * 96 + 1
    assert reply.pue == pytest.approx(14_400 / 9_601)
    assert reply.dcie == pytest.approx(9_601 / 14_400)
    assert reply.category == pb.PUE_CATEGORY_2 and reply.it_measured_at == pb.IT_MEASUREMENT_POINT_PDU_OUTPUT
    assert list(reply.it_meter_ids) == [it.meter_id] and reply.readings_used == 192
    # Half a day: only the readings inside the period count.
    half = await energy.call(
        "GetPue", pb.GetPueRequest(site_id=energy.data_center.id, period=period(T0, T0 + DAY / 2)), PLATFORM
    )
    assert half.facility_energy_kwh == 150.0 * 48

    missing = await energy.refused(
        "GetPue", pb.GetPueRequest(site_id=energy.base_station.id, period=period(T0, T0 + DAY)), PLATFORM
    )
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(missing) == "PUE_METERS_MISSING"
    unknown = await energy.refused("GetPue", pb.GetPueRequest(site_id="nowhere", period=period(T0, T0 + DAY)))
    assert has_violation(unknown, "site_id", "unknown site")
    backwards = await energy.refused(
        "GetPue", pb.GetPueRequest(site_id=energy.data_center.id, period=period(T0 + DAY, T0))
    )
    assert has_violation(backwards, "period.end_time", "after start_time")
    denied = await energy.refused(
        "GetPue", pb.GetPueRequest(site_id=energy.data_center.id, period=period(T0, T0 + DAY)), GUANGDONG_REGULATOR
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_load_rate_against_the_redundancy_design_maximum(energy: Energy) -> None:
    group = (
        await energy.call(
            "CreateRedundancyGroup",
            pb.CreateRedundancyGroupRequest(
                group=pb.RedundancyGroup(
                    site_id=energy.data_center.id, name="UPS 2N", scheme=pb.REDUNDANCY_SCHEME_TWO_N
                )
            ),
            energy.data_center.caller,
        )
    ).group
    asset = await energy.asset(redundancy_group_id=group.redundancy_group_id)
    meter = await energy.meter(
        asset_id=asset.asset_id,
        quantity=pb.METER_QUANTITY_ACTIVE_POWER,
        unit=pb.UNIT_KW,
        mode=pb.READING_MODE_AVERAGE,
        role=pb.METER_ROLE_OUTPUT,
    )
    loads = [30.0, 40.0, 45.0, 55.0, 60.0, 95.0, 105.0, 20.0]
    await energy.upsert(meter, readings(T0, loads))
    # The 95 kW interval was a battery self-test: not the real load.
    await energy.call(
        "RecordOperatingStates",
        pb.RecordOperatingStatesRequest(
            asset_id=asset.asset_id,
            intervals=[
                pb.OperatingStateInterval(
                    state=pb.OPERATING_STATE_SELF_TEST,
                    start_time=ts(T0 + minutes_td(75)),
                    end_time=ts(T0 + minutes_td(90)),
                )
            ],
        ),
        energy.data_center.caller,
    )
    stats = await energy.call(
        "GetLoadRateStatistics",
        pb.GetLoadRateStatisticsRequest(asset_id=asset.asset_id, period=period(T0, T0 + DAY)),
        energy.data_center.caller,
    )
    kept = [0.30, 0.40, 0.45, 0.55, 0.60, 1.05, 0.20]
    assert (stats.intervals, stats.excluded_intervals) == (7, 1)
    assert stats.mean == pytest.approx(sum(kept) / 7)
    assert stats.max == pytest.approx(1.05)
    assert stats.scheme == pb.REDUNDANCY_SCHEME_TWO_N and stats.design_max_load_rate == 0.5
    assert stats.above_design_max == 3 and stats.share_above_design_max == pytest.approx(3 / 7)
    counts = {round(b.lower, 1): b.count for b in stats.histogram}
    assert counts[0.2] == 1 and counts[0.4] == 2 and counts[0.5] == 1 and counts[0.6] == 1
    overload = stats.histogram[-1]
    assert overload.lower == 1.0 and not overload.HasField("upper") and overload.count == 1
    nothing = await energy.refused(
        "GetLoadRateStatistics",
        pb.GetLoadRateStatisticsRequest(asset_id=asset.asset_id, period=period(T0 + 10 * DAY, T0 + 11 * DAY)),
        energy.data_center.caller,
    )
    assert reason_of(nothing) == "NO_READINGS"


def minutes_td(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


async def test_efficiency_drift_raises_one_event_per_drifted_run(energy: Energy) -> None:
    asset = await energy.asset()  # rated 100 kW; curve 94 % at 25 %, 96 % at 50 %, 96.5 % at 75 %
    meter_in = await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_INPUT)
    meter_out = await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_OUTPUT)
    out = 12.5  # kWh per 15 minutes = 50 kW = 50 % load
    etas = [0.96] * 96 + [0.92] * (96 * 3)
    await energy.upsert(meter_out, readings(T0, [out] * len(etas)))
    await energy.upsert(meter_in, readings(T0, [round(out / eta, 6) for eta in etas]))
    # ECO mode on the second day for an hour: those intervals are left out of the efficiency.
    await energy.call(
        "RecordOperatingStates",
        pb.RecordOperatingStatesRequest(
            asset_id=asset.asset_id,
            intervals=[
                pb.OperatingStateInterval(
                    state=pb.OPERATING_STATE_ECO_BYPASS, start_time=ts(T0 + DAY), end_time=ts(T0 + DAY + minutes_td(60))
                )
            ],
        ),
        energy.data_center.caller,
    )
    request = pb.EvaluateEfficiencyDriftRequest(asset_id=asset.asset_id, period=period(T0, T0 + 4 * DAY))
    first = await energy.call("EvaluateEfficiencyDrift", request, energy.data_center.caller)
    windows = list(first.windows)
    assert len(windows) == 4 and first.threshold_pp == 2.0 and first.consecutive_windows == 3
    assert windows[0].measured_efficiency == pytest.approx(0.96) and not windows[0].drifted
    assert windows[0].load_fraction == pytest.approx(0.5) and windows[0].expected_efficiency == pytest.approx(0.96)
    assert all(w.drifted and w.drift_pp == pytest.approx(-4.0) for w in windows[1:])
    assert windows[1].excluded_intervals == 4 and windows[1].energy_out_kwh == pytest.approx(out * 92)
    assert first.alert and first.finding_id
    again = await energy.call("EvaluateEfficiencyDrift", request, JIANGSU_REGULATOR)
    assert again.alert and not again.finding_id  # the same drifted run: no second finding
    published = [
        pb.EfficiencyDriftDetected.FromString(p)
        for p in await energy.outbox("greenmesh.energy.v1.EfficiencyDriftDetected")
    ]
    assert [(e.finding_id, e.asset_id, len(e.windows)) for e in published] == [(first.finding_id, asset.asset_id, 3)]
    # Without a curve there is nothing to compare with.
    legacy = await energy.asset(equipment_class=pb.EQUIPMENT_CLASS_UPS, rated_capacity=kw(100))
    refused = await energy.refused(
        "EvaluateEfficiencyDrift",
        pb.EvaluateEfficiencyDriftRequest(asset_id=legacy.asset_id, period=period(T0, T0 + DAY)),
        energy.data_center.caller,
    )
    assert reason_of(refused) == "NO_EFFICIENCY_CURVE"


async def test_line_losses_of_a_voltage_upgrade(energy: Energy) -> None:
    meter = await energy.meter(
        site=energy.base_station,
        quantity=pb.METER_QUANTITY_CURRENT,
        unit=pb.UNIT_A,
        mode=pb.READING_MODE_AVERAGE,
        current=pb.CURRENT_KIND_DC,
        role=pb.METER_ROLE_AUX,
        interval=minutes(60),
    )
    await energy.upsert(meter, readings(T0, [180.0, 220.0], step=3600), energy.base_station.caller)
    reply = await energy.call(
        "CompareVoltageUpgrade",
        pb.CompareVoltageUpgradeRequest(
            meter_id=meter.meter_id,
            period=period(T0, T0 + DAY),
            voltage_v=53.5,
            length_m=50,
            cross_section_mm2=35,
            material=pb.CONDUCTOR_MATERIAL_COPPER,
        ),
        energy.base_station.caller,
    )
    resistance = conductor_resistance_ohm(50, 35)
    expected = voltage_upgrade_comparison(200.0, 53.5, resistance)
    assert reply.measured_current_a == 200.0 and reply.resistance_ohm == pytest.approx(resistance)
    assert reply.present.loss_w == pytest.approx(expected.present.loss_w)
    assert [o.voltage_class for o in reply.options] == [
        pb.VOLTAGE_CLASS_DC_240V,
        pb.VOLTAGE_CLASS_DC_336V,
        pb.VOLTAGE_CLASS_DC_400V,
        pb.VOLTAGE_CLASS_DC_800V,
    ]
    assert reply.options[0].loss_ratio == pytest.approx((53.5 / 240) ** 2)
    assert reply.options[0].saved_kwh_per_year == pytest.approx(expected.options[0].saved_w * 8.76)
    assert VoltageClass.DC_240V.nominal_v == reply.options[0].loss.voltage_v
    ac = await energy.meter(site=energy.base_station, role=pb.METER_ROLE_AUX)
    error = await energy.refused(
        "CompareVoltageUpgrade",
        pb.CompareVoltageUpgradeRequest(
            meter_id=ac.meter_id, period=period(T0, T0 + DAY), voltage_v=53.5, length_m=50, cross_section_mm2=35
        ),
        energy.base_station.caller,
    )
    assert has_violation(error, "meter_id", "DC current")


async def test_share_of_high_efficiency_equipment_in_service(energy: Energy) -> None:
    listed = pb.ProcurementRecord(procurement_date=day(dt.date(2025, 1, 5)), listed_at_procurement=True)
    grade_1 = pb.ProcurementRecord(
        procurement_date=day(dt.date(2025, 1, 5)),
        grade_at_procurement=pb.GradeRating(grade=1, standard="GB 20052", edition="2024"),
    )
    grade_3 = pb.ProcurementRecord(
        procurement_date=day(dt.date(2025, 1, 5)),
        grade_at_procurement=pb.GradeRating(grade=3, standard="GB 20052", edition="2024"),
    )
    await energy.asset(procurement=listed)
    await energy.asset(procurement=grade_3)
    await energy.asset(procurement=listed, lifecycle_state=pb.LIFECYCLE_STATE_PLANNED)  # not in service
    await energy.asset(
        site=energy.base_station,
        equipment_class=pb.EQUIPMENT_CLASS_RECTIFIER_48V,
        rated_capacity=kw(50),
        procurement=grade_1,
    )
    await energy.asset(site=energy.shenzhen)  # no procurement record: not high efficiency

    by_province = await energy.call(
        "GetEfficientShare", pb.GetEfficientShareRequest(group_by=[pb.SHARE_DIMENSION_PROVINCE]), PLATFORM
    )
    shares = {g.province_code: (g.in_service, g.high_efficiency, g.share) for g in by_province.groups}
    assert shares == {"32": (3, 2, pytest.approx(2 / 3)), "44": (1, 0, 0.0)}
    jiangsu = await energy.call(
        "GetEfficientShare",
        pb.GetEfficientShareRequest(group_by=[pb.SHARE_DIMENSION_EQUIPMENT_CLASS]),
        JIANGSU_REGULATOR,
    )
    classes = {g.equipment_class: (g.in_service, g.high_efficiency) for g in jiangsu.groups}
    assert classes == {pb.EQUIPMENT_CLASS_UPS: (2, 1), pb.EQUIPMENT_CLASS_RECTIFIER_48V: (1, 1)}
    ups = next(g for g in jiangsu.groups if g.equipment_class == pb.EQUIPMENT_CLASS_UPS)
    assert ups.capacity_share == pytest.approx(0.5) and not ups.operator_id and not ups.province_code
    mine = await energy.call(
        "GetEfficientShare",
        pb.GetEfficientShareRequest(group_by=[pb.SHARE_DIMENSION_OPERATOR]),
        energy.base_station.caller,
    )
    assert [(g.operator_id, g.share) for g in mine.groups] == [(energy.base_station.operator.participant_id, 1.0)]
    wider = await energy.refused(
        "GetEfficientShare", pb.GetEfficientShareRequest(division_prefix="44"), JIANGSU_REGULATOR
    )
    assert wider.code() == grpc.StatusCode.PERMISSION_DENIED
    assert math.isclose(
        (await energy.call("GetEfficientShare", pb.GetEfficientShareRequest(), PLATFORM)).groups[0].share, 2 / 4
    )


async def test_efficiency_drift_sums_every_meter_of_the_asset_or_the_ones_named(energy: Energy) -> None:
    asset = await energy.asset()  # rated 100 kW; the curve gives 96 % at 50 % load
    meter_in = await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_INPUT)
    branch_a = await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_OUTPUT, name="branch A")
    branch_b = await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_OUTPUT, name="branch B")
    quarters = 96 * 3
    await energy.upsert(branch_a, readings(T0, [6.25] * quarters))  # two branches of 25 kW: 50 % load together
    await energy.upsert(branch_b, readings(T0, [6.25] * quarters))
    await energy.upsert(meter_in, readings(T0, [round(12.5 / 0.96, 6)] * quarters))
    request = pb.EvaluateEfficiencyDriftRequest(asset_id=asset.asset_id, period=period(T0, T0 + 3 * DAY))

    # By default the asset's whole output (both branches) against its whole input: on the curve, no drift.
    whole = await energy.call("EvaluateEfficiencyDrift", request, energy.data_center.caller)
    assert sorted(whole.output_meter_ids) == sorted([branch_a.meter_id, branch_b.meter_id])
    assert list(whole.input_meter_ids) == [meter_in.meter_id]
    assert all(w.measured_efficiency == pytest.approx(0.96) for w in whole.windows) and not whole.alert

    # One branch alone carries half the output: named, it is what is compared (and it drifts far below the curve).
    one = pb.EvaluateEfficiencyDriftRequest()
    one.CopyFrom(request)
    one.output_meter_ids.append(branch_a.meter_id)
    half = await energy.call("EvaluateEfficiencyDrift", one, energy.data_center.caller)
    assert list(half.output_meter_ids) == [branch_a.meter_id]
    assert half.windows[0].measured_efficiency == pytest.approx(0.48) and half.alert and half.finding_id
    published = [
        pb.EfficiencyDriftDetected.FromString(p)
        for p in await energy.outbox("greenmesh.energy.v1.EfficiencyDriftDetected")
    ]
    assert [(list(e.input_meter_ids), list(e.output_meter_ids)) for e in published] == [
        ([meter_in.meter_id], [branch_a.meter_id])
    ]

    # Meters named in the wrong role, not of the asset, or twice are field violations.
    other = await energy.meter(role=pb.METER_ROLE_OUTPUT)
    wrong = pb.EvaluateEfficiencyDriftRequest()
    wrong.CopyFrom(request)
    wrong.input_meter_ids.extend([branch_a.meter_id, meter_in.meter_id, meter_in.meter_id])
    wrong.output_meter_ids.append(other.meter_id)
    error = await energy.refused("EvaluateEfficiencyDrift", wrong, energy.data_center.caller)
    assert has_violation(error, "input_meter_ids[0]", "not an INPUT energy meter of the asset")
    assert has_violation(error, "input_meter_ids[2]", "named twice")
    assert has_violation(error, "output_meter_ids[0]", "not an OUTPUT energy meter of the asset")

    # Meters of different intervals cannot be compared interval by interval: by default that is a precondition;
    # naming meters of one interval works.
    await energy.meter(asset_id=asset.asset_id, role=pb.METER_ROLE_OUTPUT, interval=minutes(60))
    mixed = await energy.refused("EvaluateEfficiencyDrift", request, energy.data_center.caller)
    assert mixed.code() == grpc.StatusCode.FAILED_PRECONDITION and reason_of(mixed) == "METER_INTERVALS_DIFFER"
    both = pb.EvaluateEfficiencyDriftRequest()
    both.CopyFrom(request)
    both.output_meter_ids.extend([branch_a.meter_id, branch_b.meter_id])
    assert not (await energy.call("EvaluateEfficiencyDrift", both, energy.data_center.caller)).alert
