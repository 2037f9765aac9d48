"""Quantities and units for the energy records: what a meter, a rating or a reading is measured in, and the
conversions between units of the same dimension.

Values are ``float``: energy figures come from meters with a few significant digits, and the formulas downstream
(regression, PUE, losses) are floating-point anyway. Each unit belongs to one :class:`Dimension` and carries its
factor to that dimension's base unit (kWh, kW, kVA, A, V, Ah, m³, m³/h, °C, ratio). Converting between
dimensions is refused with :class:`UnitMismatch` (an ``InvalidArgument`` carrying a field violation and the
ErrorInfo reason ``UNIT_MISMATCH``): kW is not kWh, and kW is not kVA either (energy.md §4.2 "never mix them").

Temperature has one unit only (°C): an affine scale (K, °F) would need an offset, which no figure here needs.
Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from google.rpc import error_details_pb2

from meshkit.errors import ERROR_DOMAIN, FieldViolation, InvalidArgument


class Dimension(StrEnum):
    """What a unit measures; conversion is only possible within one dimension."""

    ENERGY = "ENERGY"
    POWER = "POWER"  # active power
    APPARENT_POWER = "APPARENT_POWER"
    CURRENT = "CURRENT"
    VOLTAGE = "VOLTAGE"
    CHARGE = "CHARGE"  # battery capacity in ampere-hours
    VOLUME = "VOLUME"
    VOLUME_FLOW = "VOLUME_FLOW"
    TEMPERATURE = "TEMPERATURE"
    RATIO = "RATIO"


class Unit(StrEnum):
    """Units by proto-friendly name; :attr:`symbol` is the printed form."""

    WH = "WH"
    KWH = "KWH"
    MWH = "MWH"
    GWH = "GWH"
    MJ = "MJ"
    GJ = "GJ"
    W = "W"
    KW = "KW"
    MW = "MW"
    VA = "VA"
    KVA = "KVA"
    MVA = "MVA"
    A = "A"
    KA = "KA"
    V = "V"
    KV = "KV"
    AH = "AH"
    L = "L"
    M3 = "M3"
    M3_PER_H = "M3_PER_H"
    M3_PER_MIN = "M3_PER_MIN"
    L_PER_S = "L_PER_S"
    DEG_C = "DEG_C"
    RATIO = "RATIO"
    PERCENT = "PERCENT"

    @property
    def dimension(self) -> Dimension:
        return _UNITS[self].dimension

    @property
    def symbol(self) -> str:
        return _UNITS[self].symbol

    @property
    def factor(self) -> float:
        """Multiply a value in this unit by the factor to get the dimension's base unit."""
        return _UNITS[self].factor


@dataclass(frozen=True)
class _UnitInfo:
    dimension: Dimension
    factor: float
    symbol: str


_UNITS: Final[Mapping[Unit, _UnitInfo]] = {
    Unit.WH: _UnitInfo(Dimension.ENERGY, 1e-3, "Wh"),
    Unit.KWH: _UnitInfo(Dimension.ENERGY, 1.0, "kWh"),
    Unit.MWH: _UnitInfo(Dimension.ENERGY, 1e3, "MWh"),
    Unit.GWH: _UnitInfo(Dimension.ENERGY, 1e6, "GWh"),
    Unit.MJ: _UnitInfo(Dimension.ENERGY, 1 / 3.6, "MJ"),  # 1 kWh = 3.6 MJ exactly
    Unit.GJ: _UnitInfo(Dimension.ENERGY, 1e3 / 3.6, "GJ"),
    Unit.W: _UnitInfo(Dimension.POWER, 1e-3, "W"),
    Unit.KW: _UnitInfo(Dimension.POWER, 1.0, "kW"),
    Unit.MW: _UnitInfo(Dimension.POWER, 1e3, "MW"),
    Unit.VA: _UnitInfo(Dimension.APPARENT_POWER, 1e-3, "VA"),
    Unit.KVA: _UnitInfo(Dimension.APPARENT_POWER, 1.0, "kVA"),
    Unit.MVA: _UnitInfo(Dimension.APPARENT_POWER, 1e3, "MVA"),
    Unit.A: _UnitInfo(Dimension.CURRENT, 1.0, "A"),
    Unit.KA: _UnitInfo(Dimension.CURRENT, 1e3, "kA"),
    Unit.V: _UnitInfo(Dimension.VOLTAGE, 1.0, "V"),
    Unit.KV: _UnitInfo(Dimension.VOLTAGE, 1e3, "kV"),
    Unit.AH: _UnitInfo(Dimension.CHARGE, 1.0, "Ah"),
    Unit.L: _UnitInfo(Dimension.VOLUME, 1e-3, "L"),
    Unit.M3: _UnitInfo(Dimension.VOLUME, 1.0, "m³"),
    Unit.M3_PER_H: _UnitInfo(Dimension.VOLUME_FLOW, 1.0, "m³/h"),
    Unit.M3_PER_MIN: _UnitInfo(Dimension.VOLUME_FLOW, 60.0, "m³/min"),
    Unit.L_PER_S: _UnitInfo(Dimension.VOLUME_FLOW, 3.6, "L/s"),
    Unit.DEG_C: _UnitInfo(Dimension.TEMPERATURE, 1.0, "°C"),
    Unit.RATIO: _UnitInfo(Dimension.RATIO, 1.0, "1"),
    Unit.PERCENT: _UnitInfo(Dimension.RATIO, 1e-2, "%"),
}

BASE_UNIT: Final[Mapping[Dimension, Unit]] = {
    Dimension.ENERGY: Unit.KWH,
    Dimension.POWER: Unit.KW,
    Dimension.APPARENT_POWER: Unit.KVA,
    Dimension.CURRENT: Unit.A,
    Dimension.VOLTAGE: Unit.V,
    Dimension.CHARGE: Unit.AH,
    Dimension.VOLUME: Unit.M3,
    Dimension.VOLUME_FLOW: Unit.M3_PER_H,
    Dimension.TEMPERATURE: Unit.DEG_C,
    Dimension.RATIO: Unit.RATIO,
}
"""The unit every dimension is stored in (factor 1)."""

RATE_OF: Final[Mapping[Dimension, Dimension]] = {
    Dimension.ENERGY: Dimension.POWER,
    Dimension.VOLUME: Dimension.VOLUME_FLOW,
}
"""The rate whose integral over time is the dimension (energy = power · time): how an energy meter is rated."""

# Spellings seen in CSV headers and vendor exports, beyond the enum names and the symbols.
_ALIASES: Final[Mapping[str, Unit]] = {
    "m3": Unit.M3,
    "m^3": Unit.M3,
    "m3/h": Unit.M3_PER_H,
    "m³/h": Unit.M3_PER_H,
    "m3/min": Unit.M3_PER_MIN,
    "m³/min": Unit.M3_PER_MIN,
    "°c": Unit.DEG_C,
    "degc": Unit.DEG_C,
    "c": Unit.DEG_C,
    "%": Unit.PERCENT,
    "1": Unit.RATIO,
    "kw·h": Unit.KWH,
    "kw.h": Unit.KWH,
    "度": Unit.KWH,  # the colloquial Chinese unit on electricity bills: 1 度 = 1 kWh
}
_BY_TEXT: Final[Mapping[str, Unit]] = {
    **{unit.value.lower(): unit for unit in Unit},
    **{unit.symbol.lower(): unit for unit in Unit},
    **_ALIASES,
}


class UnitMismatch(InvalidArgument):
    """A value in one unit was given where another dimension is required (kW for kWh, kVA for kW).

    An ``InvalidArgument`` with one field violation; it also carries ErrorInfo ``UNIT_MISMATCH`` so clients can
    tell it from other bad values without parsing the description.
    """

    REASON: Final = "UNIT_MISMATCH"

    def __init__(self, field: str, given: Unit, expected: Dimension | Unit) -> None:
        self.field = field
        self.given = given
        self.expected_dimension = expected.dimension if isinstance(expected, Unit) else expected
        wanted = f"{expected.symbol} ({expected.dimension.lower()})" if isinstance(expected, Unit) else expected.lower()
        description = f"{self.REASON}: {given.symbol} ({given.dimension.lower()}) is not convertible to {wanted}"
        super().__init__([FieldViolation(field, description)])
        self.reason = self.REASON
        self.metadata = {"given_unit": given.value, "expected_dimension": self.expected_dimension.value}

    def details(self) -> list[Any]:
        info = error_details_pb2.ErrorInfo(reason=self.REASON, domain=ERROR_DOMAIN, metadata=self.metadata)
        return [*super().details(), info]


def parse_unit(text: str, field: str = "unit") -> Unit:
    """A unit from its enum name, its symbol or a common spelling (``kwh``, ``kWh``, ``m3``, ``度``)."""
    found = _BY_TEXT.get(text.strip().lower())
    if found is None:
        raise InvalidArgument([FieldViolation(field, f"unknown unit {text!r}")])
    return found


def convert(value: float, from_unit: Unit, to_unit: Unit, *, field: str = "unit") -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit``; :class:`UnitMismatch` across dimensions."""
    if from_unit.dimension is not to_unit.dimension:
        raise UnitMismatch(field, from_unit, to_unit)
    if from_unit is to_unit:
        return value
    return value * from_unit.factor / to_unit.factor


def require_dimension(unit: Unit, dimension: Dimension, field: str) -> None:
    """Raise :class:`UnitMismatch` unless ``unit`` measures ``dimension``."""
    if unit.dimension is not dimension:
        raise UnitMismatch(field, unit, dimension)


@dataclass(frozen=True)
class Quantity:
    """A value with its unit. Arithmetic keeps the left operand's unit; mixing dimensions raises."""

    value: float
    unit: Unit

    @property
    def dimension(self) -> Dimension:
        return self.unit.dimension

    def to(self, unit: Unit, *, field: str = "unit") -> Quantity:
        return Quantity(convert(self.value, self.unit, unit, field=field), unit)

    def value_in(self, unit: Unit, *, field: str = "unit") -> float:
        return convert(self.value, self.unit, unit, field=field)

    def in_base(self) -> Quantity:
        return self.to(BASE_UNIT[self.dimension])

    def __add__(self, other: Quantity) -> Quantity:
        return Quantity(self.value + other.value_in(self.unit), self.unit)

    def __sub__(self, other: Quantity) -> Quantity:
        return Quantity(self.value - other.value_in(self.unit), self.unit)

    def scaled(self, factor: float) -> Quantity:
        return Quantity(self.value * factor, self.unit)

    def __str__(self) -> str:
        return f"{self.value:g} {self.unit.symbol}"


def quantity_violations(quantity: Quantity, field: str, *, dimensions: frozenset[Dimension]) -> list[FieldViolation]:
    """A finite value in one of ``dimensions``; descriptions start with the reason (``UNIT_MISMATCH: …``)."""
    found: list[FieldViolation] = []
    if quantity.dimension not in dimensions:
        wanted = ", ".join(sorted(d.lower() for d in dimensions))
        found.append(
            FieldViolation(
                f"{field}.unit",
                f"{UnitMismatch.REASON}: {quantity.unit.symbol} ({quantity.dimension.lower()}) where {wanted} "
                "is required",
            )
        )
    if not math.isfinite(quantity.value):
        found.append(FieldViolation(f"{field}.value", "must be a finite number"))
    return found


def hours(duration: dt.timedelta) -> float:
    return duration.total_seconds() / 3600.0


def energy_over(power: Quantity, duration: dt.timedelta, *, field: str = "power") -> Quantity:
    """Energy in kWh delivered at a constant ``power`` over ``duration`` (the most an interval can hold)."""
    return Quantity(power.value_in(Unit.KW, field=field) * hours(duration), Unit.KWH)


def mean_power(energy: Quantity, duration: dt.timedelta, *, field: str = "energy") -> Quantity:
    """The mean power in kW of ``energy`` spread over ``duration`` (> 0)."""
    if duration <= dt.timedelta(0):
        raise InvalidArgument([FieldViolation(field, "the interval must have a positive duration")])
    return Quantity(energy.value_in(Unit.KWH, field=field) / hours(duration), Unit.KW)
