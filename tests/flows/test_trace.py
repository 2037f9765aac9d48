"""A battery's trace (services/flows/trace.py): which rule hits each step shows, and that the trace served over
gRPC is the replay of the battery's stored history (one statement: store.battery_history), whether it was
replayed or read from the states its capture recorded (store.read_trace_source)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import grpc
import pytest
from sqlalchemy import update

from greenmesh.flows.v1 import flows_pb2 as fpb
from services.flows import store
from services.flows.domain import (
    BatteryId,
    BizStep,
    CustodyState,
    Decision,
    ErrorDeclaration,
    ErrorReason,
    FlowEvent,
    RuleConfig,
    RuleHit,
    declare_error,
    make_judge,
    replay,
)
from services.flows.domain.rules import RULES_BY_ID
from services.flows.mapping import battery_ref_from_proto, custody_state_to_proto, event_to_proto
from services.flows.tables import EventBatteryRow
from services.flows.trace import battery_trace, needs_rejudging
from tests.flows.conftest import Flows, Network, event
from tests.flows.test_flows_domain import B1, DIRECTORY, NOW, at_sorting, capture, collected, ev, happy_path
from tests.flows.test_flows_e2e import whole_life
from tests.flows.test_flows_reporting import at
from tests.flows.test_flows_reporting import collected as collected_over_grpc
from tests.registry.conftest import JIANGSU_REGULATOR

CONFIG = RuleConfig()
Line = tuple[str, int, int, list[str], bool]  # a trace step: event id, states before and after, rule ids, declared


def history_of(events: Sequence[FlowEvent], hits: Mapping[str, Sequence[RuleHit]]) -> store.BatteryHistory:
    """What store.battery_history reads for ``events`` (capture order, declarations last) captured with ``hits``."""
    history = store.BatteryHistory()
    for seq, e in enumerate(events, 1):
        history.events.append(e)
        if e.error_declaration is not None:
            continue
        facility = DIRECTORY.facility(e.facility_id)
        county = facility.county_code if facility else ""
        outcome = "QUARANTINED" if hits.get(e.event_id) else "ACCEPTED"
        number = fpb.EventOutcome.Value(f"EVENT_OUTCOME_{outcome}")
        message = event_to_proto(e, event_hash=f"ni:///sha-256;{seq}", outcome=number, county_code=county)
        history.recorded_hits[e.event_id] = list(hits.get(e.event_id, ()))
        history.seq_of[e.event_id] = seq
        history.rows[e.event_id] = store.StoredEvent(
            seq, e.event_id, message.event_hash, outcome, county, facility.facility_type if facility else "", message
        )
    return history


def rejudged(history: store.BatteryHistory) -> list[Line]:
    """The trail of B1 when every step is re-judged (what the trace showed before recorded hits were used)."""
    result = replay(history.events, DIRECTORY, judge=make_judge(CONFIG, recorded_hits=history.recorded_hits))
    return [
        (
            s.event.event_id,
            custody_state_to_proto(s.state_before),
            custody_state_to_proto(s.state_after),
            [h.rule_id for h in s.hits],
            s.declared_in_error,
        )
        for s in result.trail_of(B1)
    ]


def lines(trace: fpb.GetBatteryTraceResponse) -> list[Line]:
    return [
        (s.event.event_id, s.state_before, s.state_after, [h.rule_id for h in s.rule_hits], s.declared_in_error)
        for s in trace.steps
    ]


def test_only_a_declaration_or_a_late_event_makes_the_trace_rejudge() -> None:
    events = happy_path()
    assert not needs_rejudging(events)
    assert needs_rejudging([*events, declare_error(events[3], ErrorDeclaration(NOW, ErrorReason.DID_NOT_OCCUR))])
    late = ev(BizStep.SORTING, "p-outlet", "f-store", 3.5)
    assert needs_rejudging([*events[:5], late])  # captured after the event of hour 4, applied before it
    assert not needs_rejudging([*events[:4], late])


def test_a_trace_in_capture_order_shows_the_capture_time_hits_and_agrees_with_rejudging() -> None:
    # FLOW-004: the sorting centre ships a battery the outlet holds (quarantined).
    events = [*collected(), ev(BizStep.SHIPPING, "p-sorter", "f-sort", 3, destination_facility_id="f-recycler")]
    _, hits = capture(events)
    history = history_of(events, {e.event_id: h for e, h in zip(events, hits, strict=True)})
    trace = battery_trace(history, DIRECTORY, CONFIG, B1)
    assert lines(trace) == rejudged(history)
    conflict = trace.steps[-1]
    assert [h.rule_id for h in conflict.rule_hits] == ["FLOW-004-CUSTODY-CONFLICT"]
    assert [h.rule_id for h in conflict.event.rule_hits] == ["FLOW-004-CUSTODY-CONFLICT"]
    assert conflict.state_after == fpb.CUSTODY_STATE_QUARANTINED
    assert conflict.event.outcome == fpb.EVENT_OUTCOME_QUARANTINED
    assert trace.state.state == fpb.CUSTODY_STATE_QUARANTINED
    assert trace.state.quarantine_rule_ids == ["FLOW-004-CUSTODY-CONFLICT"]
    # each step's event is the stored message plus the step's hits
    stored = history.rows[conflict.event.event_id].message
    assert conflict.event.event_hash == stored.event_hash and conflict.county_code == "320111"
    assert conflict.facility_type == "REGIONAL_SORTING_CENTER"


def test_a_trace_shows_what_the_capture_decided_even_where_rejudging_would_not() -> None:
    # The capture saw more than a replay of one battery does (the matched shipment of a receipt by quantity, the
    # full states of the event's other batteries): its hits decided the event's outcome and the stored state.
    events = at_sorting()
    receipt = events[-1]
    rule = RULES_BY_ID["FLOW-006-DOUBLE-RECEIPT"]
    recorded = RuleHit(rule.rule_id, rule.severity, Decision.QUARANTINE, "the shipment was already received", None)
    history = history_of(events, {receipt.event_id: [recorded]})
    trace = battery_trace(history, DIRECTORY, CONFIG, B1)
    assert [h.rule_id for h in trace.steps[-1].rule_hits] == ["FLOW-006-DOUBLE-RECEIPT"]
    assert trace.steps[-1].event.outcome == fpb.EVENT_OUTCOME_QUARANTINED
    assert trace.state.state == fpb.CUSTODY_STATE_QUARANTINED
    assert rejudged(history)[-1][3] == []  # a re-judging replay would contradict the stored outcome


def test_a_declared_event_makes_the_trace_rejudge_the_stream() -> None:
    events = at_sorting()
    shipping, receipt = events[-2], events[-1]
    _, hits = capture(events)
    declared = declare_error(shipping, ErrorDeclaration(NOW, ErrorReason.DID_NOT_OCCUR))
    history = history_of([*events, declared], {e.event_id: h for e, h in zip(events, hits, strict=True)})
    trace = battery_trace(history, DIRECTORY, CONFIG, B1)
    assert lines(trace) == rejudged(history)
    by_id = {s.event.event_id: s for s in trace.steps}
    assert by_id[shipping.event_id].declared_in_error and not by_id[shipping.event_id].rule_hits
    assert by_id[shipping.event_id].state_after == by_id[shipping.event_id].state_before
    # without the shipment the receipt answers nothing: a hit the capture could not have seen
    assert [h.rule_id for h in by_id[receipt.event_id].rule_hits] == ["FLOW-005-ORPHAN-RECEIPT"]
    assert trace.state.state == fpb.CUSTODY_STATE_QUARANTINED


# ---- over gRPC, on SQLite and PostgreSQL -----------------------------------------------------------


async def reference(flows: Flows, battery: BatteryId) -> tuple[list[Line], int]:
    """The battery's trail re-judged from its stored history, and its final state."""
    async with flows.runtime.database.session() as session:
        history = await store.battery_history(session, [battery.urn])
    result = replay(
        history.events,
        flows.directory,
        judge=make_judge(CONFIG, recorded_hits=history.recorded_hits),
        releases=history.releases,
    )
    trail: list[Line] = [
        (
            s.event.event_id,
            custody_state_to_proto(s.state_before),
            custody_state_to_proto(s.state_after),
            [h.rule_id for h in s.hits],
            s.declared_in_error,
        )
        for s in result.trail_of(battery)
    ]
    return trail, int(custody_state_to_proto(result.state(battery).state))


async def test_the_served_trace_is_the_replay_of_the_stored_history(flows: Flows, network: Network) -> None:
    n = network
    quarantined, corrected = n.serial(), n.serial()

    # Quarantined by FLOW-004, released by the regulator, then on its way: recorded hits, in capture order.
    await collected_over_grpc(flows, n, quarantined)
    conflict = event(fpb.BIZ_STEP_SHIPPING, n.storage, [quarantined], at(1), destination_facility_id=n.sorter.site)
    assert (await flows.report(conflict, n.storage.caller)).outcome == fpb.EVENT_OUTCOME_QUARANTINED
    release = fpb.ReleaseQuarantineRequest(battery_ref=quarantined, note="handed over on paper")
    await flows.call("ReleaseQuarantine", release, JIANGSU_REGULATOR)
    received = event(fpb.BIZ_STEP_RECEIVING, n.sorter, [quarantined], at(2), source_facility_id=n.storage.site)
    await flows.report(received, n.sorter.caller)

    # A late event and a declaration in error: the trace re-judges, as the stored state was recomputed.
    await collected_over_grpc(flows, n, corrected, day=3)
    discharged = event(fpb.BIZ_STEP_DISCHARGING, n.outlet, [corrected], at(4.5))
    assert (await flows.report(discharged, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    late = event(fpb.BIZ_STEP_SORTING, n.outlet, [corrected], at(3.5))
    assert (await flows.report(late, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_QUARANTINED  # FLOW-011
    wrong = event(fpb.BIZ_STEP_SHIPPING, n.outlet, [corrected], at(5), destination_facility_id=n.sorter.site)
    assert (await flows.report(wrong, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    declare = fpb.DeclareErrorRequest(event_id=wrong.event_id, reason=fpb.ERROR_REASON_DID_NOT_OCCUR)
    await flows.call("DeclareError", declare, n.outlet.caller)

    for ref, steps in ((quarantined, 5), (corrected, 6)):
        battery, _ = battery_ref_from_proto(ref, "battery_ref")
        assert battery is not None
        trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=ref), JIANGSU_REGULATOR)
        trail, state = await reference(flows, battery)
        assert len(trace.steps) == steps
        assert lines(trace) == trail
        assert trace.state.state == state
        got = await flows.call("GetBattery", fpb.GetBatteryRequest(battery_ref=ref))
        assert got.state.state == trace.state.state  # the trace agrees with the stored state

    trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=quarantined))
    conflict_step = next(s for s in trace.steps if s.event.event_id == conflict.event_id)
    assert [h.rule_id for h in conflict_step.rule_hits] == ["FLOW-004-CUSTODY-CONFLICT"]
    assert conflict_step.state_after == fpb.CUSTODY_STATE_QUARANTINED
    assert trace.state.state == custody_state_to_proto(CustodyState.AT_SORTING_CENTER)
    trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=corrected))
    assert [s.event.event_id for s in trace.steps if s.declared_in_error] == [wrong.event_id]


async def test_the_history_brings_the_battery_row_releases_and_declarations(flows: Flows, network: Network) -> None:
    n = network
    battery_ref = n.serial()
    await collected_over_grpc(flows, n, battery_ref)
    battery, _ = battery_ref_from_proto(battery_ref, "battery_ref")
    assert battery is not None
    async with flows.runtime.database.session() as session:
        plain = await store.battery_history(session, [battery.urn])
        full = await store.battery_history(
            session, [battery.urn, "urn:greenmesh:battery:platform:NONE"], with_batteries=True
        )
    assert plain.batteries == {} and list(full.batteries) == [battery.urn]
    row = full.batteries[battery.urn]
    assert (row.state, row.holder_facility_id, row.collected_county) == ("COLLECTED", n.outlet.site, "320102")
    assert [e.event_id for e in full.events] == [e.event_id for e in plain.events] and len(plain.events) == 3
    assert [full.seq_of[e.event_id] for e in full.events] == sorted(full.seq_of.values())
    assert plain.releases == [] and all(e.error_declaration is None for e in plain.events)

    collecting = plain.events[-1]
    await flows.call(
        "DeclareError",
        fpb.DeclareErrorRequest(event_id=collecting.event_id, reason=fpb.ERROR_REASON_DID_NOT_OCCUR),
        n.outlet.caller,
    )
    async with flows.runtime.database.session() as session:
        declared = await store.battery_history(session, [battery.urn])
    assert [e.event_id for e in declared.events] == [*(e.event_id for e in plain.events), collecting.event_id]
    declaration = declared.events[-1].error_declaration
    assert declaration is not None and declaration.reason is ErrorReason.DID_NOT_OCCUR
    assert declared.events[-1] == declare_error(collecting, declaration)


async def test_the_trace_of_an_unknown_battery_is_not_found(flows: Flows, network: Network) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=network.serial()))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def replayed(flows: Flows, battery: BatteryId) -> fpb.GetBatteryTraceResponse:
    """The trace by replaying the battery's stored history (what GetBatteryTrace answers when it cannot read
    the recorded steps)."""
    async with flows.runtime.database.session() as session:
        history = await store.battery_history(session, [battery.urn])
    return battery_trace(history, flows.directory, CONFIG, battery)


async def source_of(flows: Flows, battery: BatteryId) -> store.TraceSource:
    return await flows.runtime.database.read(functools.partial(store.read_trace_source, key=battery.urn))


def key_of(ref: fpb.BatteryRef) -> BatteryId:
    battery, _ = battery_ref_from_proto(ref, "battery_ref")
    assert battery is not None
    return battery


async def test_a_trace_captured_in_order_is_read_from_its_recorded_steps_and_equals_the_replay(
    flows: Flows, network: Network
) -> None:
    n = network
    whole, quarantined, first, second = n.serial(), n.serial(), n.serial(), n.serial()
    for message, reporter in whole_life(n, whole):
        assert (await flows.report(message, reporter.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED  # type: ignore[attr-defined]
    # Quarantined by FLOW-004 (the storage point ships what the outlet holds), never released.
    await collected_over_grpc(flows, n, quarantined)
    conflict = event(fpb.BIZ_STEP_SHIPPING, n.storage, [quarantined], at(1), destination_facility_id=n.sorter.site)
    assert (await flows.report(conflict, n.storage.caller)).outcome == fpb.EVENT_OUTCOME_QUARANTINED
    # Two batteries travelling together: one shipment and one receipt each hold both.
    await collected_over_grpc(flows, n, first)
    await collected_over_grpc(flows, n, second)
    shipped = event(fpb.BIZ_STEP_SHIPPING, n.outlet, [first, second], at(1), destination_facility_id=n.storage.site)
    assert (await flows.report(shipped, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    received = event(fpb.BIZ_STEP_RECEIVING, n.storage, [first, second], at(2), source_facility_id=n.outlet.site)
    assert (await flows.report(received, n.storage.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED

    for ref, steps, final in (
        (whole, 16, CustodyState.RECYCLED),
        (quarantined, 4, CustodyState.QUARANTINED),
        (first, 5, CustodyState.IN_TEMP_STORAGE),
        (second, 5, CustodyState.IN_TEMP_STORAGE),
    ):
        battery = key_of(ref)
        source = await source_of(flows, battery)
        assert source.recorded is not None and source.history is None, battery.urn
        assert len(source.recorded) == steps and source.recorded[-1].state_after is final
        served = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=ref), JIANGSU_REGULATOR)
        assert served == await replayed(flows, battery), battery.urn  # every field of every step, and the state
        assert served.state.state == custody_state_to_proto(final)
    conflict_step = next(
        s for s in (await replayed(flows, key_of(quarantined))).steps if s.event.event_id == conflict.event_id
    )
    assert [h.rule_id for h in conflict_step.rule_hits] == ["FLOW-004-CUSTODY-CONFLICT"]


async def test_a_trace_is_replayed_when_the_recorded_steps_are_not_the_whole_story(
    flows: Flows, network: Network
) -> None:
    n = network
    late, declared, released, unrecorded = n.serial(), n.serial(), n.serial(), n.serial()
    for ref in (late, declared, released, unrecorded):
        await collected_over_grpc(flows, n, ref)
    # A late event: the capture re-judged the battery (a recompute), so the links' states are not the trail.
    await flows.report(event(fpb.BIZ_STEP_DISCHARGING, n.outlet, [late], at(4.5)), n.outlet.caller)
    await flows.report(event(fpb.BIZ_STEP_SORTING, n.outlet, [late], at(3.5)), n.outlet.caller)
    # An event declared in error.
    wrong = event(fpb.BIZ_STEP_SORTING, n.outlet, [declared], at(1))
    await flows.report(wrong, n.outlet.caller)
    declare = fpb.DeclareErrorRequest(event_id=wrong.event_id, reason=fpb.ERROR_REASON_DID_NOT_OCCUR)
    await flows.call("DeclareError", declare, n.outlet.caller)
    # A quarantine released by the regulator.
    conflict = event(fpb.BIZ_STEP_SHIPPING, n.storage, [released], at(1), destination_facility_id=n.sorter.site)
    assert (await flows.report(conflict, n.storage.caller)).outcome == fpb.EVENT_OUTCOME_QUARANTINED
    release = fpb.ReleaseQuarantineRequest(battery_ref=released, note="handed over on paper")
    await flows.call("ReleaseQuarantine", release, JIANGSU_REGULATOR)
    # Links written without a state (as before flows_0005, or by an import from another province).
    link = EventBatteryRow.__table__  # type: ignore[attr-defined]
    async with flows.runtime.database.engine.begin() as connection:
        await connection.execute(
            update(link).where(link.c.battery_key == key_of(unrecorded).urn).values(state_after=None)
        )

    for ref in (late, declared, released, unrecorded):
        battery = key_of(ref)
        source = await source_of(flows, battery)
        assert source.recorded is None and source.history is not None, battery.urn
        served = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=ref), JIANGSU_REGULATOR)
        assert served == await replayed(flows, battery), battery.urn
    # The unrecorded battery's trace is the same as when its links had their states.
    assert [s.state_after for s in served.steps] == [
        custody_state_to_proto(s) for s in (CustodyState.REGISTERED, CustodyState.IN_USE, CustodyState.COLLECTED)
    ]
