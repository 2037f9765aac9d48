"""The single writer of battery state (services.flows.ingest): concurrent single reports are committed together,
yet each gets the answer it would have had alone, and writes never interleave (no lost update of a battery)."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from services.flows.ingest import CaptureQueue
from services.flows.servicer import FlowServicer
from tests.flows.conftest import CN, Flows, Network, event, ts

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)
PRODUCED = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


def queue_of(flows: Flows) -> CaptureQueue:
    servicer = flows.runtime.state["servicer"]
    assert isinstance(servicer, FlowServicer)
    return servicer.captures


def commissioning(network: Network, battery: fpb.BatteryRef, hours: float = 0) -> fpb.FlowEvent:
    return event(
        fpb.BIZ_STEP_COMMISSIONING, network.producer, [battery], T0 + dt.timedelta(hours=hours),
        model_id=network.model_id, production_date=ts(PRODUCED),
    )  # fmt: skip


async def battery_state(flows: Flows, battery: fpb.BatteryRef) -> str:
    got = await flows.call("GetBattery", fpb.GetBatteryRequest(battery_ref=battery))
    return fpb.CustodyState.Name(got.state.state).removeprefix("CUSTODY_STATE_")


async def test_concurrent_reports_share_transactions_and_each_gets_its_own_answer(
    flows: Flows, network: Network
) -> None:
    queue = queue_of(flows)
    batteries = [network.serial() for _ in range(60)]
    messages = [commissioning(network, b) for b in batteries]
    # One report in the crowd is invalid (a future event) and one repeats another's event id with other content.
    future = commissioning(network, network.serial(), hours=24 * 400)
    conflicting = commissioning(network, batteries[0], hours=1)
    conflicting.event_id = messages[0].event_id
    groups_before = queue.groups

    async def report(message: fpb.FlowEvent) -> fpb.EventResult | grpc.StatusCode:
        try:
            return await flows.report(message, network.producer.caller)
        except grpc.aio.AioRpcError as error:
            return error.code()

    answers = await asyncio.gather(*(report(m) for m in [*messages, future, conflicting]))
    accepted = [a for a in answers[:60] if isinstance(a, fpb.EventResult)]
    assert [a.outcome for a in accepted] == [fpb.EVENT_OUTCOME_ACCEPTED] * 60
    assert answers[60] is grpc.StatusCode.INVALID_ARGUMENT
    # Whichever of the two with the same id was captured first is accepted; the other is a conflict.
    assert answers[61] is grpc.StatusCode.ALREADY_EXISTS
    groups = queue.groups - groups_before
    assert 1 <= groups < 60, f"{groups} transactions for 62 concurrent reports: nothing was grouped"
    for battery in batteries[:5]:
        assert await battery_state(flows, battery) == "REGISTERED"
    listed = await flows.call("QueryEvents", fpb.QueryEventsRequest(page_size=500))
    assert len(listed.events) == 60


async def test_concurrent_steps_of_one_battery_are_judged_one_after_the_other(flows: Flows, network: Network) -> None:
    """Selling twice from the same stock: with one writer, exactly one sale finds the battery at the producer;
    the other is judged against the state the first left (already sold), never against a stale one."""
    battery = network.serial()
    first = await flows.report(commissioning(network, battery), network.producer.caller)
    assert first.outcome == fpb.EVENT_OUTCOME_ACCEPTED
    sales = [
        event(fpb.BIZ_STEP_RETAIL_SELLING, network.producer, [battery], T0 + dt.timedelta(days=1, hours=h))
        for h in range(2)
    ]
    batch = fpb.ReportEventsRequest(events=[sales[1]], error_behaviour=fpb.ERROR_BEHAVIOUR_PROCEED)
    unary, batched = await asyncio.gather(
        flows.report(sales[0], network.producer.caller),
        flows.call("ReportEvents", batch, network.producer.caller),
    )
    results = [unary, batched.results[0]]
    # The sale captured second met IN_USE: FLOW-016 quarantines it. Judged against a stale REGISTERED state,
    # both would be ACCEPTED without a hit.
    assert sorted(r.outcome for r in results) == [fpb.EVENT_OUTCOME_ACCEPTED, fpb.EVENT_OUTCOME_QUARANTINED]
    second = next(r for r in results if r.outcome == fpb.EVENT_OUTCOME_QUARANTINED)
    assert "FLOW-016-ILLEGAL-TRANSITION" in [h.rule_id for h in second.rule_hits]
    assert await battery_state(flows, battery) == "QUARANTINED"


@pytest.mark.parametrize("size", [1, 3])
async def test_a_group_whose_transaction_fails_is_retried_report_by_report(
    flows: Flows, network: Network, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected failure of a group's transaction must not fail reports that would have succeeded alone."""
    queue = queue_of(flows)
    poisoned = commissioning(network, network.serial())
    original = queue._capture

    async def failing_when_poisoned(directory, messages, reporter_ids, rollback_on_error):  # type: ignore[no-untyped-def]
        if any(m.event_id == poisoned.event_id for m in messages):
            raise RuntimeError("the database went away")
        return await original(directory, messages, reporter_ids, rollback_on_error)

    monkeypatch.setattr(queue, "_capture", failing_when_poisoned)
    healthy = [commissioning(network, network.serial()) for _ in range(size - 1)]
    answers = await asyncio.gather(
        *(flows.report(m, network.producer.caller) for m in [*healthy, poisoned]), return_exceptions=True
    )
    assert all(isinstance(a, fpb.EventResult) and a.outcome == fpb.EVENT_OUTCOME_ACCEPTED for a in answers[:-1])
    failed = answers[-1]
    assert isinstance(failed, grpc.aio.AioRpcError) and failed.code() is grpc.StatusCode.INTERNAL


async def test_proceed_batches_join_the_group_and_rollback_batches_stay_alone(flows: Flows, network: Network) -> None:
    """Concurrent PROCEED batches share group transactions (each batch's events together and in order, each
    answer the batch's own), as unary reports do; a ROLLBACK batch with a bad event stores nothing and takes no one
    else with it."""
    queue = queue_of(flows)
    producer = network.producer.caller

    def proceed(size: int) -> tuple[fpb.ReportEventsRequest, list[fpb.BatteryRef]]:
        batteries = [network.serial() for _ in range(size)]
        events = [commissioning(network, b) for b in batteries]
        # The batch's second event is the same battery's sale: it must see the commissioning just before it.
        events.insert(1, event(fpb.BIZ_STEP_RETAIL_SELLING, network.producer, [batteries[0]], T0 + dt.timedelta(1)))
        return fpb.ReportEventsRequest(events=events, error_behaviour=fpb.ERROR_BEHAVIOUR_PROCEED), batteries

    batches = [proceed(5) for _ in range(8)]
    bad = commissioning(network, network.serial(), hours=24 * 400)  # in the future: INVALID_ARGUMENT
    rollback_batteries = [network.serial() for _ in range(3)]
    rollback = fpb.ReportEventsRequest(
        events=[*(commissioning(network, b) for b in rollback_batteries), bad],
        error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK,
    )
    groups_before = queue.groups
    answers = await asyncio.gather(
        *(flows.call("ReportEvents", request, producer) for request, _ in batches),
        flows.call("ReportEvents", rollback, producer),
    )
    for (request, _), answer in zip(batches, answers[:8], strict=True):
        assert [r.event_id for r in answer.results] == [e.event_id for e in request.events]
        assert [r.outcome for r in answer.results] == [fpb.EVENT_OUTCOME_ACCEPTED] * 6
        assert not answer.rolled_back
    rolled_back = answers[8]
    assert rolled_back.rolled_back
    assert [r.outcome for r in rolled_back.results][-1] == fpb.EVENT_OUTCOME_REJECTED
    groups = queue.groups - groups_before
    assert 1 <= groups < 8, f"{groups} group transactions for 8 concurrent PROCEED batches: nothing was shared"
    for _request, batteries in batches:
        assert await battery_state(flows, batteries[0]) == "IN_USE"
        assert await battery_state(flows, batteries[1]) == "REGISTERED"
    for battery in rollback_batteries:
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await battery_state(flows, battery)
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
