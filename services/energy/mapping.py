"""Between the messages of ``greenmesh.energy.v1`` and the pure domain of :mod:`services.energy.domain`.

Enums map by member NAME after the proto prefix (``UNIT_KWH`` ↔ ``Unit.KWH``, ``PUE_CATEGORY_1`` ↔
``PueCategory.CATEGORY_1``); the tables are built from the descriptors at import, and :data:`ENUM_MAPS` lets the
tests require that neither side has a member the other lacks. Conversions from the wire never raise: they return
values and ``FieldViolation`` lists named after the proto fields (``meter.interval``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2

from greenmesh.energy.v1 import energy_pb2 as pb
from meshkit.errors import FieldViolation
from services.energy.domain.catalogue import (
    CurrentKind,
    CurvePosition,
    EquipmentClass,
    GradeRating,
    HighEfficiencyBasis,
    ProcurementRecord,
    VoltageClass,
)
from services.energy.domain.kpis import ConductorMaterial, ItMeasurementPoint, PueCategory, RedundancyScheme
from services.energy.domain.lifecycle import LifecycleState
from services.energy.domain.readings import (
    Direction,
    MeterQuantity,
    MeterRole,
    OperatingState,
    Period,
    QualityFlag,
    ReadingMode,
)
from services.energy.domain.savings import (
    BaselineModel,
    Criterion,
    EvaluationStatus,
    IpmvpOption,
    MeasureType,
    NmbeConvention,
    PeriodRole,
    SavingsResult,
)
from services.energy.domain.series import Aggregation
from services.energy.domain.units import Quantity, Unit

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

E = TypeVar("E", bound=StrEnum)
V = TypeVar("V", bound=int)


class EnumMap(Generic[E, V]):
    """One proto enum ↔ one domain enum, by name after the proto prefix; UNSPECIFIED (0) maps to nothing."""

    def __init__(self, proto: _EnumTypeWrapper[V], prefix: str, domain: type[E]) -> None:
        self.proto_name = proto.DESCRIPTOR.name
        self.domain = domain
        self._from: dict[int, E] = {}
        self._to: dict[E, V] = {}
        missing: list[str] = []
        for described in proto.DESCRIPTOR.values:
            name = described.name.removeprefix(prefix)
            if described.number == 0:
                continue
            member = domain.__members__.get(name)
            if member is None:
                missing.append(described.name)
                continue
            number = proto.Value(described.name)
            self._from[number] = member
            self._to[member] = number
        self.proto_only: tuple[str, ...] = tuple(missing)
        self.domain_only: tuple[E, ...] = tuple(m for m in domain if m not in self._to)

    def from_proto(self, number: int) -> E | None:
        return self._from.get(number)

    def to_proto(self, member: E) -> V:
        return self._to[member]

    def name_to_proto(self, name: str) -> V:
        """A stored name (``"IN_SERVICE"``) → the proto number; "" → 0."""
        return self._to[self.domain(name)] if name else 0  # type: ignore[return-value]

    def problem(self, number: int) -> str:
        expected = ", ".join(m.name for m in self.domain)
        return f"required: one of {expected}" if number == 0 else f"unknown {self.proto_name} value {number}"

    def required(self, number: int, field: str, found: list[FieldViolation]) -> E | None:
        member = self.from_proto(number)
        if member is None:
            found.append(FieldViolation(field, self.problem(number)))
        return member

    def optional(self, number: int, field: str, found: list[FieldViolation]) -> E | None:
        return None if number == 0 else self.required(number, field, found)


UNITS: Final = EnumMap(pb.Unit, "UNIT_", Unit)
EQUIPMENT_CLASSES: Final = EnumMap(pb.EquipmentClass, "EQUIPMENT_CLASS_", EquipmentClass)
CURRENT_KINDS: Final = EnumMap(pb.CurrentKind, "CURRENT_KIND_", CurrentKind)
VOLTAGE_CLASSES: Final = EnumMap(pb.VoltageClass, "VOLTAGE_CLASS_", VoltageClass)
LIFECYCLE_STATES: Final = EnumMap(pb.LifecycleState, "LIFECYCLE_STATE_", LifecycleState)
HIGH_EFFICIENCY_BASES: Final = EnumMap(pb.HighEfficiencyBasis, "HIGH_EFFICIENCY_BASIS_", HighEfficiencyBasis)
REDUNDANCY_SCHEMES: Final = EnumMap(pb.RedundancyScheme, "REDUNDANCY_SCHEME_", RedundancyScheme)
METER_QUANTITIES: Final = EnumMap(pb.MeterQuantity, "METER_QUANTITY_", MeterQuantity)
READING_MODES: Final = EnumMap(pb.ReadingMode, "READING_MODE_", ReadingMode)
DIRECTIONS: Final = EnumMap(pb.Direction, "DIRECTION_", Direction)
METER_ROLES: Final = EnumMap(pb.MeterRole, "METER_ROLE_", MeterRole)
IT_POINTS: Final = EnumMap(pb.ItMeasurementPoint, "IT_MEASUREMENT_POINT_", ItMeasurementPoint)
QUALITY_FLAGS: Final = EnumMap(pb.QualityFlag, "QUALITY_FLAG_", QualityFlag)
OPERATING_STATES: Final = EnumMap(pb.OperatingState, "OPERATING_STATE_", OperatingState)
PUE_CATEGORIES: Final = EnumMap(pb.PueCategory, "PUE_", PueCategory)
CURVE_POSITIONS: Final = EnumMap(pb.CurvePosition, "CURVE_POSITION_", CurvePosition)
CONDUCTORS: Final = EnumMap(pb.ConductorMaterial, "CONDUCTOR_MATERIAL_", ConductorMaterial)
MEASURE_TYPES: Final = EnumMap(pb.MeasureType, "MEASURE_TYPE_", MeasureType)
IPMVP_OPTIONS: Final = EnumMap(pb.IpmvpOption, "IPMVP_", IpmvpOption)
CRITERIA: Final = EnumMap(pb.Criterion, "CRITERION_", Criterion)
PERIOD_ROLES: Final = EnumMap(pb.PeriodRole, "PERIOD_ROLE_", PeriodRole)
NMBE_CONVENTIONS: Final = EnumMap(pb.NmbeConvention, "NMBE_CONVENTION_", NmbeConvention)
EVALUATION_STATUSES: Final = EnumMap(pb.EvaluationStatus, "EVALUATION_STATUS_", EvaluationStatus)
SERIES_AGGREGATIONS: Final = EnumMap(pb.SeriesAggregation, "SERIES_AGGREGATION_", Aggregation)

ENUM_MAPS: Final[tuple[EnumMap[Any, Any], ...]] = (
    UNITS,
    EQUIPMENT_CLASSES,
    CURRENT_KINDS,
    VOLTAGE_CLASSES,
    LIFECYCLE_STATES,
    HIGH_EFFICIENCY_BASES,
    REDUNDANCY_SCHEMES,
    METER_QUANTITIES,
    READING_MODES,
    DIRECTIONS,
    METER_ROLES,
    IT_POINTS,
    QUALITY_FLAGS,
    OPERATING_STATES,
    PUE_CATEGORIES,
    CURVE_POSITIONS,
    CONDUCTORS,
    MEASURE_TYPES,
    IPMVP_OPTIONS,
    CRITERIA,
    PERIOD_ROLES,
    NMBE_CONVENTIONS,
    EVALUATION_STATUSES,
    SERIES_AGGREGATIONS,
)


# ---- times ----------------------------------------------------------------------------------------------------

MIN_SECONDS: Final = 946_684_800  # 2000-01-01: no meter of this register reads earlier
MAX_SECONDS: Final = 4_102_444_800  # 2100-01-01


def seconds_from_proto(stamp: Timestamp, field: str, found: list[FieldViolation]) -> int | None:
    """Whole Unix seconds of a reading or state boundary, between 2000 and 2100."""
    if stamp.nanos:
        found.append(FieldViolation(field, "whole seconds only (nanos must be 0)"))
        return None
    if not MIN_SECONDS <= stamp.seconds < MAX_SECONDS:
        found.append(FieldViolation(field, "required, between 2000-01-01 and 2100-01-01"))
        return None
    return int(stamp.seconds)


def seconds_to_proto(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def moment_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = True
) -> dt.datetime | None:
    """An aware UTC datetime from the Timestamp field ``name`` of ``holder``."""
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    stamp: Timestamp = getattr(holder, name)
    try:
        return stamp.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError) as error:
        found.append(FieldViolation(field, f"not a valid timestamp: {error}"))
        return None


def moment_to_proto(moment: dt.datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC))
    return stamp


def utc(moment: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes for aware columns; every stored time is UTC."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def period_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = True
) -> Period | None:
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    message: pb.Period = getattr(holder, name)
    before = len(found)
    start = moment_from_proto(message, "start_time", f"{field}.start_time", found)
    end = moment_from_proto(message, "end_time", f"{field}.end_time", found)
    if len(found) > before or start is None or end is None:
        return None
    if end <= start:
        found.append(FieldViolation(f"{field}.end_time", "must be after start_time"))
        return None
    return Period(start, end)


def period_to_proto(period: Period) -> pb.Period:
    return pb.Period(start_time=moment_to_proto(period.start), end_time=moment_to_proto(period.end))


def duration_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = False
) -> dt.timedelta | None:
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    duration: Duration = getattr(holder, name)
    if duration.nanos or duration.seconds <= 0:
        found.append(FieldViolation(field, "a positive number of whole seconds"))
        return None
    return dt.timedelta(seconds=duration.seconds)


def duration_to_proto(seconds: int | None) -> Duration | None:
    return None if seconds is None else Duration(seconds=seconds)


def date_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = True
) -> dt.date | None:
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    day: date_pb2.Date = getattr(holder, name)
    try:
        return dt.date(day.year, day.month, day.day)
    except ValueError as error:
        found.append(FieldViolation(field, f"not a calendar date: {error}"))
        return None


def date_to_proto(day: dt.date | None) -> date_pb2.Date | None:
    return None if day is None else date_pb2.Date(year=day.year, month=day.month, day=day.day)


# ---- quantities, grades ---------------------------------------------------------------------------------------


def quantity_from_proto(
    holder: Any, name: str, field: str, found: list[FieldViolation], *, required: bool = True
) -> Quantity | None:
    if not holder.HasField(name):
        if required:
            found.append(FieldViolation(field, "required"))
        return None
    message: pb.Quantity = getattr(holder, name)
    unit = UNITS.required(message.unit, f"{field}.unit", found)
    if not math.isfinite(message.value):
        found.append(FieldViolation(f"{field}.value", "must be a finite number"))
        return None
    return None if unit is None else Quantity(message.value, unit)


def quantity_to_proto(quantity: Quantity) -> pb.Quantity:
    return pb.Quantity(value=quantity.value, unit=UNITS.to_proto(quantity.unit))


def grade_from_proto(holder: Any, name: str) -> GradeRating | None:
    if not holder.HasField(name):
        return None
    message: pb.GradeRating = getattr(holder, name)
    return GradeRating(message.grade, message.standard.strip(), message.edition.strip())


def grade_to_proto(grade: GradeRating | None) -> pb.GradeRating | None:
    return None if grade is None else pb.GradeRating(grade=grade.grade, standard=grade.standard, edition=grade.edition)


def procurement_to_domain(listed: bool | None, grade: GradeRating | None) -> ProcurementRecord | None:
    return None if listed is None else ProcurementRecord(listed, grade)


# ---- savings results ------------------------------------------------------------------------------------------


def _optional(value: float | None) -> dict[str, float]:
    return {} if value is None else {"value": value}


def model_to_proto(model: BaselineModel) -> pb.BaselineModel:
    return pb.BaselineModel(
        variables=list(model.variables),
        intercept=model.intercept,
        coefficients=list(model.coefficients),
        n=model.n,
        r_squared=model.r_squared,
        adjusted_r_squared=model.adjusted_r_squared,
        cv_rmse=model.cv_rmse,
        nmbe=model.nmbe,
        mean_observed=model.mean_observed,
        rho1=model.rho1,
        n_prime=model.n_prime,
    )


def model_from_proto(message: pb.BaselineModel) -> BaselineModel:
    return BaselineModel(
        variables=tuple(message.variables),
        intercept=message.intercept,
        coefficients=tuple(message.coefficients),
        n=message.n,
        r_squared=message.r_squared,
        adjusted_r_squared=message.adjusted_r_squared,
        cv_rmse=message.cv_rmse,
        nmbe=message.nmbe,
        mean_observed=message.mean_observed,
        rho1=message.rho1,
        n_prime=message.n_prime,
    )


def savings_result_to_proto(result: SavingsResult) -> pb.SavingsResult:
    model, avoided, uncertainty, verdict = result.model, result.avoided, result.uncertainty, result.verdict
    thresholds = verdict.thresholds
    message = pb.SavingsResult(
        option=IPMVP_OPTIONS.to_proto(result.option),
        baseline_period=period_to_proto(result.baseline_period),
        reporting_period=period_to_proto(result.reporting_period),
        variables=list(result.variables),
        model=model_to_proto(model),
        adjusted_baseline_kwh=avoided.adjusted_baseline_kwh,
        reporting_kwh=avoided.reporting_kwh,
        non_routine_kwh=avoided.non_routine_kwh,
        savings_kwh=avoided.savings_kwh,
        reporting_points=avoided.points,
        adjustments=[pb.NonRoutineAdjustment(amount_kwh=a.amount_kwh, note=a.note) for a in result.adjustments],
        uncertainty=pb.SavingsUncertainty(
            confidence=uncertainty.confidence,
            degrees_of_freedom=uncertainty.degrees_of_freedom,
            alpha=uncertainty.alpha,
        ),
        baseline_coverage=result.baseline_coverage,
        reporting_coverage=result.reporting_coverage,
        verdict=pb.SufficiencyVerdict(
            passed=verdict.passed,
            criteria=[
                pb.CriterionResult(
                    criterion=CRITERIA.to_proto(c.criterion),
                    applies_to=PERIOD_ROLES.to_proto(c.applies_to),
                    threshold=c.threshold,
                    passed=c.passed,
                    **_optional(c.value),
                )
                for c in verdict.criteria
            ],
            thresholds=pb.AcceptanceThresholds(
                rule_set=thresholds.rule_set,
                max_cv_rmse=thresholds.max_cv_rmse,
                max_abs_nmbe=thresholds.max_abs_nmbe,
                min_coverage=thresholds.min_coverage,
                fsu_confidence=thresholds.fsu_confidence,
                source=thresholds.source,
            ),
        ),
        nmbe_convention=NMBE_CONVENTIONS.to_proto(result.nmbe_convention),
        cv_rmse_variant=result.cv_rmse_variant,
    )
    if avoided.savings_fraction is not None:
        message.savings_fraction = avoided.savings_fraction
    if uncertainty.t is not None:
        message.uncertainty.t = uncertainty.t
    if uncertainty.fsu is not None:
        message.uncertainty.fsu = uncertainty.fsu
    if uncertainty.absolute_kwh is not None:
        message.uncertainty.absolute_kwh = uncertainty.absolute_kwh
    if thresholds.max_fsu is not None:
        message.verdict.thresholds.max_fsu = thresholds.max_fsu
    if thresholds.min_r_squared is not None:
        message.verdict.thresholds.min_r_squared = thresholds.min_r_squared
    normalised = result.normalised
    if normalised is not None:
        message.normalised.CopyFrom(
            pb.NormalisedSavings(
                normal_period=period_to_proto(normalised.period),
                reporting_model=model_to_proto(normalised.reporting_model),
                baseline_kwh=normalised.savings.baseline_kwh,
                reporting_kwh=normalised.savings.reporting_kwh,
                savings_kwh=normalised.savings.savings_kwh,
                points=normalised.points,
                coverage=normalised.coverage,
            )
        )
        if normalised.savings.savings_fraction is not None:
            message.normalised.savings_fraction = normalised.savings.savings_fraction
    return message


def field_problems(violations: Sequence[FieldViolation]) -> list[pb.FieldProblem]:
    return [pb.FieldProblem(field=v.field, description=v.description) for v in violations]
