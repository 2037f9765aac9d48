"""Reporting over gRPC: duplicates and conflicts, batches (ROLLBACK and PROCEED), the upload stream, rules that
reject or quarantine (with their rule ids), corrections, releases, queries and subscriptions, and who may call."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from meshkit.caller import Caller
from meshkit.errors import error_reason, field_violations
from services.registry.domain.credit_code import make_credit_code
from tests.flows.conftest import CN, Flows, Network, Party, event, new_event_id, ts
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


async def rejected(flows: Flows, method: str, request: object, caller: Caller) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await flows.call(method, request, caller)
    return raised.value


async def state_of(flows: Flows, battery: fpb.BatteryRef) -> str:
    got = await flows.call("GetBattery", fpb.GetBatteryRequest(battery_ref=battery))
    return fpb.CustodyState.Name(got.state.state).removeprefix("CUSTODY_STATE_")


async def event_count(flows: Flows, **filters: object) -> int:
    reply = await flows.call("QueryEvents", fpb.QueryEventsRequest(page_size=500, **filters))  # type: ignore[arg-type]
    return len(reply.events)


async def collected(flows: Flows, n: Network, battery: fpb.BatteryRef, day: float = 0) -> None:
    """Commissioned, sold and collected at the listed outlet (waste from then on)."""
    steps: list[tuple[fpb.FlowEvent, Party]] = [
        (
            event(
                fpb.BIZ_STEP_COMMISSIONING, n.producer, [battery], at(day - 30),
                model_id=n.model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
            ),
            n.producer,
        ),
        (event(fpb.BIZ_STEP_RETAIL_SELLING, n.producer, [battery], at(day - 29)), n.producer),
        (
            event(fpb.BIZ_STEP_COLLECTING, n.outlet, [battery], at(day), collection_mode=fpb.COLLECTION_MODE_DROP_OFF),
            n.outlet,
        ),
    ]  # fmt: skip
    for message, party in steps:
        result = await flows.report(message, party.caller)
        assert result.outcome == fpb.EVENT_OUTCOME_ACCEPTED, result


# ---- duplicates, conflicts, batches ------------------------------------------------------------


async def test_the_same_event_again_is_duplicate_and_other_content_is_a_conflict(
    flows: Flows, network: Network
) -> None:
    battery = network.serial()
    message = event(
        fpb.BIZ_STEP_COMMISSIONING, network.producer, [battery], at(0),
        model_id=network.model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
    )  # fmt: skip
    first = await flows.report(message, network.producer.caller)
    second = await flows.report(message, network.producer.caller)
    assert first.outcome == fpb.EVENT_OUTCOME_ACCEPTED and second.outcome == fpb.EVENT_OUTCOME_DUPLICATE
    assert first.event_hash == second.event_hash
    changed = fpb.FlowEvent()
    changed.CopyFrom(message)
    changed.event_time.CopyFrom(ts(at(0.5)))
    conflict = await rejected(flows, "ReportEvent", fpb.ReportEventRequest(event=changed), network.producer.caller)
    assert conflict.code() is grpc.StatusCode.ALREADY_EXISTS
    assert await event_count(flows) == 1

    # In a batch the conflict is a per-event result.
    reply = await flows.call(
        "ReportEvents",
        fpb.ReportEventsRequest(events=[message, changed], error_behaviour=fpb.ERROR_BEHAVIOUR_PROCEED),
        network.producer.caller,
    )
    assert [r.outcome for r in reply.results] == [fpb.EVENT_OUTCOME_DUPLICATE, fpb.EVENT_OUTCOME_CONFLICT]


async def test_rollback_stores_nothing_when_one_event_is_bad_and_proceed_stores_the_rest(
    flows: Flows, network: Network
) -> None:
    good = [
        event(
            fpb.BIZ_STEP_COMMISSIONING, network.producer, [network.serial()], at(0),
            model_id=network.model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
        )
        for _ in range(3)
    ]  # fmt: skip
    bad = fpb.FlowEvent()
    bad.CopyFrom(good[0])
    bad.event_id = new_event_id()
    bad.batteries[0].value = network.serial().value
    bad.event_time_zone_offset = "Beijing"  # not an offset
    batch = [good[0], bad, good[1], good[2]]

    reply = await flows.call(
        "ReportEvents",
        fpb.ReportEventsRequest(events=batch, error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK),
        network.producer.caller,
    )
    assert reply.rolled_back
    assert [r.outcome for r in reply.results] == [
        fpb.EVENT_OUTCOME_NOT_STORED,
        fpb.EVENT_OUTCOME_REJECTED,
        fpb.EVENT_OUTCOME_NOT_STORED,
        fpb.EVENT_OUTCOME_NOT_STORED,
    ]
    assert [p.field for p in reply.results[1].field_problems] == ["event.event_time_zone_offset"]
    assert await event_count(flows) == 0
    missing = await rejected(flows, "GetBattery", fpb.GetBatteryRequest(battery_ref=good[0].batteries[0]), PLATFORM)
    assert missing.code() is grpc.StatusCode.NOT_FOUND

    reply = await flows.call(
        "ReportEvents",
        fpb.ReportEventsRequest(events=batch, error_behaviour=fpb.ERROR_BEHAVIOUR_PROCEED),
        network.producer.caller,
    )
    assert not reply.rolled_back
    assert [r.outcome for r in reply.results].count(fpb.EVENT_OUTCOME_ACCEPTED) == 3
    assert await event_count(flows) == 3


async def test_a_later_event_in_a_batch_sees_the_state_left_by_an_earlier_one(flows: Flows, network: Network) -> None:
    battery = network.serial()
    n = network
    events = [
        event(
            fpb.BIZ_STEP_COMMISSIONING, n.producer, [battery], at(0),
            model_id=n.model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
        ),
        event(fpb.BIZ_STEP_SHIPPING, n.producer, [battery], at(1), destination_facility_id=n.dealer.site),
    ]  # fmt: skip
    reply = await flows.call("ReportEvents", fpb.ReportEventsRequest(events=events), n.producer.caller)
    assert [r.outcome for r in reply.results] == [fpb.EVENT_OUTCOME_ACCEPTED] * 2
    assert await state_of(flows, battery) == "IN_DISTRIBUTION"


async def test_the_upload_stream_summarises_a_large_file(flows: Flows, network: Network) -> None:
    batteries = [network.serial() for _ in range(1_100)]
    messages = [
        event(
            fpb.BIZ_STEP_COMMISSIONING, network.producer, [b], at(0),
            model_id=network.model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
        )
        for b in batteries
    ]  # fmt: skip
    messages[700].event_time_zone_offset = ""  # one bad line
    messages.append(messages[5])  # one repeated line

    async def lines() -> AsyncIterator[fpb.UploadEventsRequest]:
        for message in messages:
            yield fpb.UploadEventsRequest(event=message)

    summary = await flows.stub.UploadEvents(
        lines(), metadata=tuple(network.producer.caller.metadata(flows.key)), timeout=60
    )
    assert (summary.received, summary.accepted, summary.duplicates, summary.rejected) == (1_101, 1_099, 1, 1)
    assert [p.event_id for p in summary.problems] == [messages[700].event_id]


# ---- rules over gRPC --------------------------------------------------------------------------


async def test_waste_going_back_to_a_dealer_is_refused_as_refurbishment_and_alerted(
    flows: Flows, network: Network
) -> None:
    battery = network.serial()
    await collected(flows, network, battery)
    to_dealer = event(
        fpb.BIZ_STEP_SHIPPING, network.outlet, [battery], at(1), destination_facility_id=network.dealer.site
    )
    error = await rejected(flows, "ReportEvent", fpb.ReportEventRequest(event=to_dealer), network.outlet.caller)
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "FLOW-001-REFURBISHMENT"
    assert await state_of(flows, battery) == "COLLECTED"  # nothing stored
    assert await event_count(flows, battery=battery) == 3

    alerts = await flows.call("ListAlerts", fpb.ListAlertsRequest(kind=fpb.ALERT_KIND_RULE_HIT), JIANGSU_REGULATOR)
    assert [(a.rule_id, a.severity) for a in alerts.alerts] == [("FLOW-001-REFURBISHMENT", fpb.SEVERITY_CRITICAL)]
    assert alerts.alerts[0].county_code == "320102"
    elsewhere = await flows.call("ListAlerts", fpb.ListAlertsRequest(), GUANGDONG_REGULATOR)
    assert list(elsewhere.alerts) == []


async def test_rejecting_rules_answer_failed_precondition_with_their_rule_id(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    await collected(flows, n, battery)
    cases = [
        # FLOW-002: waste to an outlet that is not listed
        (
            event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery], at(1), destination_facility_id=n.unlisted_outlet.site),
            n.outlet,
            "FLOW-002-DESTINATION-NOT-ALLOWED",
        ),
        # FLOW-015: a report at someone else's facility
        (event(fpb.BIZ_STEP_STORING, n.outlet, [battery], at(1), facility_id=n.storage.site), n.outlet,
         "FLOW-015-FACILITY-NOT-OPERATED"),
        # FLOW-013: a serial under a namespace nobody registered
        (
            event(
                fpb.BIZ_STEP_COLLECTING, n.outlet,
                [fpb.BatteryRef(scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL,
                                namespace=make_credit_code("320102", seed=424242), value="X1")],
                at(1), collection_mode=fpb.COLLECTION_MODE_DROP_OFF,
            ),
            n.outlet,
            "FLOW-013-UNREGISTERED-NAMESPACE",
        ),
        # FLOW-014: only producers commission
        (
            event(fpb.BIZ_STEP_COMMISSIONING, n.outlet, [n.serial()], at(1), model_id=n.model_id,
                  production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC))),
            n.outlet,
            "FLOW-014-COMMISSIONING-NOT-PRODUCER",
        ),
    ]  # fmt: skip
    for message, party, rule_id in cases:
        error = await rejected(flows, "ReportEvent", fpb.ReportEventRequest(event=message), party.caller)
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, rule_id), error.details()
    assert await event_count(flows) == 3


async def test_events_after_recycling_are_refused_and_future_events_are_invalid(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    await collected(flows, n, battery)
    steps = [
        (event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery], at(1), destination_facility_id=n.recycler.site), n.outlet),
        (event(fpb.BIZ_STEP_RECEIVING, n.recycler, [battery], at(2)), n.recycler),
        (event(fpb.BIZ_STEP_RECYCLING, n.recycler, [battery], at(3)), n.recycler),
    ]
    for message, party in steps:
        assert (await flows.report(message, party.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    after = event(fpb.BIZ_STEP_SHIPPING, n.recycler, [battery], at(4), destination_facility_id=n.storage.site)
    error = await rejected(flows, "ReportEvent", fpb.ReportEventRequest(event=after), n.recycler.caller)
    assert error_reason(error) == "FLOW-008-AFTER-FINAL-STATE"

    future = event(fpb.BIZ_STEP_STORING, n.outlet, [n.serial()], dt.datetime.now(dt.UTC) + dt.timedelta(days=2))
    error = await rejected(flows, "ReportEvent", fpb.ReportEventRequest(event=future), n.outlet.caller)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(error)] == ["event.event_time"]


async def test_quarantining_rules_store_the_event_quarantine_the_battery_and_a_regulator_releases_it(
    flows: Flows, network: Network
) -> None:
    n = network
    battery = n.serial()
    await collected(flows, n, battery)
    # FLOW-004: the storage operator ships a battery the outlet holds.
    conflict = event(fpb.BIZ_STEP_SHIPPING, n.storage, [battery], at(1), destination_facility_id=n.sorter.site)
    result = await flows.report(conflict, n.storage.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_QUARANTINED
    assert "FLOW-004-CUSTODY-CONFLICT" in [h.rule_id for h in result.rule_hits]
    assert await state_of(flows, battery) == "QUARANTINED"
    alerts = await flows.call("ListAlerts", fpb.ListAlertsRequest(kind=fpb.ALERT_KIND_RULE_HIT), PLATFORM)
    assert [a.rule_id for a in alerts.alerts] == ["FLOW-004-CUSTODY-CONFLICT"]

    # FLOW-005: a receipt at the sorting centre that answers no shipment to it.
    orphan = n.serial()
    await collected(flows, n, orphan)
    result = await flows.report(event(fpb.BIZ_STEP_RECEIVING, n.sorter, [orphan], at(2)), n.sorter.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_QUARANTINED
    assert result.rule_hits[0].rule_id == "FLOW-005-ORPHAN-RECEIPT"

    # Only a regulator of the region (or the platform) releases, with a note.
    release = fpb.ReleaseQuarantineRequest(battery_ref=battery, note="the outlet handed the battery over on paper")
    denied = await rejected(flows, "ReleaseQuarantine", release, n.outlet.caller)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    outside = await rejected(flows, "ReleaseQuarantine", release, GUANGDONG_REGULATOR)
    assert outside.code() is grpc.StatusCode.PERMISSION_DENIED
    released = await flows.call("ReleaseQuarantine", release, JIANGSU_REGULATOR)
    assert fpb.CustodyState.Name(released.state.state) == "CUSTODY_STATE_IN_TRANSIT_REVERSE"
    again = await rejected(flows, "ReleaseQuarantine", release, JIANGSU_REGULATOR)
    assert error_reason(again) == "NOT_QUARANTINED"


async def test_weight_shipped_and_received_must_agree_within_tolerance(flows: Flows, network: Network) -> None:
    n = network
    manifest = [fpb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id="ZY-77")]
    kilograms = [fpb.QuantityElement(product_class="waste_ebike_lib", quantity=100, unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)]
    intake = event(
        fpb.BIZ_STEP_COLLECTING, n.outlet, [], at(0), quantities=kilograms, collection_mode=fpb.COLLECTION_MODE_DROP_OFF
    )
    assert (await flows.report(intake, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    shipped = event(
        fpb.BIZ_STEP_SHIPPING, n.outlet, [], at(1), quantities=kilograms,
        destination_facility_id=n.storage.site, business_transactions=manifest, disposition=fpb.DISPOSITION_WASTE,
    )  # fmt: skip
    assert (await flows.report(shipped, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    short = [fpb.QuantityElement(product_class="waste_ebike_lib", quantity=90, unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)]
    received = event(
        fpb.BIZ_STEP_RECEIVING, n.storage, [], at(2), quantities=short,
        source_facility_id=n.outlet.site, business_transactions=manifest,
    )  # fmt: skip
    result = await flows.report(received, n.storage.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_QUARANTINED
    assert [h.rule_id for h in result.rule_hits] == ["FLOW-007-QUANTITY-MISMATCH"]
    # A second receipt of the same shipment: FLOW-006.
    again = event(
        fpb.BIZ_STEP_RECEIVING, n.storage, [], at(3), quantities=kilograms,
        source_facility_id=n.outlet.site, business_transactions=manifest,
    )  # fmt: skip
    result = await flows.report(again, n.storage.caller)
    assert "FLOW-006-DOUBLE-RECEIPT" in [h.rule_id for h in result.rule_hits]


# ---- corrections ------------------------------------------------------------------------------


async def test_error_declarations_recompute_the_state_without_rewriting_history(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    await collected(flows, n, battery)
    wrong = event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery], at(1), destination_facility_id=n.sorter.site)
    assert (await flows.report(wrong, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    assert await state_of(flows, battery) == "IN_TRANSIT_REVERSE"

    # It went to the storage point instead: report the corrective event, then declare the wrong one.
    right = event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery], at(1), destination_facility_id=n.storage.site)
    right_result = await flows.report(right, n.outlet.caller)
    assert right_result.outcome in (fpb.EVENT_OUTCOME_ACCEPTED, fpb.EVENT_OUTCOME_QUARANTINED)
    declare = fpb.DeclareErrorRequest(
        event_id=wrong.event_id,
        reason=fpb.ERROR_REASON_INCORRECT_DATA,
        corrective_event_ids=[right.event_id],
        explanation="wrong destination typed",
    )
    denied = await rejected(flows, "DeclareError", declare, n.storage.caller)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    reply = await flows.call("DeclareError", declare, n.outlet.caller)
    assert [fpb.CustodyState.Name(s.state) for s in reply.recomputed] == ["CUSTODY_STATE_IN_TRANSIT_REVERSE"], reply
    received = event(fpb.BIZ_STEP_RECEIVING, n.storage, [battery], at(2), source_facility_id=n.outlet.site)
    assert (await flows.report(received, n.storage.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    assert await state_of(flows, battery) == "IN_TEMP_STORAGE"

    trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
    declared = [s for s in trace.steps if s.declared_in_error]
    assert [s.event.event_id for s in declared] == [wrong.event_id]  # still in the trace, not applied
    assert len(trace.steps) == 6
    twice = await rejected(flows, "DeclareError", declare, n.outlet.caller)
    assert error_reason(twice) == "ALREADY_DECLARED"
    listed = await flows.call("QueryEvents", fpb.QueryEventsRequest(battery=battery, page_size=10))
    by_id = {e.event_id: e for e in listed.events}
    assert by_id[wrong.event_id].error_declaration.reason == fpb.ERROR_REASON_INCORRECT_DATA

    # Did not occur: the collection is withdrawn and the battery is back in use.
    other = n.serial()
    await collected(flows, n, other)
    history = await flows.call("QueryEvents", fpb.QueryEventsRequest(battery=other, page_size=10))
    collecting = next(e for e in history.events if e.biz_step == fpb.BIZ_STEP_COLLECTING)
    await flows.call(
        "DeclareError",
        fpb.DeclareErrorRequest(event_id=collecting.event_id, reason=fpb.ERROR_REASON_DID_NOT_OCCUR),
        n.outlet.caller,
    )
    assert await state_of(flows, other) == "IN_USE"
    missing = await rejected(
        flows,
        "DeclareError",
        fpb.DeclareErrorRequest(
            event_id=history.events[0].event_id,
            reason=fpb.ERROR_REASON_INCORRECT_DATA,
            corrective_event_ids=[new_event_id()],
        ),
        n.producer.caller,
    )
    assert error_reason(missing) == "CORRECTIVE_EVENT_NOT_FOUND"


# ---- queries, subscriptions, access -----------------------------------------------------------


async def test_queries_filter_and_page_and_subscriptions_resume(flows: Flows, network: Network) -> None:
    n = network
    batteries = [n.serial() for _ in range(5)]
    for battery in batteries:
        await collected(flows, n, battery)
    collecting = await flows.call(
        "QueryEvents", fpb.QueryEventsRequest(biz_steps=[fpb.BIZ_STEP_COLLECTING], division_prefix="3201", page_size=2)
    )
    seen = list(collecting.events)
    token = collecting.next_page_token
    while token:
        page = await flows.call(
            "QueryEvents",
            fpb.QueryEventsRequest(
                biz_steps=[fpb.BIZ_STEP_COLLECTING], division_prefix="3201", page_size=2, page_token=token
            ),
        )
        seen += page.events
        token = page.next_page_token
    assert len(seen) == 5 and all(e.county_code == "320102" for e in seen)
    other_filter = await rejected(
        flows, "QueryEvents", fpb.QueryEventsRequest(page_size=2, page_token=collecting.next_page_token), PLATFORM
    )
    assert other_filter.code() is grpc.StatusCode.INVALID_ARGUMENT
    # An enterprise sees its part of the log: here what the outlet reported (the producer's events are elsewhere).
    own = await flows.call("QueryEvents", fpb.QueryEventsRequest(page_size=100), n.outlet.caller)
    assert {e.reporter_id for e in own.events} == {n.outlet.id}

    # Subscribe from the start, get everything so far, then a new event as it is recorded.
    stream = flows.stub.SubscribeEvents(
        fpb.SubscribeEventsRequest(resume_token="0", biz_steps=[fpb.BIZ_STEP_COLLECTING]),
        metadata=tuple(PLATFORM.metadata(flows.key)),
        timeout=30,
    )
    received = [await next_item(stream) for _ in range(5)]
    assert len({r.event.event_id for r in received}) == 5
    late = n.serial()
    reporting = asyncio.create_task(collected(flows, n, late))
    newest = await next_item(stream)
    await reporting
    assert newest.event.batteries[0].value == late.value
    stream.cancel()
    resumed = flows.stub.SubscribeEvents(
        fpb.SubscribeEventsRequest(resume_token=received[-1].resume_token, biz_steps=[fpb.BIZ_STEP_COLLECTING]),
        metadata=tuple(PLATFORM.metadata(flows.key)),
        timeout=30,
    )
    assert (await next_item(resumed)).event.event_id == newest.event.event_id
    resumed.cancel()


async def next_item(stream: Any) -> fpb.SubscribeEventsResponse:
    item = await stream.read()
    assert isinstance(item, fpb.SubscribeEventsResponse), item
    return item


async def test_who_may_call(flows: Flows, network: Network) -> None:
    n = network
    anonymous = await rejected(
        flows, "ReportEvent", fpb.ReportEventRequest(event=event(fpb.BIZ_STEP_STORING, n.outlet, [], at(0))), Caller()
    )
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    for method, request in (
        ("ListAlerts", fpb.ListAlertsRequest()),
        ("ReleaseQuarantine", fpb.ReleaseQuarantineRequest(battery_ref=n.serial(), note="x")),
        (
            "GetDispatchStatistics",
            fpb.GetDispatchStatisticsRequest(division_code="32", period_start=ts(at(0)), period_end=ts(at(30))),
        ),
    ):
        denied = await rejected(flows, method, request, n.outlet.caller)
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED, method
    model = await rejected(
        flows, "RegisterBatteryModel", fpb.RegisterBatteryModelRequest(model=fpb.BatteryModel()), n.outlet.caller
    )
    assert model.code() is grpc.StatusCode.PERMISSION_DENIED
    bad_model = await rejected(
        flows, "RegisterBatteryModel", fpb.RegisterBatteryModelRequest(model=fpb.BatteryModel()), n.producer.caller
    )
    assert {v.field for v in field_violations(bad_model)} >= {"model.model_code", "model.chemistry", "model.mass_kg"}
    codes = await flows.call("IssuePlatformCodes", fpb.IssuePlatformCodesRequest(count=3), n.outlet.caller)
    assert len({b.value for b in codes.batteries}) == 3
    assert all(b.scheme == fpb.IDENTIFIER_SCHEME_PLATFORM for b in codes.batteries)
    rules = await flows.call("ListRules", fpb.ListRulesRequest(), n.outlet.caller)
    assert len(rules.rules) == 16 and rules.rules[0].rule_id == "FLOW-001-REFURBISHMENT"
