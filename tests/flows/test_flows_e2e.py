"""A battery's whole life over gRPC, against real NATS, a real registry and SQLite or PostgreSQL: commissioning,
sale, trade-in at an outlet, a temporary storage point, a sorting centre and a recycler; then its trace."""

from __future__ import annotations

import datetime as dt

from greenmesh.flows.v1 import flows_pb2 as fpb
from tests.flows.conftest import CN, Flows, Network, event, ts

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)


def hours(n: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=n)


def whole_life(network: Network, battery: fpb.BatteryRef) -> list[tuple[fpb.FlowEvent, object]]:
    """(event, reporting party) from commissioning to recycling."""
    n = network
    manifest = [fpb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id="ZY-2026-0001")]
    return [
        (
            event(
                fpb.BIZ_STEP_COMMISSIONING,
                n.producer,
                [battery],
                hours(0),
                model_id=n.model_id,
                production_date=ts(dt.datetime(2026, 8, 1, tzinfo=dt.UTC)),
            ),
            n.producer,
        ),
        (
            event(fpb.BIZ_STEP_SHIPPING, n.producer, [battery], hours(1), destination_facility_id=n.dealer.site),
            n.producer,
        ),
        (event(fpb.BIZ_STEP_RECEIVING, n.dealer, [battery], hours(20), source_facility_id=n.producer.site), n.dealer),
        (event(fpb.BIZ_STEP_RETAIL_SELLING, n.dealer, [battery], hours(30)), n.dealer),
        (
            event(
                fpb.BIZ_STEP_COLLECTING,
                n.outlet,
                [battery],
                hours(24 * 60),
                collection_mode=fpb.COLLECTION_MODE_TRADE_IN,
                disposition=fpb.DISPOSITION_WASTE,
                business_transactions=[
                    fpb.BusinessTransaction(transaction_type="TRADE_IN_ORDER", transaction_id="TI-1")
                ],
            ),
            n.outlet,
        ),
        (
            event(
                fpb.BIZ_STEP_SHIPPING,
                n.outlet,
                [battery],
                hours(24 * 61),
                destination_facility_id=n.storage.site,
                business_transactions=manifest,
            ),
            n.outlet,
        ),
        (
            event(
                fpb.BIZ_STEP_RECEIVING,
                n.storage,
                [battery],
                hours(24 * 61 + 3),
                source_facility_id=n.outlet.site,
                business_transactions=manifest,
            ),
            n.storage,
        ),
        (event(fpb.BIZ_STEP_STORING, n.storage, [battery], hours(24 * 61 + 4)), n.storage),
        (
            event(fpb.BIZ_STEP_SHIPPING, n.storage, [battery], hours(24 * 65), destination_facility_id=n.sorter.site),
            n.storage,
        ),
        (
            event(fpb.BIZ_STEP_RECEIVING, n.sorter, [battery], hours(24 * 65 + 2), source_facility_id=n.storage.site),
            n.sorter,
        ),
        (event(fpb.BIZ_STEP_SORTING, n.sorter, [battery], hours(24 * 65 + 3)), n.sorter),
        (
            event(fpb.BIZ_STEP_SHIPPING, n.sorter, [battery], hours(24 * 67), destination_facility_id=n.recycler.site),
            n.sorter,
        ),
        (
            event(fpb.BIZ_STEP_RECEIVING, n.recycler, [battery], hours(24 * 67 + 5), source_facility_id=n.sorter.site),
            n.recycler,
        ),
        (event(fpb.BIZ_STEP_DISCHARGING, n.recycler, [battery], hours(24 * 68)), n.recycler),
        (
            event(
                fpb.BIZ_STEP_DISMANTLING,
                n.recycler,
                [battery],
                hours(24 * 69),
                outputs=[
                    fpb.QuantityElement(product_class="black_mass", quantity=3.2, unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)
                ],
            ),
            n.recycler,
        ),
        (event(fpb.BIZ_STEP_RECYCLING, n.recycler, [battery], hours(24 * 70)), n.recycler),
    ]


EXPECTED_STATES = [
    "REGISTERED",
    "IN_DISTRIBUTION",
    "AT_DEALER",
    "IN_USE",
    "COLLECTED",
    "IN_TRANSIT_REVERSE",
    "IN_TEMP_STORAGE",
    "IN_TEMP_STORAGE",
    "IN_TRANSIT_REVERSE",
    "AT_SORTING_CENTER",
    "AT_SORTING_CENTER",
    "IN_TRANSIT_REVERSE",
    "AT_RECYCLER",
    "AT_RECYCLER",
    "DISMANTLED",
    "RECYCLED",
]


def state_name(value: fpb.CustodyState.ValueType) -> str:
    return fpb.CustodyState.Name(value).removeprefix("CUSTODY_STATE_")


async def test_a_battery_from_commissioning_to_recycling_has_a_compliant_trace(flows: Flows, network: Network) -> None:
    battery = network.serial()
    life = whole_life(network, battery)
    for message, reporter in life:
        result = await flows.report(message, reporter.caller)  # type: ignore[attr-defined]
        step = fpb.BizStep.Name(message.biz_step)
        assert result.outcome == fpb.EVENT_OUTCOME_ACCEPTED, (step, result)
        assert result.event_hash.startswith("ni:///sha-256;"), result

    trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
    assert [state_name(s.state_after) for s in trace.steps] == EXPECTED_STATES
    assert [s.event.event_id for s in trace.steps] == [m.event_id for m, _ in life]
    assert trace.reached_compliant_channel
    assert state_name(trace.state.state) == "RECYCLED"
    assert trace.state.holder_facility_id == network.recycler.site
    counties = {s.event.facility_id: s.county_code for s in trace.steps}
    assert counties[network.outlet.site] == "320102" and counties[network.storage.site] == "320104"
    types = {s.event.facility_id: s.facility_type for s in trace.steps}
    assert types[network.sorter.site] == "REGIONAL_SORTING_CENTER" and types[network.recycler.site] == "RECYCLING_PLANT"
    assert all(not s.rule_hits and not s.declared_in_error for s in trace.steps)
    assert all(s.event.reporter_id for s in trace.steps)

    # The battery itself, with its model (mass from the model registered by the producer).
    got = await flows.call("GetBattery", fpb.GetBatteryRequest(battery_ref=battery))
    assert state_name(got.state.state) == "RECYCLED" and got.model.mass_kg == 9.5
    assert got.state.producer_id == network.producer.id

    # Reporting the same event again is a no-op that says DUPLICATE; the trace does not change.
    again = await flows.report(life[4][0], network.outlet.caller)
    assert again.outcome == fpb.EVENT_OUTCOME_DUPLICATE
    retraced = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
    assert len(retraced.steps) == len(EXPECTED_STATES)

    # The ministry's dispatch statistics see one battery collected by trade-in, delivered and recycled.
    figures = await flows.call(
        "GetDispatchStatistics",
        fpb.GetDispatchStatisticsRequest(
            division_code="32", period_start=ts(T0 - dt.timedelta(days=1)), period_end=ts(T0 + dt.timedelta(days=90))
        ),
    )
    assert figures.collected_batteries == 1 and figures.collected_kilograms == 9.5
    assert [(m.mode, m.batteries) for m in figures.collected_by_mode if m.batteries] == [
        (fpb.COLLECTION_MODE_TRADE_IN, 1)
    ]
    assert figures.delivered_to_recyclers_batteries == 1 and figures.recycled_batteries == 1
    assert figures.compliant_channel_rate == 1.0
    county = await flows.call(
        "GetDispatchStatistics",
        fpb.GetDispatchStatisticsRequest(
            division_code="320104",
            period_start=ts(T0 - dt.timedelta(days=1)),
            period_end=ts(T0 + dt.timedelta(days=90)),
        ),
    )
    assert county.collected_batteries == 0  # collected in 320102, stored in 320104
