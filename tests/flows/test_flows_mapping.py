"""Conversions between the flows protos and the flows domain (``services.flows.mapping``): exhaustive enum pairs,
event round trips for every business step, one field path per conversion problem, and no exception on garbage."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.errors import FieldViolation
from services.flows import mapping
from services.flows.domain.custody import BatteryState, CustodyState, QuarantineCause
from services.flows.domain.events import (
    MAX_TEXT,
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
)
from services.flows.domain.hits import Decision, RuleHit, Severity
from services.flows.domain.identity import BatteryId, IdentifierScheme, issue_platform_code, parse_battery_id
from services.flows.domain.public import PublicStatus
from services.flows.domain.rules import RULES, Rule
from services.registry.domain.credit_code import make_credit_code

# ---------------------------------------------------------------------------------------------
# Fixtures: one battery of each scheme (built as in test_flows_domain.py) and a rich event

CN = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=CN)
RECORDED = dt.datetime(2025, 3, 1, 1, 5, tzinfo=dt.UTC)
C_PRODUCER = make_credit_code("320100", seed="producer")
B_MFR = parse_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "SN-0001")
B_GBT = parse_battery_id(IdentifierScheme.GBT34014, "", "03UPE01000011C85A00FTY45")
B_PLATFORM = issue_platform_code("32", rng=random.Random(1))
BATTERIES = (B_MFR, B_GBT, B_PLATFORM)
EVENT_ID = "0b7a5f3e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
OTHER_ID = "1c8b6a4f-2d3e-4f60-9bac-1d2e3f4a5b6c"

ASSESSMENT = HealthAssessment(
    verdict=HealthVerdict.RECOMMEND_SCRAP,
    measurements=(
        Measurement(MeasurementType.SOH_PCT, 43.5),
        Measurement(MeasurementType.INTERNAL_RESISTANCE_OHM, 0.62),
        Measurement(MeasurementType.TEMPERATURE_C, -12.25),
    ),
    reasons=(ScrapReason.IR_OVER_0_5_OHM, ScrapReason.CAPACITY_FADE_OVER_50PCT),
)


def rich_event(step: BizStep, offset: str = "+08:00", **fields: Any) -> FlowEvent:
    """Every field set (the mapping does not judge which fields a step may carry; event_violations does)."""
    event = FlowEvent(
        event_id=EVENT_ID,
        event_time=T0,
        event_time_zone_offset=offset,
        biz_step=step,
        reporter_id="p-outlet",
        facility_id="f-outlet",
        batteries=BATTERIES,
        quantities=(Quantity("model-48v", 3.0, Unit.PIECES), Quantity("unknown-packs", 41.75, Unit.KILOGRAMS)),
        outputs=(Quantity("black_mass", 12.5, Unit.KILOGRAMS),),
        disposition=Disposition.WASTE,
        collection_mode=CollectionMode.DOOR_TO_DOOR,
        source_facility_id="f-outlet",
        source_owner_id="p-owner-a",
        destination_facility_id="f-sort",
        destination_owner_id="p-owner-b",
        business_transactions=(
            BizTransaction("TRANSFER_MANIFEST", "TM-2025-0001"),
            BizTransaction("PICKUP_ORDER", "订单-42"),
        ),
        health_assessment=ASSESSMENT,
        model_id="m-48v-20ah",
        production_date=dt.date(2025, 2, 28),
        record_time=RECORDED,
    )
    return dataclasses.replace(event, **fields)


def minimal_event(step: BizStep = BizStep.COLLECTING) -> FlowEvent:
    return FlowEvent(
        event_id=EVENT_ID,
        event_time=T0,
        event_time_zone_offset="+08:00",
        biz_step=step,
        reporter_id="p-outlet",
        facility_id="f-outlet",
    )


def round_trip(event: FlowEvent) -> FlowEvent | None:
    converted, problems = mapping.event_from_proto(
        mapping.event_to_proto(event), reporter_id=event.reporter_id, record_time=event.record_time
    )
    assert problems == []
    return converted


def fields_of(problems: list[FieldViolation]) -> list[str]:
    return [p.field for p in problems]


# ---------------------------------------------------------------------------------------------
# Enums: exhaustive in both directions, by name


ProtoEnum = Any  # a generated EnumTypeWrapper (each has its own ValueType)

ENUM_PAIRS: list[tuple[ProtoEnum, str, type[StrEnum], dict[str, str]]] = [
    (pb.BizStep, "BIZ_STEP_", BizStep, {}),
    (pb.CollectionMode, "COLLECTION_MODE_", CollectionMode, {}),
    (pb.Disposition, "DISPOSITION_", Disposition, {}),
    (pb.UnitOfMeasure, "UNIT_OF_MEASURE_", Unit, {}),
    (pb.HealthVerdict, "HEALTH_VERDICT_", HealthVerdict, {}),
    (pb.ErrorReason, "ERROR_REASON_", ErrorReason, {}),
    (pb.IdentifierScheme, "IDENTIFIER_SCHEME_", IdentifierScheme, {}),
    (pb.Severity, "SEVERITY_", Severity, {}),
    # the two documented aliases of UNSPECIFIED
    (pb.CustodyState, "CUSTODY_STATE_", CustodyState, {"UNSPECIFIED": "UNKNOWN"}),
    (pb.RuleDecision, "RULE_DECISION_", Decision, {"UNSPECIFIED": "ACCEPT"}),
    (pb.PublicBatteryStatus, "PUBLIC_BATTERY_STATUS_", PublicStatus, {}),
]
PAIR_IDS = [domain.__name__ for _, _, domain, _ in ENUM_PAIRS]


def enum_map(domain: type[StrEnum]) -> mapping.EnumMap[Any, Any]:
    return next(m for m in mapping.ENUM_MAPS if m.domain is domain)


def test_every_enum_pair_is_covered() -> None:
    assert {m.domain for m in mapping.ENUM_MAPS} == {domain for _, _, domain, _ in ENUM_PAIRS}


@pytest.mark.parametrize(("proto", "prefix", "domain", "aliases"), ENUM_PAIRS, ids=PAIR_IDS)
def test_every_proto_value_maps_to_a_domain_member(
    proto: ProtoEnum, prefix: str, domain: type[StrEnum], aliases: dict[str, str]
) -> None:
    pairs = enum_map(domain)
    for described in proto.DESCRIPTOR.values:
        name = described.name.removeprefix(prefix)
        expected = aliases.get(name, name)
        if name == "UNSPECIFIED" and name not in aliases:
            assert pairs.from_proto(described.number) is None
            continue
        assert expected in domain.__members__, f"{described.name} has no {domain.__name__} member"
        assert pairs.from_proto(described.number) is domain[expected]
    assert pairs.proto_only == ()


@pytest.mark.parametrize(("proto", "prefix", "domain", "aliases"), ENUM_PAIRS, ids=PAIR_IDS)
def test_every_domain_member_maps_to_a_proto_value(
    proto: ProtoEnum, prefix: str, domain: type[StrEnum], aliases: dict[str, str]
) -> None:
    pairs = enum_map(domain)
    proto_name = {member: proto_side for proto_side, member in aliases.items()}
    for member in domain:
        name = proto_name.get(member.name, member.name)
        assert prefix + name in proto.DESCRIPTOR.values_by_name, (
            f"{domain.__name__}.{member.name} has no {prefix}{name}"
        )
        assert pairs.to_proto(member) == proto.Value(prefix + name)
    assert pairs.domain_only == ()


def test_a_member_on_one_side_only_is_caught() -> None:
    class Fewer(StrEnum):
        PIECES = "PCE"

    class More(StrEnum):
        PIECES = "PCE"
        KILOGRAMS = "KGM"
        TONNES = "TNE"

    fewer = mapping.EnumMap(pb.UnitOfMeasure, "UNIT_OF_MEASURE_", Fewer)
    assert fewer.proto_only == ("UNIT_OF_MEASURE_KILOGRAMS",)
    assert fewer.from_proto(pb.UNIT_OF_MEASURE_KILOGRAMS) is None
    more = mapping.EnumMap(pb.UnitOfMeasure, "UNIT_OF_MEASURE_", More)
    assert more.domain_only == (More.TONNES,)
    with pytest.raises(ValueError, match="TONNES"):
        more.to_proto(More.TONNES)


def test_unknown_numbers_map_to_nothing() -> None:
    for pairs in mapping.ENUM_MAPS:
        assert pairs.from_proto(999) is None
        assert pairs.from_proto(-1) is None
        assert "999" in pairs.problem(999)
        assert pairs.problem(0).startswith("required")


def test_named_enum_functions() -> None:
    for step in BizStep:
        assert mapping.biz_step_from_proto(mapping.biz_step_to_proto(step)) is step
        assert pb.BizStep.Name(mapping.biz_step_to_proto(step)) == f"BIZ_STEP_{step.name}"
    for mode in CollectionMode:
        assert mapping.collection_mode_from_proto(mapping.collection_mode_to_proto(mode)) is mode
    for state in CustodyState:
        assert mapping.custody_state_from_proto(mapping.custody_state_to_proto(state)) is state
    for severity in Severity:
        assert pb.Severity.Name(mapping.severity_to_proto(severity)) == f"SEVERITY_{severity.name}"
    assert mapping.biz_step_from_proto(pb.BIZ_STEP_UNSPECIFIED) is None
    assert mapping.collection_mode_from_proto(pb.COLLECTION_MODE_UNSPECIFIED) is None
    assert mapping.collection_mode_to_proto(None) == pb.COLLECTION_MODE_UNSPECIFIED
    assert mapping.custody_state_to_proto(CustodyState.UNKNOWN) == pb.CUSTODY_STATE_UNSPECIFIED
    assert mapping.custody_state_from_proto(pb.CUSTODY_STATE_UNSPECIFIED) is CustodyState.UNKNOWN


def test_units_map_by_name_not_by_rec20_code() -> None:
    assert mapping.UNITS.to_proto(Unit.KILOGRAMS) == pb.UNIT_OF_MEASURE_KILOGRAMS
    assert mapping.UNITS.from_proto(pb.UNIT_OF_MEASURE_PIECES) is Unit.PIECES
    assert Unit.KILOGRAMS.value == "KGM"


# ---------------------------------------------------------------------------------------------
# Flow events: round trips


@pytest.mark.parametrize("offset", ["+08:00", "-05:30", "+00:00", "+14:00"])
@pytest.mark.parametrize("step", list(BizStep))
def test_rich_event_round_trips_for_every_step(step: BizStep, offset: str) -> None:
    event = rich_event(step, offset)
    assert round_trip(event) == event


@pytest.mark.parametrize("step", list(BizStep))
def test_minimal_event_round_trips_with_defaults(step: BizStep) -> None:
    event = minimal_event(step)
    converted = round_trip(event)
    assert converted == event
    assert converted is not None
    assert converted.disposition is None
    assert converted.collection_mode is None
    assert converted.health_assessment is None
    assert converted.production_date is None
    assert converted.record_time is None
    assert converted.source_facility_id == converted.model_id == ""


@pytest.mark.parametrize("verdict", list(HealthVerdict))
def test_health_assessment_round_trips(verdict: HealthVerdict) -> None:
    assessments = [HealthAssessment(verdict)] + [
        HealthAssessment(verdict, (Measurement(kind, 1.0),), tuple(ScrapReason)) for kind in MeasurementType
    ]
    for assessment in assessments:
        event = rich_event(BizStep.HEALTH_ASSESSING, health_assessment=assessment)
        assert round_trip(event) == event


def test_round_trip_drops_only_the_error_declaration() -> None:
    declaration = ErrorDeclaration(T0, ErrorReason.INCORRECT_DATA, (OTHER_ID,), "wrong weight", "p-outlet")
    event = rich_event(BizStep.SHIPPING, error_declaration=declaration)
    assert round_trip(event) == dataclasses.replace(event, error_declaration=None)


def test_event_time_comes_back_as_aware_utc() -> None:
    converted = round_trip(rich_event(BizStep.COLLECTING))
    assert converted is not None
    assert converted.event_time.utcoffset() == dt.timedelta(0)
    assert converted.event_time == T0
    assert converted.event_time.microsecond == T0.microsecond
    assert converted.local_event_time.utcoffset() == dt.timedelta(hours=8)


def test_event_to_proto_fills_the_output_only_fields() -> None:
    declaration = ErrorDeclaration(T0, ErrorReason.INCORRECT_DATA, (OTHER_ID,), "wrong weight", "p-regulator")
    event = rich_event(BizStep.RECEIVING, error_declaration=declaration)
    hits = [RuleHit("FLOW-005-ORPHAN-RECEIPT", Severity.HIGH, Decision.QUARANTINE, "no shipment", B_GBT)]
    message = mapping.event_to_proto(
        event,
        event_hash="ni:///sha-256;ab?ver=CBV2.0",
        outcome=pb.EVENT_OUTCOME_QUARANTINED,
        hits=hits,
        county_code="320104",
    )
    assert message.event_hash == "ni:///sha-256;ab?ver=CBV2.0"
    assert message.outcome == pb.EVENT_OUTCOME_QUARANTINED
    assert message.county_code == "320104"
    assert message.reporter_id == "p-outlet"
    assert message.record_time.ToDatetime(tzinfo=dt.UTC) == RECORDED
    assert [h.rule_id for h in message.rule_hits] == ["FLOW-005-ORPHAN-RECEIPT"]
    assert message.rule_hits[0].battery == mapping.battery_ref_to_proto(B_GBT)
    assert message.error_declaration.reason == pb.ERROR_REASON_INCORRECT_DATA
    assert list(message.error_declaration.corrective_event_ids) == [OTHER_ID]
    assert message.error_declaration.declared_by == "p-regulator"
    assert message.error_declaration.explanation == "wrong weight"
    assert message.error_declaration.declaration_time.ToDatetime(tzinfo=dt.UTC) == T0
    assert message.biz_step == pb.BIZ_STEP_RECEIVING
    assert message.disposition == pb.DISPOSITION_WASTE
    assert message.collection_mode == pb.COLLECTION_MODE_DOOR_TO_DOOR
    assert [q.unit for q in message.quantities] == [pb.UNIT_OF_MEASURE_PIECES, pb.UNIT_OF_MEASURE_KILOGRAMS]
    assert message.health_assessment.measurements[0].measurement_type == "SOH_PCT"
    assert list(message.health_assessment.reasons) == ["IR_OVER_0_5_OHM", "CAPACITY_FADE_OVER_50PCT"]


def test_minimal_event_to_proto_leaves_optional_messages_unset() -> None:
    message = mapping.event_to_proto(minimal_event())
    for field in ("record_time", "health_assessment", "production_date", "error_declaration"):
        assert not message.HasField(field), field
    assert message.outcome == pb.EVENT_OUTCOME_UNSPECIFIED
    assert message.disposition == pb.DISPOSITION_UNSPECIFIED


def test_event_from_proto_ignores_output_only_fields() -> None:
    event = rich_event(BizStep.SHIPPING, record_time=None)
    message = mapping.event_to_proto(
        event,
        event_hash="ni:///sha-256;forged",
        outcome=pb.EVENT_OUTCOME_ACCEPTED,
        hits=[RuleHit("FLOW-001", Severity.CRITICAL, Decision.REJECT, "forged")],
        county_code="110101",
    )
    message.reporter_id = "p-someone-else"
    message.record_time.FromDatetime(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    message.error_declaration.reason = pb.ERROR_REASON_DID_NOT_OCCUR
    now = dt.datetime(2025, 3, 2, tzinfo=dt.UTC)
    converted, problems = mapping.event_from_proto(message, reporter_id="p-caller", record_time=now)
    assert problems == []
    assert converted == dataclasses.replace(event, reporter_id="p-caller", record_time=now)


def test_production_date_is_the_utc_date_of_the_timestamp() -> None:
    message = mapping.event_to_proto(minimal_event(BizStep.COMMISSIONING))
    message.production_date.FromDatetime(dt.datetime(2025, 2, 28, 23, 30, tzinfo=dt.UTC))
    converted, problems = mapping.event_from_proto(message, reporter_id="p-producer")
    assert problems == []
    assert converted is not None
    assert converted.production_date == dt.date(2025, 2, 28)
    assert mapping.event_to_proto(converted).production_date.ToDatetime(tzinfo=dt.UTC) == dt.datetime(
        2025, 2, 28, tzinfo=dt.UTC
    )


def test_batteries_are_normalised_on_the_way_in() -> None:
    message = mapping.event_to_proto(minimal_event())
    message.batteries.add(
        scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL,
        namespace=C_PRODUCER.lower(),
        value=" \uff53\uff4e-0001 ",  # full-width, as typed with a Chinese IME
    )
    message.batteries.add(scheme=pb.IDENTIFIER_SCHEME_PLATFORM, value=B_PLATFORM.value.lower())
    converted, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert problems == []
    assert converted is not None
    assert converted.batteries == (B_MFR, B_PLATFORM)


# ---------------------------------------------------------------------------------------------
# Flow events: conversion problems, one field path each

Mutate = Callable[[pb.FlowEvent], None]


def _set(path: str, value: object) -> Mutate:
    """A mutator setting a (dotted, indexed) field: "batteries[1].scheme"."""

    def mutate(message: pb.FlowEvent) -> None:
        target: Any = message
        *parents, leaf = path.split(".")
        for part in parents:
            name, _, index = part.partition("[")
            target = getattr(target, name)
            if index:
                target = target[int(index.rstrip("]"))]
        setattr(target, leaf, value)

    return mutate


def _clear(field: str) -> Mutate:
    def mutate(message: pb.FlowEvent) -> None:
        message.ClearField(field)  # type: ignore[arg-type]

    return mutate


def _append_measurement(message: pb.FlowEvent) -> None:
    message.health_assessment.measurements.add(measurement_type="soh_pct", value=50.0)


VIOLATIONS: list[tuple[str, Mutate, str]] = [
    ("biz step unspecified", _set("biz_step", 0), "event.biz_step"),
    ("biz step unknown", _set("biz_step", 99), "event.biz_step"),
    ("collection mode unknown", _set("collection_mode", 42), "event.collection_mode"),
    ("disposition unknown", _set("disposition", 16), "event.disposition"),
    ("scheme unspecified", _set("batteries[1].scheme", 0), "event.batteries[1].scheme"),
    ("scheme unknown", _set("batteries[2].scheme", 7), "event.batteries[2].scheme"),
    ("GB/T 34014 too short", _set("batteries[1].value", "03UPE01000011C85A00FTY4"), "event.batteries[1]"),
    ("GB/T 34014 bad product type", _set("batteries[1].value", "03UXE01000011C85A00FTY45"), "event.batteries[1]"),
    ("serial without namespace", _set("batteries[0].namespace", ""), "event.batteries[0]"),
    ("serial with a bad credit code", _set("batteries[0].namespace", "91320100MA1XXXXXXX"), "event.batteries[0]"),
    ("platform check character", _set("batteries[2].value", B_PLATFORM.value[:-1] + "0"), "event.batteries[2]"),
    ("quantity unit unspecified", _set("quantities[0].unit", 0), "event.quantities[0].unit"),
    ("quantity unit unknown", _set("quantities[1].unit", 3), "event.quantities[1].unit"),
    ("output unit unknown", _set("outputs[0].unit", 77), "event.outputs[0].unit"),
    ("verdict unspecified", _set("health_assessment.verdict", 0), "event.health_assessment.verdict"),
    ("verdict unknown", _set("health_assessment.verdict", 9), "event.health_assessment.verdict"),
    (
        "measurement type unknown",
        _set("health_assessment.measurements[1].measurement_type", "RESISTANCE"),
        "event.health_assessment.measurements[1].measurement_type",
    ),
    (
        "measurement type in the wrong case",
        _append_measurement,
        "event.health_assessment.measurements[3].measurement_type",
    ),
    ("event time missing", _clear("event_time"), "event.event_time"),
    ("event time beyond year 9999", _set("event_time.seconds", 2**62), "event.event_time"),
    ("event time before year 1", _set("event_time.seconds", -(2**62)), "event.event_time"),
    ("event time negative nanos", _set("event_time.nanos", -1), "event.event_time"),
    ("event time nanos overflow", _set("event_time.nanos", 2_000_000_000), "event.event_time"),
    ("production date garbage", _set("production_date.seconds", 2**62), "event.production_date"),
]


@pytest.mark.parametrize(("mutate", "field"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_each_conversion_problem_names_its_field(mutate: Mutate, field: str) -> None:
    message = mapping.event_to_proto(rich_event(BizStep.HEALTH_ASSESSING))
    mutate(message)
    converted, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert converted is None
    assert problems
    assert set(fields_of(problems)) == {field}
    assert all(p.description for p in problems)


def test_unknown_scrap_reason_names_its_index() -> None:
    message = mapping.event_to_proto(rich_event(BizStep.HEALTH_ASSESSING))
    message.health_assessment.reasons.append("TOO_OLD")
    converted, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert converted is None
    assert fields_of(problems) == ["event.health_assessment.reasons[2]"]
    assert "TOO_OLD" in problems[0].description


def test_identity_problems_carry_the_identity_reasons() -> None:
    message = mapping.event_to_proto(rich_event(BizStep.COLLECTING))
    message.batteries[1].value = "03UXE01000011C85A00FTY45"
    message.batteries[1].namespace = "SOMEONE"
    _, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert {p.description.split(":")[0] for p in problems} == {"namespace_not_allowed", "product_type"}


def test_all_problems_are_reported_together() -> None:
    message = mapping.event_to_proto(rich_event(BizStep.COLLECTING))
    message.biz_step = pb.BIZ_STEP_UNSPECIFIED
    message.batteries[0].scheme = pb.IDENTIFIER_SCHEME_UNSPECIFIED
    message.quantities[1].unit = pb.UNIT_OF_MEASURE_UNSPECIFIED
    message.ClearField("event_time")
    _, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert sorted(fields_of(problems)) == [
        "event.batteries[0].scheme",
        "event.biz_step",
        "event.event_time",
        "event.quantities[1].unit",
    ]


def test_unspecified_optional_enums_are_not_problems() -> None:
    message = mapping.event_to_proto(rich_event(BizStep.COLLECTING, disposition=None, collection_mode=None))
    assert message.disposition == 0
    assert message.collection_mode == 0
    converted, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert problems == []
    assert converted is not None
    assert converted.disposition is None
    assert converted.collection_mode is None


_INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
_STAMPS = st.builds(Timestamp, seconds=st.integers(min_value=-(2**63), max_value=2**63 - 1), nanos=_INT32)
_REFS = st.builds(pb.BatteryRef, scheme=_INT32, namespace=st.text(max_size=30), value=st.text(max_size=40))
_QUANTITIES = st.builds(pb.QuantityElement, product_class=st.text(max_size=10), quantity=st.floats(), unit=_INT32)
_ASSESSMENTS = st.builds(
    pb.HealthAssessment,
    measurements=st.lists(
        st.builds(pb.Measurement, measurement_type=st.text(max_size=12), value=st.floats()), max_size=3
    ),
    verdict=_INT32,
    reasons=st.lists(st.sampled_from([*ScrapReason.__members__, "", "nope"]), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    biz_step=_INT32,
    collection_mode=_INT32,
    disposition=_INT32,
    event_time=st.none() | _STAMPS,
    production_date=st.none() | _STAMPS,
    batteries=st.lists(_REFS, max_size=3),
    quantities=st.lists(_QUANTITIES, max_size=2),
    assessment=st.none() | _ASSESSMENTS,
    offset=st.text(max_size=8),
)
def test_garbage_gives_violations_never_an_exception(
    biz_step: int,
    collection_mode: int,
    disposition: int,
    event_time: Timestamp | None,
    production_date: Timestamp | None,
    batteries: list[pb.BatteryRef],
    quantities: list[pb.QuantityElement],
    assessment: pb.HealthAssessment | None,
    offset: str,
) -> None:
    message = pb.FlowEvent(
        biz_step=biz_step,  # type: ignore[arg-type]
        collection_mode=collection_mode,  # type: ignore[arg-type]
        disposition=disposition,  # type: ignore[arg-type]
        event_time=event_time,
        production_date=production_date,
        batteries=batteries,
        quantities=quantities,
        outputs=quantities,
        health_assessment=assessment,
        event_time_zone_offset=offset,
    )
    converted, problems = mapping.event_from_proto(message, reporter_id="p-outlet")
    assert (converted is None) == bool(problems)
    if converted is not None:
        assert converted.event_time.utcoffset() == dt.timedelta(0)


# ---------------------------------------------------------------------------------------------
# Battery refs


@pytest.mark.parametrize("battery", BATTERIES, ids=lambda b: b.scheme.value)
def test_battery_ref_round_trips(battery: BatteryId) -> None:
    ref = mapping.battery_ref_to_proto(battery)
    assert ref.scheme == pb.IdentifierScheme.Value(f"IDENTIFIER_SCHEME_{battery.scheme.name}")
    assert mapping.battery_ref_from_proto(ref, "battery_ref") == (battery, [])


def test_battery_ref_problems_use_the_given_field() -> None:
    assert fields_of(mapping.battery_ref_from_proto(pb.BatteryRef(value="X"), "battery_ref")[1]) == [
        "battery_ref.scheme"
    ]
    bad = pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_GBT34014, value="short")
    battery, problems = mapping.battery_ref_from_proto(bad, "battery_ref")
    assert battery is None
    assert fields_of(problems) == ["battery_ref"]
    assert problems[0].description.startswith("length: ")


# ---------------------------------------------------------------------------------------------
# Rule hits, rules and states

HITS = [
    RuleHit(f"FLOW-{i:03d}", severity, decision, f'消息 {i}: "quoted", {{braces}}', battery)
    for i, (severity, decision, battery) in enumerate(
        [
            (severity, decision, battery)
            for severity in Severity
            for decision in Decision
            for battery in (*BATTERIES, BatteryId(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "A:B/C%D"), None)
        ]
    )
]


def test_hits_json_round_trips_exactly() -> None:
    text = mapping.hits_to_json(HITS)
    assert mapping.hits_from_json(text) == HITS
    assert "\n" not in text
    assert text == json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))  # compact
    assert "消息" in text  # not escaped
    assert json.loads(text)[0]["battery"] == B_MFR.urn


def test_hits_json_of_nothing() -> None:
    assert mapping.hits_to_json([]) == "[]"
    assert mapping.hits_from_json("[]") == []
    assert mapping.hits_from_json("") == []


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "[1]",
        '[{"rule_id": "FLOW-001"}]',
        '[{"rule_id": "F", "severity": "HUGE", "decision": "REJECT", "message": "", "battery": null}]',
        '[{"rule_id": "F", "severity": "LOW", "decision": "REJECT", "message": "", "battery": "urn:x"}]',
        '[{"rule_id": "F", "severity": "LOW", "decision": "REJECT", "message": "", "battery": 5}]',
        "not json",
    ],
)
def test_hits_from_json_refuses_what_it_did_not_write(text: str) -> None:
    with pytest.raises(ValueError):
        mapping.hits_from_json(text)


def test_hit_to_proto() -> None:
    with_battery = mapping.hit_to_proto(RuleHit("FLOW-007", Severity.MEDIUM, Decision.QUARANTINE, "missing", B_MFR))
    assert with_battery.rule_id == "FLOW-007"
    assert with_battery.severity == pb.SEVERITY_MEDIUM
    assert with_battery.message == "missing"
    assert with_battery.battery == mapping.battery_ref_to_proto(B_MFR)
    whole_event = mapping.hit_to_proto(RuleHit("FLOW-009", Severity.HIGH, Decision.REJECT, "future"))
    assert not whole_event.HasField("battery")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.rule_id)
def test_rule_to_proto(rule: Rule) -> None:
    message = mapping.rule_to_proto(rule)
    assert message.rule_id == rule.rule_id
    assert message.title == rule.title
    assert message.rationale == rule.rationale
    assert pb.Severity.Name(message.severity) == f"SEVERITY_{rule.severity.name}"
    assert pb.RuleDecision.Name(message.decision) == f"RULE_DECISION_{rule.decision.name}"


def test_state_to_proto_for_a_quarantined_battery() -> None:
    state = BatteryState(
        battery=B_GBT,
        phase=CustodyState.AT_SORTING_CENTER,
        holder_id="p-sorter",
        holder_facility_id="f-sort",
        waste=True,
        reached_recycler=False,
        model_id="m-48v-20ah",
        producer_id="p-producer",
        last_event_time=T0,
        quarantine=(
            QuarantineCause("FLOW-004-NOT-HOLDER", EVENT_ID, "not the holder"),
            QuarantineCause("FLOW-007-MISMATCH", OTHER_ID, "missing battery"),
            QuarantineCause("FLOW-004-NOT-HOLDER", OTHER_ID, "not the holder again"),
        ),
    )
    message = mapping.state_to_proto(state)
    assert message.state == pb.CUSTODY_STATE_QUARANTINED
    assert message.phase == pb.CUSTODY_STATE_AT_SORTING_CENTER
    assert list(message.quarantine_rule_ids) == ["FLOW-004-NOT-HOLDER", "FLOW-007-MISMATCH"]
    assert message.battery == mapping.battery_ref_to_proto(B_GBT)
    assert (message.holder_id, message.holder_facility_id) == ("p-sorter", "f-sort")
    assert message.waste
    assert not message.reached_compliant_channel
    assert (message.model_id, message.producer_id) == ("m-48v-20ah", "p-producer")
    assert message.last_event_time.ToDatetime(tzinfo=dt.UTC) == T0


def test_state_to_proto_for_a_battery_without_events_and_a_recycled_one() -> None:
    unknown = mapping.state_to_proto(BatteryState(B_PLATFORM))
    assert unknown.state == unknown.phase == pb.CUSTODY_STATE_UNSPECIFIED
    assert not unknown.HasField("last_event_time")
    assert list(unknown.quarantine_rule_ids) == []
    recycled = mapping.state_to_proto(
        BatteryState(B_MFR, phase=CustodyState.RECYCLED, reached_recycler=True, last_event_time=T0)
    )
    assert recycled.state == recycled.phase == pb.CUSTODY_STATE_RECYCLED
    assert recycled.reached_compliant_channel


# ---------------------------------------------------------------------------------------------
# Error declarations

NOW = dt.datetime(2025, 4, 1, 8, 0, tzinfo=dt.UTC)


def test_declaration_from_proto() -> None:
    request = pb.DeclareErrorRequest(
        event_id=EVENT_ID,
        reason=pb.ERROR_REASON_INCORRECT_DATA,
        corrective_event_ids=[OTHER_ID],
        explanation="weighed with the pallet",
    )
    declaration, problems = mapping.declaration_from_proto(request, declared_by="p-outlet", now=NOW)
    assert problems == []
    assert declaration == ErrorDeclaration(
        NOW, ErrorReason.INCORRECT_DATA, (OTHER_ID,), "weighed with the pallet", "p-outlet"
    )
    assert mapping.declaration_to_proto(declaration).reason == pb.ERROR_REASON_INCORRECT_DATA


def test_did_not_occur_needs_no_corrective_events() -> None:
    request = pb.DeclareErrorRequest(event_id=EVENT_ID, reason=pb.ERROR_REASON_DID_NOT_OCCUR)
    declaration, problems = mapping.declaration_from_proto(request, declared_by="p-outlet", now=NOW)
    assert problems == []
    assert declaration is not None
    assert declaration.reason is ErrorReason.DID_NOT_OCCUR


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"reason": pb.ERROR_REASON_UNSPECIFIED}, ["reason"]),
        ({"reason": 42}, ["reason"]),
        ({"event_id": "not-a-uuid"}, ["event_id"]),
        ({"corrective_event_ids": [OTHER_ID, "NOT-A-UUID"]}, ["corrective_event_ids[1]"]),
        ({"corrective_event_ids": [EVENT_ID]}, ["corrective_event_ids[0]"]),
        ({"corrective_event_ids": [OTHER_ID, OTHER_ID]}, ["corrective_event_ids"]),
        ({"corrective_event_ids": []}, ["corrective_event_ids"]),
        ({"explanation": "x" * (MAX_TEXT + 1)}, ["explanation"]),
        ({"reason": 0, "corrective_event_ids": ["bad"]}, ["reason", "corrective_event_ids[0]"]),
    ],
)
def test_declaration_problems_name_the_request_fields(fields: dict[str, Any], expected: list[str]) -> None:
    values: dict[str, Any] = {
        "event_id": EVENT_ID,
        "reason": pb.ERROR_REASON_INCORRECT_DATA,
        "corrective_event_ids": [OTHER_ID],
        "explanation": "",
    }
    request = pb.DeclareErrorRequest(**(values | fields))
    declaration, problems = mapping.declaration_from_proto(request, declared_by="p-outlet", now=NOW)
    assert declaration is None
    assert fields_of(problems) == expected


# ---------------------------------------------------------------------------------------------
# Timestamps


def test_timestamps() -> None:
    assert mapping.timestamp_to_proto(None) is None
    naive = mapping.timestamp_to_proto(dt.datetime(2025, 1, 1, 12, 0))
    assert naive is not None
    assert naive.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
    moment, problems = mapping.timestamp_from_proto(Timestamp(seconds=2**62), "event_time_from")
    assert moment is None
    assert fields_of(problems) == ["event_time_from"]
    edge, problems = mapping.timestamp_from_proto(Timestamp(seconds=253402300799, nanos=999_999_999), "t")
    assert problems == []
    assert edge == dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
