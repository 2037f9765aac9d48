"""Time intervals, meters, interval readings with their quality flags, and operating states per asset
(energy.md §3.4-3.5, §4.6 "Meter data quality").

**Intervals** are half-open ``[start, end)`` with aware datetimes (:class:`Period`); two intervals overlap when
they share a positive length, so back-to-back readings never do.

**Readings** belong to one meter and are keyed ``(start, end)``: re-sending a key is an upsert, never an
overlap. A batch is judged in two tiers:

- *rejected* (``InvalidArgument``, nothing of the batch is written): naive or reversed times, a length other
  than the meter's interval, a non-finite value, a value no meter of that quantity can show (negative imported
  energy, a register beyond its span), the same key twice with different values, and overlaps within the batch
  or with stored readings under another key;
- *flagged* (kept, with :class:`QualityFlag` values): ESTIMATED (the sender says so), NEGATIVE_DELTA (a
  cumulative register went down without a plausible wrap), ROLLOVER (it wrapped at ``register_max``; the delta
  is recovered), OUT_OF_RANGE (beyond what the meter's rating allows over the interval, plus
  ``range_headroom``: the reading may be real and the rating mis-set, so it is kept), STUCK (the N-th and
  later of N consecutive identical values).

Flags are a pure function of the batch and the stored readings just before it (``preceding``), so re-ingesting
the same readings yields the same flags. Flags of stored readings *after* the batch are not revisited here.

**Operating states** (online, ECO/bypass, standby, on battery, self-test, maintenance, fault, module
hibernation) are non-overlapping intervals per asset; :func:`excluded_readings` says which reading intervals
an efficiency or load-rate figure must leave out (:data:`EXCLUDED_STATES`). Time not covered by any state
interval counts as ONLINE. Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from meshkit.errors import FieldViolation, InvalidArgument
from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.units import RATE_OF, Dimension, Quantity, Unit, hours, quantity_violations


class Span(Protocol):
    """Anything with a half-open ``[start, end)``: periods, readings, state intervals."""

    @property
    def start(self) -> dt.datetime: ...

    @property
    def end(self) -> dt.datetime: ...


def _aware(moment: dt.datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() is not None


def span_violations(span: Span, field: str) -> list[FieldViolation]:
    """Aware start and end, end after start."""
    found: list[FieldViolation] = []
    for name, moment in (("start", span.start), ("end", span.end)):
        if not _aware(moment):
            found.append(FieldViolation(f"{field}.{name}", "must carry a time zone (an aware timestamp)"))
    if not found and span.end <= span.start:
        found.append(FieldViolation(f"{field}.end", "must be after start"))
    return found


def overlaps(a: Span, b: Span) -> bool:
    return a.start < b.end and b.start < a.end


def find_overlaps(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of overlapping spans (indices into ``spans``); every span that overlaps an earlier-
    starting one appears at least once. Sort and sweep: O(n log n)."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].start, spans[i].end))
    pairs: list[tuple[int, int]] = []
    reach: int | None = None  # the span reaching furthest so far
    for i in order:
        if reach is not None and spans[i].start < spans[reach].end:
            pairs.append((min(reach, i), max(reach, i)))
        if reach is None or spans[i].end > spans[reach].end:
            reach = i
    return pairs


@dataclass(frozen=True)
class Period:
    """A half-open ``[start, end)`` with aware datetimes (a PUE period, a baseline, an installation)."""

    start: dt.datetime
    end: dt.datetime

    @property
    def duration(self) -> dt.timedelta:
        return self.end - self.start

    def overlaps(self, other: Span) -> bool:
        return overlaps(self, other)

    def contains(self, other: Span) -> bool:
        return self.start <= other.start and other.end <= self.end


def intervals_in(period: Period, interval: dt.timedelta) -> int:
    """How many whole ``interval`` slots ``period`` holds (the expected count for coverage)."""
    if interval <= dt.timedelta(0):
        raise InvalidArgument([FieldViolation("interval", "must be positive")])
    return period.duration // interval


# --- meters --------------------------------------------------------------------------------------------------


class MeterQuantity(StrEnum):
    """What a meter or point measures (energy.md §3.4 ``quantity``)."""

    ACTIVE_ENERGY = "ACTIVE_ENERGY"
    THERMAL_ENERGY = "THERMAL_ENERGY"
    ACTIVE_POWER = "ACTIVE_POWER"
    APPARENT_POWER = "APPARENT_POWER"
    CURRENT = "CURRENT"
    VOLTAGE = "VOLTAGE"
    WATER_VOLUME = "WATER_VOLUME"
    FLOW = "FLOW"
    TEMPERATURE = "TEMPERATURE"

    @property
    def dimension(self) -> Dimension:
        return _QUANTITY_DIMENSION[self]

    @property
    def integrated(self) -> bool:
        """Energy and volume accumulate over time; the others are rates or states."""
        return self.dimension in RATE_OF


_QUANTITY_DIMENSION: Final[Mapping[MeterQuantity, Dimension]] = {
    MeterQuantity.ACTIVE_ENERGY: Dimension.ENERGY,
    MeterQuantity.THERMAL_ENERGY: Dimension.ENERGY,
    MeterQuantity.ACTIVE_POWER: Dimension.POWER,
    MeterQuantity.APPARENT_POWER: Dimension.APPARENT_POWER,
    MeterQuantity.CURRENT: Dimension.CURRENT,
    MeterQuantity.VOLTAGE: Dimension.VOLTAGE,
    MeterQuantity.WATER_VOLUME: Dimension.VOLUME,
    MeterQuantity.FLOW: Dimension.VOLUME_FLOW,
    MeterQuantity.TEMPERATURE: Dimension.TEMPERATURE,
}


class ReadingMode(StrEnum):
    """How a value relates to its interval (Haystack ``hisMode``, energy.md §3.4 ``his_mode``)."""

    INTERVAL = "INTERVAL"  # the amount consumed in [start, end)
    CUMULATIVE = "CUMULATIVE"  # a totalising register, read at ``end``
    AVERAGE = "AVERAGE"  # the mean of a rate or level over [start, end)


class Direction(StrEnum):
    """Haystack import/export/net: net = import - export, positive = load."""

    IMPORT = "IMPORT"
    EXPORT = "EXPORT"
    NET = "NET"


class MeterRole(StrEnum):
    """Where the meter sits for the figures (energy.md §3.4 ``role``)."""

    INPUT = "INPUT"
    OUTPUT = "OUTPUT"
    IT_LOAD = "IT_LOAD"
    FACILITY_TOTAL = "FACILITY_TOTAL"
    AUX = "AUX"


@dataclass(frozen=True)
class MeterSpec:
    """A meter as the checks need it.

    ``rated_max`` is what the metered equipment can deliver: a rate (kW, m³/h) for energy and volume meters,
    whose interval maximum is rate · duration; a value of the reading's own dimension otherwise.
    ``register_max`` (CUMULATIVE only) is the register's span in the meter's unit: it counts up to, not
    including, ``register_max`` and wraps to 0 (a five-digit kWh display: 100 000).
    ``interval`` ``None`` means irregular intervals (billing periods).
    """

    meter_id: str
    quantity: MeterQuantity
    unit: Unit
    mode: ReadingMode
    interval: dt.timedelta | None
    role: MeterRole = MeterRole.INPUT
    current: CurrentKind = CurrentKind.AC
    direction: Direction = Direction.IMPORT
    rated_max: Quantity | None = None
    register_max: float | None = None


def meter_violations(meter: MeterSpec, field: str = "meter") -> list[FieldViolation]:
    """Unit of the quantity's dimension; a mode that fits the quantity; sane rating and register."""
    found = quantity_violations(Quantity(0.0, meter.unit), field, dimensions=frozenset({meter.quantity.dimension}))
    if meter.quantity.integrated and meter.mode is ReadingMode.AVERAGE:
        found.append(FieldViolation(f"{field}.mode", f"{meter.quantity.value} is read as INTERVAL or CUMULATIVE"))
    if not meter.quantity.integrated and meter.mode is not ReadingMode.AVERAGE:
        found.append(FieldViolation(f"{field}.mode", f"{meter.quantity.value} is read as AVERAGE"))
    if meter.mode is ReadingMode.CUMULATIVE and meter.direction is Direction.NET:
        found.append(FieldViolation(f"{field}.direction", "a cumulative register counts IMPORT or EXPORT, not NET"))
    if meter.interval is not None and meter.interval <= dt.timedelta(0):
        found.append(FieldViolation(f"{field}.interval", "must be positive"))
    if meter.rated_max is not None:
        dimension = meter.quantity.dimension
        wanted = RATE_OF.get(dimension, dimension)
        found += quantity_violations(meter.rated_max, f"{field}.rated_max", dimensions=frozenset({wanted}))
        if math.isfinite(meter.rated_max.value) and meter.rated_max.value <= 0:
            found.append(FieldViolation(f"{field}.rated_max.value", "must be positive"))
    if meter.register_max is not None:
        if meter.mode is not ReadingMode.CUMULATIVE:
            found.append(FieldViolation(f"{field}.register_max", "only for CUMULATIVE meters"))
        elif not (math.isfinite(meter.register_max) and meter.register_max > 0):
            found.append(FieldViolation(f"{field}.register_max", "must be positive"))
    return found


# --- readings and quality ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    start: dt.datetime
    end: dt.datetime
    value: float  # in the meter's unit
    estimated: bool = False

    @property
    def key(self) -> tuple[dt.datetime, dt.datetime]:
        return (self.start, self.end)


class QualityFlag(StrEnum):
    ESTIMATED = "ESTIMATED"
    NEGATIVE_DELTA = "NEGATIVE_DELTA"
    ROLLOVER = "ROLLOVER"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    STUCK = "STUCK"


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of the flags (MyEMS-style limits, energy.md §4.6)."""

    stuck_run: int = 8
    """Identical consecutive values that make the N-th and later ones STUCK (8 = two hours at 15 minutes)."""
    stuck_ignores_zero: bool = False
    """Do not flag runs of zero consumption (an unchanged register, a zero interval or level): set it for
    meters on normally idle equipment (generators, storage)."""
    range_headroom: float = 0.1
    """OUT_OF_RANGE above rated · (1 + headroom): meter class accuracy and short overloads."""
    rollover_max_share: float = 0.1
    """Without a rating, a drop counts as a wrap only if the wrapped delta is below this share of the span."""


@dataclass(frozen=True)
class CheckedReading:
    reading: Reading
    flags: frozenset[QualityFlag]
    consumption: float | None
    """INTERVAL: the value; CUMULATIVE: the register delta since the previous reading when the two are back to
    back (recovered across a ROLLOVER, ``None`` after a NEGATIVE_DELTA); AVERAGE: ``None``."""


def _physical_violation(meter: MeterSpec, value: float) -> str | None:
    """Why no meter of this kind can show ``value`` (``None`` when it can)."""
    if not math.isfinite(value):
        return "must be a finite number"
    signed = meter.direction is Direction.NET
    if meter.mode is ReadingMode.CUMULATIVE:
        if value < 0:
            return "a register cannot be negative"
        if meter.register_max is not None and value >= meter.register_max:
            return f"beyond the register's span ({meter.register_max:g})"
        return None
    quantity = meter.quantity
    if quantity is MeterQuantity.TEMPERATURE:
        return "below absolute zero" if value < -273.15 else None
    if quantity is MeterQuantity.VOLTAGE and meter.current is CurrentKind.DC:
        return None  # -48 V systems report a negative voltage
    if value < 0 and not signed:
        return f"{quantity.value.lower()} cannot be negative on an {meter.direction.value} meter"
    return None


def _rated_limit(meter: MeterSpec, duration: dt.timedelta, headroom: float) -> float | None:
    """The most a reading may show over ``duration`` in the meter's unit, or ``None`` without a rating."""
    if meter.rated_max is None:
        return None
    rated = meter.rated_max.in_base().value * (1.0 + headroom)
    if meter.quantity.integrated:
        # rate base (kW, m³/h) · hours = amount in the integrated base (kWh, m³); then into the meter's unit
        return rated * hours(duration) / meter.unit.factor
    return rated / meter.unit.factor


def reading_violations(
    meter: MeterSpec, readings: Sequence[Reading], *, existing: Iterable[Reading] = (), field: str = "readings"
) -> list[FieldViolation]:
    """The rejecting checks of a batch (module docstring); ``existing`` are stored readings of the meter that
    may overlap it (same key = upsert, allowed)."""
    found: list[FieldViolation] = []
    shaped: list[int] = []
    for i, reading in enumerate(readings):
        problems = span_violations(reading, f"{field}[{i}]")
        if not problems and meter.interval is not None and reading.end - reading.start != meter.interval:
            problems.append(FieldViolation(f"{field}[{i}].end", f"the meter's interval is {meter.interval}"))
        physical = _physical_violation(meter, reading.value)
        if physical is not None:
            problems.append(FieldViolation(f"{field}[{i}].value", physical))
        found += problems
        if not any(p.field.endswith((".start", ".end")) for p in problems):
            shaped.append(i)
    first_at: dict[tuple[dt.datetime, dt.datetime], int] = {}
    distinct: list[int] = []
    for i in shaped:
        seen = first_at.get(readings[i].key)
        if seen is None:
            first_at[readings[i].key] = i
            distinct.append(i)
        elif readings[seen] != readings[i]:
            found.append(FieldViolation(f"{field}[{i}]", f"same interval as {field}[{seen}] with another value"))
    for a, b in find_overlaps([readings[i] for i in distinct]):
        i, j = distinct[a], distinct[b]
        found.append(FieldViolation(f"{field}[{max(i, j)}]", f"overlaps {field}[{min(i, j)}]"))
    stored = sorted((r for r in existing if r.key not in first_at), key=lambda r: r.start)
    starts = [r.start for r in stored]
    for i in distinct:
        reading = readings[i]
        # stored readings do not overlap each other: only the one starting just before can reach into this one
        k = max(bisect.bisect_left(starts, reading.start) - 1, 0)
        while k < len(stored) and stored[k].start < reading.end:
            other = stored[k]
            if overlaps(reading, other):
                where = f"[{other.start.isoformat()}, {other.end.isoformat()})"
                found.append(FieldViolation(f"{field}[{i}]", f"overlaps the stored reading {where}"))
            k += 1
    return found


def check_readings(
    meter: MeterSpec,
    readings: Sequence[Reading],
    *,
    preceding: Iterable[Reading] = (),
    existing: Iterable[Reading] = (),
    rules: QualityRules = QualityRules(),
    field: str = "readings",
) -> tuple[CheckedReading, ...]:
    """Validate a batch for one meter and flag it; ``InvalidArgument`` with every violation when any check
    rejects. ``preceding``: the stored readings right before the batch (at least ``rules.stuck_run - 1`` of
    them for stuck runs across batches). Returns the distinct readings in time order."""
    stored = list(existing)
    found = reading_violations(meter, readings, existing=stored, field=field)
    if found:
        raise InvalidArgument(found)
    batch = sorted({r.key: r for r in readings}.values(), key=lambda r: r.start)
    if not batch:
        return ()
    keys = {r.key for r in batch}
    context = sorted((r for r in preceding if r.end <= batch[0].start and r.key not in keys), key=lambda r: r.start)
    context = context[-max(rules.stuck_run - 1, 1) :]
    sequence = [*context, *batch]
    checked: list[CheckedReading] = []
    run = 0
    for index, reading in enumerate(sequence):
        previous = sequence[index - 1] if index > 0 else None
        run = run + 1 if previous is not None and previous.value == reading.value else 1
        if index < len(context):
            continue
        flags: set[QualityFlag] = set()
        if reading.estimated:
            flags.add(QualityFlag.ESTIMATED)
        consumption = _consumption(meter, reading, previous, rules, flags)
        if meter.mode is ReadingMode.AVERAGE:
            limit = _rated_limit(meter, reading.end - reading.start, rules.range_headroom)
            if limit is not None and abs(reading.value) > limit:
                flags.add(QualityFlag.OUT_OF_RANGE)
        zero_run = meter.mode is ReadingMode.CUMULATIVE or reading.value == 0
        if run >= rules.stuck_run and not (rules.stuck_ignores_zero and zero_run):
            flags.add(QualityFlag.STUCK)
        checked.append(CheckedReading(reading, frozenset(flags), consumption))
    return tuple(checked)


def _consumption(
    meter: MeterSpec, reading: Reading, previous: Reading | None, rules: QualityRules, flags: set[QualityFlag]
) -> float | None:
    """The amount of the interval (module docstring), adding NEGATIVE_DELTA / ROLLOVER / OUT_OF_RANGE."""
    if meter.mode is ReadingMode.AVERAGE:
        return None
    if meter.mode is ReadingMode.INTERVAL:
        limit = _rated_limit(meter, reading.end - reading.start, rules.range_headroom)
        if limit is not None and abs(reading.value) > limit:
            flags.add(QualityFlag.OUT_OF_RANGE)
        return reading.value
    if previous is None:
        return None
    elapsed = reading.end - previous.end
    limit = _rated_limit(meter, elapsed, rules.range_headroom)
    delta = reading.value - previous.value
    if delta < 0:
        span = meter.register_max
        wrap_limit = limit if limit is not None else (span * rules.rollover_max_share if span is not None else None)
        if span is None or wrap_limit is None or delta + span > wrap_limit:
            flags.add(QualityFlag.NEGATIVE_DELTA)
            return None
        flags.add(QualityFlag.ROLLOVER)
        delta += span
    elif limit is not None and delta > limit:
        flags.add(QualityFlag.OUT_OF_RANGE)
    return delta if previous.end == reading.start else None


@dataclass(frozen=True)
class UpsertPlan:
    """What an idempotent upsert on ``(meter, start, end)`` does with a batch."""

    inserts: tuple[Reading, ...]
    updates: tuple[Reading, ...]
    unchanged: tuple[Reading, ...]


def classify_upsert(existing: Iterable[Reading], incoming: Iterable[Reading]) -> UpsertPlan:
    """New keys are inserted, known keys with another value or estimate mark are updated, the rest unchanged:
    re-ingesting the same readings is all ``unchanged``."""
    stored = {r.key: r for r in existing}
    inserts: list[Reading] = []
    updates: list[Reading] = []
    unchanged: list[Reading] = []
    for reading in {r.key: r for r in incoming}.values():
        before = stored.get(reading.key)
        (inserts if before is None else unchanged if before == reading else updates).append(reading)
    return UpsertPlan(tuple(inserts), tuple(updates), tuple(unchanged))


# --- operating states ----------------------------------------------------------------------------------------


class OperatingState(StrEnum):
    """Operating states of a running asset (energy.md §3.5), distinct from its lifecycle."""

    ONLINE = "ONLINE"
    ECO_BYPASS = "ECO_BYPASS"
    STANDBY = "STANDBY"
    ON_BATTERY = "ON_BATTERY"
    SELF_TEST = "SELF_TEST"
    MAINTENANCE = "MAINTENANCE"
    FAULT = "FAULT"
    MODULE_HIBERNATION = "MODULE_HIBERNATION"


class Figure(StrEnum):
    EFFICIENCY = "EFFICIENCY"
    LOAD_RATE = "LOAD_RATE"


S = OperatingState

EXCLUDED_STATES: Final[Mapping[Figure, frozenset[OperatingState]]] = {
    # η = E_out/E_in compares with the double-conversion curve: bypass/ECO skips the conversion, standby and
    # on-battery have no meaningful input, a self-test discharges the battery (energy.md §4.6: efficiency drift
    # "only while IN_SERVICE and not SELF_TEST, ECO or MAINTENANCE"; §5 item 27). Module hibernation is normal
    # operation (it is the measure being judged) and stays in.
    Figure.EFFICIENCY: frozenset({S.ECO_BYPASS, S.STANDBY, S.ON_BATTERY, S.SELF_TEST, S.MAINTENANCE, S.FAULT}),
    # Load rate keeps every interval in which the unit carried its real load (on battery and ECO included):
    # standby would make it look oversized, a self-test load is artificial, maintenance and faults are not service.
    Figure.LOAD_RATE: frozenset({S.STANDBY, S.SELF_TEST, S.MAINTENANCE, S.FAULT}),
}


@dataclass(frozen=True)
class StateInterval:
    state: OperatingState
    start: dt.datetime
    end: dt.datetime
    awake_modules: int | None = None  # MODULE_HIBERNATION: modules left awake (YD/T 2165-2017 §5.14)


def state_violations(
    intervals: Sequence[StateInterval], *, existing: Iterable[StateInterval] = (), field: str = "states"
) -> list[FieldViolation]:
    """Aware, non-empty intervals that overlap neither each other nor the stored ones (an identical stored
    interval is a re-send, allowed); ``awake_modules`` only, and at least 1, for MODULE_HIBERNATION."""
    found: list[FieldViolation] = []
    good: list[int] = []
    for i, interval in enumerate(intervals):
        problems = span_violations(interval, f"{field}[{i}]")
        if interval.awake_modules is not None:
            if interval.state is not S.MODULE_HIBERNATION:
                problems.append(FieldViolation(f"{field}[{i}].awake_modules", "only for MODULE_HIBERNATION"))
            elif interval.awake_modules < 1:
                problems.append(FieldViolation(f"{field}[{i}].awake_modules", "at least one module stays awake"))
        found += problems
        if not problems:
            good.append(i)
    unique: list[int] = []
    seen: set[StateInterval] = set()
    for i in good:
        if intervals[i] not in seen:
            seen.add(intervals[i])
            unique.append(i)
    for a, b in find_overlaps([intervals[i] for i in unique]):
        i, j = unique[a], unique[b]
        found.append(FieldViolation(f"{field}[{max(i, j)}]", f"overlaps {field}[{min(i, j)}]"))
    stored = [s for s in existing if s not in seen]
    for i in unique:
        for other in stored:
            if overlaps(intervals[i], other):
                found.append(
                    FieldViolation(
                        f"{field}[{i}]",
                        f"overlaps the stored {other.state.value} interval [{other.start.isoformat()}, "
                        f"{other.end.isoformat()})",
                    )
                )
                break
    return found


def excluded_readings(readings: Sequence[Span], states: Sequence[StateInterval], figure: Figure) -> frozenset[int]:
    """Indices of ``readings`` that share any time with a state the figure excludes. A reading partly in an
    excluded state is left out whole (its energy cannot be split by state). ``states`` must not overlap."""
    found = state_violations(states)
    if found:
        raise InvalidArgument(found)
    excluded = sorted((s for s in states if s.state in EXCLUDED_STATES[figure]), key=lambda s: s.start)
    ends = [s.end for s in excluded]  # non-overlapping and sorted by start, so sorted by end too
    out: set[int] = set()
    for index, reading in enumerate(readings):
        first = bisect.bisect_right(ends, reading.start)  # the first excluded interval ending after the start
        if first < len(excluded) and excluded[first].start < reading.end:
            out.add(index)
    return frozenset(out)
