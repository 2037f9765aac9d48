"""A real mesh for the energy tests: nats-server, the registry (SQLite) and the energy service (SQLite or
PostgreSQL) on port 0; a data-centre operator and a telecom operator with their sites registered in the registry
(so in its directory), and helpers to build requests."""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import date_pb2
from sqlmodel import col, select

from greenmesh.energy.v1 import energy_pb2 as pb
from greenmesh.energy.v1 import energy_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import Caller, signing_key
from meshkit.errors import FieldViolation, error_reason, field_violations
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from meshkit.tables import OutboxEvent
from services.energy.service import DEFINITION as ENERGY
from services.flows.directory_view import DirectoryView
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import NANSHAN, PLATFORM, QINHUAI, XUANWU, Registry, as_participant

CN = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2026, 1, 1, tzinfo=CN)
QUARTER = 900
_serials = itertools.count(1)


def ts(moment: dt.datetime) -> Timestamp:
    return Timestamp(seconds=int(moment.timestamp()))


def period(start: dt.datetime, end: dt.datetime) -> pb.Period:
    return pb.Period(start_time=ts(start), end_time=ts(end))


def day(value: dt.date) -> date_pb2.Date:
    return date_pb2.Date(year=value.year, month=value.month, day=value.day)


def minutes(n: int) -> Duration:
    return Duration(seconds=60 * n)


def kw(value: float) -> pb.Quantity:
    return pb.Quantity(value=value, unit=pb.UNIT_KW)


def serial() -> str:
    return f"SN-{next(_serials):06d}"


def readings(
    start: dt.datetime, values: Sequence[float], *, step: int = QUARTER, estimated: Sequence[int] = ()
) -> list[pb.Reading]:
    """Back-to-back readings of ``step`` seconds from ``start``."""
    first = int(start.timestamp())
    return [
        pb.Reading(
            start_time=Timestamp(seconds=first + i * step),
            end_time=Timestamp(seconds=first + (i + 1) * step),
            value=v,
            estimated=i in estimated,
        )
        for i, v in enumerate(values)
    ]


@dataclass
class Site:
    operator: rpb.Participant
    facility: rpb.Facility

    @property
    def caller(self) -> Caller:
        return as_participant(self.operator)

    @property
    def id(self) -> str:
        return self.facility.facility_id


@dataclass
class Energy:
    runtime: ServiceRuntime
    stub: energy_pb2_grpc.EnergyServiceAsyncStub  # grpc.aio at run time; the aio stub exists in the .pyi only
    registry: Registry
    data_center: Site  # a DATA_CENTER in 南京 玄武 (32) run by a DATA_CENTER_OPERATOR
    base_station: Site  # a BASE_STATION in 南京 秦淮 (32) run by a TELECOM_OPERATOR
    shenzhen: Site  # a DATA_CENTER in 深圳 南山 (44) run by another DATA_CENTER_OPERATOR
    outlet_id: str  # a RECYCLING_OUTLET: a registry facility that is not a site of this service

    @functools.cached_property
    def key(self) -> bytes:
        """The mesh's caller key: all runtimes of a test share its data directory, so they share the key."""
        return signing_key(self.runtime.settings, warn=False)

    async def call(self, method: str, request: Any, caller: Caller = PLATFORM) -> Any:
        return await getattr(self.stub, method)(request, metadata=caller.metadata(self.key), timeout=30)

    async def refused(self, method: str, request: Any, caller: Caller = PLATFORM) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await self.call(method, request, caller)
        return raised.value

    async def outbox(self, event_type: str) -> list[bytes]:
        async with self.runtime.database.session() as session:
            rows = await session.exec(
                select(OutboxEvent.payload)
                .where(col(OutboxEvent.event_type) == event_type)
                .order_by(col(OutboxEvent.seq))
            )
            return list(rows.all())

    async def count(self, table: str) -> int:
        from sqlalchemy import text

        async with self.runtime.database.session() as session:
            result = await session.exec(text(f"SELECT COUNT(*) FROM {table}"))  # type: ignore[call-overload]
            return int(result.one()[0])

    # -- builders ------------------------------------------------------------------------------------------------

    async def catalogue_entry(self, caller: Caller | None = None, **fields: Any) -> pb.CatalogueEntry:
        entry = pb.CatalogueEntry(
            equipment_class=fields.pop("equipment_class", pb.EQUIPMENT_CLASS_UPS),
            manufacturer=fields.pop("manufacturer", "华为"),
            model=fields.pop("model", f"UPS5000-{next(_serials)}"),
            rated_capacity=fields.pop("rated_capacity", kw(100)),
            efficiency_curve=fields.pop(
                "efficiency_curve",
                [
                    pb.EfficiencyPoint(load_fraction=0.25, efficiency=0.94),
                    pb.EfficiencyPoint(load_fraction=0.5, efficiency=0.96),
                    pb.EfficiencyPoint(load_fraction=0.75, efficiency=0.965),
                    pb.EfficiencyPoint(load_fraction=1.0, efficiency=0.96),
                ],
            ),
            **fields,
        )
        reply = await self.call(
            "CreateCatalogueEntry", pb.CreateCatalogueEntryRequest(entry=entry), caller or self.data_center.caller
        )
        return reply.entry  # type: ignore[no-any-return]

    async def asset(self, site: Site | None = None, **fields: Any) -> pb.Asset:
        site = site or self.data_center
        asset = pb.Asset(
            site_id=site.id,
            serial_number=fields.pop("serial_number", serial()),
            lifecycle_state=fields.pop("lifecycle_state", pb.LIFECYCLE_STATE_IN_SERVICE),
            lifecycle_date=fields.pop("lifecycle_date", day(dt.date(2025, 6, 1))),
            **fields,
        )
        if not asset.catalogue_entry_id and not asset.HasField("rated_capacity"):
            asset.catalogue_entry_id = (await self.catalogue_entry()).catalogue_entry_id
        reply = await self.call("RegisterAsset", pb.RegisterAssetRequest(asset=asset), site.caller)
        return reply.asset  # type: ignore[no-any-return]

    async def meter(self, site: Site | None = None, **fields: Any) -> pb.Meter:
        site = site or self.data_center
        meter = pb.Meter(
            site_id=site.id,
            quantity=fields.pop("quantity", pb.METER_QUANTITY_ACTIVE_ENERGY),
            unit=fields.pop("unit", pb.UNIT_KWH),
            mode=fields.pop("mode", pb.READING_MODE_INTERVAL),
            interval=fields.pop("interval", minutes(15)),
            role=fields.pop("role", pb.METER_ROLE_FACILITY_TOTAL),
            **fields,
        )
        reply = await self.call("CreateMeter", pb.CreateMeterRequest(meter=meter), site.caller)
        return reply.meter  # type: ignore[no-any-return]

    async def upsert(
        self, meter: pb.Meter, items: Sequence[pb.Reading], caller: Caller | None = None
    ) -> pb.UpsertReadingsResponse:
        reply = await self.call(
            "UpsertReadings",
            pb.UpsertReadingsRequest(meter_id=meter.meter_id, readings=list(items)),
            caller or self.data_center.caller,
        )
        return reply  # type: ignore[no-any-return]

    @property
    def directory(self) -> DirectoryView:
        view = self.runtime.state["directory"]
        assert isinstance(view, DirectoryView)
        return view


def violations_of(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {v.field: v.description for v in field_violations(error)}


def reason_of(error: grpc.aio.AioRpcError) -> str | None:
    return error_reason(error)


def has_violation(error: grpc.aio.AioRpcError, field: str, fragment: str = "") -> bool:
    found: list[FieldViolation] = field_violations(error)
    return any(v.field == field and fragment in v.description for v in found)


async def site(
    registry: Registry, role: str, facility_type: rpb.FacilityType.ValueType, place: tuple[str, float, float]
) -> Site:
    division = place[0]
    operator = await registry.participant(role, division=division)
    facility = await registry.facility(operator, place, facility_type)
    return Site(operator, facility)


@pytest.fixture
async def energy(nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str) -> AsyncIterator[Energy]:
    """The registry on its own SQLite file, the energy service on the parametrized database, three sites."""
    registry_runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    runtime = await make_runtime(ENERGY, nats_url=nats_server.url, database_url=database_url)
    await wait_health(registry_runtime, SERVING)
    await wait_health(runtime, SERVING)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{registry_runtime.port}") as registry_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel,
    ):
        registry = Registry(registry_runtime, registry_pb2_grpc.RegistryServiceStub(registry_channel))
        data_center = await site(registry, "DATA_CENTER_OPERATOR", rpb.FACILITY_TYPE_DATA_CENTER, XUANWU)
        base_station = await site(registry, "TELECOM_OPERATOR", rpb.FACILITY_TYPE_BASE_STATION, QINHUAI)
        shenzhen = await site(registry, "DATA_CENTER_OPERATOR", rpb.FACILITY_TYPE_DATA_CENTER, NANSHAN)
        recycler = await registry.participant("RECYCLING_OUTLET_OPERATOR")
        outlet = await registry.facility(recycler, XUANWU, rpb.FACILITY_TYPE_RECYCLING_OUTLET)
        service = Energy(
            runtime,
            energy_pb2_grpc.EnergyServiceStub(channel),
            registry,
            data_center,
            base_station,
            shenzhen,
            outlet.facility_id,
        )
        wanted = [data_center.id, base_station.id, shenzhen.id, outlet.facility_id]

        async def directory_has_them() -> bool:
            return all(service.directory.facility(f) is not None for f in wanted)

        await eventually(directory_has_them, timeout=20)
        yield service
