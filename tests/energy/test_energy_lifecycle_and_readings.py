"""The energy service's rules on records: the asset lifecycle (allowed, illegal and out-of-order transitions),
meter definitions, reading validation and quality flags (negative delta, rollover, out of range, stuck,
estimated), overlaps, idempotent re-ingestion, and operating states with the intervals they exclude from
efficiency and load figures. Pure domain: no database, gRPC or NATS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
import re

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import FailedPrecondition, InvalidArgument
from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.lifecycle import (
    ALLOWED_TRANSITIONS,
    INITIAL_STATES,
    LifecycleError,
    LifecycleHistory,
    LifecycleReason,
    LifecycleState,
    check_transition,
    replay,
    require_transition,
)
from services.energy.domain.readings import (
    EXCLUDED_STATES,
    CheckedReading,
    Direction,
    Figure,
    MeterQuantity,
    MeterSpec,
    OperatingState,
    Period,
    QualityFlag,
    QualityRules,
    Reading,
    ReadingMode,
    StateInterval,
    check_readings,
    classify_upsert,
    excluded_readings,
    find_overlaps,
    intervals_in,
    meter_violations,
    reading_violations,
    state_violations,
)
from services.energy.domain.units import Quantity, Unit

L = LifecycleState
R = LifecycleReason
CN = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2026, 3, 1, 0, 0, tzinfo=CN)
Q = dt.timedelta(minutes=15)
D0 = dt.date(2026, 1, 5)


def fields_of(error: InvalidArgument) -> set[str]:
    return {v.field for v in error.violations}


# ---------------------------------------------------------------------------------------------
# Lifecycle


def test_the_ordinary_life_of_an_asset() -> None:
    moves = [
        (L.PLANNED, D0),
        (L.PROCURED, D0 + dt.timedelta(days=30)),
        (L.INSTALLED, D0 + dt.timedelta(days=60)),
        (L.IN_SERVICE, D0 + dt.timedelta(days=60)),  # same day as the installation: allowed
        (L.STANDBY, D0 + dt.timedelta(days=400)),
        (L.IN_SERVICE, D0 + dt.timedelta(days=420)),
        (L.DECOMMISSIONED, D0 + dt.timedelta(days=3000)),
        (L.RETIRED, D0 + dt.timedelta(days=3010)),
    ]
    history = replay(moves)
    assert history.state is L.RETIRED
    assert [m.from_state for m in history.transitions][:2] == [None, L.PLANNED]
    assert history.state_on(D0 - dt.timedelta(days=1)) is None
    assert history.state_on(D0 + dt.timedelta(days=60)) is L.IN_SERVICE  # the last move of that day
    assert history.state_on(D0 + dt.timedelta(days=410)) is L.STANDBY


def _expected(current: LifecycleState, target: LifecycleState) -> LifecycleReason | None:
    if current is L.RETIRED:
        return R.LIFECYCLE_STATE_FINAL
    if current is target:
        return R.LIFECYCLE_STATE_UNCHANGED
    return None if target in ALLOWED_TRANSITIONS[current] else R.ILLEGAL_LIFECYCLE_TRANSITION


@pytest.mark.parametrize(("current", "target"), list(itertools.product(L, L)))
def test_every_pair_of_states_against_the_table(current: LifecycleState, target: LifecycleState) -> None:
    assert check_transition(current, D0, target, D0) is _expected(current, target)


def test_the_table_itself() -> None:
    # the research note's chain, plus the documented side paths; RETIRED is final
    assert ALLOWED_TRANSITIONS[L.IN_SERVICE] == {L.STANDBY, L.DECOMMISSIONED}
    assert ALLOWED_TRANSITIONS[L.STANDBY] == {L.IN_SERVICE, L.DECOMMISSIONED}
    assert ALLOWED_TRANSITIONS[L.RETIRED] == set()
    assert L.IN_SERVICE not in ALLOWED_TRANSITIONS[L.PLANNED]  # no skipping procurement and installation
    assert L.IN_SERVICE not in ALLOWED_TRANSITIONS[L.DECOMMISSIONED]  # must be reinstalled first
    assert set(ALLOWED_TRANSITIONS) == set(L)


def test_registration_states() -> None:
    for state in L:
        reason = check_transition(None, None, state, D0)
        assert (reason is None) is (state in INITIAL_STATES)
    assert check_transition(None, None, L.RETIRED, D0) is R.ILLEGAL_INITIAL_LIFECYCLE_STATE
    assert check_transition(None, None, L.DECOMMISSIONED, D0) is R.ILLEGAL_INITIAL_LIFECYCLE_STATE


def test_a_transition_dated_before_the_last_one_is_refused() -> None:
    last = dt.date(2026, 2, 1)
    assert (
        check_transition(L.INSTALLED, last, L.IN_SERVICE, dt.date(2026, 1, 31)) is R.LIFECYCLE_TRANSITION_OUT_OF_ORDER
    )
    assert check_transition(L.INSTALLED, last, L.IN_SERVICE, last) is None
    history = replay([(L.PLANNED, last)])
    with pytest.raises(LifecycleError) as caught:
        history.apply(L.PROCURED, dt.date(2026, 1, 1))
    assert caught.value.reason == "LIFECYCLE_TRANSITION_OUT_OF_ORDER"
    assert caught.value.metadata["last_transition_date"] == "2026-02-01"


def test_a_transition_in_the_future_is_refused_when_today_is_known() -> None:
    today = dt.date(2026, 3, 1)
    assert check_transition(L.INSTALLED, None, L.IN_SERVICE, today + dt.timedelta(days=1), today=today) is (
        R.LIFECYCLE_TRANSITION_IN_FUTURE
    )
    assert check_transition(L.INSTALLED, None, L.IN_SERVICE, today, today=today) is None


def test_refusals_are_failed_preconditions_with_an_error_info_reason() -> None:
    with pytest.raises(LifecycleError) as caught:
        require_transition(L.PLANNED, D0, L.IN_SERVICE, D0)
    error = caught.value
    assert isinstance(error, FailedPrecondition)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "ILLEGAL_LIFECYCLE_TRANSITION"
    assert error.metadata == {
        "from_state": "PLANNED",
        "to_state": "IN_SERVICE",
        "effective_date": D0.isoformat(),
        "last_transition_date": D0.isoformat(),
    }
    assert "PLANNED cannot move to IN_SERVICE" in error.message
    assert [type(d).__name__ for d in error.details()] == ["ErrorInfo"]


def test_reasons_are_upper_snake_error_info_reasons() -> None:
    for reason in R:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,62}[A-Z0-9]", reason.value)


def test_an_illegal_move_leaves_the_history_as_it_was() -> None:
    history = LifecycleHistory().apply(L.IN_SERVICE, D0)
    with pytest.raises(LifecycleError):
        history.apply(L.PROCURED, D0)
    assert history.state is L.IN_SERVICE and len(history.transitions) == 1


# ---------------------------------------------------------------------------------------------
# Meters

ENERGY_METER = MeterSpec(
    meter_id="ups-1-in",
    quantity=MeterQuantity.ACTIVE_ENERGY,
    unit=Unit.KWH,
    mode=ReadingMode.INTERVAL,
    interval=Q,
    rated_max=Quantity(100.0, Unit.KW),  # 100 kW · 0.25 h = 25 kWh per interval; + 10 % headroom = 27.5
)
REGISTER = dataclasses.replace(ENERGY_METER, meter_id="ups-1-reg", mode=ReadingMode.CUMULATIVE, register_max=100_000.0)
POWER_METER = MeterSpec(
    "ups-1-kw", MeterQuantity.ACTIVE_POWER, Unit.KW, ReadingMode.AVERAGE, Q, rated_max=Quantity(100.0, Unit.KW)
)


def test_valid_meters() -> None:
    for meter in (ENERGY_METER, REGISTER, POWER_METER):
        assert meter_violations(meter) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"unit": Unit.KW}, "meter.unit"),  # an energy meter in kW
        ({"mode": ReadingMode.AVERAGE}, "meter.mode"),  # energy is integrated, not averaged
        ({"rated_max": Quantity(100.0, Unit.KWH)}, "meter.rated_max.unit"),  # energy meters are rated by power
        ({"rated_max": Quantity(-1.0, Unit.KW)}, "meter.rated_max.value"),
        ({"register_max": 1000.0}, "meter.register_max"),  # only for cumulative registers
        ({"interval": dt.timedelta(0)}, "meter.interval"),
        ({"mode": ReadingMode.CUMULATIVE, "direction": Direction.NET}, "meter.direction"),
        ({"mode": ReadingMode.CUMULATIVE, "register_max": 0.0}, "meter.register_max"),
    ],
)
def test_meter_rules(changes: dict[str, object], field: str) -> None:
    meter = dataclasses.replace(ENERGY_METER, **changes)  # type: ignore[arg-type]
    found = meter_violations(meter)
    assert field in {v.field for v in found}
    if field == "meter.unit":
        assert found[0].description.startswith("UNIT_MISMATCH")


def test_power_meters_are_read_as_averages() -> None:
    assert "meter.mode" in {
        v.field for v in meter_violations(dataclasses.replace(POWER_METER, mode=ReadingMode.INTERVAL))
    }


# ---------------------------------------------------------------------------------------------
# Readings: rejections


def quarter(i: int, value: float, *, estimated: bool = False) -> Reading:
    return Reading(T0 + i * Q, T0 + (i + 1) * Q, value, estimated)


def flags_of(checked: tuple[CheckedReading, ...]) -> list[set[QualityFlag]]:
    return [set(c.flags) for c in checked]


def test_a_clean_batch_has_no_flags_and_comes_back_in_time_order() -> None:
    batch = [quarter(2, 12.0), quarter(0, 10.0), quarter(1, 11.0)]
    checked = check_readings(ENERGY_METER, batch)
    assert [c.reading.start for c in checked] == [T0, T0 + Q, T0 + 2 * Q]
    assert flags_of(checked) == [set(), set(), set()]
    assert [c.consumption for c in checked] == [10.0, 11.0, 12.0]


@pytest.mark.parametrize(
    ("reading", "field"),
    [
        (Reading(dt.datetime(2026, 3, 1), dt.datetime(2026, 3, 1, 0, 15), 1.0), "readings[0].start"),  # naive
        (Reading(T0 + Q, T0, 1.0), "readings[0].end"),  # reversed
        (Reading(T0, T0 + 2 * Q, 1.0), "readings[0].end"),  # not the meter's interval
        (quarter(0, float("nan")), "readings[0].value"),
        (quarter(0, -0.5), "readings[0].value"),  # negative imported energy
    ],
)
def test_readings_that_cannot_be_are_rejected(reading: Reading, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_readings(ENERGY_METER, [reading])
    assert field in fields_of(caught.value)


def test_net_meters_may_go_negative_and_dc_voltage_may_be_negative() -> None:
    net = dataclasses.replace(ENERGY_METER, direction=Direction.NET)
    assert check_readings(net, [quarter(0, -3.0)])[0].consumption == -3.0
    volts = MeterSpec("dc-bus", MeterQuantity.VOLTAGE, Unit.V, ReadingMode.AVERAGE, Q, current=CurrentKind.DC)
    assert check_readings(volts, [quarter(0, -53.5)])[0].flags == frozenset()  # a -48 V plant reads negative
    with pytest.raises(InvalidArgument):
        check_readings(dataclasses.replace(volts, current=CurrentKind.AC), [quarter(0, -230.0)])


def test_the_whole_batch_is_refused_with_every_violation() -> None:
    batch = [quarter(0, 1.0), quarter(1, -1.0), quarter(2, float("inf"))]
    with pytest.raises(InvalidArgument) as caught:
        check_readings(ENERGY_METER, batch)
    assert fields_of(caught.value) == {"readings[1].value", "readings[2].value"}


def test_overlapping_readings_are_rejected_back_to_back_are_not() -> None:
    overlapping = [quarter(0, 1.0), Reading(T0 + dt.timedelta(minutes=10), T0 + dt.timedelta(minutes=25), 1.0)]
    with pytest.raises(InvalidArgument) as caught:
        check_readings(ENERGY_METER, overlapping)
    assert fields_of(caught.value) == {"readings[1]"}
    assert "overlaps readings[0]" in caught.value.violations[0].description
    assert len(check_readings(ENERGY_METER, [quarter(0, 1.0), quarter(1, 1.0)])) == 2


def test_the_same_interval_twice_in_a_batch() -> None:
    identical = check_readings(ENERGY_METER, [quarter(0, 1.0), quarter(0, 1.0)])
    assert len(identical) == 1  # an identical repeat collapses
    with pytest.raises(InvalidArgument) as caught:
        check_readings(ENERGY_METER, [quarter(0, 1.0), quarter(0, 2.0)])
    assert fields_of(caught.value) == {"readings[1]"}


def test_overlap_with_stored_readings_under_another_key_is_rejected() -> None:
    stored = [quarter(0, 1.0), quarter(1, 1.0)]
    shifted = Reading(T0 + dt.timedelta(minutes=20), T0 + dt.timedelta(minutes=35), 1.0)
    with pytest.raises(InvalidArgument) as caught:
        check_readings(ENERGY_METER, [quarter(3, 1.0), shifted], existing=stored)
    assert fields_of(caught.value) == {"readings[1]"}
    assert "stored reading" in caught.value.violations[0].description
    # the same keys are an upsert, not an overlap
    assert len(check_readings(ENERGY_METER, [quarter(0, 5.0), quarter(1, 1.0)], existing=stored)) == 2


def test_find_overlaps_reports_every_overlapping_span() -> None:
    spans = [
        Period(T0, T0 + 4 * Q),
        Period(T0 + Q, T0 + 2 * Q),
        Period(T0 + 3 * Q, T0 + 5 * Q),
        Period(T0 + 5 * Q, T0 + 6 * Q),
    ]
    assert find_overlaps(spans) == [(0, 1), (0, 2)]
    assert find_overlaps([]) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 6)), max_size=12))
def test_find_overlaps_agrees_with_brute_force(raw: list[tuple[int, int]]) -> None:
    spans = [Period(T0 + s * Q, T0 + (s + n) * Q) for s, n in raw]
    found = {i for pair in find_overlaps(spans) for i in pair}
    brute = {i for i, j in itertools.permutations(range(len(spans)), 2) if spans[i].overlaps(spans[j])}
    assert found == brute


# ---------------------------------------------------------------------------------------------
# Readings: quality flags


def test_estimated_and_out_of_range() -> None:
    checked = check_readings(ENERGY_METER, [quarter(0, 27.0), quarter(1, 28.0), quarter(2, 3.0, estimated=True)])
    # limit = 100 kW · 0.25 h · 1.1 = 27.5 kWh: 27 passes, 28 is flagged but kept
    assert flags_of(checked) == [set(), {QualityFlag.OUT_OF_RANGE}, {QualityFlag.ESTIMATED}]
    assert checked[1].consumption == 28.0
    looser = check_readings(ENERGY_METER, [quarter(1, 28.0)], rules=QualityRules(range_headroom=0.2))
    assert looser[0].flags == frozenset()  # 25 · 1.2 = 30


def test_out_of_range_in_another_unit() -> None:
    in_wh = dataclasses.replace(ENERGY_METER, unit=Unit.WH)
    checked = check_readings(in_wh, [quarter(0, 27_000.0), quarter(1, 28_000.0)])
    assert flags_of(checked) == [set(), {QualityFlag.OUT_OF_RANGE}]


def test_average_power_out_of_range() -> None:
    checked = check_readings(POWER_METER, [quarter(0, 105.0), quarter(1, 120.0)])
    assert flags_of(checked) == [set(), {QualityFlag.OUT_OF_RANGE}]  # 100 kW · 1.1 = 110
    assert checked[0].consumption is None


def test_stuck_after_n_identical_values() -> None:
    rules = QualityRules(stuck_run=4)
    seven = check_readings(ENERGY_METER, [quarter(i, 5.0) for i in range(6)], rules=rules)
    # runs: 1, 2, 3, 4, 5, 6 → the 4th and later are stuck
    assert [QualityFlag.STUCK in f for f in flags_of(seven)] == [False, False, False, True, True, True]
    varied = check_readings(ENERGY_METER, [quarter(i, 5.0 + (i % 2)) for i in range(6)], rules=rules)
    assert all(not f for f in flags_of(varied))
    assert QualityRules().stuck_run == 8


def test_stuck_runs_continue_across_batches() -> None:
    rules = QualityRules(stuck_run=4)
    before = [quarter(i, 5.0) for i in range(3)]
    checked = check_readings(ENERGY_METER, [quarter(3, 5.0), quarter(4, 6.0)], preceding=before, rules=rules)
    assert flags_of(checked) == [{QualityFlag.STUCK}, set()]


def test_zero_runs_are_stuck_unless_the_meter_says_idle_is_normal() -> None:
    zeros = [quarter(i, 0.0) for i in range(4)]
    assert QualityFlag.STUCK in check_readings(ENERGY_METER, zeros, rules=QualityRules(stuck_run=4))[-1].flags
    idle = QualityRules(stuck_run=4, stuck_ignores_zero=True)
    assert all(not c.flags for c in check_readings(ENERGY_METER, zeros, rules=idle))


def test_cumulative_register_deltas_and_negative_delta() -> None:
    checked = check_readings(REGISTER, [quarter(0, 100.0), quarter(1, 110.0), quarter(2, 105.0), quarter(3, 115.0)])
    # 100 → 110: 10 kWh; 110 → 105: the register went down and no wrap explains it; 105 → 115: 10 kWh
    assert [c.consumption for c in checked] == [None, 10.0, None, 10.0]
    assert flags_of(checked) == [set(), set(), {QualityFlag.NEGATIVE_DELTA}, set()]
    # the first of a batch takes its delta from the stored reading before it
    continued = check_readings(REGISTER, [quarter(1, 112.0)], preceding=[quarter(0, 100.0)])
    assert continued[0].consumption == 12.0


def test_rollover_at_the_register_span() -> None:
    # a five-digit register: 99 990 → 5 is a wrap of 5 + 100 000 - 99 990 = 15 kWh, under the 27.5 kWh limit
    checked = check_readings(REGISTER, [quarter(0, 99_990.0), quarter(1, 5.0)])
    assert flags_of(checked) == [set(), {QualityFlag.ROLLOVER}]
    assert checked[1].consumption == pytest.approx(15.0)
    # 99 000 → 5 would be 1 005 kWh in 15 minutes on a 100 kW unit: a reset, not a wrap
    reset = check_readings(REGISTER, [quarter(0, 99_000.0), quarter(1, 5.0)])
    assert flags_of(reset) == [set(), {QualityFlag.NEGATIVE_DELTA}]
    # without a rating, a wrap must stay below 10 % of the span: 1 005 < 10 000
    unrated = dataclasses.replace(REGISTER, rated_max=None)
    assert flags_of(check_readings(unrated, [quarter(0, 99_000.0), quarter(1, 5.0)])) == [set(), {QualityFlag.ROLLOVER}]
    # without a span there is no wrap at all
    spanless = dataclasses.replace(REGISTER, register_max=None)
    assert flags_of(check_readings(spanless, [quarter(0, 99_990.0), quarter(1, 5.0)])) == [
        set(),
        {QualityFlag.NEGATIVE_DELTA},
    ]


def test_register_beyond_its_span_or_below_zero_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_readings(REGISTER, [quarter(0, 100_000.0), quarter(1, -1.0)])
    assert fields_of(caught.value) == {"readings[0].value", "readings[1].value"}


def test_temperatures_below_absolute_zero_are_rejected() -> None:
    thermometer = MeterSpec("t-out", MeterQuantity.TEMPERATURE, Unit.DEG_C, ReadingMode.AVERAGE, Q)
    assert check_readings(thermometer, [quarter(0, -30.0)])[0].flags == frozenset()
    with pytest.raises(InvalidArgument):
        check_readings(thermometer, [quarter(0, -300.0)])


def test_an_empty_batch_is_nothing() -> None:
    assert check_readings(ENERGY_METER, []) == ()


def test_cumulative_delta_out_of_range_and_gaps() -> None:
    checked = check_readings(REGISTER, [quarter(0, 100.0), quarter(1, 130.0), quarter(3, 140.0)])
    # 30 kWh in one quarter hour > 27.5: flagged; across the missing quarter 1→3 the 10 kWh spans 30 minutes,
    # so it is no single interval's consumption
    assert flags_of(checked) == [set(), {QualityFlag.OUT_OF_RANGE}, set()]
    assert [c.consumption for c in checked] == [None, 30.0, None]


@st.composite
def batches(draw: st.DrawFn) -> list[Reading]:
    slots = draw(st.lists(st.integers(0, 60), min_size=1, max_size=25, unique=True))
    values = st.sampled_from([0.0, 5.0, 5.0, 12.5, 26.0, 30.0])
    return [quarter(slot, draw(values), estimated=draw(st.booleans())) for slot in slots]


@settings(max_examples=200, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_reingesting_the_same_readings_gives_the_same_flags(batch: list[Reading], rng: random.Random) -> None:
    rules = QualityRules(stuck_run=3)
    first = check_readings(ENERGY_METER, batch, rules=rules)
    shuffled = batch[:]
    rng.shuffle(shuffled)
    again = check_readings(ENERGY_METER, shuffled, existing=batch, rules=rules)  # stored already: an upsert
    assert again == first
    plan = classify_upsert(existing=batch, incoming=shuffled)
    assert (plan.inserts, plan.updates) == ((), ())
    assert len(plan.unchanged) == len(batch)


def test_classify_upsert() -> None:
    stored = [quarter(0, 1.0), quarter(1, 2.0), quarter(2, 3.0)]
    plan = classify_upsert(stored, [quarter(0, 1.0), quarter(1, 2.5), quarter(2, 3.0, estimated=True), quarter(3, 4.0)])
    assert plan.unchanged == (quarter(0, 1.0),)
    assert plan.updates == (quarter(1, 2.5), quarter(2, 3.0, estimated=True))
    assert plan.inserts == (quarter(3, 4.0),)


def test_reading_violations_lists_without_raising() -> None:
    assert reading_violations(ENERGY_METER, [quarter(0, 1.0)]) == []
    assert {v.field for v in reading_violations(ENERGY_METER, [quarter(0, -1.0)], field="batch")} == {"batch[0].value"}


def test_intervals_in_a_period() -> None:
    year = Period(dt.datetime(2025, 1, 1, tzinfo=CN), dt.datetime(2026, 1, 1, tzinfo=CN))
    assert intervals_in(year, Q) == 35_040  # 365 · 96
    assert year.contains(Period(year.start, year.start + Q)) and not year.contains(Period(year.end - Q, year.end + Q))
    with pytest.raises(InvalidArgument):
        intervals_in(year, dt.timedelta(0))


# ---------------------------------------------------------------------------------------------
# Operating states


def state(kind: OperatingState, start: int, end: int, awake: int | None = None) -> StateInterval:
    return StateInterval(kind, T0 + start * dt.timedelta(minutes=5), T0 + end * dt.timedelta(minutes=5), awake)


def test_state_intervals_must_not_overlap() -> None:
    assert state_violations([state(OperatingState.ONLINE, 0, 6), state(OperatingState.SELF_TEST, 6, 8)]) == []
    found = state_violations([state(OperatingState.ONLINE, 0, 6), state(OperatingState.SELF_TEST, 5, 8)])
    assert {v.field for v in found} == {"states[1]"}
    stored = [state(OperatingState.MAINTENANCE, 10, 20)]
    clash = state_violations([state(OperatingState.FAULT, 19, 22)], existing=stored)
    assert {v.field for v in clash} == {"states[0]"}
    assert state_violations([state(OperatingState.MAINTENANCE, 10, 20)], existing=stored) == []  # a re-send


def test_state_interval_fields() -> None:
    assert state_violations([state(OperatingState.MODULE_HIBERNATION, 0, 6, awake=2)]) == []
    wrong_state = state_violations([state(OperatingState.ONLINE, 0, 6, awake=2)])
    assert {v.field for v in wrong_state} == {"states[0].awake_modules"}
    none_awake = state_violations([state(OperatingState.MODULE_HIBERNATION, 0, 6, awake=0)])
    assert {v.field for v in none_awake} == {"states[0].awake_modules"}
    assert {v.field for v in state_violations([state(OperatingState.ONLINE, 6, 6)])} == {"states[0].end"}


def test_which_states_each_figure_excludes() -> None:
    efficiency, load = EXCLUDED_STATES[Figure.EFFICIENCY], EXCLUDED_STATES[Figure.LOAD_RATE]
    assert {OperatingState.SELF_TEST, OperatingState.ECO_BYPASS, OperatingState.MAINTENANCE} <= efficiency
    assert OperatingState.ONLINE not in efficiency | load
    assert OperatingState.MODULE_HIBERNATION not in efficiency | load  # the measure being judged stays in
    assert OperatingState.ON_BATTERY in efficiency and OperatingState.ON_BATTERY not in load
    assert OperatingState.ECO_BYPASS not in load
    assert {OperatingState.STANDBY, OperatingState.SELF_TEST, OperatingState.FAULT} <= load


def test_excluded_reading_intervals() -> None:
    readings = [quarter(i, 10.0) for i in range(8)]  # [00:00, 00:15), …, [01:45, 02:00)
    states = [
        state(OperatingState.SELF_TEST, 4, 8),  # 00:20-00:40: touches readings 1 and 2
        state(OperatingState.ECO_BYPASS, 12, 18),  # 01:00-01:30: readings 4 and 5
        state(OperatingState.MODULE_HIBERNATION, 18, 21, awake=2),  # 01:30-01:45: reading 6, never excluded
        state(OperatingState.ON_BATTERY, 21, 24),  # 01:45-02:00: reading 7
    ]
    assert excluded_readings(readings, states, Figure.EFFICIENCY) == {1, 2, 4, 5, 7}
    assert excluded_readings(readings, states, Figure.LOAD_RATE) == {1, 2}
    # a state ending exactly where a reading starts does not touch it
    assert excluded_readings(readings, [state(OperatingState.FAULT, 0, 3)], Figure.LOAD_RATE) == {0}
    assert excluded_readings(readings, [], Figure.EFFICIENCY) == frozenset()
    with pytest.raises(InvalidArgument):
        excluded_readings(
            readings, [state(OperatingState.FAULT, 0, 5), state(OperatingState.STANDBY, 4, 6)], Figure.LOAD_RATE
        )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(list(OperatingState)), st.integers(1, 9), st.integers(0, 6)), max_size=8),
    st.sampled_from(list(Figure)),
)
def test_excluded_readings_agree_with_brute_force(raw: list[tuple[OperatingState, int, int]], figure: Figure) -> None:
    # lay the states end to end with gaps so they never overlap (lengths and gaps in 5-minute steps)
    states, cursor = [], 0
    for kind, length, gap in raw:
        cursor += gap
        states.append(state(kind, cursor, cursor + length, 1 if kind is OperatingState.MODULE_HIBERNATION else None))
        cursor += length
    readings = [quarter(i, 1.0) for i in range(cursor // 3 + 2)]
    expected = {
        i
        for i, r in enumerate(readings)
        if any(s.state in EXCLUDED_STATES[figure] and s.start < r.end and r.start < s.end for s in states)
    }
    assert excluded_readings(readings, states, figure) == expected
