"""A real registry (gRPC on port 0, real NATS, SQLite or PostgreSQL) and callers with identities."""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import Caller, signing_key
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.registry.domain.credit_code import make_credit_code
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory
from tests.foundation.test_health_readiness import SERVING, wait_health

PLATFORM = Caller(participant_id="00000000-0000-7000-8000-000000000001", roles=frozenset({"PLATFORM_OPERATOR"}))
JIANGSU_REGULATOR = Caller(
    participant_id="00000000-0000-7000-8000-000000000032",
    roles=frozenset({"REGULATOR"}),
    supervised_division="320000",
)
GUANGDONG_REGULATOR = Caller(
    participant_id="00000000-0000-7000-8000-000000000044",
    roles=frozenset({"REGULATOR"}),
    supervised_division="440000",
)
ANONYMOUS = Caller()

# Well-known places, WGS-84 (lat, lon): 玄武区 南京 (Xuanwu Lake), 秦淮区 (Fuzimiao), 南山区 深圳 (Shenzhen Bay Park).
XUANWU = ("320102", 32.0750, 118.7960)
QINHUAI = ("320104", 32.0205, 118.7884)
NANSHAN = ("440305", 22.5140, 113.9480)

_codes = itertools.count(1)


def credit_code(division: str = "320102") -> str:
    return make_credit_code(division, seed=next(_codes))


@dataclass
class Registry:
    runtime: ServiceRuntime
    stub: registry_pb2_grpc.RegistryServiceStub

    @functools.cached_property
    def key(self) -> bytes:
        """The mesh's caller key: all runtimes of a test share its data directory, so they share the key."""
        return signing_key(self.runtime.settings, warn=False)

    async def call(self, method: str, request: Any, caller: Caller = PLATFORM) -> Any:
        return await getattr(self.stub, method)(request, metadata=caller.metadata(self.key), timeout=10)

    async def participant(
        self, *roles: str, division: str = "320102", status: str = "ACTIVE", supervised: str = ""
    ) -> pb.Participant:
        """Register (as the platform) and, unless asked otherwise, activate a participant."""
        reply = await self.call(
            "RegisterParticipant",
            pb.RegisterParticipantRequest(
                participant=pb.Participant(
                    credit_code=credit_code(division),
                    legal_name=f"测试企业 {next(_codes)}",
                    roles=[pb.ParticipantRole.Value(f"PARTICIPANT_ROLE_{r}") for r in roles],
                    supervised_division_code=supervised,
                )
            ),
        )
        participant: pb.Participant = reply.participant
        if status == "ACTIVE":
            changed = await self.call(
                "ChangeParticipantStatus",
                pb.ChangeParticipantStatusRequest(
                    participant_id=participant.participant_id,
                    status=pb.PARTICIPANT_STATUS_ACTIVE,
                    reason="documents checked",
                    version=participant.version,
                ),
            )
            participant = changed.participant
        return participant

    async def facility(
        self,
        operator: pb.Participant,
        place: tuple[str, float, float] = XUANWU,
        facility_type: pb.FacilityType.ValueType = pb.FACILITY_TYPE_RECYCLING_OUTLET,
        code: str | None = None,
        caller: Caller | None = None,
    ) -> pb.Facility:
        county, lat, lon = place
        reply = await self.call(
            "RegisterFacility",
            pb.RegisterFacilityRequest(
                facility=facility_message(operator.participant_id, county, lat, lon, facility_type, code)
            ),
            caller or as_participant(operator),
        )
        return reply.facility  # type: ignore[no-any-return]

    async def list_facility(self, facility: pb.Facility, regulator: Caller = JIANGSU_REGULATOR) -> pb.Facility:
        """Submit for review (as its operator) and list it (as the regulator)."""
        operator = Caller(participant_id=facility.operator_id, roles=frozenset({"RECYCLING_OUTLET_OPERATOR"}))
        submitted = await self.call(
            "ChangeAccreditation",
            pb.ChangeAccreditationRequest(
                facility_id=facility.facility_id, status=pb.ACCREDITATION_STATUS_UNDER_REVIEW, reason="ready",
                version=facility.version,
            ),
            operator,
        )  # fmt: skip
        listed = await self.call(
            "ChangeAccreditation",
            pb.ChangeAccreditationRequest(
                facility_id=facility.facility_id, status=pb.ACCREDITATION_STATUS_LISTED, reason="inspected",
                version=submitted.facility.version,
            ),
            regulator,
        )  # fmt: skip
        return listed.facility  # type: ignore[no-any-return]


def facility_message(
    operator_id: str, county: str, lat: float, lon: float,
    facility_type: pb.FacilityType.ValueType = pb.FACILITY_TYPE_RECYCLING_OUTLET,
    code: str | None = None,
) -> pb.Facility:  # fmt: skip
    return pb.Facility(
        operator_id=operator_id,
        operator_facility_code=code or f"SITE-{next(_codes)}",
        name="以旧换新回收网点",
        facility_type=facility_type,
        county_code=county,
        location=pb.GeoPoint(latitude=lat, longitude=lon),
        address="测试路 1 号",
        opening_hours="09:00-18:00",
        phone="025-8888 0000",
        recycling_modes=[pb.RECYCLING_MODE_TRADE_IN, pb.RECYCLING_MODE_DROP_OFF],
        storage_limits=pb.StorageLimits(max_stock_kg=500, max_stock_units=60, max_dwell_days=30),
        safety=pb.SafetyAttributes(fire_class="B", has_discharge_equipment=True, has_monitoring=True),
    )


def as_participant(participant: pb.Participant) -> Caller:
    roles = frozenset(pb.ParticipantRole.Name(r).removeprefix("PARTICIPANT_ROLE_") for r in participant.roles)
    return Caller(
        participant_id=participant.participant_id, roles=roles, supervised_division=participant.supervised_division_code
    )


@pytest.fixture
async def registry(nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str) -> AsyncIterator[Registry]:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url, database_url=database_url)
    await wait_health(runtime, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield Registry(runtime, registry_pb2_grpc.RegistryServiceStub(channel))
