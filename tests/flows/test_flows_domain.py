"""The flows service's pure domain: identity, event validation, the event hash, the custody state machine and
every compliance rule (each with a hit and its legal counterpart). No database, gRPC or NATS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.flows.domain.custody import (
    ALLOWED_FROM,
    TRANSITION_TABLE,
    BatteryState,
    CustodyState,
    QuarantineRelease,
    Replay,
    advance,
    needs_replay,
    replay,
)
from services.flows.domain.directory import FacilityInfo, ParticipantInfo, StaticDirectory
from services.flows.domain.event_hash import (
    Resubmission,
    canonical_number,
    canonical_time,
    classify_resubmission,
    event_hash,
    pre_hash,
    resubmission_key,
)
from services.flows.domain.events import (
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
    declare_error,
    event_violations,
    scrap_conditions,
)
from services.flows.domain.hits import Decision, RuleHit, Severity, decide
from services.flows.domain.identity import (
    PLATFORM_ALPHABET,
    BatteryId,
    IdentifierScheme,
    IdentityReason,
    InvalidBatteryId,
    battery_id_violations,
    issue_platform_code,
    parse_battery_id,
    parse_urn,
    split_gbt34014,
    validate_battery_id,
)
from services.flows.domain.rules import RULES, RULES_BY_ID, RuleContext, evaluate_all, make_judge, match_shipment
from services.registry.domain.credit_code import make_credit_code

# ---------------------------------------------------------------------------------------------
# Fixtures: a small network (research note §6.2 facility types) and an event builder

CN = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=CN)
NOW = T0 + dt.timedelta(days=60)
PRODUCTION = dt.date(2025, 2, 28)

C_PRODUCER = make_credit_code("320100", seed="producer")
C_PRODUCER2 = make_credit_code("320100", seed="producer-2")
C_EBIKE = make_credit_code("320100", seed="ebike")
C_DEALER = make_credit_code("320100", seed="dealer")
C_UNREGISTERED = make_credit_code("320100", seed="nobody")

PARTICIPANTS = [
    ParticipantInfo("p-producer", C_PRODUCER, frozenset({"BATTERY_PRODUCER"})),
    ParticipantInfo("p-producer2", C_PRODUCER2, frozenset({"BATTERY_PRODUCER"})),
    ParticipantInfo("p-ebike", C_EBIKE, frozenset({"EBIKE_PRODUCER"})),
    ParticipantInfo("p-dealer", C_DEALER, frozenset({"DEALER"})),
    ParticipantInfo("p-outlet", "", frozenset({"RECYCLING_OUTLET_OPERATOR", "TEMP_STORAGE_OPERATOR"})),
    ParticipantInfo("p-sorter", "", frozenset({"SORTING_CENTER_OPERATOR"})),
    ParticipantInfo("p-recycler", "", frozenset({"RECYCLING_ENTERPRISE"})),
    ParticipantInfo("p-workshop", "", frozenset({"REPAIR_SHOP"})),
]
FACILITIES = [
    FacilityInfo("f-plant", "PRODUCTION_PLANT", "DRAFT", "p-producer", "320102"),
    FacilityInfo("f-plant2", "PRODUCTION_PLANT", "DRAFT", "p-producer2", "320102"),
    FacilityInfo("f-ebike", "PRODUCTION_PLANT", "DRAFT", "p-ebike", "320102"),
    FacilityInfo("f-dealer", "DEALER_STORE", "DRAFT", "p-dealer", "320104"),
    FacilityInfo("f-outlet", "RECYCLING_OUTLET", "LISTED", "p-outlet", "320104"),
    FacilityInfo("f-outlet-draft", "RECYCLING_OUTLET", "DRAFT", "p-outlet", "320104"),
    FacilityInfo("f-store", "TEMP_STORAGE_POINT", "LISTED", "p-outlet", "320105"),
    FacilityInfo("f-sort", "REGIONAL_SORTING_CENTER", "LISTED", "p-sorter", "320111"),
    FacilityInfo("f-sort-review", "REGIONAL_SORTING_CENTER", "UNDER_REVIEW", "p-sorter", "320111"),
    FacilityInfo("f-recycler", "RECYCLING_PLANT", "LISTED", "p-recycler", "320115"),
    FacilityInfo("f-workshop", "RECYCLING_PLANT", "LISTED", "p-workshop", "320115"),
    FacilityInfo("f-datacenter", "DATA_CENTER", "LISTED", "p-workshop", "320115"),
]
DIRECTORY = StaticDirectory.of(FACILITIES, PARTICIPANTS)

B1 = parse_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "SN-0001")
B2 = parse_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "SN-0002")
GBT_CODE = "03UPE01000011C85A00FTY45"  # the note's source example: 2018-05-10, pack, ternary

_ids = itertools.count(1)


def new_id() -> str:
    return str(uuid.UUID(int=next(_ids)))


def ev(
    step: BizStep,
    reporter: str,
    facility: str,
    hours: float,
    batteries: Sequence[BatteryId] = (B1,),
    **fields: Any,
) -> FlowEvent:
    """An event ``hours`` after T0, with the step's required fields filled in unless given."""
    if step is BizStep.COMMISSIONING:
        fields.setdefault("model_id", "model-48v-20ah")
        fields.setdefault("production_date", PRODUCTION)
    if step is BizStep.COLLECTING:
        fields.setdefault("collection_mode", CollectionMode.TRADE_IN)
    if step is BizStep.HEALTH_ASSESSING:
        fields.setdefault("health_assessment", HealthAssessment(HealthVerdict.CONTINUE_USE))
    event_time = T0 + dt.timedelta(hours=hours)
    return FlowEvent(
        event_id=fields.pop("event_id", new_id()),
        event_time=event_time,
        event_time_zone_offset="+08:00",
        biz_step=step,
        reporter_id=reporter,
        facility_id=facility,
        batteries=tuple(batteries),
        record_time=fields.pop("record_time", event_time + dt.timedelta(minutes=5)),
        **fields,
    )


def commissioned(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0, batteries)]


def in_use(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [*commissioned(batteries), ev(BizStep.RETAIL_SELLING, "p-producer", "f-plant", 1, batteries)]


def collected(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [*in_use(batteries), ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2, batteries)]


def stored(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [*collected(batteries), ev(BizStep.STORING, "p-outlet", "f-store", 3, batteries)]


def shipped_to_sorting(batteries: Sequence[BatteryId] = (B1,), **fields: Any) -> list[FlowEvent]:
    shipping = ev(BizStep.SHIPPING, "p-outlet", "f-store", 4, batteries, destination_facility_id="f-sort", **fields)
    return [*stored(batteries), shipping]


def at_sorting(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [*shipped_to_sorting(batteries), ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5, batteries)]


def at_recycler(batteries: Sequence[BatteryId] = (B1,)) -> list[FlowEvent]:
    return [
        *at_sorting(batteries),
        ev(BizStep.SHIPPING, "p-sorter", "f-sort", 6, batteries, destination_facility_id="f-recycler"),
        ev(BizStep.RECEIVING, "p-recycler", "f-recycler", 7, batteries),
    ]


def states_after(history: Sequence[FlowEvent]) -> dict[BatteryId, BatteryState]:
    return dict(replay(history, DIRECTORY).states)


def hits_for(event: FlowEvent, history: Sequence[FlowEvent] = (), **context: Any) -> list[RuleHit]:
    """The hits of ``event`` after ``history`` (replayed at face value), at NOW unless told otherwise."""
    context.setdefault("now", NOW)
    return evaluate_all(event, states_after(history), DIRECTORY, RuleContext(**context))


def ids_for(event: FlowEvent, history: Sequence[FlowEvent] = (), **context: Any) -> list[str]:
    return [hit.rule_id for hit in hits_for(event, history, **context)]


def capture(events: Sequence[FlowEvent]) -> tuple[dict[BatteryId, BatteryState], list[list[RuleHit]]]:
    """The service's capture path: evaluate each event against the current projection, store unless rejected."""
    states: dict[BatteryId, BatteryState] = {}
    all_hits: list[list[RuleHit]] = []
    for event in events:
        before = {b: states.get(b) or BatteryState(b) for b in event.batteries}
        hits = evaluate_all(event, before, DIRECTORY, RuleContext(now=event.record_time or NOW))
        all_hits.append(hits)
        if decide(hits) is not Decision.REJECT:
            for battery in event.batteries:
                states[battery] = advance(before[battery], event, DIRECTORY, hits)
    return states, all_hits


# ---------------------------------------------------------------------------------------------
# The happy path and the custody state machine


def happy_path() -> list[FlowEvent]:
    """commissioning → selling → collecting (trade-in at an outlet) → storing (temp storage point) → shipping →
    receiving (sorting centre) → shipping → receiving (recycler) → dismantling → recycling."""
    manifest = (BizTransaction("TRANSFER_MANIFEST", "ZY-2025-0001"),)
    return [
        ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0),
        ev(BizStep.RETAIL_SELLING, "p-producer", "f-plant", 1),
        ev(
            BizStep.COLLECTING,
            "p-outlet",
            "f-outlet",
            2,
            collection_mode=CollectionMode.TRADE_IN,
            business_transactions=(BizTransaction("TRADE_IN_ORDER", "TI-77"),),
        ),
        ev(BizStep.STORING, "p-outlet", "f-store", 3),
        ev(
            BizStep.SHIPPING,
            "p-outlet",
            "f-store",
            4,
            destination_facility_id="f-sort",
            destination_owner_id="p-sorter",
            business_transactions=manifest,
        ),
        ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5, source_facility_id="f-store", business_transactions=manifest),
        ev(BizStep.SHIPPING, "p-sorter", "f-sort", 6, destination_facility_id="f-recycler"),
        ev(BizStep.RECEIVING, "p-recycler", "f-recycler", 7, source_facility_id="f-sort"),
        ev(
            BizStep.DISMANTLING,
            "p-recycler",
            "f-recycler",
            8,
            outputs=(Quantity("black_mass", 3.2, Unit.KILOGRAMS), Quantity("aluminium", 0.6, Unit.KILOGRAMS)),
        ),
        ev(BizStep.RECYCLING, "p-recycler", "f-recycler", 9),
    ]


EXPECTED_PATH = [
    (CustodyState.REGISTERED, "p-producer", "f-plant"),
    (CustodyState.IN_USE, "", ""),
    (CustodyState.COLLECTED, "p-outlet", "f-outlet"),
    (CustodyState.IN_TEMP_STORAGE, "p-outlet", "f-store"),
    (CustodyState.IN_TRANSIT_REVERSE, "p-outlet", "f-store"),
    (CustodyState.AT_SORTING_CENTER, "p-sorter", "f-sort"),
    (CustodyState.IN_TRANSIT_REVERSE, "p-sorter", "f-sort"),
    (CustodyState.AT_RECYCLER, "p-recycler", "f-recycler"),
    (CustodyState.DISMANTLED, "p-recycler", "f-recycler"),
    (CustodyState.RECYCLED, "p-recycler", "f-recycler"),
]


def test_happy_path_replays_to_recycled_with_the_right_holders() -> None:
    events = happy_path()
    assert all(event_violations(e, now=NOW) == [] for e in events)
    result = replay(events, DIRECTORY, judge=make_judge(reevaluate_all=True))
    trail = result.trail_of(B1)
    assert [(s.after.state, s.after.holder_id, s.after.holder_facility_id) for s in trail] == EXPECTED_PATH
    assert all(s.legal and s.applied and not s.hits for s in trail)
    assert trail[5].facility_type == "REGIONAL_SORTING_CENTER" and trail[5].county_code == "320111"
    assert trail[4].after.in_transit_to == "f-sort"
    final = result.state(B1)
    assert (final.state, final.waste, final.reached_recycler, final.quarantined) == (
        CustodyState.RECYCLED,
        True,
        True,
        False,
    )
    assert (final.producer_id, final.model_id, final.production_date) == ("p-producer", "model-48v-20ah", PRODUCTION)


def test_capture_path_and_replay_agree() -> None:
    events = happy_path()
    states, hits = capture(events)
    assert hits == [[]] * len(events)
    assert states[B1] == replay(events, DIRECTORY, judge=make_judge()).state(B1)


def test_replay_orders_by_event_time_not_by_capture_order() -> None:
    events = happy_path()
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    assert replay(shuffled, DIRECTORY).state(B1) == replay(events, DIRECTORY).state(B1)


def test_forward_distribution_through_a_dealer() -> None:
    events = [
        *commissioned(),
        ev(BizStep.SHIPPING, "p-producer", "f-plant", 1, destination_facility_id="f-dealer"),
        ev(BizStep.RECEIVING, "p-dealer", "f-dealer", 2),
        ev(BizStep.RETAIL_SELLING, "p-dealer", "f-dealer", 3),
    ]
    result = replay(events, DIRECTORY, judge=make_judge(reevaluate_all=True))
    assert [s.after.state for s in result.trail_of(B1)] == [
        CustodyState.REGISTERED,
        CustodyState.IN_DISTRIBUTION,
        CustodyState.AT_DEALER,
        CustodyState.IN_USE,
    ]
    assert all(not s.hits for s in result.trail) and not result.state(B1).waste


def test_legacy_battery_enters_at_intake_and_health_assessment_keeps_state() -> None:
    legacy = issue_platform_code("32", rng=random.Random(1))
    scrap = HealthAssessment(
        HealthVerdict.RECOMMEND_SCRAP,
        (Measurement(MeasurementType.INTERNAL_RESISTANCE_OHM, 0.8),),
        (ScrapReason.IR_OVER_0_5_OHM,),
    )
    events = [
        ev(BizStep.HEALTH_ASSESSING, "p-outlet", "f-outlet", 0, (legacy,), health_assessment=scrap),
        ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 1, (legacy,), collection_mode=CollectionMode.DROP_OFF),
        ev(BizStep.DISCHARGING, "p-outlet", "f-outlet", 2, (legacy,)),
    ]
    states, hits = capture(events)
    assert hits == [[], [], []]
    state = states[legacy]
    assert (state.state, state.scrap_recommended, state.discharged, state.holder_id) == (
        CustodyState.COLLECTED,
        True,
        True,
        "p-outlet",
    )


def test_destroying_ends_any_live_state_and_final_states_are_sticky() -> None:
    destroyed = [*collected(), ev(BizStep.DESTROYING, "p-outlet", "f-outlet", 3)]
    later = ev(BizStep.SHIPPING, "p-outlet", "f-outlet", 4, destination_facility_id="f-sort")
    result = replay([*destroyed, later], DIRECTORY)
    assert result.state(B1).state is CustodyState.DESTROYED
    assert not result.trail_of(B1)[-1].legal
    assert CustodyState.DESTROYED not in ALLOWED_FROM[BizStep.DESTROYING]


def test_transition_table_documents_every_step() -> None:
    assert {step for _, step, _ in TRANSITION_TABLE} == set(BizStep) == set(ALLOWED_FROM)
    assert all(CustodyState.QUARANTINED not in allowed for allowed in ALLOWED_FROM.values())


def test_needs_replay_for_an_event_earlier_than_the_latest() -> None:
    state = states_after(collected())[B1]
    assert needs_replay(state, ev(BizStep.HEALTH_ASSESSING, "p-outlet", "f-outlet", 1.5))
    assert not needs_replay(state, ev(BizStep.STORING, "p-outlet", "f-store", 3))


# ---------------------------------------------------------------------------------------------
# Error declarations and corrective events


def test_incorrect_data_with_a_corrective_event_recomputes_the_state() -> None:
    # The outlet reported its shipment to the sorting centre, but the lorry went straight to the recycler.
    wrong = ev(BizStep.SHIPPING, "p-outlet", "f-store", 4, destination_facility_id="f-sort")
    receipt = ev(BizStep.RECEIVING, "p-recycler", "f-recycler", 6)
    history = [*stored(), wrong, receipt]
    captured = replay(history, DIRECTORY, judge=make_judge())
    assert captured.state(B1).state is CustodyState.QUARANTINED
    assert [c.rule_id for c in captured.state(B1).quarantine] == ["FLOW-005-ORPHAN-RECEIPT"]

    corrective = ev(BizStep.SHIPPING, "p-outlet", "f-store", 4, destination_facility_id="f-recycler")
    declaration = declare_error(
        wrong,
        ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA, (corrective.event_id,), "wrong destination", "p-outlet"),
    )
    assert event_violations(declaration, now=NOW) == []
    corrected = replay([*history, declaration, corrective], DIRECTORY, judge=make_judge())
    state = corrected.state(B1)
    assert (state.state, state.holder_id, state.quarantined) == (CustodyState.AT_RECYCLER, "p-recycler", False)
    declared_steps = [s for s in corrected.trail_of(B1) if s.declared_in_error]
    assert [(s.event.event_id, s.applied) for s in declared_steps] == [(wrong.event_id, False)]
    assert corrected.missing_corrective_event_ids == frozenset()
    assert wrong in history  # history is not rewritten: the original stays, marked in the trail


def test_did_not_occur_removes_the_event_from_the_state() -> None:
    history = collected()
    declaration = declare_error(history[-1], ErrorDeclaration(NOW, ErrorReason.DID_NOT_OCCUR))
    result = replay([*history, declaration], DIRECTORY)
    state = result.state(B1)
    assert (state.state, state.waste, state.holder_id) == (CustodyState.IN_USE, False, "")
    assert dict(result.declared) == {history[-1].event_id: declaration.error_declaration}


def test_a_correction_can_make_a_later_event_illegal_and_quarantines_instead_of_rewriting() -> None:
    history = at_sorting()
    receipt = history[-1]
    declaration = declare_error(history[-2], ErrorDeclaration(NOW, ErrorReason.DID_NOT_OCCUR))
    result = replay([*history, declaration], DIRECTORY, judge=make_judge())
    step = next(s for s in result.trail_of(B1) if s.event.event_id == receipt.event_id)
    assert [h.rule_id for h in step.hits] == ["FLOW-005-ORPHAN-RECEIPT"]
    assert result.state(B1).state is CustodyState.QUARANTINED


def test_missing_corrective_events_are_reported() -> None:
    history = collected()
    pending = new_id()
    declaration = declare_error(history[-1], ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA, (pending,)))
    assert replay([*history, declaration], DIRECTORY).missing_corrective_event_ids == frozenset({pending})


def test_quarantine_release_clears_the_causes_but_keeps_the_phase() -> None:
    history = [*collected(), ev(BizStep.RECEIVING, "p-sorter", "f-sort", 3)]
    released = QuarantineRelease(B1, T0 + dt.timedelta(hours=4), "p-regulator", "sender confirmed by phone")
    before = replay(history, DIRECTORY, judge=make_judge()).state(B1)
    after = replay(history, DIRECTORY, judge=make_judge(), releases=[released]).state(B1)
    assert before.state is CustodyState.QUARANTINED and before.phase is CustodyState.AT_SORTING_CENTER
    assert after.state is CustodyState.AT_SORTING_CENTER and not after.quarantined


def test_replay_keeps_recorded_directory_hits_and_recomputes_stream_hits() -> None:
    collecting = ev(BizStep.COLLECTING, "p-outlet", "f-outlet-draft", 2)
    recorded = {collecting.event_id: hits_for(collecting, in_use())}
    assert [h.rule_id for h in recorded[collecting.event_id]] == ["FLOW-003-SITE-NOT-LISTED"]
    # stream-only judge without the recorded hits: the directory rule is not re-judged
    assert not replay([*in_use(), collecting], DIRECTORY, judge=make_judge()).state(B1).quarantined
    with_recorded = replay([*in_use(), collecting], DIRECTORY, judge=make_judge(recorded_hits=recorded))
    assert [c.rule_id for c in with_recorded.state(B1).quarantine] == ["FLOW-003-SITE-NOT-LISTED"]


# ---------------------------------------------------------------------------------------------
# Rules: each rule hit, and its legal counterpart


def test_rule_book_is_complete_and_well_formed() -> None:
    assert len(RULES) == len(RULES_BY_ID) == 16
    for number, rule in enumerate(RULES, start=1):
        assert re.fullmatch(rf"FLOW-{number:03d}-[A-Z-]+", rule.rule_id)
        assert rule.decision in (Decision.REJECT, Decision.QUARANTINE)
        assert rule.title and rule.rationale


def waste_by_weight(step: BizStep, reporter: str, facility: str, kg: float = 100.0, **fields: Any) -> FlowEvent:
    return ev(step, reporter, facility, 10, (), quantities=(Quantity("ebike_li_ion", kg, Unit.KILOGRAMS),), **fields)


# FLOW-001 waste back to the market


@pytest.mark.parametrize(
    "make",
    [
        lambda: ev(BizStep.SHIPPING, "p-outlet", "f-outlet", 3, destination_facility_id="f-dealer"),
        lambda: ev(BizStep.RECEIVING, "p-dealer", "f-dealer", 3),
        lambda: ev(BizStep.RETAIL_SELLING, "p-dealer", "f-dealer", 3),
        lambda: ev(BizStep.INSTALLING, "p-dealer", "f-dealer", 3),
    ],
    ids=["shipped-to-dealer", "received-by-dealer", "sold", "installed"],
)
def test_flow_001_waste_back_to_market(make: Callable[[], FlowEvent]) -> None:
    event = make()
    hits = hits_for(event, collected())
    assert "FLOW-001-REFURBISHMENT" in [h.rule_id for h in hits]
    hit = next(h for h in hits if h.rule_id == "FLOW-001-REFURBISHMENT")
    assert (hit.severity, hit.decision, hit.battery) == (Severity.CRITICAL, Decision.REJECT, B1)
    assert decide(hits) is Decision.REJECT
    # the same steps on a battery that is not waste are ordinary market flows
    assert "FLOW-001-REFURBISHMENT" not in ids_for(event, commissioned())


def test_flow_001_waste_by_weight_to_a_dealer() -> None:
    event = waste_by_weight(BizStep.SHIPPING, "p-sorter", "f-sort", destination_facility_id="f-dealer")
    assert ids_for(event) == ["FLOW-001-REFURBISHMENT"]
    legal = waste_by_weight(BizStep.SHIPPING, "p-sorter", "f-sort", destination_facility_id="f-recycler")
    assert ids_for(legal) == []


def test_flow_001_legal_shipment_of_waste_to_storage() -> None:
    event = ev(BizStep.SHIPPING, "p-outlet", "f-outlet", 3, destination_facility_id="f-store")
    assert ids_for(event, collected()) == []


# FLOW-002 destination


@pytest.mark.parametrize(
    ("destination", "why"),
    [
        ("f-sort-review", "not a listed facility"),
        ("f-workshop", "not a registered recycling enterprise"),
        ("f-outlet-draft", "may not take waste"),
        ("f-datacenter", "may not take waste"),
        ("f-nowhere", "not in the registry"),
    ],
)
def test_flow_002_destination_not_allowed(destination: str, why: str) -> None:
    event = ev(BizStep.SHIPPING, "p-outlet", "f-store", 4, destination_facility_id=destination)
    hits = hits_for(event, stored())
    assert [h.rule_id for h in hits] == ["FLOW-002-DESTINATION-NOT-ALLOWED"]
    assert why in hits[0].message and hits[0].decision is Decision.REJECT


@pytest.mark.parametrize("destination", ["f-sort", "f-recycler", "f-store"])
def test_flow_002_listed_destinations_are_allowed(destination: str) -> None:
    source = "f-outlet" if destination == "f-store" else "f-store"
    history = collected() if destination == "f-store" else stored()
    event = ev(BizStep.SHIPPING, "p-outlet", source, 4, destination_facility_id=destination)
    assert ids_for(event, history) == []


def test_flow_002_goods_need_only_a_known_destination() -> None:
    to_data_centre = ev(BizStep.SHIPPING, "p-producer", "f-plant", 1, destination_facility_id="f-datacenter")
    assert ids_for(to_data_centre, commissioned()) == []
    unknown = ev(BizStep.SHIPPING, "p-producer", "f-plant", 1, destination_facility_id="f-nowhere")
    assert ids_for(unknown, commissioned()) == ["FLOW-002-DESTINATION-NOT-ALLOWED"]


# FLOW-003 site not listed


def test_flow_003_collecting_at_an_unlisted_outlet() -> None:
    event = ev(BizStep.COLLECTING, "p-outlet", "f-outlet-draft", 2)
    hits = hits_for(event, in_use())
    assert [h.rule_id for h in hits] == ["FLOW-003-SITE-NOT-LISTED"]
    assert decide(hits) is Decision.QUARANTINE
    assert ids_for(ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2), in_use()) == []


def test_flow_003_collection_sites_depend_on_the_mode() -> None:
    door = ev(BizStep.COLLECTING, "p-recycler", "f-recycler", 2, collection_mode=CollectionMode.DOOR_TO_DOOR)
    drop = ev(BizStep.COLLECTING, "p-recycler", "f-recycler", 2, collection_mode=CollectionMode.DROP_OFF)
    at_dealer = ev(BizStep.COLLECTING, "p-dealer", "f-dealer", 2, collection_mode=CollectionMode.TRADE_IN)
    assert ids_for(door, in_use()) == []
    assert ids_for(drop, in_use()) == ["FLOW-003-SITE-NOT-LISTED"]
    assert ids_for(at_dealer, in_use()) == ["FLOW-003-SITE-NOT-LISTED"]


def test_flow_003_treatment_by_a_non_recycling_enterprise() -> None:
    shipment = ev(BizStep.SHIPPING, "p-sorter", "f-sort", 6, destination_facility_id="f-workshop")
    receipt = ev(BizStep.RECEIVING, "p-workshop", "f-workshop", 7)
    assert ids_for(receipt, [*at_sorting(), shipment]) == ["FLOW-003-SITE-NOT-LISTED"]
    dismantling = ev(BizStep.DISMANTLING, "p-workshop", "f-workshop", 8)
    assert ids_for(dismantling, [*at_sorting(), shipment, receipt]) == ["FLOW-003-SITE-NOT-LISTED"]
    assert ids_for(ev(BizStep.DISMANTLING, "p-recycler", "f-recycler", 8), at_recycler()) == []


def test_flow_003_waste_by_weight_received_at_an_unlisted_sorting_centre() -> None:
    shipment = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort-review")
    receipt = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort-review", source_facility_id="f-store")
    assert ids_for(receipt, shipment=shipment) == ["FLOW-003-SITE-NOT-LISTED"]
    good_shipment = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort")
    good = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-store")
    assert ids_for(good, shipment=good_shipment) == []


# FLOW-004 custody conflict


def test_flow_004_shipping_by_someone_not_the_holder() -> None:
    event = ev(BizStep.SHIPPING, "p-sorter", "f-sort", 3, destination_facility_id="f-recycler")
    hits = hits_for(event, collected())
    assert [h.rule_id for h in hits] == ["FLOW-004-CUSTODY-CONFLICT"]
    assert "held by p-outlet at f-outlet" in hits[0].message and hits[0].battery == B1
    holder = ev(BizStep.SHIPPING, "p-outlet", "f-outlet", 3, destination_facility_id="f-sort")
    assert ids_for(holder, collected()) == []


def test_flow_004_storing_a_battery_nobody_has_taken_in() -> None:
    event = ev(BizStep.STORING, "p-outlet", "f-store", 3)
    hits = hits_for(event, in_use())
    assert [h.rule_id for h in hits] == ["FLOW-004-CUSTODY-CONFLICT"]
    assert "no holder on record" in hits[0].message
    assert ids_for(event, collected()) == []


def test_flow_004_receiver_may_not_store_before_receiving() -> None:
    event = ev(BizStep.STORING, "p-sorter", "f-sort", 4.5)
    assert ids_for(event, shipped_to_sorting()) == ["FLOW-004-CUSTODY-CONFLICT"]
    assert ids_for(ev(BizStep.STORING, "p-sorter", "f-sort", 5.5), at_sorting()) == []


# FLOW-005 orphan receipt, FLOW-006 double receipt


def test_flow_005_receipt_without_a_shipment() -> None:
    event = ev(BizStep.RECEIVING, "p-sorter", "f-sort", 3)
    hits = hits_for(event, collected())
    assert [h.rule_id for h in hits] == ["FLOW-005-ORPHAN-RECEIPT"]
    assert decide(hits) is Decision.QUARANTINE
    assert ids_for(ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5), shipped_to_sorting()) == []


def test_flow_005_receipt_by_someone_other_than_the_addressee() -> None:
    event = ev(BizStep.RECEIVING, "p-recycler", "f-recycler", 5)
    hits = hits_for(event, shipped_to_sorting())
    assert [h.rule_id for h in hits] == ["FLOW-005-ORPHAN-RECEIPT"]
    assert "in transit to f-sort" in hits[0].message


def test_flow_005_receipt_by_quantity_needs_a_matched_shipment() -> None:
    receipt = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-store")
    assert ids_for(receipt) == ["FLOW-005-ORPHAN-RECEIPT"]
    shipment = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort")
    assert ids_for(receipt, shipment=shipment) == []


def test_flow_006_second_receipt_without_shipping_on() -> None:
    again = ev(BizStep.RECEIVING, "p-recycler", "f-recycler", 6)
    hits = hits_for(again, at_sorting())
    assert [h.rule_id for h in hits] == ["FLOW-006-DOUBLE-RECEIPT"]
    assert "already received at f-sort" in hits[0].message
    shipped_on = [
        *at_sorting(),
        ev(BizStep.SHIPPING, "p-sorter", "f-sort", 5.5, destination_facility_id="f-recycler"),
    ]
    assert ids_for(again, shipped_on) == []


def test_flow_006_second_receipt_by_quantity() -> None:
    shipment = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort")
    first = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-store")
    second = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-store")
    assert ids_for(second, shipment=shipment, prior_receipts=(first,)) == ["FLOW-006-DOUBLE-RECEIPT"]
    assert ids_for(first, shipment=shipment) == []


# FLOW-007 quantity / weight mismatch


def test_flow_007_missing_battery_in_the_receipt() -> None:
    history = shipped_to_sorting((B1, B2))
    partial = ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5, (B1,))
    hits = hits_for(partial, history)
    assert [h.rule_id for h in hits] == ["FLOW-007-QUANTITY-MISMATCH"]
    assert B2.urn in hits[0].message and hits[0].battery is None
    assert ids_for(ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5, (B1, B2)), history) == []


@pytest.mark.parametrize(
    ("shipped", "received", "unit", "hit"),
    [
        (100.0, 98.5, Unit.KILOGRAMS, False),  # 1.5 kg ≤ 2 %
        (100.0, 97.9, Unit.KILOGRAMS, True),  # 2.1 kg > 2 %
        (100.0, 102.0, Unit.KILOGRAMS, False),
        (10.0, 9.6, Unit.KILOGRAMS, False),  # 0.4 kg ≤ 0.5 kg floor
        (10.0, 9.4, Unit.KILOGRAMS, True),
        (10.0, 10.0, Unit.PIECES, False),
        (10.0, 9.0, Unit.PIECES, True),  # counts match exactly
    ],
)
def test_flow_007_weight_and_count_tolerance(shipped: float, received: float, unit: Unit, hit: bool) -> None:
    shipment = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort")
    shipment = dataclasses.replace(shipment, quantities=(Quantity("ebike_li_ion", shipped, unit),))
    receipt = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-store")
    receipt = dataclasses.replace(receipt, quantities=(Quantity("ebike_li_ion", received, unit),))
    expected = ["FLOW-007-QUANTITY-MISMATCH"] if hit else []
    assert ids_for(receipt, shipment=shipment) == expected


def test_flow_007_weight_received_alongside_identified_batteries() -> None:
    weight = (Quantity("ebike_li_ion", 50.0, Unit.KILOGRAMS),)
    history = shipped_to_sorting((B1,), quantities=weight)
    short = ev(
        BizStep.RECEIVING, "p-sorter", "f-sort", 5, (B1,), quantities=(Quantity("ebike_li_ion", 45.0, Unit.KILOGRAMS),)
    )
    assert ids_for(short, history) == ["FLOW-007-QUANTITY-MISMATCH"]
    assert ids_for(ev(BizStep.RECEIVING, "p-sorter", "f-sort", 5, (B1,), quantities=weight), history) == []


# FLOW-008 after a final state


@pytest.mark.parametrize(
    "make",
    [
        lambda: ev(BizStep.SHIPPING, "p-recycler", "f-recycler", 11, destination_facility_id="f-sort"),
        lambda: ev(BizStep.HEALTH_ASSESSING, "p-recycler", "f-recycler", 11),
        lambda: ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 11),
        lambda: ev(BizStep.RETAIL_SELLING, "p-dealer", "f-dealer", 11),
    ],
    ids=["shipping", "assessing", "collecting", "selling"],
)
def test_flow_008_any_event_after_recycled(make: Callable[[], FlowEvent]) -> None:
    hits = hits_for(make(), happy_path())
    assert "FLOW-008-AFTER-FINAL-STATE" in [h.rule_id for h in hits]
    assert decide(hits) is Decision.REJECT


def test_flow_008_only_recycling_may_follow_dismantling() -> None:
    dismantled = [*at_recycler(), ev(BizStep.DISMANTLING, "p-recycler", "f-recycler", 8)]
    assert ids_for(ev(BizStep.RECYCLING, "p-recycler", "f-recycler", 9), dismantled) == []
    resell = ev(BizStep.SHIPPING, "p-recycler", "f-recycler", 9, destination_facility_id="f-sort")
    assert ids_for(resell, dismantled) == ["FLOW-008-AFTER-FINAL-STATE"]


def test_flow_008_after_destroyed() -> None:
    destroyed = [*collected(), ev(BizStep.DESTROYING, "p-outlet", "f-outlet", 3)]
    assert ids_for(ev(BizStep.STORING, "p-outlet", "f-store", 4), destroyed) == ["FLOW-008-AFTER-FINAL-STATE"]
    assert ids_for(ev(BizStep.STORING, "p-outlet", "f-store", 4), collected()) == []


# FLOW-009 future, FLOW-010 before production, FLOW-011 out of order


def test_flow_009_future_event_beyond_clock_skew() -> None:
    event = ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2)
    skewed = event.event_time - dt.timedelta(minutes=10)
    assert ids_for(event, in_use(), now=skewed) == ["FLOW-009-FUTURE-EVENT"]
    assert ids_for(event, in_use(), now=event.event_time - dt.timedelta(minutes=4)) == []
    assert [v.field for v in event_violations(event, now=skewed)] == ["event.event_time"]
    assert event_violations(event, now=event.event_time) == []


def test_flow_010_commissioning_before_production() -> None:
    early = ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0, production_date=dt.date(2025, 3, 2))
    assert ids_for(early) == ["FLOW-010-BEFORE-PRODUCTION"]
    same_day = ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0, production_date=dt.date(2025, 3, 1))
    assert ids_for(same_day) == []


def test_flow_010_event_before_the_production_date_of_a_commissioned_battery() -> None:
    history = [ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0, production_date=dt.date(2025, 3, 1))]
    backdated = ev(BizStep.RETAIL_SELLING, "p-producer", "f-plant", -30)  # 2025-02-28 at +08:00
    hits = ids_for(backdated, history)
    assert hits[0] == "FLOW-010-BEFORE-PRODUCTION"
    assert "FLOW-010-BEFORE-PRODUCTION" not in ids_for(ev(BizStep.RETAIL_SELLING, "p-producer", "f-plant", 1), history)


def test_flow_010_uses_the_reporters_local_date() -> None:
    history = [ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0, production_date=dt.date(2025, 3, 1))]
    # 2025-02-28 23:30 UTC is 2025-03-01 07:30 in Beijing: not before production there
    event = dataclasses.replace(
        ev(BizStep.RETAIL_SELLING, "p-producer", "f-plant", 1),
        event_time=dt.datetime(2025, 2, 28, 23, 30, tzinfo=dt.UTC),
    )
    assert "FLOW-010-BEFORE-PRODUCTION" not in ids_for(event, history)
    utc = dataclasses.replace(event, event_time_zone_offset="+00:00")
    assert "FLOW-010-BEFORE-PRODUCTION" in ids_for(utc, history)


def test_flow_011_out_of_order_beyond_tolerance() -> None:
    history = stored()  # latest event at T0 + 3 h
    late = ev(BizStep.DISCHARGING, "p-outlet", "f-outlet", 1.5)
    hits = hits_for(late, history)
    assert "FLOW-011-OUT-OF-ORDER" in [h.rule_id for h in hits]
    assert next(h for h in hits if h.rule_id == "FLOW-011-OUT-OF-ORDER").decision is Decision.QUARANTINE
    within = ev(BizStep.DISCHARGING, "p-outlet", "f-store", 2.5)
    assert ids_for(within, history) == []


def test_flow_011_replay_reproduces_the_capture_time_hit() -> None:
    history = stored()
    late = ev(BizStep.DISCHARGING, "p-outlet", "f-outlet", 2.5, record_time=T0 + dt.timedelta(hours=9))
    much_later = dataclasses.replace(late, event_id=new_id(), event_time=T0 + dt.timedelta(hours=1.5))
    for event, expect_hit in ((late, False), (much_later, True)):
        step = next(s for s in replay([*history, event], DIRECTORY, judge=make_judge()).trail if s.event is event)
        assert ("FLOW-011-OUT-OF-ORDER" in [h.rule_id for h in step.hits]) is expect_hit


# FLOW-012 duplicate commissioning, FLOW-013 namespace, FLOW-014 commissioning producer


def test_flow_012_same_code_commissioned_twice() -> None:
    again = ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 5)
    hits = hits_for(again, in_use())
    assert [h.rule_id for h in hits] == ["FLOW-012-DUPLICATE-COMMISSIONING"]
    assert decide(hits) is Decision.QUARANTINE
    assert ids_for(again) == []


@pytest.mark.parametrize(
    ("namespace", "hit"),
    [(C_UNREGISTERED, True), (C_DEALER, True), (C_PRODUCER, False), (C_EBIKE, False)],
    ids=["unregistered", "not-a-producer", "producer", "ebike-producer"],
)
def test_flow_013_manufacturer_namespace_must_be_a_registered_producer(namespace: str, hit: bool) -> None:
    battery = parse_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, namespace, "X-1")
    event = ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2, (battery,))
    hits = hits_for(event)
    assert (["FLOW-013-UNREGISTERED-NAMESPACE"] if hit else []) == [h.rule_id for h in hits]
    if hit:
        assert hits[0].decision is Decision.REJECT and hits[0].battery == battery


def test_flow_013_does_not_apply_to_platform_or_gbt_codes() -> None:
    codes = (issue_platform_code("32", rng=random.Random(3)), parse_battery_id(IdentifierScheme.GBT34014, "", GBT_CODE))
    assert ids_for(ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2, codes)) == []


def test_flow_014_commissioning_by_a_non_producer_or_in_another_namespace() -> None:
    by_dealer = ev(BizStep.COMMISSIONING, "p-dealer", "f-dealer", 0)
    assert ids_for(by_dealer) == ["FLOW-014-COMMISSIONING-NOT-PRODUCER"]
    foreign = ev(BizStep.COMMISSIONING, "p-producer2", "f-plant2", 0)  # B1 is in p-producer's namespace
    assert ids_for(foreign) == ["FLOW-014-COMMISSIONING-NOT-PRODUCER"]
    assert ids_for(ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0)) == []
    # an e-bike producer commissions the packs it fits under their maker's namespace
    assert ids_for(ev(BizStep.COMMISSIONING, "p-ebike", "f-ebike", 0)) == []


# FLOW-015 facility, FLOW-016 illegal transition


def test_flow_015_facility_not_operated_by_the_reporter() -> None:
    someone_elses = ev(BizStep.COLLECTING, "p-sorter", "f-outlet", 2)
    assert "FLOW-015-FACILITY-NOT-OPERATED" in ids_for(someone_elses, in_use())
    unknown = ev(BizStep.COLLECTING, "p-outlet", "f-unknown", 2)
    assert ids_for(unknown, in_use()) == ["FLOW-015-FACILITY-NOT-OPERATED"]
    assert ids_for(ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2), in_use()) == []


def test_flow_016_transitions_outside_the_table() -> None:
    collected_twice = ev(BizStep.COLLECTING, "p-outlet", "f-store", 3)
    hits = hits_for(collected_twice, collected())
    assert [h.rule_id for h in hits] == ["FLOW-016-ILLEGAL-TRANSITION"]
    assert "not allowed in state COLLECTED" in hits[0].message
    reshipped = ev(BizStep.SHIPPING, "p-outlet", "f-store", 4.5, destination_facility_id="f-recycler")
    assert ids_for(reshipped, shipped_to_sorting()) == ["FLOW-016-ILLEGAL-TRANSITION"]
    early_dismantling = ev(BizStep.DISMANTLING, "p-sorter", "f-sort", 6)
    assert ids_for(early_dismantling, at_sorting()) == ["FLOW-003-SITE-NOT-LISTED", "FLOW-016-ILLEGAL-TRANSITION"]
    assert ids_for(ev(BizStep.COLLECTING, "p-outlet", "f-outlet", 2), in_use()) == []


def test_hits_come_in_rule_order_then_battery_order() -> None:
    event = ev(BizStep.SHIPPING, "p-sorter", "f-outlet", 3, (B2, B1), destination_facility_id="f-dealer")
    hits = hits_for(event, collected((B1, B2)))
    assert [(h.rule_id, h.battery) for h in hits] == [
        ("FLOW-001-REFURBISHMENT", B1),
        ("FLOW-001-REFURBISHMENT", B2),
        ("FLOW-004-CUSTODY-CONFLICT", B1),
        ("FLOW-004-CUSTODY-CONFLICT", B2),
        ("FLOW-015-FACILITY-NOT-OPERATED", None),
    ]
    assert hits == hits_for(dataclasses.replace(event, batteries=(B1, B2)), collected((B1, B2)))


def test_decide() -> None:
    quarantine = RuleHit("FLOW-005-ORPHAN-RECEIPT", Severity.MEDIUM, Decision.QUARANTINE, "")
    reject = RuleHit("FLOW-009-FUTURE-EVENT", Severity.LOW, Decision.REJECT, "")
    assert decide([]) is Decision.ACCEPT
    assert decide([quarantine]) is Decision.QUARANTINE
    assert decide([quarantine, reject]) is Decision.REJECT
    assert Severity.CRITICAL.rank > Severity.HIGH.rank > Severity.MEDIUM.rank > Severity.LOW.rank


def test_match_shipment_by_transaction_or_source() -> None:
    manifest = (BizTransaction("TRANSFER_MANIFEST", "ZY-1"),)
    mine = waste_by_weight(
        BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-sort", business_transactions=manifest
    )
    other = waste_by_weight(BizStep.SHIPPING, "p-outlet", "f-outlet", destination_facility_id="f-sort")
    elsewhere = waste_by_weight(
        BizStep.SHIPPING, "p-outlet", "f-store", destination_facility_id="f-recycler", business_transactions=manifest
    )
    receipt = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", business_transactions=manifest)
    assert match_shipment(receipt, [other, elsewhere, mine]) is mine
    by_source = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort", source_facility_id="f-outlet")
    assert match_shipment(by_source, [mine, other]) is other
    anonymous = waste_by_weight(BizStep.RECEIVING, "p-sorter", "f-sort")
    assert match_shipment(anonymous, [mine, other]) is None


# ---------------------------------------------------------------------------------------------
# Event field validation


def valid_event() -> FlowEvent:
    return ev(
        BizStep.SHIPPING,
        "p-outlet",
        "f-store",
        4,
        (B1, B2),
        quantities=(Quantity("ebike_li_ion", 12.5, Unit.KILOGRAMS),),
        destination_facility_id="f-sort",
        business_transactions=(BizTransaction("TRANSFER_MANIFEST", "ZY-1"),),
    )


def test_a_valid_event_has_no_violations() -> None:
    assert event_violations(valid_event(), now=NOW) == []


def _assessment(verdict: HealthVerdict, *measurements: Measurement, reasons: tuple[ScrapReason, ...] = ()) -> Any:
    return {
        "biz_step": BizStep.HEALTH_ASSESSING,
        "destination_facility_id": "",
        "health_assessment": HealthAssessment(verdict, measurements, reasons),
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"event_id": "not-a-uuid"}, "event.event_id"),
        ({"event_id": "0000000A-0000-0000-0000-000000000001"}, "event.event_id"),
        ({"event_time": dt.datetime(2025, 3, 1, 9)}, "event.event_time"),
        ({"event_time": dt.datetime(1999, 3, 1, tzinfo=dt.UTC)}, "event.event_time"),
        ({"event_time": NOW + dt.timedelta(hours=1)}, "event.event_time"),
        ({"event_time_zone_offset": "+8:00"}, "event.event_time_zone_offset"),
        ({"event_time_zone_offset": "+15:00"}, "event.event_time_zone_offset"),
        ({"event_time_zone_offset": ""}, "event.event_time_zone_offset"),
        ({"reporter_id": ""}, "event.reporter_id"),
        ({"facility_id": ""}, "event.facility_id"),
        ({"batteries": (), "quantities": ()}, "event.batteries"),
        ({"batteries": (B1, B1)}, "event.batteries[1]"),
        ({"batteries": (BatteryId(IdentifierScheme.GBT34014, "", "SHORT"),)}, "event.batteries[0]"),
        ({"batteries": (BatteryId(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "sn-1"),)}, "event.batteries[0]"),
        ({"quantities": (Quantity("x", -1.0, Unit.KILOGRAMS),)}, "event.quantities[0].quantity"),
        ({"quantities": (Quantity("x", float("nan"), Unit.KILOGRAMS),)}, "event.quantities[0].quantity"),
        ({"quantities": (Quantity("x", float("inf"), Unit.KILOGRAMS),)}, "event.quantities[0].quantity"),
        ({"quantities": (Quantity("x", 0.0, Unit.KILOGRAMS),)}, "event.quantities[0].quantity"),
        ({"quantities": (Quantity("x", 2.5, Unit.PIECES),)}, "event.quantities[0].quantity"),
        ({"quantities": (Quantity("", 2.0, Unit.PIECES),)}, "event.quantities[0].product_class"),
        ({"quantities": (Quantity("x", 1.0, Unit.PIECES), Quantity("x", 2.0, Unit.PIECES))}, "event.quantities[1]"),
        ({"outputs": (Quantity("black_mass", 1.0, Unit.KILOGRAMS),)}, "event.outputs"),
        ({"collection_mode": CollectionMode.TRADE_IN}, "event.collection_mode"),
        ({"biz_step": BizStep.COLLECTING, "destination_facility_id": ""}, "event.collection_mode"),
        ({"destination_facility_id": ""}, "event.destination_facility_id"),
        ({"destination_facility_id": "f-store"}, "event.destination_facility_id"),
        ({"source_facility_id": "f-outlet"}, "event.source_facility_id"),
        ({"destination_owner_id": "p-sorter", "destination_facility_id": ""}, "event.destination_owner_id"),
        (
            {"biz_step": BizStep.STORING, "destination_facility_id": "", "source_facility_id": "f-x"},
            "event.source_facility_id",
        ),
        ({"business_transactions": (BizTransaction("po", "1"),)}, "event.business_transactions[0].transaction_type"),
        ({"business_transactions": (BizTransaction("PO", ""),)}, "event.business_transactions[0].transaction_id"),
        ({"model_id": "m-1"}, "event.model_id"),
        ({"production_date": PRODUCTION}, "event.production_date"),
        ({"health_assessment": HealthAssessment(HealthVerdict.CONTINUE_USE)}, "event.health_assessment"),
        ({"biz_step": BizStep.HEALTH_ASSESSING, "destination_facility_id": ""}, "event.health_assessment"),
        (_assessment(HealthVerdict.RECOMMEND_SCRAP), "event.health_assessment.reasons"),
        (
            _assessment(HealthVerdict.CONTINUE_USE, Measurement(MeasurementType.INTERNAL_RESISTANCE_OHM, 0.6)),
            "event.health_assessment.verdict",
        ),
        (
            _assessment(HealthVerdict.CONTINUE_USE, Measurement(MeasurementType.SOH_PCT, 140.0)),
            "event.health_assessment.measurements[0].value",
        ),
        (
            _assessment(HealthVerdict.CONTINUE_USE, reasons=(ScrapReason.LEAKAGE,)),
            "event.health_assessment.reasons",
        ),
    ],
)
def test_field_violations(changes: dict[str, Any], field: str) -> None:
    event = dataclasses.replace(valid_event(), **changes)
    fields = [v.field for v in event_violations(event, now=NOW)]
    assert field in fields


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batteries": ()}, "event.batteries"),
        ({"quantities": (Quantity("ebike_li_ion", 1.0, Unit.KILOGRAMS),)}, "event.quantities"),
        ({"production_date": None}, "event.production_date"),
        ({"model_id": ""}, "event.model_id"),
    ],
)
def test_commissioning_field_violations(changes: dict[str, Any], field: str) -> None:
    event = dataclasses.replace(ev(BizStep.COMMISSIONING, "p-producer", "f-plant", 0), **changes)
    assert field in [v.field for v in event_violations(event, now=NOW)]


@pytest.mark.parametrize(
    ("declaration", "field"),
    [
        (ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA), "event.error_declaration.corrective_event_ids"),
        (
            ErrorDeclaration(dt.datetime(2025, 3, 1), ErrorReason.DID_NOT_OCCUR),
            "event.error_declaration.declaration_time",
        ),
        (
            ErrorDeclaration(NOW + dt.timedelta(days=1), ErrorReason.DID_NOT_OCCUR),
            "event.error_declaration.declaration_time",
        ),
        (
            ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA, ("nope",)),
            "event.error_declaration.corrective_event_ids[0]",
        ),
    ],
)
def test_error_declaration_violations(declaration: ErrorDeclaration, field: str) -> None:
    event = declare_error(valid_event(), declaration)
    assert field in [v.field for v in event_violations(event, now=NOW)]


def test_an_event_cannot_correct_itself() -> None:
    event = valid_event()
    declared = declare_error(event, ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA, (event.event_id,)))
    assert [v.field for v in event_violations(declared, now=NOW)] == ["event.error_declaration.corrective_event_ids[0]"]


def test_scrap_conditions_follow_the_health_guide() -> None:
    def measured(**values: float) -> HealthAssessment:
        return HealthAssessment(
            HealthVerdict.CONTINUE_USE, tuple(Measurement(MeasurementType(k), v) for k, v in values.items())
        )

    assert scrap_conditions(measured(INTERNAL_RESISTANCE_OHM=0.5, MAX_OUTPUT_VOLTAGE_V=60, SOH_PCT=50)) == ()
    assert scrap_conditions(
        measured(INTERNAL_RESISTANCE_OHM=0.51, MAX_OUTPUT_VOLTAGE_V=60.1, NOMINAL_VOLTAGE_V=60, SOH_PCT=49.9)
    ) == (
        ScrapReason.IR_OVER_0_5_OHM,
        ScrapReason.OUTPUT_OVER_60V,
        ScrapReason.VOLTAGE_OVER_48V_LABEL,
        ScrapReason.CAPACITY_FADE_OVER_50PCT,
    )
    assert scrap_conditions(measured(CAPACITY_FADE_PCT=50.5)) == (ScrapReason.CAPACITY_FADE_OVER_50PCT,)


# ---------------------------------------------------------------------------------------------
# Event hash


NI = re.compile(r"^ni:///sha-256;[0-9a-f]{64}\?ver=CBV2\.0$")


def rich_event() -> FlowEvent:
    return ev(
        BizStep.HEALTH_ASSESSING,
        "p-outlet",
        "f-outlet",
        2,
        (B1, B2),
        quantities=(Quantity("ebike_li_ion", 12.5, Unit.KILOGRAMS), Quantity("model-48v", 3, Unit.PIECES)),
        disposition=Disposition.DAMAGED,
        business_transactions=(BizTransaction("PICKUP_ORDER", "P-1"), BizTransaction("PO", "4500001")),
        health_assessment=HealthAssessment(
            HealthVerdict.RECOMMEND_SCRAP,
            (
                Measurement(MeasurementType.INTERNAL_RESISTANCE_OHM, 0.62),
                Measurement(MeasurementType.SOH_PCT, 61.0),
                Measurement(MeasurementType.MAX_OUTPUT_VOLTAGE_V, 54.6),
            ),
            (ScrapReason.IR_OVER_0_5_OHM, ScrapReason.BURN_MARKS),
        ),
    )


def test_hash_form_and_pre_hash_layout() -> None:
    event = rich_event()
    assert NI.match(event_hash(event))
    text = pre_hash(event)
    assert text.isascii() and text.endswith("\n")
    lines = text.splitlines()
    assert lines[:3] == ["eventType=ObjectEvent", "eventTime=2025-03-01T03:00:00.000Z", "eventTimeZoneOffset=+08:00"]
    assert "bizStep=https://vocab.greenmesh.io/BizStep-health_assessing" in lines
    assert "disposition=https://ref.gs1.org/cbv/Disp-damaged" in lines
    assert "bizTransactionList.bizTransaction=type=https://ref.gs1.org/cbv/BTT-po;bizTransaction=4500001" in lines
    assert not any("eventID" in line or "recordTime" in line or event.event_id in line for line in lines)


def test_transformation_events_hash_inputs_and_outputs() -> None:
    event = happy_path()[8]
    lines = pre_hash(event).splitlines()
    assert lines[0] == "eventType=TransformationEvent"
    assert f"inputEPCList.epc={B1.urn}" in lines
    assert any(line.startswith("outputQuantityList.quantityElement=epcClass=black_mass;quantity=3.2") for line in lines)
    assert not any(line.startswith("action=") for line in lines)


def test_hash_ignores_event_id_record_time_list_order_and_time_representation() -> None:
    event = rich_event()
    reshuffled = dataclasses.replace(
        event,
        event_id=new_id(),
        record_time=NOW,
        batteries=event.batteries[::-1],
        quantities=event.quantities[::-1],
        business_transactions=event.business_transactions[::-1],
        event_time=event.event_time.astimezone(dt.UTC) + dt.timedelta(microseconds=400),
        health_assessment=dataclasses.replace(
            event.health_assessment or HealthAssessment(HealthVerdict.CONTINUE_USE),
            measurements=(event.health_assessment.measurements[::-1] if event.health_assessment else ()),
            reasons=(event.health_assessment.reasons[::-1] if event.health_assessment else ()),
        ),
    )
    assert event_hash(reshuffled) == event_hash(event)


@given(st.randoms(use_true_random=False), st.datetimes(timezones=st.just(dt.UTC)))
@settings(max_examples=50, deadline=None)
def test_hash_is_invariant_under_any_permutation_and_record_time(rng: random.Random, record_time: dt.datetime) -> None:
    event = rich_event()

    def shuffled(items: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(items)
        rng.shuffle(out)
        return tuple(out)

    assessment = event.health_assessment
    assert assessment is not None
    variant = dataclasses.replace(
        event,
        record_time=record_time,
        batteries=shuffled(event.batteries),
        quantities=shuffled(event.quantities),
        business_transactions=shuffled(event.business_transactions),
        health_assessment=dataclasses.replace(
            assessment, measurements=shuffled(assessment.measurements), reasons=shuffled(assessment.reasons)
        ),
    )
    assert event_hash(variant) == event_hash(event)


BASE_DECLARATION = ErrorDeclaration(NOW, ErrorReason.INCORRECT_DATA, (str(uuid.UUID(int=9999)),), "typo", "p-outlet")

MUTATIONS: dict[str, Callable[[FlowEvent], FlowEvent]] = {
    "event_time +1 ms": lambda e: dataclasses.replace(e, event_time=e.event_time + dt.timedelta(milliseconds=1)),
    "offset": lambda e: dataclasses.replace(e, event_time_zone_offset="+09:00"),
    "biz_step": lambda e: dataclasses.replace(e, biz_step=BizStep.SORTING),
    "reporter": lambda e: dataclasses.replace(e, reporter_id="p-sorter"),
    "facility": lambda e: dataclasses.replace(e, facility_id="f-store"),
    "one battery less": lambda e: dataclasses.replace(e, batteries=e.batteries[:1]),
    "other battery": lambda e: dataclasses.replace(e, batteries=(B1, issue_platform_code("32", rng=random.Random(5)))),
    "quantity amount": lambda e: dataclasses.replace(
        e, quantities=(Quantity("ebike_li_ion", 12.51, Unit.KILOGRAMS), e.quantities[1])
    ),
    "quantity unit": lambda e: dataclasses.replace(
        e, quantities=(Quantity("ebike_li_ion", 12.5, Unit.PIECES), e.quantities[1])
    ),
    "quantity class": lambda e: dataclasses.replace(
        e, quantities=(Quantity("black_mass", 12.5, Unit.KILOGRAMS), e.quantities[1])
    ),
    "outputs": lambda e: dataclasses.replace(e, outputs=(Quantity("black_mass", 1, Unit.KILOGRAMS),)),
    "disposition": lambda e: dataclasses.replace(e, disposition=Disposition.WASTE),
    "no disposition": lambda e: dataclasses.replace(e, disposition=None),
    "collection mode": lambda e: dataclasses.replace(e, collection_mode=CollectionMode.TRADE_IN),
    "source facility": lambda e: dataclasses.replace(e, source_facility_id="f-store"),
    "source owner": lambda e: dataclasses.replace(e, source_facility_id="f-store", source_owner_id="p-outlet"),
    "destination facility": lambda e: dataclasses.replace(e, destination_facility_id="f-sort"),
    "destination owner": lambda e: dataclasses.replace(
        e, destination_facility_id="f-sort", destination_owner_id="p-sorter"
    ),
    "transaction id": lambda e: dataclasses.replace(
        e, business_transactions=(BizTransaction("PICKUP_ORDER", "P-2"), e.business_transactions[1])
    ),
    "transaction type": lambda e: dataclasses.replace(
        e, business_transactions=(BizTransaction("TRADE_IN_ORDER", "P-1"), e.business_transactions[1])
    ),
    "measurement value": lambda e: dataclasses.replace(
        e,
        health_assessment=HealthAssessment(
            HealthVerdict.RECOMMEND_SCRAP,
            (Measurement(MeasurementType.INTERNAL_RESISTANCE_OHM, 0.63),),
            (ScrapReason.IR_OVER_0_5_OHM, ScrapReason.BURN_MARKS),
        ),
    ),
    "verdict": lambda e: dataclasses.replace(e, health_assessment=HealthAssessment(HealthVerdict.CONTINUE_USE)),
    "reasons": lambda e: dataclasses.replace(
        e,
        health_assessment=dataclasses.replace(
            e.health_assessment or HealthAssessment(HealthVerdict.CONTINUE_USE), reasons=(ScrapReason.LEAKAGE,)
        ),
    ),
    "model id": lambda e: dataclasses.replace(e, model_id="m-2"),
    "production date": lambda e: dataclasses.replace(e, production_date=PRODUCTION),
    "error declaration": lambda e: declare_error(e, BASE_DECLARATION),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_hash_changes_with_every_business_field(name: str) -> None:
    event = rich_event()
    assert event_hash(MUTATIONS[name](event)) != event_hash(event)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: dataclasses.replace(d, reason=ErrorReason.DID_NOT_OCCUR),
        lambda d: dataclasses.replace(d, corrective_event_ids=(str(uuid.UUID(int=9998)),)),
        lambda d: dataclasses.replace(d, declaration_time=NOW + dt.timedelta(seconds=1)),
        lambda d: dataclasses.replace(d, explanation="another"),
        lambda d: dataclasses.replace(d, declared_by="p-regulator"),
    ],
)
def test_hash_changes_with_every_declaration_field(change: Callable[[ErrorDeclaration], ErrorDeclaration]) -> None:
    event = rich_event()
    assert event_hash(declare_error(event, change(BASE_DECLARATION))) != event_hash(
        declare_error(event, BASE_DECLARATION)
    )


def test_free_text_cannot_forge_another_field() -> None:
    event = rich_event()
    forged = dataclasses.replace(
        event,
        business_transactions=(BizTransaction("PICKUP_ORDER", "P-1;type=https://ref.gs1.org/cbv/BTT-po\n"),),
    )
    plain = dataclasses.replace(event, business_transactions=(BizTransaction("PICKUP_ORDER", "P-1"),))
    assert event_hash(forged) != event_hash(plain)
    assert pre_hash(forged).count("\n") == pre_hash(plain).count("\n")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (2.50, "2.5"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1e21, "1000000000000000000000"),
        (-3.25, "-3.25"),
    ],
)
def test_canonical_numbers(value: float, text: str) -> None:
    assert canonical_number(value) == text


def test_canonical_time_is_utc_milliseconds_truncated() -> None:
    moment = dt.datetime(2025, 3, 1, 8, 0, 0, 999_999, tzinfo=CN)
    assert canonical_time(moment) == "2025-03-01T00:00:00.999Z"


def test_classify_resubmission() -> None:
    event = rich_event()
    stored_hash = event_hash(event)
    again = dataclasses.replace(event, record_time=NOW)
    changed = dataclasses.replace(event, facility_id="f-store")
    assert classify_resubmission(None, stored_hash) is Resubmission.NEW
    assert classify_resubmission(stored_hash, event_hash(again)) is Resubmission.DUPLICATE
    assert classify_resubmission(stored_hash, event_hash(changed)) is Resubmission.CONFLICT
    declaration = declare_error(event, BASE_DECLARATION)
    assert resubmission_key(declaration) != resubmission_key(event) == event.event_id


# ---------------------------------------------------------------------------------------------
# Identity


def test_manufacturer_serial_is_normalised_and_its_namespace_checked() -> None:
    battery = parse_battery_id(
        "MANUFACTURER_SERIAL", f" {C_PRODUCER.lower()} ", "\uff53\uff4e-0001"
    )  # full-width "sn", as a Chinese IME types it
    assert battery == B1
    assert battery.urn == f"urn:greenmesh:battery:mfr:{C_PRODUCER}:SN-0001"
    broken = C_PRODUCER[:-1] + ("0" if C_PRODUCER[-1] != "0" else "1")
    result = validate_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, broken, "SN-1")
    assert IdentityReason.NAMESPACE_CREDIT_CODE in result.reasons
    assert validate_battery_id("MANUFACTURER_SERIAL", "", "SN-1").reasons == (IdentityReason.NAMESPACE_REQUIRED,)
    assert validate_battery_id("MANUFACTURER_SERIAL", C_PRODUCER, "SN 1").reasons == (IdentityReason.ALPHABET,)
    assert validate_battery_id("MANUFACTURER_SERIAL", C_PRODUCER, "X" * 65).reasons == (IdentityReason.LENGTH,)
    assert validate_battery_id("VIN", "", "X").reasons == (IdentityReason.SCHEME,)
    with pytest.raises(InvalidBatteryId) as caught:
        parse_battery_id("MANUFACTURER_SERIAL", "", "")
    assert [v.reason for v in caught.value.violations] == [IdentityReason.NAMESPACE_REQUIRED, IdentityReason.LENGTH]


def test_gbt34014_structure() -> None:
    battery = parse_battery_id(IdentifierScheme.GBT34014, "", GBT_CODE.lower())
    assert battery.value == GBT_CODE and battery.urn == f"urn:greenmesh:battery:gbt34014:{GBT_CODE}"
    fields = split_gbt34014(GBT_CODE)
    assert (fields.manufacturer_code, fields.product_type, fields.battery_type, fields.spec_code) == (
        "03U",
        "P",
        "E",
        "01",
    )
    assert (fields.traceability_code, fields.date_code, fields.serial) == ("000011C", "85A", "00FTY45")
    assert fields.production_date == dt.date(2018, 5, 10)


def corrupt(code: str, position: int, char: str) -> str:
    return code[: position - 1] + char + code[position:]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (GBT_CODE[:-1], IdentityReason.LENGTH),
        (GBT_CODE + "7", IdentityReason.LENGTH),
        (corrupt(GBT_CODE, 9, "-"), IdentityReason.ALPHABET),
        (corrupt(GBT_CODE, 4, "X"), IdentityReason.PRODUCT_TYPE),
        (corrupt(GBT_CODE, 5, "H"), IdentityReason.BATTERY_TYPE),
        (corrupt(GBT_CODE, 15, "O"), IdentityReason.DATE_CODE),  # no year code O
        (corrupt(GBT_CODE, 16, "D"), IdentityReason.DATE_CODE),  # month 13
        (corrupt(corrupt(GBT_CODE, 16, "2"), 17, "U"), IdentityReason.DATE_CODE),  # no day code U
        (corrupt(corrupt(GBT_CODE, 16, "2"), 17, "Y"), IdentityReason.DATE_CODE),  # 30 February
    ],
)
def test_gbt34014_corrupted_codes(code: str, reason: IdentityReason) -> None:
    result = validate_battery_id(IdentifierScheme.GBT34014, "", code)
    assert reason in result.reasons


def test_gbt34014_without_check_character_cannot_see_serial_typos() -> None:
    # GB/T 34014 defines no check character (research note §3.2), so a typo in the serial is a valid code
    assert validate_battery_id(IdentifierScheme.GBT34014, "", corrupt(GBT_CODE, 24, "6")).valid
    assert validate_battery_id(IdentifierScheme.GBT34014, "x", GBT_CODE).reasons == (
        IdentityReason.NAMESPACE_NOT_ALLOWED,
    )
    unverified_date = corrupt(GBT_CODE, 16, "D")
    assert validate_battery_id(IdentifierScheme.GBT34014, "", unverified_date, check_date_code=False).valid


def test_platform_codes_are_issued_valid_and_deterministic_with_a_seed() -> None:
    first = issue_platform_code("32", rng=random.Random(42))
    assert first == issue_platform_code("32", rng=random.Random(42))
    assert re.fullmatch(r"GM32[0-9A-HJKMNP-TV-Z]{13}", first.value)
    assert validate_battery_id(IdentifierScheme.PLATFORM, "", first.value).valid
    assert validate_battery_id(IdentifierScheme.PLATFORM, "", issue_platform_code("44").value).valid
    with pytest.raises(ValueError):
        issue_platform_code("99")


def test_platform_codes_accept_crockford_reading_aids() -> None:
    code = issue_platform_code("32", rng=random.Random(8)).value
    spaced = "-".join([code[:4], code[4:8], code[8:12], code[12:]]).lower()
    aliased = code[:4] + code[4:].replace("0", "O").replace("1", "I")
    assert parse_battery_id(IdentifierScheme.PLATFORM, "", spaced).value == code
    assert parse_battery_id(IdentifierScheme.PLATFORM, "", aliased).value == code


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c[:-1], IdentityReason.LENGTH),
        (lambda c: "XX" + c[2:], IdentityReason.PREFIX),
        (lambda c: c[:2] + "99" + c[4:], IdentityReason.PROVINCE),
        (lambda c: c[:6] + "U" + c[7:], IdentityReason.ALPHABET),
    ],
)
def test_platform_code_structure(change: Callable[[str], str], reason: IdentityReason) -> None:
    code = issue_platform_code("32", rng=random.Random(11)).value
    assert reason in validate_battery_id(IdentifierScheme.PLATFORM, "", change(code)).reasons


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=4, max_value=16), st.data())
@settings(max_examples=200, deadline=None)
def test_platform_check_catches_every_single_substitution(seed: int, position: int, data: st.DataObject) -> None:
    code = issue_platform_code("32", rng=random.Random(seed)).value
    replacement = data.draw(st.sampled_from([c for c in PLATFORM_ALPHABET if c != code[position]]))
    corrupted = code[:position] + replacement + code[position + 1 :]
    result = validate_battery_id(IdentifierScheme.PLATFORM, "", corrupted)
    assert not result.valid


def test_platform_check_catches_most_adjacent_transpositions() -> None:
    rng = random.Random(3)
    caught = total = 0
    for _ in range(300):
        code = issue_platform_code("32", rng=rng).value
        for i in range(4, 16):
            if code[i] == code[i + 1]:
                continue
            swapped = code[:i] + code[i + 1] + code[i] + code[i + 2 :]
            total += 1
            caught += not validate_battery_id(IdentifierScheme.PLATFORM, "", swapped).valid
    assert caught / total > 0.95


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64))
@settings(max_examples=200, deadline=None)
def test_urn_round_trip(serial: str) -> None:
    battery = parse_battery_id(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, serial)
    assert parse_urn(battery.urn) == battery
    assert battery.urn.count(":") == 5


def test_urns_of_every_scheme() -> None:
    for battery in (B1, parse_battery_id("GBT34014", "", GBT_CODE), issue_platform_code("32", rng=random.Random(2))):
        assert parse_urn(battery.urn) == battery
    with pytest.raises(ValueError):
        parse_urn("urn:other:battery:x")
    with pytest.raises(ValueError):
        parse_urn("urn:greenmesh:battery:mfr:only-namespace")


def test_battery_id_violations_require_the_normalised_form() -> None:
    assert battery_id_violations("b", B1) == []
    raw = BatteryId(IdentifierScheme.MANUFACTURER_SERIAL, C_PRODUCER, "sn-0001")
    assert [v.description for v in battery_id_violations("b", raw)] == [f"not in normalised form; expected {B1.urn}"]


# ---------------------------------------------------------------------------------------------
# A larger replay stays fast


def test_replay_of_a_thousand_battery_shipment_is_fast() -> None:
    batteries = [issue_platform_code("32", rng=random.Random(i)) for i in range(1000)]
    events = at_recycler(batteries)
    result: Replay = replay(events, DIRECTORY, judge=make_judge())
    assert {s.state for s in result.states.values()} == {CustodyState.AT_RECYCLER}
    assert not any(s.hits for s in result.trail)
