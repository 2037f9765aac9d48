"""Between the protobuf messages of ``greenmesh.flows.v1`` and the pure domain of :mod:`services.flows.domain`.

Enums map by member NAME (``BIZ_STEP_COMMISSIONING`` ↔ ``BizStep.COMMISSIONING``, ``UNIT_OF_MEASURE_KILOGRAMS`` ↔
``Unit.KILOGRAMS`` whose value is "KGM"). The tables are built once at import from the proto descriptors, so a
member added on one side only shows up in :attr:`EnumMap.proto_only` / :attr:`EnumMap.domain_only`, which the
tests require to be empty.

Conversions from the wire never raise: whatever a client sends (unknown enum numbers, timestamps out of range,
malformed identifiers) comes back as ``FieldViolation`` values named after the proto fields
(``event.batteries[3].scheme``), the same names :func:`services.flows.domain.events.event_violations` uses.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.errors import FieldViolation
from services.flows.domain.custody import BatteryState, CustodyState
from services.flows.domain.events import (
    DEFAULT_CLOCK_SKEW,
    BizStep,
    BizTransaction,
    CollectionMode,
    Disposition,
    ErrorDeclaration,
    ErrorReason,
    FlowEvent,
    HealthAssessment,
    HealthVerdict,
    Measurement,
    MeasurementType,
    Quantity,
    ScrapReason,
    Unit,
    _declaration_violations,  # one source of truth for the declaration checks (see declaration_from_proto)
    is_canonical_uuid,
)
from services.flows.domain.hits import Decision, RuleHit, Severity
from services.flows.domain.identity import BatteryId, IdentifierScheme, parse_urn, validate_battery_id
from services.flows.domain.public import PublicStatus, PublicView
from services.flows.domain.rules import Rule

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "BIZ_STEPS",
    "COLLECTION_MODES",
    "CUSTODY_STATES",
    "DECISIONS",
    "DISPOSITIONS",
    "ENUM_MAPS",
    "ERROR_REASONS",
    "HEALTH_VERDICTS",
    "IDENTIFIER_SCHEMES",
    "PUBLIC_STATUSES",
    "SEVERITIES",
    "UNITS",
    "EnumMap",
    "battery_ref_from_proto",
    "battery_ref_to_proto",
    "biz_step_from_proto",
    "biz_step_to_proto",
    "collection_mode_from_proto",
    "collection_mode_to_proto",
    "custody_state_from_proto",
    "custody_state_to_proto",
    "declaration_from_proto",
    "declaration_to_proto",
    "event_from_proto",
    "event_to_proto",
    "hit_to_proto",
    "hits_from_json",
    "hits_to_json",
    "public_view_to_proto",
    "rule_to_proto",
    "severity_to_proto",
    "state_to_proto",
    "stored_event_from_proto",
    "timestamp_from_proto",
    "timestamp_to_proto",
]

E = TypeVar("E", bound=StrEnum)
V = TypeVar("V", bound=int)


class EnumMap(Generic[E, V]):
    """One proto enum ↔ one domain enum, by name after the proto prefix.

    ``unspecified`` names the domain member that stands for the proto's ``*_UNSPECIFIED`` (0), for the domain
    enums that have a "none" member (``CustodyState.UNKNOWN``); otherwise 0 maps to nothing.
    """

    def __init__(self, proto: _EnumTypeWrapper[V], prefix: str, domain: type[E], *, unspecified: E | None = None):
        self.proto_name = proto.DESCRIPTOR.name
        self.prefix = prefix
        self.domain = domain
        self._from: dict[int, E] = {}
        self._to: dict[E, V] = {}
        missing: list[str] = []
        for described in proto.DESCRIPTOR.values:
            number = proto.Value(described.name)
            name = described.name.removeprefix(prefix)
            member = unspecified if name == "UNSPECIFIED" else domain.__members__.get(name)
            if member is None:
                if name != "UNSPECIFIED":
                    missing.append(described.name)
                continue
            self._from[number] = member
            self._to[member] = number
        self.proto_only: tuple[str, ...] = tuple(missing)
        """Proto value names with no domain member (the tests require none)."""
        self.domain_only: tuple[E, ...] = tuple(m for m in domain if m not in self._to)
        """Domain members with no proto value (the tests require none)."""

    def from_proto(self, number: int) -> E | None:
        """The domain member, or None for UNSPECIFIED (without an alias) and numbers the proto does not define."""
        return self._from.get(number)

    def to_proto(self, member: E) -> V:
        try:
            return self._to[member]
        except KeyError:
            raise ValueError(f"{self.domain.__name__}.{member.name} has no {self.proto_name} value") from None

    def problem(self, number: int) -> str:
        """The violation text for a number :meth:`from_proto` refused."""
        expected = ", ".join(m.name for m in self.domain if m in self._to)
        if number == 0:
            return f"required: one of {expected}"
        return f"unknown {self.proto_name} value {number}; expected one of {expected}"


BIZ_STEPS: Final = EnumMap(pb.BizStep, "BIZ_STEP_", BizStep)
COLLECTION_MODES: Final = EnumMap(pb.CollectionMode, "COLLECTION_MODE_", CollectionMode)
DISPOSITIONS: Final = EnumMap(pb.Disposition, "DISPOSITION_", Disposition)
UNITS: Final = EnumMap(pb.UnitOfMeasure, "UNIT_OF_MEASURE_", Unit)
HEALTH_VERDICTS: Final = EnumMap(pb.HealthVerdict, "HEALTH_VERDICT_", HealthVerdict)
ERROR_REASONS: Final = EnumMap(pb.ErrorReason, "ERROR_REASON_", ErrorReason)
IDENTIFIER_SCHEMES: Final = EnumMap(pb.IdentifierScheme, "IDENTIFIER_SCHEME_", IdentifierScheme)
SEVERITIES: Final = EnumMap(pb.Severity, "SEVERITY_", Severity)
# CustodyState.UNKNOWN is "no effective events yet": the proto's UNSPECIFIED.
CUSTODY_STATES: Final = EnumMap(pb.CustodyState, "CUSTODY_STATE_", CustodyState, unspecified=CustodyState.UNKNOWN)
# Decision.ACCEPT means "no hit"; no rule carries it and the proto has no RULE_DECISION_ACCEPT, so it is the
# proto's UNSPECIFIED (the only alias besides UNKNOWN above).
DECISIONS: Final = EnumMap(pb.RuleDecision, "RULE_DECISION_", Decision, unspecified=Decision.ACCEPT)
PUBLIC_STATUSES: Final = EnumMap(pb.PublicBatteryStatus, "PUBLIC_BATTERY_STATUS_", PublicStatus)

ENUM_MAPS: Final[tuple[EnumMap[Any, Any], ...]] = (
    BIZ_STEPS,
    COLLECTION_MODES,
    DISPOSITIONS,
    UNITS,
    HEALTH_VERDICTS,
    ERROR_REASONS,
    IDENTIFIER_SCHEMES,
    SEVERITIES,
    CUSTODY_STATES,
    DECISIONS,
    PUBLIC_STATUSES,
)
"""Every enum pair, for the exhaustiveness tests."""


def biz_step_from_proto(value: int) -> BizStep | None:
    return BIZ_STEPS.from_proto(value)


def biz_step_to_proto(step: BizStep) -> pb.BizStep.ValueType:
    return BIZ_STEPS.to_proto(step)


def collection_mode_from_proto(value: int) -> CollectionMode | None:
    return COLLECTION_MODES.from_proto(value)


def collection_mode_to_proto(mode: CollectionMode | None) -> pb.CollectionMode.ValueType:
    return COLLECTION_MODES.to_proto(mode) if mode is not None else pb.COLLECTION_MODE_UNSPECIFIED


def custody_state_from_proto(value: int) -> CustodyState | None:
    return CUSTODY_STATES.from_proto(value)


def custody_state_to_proto(state: CustodyState) -> pb.CustodyState.ValueType:
    return CUSTODY_STATES.to_proto(state)


def severity_to_proto(severity: Severity) -> pb.Severity.ValueType:
    return SEVERITIES.to_proto(severity)


# ---- timestamps -----------------------------------------------------------------------------------


def timestamp_to_proto(moment: dt.datetime | None) -> Timestamp | None:
    """An aware datetime (a naive one is taken as UTC) → Timestamp; None stays None (the field stays unset)."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC))
    return stamp


def timestamp_from_proto(stamp: Timestamp, field: str) -> tuple[dt.datetime | None, list[FieldViolation]]:
    """Timestamp → aware UTC datetime (nanoseconds truncated to microseconds), or a violation when it lies
    outside 0001-01-01..9999-12-31 or its nanos outside [0, 10^9) (garbage from a client must not raise)."""
    try:
        return stamp.ToDatetime(tzinfo=dt.UTC), []
    except (ValueError, OverflowError) as error:
        return None, [FieldViolation(field, f"not a valid timestamp: {error}")]


def _date_to_proto(day: dt.date | None) -> Timestamp | None:
    # a date travels as midnight UTC, so the UTC date of the Timestamp gives it back
    return None if day is None else timestamp_to_proto(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC))


# ---- identity -------------------------------------------------------------------------------------


def battery_ref_to_proto(b: BatteryId) -> pb.BatteryRef:
    return pb.BatteryRef(scheme=IDENTIFIER_SCHEMES.to_proto(b.scheme), namespace=b.namespace, value=b.value)


def battery_ref_from_proto(ref: pb.BatteryRef, field: str) -> tuple[BatteryId | None, list[FieldViolation]]:
    """The normalised :class:`BatteryId`, or violations: ``<field>.scheme`` for an unspecified or unknown scheme,
    ``<field>`` with ``"<reason>: <message>"`` for each failed identity check (as ``battery_id_violations``)."""
    scheme = IDENTIFIER_SCHEMES.from_proto(ref.scheme)
    if scheme is None:
        return None, [FieldViolation(f"{field}.scheme", IDENTIFIER_SCHEMES.problem(ref.scheme))]
    result = validate_battery_id(scheme, ref.namespace, ref.value)
    if not result.valid:
        return None, [FieldViolation(field, f"{v.reason.value}: {v.message}") for v in result.violations]
    return result.battery_id, []


# ---- flow events ----------------------------------------------------------------------------------


def _quantities_from_proto(
    items: Iterable[pb.QuantityElement], field: str, found: list[FieldViolation]
) -> tuple[Quantity, ...]:
    converted: list[Quantity] = []
    for i, item in enumerate(items):
        unit = UNITS.from_proto(item.unit)
        if unit is None:
            found.append(FieldViolation(f"{field}[{i}].unit", UNITS.problem(item.unit)))
            continue
        converted.append(Quantity(product_class=item.product_class, amount=item.quantity, unit=unit))
    return tuple(converted)


def _quantity_to_proto(quantity: Quantity) -> pb.QuantityElement:
    return pb.QuantityElement(
        product_class=quantity.product_class, quantity=quantity.amount, unit=UNITS.to_proto(quantity.unit)
    )


def _assessment_from_proto(message: pb.HealthAssessment, found: list[FieldViolation]) -> HealthAssessment | None:
    field = "event.health_assessment"
    before = len(found)
    verdict = HEALTH_VERDICTS.from_proto(message.verdict)
    if verdict is None:
        found.append(FieldViolation(f"{field}.verdict", HEALTH_VERDICTS.problem(message.verdict)))
    measurements: list[Measurement] = []
    for i, m in enumerate(message.measurements):
        kind = MeasurementType.__members__.get(m.measurement_type)
        if kind is None:
            expected = ", ".join(MeasurementType.__members__)
            found.append(
                FieldViolation(
                    f"{field}.measurements[{i}].measurement_type",
                    f"unknown measurement type {m.measurement_type!r}; expected one of {expected}",
                )
            )
            continue
        measurements.append(Measurement(measurement_type=kind, value=m.value))
    reasons: list[ScrapReason] = []
    for i, text in enumerate(message.reasons):
        reason = ScrapReason.__members__.get(text)
        if reason is None:
            expected = ", ".join(ScrapReason.__members__)
            found.append(
                FieldViolation(f"{field}.reasons[{i}]", f"unknown scrap reason {text!r}; expected one of {expected}")
            )
            continue
        reasons.append(reason)
    if verdict is None or len(found) > before:
        return None
    return HealthAssessment(verdict=verdict, measurements=tuple(measurements), reasons=tuple(reasons))


def _assessment_to_proto(assessment: HealthAssessment) -> pb.HealthAssessment:
    return pb.HealthAssessment(
        measurements=[
            pb.Measurement(measurement_type=m.measurement_type.name, value=m.value) for m in assessment.measurements
        ],
        verdict=HEALTH_VERDICTS.to_proto(assessment.verdict),
        reasons=[reason.name for reason in assessment.reasons],
    )


def event_from_proto(
    message: pb.FlowEvent, *, reporter_id: str, record_time: dt.datetime | None = None, trusted: bool = False
) -> tuple[FlowEvent | None, list[FieldViolation]]:
    """A client's event → the domain event, or (None, every conversion problem).

    The output-only fields (event_hash, record_time, reporter_id, error_declaration, outcome, rule_hits,
    county_code) are ignored: the reporter is the authenticated caller and ``record_time`` the server's clock.
    Only what cannot be represented in the domain is reported here; the caller runs ``event_violations`` next.

    ``trusted`` is for events read back from the store: the capture validated and normalised their battery
    references, so they are taken as they are instead of running the identity checks again (the costliest
    part of the conversion). The result is the same for any stored event.
    """
    found: list[FieldViolation] = []

    biz_step = BIZ_STEPS.from_proto(message.biz_step)
    if biz_step is None:
        found.append(FieldViolation("event.biz_step", BIZ_STEPS.problem(message.biz_step)))

    event_time: dt.datetime | None = None
    if not message.HasField("event_time"):
        found.append(FieldViolation("event.event_time", "required"))
    else:
        event_time, problems = timestamp_from_proto(message.event_time, "event.event_time")
        found += problems

    production_date: dt.date | None = None
    if message.HasField("production_date"):
        produced, problems = timestamp_from_proto(message.production_date, "event.production_date")
        found += problems
        production_date = produced.date() if produced is not None else None

    # 0 is "not given" for these optional enums; only numbers the proto does not define are refused
    collection_mode: CollectionMode | None = None
    if message.collection_mode != pb.COLLECTION_MODE_UNSPECIFIED:
        collection_mode = COLLECTION_MODES.from_proto(message.collection_mode)
        if collection_mode is None:
            found.append(FieldViolation("event.collection_mode", COLLECTION_MODES.problem(message.collection_mode)))
    disposition: Disposition | None = None
    if message.disposition != pb.DISPOSITION_UNSPECIFIED:
        disposition = DISPOSITIONS.from_proto(message.disposition)
        if disposition is None:
            found.append(FieldViolation("event.disposition", DISPOSITIONS.problem(message.disposition)))

    batteries: list[BatteryId] = []
    for i, ref in enumerate(message.batteries):
        scheme = IDENTIFIER_SCHEMES.from_proto(ref.scheme) if trusted else None
        if scheme is not None:
            batteries.append(BatteryId(scheme, ref.namespace, ref.value))
            continue
        battery, problems = battery_ref_from_proto(ref, f"event.batteries[{i}]")
        found += problems
        if battery is not None:
            batteries.append(battery)

    quantities = _quantities_from_proto(message.quantities, "event.quantities", found)
    outputs = _quantities_from_proto(message.outputs, "event.outputs", found)
    assessment = (
        _assessment_from_proto(message.health_assessment, found) if message.HasField("health_assessment") else None
    )

    if found or biz_step is None or event_time is None:
        return None, found
    return (
        FlowEvent(
            event_id=message.event_id,
            event_time=event_time,
            event_time_zone_offset=message.event_time_zone_offset,
            biz_step=biz_step,
            reporter_id=reporter_id,
            facility_id=message.facility_id,
            batteries=tuple(batteries),
            quantities=quantities,
            outputs=outputs,
            disposition=disposition,
            collection_mode=collection_mode,
            source_facility_id=message.source_facility_id,
            source_owner_id=message.source_owner_id,
            destination_facility_id=message.destination_facility_id,
            destination_owner_id=message.destination_owner_id,
            business_transactions=tuple(
                BizTransaction(transaction_type=t.transaction_type, transaction_id=t.transaction_id)
                for t in message.business_transactions
            ),
            health_assessment=assessment,
            model_id=message.model_id,
            production_date=production_date,
            record_time=record_time,
        ),
        [],
    )


def stored_event_from_proto(message: pb.FlowEvent) -> FlowEvent:
    """A stored event message (as the capture wrote it, output-only fields included) → the domain event, with
    its stored reporter and record time. The capture validated it, so conversion cannot fail."""
    record_time = message.record_time.ToDatetime(tzinfo=dt.UTC) if message.HasField("record_time") else None
    event, problems = event_from_proto(message, reporter_id=message.reporter_id, record_time=record_time, trusted=True)
    if event is None:  # pragma: no cover - the capture stored only convertible events
        raise ValueError(f"stored event {message.event_id} no longer converts: {problems}")
    return event


def event_to_proto(
    event: FlowEvent,
    *,
    event_hash: str = "",
    outcome: int = 0,
    hits: Sequence[RuleHit] = (),
    county_code: str = "",
) -> pb.FlowEvent:
    """The domain event → the proto, output-only fields included (``outcome`` is a ``pb.EventOutcome`` number)."""
    return pb.FlowEvent(
        event_id=event.event_id,
        event_hash=event_hash,
        event_time=timestamp_to_proto(event.event_time),
        event_time_zone_offset=event.event_time_zone_offset,
        record_time=timestamp_to_proto(event.record_time),
        biz_step=BIZ_STEPS.to_proto(event.biz_step),
        collection_mode=collection_mode_to_proto(event.collection_mode),
        batteries=[battery_ref_to_proto(b) for b in event.batteries],
        quantities=[_quantity_to_proto(q) for q in event.quantities],
        facility_id=event.facility_id,
        source_facility_id=event.source_facility_id,
        destination_facility_id=event.destination_facility_id,
        business_transactions=[
            pb.BusinessTransaction(transaction_type=t.transaction_type, transaction_id=t.transaction_id)
            for t in event.business_transactions
        ],
        health_assessment=_assessment_to_proto(event.health_assessment)
        if event.health_assessment is not None
        else None,
        reporter_id=event.reporter_id,
        model_id=event.model_id,
        production_date=_date_to_proto(event.production_date),
        disposition=(
            DISPOSITIONS.to_proto(event.disposition) if event.disposition is not None else pb.DISPOSITION_UNSPECIFIED
        ),
        outputs=[_quantity_to_proto(q) for q in event.outputs],
        source_owner_id=event.source_owner_id,
        destination_owner_id=event.destination_owner_id,
        error_declaration=declaration_to_proto(event.error_declaration)
        if event.error_declaration is not None
        else None,
        outcome=pb.EventOutcome.ValueType(outcome),
        rule_hits=[hit_to_proto(hit) for hit in hits],
        county_code=county_code,
    )


# ---- error declarations ---------------------------------------------------------------------------


def declaration_to_proto(declaration: ErrorDeclaration) -> pb.ErrorDeclaration:
    return pb.ErrorDeclaration(
        declaration_time=timestamp_to_proto(declaration.declaration_time),
        reason=ERROR_REASONS.to_proto(declaration.reason),
        corrective_event_ids=list(declaration.corrective_event_ids),
        explanation=declaration.explanation,
        declared_by=declaration.declared_by,
    )


_DECLARATION_PATH: Final = "event.error_declaration."


def declaration_from_proto(
    request: pb.DeclareErrorRequest, *, declared_by: str, now: dt.datetime
) -> tuple[ErrorDeclaration | None, list[FieldViolation]]:
    """The declaration a caller asks for, made at ``now`` by ``declared_by``, or (None, violations) named after
    the request's fields (``event_id``, ``reason``, ``corrective_event_ids[i]``, ``explanation``).

    The checks are the domain's own declaration checks (the ones ``event_violations`` runs on
    ``event.error_declaration``), renamed to the request's paths, so both entry points agree.
    """
    found: list[FieldViolation] = []
    if not is_canonical_uuid(request.event_id):
        found.append(FieldViolation("event_id", "required: a UUID in canonical lower-case form"))
    reason = ERROR_REASONS.from_proto(request.reason)
    if reason is None:
        found.append(FieldViolation("reason", ERROR_REASONS.problem(request.reason)))
    declaration = ErrorDeclaration(
        declaration_time=now,
        # a stand-in without reason-specific checks, so the other fields are still reported
        reason=reason or ErrorReason.DID_NOT_OCCUR,
        corrective_event_ids=tuple(request.corrective_event_ids),
        explanation=request.explanation,
        declared_by=declared_by,
    )
    found += [
        FieldViolation(v.field.removeprefix(_DECLARATION_PATH), v.description)
        for v in _declaration_violations(request.event_id, declaration, now, DEFAULT_CLOCK_SKEW)
    ]
    if found:
        return None, found
    return declaration, []


# ---- rule hits, rules and states ------------------------------------------------------------------


def hit_to_proto(hit: RuleHit) -> pb.RuleHit:
    """The proto ``RuleHit`` has no decision; it is the rule's (``ListRules``) and kept in :func:`hits_to_json`."""
    return pb.RuleHit(
        rule_id=hit.rule_id,
        severity=SEVERITIES.to_proto(hit.severity),
        message=hit.message,
        battery=battery_ref_to_proto(hit.battery) if hit.battery is not None else None,
    )


def hits_to_json(hits: Sequence[RuleHit]) -> str:
    """A compact JSON list for storage; the battery as its URN (or null for a hit on the whole event)."""
    return json.dumps(
        [
            {
                "rule_id": hit.rule_id,
                "severity": hit.severity.value,
                "decision": hit.decision.value,
                "message": hit.message,
                "battery": hit.battery.urn if hit.battery is not None else None,
            }
            for hit in hits
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def hits_from_json(text: str) -> list[RuleHit]:
    """The inverse of :func:`hits_to_json`; an empty string reads as no hits. Raises ValueError for anything
    else that is not such a list (stored data, so a bad value is a bug to surface, not a client error)."""
    if text == "[]" or not text.strip():  # "[]": what most events store
        return []
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError(f"rule hits are stored as a JSON list, got {type(items).__name__}")
    hits: list[RuleHit] = []
    for item in items:
        try:
            battery = item["battery"]
            hits.append(
                RuleHit(
                    rule_id=str(item["rule_id"]),
                    severity=Severity(item["severity"]),
                    decision=Decision(item["decision"]),
                    message=str(item["message"]),
                    battery=parse_urn(battery) if battery is not None else None,
                )
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a stored rule hit: {item!r}") from error
    return hits


def rule_to_proto(rule: Rule) -> pb.RuleDescription:
    return pb.RuleDescription(
        rule_id=rule.rule_id,
        title=rule.title,
        severity=SEVERITIES.to_proto(rule.severity),
        decision=DECISIONS.to_proto(rule.decision),
        rationale=rule.rationale,
    )


def state_to_proto(state: BatteryState) -> pb.BatteryState:
    """``state`` is what the platform reports (QUARANTINED while a cause is open), ``phase`` where the battery is
    by its events. A rule quarantining a battery from several events is listed once."""
    return pb.BatteryState(
        battery=battery_ref_to_proto(state.battery),
        state=CUSTODY_STATES.to_proto(state.state),
        holder_id=state.holder_id,
        holder_facility_id=state.holder_facility_id,
        waste=state.waste,
        model_id=state.model_id,
        producer_id=state.producer_id,
        last_event_time=timestamp_to_proto(state.last_event_time),
        phase=CUSTODY_STATES.to_proto(state.phase),
        quarantine_rule_ids=list(dict.fromkeys(cause.rule_id for cause in state.quarantine)),
        reached_compliant_channel=state.reached_recycler,
    )


def public_view_to_proto(view: PublicView) -> pb.GetBatteryStatusResponse:
    """The public answer; only these five fields exist on the message, so nothing else can leak through it."""
    response = pb.GetBatteryStatusResponse(
        status=PUBLIC_STATUSES.to_proto(view.status),
        known=view.known,
        in_compliant_channel=view.in_compliant_channel,
        region_code=view.region_code,
    )
    if view.last_updated_on is not None:
        day = view.last_updated_on
        response.last_updated_on.CopyFrom(date_pb2.Date(year=day.year, month=day.month, day=day.day))
    return response
