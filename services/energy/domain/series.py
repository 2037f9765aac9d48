"""Independent series: named series of an independent variable that no meter of the site records (energy.md §3.4
``IndependentVariableSeries``): outdoor temperature from a weather station, traffic in TB or Erl, IT load from a
DCIM export, a normal-year profile for normalised savings.

A series has a unit (one of :class:`~.units.Unit`, or a free label for what the enum does not list: "TB", "Erl",
"users") and an :class:`Aggregation` that says how its values combine into a longer interval: amounts per
interval are summed, levels are averaged over time. With a unit of the enum the aggregation follows the unit's
dimension (energy and volume are amounts; power, temperature, ratios are levels) and the other one is a unit
mismatch.

Values are judged exactly like a meter's readings (:mod:`.readings`, :mod:`.columns`): the same rejections (bad
times, a length other than the series' interval, overlaps, the same key with another value) and the same quality
flags (ESTIMATED, STUCK, and OUT_OF_RANGE never, as a series has no rating). :func:`as_meter_spec` gives the
meter the checks see. A SUM series cannot be negative (an amount); a MEAN series can (a temperature, a net
level), down to absolute zero for °C. Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from meshkit.errors import FieldViolation
from services.energy.domain.catalogue import CurrentKind
from services.energy.domain.readings import Direction, MeterQuantity, MeterRole, MeterSpec, ReadingMode
from services.energy.domain.units import RATE_OF, Unit, UnitMismatch

NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
MAX_LABEL: Final = 32


class Aggregation(StrEnum):
    SUM = "SUM"  # amounts per interval: energy, traffic volume, calls
    MEAN = "MEAN"  # levels and rates: temperature, power, users online


def natural_aggregation(unit: Unit) -> Aggregation:
    """Energy and volume are amounts (summed); every other dimension is a level (averaged)."""
    return Aggregation.SUM if unit.dimension in RATE_OF else Aggregation.MEAN


@dataclass(frozen=True)
class SeriesSpec:
    series_id: str
    name: str
    unit: Unit | None  # None: ``unit_label`` names it
    unit_label: str
    aggregation: Aggregation
    interval: dt.timedelta | None  # None: irregular

    @property
    def unit_text(self) -> str:
        return self.unit.symbol if self.unit is not None else self.unit_label


def series_violations(
    name: str,
    unit: Unit | None,
    unit_label: str,
    aggregation: Aggregation | None,
    interval: dt.timedelta | None,
    field: str = "series",
) -> list[FieldViolation]:
    """A snake_case name; exactly one of unit and unit label; an aggregation that fits the unit (required with a
    label); a positive interval of at most one day (longer intervals are irregular: calendar months)."""
    found: list[FieldViolation] = []
    if not NAME.match(name):
        found.append(FieldViolation(f"{field}.name", "required: a snake_case name, e.g. outdoor_temp_c"))
    if unit is None and not unit_label:
        found.append(FieldViolation(f"{field}.unit", "required: a unit, or a unit_label such as TB or Erl"))
    elif unit is not None and unit_label:
        found.append(FieldViolation(f"{field}.unit_label", "give either unit or unit_label, not both"))
    elif unit_label and (len(unit_label) > MAX_LABEL or not unit_label.isprintable()):
        found.append(FieldViolation(f"{field}.unit_label", f"at most {MAX_LABEL} printable characters"))
    if unit is None and unit_label and aggregation is None:
        found.append(FieldViolation(f"{field}.aggregation", "required with a unit_label: SUM or MEAN"))
    if unit is not None and aggregation is not None and aggregation is not natural_aggregation(unit):
        natural = natural_aggregation(unit)
        found.append(
            FieldViolation(
                f"{field}.aggregation",
                f"{UnitMismatch.REASON}: a {unit.symbol} ({unit.dimension.lower()}) series is a"
                f"{'n amount, summed' if natural is Aggregation.SUM else ' level, averaged'} ({natural.value})",
            )
        )
    if interval is not None and not dt.timedelta(0) < interval <= dt.timedelta(days=1):
        found.append(
            FieldViolation(f"{field}.interval", "positive and at most one day; leave it unset for calendar months")
        )
    return found


def as_meter_spec(series: SeriesSpec) -> MeterSpec:
    """The meter the reading checks see for a series: SUM as an INTERVAL meter of a non-negative amount, MEAN as an
    AVERAGE meter of a signed level (a temperature, bounded by absolute zero, for °C); no rating, so no
    OUT_OF_RANGE flag. The unit only matters for the rating, which a series has none of."""
    if series.aggregation is Aggregation.SUM:
        quantity, unit, mode, direction = MeterQuantity.ACTIVE_ENERGY, Unit.KWH, ReadingMode.INTERVAL, Direction.IMPORT
    elif series.unit is Unit.DEG_C:
        quantity, unit, mode, direction = MeterQuantity.TEMPERATURE, Unit.DEG_C, ReadingMode.AVERAGE, Direction.NET
    else:
        quantity, unit, mode, direction = MeterQuantity.ACTIVE_POWER, Unit.KW, ReadingMode.AVERAGE, Direction.NET
    return MeterSpec(
        meter_id=series.series_id,
        quantity=quantity,
        unit=unit,
        mode=mode,
        interval=series.interval,
        role=MeterRole.AUX,
        current=CurrentKind.AC,
        direction=direction,
    )


def negative_value_problem(series: SeriesSpec) -> str:
    """How a negative value of a SUM series is refused (the reading checks would speak of energy)."""
    return f"a summed series ({series.unit_text} per interval) cannot be negative"
