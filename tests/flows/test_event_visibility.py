"""Who sees which flow events (QueryEvents, SubscribeEvents): an enterprise the events it reported or that happened
at, left from or went to a facility it operates; a producer, holder or reporter of a battery every event of that
battery when it asks by battery (as GetBatteryTrace); a regulator its region; a platform operator everything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlmodel import col, select

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.caller import Caller
from services.flows import store
from services.flows.tables import FlowEventRow
from tests.conftest import eventually
from tests.flows.conftest import CN, Flows, Network, Party, event, party, ts
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM, XUANWU

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)
KILOGRAMS = [fpb.QuantityElement(product_class="waste_ebike_lib", quantity=40, unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)]


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


@dataclass
class Story:
    """Battery A (made by the network's producer): commissioned, sold, collected at the outlet, shipped to the
    storage point and received there. Battery B (another producer's): commissioned, sold, collected at the outlet."""

    other_producer: Party
    battery_a: fpb.BatteryRef
    battery_b: fpb.BatteryRef
    ids: dict[str, str]

    def of(self, *names: str) -> set[str]:
        return {self.ids[name] for name in names}

    @property
    def everything(self) -> set[str]:
        return set(self.ids.values())


async def stored(flows: Flows, message: fpb.FlowEvent, reporter: Party) -> str:
    result = await flows.report(message, reporter.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_ACCEPTED, result
    return message.event_id


async def another_producer(flows: Flows) -> Party:
    producer = await party(flows.registry, "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, XUANWU, listed=False)

    async def known() -> bool:
        person = flows.directory.participant(producer.id)
        return person is not None and person.status == "ACTIVE" and flows.directory.facility(producer.site) is not None

    await eventually(known, timeout=20)
    return producer


async def register_model(flows: Flows, producer: Party) -> str:
    reply = await flows.call(
        "RegisterBatteryModel",
        fpb.RegisterBatteryModelRequest(
            model=fpb.BatteryModel(
                model_code="XY-60V24AH",
                chemistry=fpb.CHEMISTRY_NCM,
                nominal_voltage_v=60,
                capacity_ah=24,
                energy_wh=1440,
                mass_kg=11.0,
                safe_service_life_years=5,
            )
        ),
        producer.caller,
    )
    return str(reply.model.model_id)


async def sold(flows: Flows, producer: Party, model_id: str, battery: fpb.BatteryRef, day: float) -> tuple[str, str]:
    made = event(
        fpb.BIZ_STEP_COMMISSIONING, producer, [battery], at(day - 30),
        model_id=model_id, production_date=ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC)),
    )  # fmt: skip
    selling = event(fpb.BIZ_STEP_RETAIL_SELLING, producer, [battery], at(day - 29))
    return await stored(flows, made, producer), await stored(flows, selling, producer)


@pytest.fixture
async def story(flows: Flows, network: Network) -> Story:
    n = network
    other = await another_producer(flows)
    battery_a = n.serial()
    battery_b = fpb.BatteryRef(
        scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=other.participant.credit_code, value="XY00000001"
    )
    ids: dict[str, str] = {}
    ids["a_commissioning"], ids["a_selling"] = await sold(flows, n.producer, n.model_id, battery_a, 0)
    drop_off = fpb.COLLECTION_MODE_DROP_OFF
    ids["a_collecting"] = await stored(
        flows, event(fpb.BIZ_STEP_COLLECTING, n.outlet, [battery_a], at(0), collection_mode=drop_off), n.outlet
    )
    ids["a_shipping"] = await stored(
        flows,
        event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery_a], at(1), destination_facility_id=n.storage.site),
        n.outlet,
    )
    ids["a_receiving"] = await stored(
        flows,
        event(fpb.BIZ_STEP_RECEIVING, n.storage, [battery_a], at(2), source_facility_id=n.outlet.site),
        n.storage,
    )
    ids["b_commissioning"], ids["b_selling"] = await sold(
        flows, other, await register_model(flows, other), battery_b, 3
    )
    ids["b_collecting"] = await stored(
        flows, event(fpb.BIZ_STEP_COLLECTING, n.outlet, [battery_b], at(3), collection_mode=drop_off), n.outlet
    )
    return Story(other, battery_a, battery_b, ids)


async def seen(flows: Flows, caller: Caller, **filters: Any) -> set[str]:
    """The ids of every event the caller gets from QueryEvents (all pages)."""
    found: list[str] = []
    token = ""
    while True:
        reply = await flows.call(
            "QueryEvents", fpb.QueryEventsRequest(page_size=3, page_token=token, **filters), caller
        )
        found += [e.event_id for e in reply.events]
        token = reply.next_page_token
        if not token:
            break
    assert len(found) == len(set(found)), "an event came twice"
    return set(found)


# ---- QueryEvents --------------------------------------------------------------------------------


async def test_an_enterprise_sees_what_it_reported_and_what_touched_its_facilities(
    flows: Flows, network: Network, story: Story
) -> None:
    n, s = network, story
    # The outlet: its collections and its shipment, and the storage point's receipt (the source is the outlet).
    assert await seen(flows, n.outlet.caller) == s.of("a_collecting", "a_shipping", "a_receiving", "b_collecting")
    # The storage point: the shipment addressed to it and its own receipt, not the outlet's collection.
    assert await seen(flows, n.storage.caller) == s.of("a_shipping", "a_receiving")
    assert await seen(flows, n.sorter.caller) == set()
    # Without asking by battery, a producer sees what it reported only.
    assert await seen(flows, n.producer.caller) == s.of("a_commissioning", "a_selling")
    assert await seen(flows, s.other_producer.caller) == s.of("b_commissioning", "b_selling")
    # The other filters still narrow an enterprise's part.
    assert await seen(flows, n.outlet.caller, biz_steps=[fpb.BIZ_STEP_RECEIVING]) == s.of("a_receiving")
    assert await seen(flows, n.storage.caller, facility_id=n.outlet.site) == s.of("a_shipping")
    assert await seen(flows, n.outlet.caller, destination_facility_id=n.storage.site) == s.of("a_shipping")


async def test_regulators_see_their_region_and_the_platform_everything(flows: Flows, story: Story) -> None:
    assert await seen(flows, JIANGSU_REGULATOR) == story.everything
    assert await seen(flows, PLATFORM) == story.everything
    assert await seen(flows, GUANGDONG_REGULATOR) == set()


async def test_asking_by_battery_shows_its_whole_history_to_whoever_may_read_its_trace(
    flows: Flows, network: Network, story: Story
) -> None:
    n, s = network, story
    history_a = s.of("a_commissioning", "a_selling", "a_collecting", "a_shipping", "a_receiving")
    history_b = s.of("b_commissioning", "b_selling", "b_collecting")
    expected = {
        # The producer follows the reverse flow of the battery it made, and only of that one.
        (n.producer.id, "A"): history_a,
        (n.producer.id, "B"): set(),
        (s.other_producer.id, "A"): set(),
        (s.other_producer.id, "B"): history_b,
        # The outlet reported events of both; the storage point holds A.
        (n.outlet.id, "A"): history_a,
        (n.outlet.id, "B"): history_b,
        (n.storage.id, "A"): history_a,
        # Not readable: the storage point's own part of B (nothing), the sorter's part (nothing).
        (n.storage.id, "B"): set(),
        (n.sorter.id, "A"): set(),
        (n.sorter.id, "B"): set(),
    }
    callers = {p.id: p.caller for p in (n.producer, s.other_producer, n.outlet, n.storage, n.sorter)}
    batteries = {"A": s.battery_a, "B": s.battery_b}
    for (who, name), events in expected.items():
        caller, battery = callers[who], batteries[name]
        assert await seen(flows, caller, battery=battery) == events, (who, name)
        # Consistent with GetBatteryTrace: the whole history exactly when the trace may be read.
        whole = events == (history_a if name == "A" else history_b)
        try:
            trace = await flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery), caller)
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.PERMISSION_DENIED
            assert not whole, (who, name)
        else:
            assert whole and {step.event.event_id for step in trace.steps} == events, (who, name)
    # A regulator asking by battery still gets its region only.
    assert await seen(flows, GUANGDONG_REGULATOR, battery=s.battery_a) == set()
    assert await seen(flows, JIANGSU_REGULATOR, battery=s.battery_a) == history_a


# ---- SubscribeEvents ----------------------------------------------------------------------------


async def read_until(stream: Any, last: str) -> list[str]:
    """Event ids from the stream, in order, up to and including `last`."""
    found: list[str] = []
    while not found or found[-1] != last:
        item = await stream.read()
        assert isinstance(item, fpb.SubscribeEventsResponse), item
        found.append(item.event.event_id)
    return found


async def test_subscriptions_apply_the_same_rule(flows: Flows, network: Network, story: Story) -> None:
    n, s = network, story

    def subscribe(caller: Caller) -> Any:
        request = fpb.SubscribeEventsRequest(resume_token="0")
        return flows.stub.SubscribeEvents(request, metadata=tuple(caller.metadata(flows.key)), timeout=30)

    streams = {p.id: subscribe(p.caller) for p in (n.outlet, n.storage, n.sorter)}
    # Then, while subscribed: the storage point ships A on to the sorter (seen by both), the outlet collects by
    # weight (seen by the outlet only), and the sorter receives A (seen by the sorter and, as the source, the
    # storage point). Each stream is read up to the last event it must see: whatever else came first, it saw.
    onward = await stored(
        flows,
        event(fpb.BIZ_STEP_SHIPPING, n.storage, [s.battery_a], at(4), destination_facility_id=n.sorter.site),
        n.storage,
    )
    by_weight = await stored(
        flows,
        event(
            fpb.BIZ_STEP_COLLECTING, n.outlet, [], at(4), quantities=KILOGRAMS,
            collection_mode=fpb.COLLECTION_MODE_DROP_OFF,
        ),
        n.outlet,
    )  # fmt: skip
    arrived = await stored(
        flows,
        event(fpb.BIZ_STEP_RECEIVING, n.sorter, [s.battery_a], at(5), source_facility_id=n.storage.site),
        n.sorter,
    )
    try:
        outlet = await read_until(streams[n.outlet.id], by_weight)
        storage = await read_until(streams[n.storage.id], arrived)
        sorter = await read_until(streams[n.sorter.id], arrived)
    finally:
        for stream in streams.values():
            stream.cancel()
    ids = s.ids
    assert outlet == [ids["a_collecting"], ids["a_shipping"], ids["a_receiving"], ids["b_collecting"], by_weight]
    assert storage == [ids["a_shipping"], ids["a_receiving"], onward, arrived]
    assert sorter == [onward, arrived]


# ---- the store ----------------------------------------------------------------------------------


async def visible_seqs(flows: Flows, access: store.EventAccess, **filters: Any) -> list[int]:
    async with flows.runtime.database.session() as session:
        rows = await store.query_events(session, store.EventFilter(access=access, **filters), after_seq=0, limit=100)
    return [row.seq for row in rows if row.seq is not None]


async def test_an_operator_of_thousands_of_sites_gets_the_same_answer(
    flows: Flows, network: Network, story: Story, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond store.IN_CHUNK facilities the ids travel as one parameter (json_each / = ANY): same events."""
    n = network
    many = [n.outlet.site, *(f"site-{i:05d}" for i in range(2_000))]
    accesses = (store.EventAccess(n.outlet.id, many), store.EventAccess("someone-else", many))
    expected = await seqs_of(flows, story.of("a_collecting", "a_shipping", "a_receiving", "b_collecting"))
    for access in accesses:
        assert await visible_seqs(flows, access) == expected
        assert await visible_seqs(flows, access, biz_steps=("SHIPPING", "RECEIVING")) == expected[1:3]
    # The same with every id bound on its own (the short form): the two forms agree.
    monkeypatch.setattr(store, "IN_CHUNK", len(many))
    assert await visible_seqs(flows, accesses[1]) == expected


async def seqs_of(flows: Flows, event_ids: Iterable[str]) -> list[int]:
    async with flows.runtime.database.session() as session:
        found = await session.exec(select(FlowEventRow.seq).where(col(FlowEventRow.event_id).in_(list(event_ids))))
        return sorted(seq for seq in found.all() if seq is not None)
