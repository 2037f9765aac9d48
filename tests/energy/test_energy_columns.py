"""The columnar reading checks (what the bulk ingest runs) give exactly what the object path gives: the same
distinct readings in the same order, the same flags and consumption, and the same violations when a batch is
refused. Generated batches cover every reading mode, ratings, register spans, duplicates, overlaps within the batch
and with stored readings, and stuck runs across the stored readings before the batch. Pure domain."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshkit.errors import InvalidArgument
from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.columns import ReadingColumns, check_columns, upsert_plan
from services.energy.domain.readings import (
    Direction,
    MeterQuantity,
    MeterSpec,
    QualityFlag,
    QualityRules,
    Reading,
    ReadingMode,
    check_readings,
    classify_upsert,
)
from services.energy.domain.units import Quantity, Unit

T0 = 1_767_196_800  # 2026-01-01 00:00 +08:00
Q = 900

METERS = [
    MeterSpec("energy", MeterQuantity.ACTIVE_ENERGY, Unit.KWH, ReadingMode.INTERVAL, dt.timedelta(minutes=15)),
    MeterSpec(
        "rated",
        MeterQuantity.ACTIVE_ENERGY,
        Unit.KWH,
        ReadingMode.INTERVAL,
        None,
        rated_max=Quantity(20, Unit.KW),
    ),
    MeterSpec(
        "register",
        MeterQuantity.ACTIVE_ENERGY,
        Unit.KWH,
        ReadingMode.CUMULATIVE,
        None,
        rated_max=Quantity(40, Unit.KW),
        register_max=100.0,
    ),
    MeterSpec("spanless", MeterQuantity.ACTIVE_ENERGY, Unit.WH, ReadingMode.CUMULATIVE, None),
    MeterSpec("unrated", MeterQuantity.ACTIVE_ENERGY, Unit.KWH, ReadingMode.CUMULATIVE, None, register_max=50.0),
    MeterSpec("power", MeterQuantity.ACTIVE_POWER, Unit.KW, ReadingMode.AVERAGE, None, rated_max=Quantity(5, Unit.KW)),
    MeterSpec("net", MeterQuantity.ACTIVE_ENERGY, Unit.KWH, ReadingMode.INTERVAL, None, direction=Direction.NET),
    MeterSpec("dc", MeterQuantity.VOLTAGE, Unit.V, ReadingMode.AVERAGE, None, current=CurrentKind.DC),
    MeterSpec("temperature", MeterQuantity.TEMPERATURE, Unit.DEG_C, ReadingMode.AVERAGE, None),
]

VALUES = st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 49.0, 60.0, 99.0, 120.0, -1.0, -300.0])


@st.composite
def readings(draw: st.DrawFn, *, first: int, count: int, aligned: float = 0.9) -> list[Reading]:
    found = []
    for _ in range(draw(st.integers(0, count))):
        slot = draw(st.integers(0, 24))
        start = first + slot * Q + (0 if draw(st.floats(0, 1)) < aligned else draw(st.sampled_from([-300, 300])))
        length = Q if draw(st.floats(0, 1)) < aligned else draw(st.sampled_from([0, 600, 1800]))
        moment = dt.datetime.fromtimestamp(start, dt.UTC)
        found.append(Reading(moment, moment + dt.timedelta(seconds=length), draw(VALUES), draw(st.booleans())))
    return found


def stored_disjoint(items: list[Reading]) -> list[Reading]:
    """Stored readings never overlap each other: keep a non-overlapping subset."""
    kept: list[Reading] = []
    for reading in sorted(items, key=lambda r: (r.start, r.end)):
        if reading.end > reading.start and (not kept or kept[-1].end <= reading.start):
            kept.append(reading)
    return kept


def columns(items: list[Reading]) -> ReadingColumns:
    return ReadingColumns.of(
        [int(r.start.timestamp()) for r in items],
        [int(r.end.timestamp()) for r in items],
        [r.value for r in items],
        [r.estimated for r in items],
    )


@settings(max_examples=400, deadline=None)
@given(
    meter=st.sampled_from(METERS),
    batch=readings(first=T0, count=12),
    before=readings(first=T0 - 12 * Q, count=10, aligned=1.0),
    around=readings(first=T0, count=6, aligned=0.8),
    stuck_run=st.sampled_from([2, 3, 8]),
    ignores_zero=st.booleans(),
)
def test_columns_match_the_reading_checks(
    meter: MeterSpec,
    batch: list[Reading],
    before: list[Reading],
    around: list[Reading],
    stuck_run: int,
    ignores_zero: bool,
) -> None:
    rules = QualityRules(stuck_run=stuck_run, stuck_ignores_zero=ignores_zero)
    preceding = stored_disjoint(before)
    existing = stored_disjoint(around)
    try:
        expected = check_readings(meter, batch, preceding=preceding, existing=existing, rules=rules)
    except InvalidArgument as refused:
        with pytest.raises(InvalidArgument) as raised:
            check_columns(meter, columns(batch), preceding=columns(preceding), existing=columns(existing), rules=rules)
        assert raised.value.violations == refused.violations
        event("refused")
        return
    got = check_columns(meter, columns(batch), preceding=columns(preceding), existing=columns(existing), rules=rules)
    assert got.readings.readings() == [c.reading for c in expected]
    event("accepted, flagged" if any(c.flags for c in expected) else "accepted")
    for i, checked in enumerate(expected):
        assert {flag for flag in QualityFlag if got.flags[flag][i]} == set(checked.flags)
        consumption = float(got.consumption[i])
        if checked.consumption is None:
            assert math.isnan(consumption)
        else:
            assert consumption == checked.consumption
    mask, inserts, updates, unchanged = upsert_plan(columns(existing), got.readings)
    plan = classify_upsert(existing, batch)
    assert (inserts, updates, unchanged) == (len(plan.inserts), len(plan.updates), len(plan.unchanged))
    written = {r.key for r, write in zip(got.readings.readings(), mask, strict=True) if write}
    assert written == {r.key for r in (*plan.inserts, *plan.updates)}


def test_an_empty_batch_and_a_fresh_meter() -> None:
    meter = METERS[0]
    assert len(check_columns(meter, ReadingColumns.empty()).readings) == 0
    fresh = ReadingColumns.of([T0, T0 + Q], [T0 + Q, T0 + 2 * Q], [1.0, 2.0])
    checked = check_columns(meter, fresh)
    assert np.array_equal(checked.consumption, [1.0, 2.0])
    mask, inserts, updates, unchanged = upsert_plan(ReadingColumns.empty(), checked.readings)
    assert mask.all() and (inserts, updates, unchanged) == (2, 0, 0)
