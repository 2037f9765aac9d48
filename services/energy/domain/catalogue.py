"""The equipment catalogue (energy.md §3.1-3.2): equipment classes, AC/DC and voltage classes, efficiency curves,
energy-efficiency grades, the procurement record and the "high efficiency" predicate of the MIIT plan.

- Equipment classes follow the research note's codes (``POWER.UPS`` …, see :attr:`EquipmentClass.code`) with
  the Haystack/Brick gaps (UPS, rectifier, PDU, generator, SST) filled locally.
- Voltage classes carry the nominal voltage: DC 48 V (telecom -48 V, stored as a magnitude), DC 240 V
  (YD/T 2378-2011, system range 192-288 V), DC 336 V, DC 400 V (ITU-T L.1200, up to 400 VDC), DC 800 V, and the
  usual Chinese AC levels (220/380 V low voltage, 10/20/35/110 kV).
- An :class:`EfficiencyCurve` holds η by load fraction (e.g. the ENERGY STAR UPS points at 25/50/75/100 %) and
  interpolates linearly between points, never beyond the ends: outside them it clamps or reports, as asked.
- A :class:`GradeRating` is a grade 1-3 (1 best) under a named standard *and edition*: GB standards are
  revised (GB 20052-2024 replaced earlier editions), so a grade means nothing without the edition in force at
  procurement (energy.md §3.1 "StandardGradeTable").
- High efficiency (the plan's 现网高效节能型产品): listed in the MIIT recommended catalogue at procurement, or
  graded 1 or 2 at procurement (energy.md §4.2 "Efficient-product share").

Validation functions return ``meshkit.errors.FieldViolation`` lists named after the proto fields; the value
classes raise ``InvalidArgument`` from their constructors. Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from meshkit.errors import FieldViolation, InvalidArgument
from services.energy.domain.units import Dimension, Quantity, quantity_violations


class EquipmentClass(StrEnum):
    """Equipment classes (energy.md §3.1 ``EquipmentClass.code``)."""

    TRANSFORMER = "TRANSFORMER"
    SOLID_STATE_TRANSFORMER = "SOLID_STATE_TRANSFORMER"
    RECTIFIER_HVDC = "RECTIFIER_HVDC"
    RECTIFIER_48V = "RECTIFIER_48V"
    UPS = "UPS"
    DCDC_CONVERTER = "DCDC_CONVERTER"
    PDU = "PDU"
    SWITCHGEAR = "SWITCHGEAR"
    GENERATOR = "GENERATOR"
    BATTERY = "BATTERY"
    ENERGY_STORAGE = "ENERGY_STORAGE"
    CHILLER = "CHILLER"
    CRAC = "CRAC"
    CRAH = "CRAH"
    COMPRESSOR = "COMPRESSOR"
    COOLING_TOWER = "COOLING_TOWER"
    PUMP = "PUMP"
    FAN = "FAN"

    @property
    def code(self) -> str:
        """The research note's dotted code, e.g. ``POWER.UPS``."""
        return _CODES[self]


_CODES: Final[Mapping[EquipmentClass, str]] = {
    EquipmentClass.TRANSFORMER: "POWER.TRANSFORMER",
    EquipmentClass.SOLID_STATE_TRANSFORMER: "POWER.SST",
    EquipmentClass.RECTIFIER_HVDC: "POWER.RECTIFIER_HVDC",
    EquipmentClass.RECTIFIER_48V: "POWER.RECTIFIER_48V",
    EquipmentClass.UPS: "POWER.UPS",
    EquipmentClass.DCDC_CONVERTER: "POWER.DCDC",
    EquipmentClass.PDU: "POWER.PDU",
    EquipmentClass.SWITCHGEAR: "POWER.SWITCHGEAR",
    EquipmentClass.GENERATOR: "POWER.GENSET",
    EquipmentClass.BATTERY: "STORAGE.BATTERY",
    EquipmentClass.ENERGY_STORAGE: "STORAGE.ESS",
    EquipmentClass.CHILLER: "COOLING.CHILLER",
    EquipmentClass.CRAC: "COOLING.CRAC",
    EquipmentClass.CRAH: "COOLING.CRAH",
    EquipmentClass.COMPRESSOR: "COOLING.COMPRESSOR",
    EquipmentClass.COOLING_TOWER: "COOLING.COOLING_TOWER",
    EquipmentClass.PUMP: "COOLING.PUMP",
    EquipmentClass.FAN: "COOLING.FAN",
}

E = EquipmentClass
D = Dimension

RATED_DIMENSIONS: Final[Mapping[EquipmentClass, frozenset[Dimension]]] = {
    E.TRANSFORMER: frozenset({D.APPARENT_POWER}),
    E.SOLID_STATE_TRANSFORMER: frozenset({D.APPARENT_POWER, D.POWER}),
    E.RECTIFIER_HVDC: frozenset({D.POWER}),
    E.RECTIFIER_48V: frozenset({D.POWER}),
    E.UPS: frozenset({D.APPARENT_POWER, D.POWER}),
    E.DCDC_CONVERTER: frozenset({D.POWER}),
    E.PDU: frozenset({D.APPARENT_POWER, D.POWER, D.CURRENT}),  # rack PDUs are rated in amperes
    E.SWITCHGEAR: frozenset({D.CURRENT}),
    E.GENERATOR: frozenset({D.APPARENT_POWER, D.POWER}),
    E.BATTERY: frozenset({D.CHARGE, D.ENERGY}),  # telecom strings are sold in Ah at 48 V
    E.ENERGY_STORAGE: frozenset({D.ENERGY}),
    E.CHILLER: frozenset({D.POWER}),  # cooling capacity
    E.CRAC: frozenset({D.POWER}),
    E.CRAH: frozenset({D.POWER}),
    E.COMPRESSOR: frozenset({D.VOLUME_FLOW, D.POWER}),  # GB 19153: m³/min; refrigeration compressors: kW
    E.COOLING_TOWER: frozenset({D.POWER, D.VOLUME_FLOW}),
    E.PUMP: frozenset({D.VOLUME_FLOW, D.POWER}),
    E.FAN: frozenset({D.VOLUME_FLOW, D.POWER}),
}
"""What a class's rated capacity may be expressed in (energy.md §3.1 ``rated_unit``)."""

TRANSFORMER_CLASSES: Final = frozenset({E.TRANSFORMER, E.SOLID_STATE_TRANSFORMER})
"""Classes whose losses are graded by no-load and load loss (GB 20052)."""


class CurrentKind(StrEnum):
    AC = "AC"
    DC = "DC"


class VoltageClass(StrEnum):
    """Supply voltage classes with their current kind and nominal voltage (:attr:`nominal_v`)."""

    DC_48V = "DC_48V"
    DC_240V = "DC_240V"
    DC_336V = "DC_336V"
    DC_400V = "DC_400V"
    DC_800V = "DC_800V"
    AC_220V = "AC_220V"
    AC_380V = "AC_380V"
    AC_10KV = "AC_10KV"
    AC_20KV = "AC_20KV"
    AC_35KV = "AC_35KV"
    AC_110KV = "AC_110KV"

    @property
    def current(self) -> CurrentKind:
        return CurrentKind.DC if self.value.startswith("DC") else CurrentKind.AC

    @property
    def nominal_v(self) -> float:
        return _NOMINAL_V[self]


_NOMINAL_V: Final[Mapping[VoltageClass, float]] = {
    VoltageClass.DC_48V: 48.0,
    VoltageClass.DC_240V: 240.0,
    VoltageClass.DC_336V: 336.0,
    VoltageClass.DC_400V: 400.0,
    VoltageClass.DC_800V: 800.0,
    VoltageClass.AC_220V: 220.0,
    VoltageClass.AC_380V: 380.0,
    VoltageClass.AC_10KV: 10_000.0,
    VoltageClass.AC_20KV: 20_000.0,
    VoltageClass.AC_35KV: 35_000.0,
    VoltageClass.AC_110KV: 110_000.0,
}

HVDC_CLASSES: Final = frozenset(
    {VoltageClass.DC_240V, VoltageClass.DC_336V, VoltageClass.DC_400V, VoltageClass.DC_800V}
)
"""The plan's DC240/400/800 V family (plus 336 V), the targets of a voltage upgrade from DC 48 V."""


@dataclass(frozen=True)
class PowerPort:
    """An input or output of a product: current kind and voltage class."""

    current: CurrentKind
    voltage_class: VoltageClass


def port_violations(port: PowerPort, field: str) -> list[FieldViolation]:
    if port.voltage_class.current is not port.current:
        return [
            FieldViolation(
                f"{field}.voltage_class",
                f"{port.voltage_class.value} is a {port.voltage_class.current.value} class; the port is "
                f"{port.current.value}",
            )
        ]
    return []


# --- efficiency curves ---------------------------------------------------------------------------------------

MAX_LOAD_FRACTION: Final = 1.5
"""Upper bound of a curve's load fractions: datasheet overload ratings go to 125-150 %, never beyond."""
MIN_CURVE_POINTS: Final = 2
MAX_CURVE_POINTS: Final = 101


class ExtrapolationPolicy(StrEnum):
    """What a lookup outside the curve's ends does: never extrapolate."""

    CLAMP = "CLAMP"  # the nearest end's efficiency, marked as clamped
    REPORT = "REPORT"  # no efficiency, only where the load fell


class CurvePosition(StrEnum):
    INSIDE = "INSIDE"
    BELOW = "BELOW"  # load below the first point
    ABOVE = "ABOVE"  # load above the last point


@dataclass(frozen=True)
class CurvePoint:
    load_fraction: float  # output load / rated capacity, in (0, MAX_LOAD_FRACTION]
    efficiency: float  # output / input, in (0, 1]


@dataclass(frozen=True)
class CurveLookup:
    load_fraction: float
    efficiency: float | None  # None when outside the curve under REPORT
    position: CurvePosition

    @property
    def clamped(self) -> bool:
        return self.position is not CurvePosition.INSIDE and self.efficiency is not None


def curve_violations(points: Sequence[CurvePoint], field: str = "efficiency_curve") -> list[FieldViolation]:
    """Load fractions in (0, MAX_LOAD_FRACTION] strictly increasing (sorted, no duplicates), efficiencies in
    (0, 1], between MIN_CURVE_POINTS and MAX_CURVE_POINTS points."""
    found: list[FieldViolation] = []
    if not MIN_CURVE_POINTS <= len(points) <= MAX_CURVE_POINTS:
        found.append(FieldViolation(field, f"between {MIN_CURVE_POINTS} and {MAX_CURVE_POINTS} points"))
    previous: float | None = None
    for i, point in enumerate(points):
        load, eta = point.load_fraction, point.efficiency
        if not (math.isfinite(load) and 0.0 < load <= MAX_LOAD_FRACTION):
            found.append(FieldViolation(f"{field}[{i}].load_fraction", f"must lie in (0, {MAX_LOAD_FRACTION:g}]"))
        elif previous is not None and load == previous:
            found.append(FieldViolation(f"{field}[{i}].load_fraction", f"duplicates an earlier point ({load:g})"))
        elif previous is not None and load < previous:
            found.append(
                FieldViolation(
                    f"{field}[{i}].load_fraction", f"points must be sorted by load fraction ({load:g} < {previous:g})"
                )
            )
        if not (math.isfinite(eta) and 0.0 < eta <= 1.0):
            found.append(FieldViolation(f"{field}[{i}].efficiency", "must lie in (0, 1]"))
        if math.isfinite(load):
            previous = load if previous is None else max(previous, load)
    return found


@dataclass(frozen=True)
class EfficiencyCurve:
    """η by load fraction; validated on construction (``InvalidArgument`` naming ``efficiency_curve[i]``)."""

    points: tuple[CurvePoint, ...]

    def __post_init__(self) -> None:
        found = curve_violations(self.points)
        if found:
            raise InvalidArgument(found)

    @classmethod
    def of(cls, *pairs: tuple[float, float]) -> EfficiencyCurve:
        """From ``(load_fraction, efficiency)`` pairs, in the given order."""
        return cls(tuple(CurvePoint(load, eta) for load, eta in pairs))

    def lookup(self, load_fraction: float, policy: ExtrapolationPolicy = ExtrapolationPolicy.REPORT) -> CurveLookup:
        """η at ``load_fraction`` by linear interpolation between the neighbouring points; outside the ends,
        the end's η (CLAMP) or none (REPORT), with the position recorded either way."""
        if not math.isfinite(load_fraction):
            raise InvalidArgument([FieldViolation("load_fraction", "must be a finite number")])
        first, last = self.points[0], self.points[-1]
        if load_fraction < first.load_fraction or load_fraction > last.load_fraction:
            below = load_fraction < first.load_fraction
            position = CurvePosition.BELOW if below else CurvePosition.ABOVE
            end = first if below else last
            efficiency = end.efficiency if policy is ExtrapolationPolicy.CLAMP else None
            return CurveLookup(load_fraction, efficiency, position)
        # the first point at or above the load is the right neighbour (never index 0: share 0 at the first point)
        right_at = max(bisect.bisect_left([p.load_fraction for p in self.points], load_fraction), 1)
        left, right = self.points[right_at - 1], self.points[right_at]
        share = (load_fraction - left.load_fraction) / (right.load_fraction - left.load_fraction)
        eta = left.efficiency + share * (right.efficiency - left.efficiency)
        # rounding may step one ulp outside the neighbours; the promise is to stay between them
        low, high = sorted((left.efficiency, right.efficiency))
        return CurveLookup(load_fraction, min(max(eta, low), high), CurvePosition.INSIDE)


# --- grades, transformer losses ------------------------------------------------------------------------------

GRADES: Final = (1, 2, 3)
_EDITION = re.compile(r"^(19|20)\d{2}$")


@dataclass(frozen=True)
class GradeRating:
    """An energy-efficiency grade (1 best, 3 = the market-entry limit) under ``standard`` (``GB 20052``) in
    ``edition`` (``2024``)."""

    grade: int
    standard: str
    edition: str

    @property
    def designation(self) -> str:
        return f"{self.standard}-{self.edition}"


def grade_violations(rating: GradeRating, field: str = "grade") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if rating.grade not in GRADES:
        found.append(FieldViolation(f"{field}.grade", "must be 1, 2 or 3"))
    if not rating.standard.strip() or len(rating.standard) > 64:
        found.append(FieldViolation(f"{field}.standard", "required: the standard's number, e.g. GB 20052"))
    if not _EDITION.match(rating.edition):
        found.append(FieldViolation(f"{field}.edition", "required: the edition's year, e.g. 2024"))
    return found


@dataclass(frozen=True)
class TransformerLosses:
    """GB 20052 loss figures: no-load (iron) loss P0 and load (copper) loss Pk at rated current, in watts."""

    no_load_loss_w: float
    load_loss_w: float


def transformer_losses_violations(losses: TransformerLosses, field: str = "transformer_losses") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not (math.isfinite(losses.no_load_loss_w) and losses.no_load_loss_w > 0):
        found.append(FieldViolation(f"{field}.no_load_loss_w", "must be a positive number of watts"))
    if not (math.isfinite(losses.load_loss_w) and losses.load_loss_w > 0):
        found.append(FieldViolation(f"{field}.load_loss_w", "must be a positive number of watts"))
    return found


# --- catalogue entries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueEntry:
    """A product model (energy.md §3.2)."""

    equipment_class: EquipmentClass
    manufacturer: str
    model: str
    rated_capacity: Quantity
    input: PowerPort | None = None
    output: PowerPort | None = None
    efficiency_curve: EfficiencyCurve | None = None
    transformer_losses: TransformerLosses | None = None
    grade: GradeRating | None = None
    listed_in_recommended_catalogue: bool = False
    listing_editions: tuple[str, ...] = field(default_factory=tuple)  # e.g. ("2024", "2025")


def catalogue_entry_violations(entry: CatalogueEntry, field: str = "catalogue_entry") -> list[FieldViolation]:
    """Every rule on an entry: names present, the capacity in a unit the class is rated in, ports consistent,
    transformer losses only on transformer classes, a valid grade."""
    found: list[FieldViolation] = []
    for name, value in (("manufacturer", entry.manufacturer), ("model", entry.model)):
        if not value.strip() or len(value) > 200:
            found.append(FieldViolation(f"{field}.{name}", "required, at most 200 characters"))
    capacity = f"{field}.rated_capacity"
    found += quantity_violations(entry.rated_capacity, capacity, dimensions=RATED_DIMENSIONS[entry.equipment_class])
    if math.isfinite(entry.rated_capacity.value) and entry.rated_capacity.value <= 0:
        found.append(FieldViolation(f"{capacity}.value", "must be positive"))
    if entry.input is not None:
        found += port_violations(entry.input, f"{field}.input")
    if entry.output is not None:
        found += port_violations(entry.output, f"{field}.output")
    if entry.transformer_losses is not None:
        if entry.equipment_class not in TRANSFORMER_CLASSES:
            found.append(
                FieldViolation(f"{field}.transformer_losses", "only for transformers and solid-state transformers")
            )
        found += transformer_losses_violations(entry.transformer_losses, f"{field}.transformer_losses")
    if entry.grade is not None:
        found += grade_violations(entry.grade, f"{field}.grade")
    for i, edition in enumerate(entry.listing_editions):
        if not _EDITION.match(edition):
            found.append(FieldViolation(f"{field}.listing_editions[{i}]", "the catalogue edition's year, e.g. 2024"))
    if entry.listing_editions and not entry.listed_in_recommended_catalogue:
        found.append(FieldViolation(f"{field}.listing_editions", "given for an entry that is not listed"))
    return found


# --- procurement and the high-efficiency predicate -----------------------------------------------------------


class HighEfficiencyBasis(StrEnum):
    """Why an asset counts as high efficiency; LISTED wins when both apply."""

    LISTED = "LISTED"
    GRADE_1 = "GRADE_1"
    GRADE_2 = "GRADE_2"


@dataclass(frozen=True)
class ProcurementRecord:
    """What was true *at procurement* (energy.md §3.3 ``was_listed_at_procurement``, ``grade_at_procurement``):
    a later listing or a re-grade under a new edition does not change how the purchase counts."""

    listed_at_procurement: bool
    grade_at_procurement: GradeRating | None = None


def high_efficiency_basis(procurement: ProcurementRecord | None) -> HighEfficiencyBasis | None:
    """The plan's test: listed in the recommended catalogue, or grade 1 or 2, both at procurement."""
    if procurement is None:
        return None
    if procurement.listed_at_procurement:
        return HighEfficiencyBasis.LISTED
    grade = procurement.grade_at_procurement
    if grade is not None and grade.grade == 1:
        return HighEfficiencyBasis.GRADE_1
    if grade is not None and grade.grade == 2:
        return HighEfficiencyBasis.GRADE_2
    return None


def is_high_efficiency(procurement: ProcurementRecord | None) -> bool:
    return high_efficiency_basis(procurement) is not None
