"""Taking in readings and operating states: convert a batch from the wire, judge it with the domain (rejections,
quality flags, the idempotent upsert plan) against what is stored around it, and write it in the caller's
transaction with one executemany upsert.

A batch is one meter's readings, or one independent series' values (judged as the readings of the meter
:func:`~services.energy.domain.series.as_meter_spec` describes, stored in their own table). It reads two small
ranges (the readings just before the batch, for the stuck run and the cumulative delta, and those starting inside
its span, for overlaps and the upsert plan), never the whole history. Re-sending the same readings classifies them
all as unchanged and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.errors import FieldViolation, InvalidArgument
from services.energy import store
from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.columns import ReadingColumns, check_columns, upsert_plan
from services.energy.domain.readings import (
    Direction,
    MeterQuantity,
    MeterRole,
    MeterSpec,
    OperatingState,
    QualityFlag,
    QualityRules,
    ReadingMode,
    StateInterval,
    state_violations,
)
from services.energy.domain.series import Aggregation, SeriesSpec, as_meter_spec, negative_value_problem
from services.energy.domain.units import Quantity, Unit
from services.energy.mapping import MAX_SECONDS, MIN_SECONDS, OPERATING_STATES, seconds_from_proto
from services.energy.tables import IndependentSeriesRow, MeterRow

MAX_BATCH = 10_000
ESTIMATED_BIT = store.FLAG_BITS[QualityFlag.ESTIMATED]
DEFAULT_RULES = QualityRules()
# seconds (< 2^53) and flags are exact in float64
_FIELDS = attrgetter(
    "start_time.seconds", "start_time.nanos", "end_time.seconds", "end_time.nanos", "value", "estimated"
)


def meter_spec(row: MeterRow) -> MeterSpec:
    rated = Quantity(row.rated_max_value, Unit(row.rated_max_unit)) if row.rated_max_value is not None else None
    return MeterSpec(
        meter_id=row.meter_id,
        quantity=MeterQuantity(row.quantity),
        unit=Unit(row.unit),
        mode=ReadingMode(row.mode),
        interval=dt.timedelta(seconds=row.interval_s) if row.interval_s else None,
        role=MeterRole(row.role),
        current=CurrentKind(row.current),
        direction=Direction(row.direction),
        rated_max=rated,
        register_max=row.register_max,
    )


def series_spec(row: IndependentSeriesRow) -> SeriesSpec:
    return SeriesSpec(
        series_id=row.series_id,
        name=row.name,
        unit=Unit(row.unit) if row.unit else None,
        unit_label=row.unit_label,
        aggregation=Aggregation(row.aggregation),
        interval=dt.timedelta(seconds=row.interval_s) if row.interval_s else None,
    )


def _moment(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _seconds(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def readings_from_proto(messages: Sequence[pb.Reading], field: str = "readings") -> ReadingColumns:
    """A batch as columns; ``InvalidArgument`` naming ``readings[i].start_time`` etc. for bad times."""
    if not messages:
        raise InvalidArgument([FieldViolation(field, "at least one reading")])
    if len(messages) > MAX_BATCH:
        raise InvalidArgument([FieldViolation(field, f"at most {MAX_BATCH:,} readings per batch")])
    # One C-level attribute fetch per reading, then columns: no Python work per field.
    table = np.array(list(map(_FIELDS, messages)), dtype=np.float64).reshape(-1, 6)
    nanos = bool(table[:, 1].any() or table[:, 3].any())
    batch = ReadingColumns(
        table[:, 0].astype(np.int64), table[:, 2].astype(np.int64), table[:, 4].copy(), table[:, 5] != 0
    )
    low, high = MIN_SECONDS, MAX_SECONDS
    if nanos or not (
        bool((batch.start >= low).all())
        and bool((batch.start < high).all())
        and bool((batch.end >= low).all())
        and bool((batch.end < high).all())
    ):
        found: list[FieldViolation] = []
        for i, message in enumerate(messages):  # the slow path only names the culprits
            seconds_from_proto(message.start_time, f"{field}[{i}].start_time", found)
            seconds_from_proto(message.end_time, f"{field}[{i}].end_time", found)
        raise InvalidArgument(found)
    return batch


def _columns(rows: Sequence[store.StoredReading]) -> ReadingColumns:
    return ReadingColumns.of(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [bool(r[3] & ESTIMATED_BIT) for r in rows]
    )


@dataclass
class BatchOutcome:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    flagged: int = 0

    def add(self, other: BatchOutcome) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.flagged += other.flagged


@dataclass(frozen=True)
class _Judged:
    """A checked batch and what its upsert writes: the readings, their consumption and flag bits (all masked to
    the rows to write), and the counts."""

    chosen: ReadingColumns
    consumption: npt.NDArray[np.float64]
    bits: npt.NDArray[np.int64]
    outcome: BatchOutcome


async def _judge(
    session: AsyncSession,
    key: str,
    spec: MeterSpec,
    batch: ReadingColumns,
    rules: QualityRules,
    field: str,
    source: Any,
) -> _Judged:
    first, last = int(batch.start.min()), int(batch.end.max())
    before = await store.readings_before(session, key, first, max(rules.stuck_run - 1, 1), source=source)
    inside = await store.readings_starting_in(session, key, first, last, source=source)
    # Stored readings never overlap each other: only the last one starting before the batch can reach into it.
    reaching = [before[-1]] if before and before[-1][1] > first else []
    existing = _columns([*reaching, *inside])
    checked = check_columns(spec, batch, preceding=_columns(before), existing=existing, rules=rules, field=field)
    write, inserts, updates, unchanged = upsert_plan(existing, checked.readings)
    bits = np.zeros(len(checked.readings), dtype=np.int64)
    for flag, mask in checked.flags.items():
        bits |= np.where(mask, store.FLAG_BITS[flag], 0)
    written_bits = bits[write]
    outcome = BatchOutcome(inserts, updates, unchanged, int(np.count_nonzero(written_bits)))
    return _Judged(checked.readings.take(write), checked.consumption[write], written_bits, outcome)


async def upsert_batch(
    session: AsyncSession,
    meter: MeterRow,
    batch: ReadingColumns,
    *,
    rules: QualityRules = DEFAULT_RULES,
    field: str = "readings",
) -> BatchOutcome:
    """Judge and upsert one meter's batch in the session's transaction; ``InvalidArgument`` (nothing written)
    when the domain rejects it."""
    judged = await _judge(session, meter.meter_id, meter_spec(meter), batch, rules, field, store.READING)
    chosen = judged.chosen
    rows = list(
        zip(
            repeat(meter.meter_id),
            chosen.start.tolist(),
            chosen.end.tolist(),
            chosen.value.tolist(),
            [None if c != c else c for c in judged.consumption.tolist()],  # NaN: no consumption
            judged.bits.tolist(),
            strict=False,
        )
    )
    await store.upsert_readings(session, rows)
    return judged.outcome


async def upsert_series_batch(
    session: AsyncSession,
    series: IndependentSeriesRow,
    batch: ReadingColumns,
    *,
    rules: QualityRules = DEFAULT_RULES,
    field: str = "values",
) -> BatchOutcome:
    """:func:`upsert_batch` for one independent series' values. A summed series refuses negative values in its
    own words before the reading checks (which would speak of energy) see them."""
    spec = series_spec(series)
    if spec.aggregation is Aggregation.SUM:
        negative = np.flatnonzero(batch.value < 0)
        if negative.size:
            problem = negative_value_problem(spec)
            raise InvalidArgument([FieldViolation(f"{field}[{int(i)}].value", problem) for i in negative[:100]])
    judged = await _judge(session, series.series_id, as_meter_spec(spec), batch, rules, field, store.SERIES_VALUE)
    chosen = judged.chosen
    rows = list(
        zip(
            repeat(series.series_id),
            chosen.start.tolist(),
            chosen.end.tolist(),
            chosen.value.tolist(),
            judged.bits.tolist(),
            strict=False,
        )
    )
    await store.upsert_series_values(session, rows)
    return judged.outcome


# ---- operating states ------------------------------------------------------------------------------------------


def states_from_proto(messages: Sequence[pb.OperatingStateInterval], field: str = "intervals") -> list[StateInterval]:
    found: list[FieldViolation] = []
    if not messages:
        raise InvalidArgument([FieldViolation(field, "at least one interval")])
    if len(messages) > MAX_BATCH:
        raise InvalidArgument([FieldViolation(field, f"at most {MAX_BATCH:,} intervals per request")])
    intervals: list[StateInterval] = []
    for i, message in enumerate(messages):
        state = OPERATING_STATES.required(message.state, f"{field}[{i}].state", found)
        start = seconds_from_proto(message.start_time, f"{field}[{i}].start_time", found)
        end = seconds_from_proto(message.end_time, f"{field}[{i}].end_time", found)
        awake = message.awake_modules if message.awake_modules else None
        if state is not None and start is not None and end is not None:
            intervals.append(StateInterval(state, _moment(start), _moment(end), awake))
    if found:
        raise InvalidArgument(found)
    return intervals


def stored_state(row: store.StoredState) -> StateInterval:
    start, end, state, awake = row
    return StateInterval(OperatingState(state), _moment(start), _moment(end), awake)


async def record_states(
    session: AsyncSession, asset_id: str, intervals: Sequence[StateInterval], field: str = "intervals"
) -> tuple[int, int]:
    """(recorded, unchanged): identical stored intervals are re-sends; any other overlap rejects the batch."""
    first = min(_seconds(s.start) for s in intervals)
    last = max(_seconds(s.end) for s in intervals)
    existing = [stored_state(row) for row in await store.states_overlapping(session, asset_id, first, last)]
    found = state_violations(intervals, existing=existing, field=field)
    if found:
        raise InvalidArgument(found)
    stored = set(existing)
    fresh = list(dict.fromkeys(s for s in intervals if s not in stored))
    await store.insert_states(
        session,
        [
            {
                "asset_id": asset_id,
                "start_s": _seconds(s.start),
                "end_s": _seconds(s.end),
                "state": s.state.value,
                "awake_modules": s.awake_modules,
            }
            for s in fresh
        ],
    )
    return len(fresh), len(intervals) - len(fresh)
