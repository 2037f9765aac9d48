"""The figures the records service computes (energy.md §4.1-4.3): PUE, load-rate statistics against the design
maximum of the redundancy scheme, measured efficiency against the catalogue curve (drift), transformer losses,
line losses for a DC voltage upgrade, and the share of high-efficiency equipment in service.

Sources, by function:

- :func:`pue`: ISO/IEC 30134-2 (and EN 50600-4-2): PUE = E_DC / E_IT, both energy over the same period, ≥ 1 by
  definition; the measurement category is where IT energy is metered (cat. 1 UPS output, 2 PDU output, 3 IT
  equipment input). Category 0 (peak demand in kW) is not energy based and is not offered.
- :func:`design_max_load_rate`: the single-failure limits of the configurations in APC/Schneider WP75 as the
  note derives them (§4.2).
- :func:`efficiency_drift`: Δη = η_measured - η_catalogue(β), flagged below -δ percentage points (§4.6).
- :func:`transformer_loss_w`: ΔP(β) = P0 + β²·Pk, η(β) and β_opt = √(P0/Pk) (GB 20052 loss figures, GB/T 13462
  economic operation; §4.2).
- :func:`line_loss`: DC, I = P/V, P_loss = I²·R with R = rho·(2L)/A for a two-wire run; at the same power and
  conductor the loss scales with (V1/V2)² (§4.3).
- :func:`efficient_share`: count and capacity share of high-efficiency assets in service (§4.2).

Floats throughout: kWh, kW, W, Ω, fractions. Bad input raises ``InvalidArgument`` (field violations) or
``UnitMismatch``. Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeVar

from meshkit.errors import FieldViolation, InvalidArgument
from services.energy.domain.catalogue import (
    HVDC_CLASSES,
    CurrentKind,
    CurveLookup,
    CurvePosition,
    EfficiencyCurve,
    EquipmentClass,
    ExtrapolationPolicy,
    ProcurementRecord,
    TransformerLosses,
    VoltageClass,
    is_high_efficiency,
    transformer_losses_violations,
)
from services.energy.domain.lifecycle import LifecycleState
from services.energy.domain.readings import Period, span_violations
from services.energy.domain.units import Dimension, Quantity, Unit, require_dimension

K = TypeVar("K", bound=Hashable)


def _fail(field: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)])


def _energy_kwh(quantities: Iterable[Quantity], field: str) -> float:
    total = 0.0
    count = 0
    for i, quantity in enumerate(quantities):
        require_dimension(quantity.unit, Dimension.ENERGY, f"{field}[{i}].unit")
        if not (math.isfinite(quantity.value) and quantity.value >= 0):
            raise _fail(f"{field}[{i}].value", "must be a non-negative finite energy")
        total += quantity.value_in(Unit.KWH)
        count += 1
    if count == 0:
        raise _fail(field, "at least one energy figure")
    return total


# --- PUE -----------------------------------------------------------------------------------------------------


class ItMeasurementPoint(StrEnum):
    """Where the IT energy is metered (energy.md §3.4 ``measurement_location``)."""

    UPS_OUTPUT = "UPS_OUTPUT"
    PDU_OUTPUT = "PDU_OUTPUT"
    IT_EQUIPMENT_INPUT = "IT_EQUIPMENT_INPUT"


class PueCategory(StrEnum):
    """ISO/IEC 30134-2 / The Green Grid measurement categories of an energy-based PUE."""

    CATEGORY_1 = "CATEGORY_1"
    CATEGORY_2 = "CATEGORY_2"
    CATEGORY_3 = "CATEGORY_3"


PUE_CATEGORY: Final[Mapping[ItMeasurementPoint, PueCategory]] = {
    ItMeasurementPoint.UPS_OUTPUT: PueCategory.CATEGORY_1,
    ItMeasurementPoint.PDU_OUTPUT: PueCategory.CATEGORY_2,
    ItMeasurementPoint.IT_EQUIPMENT_INPUT: PueCategory.CATEGORY_3,
}


@dataclass(frozen=True)
class PueResult:
    """PUE with its components (energy.md §3.6 KpiRecord: "store the components, not just the ratio")."""

    period: Period
    facility_energy_kwh: float
    it_energy_kwh: float
    it_measured_at: ItMeasurementPoint
    category: PueCategory
    value: float

    @property
    def dcie(self) -> float:
        """DCiE = 1 / PUE."""
        return 1.0 / self.value


def pue(
    facility_energy: Iterable[Quantity],
    it_energy: Iterable[Quantity],
    it_measured_at: ItMeasurementPoint,
    period: Period,
) -> PueResult:
    """Energy-based PUE of one site over ``period``: Σ facility energy / Σ IT energy (ISO/IEC 30134-2).

    Refuses power units (``UnitMismatch``), zero IT energy, and totals below the IT energy (PUE < 1 means a
    meter is in the wrong role or the periods differ)."""
    found = span_violations(period, "period")
    if found:
        raise InvalidArgument(found)
    total = _energy_kwh(facility_energy, "facility_energy")
    it = _energy_kwh(it_energy, "it_energy")
    if it <= 0:
        raise _fail("it_energy", "IT energy must be positive")
    if total < it:
        raise _fail("facility_energy", f"below the IT energy ({total:g} < {it:g} kWh): PUE cannot be below 1")
    return PueResult(period, total, it, it_measured_at, PUE_CATEGORY[it_measured_at], total / it)


# --- load rate -----------------------------------------------------------------------------------------------


class RedundancyScheme(StrEnum):
    """Redundancy configurations (energy.md §3.3 RedundancyGroup, APC WP75)."""

    N = "N"
    N_PLUS_1 = "N_PLUS_1"
    N_PLUS_M = "N_PLUS_M"
    TWO_N = "TWO_N"
    DISTRIBUTED_REDUNDANT = "DISTRIBUTED_REDUNDANT"


def design_max_load_rate(
    scheme: RedundancyScheme, *, units: int | None = None, redundant_units: int | None = None
) -> float:
    """The highest per-unit load rate that still survives the loss of the redundant capacity (energy.md §4.2):

    - N: 1.0;
    - N+1 with ``units`` modules installed in parallel (N of them needed): (units - 1) / units, e.g. 4 → 0.75;
    - N+M with ``units`` installed and ``redundant_units`` = M spare: (units - M) / units;
    - 2N: 0.5;
    - distributed redundant, ``units`` = k systems sharing the load ("k to make k - 1"): (k - 1) / k.
    """
    if scheme is RedundancyScheme.N:
        return 1.0
    if scheme is RedundancyScheme.TWO_N:
        return 0.5
    if units is None:
        raise _fail("units", f"required for {scheme.value}")
    if scheme is RedundancyScheme.N_PLUS_1:
        if units < 2:
            raise _fail("units", "N+1 needs at least 2 units installed")
        return (units - 1) / units
    if scheme is RedundancyScheme.N_PLUS_M:
        if redundant_units is None or not 1 <= redundant_units < units:
            raise _fail("redundant_units", "between 1 and units - 1")
        return (units - redundant_units) / units
    if units < 3:
        raise _fail("units", "distributed redundancy needs at least 3 systems (2 is 2N)")
    return (units - 1) / units


DEFAULT_LOAD_EDGES: Final = tuple(i / 10 for i in range(11))
"""Histogram edges 0, 0.1, …, 1.0 (energy.md §3.5: bins 0-10 %, …, 90-100 %, > 100 %)."""


@dataclass(frozen=True)
class HistogramBin:
    lower: float
    upper: float  # math.inf for the overload bin
    count: int


@dataclass(frozen=True)
class LoadRateStats:
    """Load rate β = P / P_rated over equal intervals (so the plain mean is the time-weighted mean)."""

    n: int
    mean: float
    p95: float
    max: float
    histogram: tuple[HistogramBin, ...]
    design_max_load_rate: float | None
    above_design_max: int  # intervals with β above the design maximum

    @property
    def share_above_design_max(self) -> float:
        return self.above_design_max / self.n


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (Hyndman & Fan type 7, numpy's default) of sorted values."""
    if not sorted_values:
        raise _fail("loads", "at least one value")
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


def load_rate_stats(
    loads: Sequence[float],
    load_unit: Unit,
    rated: Quantity,
    *,
    design_max: float | None = None,
    edges: Sequence[float] = DEFAULT_LOAD_EDGES,
) -> LoadRateStats:
    """Mean, P95, max and histogram of β for one asset; ``loads`` in ``load_unit`` after excluding what the
    operating states say (:func:`services.energy.domain.readings.excluded_readings`). ``rated`` must be of the
    same dimension as the loads: kW with kW, kVA with kVA (``UnitMismatch`` otherwise). Bins are
    ``[edges[i], edges[i+1])``, the last regular one closed, plus one bin above the last edge."""
    if not loads:
        raise _fail("loads", "at least one value")
    if list(edges) != sorted(set(edges)) or len(edges) < 2 or edges[0] != 0:
        raise _fail("edges", "strictly increasing from 0, at least two")
    rated_value = rated.value_in(load_unit, field="rated_capacity.unit")
    if not (math.isfinite(rated_value) and rated_value > 0):
        raise _fail("rated_capacity.value", "must be positive")
    rates: list[float] = []
    for i, load in enumerate(loads):
        if not (math.isfinite(load) and load >= 0):
            raise _fail(f"loads[{i}]", "must be a non-negative finite number")
        rates.append(load / rated_value)
    rates.sort()
    counts = [0] * len(edges)  # len(edges) - 1 regular bins and the overload bin
    top = edges[-1]
    for rate in rates:
        index = len(edges) - 1 if rate > top else min(_bin(edges, rate), len(edges) - 2)
        counts[index] += 1
    bounds = [*edges, math.inf]
    histogram = tuple(HistogramBin(bounds[i], bounds[i + 1], counts[i]) for i in range(len(edges)))
    above = 0 if design_max is None else len(rates) - _count_at_most(rates, design_max)
    return LoadRateStats(
        n=len(rates),
        mean=math.fsum(rates) / len(rates),
        p95=percentile(rates, 0.95),
        max=rates[-1],
        histogram=histogram,
        design_max_load_rate=design_max,
        above_design_max=above,
    )


def _bin(edges: Sequence[float], value: float) -> int:
    low, high = 0, len(edges) - 1
    while high - low > 1:  # edges[low] <= value < edges[high]
        mid = (low + high) // 2
        if value >= edges[mid]:
            low = mid
        else:
            high = mid
    return low


def _count_at_most(sorted_values: Sequence[float], limit: float) -> int:
    low, high = 0, len(sorted_values)
    while low < high:
        mid = (low + high) // 2
        if sorted_values[mid] <= limit:
            low = mid + 1
        else:
            high = mid
    return low


# --- efficiency and drift ------------------------------------------------------------------------------------

DEFAULT_DRIFT_THRESHOLD_PP: Final = 2.0
"""Percentage points below the curve that count as drift (energy.md §4.6 suggests 1-2; 2 because the input and
output meters each carry about 0.5-1 % class error)."""
DEFAULT_DRIFT_WINDOWS: Final = 3
"""Consecutive drifted windows before an alert (§4.6 "for m consecutive windows")."""


def measured_efficiency(energy_in: Quantity, energy_out: Quantity) -> float:
    """η = E_out / E_in over a window (energy, not power snapshots: §4.2)."""
    require_dimension(energy_in.unit, Dimension.ENERGY, "energy_in.unit")
    require_dimension(energy_out.unit, Dimension.ENERGY, "energy_out.unit")
    e_in, e_out = energy_in.value_in(Unit.KWH), energy_out.value_in(Unit.KWH)
    if not (math.isfinite(e_in) and e_in > 0):
        raise _fail("energy_in.value", "must be positive")
    if not (math.isfinite(e_out) and e_out >= 0):
        raise _fail("energy_out.value", "must be non-negative")
    if e_out > e_in:
        raise _fail("energy_out.value", "above the input energy: η > 1 is impossible (meter roles swapped?)")
    return e_out / e_in


@dataclass(frozen=True)
class EfficiencyDrift:
    load_fraction: float
    measured: float
    expected: float | None  # the curve's η at the load; None outside the curve under REPORT
    position: CurvePosition
    drift_pp: float | None  # (measured - expected) · 100: negative = worse than the catalogue
    threshold_pp: float
    drifted: bool


def efficiency_drift(
    curve: EfficiencyCurve,
    load_fraction: float,
    measured: float,
    *,
    threshold_pp: float = DEFAULT_DRIFT_THRESHOLD_PP,
    policy: ExtrapolationPolicy = ExtrapolationPolicy.REPORT,
) -> EfficiencyDrift:
    """Measured η against the catalogue curve at the same load; ``drifted`` when more than ``threshold_pp``
    percentage points *below* it (above the curve is not a drift of the equipment). Outside the curve under
    REPORT there is nothing to compare and nothing is flagged."""
    if not (math.isfinite(measured) and 0 < measured <= 1):
        raise _fail("measured_efficiency", "must lie in (0, 1]")
    if not (math.isfinite(threshold_pp) and threshold_pp >= 0):
        raise _fail("threshold_pp", "must be a non-negative number")
    found: CurveLookup = curve.lookup(load_fraction, policy)
    if found.efficiency is None:
        return EfficiencyDrift(load_fraction, measured, None, found.position, None, threshold_pp, False)
    drift = (measured - found.efficiency) * 100.0
    return EfficiencyDrift(
        load_fraction, measured, found.efficiency, found.position, drift, threshold_pp, drift < -threshold_pp
    )


def drift_alert(drifts: Sequence[EfficiencyDrift], consecutive: int = DEFAULT_DRIFT_WINDOWS) -> bool:
    """True when the last ``consecutive`` windows all drifted (a window without comparison breaks the run)."""
    if consecutive < 1:
        raise _fail("consecutive", "at least 1")
    return len(drifts) >= consecutive and all(d.drifted for d in drifts[-consecutive:])


# --- transformer ---------------------------------------------------------------------------------------------


def _check_losses(losses: TransformerLosses, load_fraction: float) -> None:
    found = transformer_losses_violations(losses)
    if not (math.isfinite(load_fraction) and load_fraction >= 0):
        found.append(FieldViolation("load_fraction", "must be a non-negative number"))
    if found:
        raise InvalidArgument(found)


def transformer_loss_w(losses: TransformerLosses, load_fraction: float) -> float:
    """ΔP(β) = P0 + β²·Pk in watts: iron loss at any load plus copper loss with the square of the load."""
    _check_losses(losses, load_fraction)
    return losses.no_load_loss_w + load_fraction**2 * losses.load_loss_w


def transformer_efficiency(
    losses: TransformerLosses, rated: Quantity, load_fraction: float, *, power_factor: float = 1.0
) -> float:
    """η(β) = β·S_n·cosφ / (β·S_n·cosφ + P0 + β²·Pk), with ``rated`` S_n in kVA/VA."""
    require_dimension(rated.unit, Dimension.APPARENT_POWER, "rated_capacity.unit")
    if not 0 < power_factor <= 1:
        raise _fail("power_factor", "must lie in (0, 1]")
    if load_fraction == 0:
        return 0.0
    output_w = load_fraction * rated.value_in(Unit.KVA) * 1000.0 * power_factor
    return output_w / (output_w + transformer_loss_w(losses, load_fraction))


def optimal_load_fraction(losses: TransformerLosses) -> float:
    """β_opt = √(P0/Pk): where iron and copper losses are equal and η is highest."""
    _check_losses(losses, 0.0)
    return math.sqrt(losses.no_load_loss_w / losses.load_loss_w)


# --- line loss -----------------------------------------------------------------------------------------------


class ConductorMaterial(StrEnum):
    COPPER = "COPPER"
    ALUMINIUM = "ALUMINIUM"


RESISTIVITY_OHM_MM2_PER_M: Final[Mapping[ConductorMaterial, float]] = {
    ConductorMaterial.COPPER: 1 / 58,  # annealed copper at 20 °C (IEC 60028): 0.017241 Ω·mm²/m
    ConductorMaterial.ALUMINIUM: 0.028264,  # hard-drawn aluminium at 20 °C (IEC 60889)
}


def conductor_resistance_ohm(
    length_m: float,
    cross_section_mm2: float,
    material: ConductorMaterial = ConductorMaterial.COPPER,
    *,
    conductors: int = 2,
) -> float:
    """Loop resistance R = rho·(conductors·L)/A of a run ``length_m`` long: two conductors for a DC feed."""
    found: list[FieldViolation] = []
    if not (math.isfinite(length_m) and length_m > 0):
        found.append(FieldViolation("length_m", "must be positive"))
    if not (math.isfinite(cross_section_mm2) and cross_section_mm2 > 0):
        found.append(FieldViolation("cross_section_mm2", "must be positive"))
    if conductors < 1:
        found.append(FieldViolation("conductors", "at least 1"))
    if found:
        raise InvalidArgument(found)
    return RESISTIVITY_OHM_MM2_PER_M[material] * conductors * length_m / cross_section_mm2


@dataclass(frozen=True)
class LineLoss:
    voltage_v: float
    current_a: float
    loss_w: float
    voltage_drop_v: float
    loss_fraction: float  # loss / delivered power


def line_loss(power_w: float, voltage_v: float, resistance_ohm: float) -> LineLoss:
    """DC feed: I = P/V, P_loss = I²·R, ΔV = I·R (energy.md §4.3)."""
    found: list[FieldViolation] = []
    for name, value in (("power_w", power_w), ("voltage_v", voltage_v), ("resistance_ohm", resistance_ohm)):
        if not (math.isfinite(value) and value > 0):
            found.append(FieldViolation(name, "must be positive"))
    if found:
        raise InvalidArgument(found)
    current = power_w / voltage_v
    loss = current**2 * resistance_ohm
    return LineLoss(voltage_v, current, loss, current * resistance_ohm, loss / power_w)


def line_loss_ratio(from_voltage_v: float, to_voltage_v: float) -> float:
    """P_loss,2 / P_loss,1 = (V1/V2)² at the same power and conductor: 48 → 240 V gives 0.04 (25 times less)."""
    if not (from_voltage_v > 0 and to_voltage_v > 0):
        raise _fail("voltage_v", "voltages must be positive")
    return (from_voltage_v / to_voltage_v) ** 2


@dataclass(frozen=True)
class UpgradeOption:
    voltage_class: VoltageClass
    loss: LineLoss
    loss_ratio: float  # against the present feed
    saved_w: float


@dataclass(frozen=True)
class VoltageUpgradeComparison:
    present: LineLoss
    options: tuple[UpgradeOption, ...]


def voltage_upgrade_comparison(
    measured_current_a: float,
    voltage_v: float,
    resistance_ohm: float,
    targets: Sequence[VoltageClass] = tuple(sorted(HVDC_CLASSES, key=lambda c: c.nominal_v)),
) -> VoltageUpgradeComparison:
    """Line losses of a DC feed today (``measured_current_a`` at ``voltage_v``, e.g. 53.5 V float on a 48 V
    plant) and after moving the same delivered power P = V·I to each DC voltage class in ``targets`` over the
    same conductor. Converter losses are not part of it."""
    if not (math.isfinite(measured_current_a) and measured_current_a > 0):
        raise _fail("measured_current_a", "must be positive")
    for i, target in enumerate(targets):
        if target.current is not CurrentKind.DC:
            raise _fail(f"targets[{i}]", f"{target.value} is not a DC voltage class")
    power = measured_current_a * voltage_v
    present = line_loss(power, voltage_v, resistance_ohm)
    options = []
    for target in targets:
        after = line_loss(power, target.nominal_v, resistance_ohm)
        options.append(UpgradeOption(target, after, after.loss_w / present.loss_w, present.loss_w - after.loss_w))
    return VoltageUpgradeComparison(present, tuple(options))


# --- high-efficiency share -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareAsset:
    """One asset as the share needs it; grouping fields (operator, province, class) live here."""

    asset_id: str
    lifecycle_state: LifecycleState
    procurement: ProcurementRecord | None
    equipment_class: EquipmentClass
    operator: str = ""
    province: str = ""
    rated_capacity: Quantity | None = None


@dataclass(frozen=True)
class EfficientShare:
    in_service: int
    high_efficiency: int
    capacity_in_service: float | None  # in the base unit of the group's one capacity dimension
    capacity_high_efficiency: float | None

    @property
    def share(self) -> float | None:
        return self.high_efficiency / self.in_service if self.in_service else None

    @property
    def capacity_share(self) -> float | None:
        if not self.capacity_in_service or self.capacity_high_efficiency is None:
            return None
        return self.capacity_high_efficiency / self.capacity_in_service


def efficient_share(
    assets: Iterable[ShareAsset],
    key: Callable[[ShareAsset], K],
    *,
    states: frozenset[LifecycleState] = frozenset({LifecycleState.IN_SERVICE}),
) -> dict[K, EfficientShare]:
    """The plan's 现网高效节能型产品占比 per group: assets in ``states`` (default IN_SERVICE) that are high
    efficiency (:func:`services.energy.domain.catalogue.is_high_efficiency`) over all of them, by count and, when
    every asset of a group has a capacity of one dimension, by capacity. Groups without in-service assets are
    absent."""
    counts: dict[K, list[int]] = {}
    capacity: dict[K, list[float]] = {}
    dimensions: dict[K, set[Dimension | None]] = {}
    for asset in assets:
        if asset.lifecycle_state not in states:
            continue
        group = key(asset)
        tally = counts.setdefault(group, [0, 0])
        sums = capacity.setdefault(group, [0.0, 0.0])
        efficient = is_high_efficiency(asset.procurement)
        tally[0] += 1
        tally[1] += efficient
        dimensions.setdefault(group, set()).add(asset.rated_capacity.dimension if asset.rated_capacity else None)
        if asset.rated_capacity is not None:
            base = asset.rated_capacity.in_base().value
            sums[0] += base
            sums[1] += base if efficient else 0.0
    result: dict[K, EfficientShare] = {}
    for group, (total, efficient_count) in counts.items():
        comparable = len(dimensions[group]) == 1 and None not in dimensions[group]
        cap_total, cap_efficient = capacity[group] if comparable else (None, None)
        result[group] = EfficientShare(total, efficient_count, cap_total, cap_efficient)
    return result
