"""The reading checks of :mod:`.readings` over columns (numpy arrays of Unix seconds and values) instead of one
:class:`~.readings.Reading` object per reading: what the bulk ingest runs, 5,000 readings at a time.

:func:`check_columns` gives exactly what :func:`~.readings.check_readings` gives for the same batch (the tests
compare the two on generated batches): the distinct readings in time order, their quality flags and their
consumption. A batch the vectorised pre-checks do not pass is handed to :func:`~.readings.check_readings`
itself, so every rejection carries the very field violations the object path would raise; the columns only make
the accepting path cheap. Limits are computed by the same function (:func:`~.readings._rated_limit`) once per
distinct interval length, so the floats compared are identical. Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.readings import (
    Direction,
    MeterQuantity,
    MeterSpec,
    QualityFlag,
    QualityRules,
    Reading,
    ReadingMode,
    _rated_limit,
    check_readings,
)

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

DEFAULT_RULES: Final = QualityRules()


@dataclass(frozen=True)
class ReadingColumns:
    """Readings as columns: ``[start, end)`` in Unix seconds, values in the meter's unit, the sender's estimate mark."""

    start: Ints
    end: Ints
    value: Floats
    estimated: Bools

    @classmethod
    def of(
        cls,
        start: Sequence[int] | Ints,
        end: Sequence[int] | Ints,
        value: Sequence[float] | Floats,
        estimated: Sequence[bool] | Bools | None = None,
    ) -> ReadingColumns:
        size = len(start)
        return cls(
            np.asarray(start, dtype=np.int64),
            np.asarray(end, dtype=np.int64),
            np.asarray(value, dtype=np.float64),
            np.zeros(size, dtype=np.bool_) if estimated is None else np.asarray(estimated, dtype=np.bool_),
        )

    @classmethod
    def empty(cls) -> ReadingColumns:
        return cls.of([], [], [], [])

    def __len__(self) -> int:
        return int(self.start.size)

    def take(self, index: Ints | Bools) -> ReadingColumns:
        return ReadingColumns(self.start[index], self.end[index], self.value[index], self.estimated[index])

    def readings(self) -> list[Reading]:
        """The same readings as objects (what the object path and its error messages need)."""
        return [
            Reading(_moment(int(s)), _moment(int(e)), float(v), bool(x))
            for s, e, v, x in zip(self.start, self.end, self.value, self.estimated, strict=True)
        ]


def _moment(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@dataclass(frozen=True)
class CheckedColumns:
    """The distinct readings of a batch in time order, with a mask per quality flag and the consumption (NaN where
    :class:`~.readings.CheckedReading` has ``None``)."""

    readings: ReadingColumns
    flags: dict[QualityFlag, Bools]
    consumption: Floats


def _physical_ok(meter: MeterSpec, value: Floats) -> bool:
    """:func:`~.readings._physical_violation` finds nothing for any value."""
    if not np.isfinite(value).all():
        return False
    if meter.mode is ReadingMode.CUMULATIVE:
        if (value < 0).any():
            return False
        return meter.register_max is None or bool((value < meter.register_max).all())
    if meter.quantity is MeterQuantity.TEMPERATURE:
        return not bool((value < -273.15).any())
    if meter.quantity is MeterQuantity.VOLTAGE and meter.current is CurrentKind.DC:
        return True
    return meter.direction is Direction.NET or not bool((value < 0).any())


def _limits(meter: MeterSpec, seconds: Ints, headroom: float) -> Floats | None:
    """:func:`~.readings._rated_limit` for each duration, computed once per distinct duration."""
    if meter.rated_max is None:
        return None
    distinct, inverse = np.unique(seconds, return_inverse=True)
    table = np.array([_rated_limit(meter, dt.timedelta(seconds=int(s)), headroom) for s in distinct], dtype=np.float64)
    return table[inverse]


def _accepting(meter: MeterSpec, batch: ReadingColumns, existing: ReadingColumns) -> tuple[Ints, bool]:
    """(order of the distinct readings by start, whether every rejecting check passes)."""
    start, end = batch.start, batch.end
    if not bool((end > start).all()):
        return np.arange(0), False
    if meter.interval is not None and not bool((end - start == int(meter.interval.total_seconds())).all()):
        return np.arange(0), False
    if not _physical_ok(meter, batch.value):
        return np.arange(0), False
    order = np.lexsort((end, start))
    s, e = start[order], end[order]
    same = (s[1:] == s[:-1]) & (e[1:] == e[:-1])
    if same.any():
        v, x = batch.value[order], batch.estimated[order]
        if not bool(((v[1:] == v[:-1]) & (x[1:] == x[:-1]))[same].all()):
            return np.arange(0), False
        # the first of each key, as the object path keeps the first position (its value is the same)
        keep = np.concatenate(([True], ~same))
        order, s, e = order[keep], s[keep], e[keep]
    if s.size > 1 and bool((s[1:] < np.maximum.accumulate(e)[:-1]).any()):
        return np.arange(0), False
    if len(existing):
        others = ~_isin_keys(existing.start, existing.end, s, e)
        stored_start, stored_end = existing.start[others], existing.end[others]
        if stored_start.size:
            by_start = np.argsort(stored_start, kind="stable")
            stored_start, stored_end = stored_start[by_start], stored_end[by_start]
            k = np.searchsorted(stored_start, e, side="left") - 1
            reach = np.where(k >= 0, stored_end[np.maximum(k, 0)], np.iinfo(np.int64).min)
            if bool((reach > s).any()):
                return np.arange(0), False
    return order.astype(np.int64), True


def _isin_keys(start: Ints, end: Ints, key_start: Ints, key_end: Ints) -> Bools:
    """Which (start, end) pairs are among the keys."""
    if not key_start.size or not start.size:
        return np.zeros(start.size, dtype=np.bool_)
    keys = set(zip(key_start.tolist(), key_end.tolist(), strict=True))
    return np.fromiter(
        (pair in keys for pair in zip(start.tolist(), end.tolist(), strict=True)), dtype=np.bool_, count=start.size
    )


def check_columns(
    meter: MeterSpec,
    batch: ReadingColumns,
    *,
    preceding: ReadingColumns | None = None,
    existing: ReadingColumns | None = None,
    rules: QualityRules = DEFAULT_RULES,
    field: str = "readings",
) -> CheckedColumns:
    """:func:`~.readings.check_readings` over columns (module docstring)."""
    preceding = preceding if preceding is not None else ReadingColumns.empty()
    existing = existing if existing is not None else ReadingColumns.empty()
    order, accepted = _accepting(meter, batch, existing) if len(batch) else (np.arange(0), True)
    if not accepted:
        check_readings(
            meter,
            batch.readings(),
            preceding=preceding.readings(),
            existing=existing.readings(),
            rules=rules,
            field=field,
        )
        # the object path found nothing either: the vectorised checks were stricter than the rules
        raise AssertionError("columnar checks refused a batch the reading checks accept")  # pragma: no cover
    distinct = batch.take(order)
    size = len(distinct)
    flags = {flag: np.zeros(size, dtype=np.bool_) for flag in QualityFlag}
    if not size:
        return CheckedColumns(distinct, flags, np.zeros(0))
    # the stored readings right before the batch, not part of it: the stuck run and the first delta start there
    context_mask = (preceding.end <= distinct.start[0]) & ~_isin_keys(
        preceding.start, preceding.end, distinct.start, distinct.end
    )
    context = preceding.take(context_mask)
    context = context.take(np.argsort(context.start, kind="stable")[-max(rules.stuck_run - 1, 1) :])
    lead = len(context)
    value = np.concatenate((context.value, distinct.value))
    end = np.concatenate((context.end, distinct.end))
    # run lengths of identical consecutive values over the whole sequence
    index = np.arange(value.size)
    change = np.concatenate(([True], value[1:] != value[:-1]))
    run = index - np.maximum.accumulate(np.where(change, index, 0)) + 1
    run = run[lead:]
    flags[QualityFlag.ESTIMATED] = distinct.estimated.copy()
    headroom = rules.range_headroom
    consumption = np.full(size, math.nan)
    v = distinct.value
    if meter.mode is ReadingMode.AVERAGE:
        limit = _limits(meter, distinct.end - distinct.start, headroom)
        if limit is not None:
            flags[QualityFlag.OUT_OF_RANGE] = np.abs(v) > limit
    elif meter.mode is ReadingMode.INTERVAL:
        consumption = v.copy()
        limit = _limits(meter, distinct.end - distinct.start, headroom)
        if limit is not None:
            flags[QualityFlag.OUT_OF_RANGE] = np.abs(v) > limit
    else:
        has_previous = np.arange(lead, lead + size) > 0
        previous = np.maximum(np.arange(lead, lead + size) - 1, 0)
        elapsed = end[lead:] - end[previous]
        delta = v - value[previous]
        limit = _limits(meter, np.where(has_previous, elapsed, 1), headroom)
        span = meter.register_max
        falling = has_previous & (delta < 0)
        if span is None:
            wrapped = np.zeros(size, dtype=np.bool_)
        else:
            wrap_limit = limit if limit is not None else np.full(size, span * rules.rollover_max_share)
            wrapped = falling & ~(delta + span > wrap_limit)
        negative = falling & ~wrapped
        flags[QualityFlag.NEGATIVE_DELTA] = negative
        flags[QualityFlag.ROLLOVER] = wrapped
        amount = np.where(wrapped, delta + (span or 0.0), delta)
        if limit is not None:
            flags[QualityFlag.OUT_OF_RANGE] = has_previous & ~falling & (delta > limit)
        back_to_back = has_previous & (end[previous] == distinct.start)
        consumption = np.where(back_to_back & ~negative, amount, math.nan)
    zero_run = np.full(size, meter.mode is ReadingMode.CUMULATIVE) | (v == 0)
    stuck = run >= rules.stuck_run
    if rules.stuck_ignores_zero:
        stuck &= ~zero_run
    flags[QualityFlag.STUCK] = stuck
    return CheckedColumns(distinct, flags, consumption)


def upsert_plan(existing: ReadingColumns, batch: ReadingColumns) -> tuple[Bools, int, int, int]:
    """:func:`~.readings.classify_upsert` over the distinct readings of a checked batch: a mask of the readings to
    write (new keys, or known keys with another value or estimate mark) and the (inserts, updates, unchanged)."""
    size = len(batch)
    if not len(existing):
        return np.ones(size, dtype=np.bool_), size, 0, 0
    stored = {
        (int(s), int(e)): (float(v), bool(x))
        for s, e, v, x in zip(existing.start, existing.end, existing.value, existing.estimated, strict=True)
    }
    write = np.ones(size, dtype=np.bool_)
    inserts = updates = 0
    for i, (s, e, v, x) in enumerate(
        zip(batch.start.tolist(), batch.end.tolist(), batch.value.tolist(), batch.estimated.tolist(), strict=True)
    ):
        before = stored.get((s, e))
        if before is None:
            inserts += 1
        elif before == (v, x):
            write[i] = False
        else:
            updates += 1
    return write, inserts, updates, size - inserts - updates
