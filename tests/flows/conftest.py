"""A real mesh for the flows tests: nats-server, the registry (SQLite) and the flows service (SQLite or
PostgreSQL) on port 0, with a recycling network registered and listed, and helpers to build events."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import Caller, signing_key
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.flows.directory_view import DirectoryView
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import (
    JIANGSU_REGULATOR,
    PLATFORM,
    QINHUAI,
    XUANWU,
    Registry,
    as_participant,
)

CN = dt.timezone(dt.timedelta(hours=8))
_serials = itertools.count(1)


def new_event_id() -> str:
    return str(uuid.uuid4())


def ts(moment: dt.datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@dataclass
class Party:
    participant: rpb.Participant
    facility: rpb.Facility

    @property
    def caller(self) -> Caller:
        return as_participant(self.participant)

    @property
    def id(self) -> str:
        return self.participant.participant_id

    @property
    def site(self) -> str:
        return self.facility.facility_id


@dataclass
class Network:
    """A producer, a dealer and the reverse chain: outlet → storage point → sorting centre → recycler."""

    producer: Party
    dealer: Party
    outlet: Party
    storage: Party
    sorter: Party
    recycler: Party
    unlisted_outlet: Party
    model_id: str = ""
    others: dict[str, Party] = field(default_factory=dict)

    def serial(self) -> fpb.BatteryRef:
        return fpb.BatteryRef(
            scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL,
            namespace=self.producer.participant.credit_code,
            value=f"SN{next(_serials):08d}",
        )


@dataclass
class Flows:
    runtime: ServiceRuntime
    stub: flows_pb2_grpc.FlowServiceAsyncStub  # grpc.aio at run time; the aio stub exists in the .pyi only
    registry: Registry

    @functools.cached_property
    def key(self) -> bytes:
        """The mesh's caller key: all runtimes of a test share its data directory, so they share the key."""
        return signing_key(self.runtime.settings, warn=False)

    async def call(self, method: str, request: Any, caller: Caller = PLATFORM) -> Any:
        return await getattr(self.stub, method)(request, metadata=caller.metadata(self.key), timeout=20)

    async def report(self, event: fpb.FlowEvent, caller: Caller) -> fpb.EventResult:
        reply = await self.call("ReportEvent", fpb.ReportEventRequest(event=event), caller)
        return reply.result  # type: ignore[no-any-return]

    @property
    def directory(self) -> DirectoryView:
        view = self.runtime.state["directory"]
        assert isinstance(view, DirectoryView)
        return view


def event(
    step: fpb.BizStep.ValueType,
    party: Party,
    batteries: Sequence[fpb.BatteryRef],
    when: dt.datetime,
    **fields: Any,
) -> fpb.FlowEvent:
    message = fpb.FlowEvent(
        event_id=fields.pop("event_id", new_event_id()),
        event_time=ts(when),
        event_time_zone_offset="+08:00",
        biz_step=step,
        facility_id=fields.pop("facility_id", party.site),
        batteries=list(batteries),
        **fields,
    )
    return message


async def party(
    registry: Registry,
    role: str,
    facility_type: rpb.FacilityType.ValueType,
    place: tuple[str, float, float],
    *,
    listed: bool = True,
) -> Party:
    participant = await registry.participant(role)
    site = await registry.facility(participant, place, facility_type)
    if listed:
        site = await registry.list_facility(site, JIANGSU_REGULATOR)
    return Party(participant, site)


async def build_network(registry: Registry, flows: Flows) -> Network:
    network = Network(
        producer=await party(registry, "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, XUANWU, listed=False),
        dealer=await party(registry, "DEALER", rpb.FACILITY_TYPE_DEALER_STORE, XUANWU, listed=False),
        outlet=await party(registry, "RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, XUANWU),
        storage=await party(registry, "TEMP_STORAGE_OPERATOR", rpb.FACILITY_TYPE_TEMP_STORAGE_POINT, QINHUAI),
        sorter=await party(registry, "SORTING_CENTER_OPERATOR", rpb.FACILITY_TYPE_REGIONAL_SORTING_CENTER, QINHUAI),
        recycler=await party(registry, "RECYCLING_ENTERPRISE", rpb.FACILITY_TYPE_RECYCLING_PLANT, XUANWU),
        unlisted_outlet=await party(
            registry, "RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, XUANWU, listed=False
        ),
    )
    sites = [network.producer, network.dealer, network.outlet, network.storage, network.sorter, network.recycler]

    async def directory_has_them() -> bool:
        return all(
            (f := flows.directory.facility(p.site)) is not None and f.accreditation == p_status(p) for p in sites
        )

    await eventually(directory_has_them, timeout=20)
    model = await flows.call(
        "RegisterBatteryModel",
        fpb.RegisterBatteryModelRequest(
            model=fpb.BatteryModel(
                model_code="TDR-48V20AH",
                chemistry=fpb.CHEMISTRY_LFP,
                nominal_voltage_v=48,
                capacity_ah=20,
                energy_wh=960,
                mass_kg=9.5,
                safe_service_life_years=5,
            )
        ),
        network.producer.caller,
    )
    network.model_id = model.model.model_id
    return network


def p_status(p: Party) -> str:
    return rpb.AccreditationStatus.Name(p.facility.accreditation.status).removeprefix("ACCREDITATION_STATUS_")


@pytest.fixture
def flows_settings() -> dict[str, Any]:
    """Settings overrides for the flows service (a test module redefines this fixture to change them)."""
    return {}


@pytest.fixture
async def flows(
    nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str, flows_settings: dict[str, Any]
) -> AsyncIterator[Flows]:
    """The registry on its own SQLite file, the flows service on the parametrized database."""
    registry_runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    runtime = await make_runtime(FLOWS, nats_url=nats_server.url, database_url=database_url, **flows_settings)
    await wait_health(registry_runtime, SERVING)
    await wait_health(runtime, SERVING)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{registry_runtime.port}") as registry_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel,
    ):
        registry = Registry(registry_runtime, registry_pb2_grpc.RegistryServiceStub(registry_channel))
        yield Flows(runtime, flows_pb2_grpc.FlowServiceStub(channel), registry)


@pytest.fixture
async def network(flows: Flows) -> Network:
    return await build_network(flows.registry, flows)
