"""Cross-province transfers on real nats-servers (a hub, domain `national`, and the provinces 32 and 44 as leaf
nodes, domains `p32` and `p44`), with each province's registry and flows running in this process on SQLite and
`GREENMESH_NATIONAL_LINK=true`: a battery collected in Jiangsu is shipped to a listed recycler in Guangdong (judged
in 32 against 44's directory), received and recycled there (no orphan receipt), and the national trace shows both
halves. A shipment to an unlisted 44 site is refused in 32; a hub outage delays a transfer but loses nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from typing import Any

import grpc
import nats
import nats.js.errors
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.errors import error_reason
from meshkit.localinfra import NatsServer
from meshkit.national import (
    inbound_stream_name,
)
from services.flows.service import DEFINITION as FLOWS
from tests.conftest import RuntimeFactory, eventually
from tests.deploy.conftest import Nation
from tests.flows.conftest import CN, Flows, Party, event
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, NANSHAN, XUANWU, Registry

T0 = dt.datetime(2026, 10, 1, 9, 0, tzinfo=CN)


def days(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


async def party(
    registry: Registry,
    role: str,
    facility_type: rpb.FacilityType.ValueType,
    place: tuple[str, float, float],
    *,
    regulator: object | None = None,
) -> Party:
    participant = await registry.participant(role, division=place[0])
    site = await registry.facility(participant, place, facility_type)
    if regulator is not None:
        site = await registry.list_facility(site, regulator)  # type: ignore[arg-type]
    return Party(participant, site)


def serial(producer: Party, number: int) -> fpb.BatteryRef:
    return fpb.BatteryRef(
        scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL,
        namespace=producer.participant.credit_code,
        value=f"XP{number:08d}",
    )


async def state_in(flows: Flows, battery: fpb.BatteryRef) -> str:
    try:
        got = await flows.call("GetBattery", fpb.GetBatteryRequest(battery_ref=battery))
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:
            return ""
        raise
    return fpb.CustodyState.Name(got.state.state).removeprefix("CUSTODY_STATE_")


def step_names(trace: fpb.GetBatteryTraceResponse) -> list[tuple[str, str]]:
    return [(fpb.BizStep.Name(s.event.biz_step).removeprefix("BIZ_STEP_"), s.county_code[:2]) for s in trace.steps]


async def collect_and_ship(
    flows: Flows, outlet: Party, battery: fpb.BatteryRef, to: Party, when: float
) -> tuple[fpb.EventResult, fpb.FlowEvent]:
    collected = await flows.report(
        event(
            fpb.BIZ_STEP_COLLECTING,
            outlet,
            [battery],
            days(when),
            collection_mode=fpb.COLLECTION_MODE_TRADE_IN,
            disposition=fpb.DISPOSITION_WASTE,
        ),
        outlet.caller,
    )
    assert collected.outcome == fpb.EVENT_OUTCOME_ACCEPTED, collected
    shipping = event(
        fpb.BIZ_STEP_SHIPPING,
        outlet,
        [battery],
        days(when + 1),
        destination_facility_id=to.site,
        business_transactions=[fpb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id="KS-1")],
    )
    return await flows.report(shipping, outlet.caller), shipping


async def receive(
    flows: Flows, recycler: Party, battery: fpb.BatteryRef, source: Party, when: float
) -> fpb.EventResult:
    return await flows.report(
        event(
            fpb.BIZ_STEP_RECEIVING,
            recycler,
            [battery],
            days(when),
            source_facility_id=source.site,
            business_transactions=[
                fpb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id="KS-1")
            ],
        ),
        recycler.caller,
    )


async def national_trace_cli(nation: Nation, battery: fpb.BatteryRef) -> dict[str, Any]:
    """`greenmesh national trace --json` against both provinces' flows (a process of its own: the services it
    calls run in this one's event loop)."""
    addresses = [f"{code}=127.0.0.1:{p.flows.runtime.port}" for code, p in nation.provinces.items()]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENMESH_")}
    environment["GREENMESH_DATA_DIR"] = str(nation.data_dir)  # the mesh key the runtimes share
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "greenmesh_cli",
            "national",
            "trace",
            *(f"--province={address}" for address in addresses),
            f"--namespace={battery.namespace}",
            f"--value={battery.value}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
async def test_a_battery_shipped_to_another_province_is_received_there_and_traced_across_both(
    nation: Nation,
) -> None:
    jiangsu, guangdong = nation.provinces["32"], nation.provinces["44"]
    producer = await party(jiangsu.registry, "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, XUANWU)
    outlet = await party(
        jiangsu.registry,
        "RECYCLING_OUTLET_OPERATOR",
        rpb.FACILITY_TYPE_RECYCLING_OUTLET,
        XUANWU,
        regulator=JIANGSU_REGULATOR,
    )
    recycler = await party(
        guangdong.registry,
        "RECYCLING_ENTERPRISE",
        rpb.FACILITY_TYPE_RECYCLING_PLANT,
        NANSHAN,
        regulator=GUANGDONG_REGULATOR,
    )
    unlisted = await party(
        guangdong.registry, "SORTING_CENTER_OPERATOR", rpb.FACILITY_TYPE_REGIONAL_SORTING_CENTER, NANSHAN
    )

    # Each province learns the other's directory through the hub: 32 the listed recycler and its operator's
    # role, 44 the producer whose namespace the battery carries; neither takes its own entries as remote.
    async def directories_meet() -> bool:
        site = jiangsu.flows.directory.facility(recycler.site)
        operator = jiangsu.flows.directory.participant(recycler.id)
        return (
            site is not None
            and site.accreditation == "LISTED"
            and operator is not None
            and "RECYCLING_ENTERPRISE" in operator.roles
            and jiangsu.flows.directory.facility(unlisted.site) is not None
            and guangdong.flows.directory.participant_by_credit_code(producer.participant.credit_code) is not None
        )

    await eventually(directories_meet, timeout=45, interval=0.2)
    assert jiangsu.flows.directory.remote_facility(outlet.site) is None
    assert guangdong.flows.directory.remote_facility(recycler.site) is None
    assert guangdong.flows.directory.remote_facility(outlet.site) is not None

    # Shipped from Jiangsu to the Guangdong recycler: judged in 32 against 44's entry, accepted.
    battery = serial(producer, 1)
    shipped, shipping = await collect_and_ship(jiangsu.flows, outlet, battery, recycler, 0)
    assert (shipped.outcome, list(shipped.rule_hits)) == (fpb.EVENT_OUTCOME_ACCEPTED, []), shipped

    # To a 44 sorting centre that is not listed: refused in 32, with its rule.
    other = serial(producer, 2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await collect_and_ship(jiangsu.flows, outlet, other, unlisted, 0)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused.value) == "FLOW-002-DESTINATION-NOT-ALLOWED", refused.value.details()

    # Guangdong imports the shipment: the battery is in transit to its recycler.
    async def known_in_44() -> bool:
        return await state_in(guangdong.flows, battery) == "IN_TRANSIT_REVERSE"

    await eventually(known_in_44, timeout=45, interval=0.2)
    assert await state_in(guangdong.flows, other) == ""

    # The ordinary receipt in 44 answers it (no FLOW-005), and the chain goes on there.
    received = await receive(guangdong.flows, recycler, battery, outlet, 3)
    assert (received.outcome, list(received.rule_hits)) == (fpb.EVENT_OUTCOME_ACCEPTED, []), received
    recycled = await guangdong.flows.report(
        event(
            fpb.BIZ_STEP_RECYCLING,
            recycler,
            [battery],
            days(10),
            outputs=[fpb.QuantityElement(product_class="black_mass", quantity=3.1, unit=fpb.UNIT_OF_MEASURE_KILOGRAMS)],
        ),
        recycler.caller,
    )
    assert recycled.outcome == fpb.EVENT_OUTCOME_ACCEPTED, recycled
    assert await state_in(guangdong.flows, battery) == "RECYCLED"

    # 44's trace shows the shipment from 32 (its facility and county), then its own steps.
    trace = await guangdong.flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
    assert step_names(trace) == [("SHIPPING", "32"), ("RECEIVING", "44"), ("RECYCLING", "44")]
    assert trace.steps[0].event.event_id == shipping.event_id
    assert trace.steps[0].event.facility_id == outlet.site
    assert trace.reached_compliant_channel

    # 44 tells 32 the shipment arrived: in 32 too the battery is at a listed recycler (the compliant channel).
    async def received_in_32() -> bool:
        got = await jiangsu.flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
        return bool(got.reached_compliant_channel)

    await eventually(received_in_32, timeout=45, interval=0.2)
    origin = await jiangsu.flows.call("GetBatteryTrace", fpb.GetBatteryTraceRequest(battery_ref=battery))
    assert step_names(origin) == [("COLLECTING", "32"), ("SHIPPING", "32"), ("RECEIVING", "44")]
    assert await state_in(jiangsu.flows, battery) == "AT_RECYCLER"

    # The national trace: both halves, in order, the shipment once (32's copy of the receipt is not repeated).
    national = await national_trace_cli(nation, battery)
    chain = [
        (step["province"], step["step"]["event"]["bizStep"].removeprefix("BIZ_STEP_")) for step in national["steps"]
    ]
    assert chain == [("32", "COLLECTING"), ("32", "SHIPPING"), ("44", "RECEIVING"), ("44", "RECYCLING")]
    assert national["unplaced"] == [] and national["missing_provinces"] == []

    # The link goes down (the hub stops): 32 still takes and ships; the transfer waits in 32's stream.
    nation.hub.stop()
    late = serial(producer, 3)
    shipped_late, _ = await collect_and_ship(jiangsu.flows, outlet, late, recycler, 20)
    assert shipped_late.outcome == fpb.EVENT_OUTCOME_ACCEPTED, shipped_late
    await asyncio.sleep(1)
    assert await state_in(guangdong.flows, late) == ""
    nation.hub.start()

    async def arrived() -> bool:
        return await state_in(guangdong.flows, late) == "IN_TRANSIT_REVERSE"

    # About 40 s: the hub's sourcing consumers, then the inbound stream's, resume with back-off (README).
    await eventually(arrived, timeout=150, interval=0.5)
    received_late = await receive(guangdong.flows, recycler, late, outlet, 23)
    assert (received_late.outcome, list(received_late.rule_hits)) == (fpb.EVENT_OUTCOME_ACCEPTED, []), received_late


async def test_without_a_hub_the_link_just_waits(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    """A province whose NATS has no hub (never linked, or the hub is away when flows starts): flows declares its
    inbound stream and consumer, serves as usual, and its own streams are untouched."""
    runtime = await make_runtime(FLOWS, nats_url=nats_server.url, national_link=True)
    await wait_health(runtime, SERVING)
    connection = await nats.connect(nats_server.url)
    try:
        js = connection.jetstream()

        async def declared() -> bool:
            try:
                await js.consumer_info(inbound_stream_name("32"), "flows--inbound")
            except nats.js.errors.NotFoundError:
                return False
            return True

        await eventually(declared, timeout=20)
        info = await js.stream_info(inbound_stream_name("32"))
        assert info.config.subjects in (None, [])
        assert [s.name for s in info.config.sources or []] == [
            "GREENMESH_NATIONAL_REGISTRY",
            "GREENMESH_NATIONAL_REGISTRY",
            "GREENMESH_NATIONAL_FLOWS",  # shipments to 32
            "GREENMESH_NATIONAL_FLOWS",  # receipts elsewhere of 32's shipments
        ]
        assert info.state.messages == 0
    finally:
        await connection.close()
    assert runtime.bus.connected
