"""The flow event, shaped on GS1 EPCIS 2.0 / CBV 2.0 (research note §1.1, §6.4), as frozen dataclasses, and
its field validation.

The dimensions map as in EPCIS:

- WHAT: ``batteries`` (→ ``epcList``, or ``inputEPCList`` for the transformation steps), ``quantities``
  (→ ``quantityList`` / ``inputQuantityList``: uncoded batteries by weight or count, note §5.3.2), ``outputs``
  (→ ``outputQuantityList``: materials out of dismantling or recycling);
- WHEN: ``event_time`` (aware) + ``event_time_zone_offset`` (required, "+08:00"), ``record_time`` (set by the
  server, never hashed);
- WHERE: ``facility_id`` (→ ``readPoint`` and, except for shipping, ``bizLocation``);
- WHY: ``biz_step``, ``disposition``, ``business_transactions`` (→ ``bizTransactionList``), source and
  destination facility (``location``) and owning participant (``owning_party``) (→ ``sourceList`` /
  ``destinationList``), ``collection_mode`` (platform extension, COLLECTING only);
- HOW: ``health_assessment`` measurements (→ ``sensorElementList``) with the verdict of the 2025 health
  assessment guide (note §3.5);
- ``error_declaration`` (→ ``errorDeclaration``): the EPCIS correction model (note §1.2). A declaration is a
  near-duplicate of the declared event with the same ``event_id`` (see :func:`declare_error`); history is never
  rewritten.

Vocabulary: the platform's own terms (the ``flows.proto`` enums), mapped to CBV where CBV has the term
(:mod:`.event_hash`). The reporter comes from the caller's credential, never from the payload.

:func:`event_violations` returns ``meshkit.errors.FieldViolation`` values named after the proto fields
(``event.quantities[0].quantity``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from meshkit.errors import FieldViolation
from services.flows.domain.identity import BatteryId, battery_id_violations


class BizStep(StrEnum):
    """Business steps (``flows.proto`` ``BizStep``; note §6.4). CBV mapping in :mod:`.event_hash`."""

    COMMISSIONING = "COMMISSIONING"
    SHIPPING = "SHIPPING"
    RECEIVING = "RECEIVING"
    RETAIL_SELLING = "RETAIL_SELLING"
    INSTALLING = "INSTALLING"
    COLLECTING = "COLLECTING"
    STORING = "STORING"
    HEALTH_ASSESSING = "HEALTH_ASSESSING"
    SORTING = "SORTING"
    DISCHARGING = "DISCHARGING"
    DISMANTLING = "DISMANTLING"
    RECYCLING = "RECYCLING"
    DESTROYING = "DESTROYING"


TRANSFORMATION_STEPS: Final = frozenset({BizStep.DISMANTLING, BizStep.RECYCLING})
"""Steps exported as EPCIS TransformationEvents (batteries in, materials out)."""


class Disposition(StrEnum):
    """Dispositions (note §6.4). ``WASTE`` (报废) is the one the custody state machine reads."""

    ACTIVE = "ACTIVE"
    IN_TRANSIT = "IN_TRANSIT"
    SELLABLE = "SELLABLE"
    RETAIL_SOLD = "RETAIL_SOLD"
    IN_USE = "IN_USE"
    RETURNED = "RETURNED"
    WASTE = "WASTE"
    IN_STORAGE = "IN_STORAGE"
    DAMAGED = "DAMAGED"
    NON_CONFORMANT = "NON_CONFORMANT"
    RECALLED = "RECALLED"
    STOLEN = "STOLEN"
    DESTROYED = "DESTROYED"
    DISMANTLED = "DISMANTLED"
    RECYCLED = "RECYCLED"


class CollectionMode(StrEnum):
    """How a waste battery was collected (``flows.proto`` ``CollectionMode``; note §3.4, §6.4)."""

    TRADE_IN = "TRADE_IN"  # 以旧换新
    DOOR_TO_DOOR = "DOOR_TO_DOOR"  # 预约上门
    INTERNET = "INTERNET"  # 互联网回收
    DROP_OFF = "DROP_OFF"  # 定点交投
    COOP_STATION = "COOP_STATION"  # 供销社回收站点
    FLEET_RETURN = "FLEET_RETURN"  # rental, sharing and delivery fleets


class Unit(StrEnum):
    """Units of a quantity element; the values are the UN/CEFACT Rec 20 codes EPCIS uses."""

    PIECES = "PCE"
    KILOGRAMS = "KGM"


class MeasurementType(StrEnum):
    """Measurements of a health assessment (note §3.5, §6.4)."""

    SOH_PCT = "SOH_PCT"
    CAPACITY_FADE_PCT = "CAPACITY_FADE_PCT"
    INTERNAL_RESISTANCE_OHM = "INTERNAL_RESISTANCE_OHM"
    MAX_OUTPUT_VOLTAGE_V = "MAX_OUTPUT_VOLTAGE_V"
    NOMINAL_VOLTAGE_V = "NOMINAL_VOLTAGE_V"
    WEIGHT_KG = "WEIGHT_KG"
    TEMPERATURE_C = "TEMPERATURE_C"


MEASUREMENT_UOM: Final[dict[MeasurementType, str]] = {
    MeasurementType.SOH_PCT: "P1",
    MeasurementType.CAPACITY_FADE_PCT: "P1",
    MeasurementType.INTERNAL_RESISTANCE_OHM: "OHM",
    MeasurementType.MAX_OUTPUT_VOLTAGE_V: "VLT",
    MeasurementType.NOMINAL_VOLTAGE_V: "VLT",
    MeasurementType.WEIGHT_KG: "KGM",
    MeasurementType.TEMPERATURE_C: "CEL",
}
"""UN/CEFACT Rec 20 unit of each measurement type (EPCIS ``sensorReport.uom``)."""

MEASUREMENT_RANGE: Final[dict[MeasurementType, tuple[float, float]]] = {
    MeasurementType.SOH_PCT: (0.0, 120.0),
    MeasurementType.CAPACITY_FADE_PCT: (0.0, 100.0),
    MeasurementType.INTERNAL_RESISTANCE_OHM: (0.0, 100.0),
    MeasurementType.MAX_OUTPUT_VOLTAGE_V: (0.0, 1000.0),
    MeasurementType.NOMINAL_VOLTAGE_V: (0.0, 1000.0),
    MeasurementType.WEIGHT_KG: (0.0, 1000.0),
    MeasurementType.TEMPERATURE_C: (-60.0, 200.0),
}
"""Plausible closed ranges; a value outside is a unit mix-up (mΩ for Ω, g for kg) rather than a measurement."""


class HealthVerdict(StrEnum):
    CONTINUE_USE = "CONTINUE_USE"
    RECOMMEND_SCRAP = "RECOMMEND_SCRAP"  # 不建议继续使用, 建议报废


class ScrapReason(StrEnum):
    """The scrap conditions of the 2025 e-bike Li-ion health assessment guide (note §3.5)."""

    APPEARANCE_DAMAGE = "APPEARANCE_DAMAGE"
    LEAKAGE = "LEAKAGE"
    DEFORMATION = "DEFORMATION"
    BURN_MARKS = "BURN_MARKS"
    SIZE_MISMATCH = "SIZE_MISMATCH"
    INTERFACE_DAMAGE = "INTERFACE_DAMAGE"
    NO_BRAND = "NO_BRAND"
    NO_CCC = "NO_CCC"
    NO_RATING_LABEL = "NO_RATING_LABEL"
    VOLTAGE_OVER_48V_LABEL = "VOLTAGE_OVER_48V_LABEL"
    SAFE_LIFE_EXPIRED = "SAFE_LIFE_EXPIRED"
    CASCADE_CELLS = "CASCADE_CELLS"
    IR_OVER_0_5_OHM = "IR_OVER_0_5_OHM"
    OUTPUT_OVER_60V = "OUTPUT_OVER_60V"
    CAPACITY_FADE_OVER_50PCT = "CAPACITY_FADE_OVER_50PCT"
    MANUFACTURER_DEFECT = "MANUFACTURER_DEFECT"


# Technical thresholds of the guide (note §3.5): scrap when exceeded.
MAX_INTERNAL_RESISTANCE_OHM: Final = 0.5
MAX_OUTPUT_VOLTAGE_V: Final = 60.0
MAX_LABELLED_NOMINAL_VOLTAGE_V: Final = 48.0
MAX_CAPACITY_FADE_PCT: Final = 50.0


class ErrorReason(StrEnum):
    """CBV error reasons (note §1.1: ``did_not_occur``, ``incorrect_data``)."""

    DID_NOT_OCCUR = "DID_NOT_OCCUR"
    INCORRECT_DATA = "INCORRECT_DATA"


class BizTransactionType(StrEnum):
    """Known business transaction types (note §6.4): CBV's plus the platform's. Other upper-snake types are
    accepted as platform extensions."""

    PO = "PO"
    INV = "INV"
    DESADV = "DESADV"
    RECADV = "RECADV"
    BOL = "BOL"
    TRADE_IN_ORDER = "TRADE_IN_ORDER"
    PICKUP_ORDER = "PICKUP_ORDER"
    TRANSFER_MANIFEST = "TRANSFER_MANIFEST"  # 转移联单
    HANDOVER_SLIP = "HANDOVER_SLIP"
    SUBSIDY_CLAIM = "SUBSIDY_CLAIM"


@dataclass(frozen=True, slots=True)
class Quantity:
    """An EPCIS quantity element: a battery model id or a material code (``black_mass``), an amount, a unit."""

    product_class: str
    amount: float
    unit: Unit


@dataclass(frozen=True, slots=True)
class BizTransaction:
    transaction_type: str
    transaction_id: str


@dataclass(frozen=True, slots=True)
class Measurement:
    measurement_type: MeasurementType
    value: float


@dataclass(frozen=True, slots=True)
class HealthAssessment:
    """Measurements and the verdict of the health assessment guide (note §3.5)."""

    verdict: HealthVerdict
    measurements: tuple[Measurement, ...] = ()
    reasons: tuple[ScrapReason, ...] = ()

    def value(self, kind: MeasurementType) -> float | None:
        return next((m.value for m in self.measurements if m.measurement_type is kind), None)


@dataclass(frozen=True, slots=True)
class ErrorDeclaration:
    """EPCIS ``errorDeclaration`` (note §1.2). ``corrective_event_ids`` name events that replace the declared
    one; they may be reported before or after the declaration."""

    declaration_time: dt.datetime
    reason: ErrorReason
    corrective_event_ids: tuple[str, ...] = ()
    explanation: str = ""
    declared_by: str = ""


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """One reported flow event. ``event_id`` is the client's UUID and the idempotency key."""

    event_id: str
    event_time: dt.datetime
    event_time_zone_offset: str
    biz_step: BizStep
    reporter_id: str
    facility_id: str
    batteries: tuple[BatteryId, ...] = ()
    quantities: tuple[Quantity, ...] = ()
    outputs: tuple[Quantity, ...] = ()
    disposition: Disposition | None = None
    collection_mode: CollectionMode | None = None
    source_facility_id: str = ""
    source_owner_id: str = ""
    destination_facility_id: str = ""
    destination_owner_id: str = ""
    business_transactions: tuple[BizTransaction, ...] = ()
    health_assessment: HealthAssessment | None = None
    model_id: str = ""
    production_date: dt.date | None = None
    record_time: dt.datetime | None = None
    error_declaration: ErrorDeclaration | None = None

    @property
    def local_event_time(self) -> dt.datetime:
        """``event_time`` at the reporter's declared offset (falls back to UTC for an invalid offset)."""
        return self.event_time.astimezone(parse_offset(self.event_time_zone_offset) or dt.UTC)

    @property
    def is_error_declaration(self) -> bool:
        return self.error_declaration is not None

    @property
    def effective_source_facility_id(self) -> str:
        """Where a shipment leaves from: the source, or the shipping facility itself."""
        return self.source_facility_id or (self.facility_id if self.biz_step is BizStep.SHIPPING else "")

    @property
    def effective_destination_facility_id(self) -> str:
        """Where a shipment goes: the destination, or the receiving facility itself."""
        return self.destination_facility_id or (self.facility_id if self.biz_step is BizStep.RECEIVING else "")

    def transaction_keys(self) -> frozenset[tuple[str, str]]:
        return frozenset((t.transaction_type, t.transaction_id) for t in self.business_transactions)


def declare_error(event: FlowEvent, declaration: ErrorDeclaration) -> FlowEvent:
    """The EPCIS error declaration of ``event``: a near-duplicate with the same ``event_id`` carrying the
    declaration (gs1/EPCIS #226, note §1.2). It hashes differently from the original (note §1.3 step 6)."""
    return dataclasses.replace(event, error_declaration=declaration, record_time=None)


def scrap_conditions(assessment: HealthAssessment) -> tuple[ScrapReason, ...]:
    """The guide's technical scrap conditions met by the measurements (note §3.5): internal resistance above
    0.5 Ω, maximum output voltage above 60 V, labelled nominal voltage above 48 V, capacity fade above 50 %
    (or a state of health below 50 %)."""
    found: list[ScrapReason] = []
    ir = assessment.value(MeasurementType.INTERNAL_RESISTANCE_OHM)
    if ir is not None and ir > MAX_INTERNAL_RESISTANCE_OHM:
        found.append(ScrapReason.IR_OVER_0_5_OHM)
    out = assessment.value(MeasurementType.MAX_OUTPUT_VOLTAGE_V)
    if out is not None and out > MAX_OUTPUT_VOLTAGE_V:
        found.append(ScrapReason.OUTPUT_OVER_60V)
    nominal = assessment.value(MeasurementType.NOMINAL_VOLTAGE_V)
    if nominal is not None and nominal > MAX_LABELLED_NOMINAL_VOLTAGE_V:
        found.append(ScrapReason.VOLTAGE_OVER_48V_LABEL)
    fade = assessment.value(MeasurementType.CAPACITY_FADE_PCT)
    soh = assessment.value(MeasurementType.SOH_PCT)
    if (fade is not None and fade > MAX_CAPACITY_FADE_PCT) or (soh is not None and soh < 100 - MAX_CAPACITY_FADE_PCT):
        found.append(ScrapReason.CAPACITY_FADE_OVER_50PCT)
    return tuple(found)


# ---- time helpers ---------------------------------------------------------------------------------

_OFFSET: Final = re.compile(r"^([+-])(\d{2}):(\d{2})$")
DEFAULT_CLOCK_SKEW: Final = dt.timedelta(minutes=5)
EARLIEST_EVENT_TIME: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def parse_offset(text: str) -> dt.timezone | None:
    """``+08:00`` → a fixed timezone; None unless ``±hh:mm`` within ±14:00 (the EPCIS/XSD range)."""
    match = _OFFSET.match(text)
    if match is None:
        return None
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3))
    if minutes >= 60 or hours * 60 + minutes > 14 * 60:
        return None
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if sign == "-" else delta)


def offset_of(moment: dt.datetime) -> str:
    """The ``±hh:mm`` offset of an aware datetime (for building events)."""
    delta = moment.utcoffset()
    if delta is None:
        raise ValueError("naive datetime")
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def is_aware(moment: dt.datetime) -> bool:
    return moment.tzinfo is not None and moment.utcoffset() is not None


def is_future(event_time: dt.datetime, now: dt.datetime, skew: dt.timedelta = DEFAULT_CLOCK_SKEW) -> bool:
    """True when ``event_time`` lies beyond ``now`` plus the clock-skew tolerance (shared with rule FLOW-009)."""
    return event_time > now + skew


# ---- field validation -----------------------------------------------------------------------------

MAX_BATTERIES: Final = 10_000
MAX_QUANTITIES: Final = 100
MAX_TRANSACTIONS: Final = 20
MAX_ID: Final = 64
MAX_TEXT: Final = 500
_UUID: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TRANSACTION_TYPE: Final = re.compile(r"^[A-Z][A-Z0-9_]{0,39}$")

PARTY_STEPS: Final = frozenset({BizStep.SHIPPING, BizStep.RECEIVING})
"""Steps that carry a source and a destination (custody transfer)."""


def is_canonical_uuid(text: str) -> bool:
    """A UUID in canonical lower-case 8-4-4-4-12 form (the idempotency key is compared byte for byte)."""
    return _UUID.match(text) is not None


def event_violations(
    event: FlowEvent, *, now: dt.datetime | None = None, clock_skew: dt.timedelta = DEFAULT_CLOCK_SKEW
) -> list[FieldViolation]:
    """Everything wrong with the event's fields on their own, with no history and no directory.

    With ``now``, an ``event_time`` beyond ``now + clock_skew`` is refused (the same test as rule FLOW-009,
    which the service reaches only for valid events; keeping it here makes the refusal a field problem).
    """
    found: list[FieldViolation] = []
    found += _identity_violations(event)
    found += _time_violations(event, now, clock_skew)
    found += _what_violations(event)
    found += _why_violations(event)
    if event.error_declaration is not None:
        found += _declaration_violations(event.event_id, event.error_declaration, now, clock_skew)
    return found


def _id_violations(field: str, value: str, *, required: bool) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, "required")] if required else []
    if len(value) > MAX_ID or not value.isprintable() or value != value.strip():
        return [FieldViolation(field, f"at most {MAX_ID} printable characters without surrounding spaces")]
    return []


def _identity_violations(event: FlowEvent) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not is_canonical_uuid(event.event_id):
        found.append(FieldViolation("event.event_id", "required: a UUID in canonical lower-case form"))
    found += _id_violations("event.reporter_id", event.reporter_id, required=True)
    found += _id_violations("event.facility_id", event.facility_id, required=True)
    return found


def _time_violations(event: FlowEvent, now: dt.datetime | None, skew: dt.timedelta) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if not is_aware(event.event_time):
        found.append(FieldViolation("event.event_time", "must carry a time zone (an aware timestamp)"))
    elif event.event_time < EARLIEST_EVENT_TIME:
        found.append(FieldViolation("event.event_time", f"before {EARLIEST_EVENT_TIME.date()}"))
    elif now is not None and is_future(event.event_time, now, skew):
        found.append(
            FieldViolation("event.event_time", f"in the future (more than {int(skew.total_seconds())} s after now)")
        )
    if parse_offset(event.event_time_zone_offset) is None:
        found.append(FieldViolation("event.event_time_zone_offset", "required: ±hh:mm within ±14:00, e.g. +08:00"))
    if event.record_time is not None and not is_aware(event.record_time):
        found.append(FieldViolation("event.record_time", "must carry a time zone (an aware timestamp)"))
    return found


def _what_violations(event: FlowEvent) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    step = event.biz_step
    if not event.batteries and not event.quantities:
        found.append(FieldViolation("event.batteries", "an event needs batteries, quantities or both"))
    if len(event.batteries) > MAX_BATTERIES:
        found.append(FieldViolation("event.batteries", f"at most {MAX_BATTERIES} batteries per event"))
    else:
        seen: set[BatteryId] = set()
        for i, battery in enumerate(event.batteries):
            found += battery_id_violations(f"event.batteries[{i}]", battery)
            if battery in seen:
                found.append(FieldViolation(f"event.batteries[{i}]", f"{battery.urn} is listed twice"))
            seen.add(battery)
    found += _quantity_violations("event.quantities", event.quantities)
    found += _quantity_violations("event.outputs", event.outputs)
    if event.outputs and step not in TRANSFORMATION_STEPS:
        found.append(FieldViolation("event.outputs", "only dismantling and recycling have outputs"))
    if step is BizStep.COMMISSIONING:
        if event.quantities:
            found.append(FieldViolation("event.quantities", "commissioning gives identified batteries a code"))
        if not event.batteries:
            found.append(FieldViolation("event.batteries", "required for commissioning"))
        found += _id_violations("event.model_id", event.model_id, required=True)
        if event.production_date is None:
            found.append(FieldViolation("event.production_date", "required for commissioning"))
    else:
        if event.model_id:
            found.append(FieldViolation("event.model_id", "only on commissioning"))
        if event.production_date is not None:
            found.append(FieldViolation("event.production_date", "only on commissioning"))
    return found


def _quantity_violations(field: str, quantities: Sequence[Quantity]) -> list[FieldViolation]:
    if len(quantities) > MAX_QUANTITIES:
        return [FieldViolation(field, f"at most {MAX_QUANTITIES} quantity elements")]
    found: list[FieldViolation] = []
    seen: set[tuple[str, Unit]] = set()
    for i, q in enumerate(quantities):
        path = f"{field}[{i}]"
        found += _id_violations(f"{path}.product_class", q.product_class, required=True)
        if not math.isfinite(q.amount) or q.amount <= 0:
            found.append(FieldViolation(f"{path}.quantity", "must be a finite number > 0"))
        elif q.unit is Unit.PIECES and not float(q.amount).is_integer():
            found.append(FieldViolation(f"{path}.quantity", "a count of pieces is a whole number"))
        if (q.product_class, q.unit) in seen:
            found.append(FieldViolation(path, f"{q.product_class} in {q.unit.name} is listed twice"))
        seen.add((q.product_class, q.unit))
    return found


def _why_violations(event: FlowEvent) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    step = event.biz_step
    if step is BizStep.COLLECTING and event.collection_mode is None:
        found.append(FieldViolation("event.collection_mode", "required for collecting"))
    if step is not BizStep.COLLECTING and event.collection_mode is not None:
        found.append(FieldViolation("event.collection_mode", "only on collecting"))
    found += _party_violations(event)
    found += _transaction_violations(event.business_transactions)
    assessment = event.health_assessment
    if step is BizStep.HEALTH_ASSESSING:
        if assessment is None:
            found.append(FieldViolation("event.health_assessment", "required for health assessing"))
        else:
            found += _assessment_violations(assessment)
    elif assessment is not None:
        found.append(FieldViolation("event.health_assessment", "only on health assessing"))
    return found


def _party_violations(event: FlowEvent) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    for side in ("source", "destination"):
        facility = getattr(event, f"{side}_facility_id")
        owner = getattr(event, f"{side}_owner_id")
        found += _id_violations(f"event.{side}_facility_id", facility, required=False)
        found += _id_violations(f"event.{side}_owner_id", owner, required=False)
        if (facility or owner) and event.biz_step not in PARTY_STEPS:
            found.append(FieldViolation(f"event.{side}_facility_id", "only shipping and receiving have a " + side))
        if owner and not facility:
            found.append(FieldViolation(f"event.{side}_owner_id", f"needs the {side} facility"))
    if event.biz_step is BizStep.SHIPPING:
        if not event.destination_facility_id:
            found.append(FieldViolation("event.destination_facility_id", "required for shipping"))
        elif event.destination_facility_id == event.facility_id:
            found.append(FieldViolation("event.destination_facility_id", "a shipment goes to another facility"))
        if event.source_facility_id and event.source_facility_id != event.facility_id:
            found.append(FieldViolation("event.source_facility_id", "a shipment leaves from the reporting facility"))
    if event.biz_step is BizStep.RECEIVING:
        if event.destination_facility_id and event.destination_facility_id != event.facility_id:
            found.append(FieldViolation("event.destination_facility_id", "a receipt is at the reporting facility"))
        if event.source_facility_id and event.source_facility_id == event.facility_id:
            found.append(FieldViolation("event.source_facility_id", "a receipt comes from another facility"))
    return found


def _transaction_violations(transactions: Iterable[BizTransaction]) -> list[FieldViolation]:
    items = tuple(transactions)
    if len(items) > MAX_TRANSACTIONS:
        return [FieldViolation("event.business_transactions", f"at most {MAX_TRANSACTIONS}")]
    found: list[FieldViolation] = []
    seen: set[tuple[str, str]] = set()
    for i, t in enumerate(items):
        path = f"event.business_transactions[{i}]"
        if not _TRANSACTION_TYPE.match(t.transaction_type):
            found.append(FieldViolation(f"{path}.transaction_type", "upper-snake, e.g. TRADE_IN_ORDER"))
        if not t.transaction_id or len(t.transaction_id) > 128 or not t.transaction_id.isprintable():
            found.append(FieldViolation(f"{path}.transaction_id", "1 to 128 printable characters"))
        if (t.transaction_type, t.transaction_id) in seen:
            found.append(FieldViolation(path, "listed twice"))
        seen.add((t.transaction_type, t.transaction_id))
    return found


def _assessment_violations(assessment: HealthAssessment) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    seen: set[MeasurementType] = set()
    for i, m in enumerate(assessment.measurements):
        path = f"event.health_assessment.measurements[{i}]"
        low, high = MEASUREMENT_RANGE[m.measurement_type]
        if not math.isfinite(m.value) or not low <= m.value <= high:
            found.append(FieldViolation(f"{path}.value", f"{m.measurement_type.value} must lie in [{low:g}, {high:g}]"))
        if m.measurement_type in seen:
            found.append(FieldViolation(path, f"{m.measurement_type.value} is measured twice"))
        seen.add(m.measurement_type)
    if len(set(assessment.reasons)) != len(assessment.reasons):
        found.append(FieldViolation("event.health_assessment.reasons", "each reason at most once"))
    if assessment.verdict is HealthVerdict.RECOMMEND_SCRAP and not assessment.reasons:
        found.append(FieldViolation("event.health_assessment.reasons", "a scrap recommendation names its reasons"))
    if assessment.verdict is HealthVerdict.CONTINUE_USE:
        if assessment.reasons:
            found.append(FieldViolation("event.health_assessment.reasons", "only a scrap recommendation has reasons"))
        if not found:  # only judge measurements that are themselves valid
            met = scrap_conditions(assessment)
            if met:
                found.append(
                    FieldViolation(
                        "event.health_assessment.verdict",
                        "the health assessment guide requires RECOMMEND_SCRAP: " + ", ".join(met),
                    )
                )
    return found


def _declaration_violations(
    event_id: str, declaration: ErrorDeclaration, now: dt.datetime | None, skew: dt.timedelta
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    path = "event.error_declaration"
    if not is_aware(declaration.declaration_time):
        found.append(FieldViolation(f"{path}.declaration_time", "must carry a time zone (an aware timestamp)"))
    elif now is not None and is_future(declaration.declaration_time, now, skew):
        found.append(FieldViolation(f"{path}.declaration_time", "in the future"))
    if declaration.reason is ErrorReason.INCORRECT_DATA and not declaration.corrective_event_ids:
        found.append(FieldViolation(f"{path}.corrective_event_ids", "incorrect data is replaced by corrective events"))
    ids = declaration.corrective_event_ids
    for i, corrective in enumerate(ids):
        if not is_canonical_uuid(corrective):
            found.append(FieldViolation(f"{path}.corrective_event_ids[{i}]", "a UUID in canonical lower-case form"))
        elif corrective == event_id:
            found.append(FieldViolation(f"{path}.corrective_event_ids[{i}]", "an event cannot correct itself"))
    if len(set(ids)) != len(ids):
        found.append(FieldViolation(f"{path}.corrective_event_ids", "each event at most once"))
    if len(declaration.explanation) > MAX_TEXT:
        found.append(FieldViolation(f"{path}.explanation", f"at most {MAX_TEXT} characters"))
    return found
