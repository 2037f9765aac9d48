"""The gateway's gRPC door against the real mesh: pass-through by method path, API keys verified by the
registry and evicted by its events, forged identities dropped, rate limits, deadlines, details, reflection."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.front import Front
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import PARTICIPANT_HEADER, ROLES_HEADER
from meshkit.errors import error_reason, field_violations, status_from_error
from tests.conftest import eventually
from tests.flows.conftest import event, ts
from tests.flows.test_flows_reporting import at
from tests.gateway.conftest import Mesh
from tests.registry.conftest import XUANWU

PRODUCED = ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC))


def auth(key: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), *extra)


def registry_stub(mesh: Mesh) -> Any:
    return registry_pb2_grpc.RegistryServiceStub(mesh.grpc_channel)


def flows_stub(mesh: Mesh) -> Any:
    return flows_pb2_grpc.FlowServiceStub(mesh.grpc_channel)


async def test_a_key_reaches_each_service_by_method_path(mesh: Mesh) -> None:
    listed = await registry_stub(mesh).ListParticipants(
        rpb.ListParticipantsRequest(page_size=100), metadata=auth(mesh.keys.platform), timeout=10
    )
    assert len(listed.participants) >= 9
    battery = mesh.network.serial()
    commissioning = event(
        fpb.BIZ_STEP_COMMISSIONING,
        mesh.network.producer,
        [battery],
        at(-30),
        model_id=mesh.network.model_id,
        production_date=PRODUCED,
    )
    call = flows_stub(mesh).ReportEvent(
        fpb.ReportEventRequest(event=commissioning), metadata=auth(mesh.keys.producer), timeout=10
    )
    reply = await call
    assert reply.result.outcome == fpb.EVENT_OUTCOME_ACCEPTED
    # The reporter is the key's participant: the identity came from the key, signed by the gateway.
    found = await flows_stub(mesh).QueryEvents(
        fpb.QueryEventsRequest(page_size=10), metadata=auth(mesh.keys.producer), timeout=10
    )
    assert {e.reporter_id for e in found.events} == {mesh.network.producer.id}
    initial = dict(await call.initial_metadata())
    assert len(initial["x-request-id"]) == 32
    assert len(initial["x-trace-id"]) == 32 and int(initial["x-trace-id"], 16) != 0


async def test_the_clients_request_id_is_kept(mesh: Mesh) -> None:
    call = registry_stub(mesh).ListParticipants(
        rpb.ListParticipantsRequest(page_size=1),
        metadata=auth(mesh.keys.platform, ("x-request-id", "req-7")),
        timeout=10,
    )
    await call
    assert dict(await call.initial_metadata())["x-request-id"] == "req-7"


async def test_no_key_is_anonymous_and_public_calls_work(mesh: Mesh) -> None:
    _county, lat, lon = XUANWU
    nearest = await registry_stub(mesh).FindNearestOutlets(
        rpb.FindNearestOutletsRequest(location=rpb.GeoPoint(latitude=lat, longitude=lon), limit=3), timeout=10
    )
    assert nearest.outlets
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await registry_stub(mesh).ListParticipants(rpb.ListParticipantsRequest(page_size=1), timeout=10)
    assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_identity_headers_from_a_client_are_dropped(mesh: Mesh) -> None:
    forged = ((PARTICIPANT_HEADER, "00000000-0000-7000-8000-000000000001"), (ROLES_HEADER, "PLATFORM_OPERATOR"))
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await registry_stub(mesh).ListParticipants(
            rpb.ListParticipantsRequest(page_size=1), metadata=forged, timeout=10
        )
    assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED  # no key: anonymous, whatever it claimed
    # With an enterprise's key the forged roles do not widen what it may see either: itself only.
    own = await registry_stub(mesh).ListParticipants(
        rpb.ListParticipantsRequest(page_size=100), metadata=auth(mesh.keys.enterprise_a, *forged), timeout=10
    )
    assert [p.participant_id for p in own.participants] == [mesh.network.outlet.id]


async def test_a_bad_key_is_unauthenticated_with_the_reason(mesh: Mesh) -> None:
    for bad in ("gmk_0123456789abcdef.not-the-secret", "not-a-key", mesh.keys.platform + "x"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry_stub(mesh).ListParticipants(
                rpb.ListParticipantsRequest(page_size=1), metadata=auth(bad), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(refused.value) in {"INVALID_API_KEY", "MALFORMED_API_KEY"}
        trailing = dict(refused.value.trailing_metadata() or ())
        assert trailing["www-authenticate"].startswith("Bearer")


async def test_a_revoked_key_stops_working_at_once_not_after_the_cache_time(mesh: Mesh) -> None:
    front = mesh.gateway.state["front"]
    assert isinstance(front, Front)
    assert front.credentials.ttl_seconds == 300  # the revocation must not wait for this
    registry = registry_stub(mesh)
    key = mesh.keys.enterprise_b
    me = await registry.ListCredentials(
        rpb.ListCredentialsRequest(participant_id=mesh.network.sorter.id), metadata=auth(key), timeout=10
    )
    key_id = key.split(".")[0]
    assert key_id in {c.key_id for c in me.credentials}
    await registry.RevokeCredential(rpb.RevokeCredentialRequest(key_id=key_id, reason="leaked"), metadata=auth(key))

    async def refused() -> bool:
        try:
            await registry.ListCredentials(
                rpb.ListCredentialsRequest(participant_id=mesh.network.sorter.id), metadata=auth(key), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code() is grpc.StatusCode.UNAUTHENTICATED
        return False

    started = asyncio.get_running_loop().time()
    await eventually(refused, timeout=5)
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_suspended_participant_loses_access_at_once(mesh: Mesh) -> None:
    registry = registry_stub(mesh)
    participant = mesh.network.outlet.participant
    current = await registry.GetParticipant(
        rpb.GetParticipantRequest(participant_id=participant.participant_id), metadata=auth(mesh.keys.enterprise_a)
    )
    await registry.ChangeParticipantStatus(
        rpb.ChangeParticipantStatusRequest(
            participant_id=participant.participant_id,
            status=rpb.PARTICIPANT_STATUS_SUSPENDED,
            reason="inspection",
            version=current.participant.version,
        ),
        metadata=auth(mesh.keys.platform),
    )

    async def refused() -> bool:
        try:
            await registry.GetParticipant(
                rpb.GetParticipantRequest(participant_id=participant.participant_id),
                metadata=auth(mesh.keys.enterprise_a),
            )
        except grpc.aio.AioRpcError as error:
            return error.code() is grpc.StatusCode.UNAUTHENTICATED and error_reason(error) == "PARTICIPANT_NOT_ACTIVE"
        return False

    await eventually(refused, timeout=5)


async def test_rich_error_details_come_back_unchanged(mesh: Mesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await registry_stub(mesh).RegisterParticipant(
            rpb.RegisterParticipantRequest(participant=rpb.Participant(credit_code="not a code")),
            metadata=auth(mesh.keys.platform),
            timeout=10,
        )
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = {violation.field for violation in field_violations(invalid.value)}
    assert "participant.credit_code" in fields
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await registry_stub(mesh).GetFacility(
            rpb.GetFacilityRequest(facility_id="00000000-0000-7000-8000-00000000dead"),
            metadata=auth(mesh.keys.platform),
            timeout=10,
        )
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    status = status_from_error(missing.value)
    assert status is not None and status.details


async def test_streams_pass_through_both_ways(mesh: Mesh) -> None:
    n = mesh.network
    batteries = [n.serial() for _ in range(3)]

    async def lines() -> AsyncIterator[fpb.UploadEventsRequest]:
        for battery in batteries:
            yield fpb.UploadEventsRequest(
                event=event(
                    fpb.BIZ_STEP_COMMISSIONING,
                    n.producer,
                    [battery],
                    at(-30),
                    model_id=n.model_id,
                    production_date=PRODUCED,
                )
            )

    summary = await flows_stub(mesh).UploadEvents(lines(), metadata=auth(mesh.keys.producer), timeout=30)
    assert summary.accepted == 3
    stream = flows_stub(mesh).SubscribeEvents(
        fpb.SubscribeEventsRequest(resume_token="0", biz_steps=[fpb.BIZ_STEP_COMMISSIONING]),
        metadata=auth(mesh.keys.platform),
        timeout=30,
    )
    received = [await stream.read() for _ in range(3)]
    assert {r.event.batteries[0].value for r in received} == {b.value for b in batteries}
    stream.cancel()


async def test_reflection_lists_every_service_behind_the_gateway(mesh: Mesh) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(mesh.grpc_channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for answer in stub.ServerReflectionInfo(ask(), timeout=10):
        names = {service.name for service in answer.list_services_response.service}
        break
    assert {
        "greenmesh.registry.v1.RegistryService",
        "greenmesh.flows.v1.FlowService",
        "greenmesh.energy.v1.EnergyService",
        "greenmesh.mesh.v1.MeshStatusService",
    } <= names
    health = await health_pb2_grpc.HealthStub(mesh.grpc_channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_unknown_methods_are_unimplemented(mesh: Mesh) -> None:
    call: Any = mesh.grpc_channel.unary_unary("/greenmesh.flows.v1.FlowService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await call(b"", timeout=5)
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED


class TestLimits:
    @pytest.fixture
    def gateway_settings(self) -> dict[str, Any]:
        return {"gateway_rate_per_second": 0.5, "gateway_rate_burst": 3, "gateway_default_timeout_seconds": 5}

    async def test_over_the_rate_limit_is_resource_exhausted_with_the_wait(self, mesh: Mesh) -> None:
        stub = registry_stub(mesh)
        request = rpb.ListParticipantsRequest(page_size=1)
        for _ in range(3):
            await stub.ListParticipants(request, metadata=auth(mesh.keys.regulator), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stub.ListParticipants(request, metadata=auth(mesh.keys.regulator), timeout=10)
        assert limited.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(limited.value) == "RATE_LIMITED"
        status = status_from_error(limited.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details if detail.Is(retry.DESCRIPTOR))
        assert 0 < retry.retry_delay.ToNanoseconds() <= 2e9
        assert dict(limited.value.trailing_metadata() or ())["retry-after"] == "2"
        # Another key has its own bucket.
        await stub.ListParticipants(request, metadata=auth(mesh.keys.platform), timeout=10)


class TestDeadlines:
    @pytest.fixture
    def gateway_settings(self) -> dict[str, Any]:
        return {"gateway_default_timeout_seconds": 0.001}

    async def test_every_backend_call_has_a_deadline(self, mesh: Mesh) -> None:
        stub = registry_stub(mesh)
        request = rpb.GetCountyCoverageRequest()  # the national coverage: tens of milliseconds of work
        for _ in range(3):  # gRPC's deadlines are coarse; none of the three calls may get through
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.GetCountyCoverage(request, metadata=auth(mesh.keys.platform))
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        # A client's own deadline replaces the default.
        national = await stub.GetCountyCoverage(request, metadata=auth(mesh.keys.platform), timeout=10)
        assert national.county_count > 2800
