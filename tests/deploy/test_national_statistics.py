"""The national view on real nats-servers: a hub (domain `national`) and the provinces 32 and 44 as leaf nodes, each
province's registry and flows on SQLite, and `greenmesh serve national` (services/national) on the hub's stream
GREENMESH_NATIONAL_FLOWS with a database of its own. The whole country's dispatch statistics count every province,
a battery collected in Jiangsu and recycled in Guangdong counts as reaching the compliant channel (nationally, and
in Jiangsu once Guangdong's receipt comes back), error declarations and alert acknowledgements follow, and an
outage of the hub delays the figures without losing any."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.caller import Caller
from meshkit.errors import field_violations
from meshkit.server import ServiceRuntime
from services.national.service import DEFINITION as NATIONAL
from tests.conftest import RuntimeFactory, eventually
from tests.deploy.conftest import Nation
from tests.deploy.test_cross_province import collect_and_ship, days, party, receive, serial, state_in
from tests.flows.conftest import Flows, Party, event
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import (
    GUANGDONG_REGULATOR,
    JIANGSU_REGULATOR,
    NANSHAN,
    XUANWU,
)

PERIOD = (days(-1), days(60))


def request(division: str) -> fpb.GetDispatchStatisticsRequest:
    message = fpb.GetDispatchStatisticsRequest(division_code=division)
    message.period_start.FromDatetime(PERIOD[0])
    message.period_end.FromDatetime(PERIOD[1])
    return message


async def figures(flows: Flows, division: str) -> fpb.GetDispatchStatisticsResponse:
    reply: fpb.GetDispatchStatisticsResponse = await flows.call("GetDispatchStatistics", request(division))
    return reply


def by_mode(reply: fpb.GetDispatchStatisticsResponse) -> dict[str, int]:
    return {
        fpb.CollectionMode.Name(m.mode).removeprefix("COLLECTION_MODE_"): m.batteries
        for m in reply.collected_by_mode
        if m.batteries
    }


def open_alerts(reply: fpb.GetDispatchStatisticsResponse) -> dict[str, int]:
    return {fpb.AlertKind.Name(a.kind).removeprefix("ALERT_KIND_"): a.open for a in reply.open_alerts if a.open}


def counted(reply: fpb.GetDispatchStatisticsResponse) -> tuple[Any, ...]:
    """Everything but the rate, which only the national view gets right for batteries that crossed provinces."""
    return (
        by_mode(reply),
        reply.collected_batteries,
        reply.delivered_to_recyclers_batteries,
        reply.recycled_batteries,
        open_alerts(reply),
        reply.late_reports,
    )


async def start_national_view(nation: Nation, make_runtime: RuntimeFactory, tmp_path: Path) -> Flows:
    runtime: ServiceRuntime = await make_runtime(
        NATIONAL, nats_url=nation.hub.url, database_url=f"sqlite+aiosqlite:///{tmp_path / 'national.db'}"
    )
    await wait_health(runtime, SERVING)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    return Flows(runtime, flows_pb2_grpc.FlowServiceStub(channel), nation.provinces["32"].registry)


def report_cli(nation: Nation, address: str, division: str, output: Path) -> dict[str, Any]:
    """`greenmesh report dispatch --flows <the national view> --division 00`, as an operator runs it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENMESH_")}
    environment["GREENMESH_DATA_DIR"] = str(nation.data_dir)  # the mesh key the runtimes share
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "greenmesh_cli",
            "report",
            "dispatch",
            f"--flows={address}",
            f"--division={division}",
            f"--from={PERIOD[0].date().isoformat()}",
            f"--to={PERIOD[1].date().isoformat()}",
            "--format=json",
            f"--output={output}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return result


@pytest.mark.slow
async def test_the_national_view_counts_every_province_and_the_batteries_that_crossed_them(
    nation: Nation, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    jiangsu, guangdong = nation.provinces["32"], nation.provinces["44"]
    national = await start_national_view(nation, make_runtime, tmp_path)
    producer = await party(jiangsu.registry, "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, XUANWU)
    outlet_32 = await party(
        jiangsu.registry, "RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, XUANWU,
        regulator=JIANGSU_REGULATOR,
    )  # fmt: skip
    recycler_32 = await party(
        jiangsu.registry, "RECYCLING_ENTERPRISE", rpb.FACILITY_TYPE_RECYCLING_PLANT, XUANWU,
        regulator=JIANGSU_REGULATOR,
    )  # fmt: skip
    outlet_44 = await party(
        guangdong.registry, "RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, NANSHAN,
        regulator=GUANGDONG_REGULATOR,
    )  # fmt: skip
    recycler_44 = await party(
        guangdong.registry, "RECYCLING_ENTERPRISE", rpb.FACILITY_TYPE_RECYCLING_PLANT, NANSHAN,
        regulator=GUANGDONG_REGULATOR,
    )  # fmt: skip

    async def directories_meet() -> bool:  # 32 knows 44's recycler; 44 knows 32's producer
        site = jiangsu.flows.directory.facility(recycler_44.site)
        return (
            site is not None
            and site.accreditation == "LISTED"
            and jiangsu.flows.directory.participant(recycler_44.id) is not None
            and guangdong.flows.directory.participant_by_credit_code(producer.participant.credit_code) is not None
        )

    await eventually(directories_meet, timeout=45, interval=0.2)

    # A: collected in Jiangsu (trade-in), shipped to Guangdong's recycler, received and recycled there.
    crossed = serial(producer, 1)
    shipped, _ = await collect_and_ship(jiangsu.flows, outlet_32, crossed, recycler_44, 0)
    assert shipped.outcome == fpb.EVENT_OUTCOME_ACCEPTED, shipped

    async def imported() -> bool:
        return await state_in(guangdong.flows, crossed) == "IN_TRANSIT_REVERSE"

    await eventually(imported, timeout=45, interval=0.2)
    assert (await receive(guangdong.flows, recycler_44, crossed, outlet_32, 3)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    recycled = await guangdong.flows.report(
        event(fpb.BIZ_STEP_RECYCLING, recycler_44, [crossed], days(10)), recycler_44.caller
    )
    assert recycled.outcome == fpb.EVENT_OUTCOME_ACCEPTED, recycled
    # B: collected and delivered within Jiangsu. C: collected in Jiangsu, never delivered.
    await collect_and_ship(jiangsu.flows, outlet_32, serial(producer, 2), recycler_32, 1)
    await receive(jiangsu.flows, recycler_32, serial(producer, 2), outlet_32, 4)
    await collect(jiangsu.flows, outlet_32, serial(producer, 3), 2, fpb.COLLECTION_MODE_DOOR_TO_DOOR)
    # D: collected (drop-off) and delivered within Guangdong. E: a collection in Guangdong declared in error.
    await collect_and_ship(guangdong.flows, outlet_44, serial(producer, 4), recycler_44, 1)
    await receive(guangdong.flows, recycler_44, serial(producer, 4), outlet_44, 5)
    mistaken = await collect(guangdong.flows, outlet_44, serial(producer, 5), 2, fpb.COLLECTION_MODE_DROP_OFF)
    await guangdong.flows.call(
        "DeclareError",
        fpb.DeclareErrorRequest(event_id=mistaken, reason=fpb.ERROR_REASON_DID_NOT_OCCUR, explanation="wrong code"),
        outlet_44.caller,
    )
    # F: received at Guangdong's recycler with no shipment (an orphan receipt): quarantined, one RULE_HIT alert.
    orphan = await receive(guangdong.flows, recycler_44, serial(producer, 6), outlet_44, 6)
    assert orphan.outcome == fpb.EVENT_OUTCOME_QUARANTINED, orphan

    # Guangdong tells Jiangsu that A arrived (TransferReceived through the hub): Jiangsu's own rate counts it too.
    async def jiangsu_hears_of_a() -> bool:
        return (await figures(jiangsu.flows, "32")).rate_reached_recycler == 2

    await eventually(jiangsu_hears_of_a, timeout=45, interval=0.3)
    province_32, province_44 = await figures(jiangsu.flows, "32"), await figures(guangdong.flows, "44")
    assert (province_32.rate_reached_recycler, province_32.rate_denominator) == (2, 3)  # A and B of A, B, C
    assert (province_44.rate_reached_recycler, province_44.rate_denominator) == (1, 1)  # D

    async def national_has_everything() -> bool:
        whole = await figures(national, "00")
        return bool(whole.collected_batteries == 4 and whole.delivered_to_recyclers_batteries == 4) and (
            open_alerts(whole) == {"RULE_HIT": 1}
        )

    await eventually(national_has_everything, timeout=60, interval=0.3)
    whole = await figures(national, "00")
    # The country: A, B, C and D collected (E declared), delivered A, B, D and F; A recycled; A, B and D reached a
    # listed recycler of 4 collected (the provinces' parts added up; their rates averaged would give 0.83).
    assert by_mode(whole) == {"TRADE_IN": 3, "DOOR_TO_DOOR": 1}
    assert whole.recycled_batteries == 1
    assert whole.late_reports == province_32.late_reports + province_44.late_reports > 0  # reported in December
    assert (whole.rate_reached_recycler, whole.rate_denominator, whole.compliant_channel_rate) == (3, 4, 0.75)
    # A province seen nationally counts what the province counts.
    national_32, national_44 = await figures(national, "32"), await figures(national, "44")
    assert counted(national_32) == counted(province_32)
    assert counted(national_44) == counted(province_44)
    assert (national_32.rate_reached_recycler, national_32.rate_denominator) == (2, 3)
    assert (national_44.rate_reached_recycler, national_44.rate_denominator) == (1, 1)
    for field in (
        "collected_batteries",
        "delivered_to_recyclers_batteries",
        "recycled_batteries",
        "rate_denominator",
        "rate_reached_recycler",
    ):
        assert getattr(whole, field) == getattr(province_32, field) + getattr(province_44, field)
    assert whole.collected_kilograms == pytest.approx(province_32.collected_kilograms + province_44.collected_kilograms)

    # The operator acknowledges the alert in Guangdong; the national view follows (still open, acknowledged).
    [alert] = (await guangdong.flows.call("ListAlerts", fpb.ListAlertsRequest())).alerts
    await guangdong.flows.call("AcknowledgeAlert", fpb.AcknowledgeAlertRequest(alert_id=alert.alert_id, note="seen"))

    async def acknowledged_nationally() -> bool:
        alerts = (await national.call("ListAlerts", fpb.ListAlertsRequest(division_prefix="44"))).alerts
        return [(a.alert_id, a.status, a.note) for a in alerts] == [
            (alert.alert_id, fpb.ALERT_STATUS_ACKNOWLEDGED, "seen")
        ]

    await eventually(acknowledged_nationally, timeout=30, interval=0.3)

    # The national figures as an operator exports them.
    exported = await asyncio.to_thread(
        report_cli, nation, f"127.0.0.1:{national.runtime.port}", "00", tmp_path / "nation.json"
    )
    assert exported["division_code"] == "00" and exported["collected"]["batteries"] == 4
    assert exported["compliant_channel"] == {"collected": 4, "reached_recycler": 3}

    # The hub goes down: Guangdong keeps taking reports; the national figures catch up once it is back.
    nation.hub.stop()
    await collect(guangdong.flows, outlet_44, serial(producer, 7), 20, fpb.COLLECTION_MODE_DROP_OFF)
    await asyncio.sleep(1)
    nation.hub.start()

    async def caught_up() -> bool:
        return (await figures(national, "00")).collected_batteries == 5

    await eventually(caught_up, timeout=150, interval=0.5)
    assert by_mode(await figures(national, "00")) == {"TRADE_IN": 3, "DOOR_TO_DOOR": 1, "DROP_OFF": 1}


async def collect(
    flows: Flows, outlet: Party, battery: fpb.BatteryRef, when: float, mode: fpb.CollectionMode.ValueType
) -> str:
    """A collection of one waste battery; returns its event id."""
    message = event(
        fpb.BIZ_STEP_COLLECTING, outlet, [battery], days(when), collection_mode=mode, disposition=fpb.DISPOSITION_WASTE
    )
    result = await flows.report(message, outlet.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_ACCEPTED, result
    return message.event_id


async def test_national_view_refuses_a_regulator_outside_the_division_and_bad_codes(
    nation: Nation, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    national = await start_national_view(nation, make_runtime, tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await national.call("GetDispatchStatistics", request("00"), JIANGSU_REGULATOR)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (await national.call("GetDispatchStatistics", request("32"), JIANGSU_REGULATOR)).division_code == "32"
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await national.call("GetDispatchStatistics", request("00"), Caller())
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await national.call("GetDispatchStatistics", request("3"))
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(invalid.value)] == ["division_code"]
    with pytest.raises(grpc.aio.AioRpcError) as bad_prefix:
        await national.call("ListAlerts", fpb.ListAlertsRequest(division_prefix="3x"))
    assert bad_prefix.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in field_violations(bad_prefix.value)] == ["division_prefix"]
    with pytest.raises(grpc.aio.AioRpcError) as outsider:
        await national.call("ListAlerts", fpb.ListAlertsRequest(), outlet_like_caller())
    assert outsider.value.code() is grpc.StatusCode.PERMISSION_DENIED
    # Reporting belongs to the provinces.
    with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
        await national.call("ReportEvent", fpb.ReportEventRequest())
    assert unimplemented.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert unimplemented.value.details() == "/greenmesh.flows.v1.FlowService/ReportEvent is not served here"


def outlet_like_caller() -> Caller:
    """An enterprise (no oversight role): it reports in its province and reads no national figures."""
    return Caller(participant_id="0190a000-0000-7000-8000-00000000bbbb", roles=frozenset({"RECYCLING_OUTLET_OPERATOR"}))
