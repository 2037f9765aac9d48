"""REST/JSON transcoding against real services: the registry (and flows) on port 0 with NATS and SQLite, the
transcoder's routes in a Starlette app driven in process by httpx (and once through uvicorn, to disconnect),
and a small admitter that maps test API keys to signed caller identities."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.calls import CallPlan, GatewayRejection
from gateway.http import EmbeddedServer, serve_http
from gateway.http_rules import load_bindings
from gateway.mesh_status import ServiceChannels, mesh_status
from gateway.rest import build_rest_routes
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import Caller
from meshkit.config import MeshSettings
from meshkit.localinfra import NatsServer, free_port
from meshkit.telemetry import Telemetry, client_interceptors, setup_telemetry
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.flows.conftest import Flows, Network, build_network
from tests.flows.test_flows_reporting import at, collected
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import PLATFORM, XUANWU, Registry, credit_code

STATUS_PATH = "/greenmesh.mesh.v1.MeshStatusService/GetMeshStatus"
MAX_BODY = 4096
CLIENT = ("203.0.113.7", 4711)
TRACE_ID = re.compile(r"[0-9a-f]{32}")
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


# ---------------------------------------------------------------------------------------------------------------
# The admitter of these tests: API keys of its own, each mapped to a caller whose identity it signs.


@dataclass
class KeyAdmitter:
    signing: bytes
    callers: dict[str, Caller] = field(default_factory=dict)
    limited: set[str] = field(default_factory=set)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def key_for(self, caller: Caller) -> str:
        key = f"test.{uuid.uuid4().hex}"
        self.callers[key] = caller
        return key

    async def admit(
        self,
        *,
        grpc_path: str,
        api_key: str | None,
        client_timeout: float | None,
        request_id: str | None,
        client_address: str,
    ) -> CallPlan:
        self.seen.append(
            {
                "grpc_path": grpc_path,
                "api_key": api_key,
                "client_timeout": client_timeout,
                "request_id": request_id,
                "client_address": client_address,
            }
        )
        request_id = request_id or f"made-{uuid.uuid4().hex[:8]}"
        headers = {"x-request-id": request_id, "x-admitted-by": "test"}
        identity: list[tuple[str, str]] = []
        if api_key is not None:
            caller = self.callers.get(api_key)
            if caller is None:
                raise GatewayRejection(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "unknown API key",
                    details=[error_details_pb2.ErrorInfo(reason="INVALID_KEY", domain="greenmesh.io")],
                    headers={**headers, "www-authenticate": 'Bearer realm="greenmesh", error="invalid_token"'},
                )
            if api_key in self.limited:
                retry = Duration()
                retry.FromMilliseconds(2500)
                raise GatewayRejection(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "rate limit exceeded",
                    details=[error_details_pb2.RetryInfo(retry_delay=retry)],
                    headers=headers,
                )
            identity = caller.metadata(self.signing)
        return CallPlan(
            metadata=(("x-request-id", request_id), *identity),
            timeout=client_timeout or 10.0,
            request_id=request_id,
            response_headers=headers,
        )


@dataclass
class Rest:
    http: httpx.AsyncClient
    app: Starlette
    admitter: KeyAdmitter
    exporter: InMemorySpanExporter
    registry: Registry
    platform_key: str

    def auth(self, caller: Caller | None = None, /, **headers: str) -> dict[str, str]:
        key = self.platform_key if caller is None else self.admitter.key_for(caller)
        return {"Authorization": f"Bearer {key}", **headers}


def gateway_app(
    settings: MeshSettings, telemetry: Telemetry, admitter: KeyAdmitter
) -> tuple[Starlette, ServiceChannels]:
    """The transcoder's routes after an app route of its own, as the gateway mounts them."""
    channels = ServiceChannels(settings, interceptors=client_interceptors(telemetry))

    async def status(_request: Message) -> Message:
        return await mesh_status(channels, "gateway-under-test:0", True, timeout=1.0)

    async def healthz(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("fine")

    routes = build_rest_routes(
        load_bindings(), channels, admitter, {STATUS_PATH: status}, telemetry.tracer("gateway.rest"), MAX_BODY
    )
    return Starlette(routes=[Route("/healthz", healthz), *routes]), channels


def gateway_settings(tmp_path: Path, **addresses: str) -> MeshSettings:
    overrides: dict[str, Any] = {"data_dir": tmp_path / "gateway-data", **addresses}
    return MeshSettings(**overrides)


@pytest.fixture
async def rest(tmp_path: Path, nats_server: NatsServer, make_runtime: RuntimeFactory) -> AsyncIterator[Rest]:
    """The registry (its spans recorded too) behind the transcoder; flows is configured but not running."""
    exporter = InMemorySpanExporter()
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url, span_processors=[SimpleSpanProcessor(exporter)])
    await wait_health(runtime, SERVING)
    settings = gateway_settings(
        tmp_path,
        registry_addr=f"127.0.0.1:{runtime.port}",
        flows_addr=f"127.0.0.1:{free_port()}",  # nobody listens: UNAVAILABLE
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        registry = Registry(runtime, registry_pb2_grpc.RegistryServiceStub(channel))
        async with transcoding(tmp_path, settings, registry, exporter) as built:
            yield built


@contextlib.asynccontextmanager
async def transcoding(
    tmp_path: Path, settings: MeshSettings, registry: Registry, exporter: InMemorySpanExporter
) -> AsyncIterator[Rest]:
    telemetry = setup_telemetry("gateway", province="32", data_dir=tmp_path, processors=[SimpleSpanProcessor(exporter)])
    admitter = KeyAdmitter(signing=registry.key)
    app, channels = gateway_app(settings, telemetry, admitter)
    transport = httpx.ASGITransport(app=app, client=CLIENT)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as http:
            yield Rest(http, app, admitter, exporter, registry, admitter.key_for(PLATFORM))
    finally:
        await channels.close()
        telemetry.shutdown()


@dataclass
class FlowRest:
    rest: Rest
    flows: Flows
    network: Network


@pytest.fixture
async def flow_rest(tmp_path: Path, nats_server: NatsServer, make_runtime: RuntimeFactory) -> AsyncIterator[FlowRest]:
    """Registry and flows (SQLite) with the flows tests' recycling network, behind the transcoder."""
    registry_runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    flows_runtime = await make_runtime(FLOWS, nats_url=nats_server.url)
    await wait_health(registry_runtime, SERVING)
    await wait_health(flows_runtime, SERVING)
    settings = gateway_settings(
        tmp_path,
        registry_addr=f"127.0.0.1:{registry_runtime.port}",
        flows_addr=f"127.0.0.1:{flows_runtime.port}",
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{registry_runtime.port}") as registry_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{flows_runtime.port}") as flows_channel,
    ):
        registry = Registry(registry_runtime, registry_pb2_grpc.RegistryServiceStub(registry_channel))
        flows = Flows(flows_runtime, flows_pb2_grpc.FlowServiceStub(flows_channel), registry)
        network = await build_network(registry, flows)
        async with transcoding(tmp_path, settings, registry, InMemorySpanExporter()) as built:
            yield FlowRest(built, flows, network)


def assert_common_headers(response: httpx.Response, request_id: str | None = None) -> None:
    """Every response: a request id (the given one when the client sent it) and the 32-hex trace id."""
    assert response.headers["x-request-id"], response.headers
    if request_id is not None:
        assert response.headers["x-request-id"] == request_id
    assert TRACE_ID.fullmatch(response.headers["x-trace-id"]), response.headers


def assert_status(response: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    """An error response: the HTTP status, JSON, and a google.rpc.Status body with the gRPC code's number."""
    assert response.status_code == http_status, response.text
    assert response.headers["content-type"] == "application/json"
    assert_common_headers(response)
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and isinstance(body["details"], list)
    return body


def detail(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in body["details"]:
        if item["@type"] == f"type.googleapis.com/google.rpc.{kind}":
            return dict(item)
    raise AssertionError(f"no {kind} in {body['details']}")


async def participant(rest: Rest, *roles: str) -> rpb.Participant:
    return await rest.registry.participant(*roles)


async def stored(rest: Rest, participant_id: str) -> rpb.Participant:
    reply = await rest.registry.call("GetParticipant", rpb.GetParticipantRequest(participant_id=participant_id))
    return reply.participant  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------------------------
# Routing, path variables, query parameters, bodies


async def test_get_by_path_variable_renders_the_proto3_json_mapping(rest: Rest) -> None:
    dealer = await participant(rest, "DEALER")
    response = await rest.http.get(f"/v1/participants/{dealer.participant_id}", headers=rest.auth())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-admitted-by"] == "test"  # the plan's response headers
    assert_common_headers(response)
    body = response.json()["participant"]
    assert body["participantId"] == dealer.participant_id
    assert body["version"] == "2"  # int64 as a string (registered, then activated)
    assert body["status"] == "PARTICIPANT_STATUS_ACTIVE" and body["roles"] == ["PARTICIPANT_ROLE_DEALER"]
    assert RFC3339.fullmatch(body["createdAt"]), body["createdAt"]
    assert body["shortName"] == "" and body["supervisedDivisionCode"] == ""  # defaults printed
    assert body["statusHistory"][0]["status"] == "PARTICIPANT_STATUS_ACTIVE"
    # What the admitter was asked: the method, the bearer key, no deadline, the client's address.
    seen = rest.admitter.seen[-1]
    assert seen == {
        "grpc_path": "/greenmesh.registry.v1.RegistryService/GetParticipant",
        "api_key": rest.platform_key,
        "client_timeout": None,
        "request_id": None,
        "client_address": CLIENT[0],
    }


async def test_additional_binding_finds_by_credit_code_and_x_api_key_works(rest: Rest) -> None:
    dealer = await participant(rest, "DEALER")
    response = await rest.http.get(
        f"/v1/participants:byCreditCode/{dealer.credit_code}", headers={"X-Api-Key": rest.platform_key}
    )
    assert response.status_code == 200, response.text
    assert response.json()["participant"]["participantId"] == dealer.participant_id
    assert rest.admitter.seen[-1]["api_key"] == rest.platform_key


async def test_query_parameters_filter_a_list(rest: Rest) -> None:
    dealer = await participant(rest, "DEALER")
    recycler = await participant(rest, "RECYCLING_ENTERPRISE")
    pending = await rest.registry.participant("RECYCLING_ENTERPRISE", status="PENDING")
    response = await rest.http.get(
        "/v1/participants",
        params=[("role", "PARTICIPANT_ROLE_RECYCLING_ENTERPRISE"), ("status", "2"), ("pageSize", "100")],
        headers=rest.auth(),
    )
    assert response.status_code == 200, response.text
    ids = {p["participantId"] for p in response.json()["participants"]}
    assert recycler.participant_id in ids
    assert dealer.participant_id not in ids and pending.participant_id not in ids
    assert response.json()["nextPageToken"] == ""


async def test_nested_repeated_and_double_query_parameters_anonymously(rest: Rest) -> None:
    operator = await participant(rest, "RECYCLING_OUTLET_OPERATOR")
    site = await rest.registry.list_facility(await rest.registry.facility(operator, XUANWU))
    _county, lat, lon = XUANWU
    near = [("location.latitude", str(lat + 0.001)), ("location.longitude", str(lon)), ("limit", "5")]
    response = await rest.http.get(
        "/v1/outlets:nearest",
        params=[*near, ("facility_types", "FACILITY_TYPE_COOP_STATION"), ("facilityTypes", "1")],
    )
    assert response.status_code == 200, response.text
    outlets = response.json()["outlets"]
    assert [o["facilityId"] for o in outlets] == [site.facility_id]
    assert outlets[0]["facilityType"] == "FACILITY_TYPE_RECYCLING_OUTLET"
    assert 50 < outlets[0]["distanceM"] < 500  # 0.001° of latitude north: about 111 m
    assert rest.admitter.seen[-1]["api_key"] is None  # anonymous: no credential sent
    other = await rest.http.get("/v1/outlets:nearest", params=[*near, ("facility_types", "FACILITY_TYPE_COOP_STATION")])
    assert other.status_code == 200 and other.json()["outlets"] == []


async def test_bad_query_parameters_are_400_with_a_field_violation(rest: Rest) -> None:
    unknown = await rest.http.get("/v1/participants", params={"rol": "X"}, headers=rest.auth())
    body = assert_status(unknown, 400, 3)
    assert detail(body, "BadRequest")["fieldViolations"][0]["field"] == "rol"
    bad_enum = await rest.http.get("/v1/participants", params={"role": "KING"}, headers=rest.auth())
    violation = detail(assert_status(bad_enum, 400, 3), "BadRequest")["fieldViolations"][0]
    assert violation["field"] == "role" and "ParticipantRole" in violation["description"]
    twice = await rest.http.get(
        "/v1/participants", params=[("page_size", "1"), ("page_size", "2")], headers=rest.auth()
    )
    assert detail(assert_status(twice, 400, 3), "BadRequest")["fieldViolations"][0]["field"] == "page_size"


async def test_named_body_then_body_star(rest: Rest) -> None:
    code = credit_code()
    registered = await rest.http.post(
        "/v1/participants",
        json={
            "creditCode": code,
            "legal_name": "南京测试回收有限公司",
            "roles": ["PARTICIPANT_ROLE_RECYCLING_ENTERPRISE"],
        },
        headers=rest.auth(),
    )
    assert registered.status_code == 200, registered.text
    created = registered.json()["participant"]
    assert (created["status"], created["version"], created["legalName"]) == (
        "PARTICIPANT_STATUS_PENDING_REVIEW",
        "1",
        "南京测试回收有限公司",
    )
    changed = await rest.http.post(
        f"/v1/participants/{created['participantId']}:changeStatus",
        json={"status": "PARTICIPANT_STATUS_ACTIVE", "reason": "documents checked", "version": "1"},
        headers=rest.auth(),
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["participant"]["version"] == "2"
    now = await stored(rest, created["participantId"])
    assert (now.status, now.credit_code, now.version) == (rpb.PARTICIPANT_STATUS_ACTIVE, code, 2)


async def test_unknown_json_fields_and_malformed_json_are_rejected(rest: Rest) -> None:
    unknown = await rest.http.post(
        "/v1/participants", json={"creditCode": credit_code(), "nickName": "x"}, headers=rest.auth()
    )
    violations = detail(assert_status(unknown, 400, 3), "BadRequest")["fieldViolations"]
    assert violations[0]["field"] == "participant.nickName"
    wrong_type = await rest.http.post("/v1/participants/p:changeStatus", json={"version": "two"}, headers=rest.auth())
    assert detail(assert_status(wrong_type, 400, 3), "BadRequest")["fieldViolations"][0]["field"] == "version"
    malformed = await rest.http.post(
        "/v1/participants", content=b'{"creditCode": ', headers=rest.auth(**{"Content-Type": "application/json"})
    )
    assert "not valid JSON" in assert_status(malformed, 400, 3)["message"]
    star_query = await rest.http.post(
        "/v1/participants/p:changeStatus", params={"reason": "x"}, json={}, headers=rest.auth()
    )
    assert detail(assert_status(star_query, 400, 3), "BadRequest")["fieldViolations"][0]["field"] == "reason"


async def test_patch_fills_the_field_mask_from_the_body(rest: Rest) -> None:
    dealer = await participant(rest, "DEALER")
    url = f"/v1/participants/{dealer.participant_id}"
    # No mask and no version: the mask made from the body's keys (short_name, contact_phone) passes the
    # registry's mask check (an empty or unknown path would be 400), then the stale version is ABORTED (409).
    stale = await rest.http.patch(
        url, json={"shortName": "新简称", "contactPhone": "025-1234 5678"}, headers=rest.auth()
    )
    aborted = assert_status(stale, 409, 10)
    info = detail(aborted, "ErrorInfo")
    assert info["reason"] == "CONCURRENT_MODIFICATION" and info["metadata"]["current_version"] == "2"
    assert (await stored(rest, dealer.participant_id)).short_name == ""
    # A mask the client sets is kept: only short_name changes, although legalName is in the body too.
    response = await rest.http.patch(
        url,
        params={"update_mask": "short_name"},
        json={"shortName": "新简称", "legalName": "改不了的名字", "version": "2"},
        headers=rest.auth(),
    )
    assert response.status_code == 200, response.text
    after = await stored(rest, dealer.participant_id)
    assert (after.short_name, after.legal_name, after.contact_phone) == ("新简称", dealer.legal_name, "")
    assert after.version == 3
    assert response.json()["participant"]["version"] == "3"


async def test_patch_facility_changes_only_the_sent_fields(rest: Rest) -> None:
    operator = await participant(rest, "RECYCLING_OUTLET_OPERATOR")
    site = await rest.registry.facility(operator)
    url = f"/v1/facilities/{site.facility_id}"
    body = {"phone": "025-8888 1111", "openingHours": "08:00-20:00", "version": str(site.version)}
    response = await rest.http.patch(url, params={"updateMask": "phone,openingHours"}, json=body, headers=rest.auth())
    assert response.status_code == 200, response.text
    reply = await rest.registry.call("GetFacility", rpb.GetFacilityRequest(facility_id=site.facility_id))
    now: rpb.Facility = reply.facility
    assert (now.phone, now.opening_hours) == ("025-8888 1111", "08:00-20:00")
    assert (now.name, now.address, now.county_code) == (site.name, site.address, site.county_code)
    assert list(now.recycling_modes) == list(site.recycling_modes) and now.version == site.version + 1
    # Without a mask the body's keys are the mask; the version is then stale: ABORTED, nothing changed.
    again = await rest.http.patch(url, json={"name": "另一个名字"}, headers=rest.auth())
    assert_status(again, 409, 10)
    reply = await rest.registry.call("GetFacility", rpb.GetFacilityRequest(facility_id=site.facility_id))
    assert reply.facility.name == site.name


# ---------------------------------------------------------------------------------------------------------------
# Errors: the table on real backend errors, the gateway's own refusals


async def test_backend_errors_follow_the_status_table(rest: Rest) -> None:
    missing = await rest.http.post("/v1/participants", json={"legalName": "无代码"}, headers=rest.auth())
    fields = {v["field"] for v in detail(assert_status(missing, 400, 3), "BadRequest")["fieldViolations"]}
    assert "participant.credit_code" in fields

    not_found = await rest.http.get(f"/v1/participants/{uuid.uuid4()}", headers=rest.auth())
    assert detail(assert_status(not_found, 404, 5), "ResourceInfo")["resourceType"] == "participant"

    dealer = await participant(rest, "DEALER")
    duplicate = await rest.http.post(
        "/v1/participants",
        json={"creditCode": dealer.credit_code, "legalName": "重复", "roles": ["PARTICIPANT_ROLE_DEALER"]},
        headers=rest.auth(),
    )
    assert detail(assert_status(duplicate, 409, 6), "ErrorInfo")["reason"] == "ALREADY_EXISTS"

    other = await participant(rest, "DEALER")
    as_other = rest.auth(Caller(participant_id=other.participant_id, roles=frozenset({"DEALER"})))
    denied = await rest.http.patch(
        f"/v1/participants/{dealer.participant_id}", json={"shortName": "x"}, headers=as_other
    )
    assert detail(assert_status(denied, 403, 7), "ErrorInfo")["reason"] == "NOT_OWNER_OR_REGULATOR"

    anonymous = await rest.http.patch(f"/v1/participants/{dealer.participant_id}", json={"shortName": "x"})
    assert_status(anonymous, 401, 16)
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="greenmesh"'

    backwards = await rest.http.post(
        f"/v1/participants/{dealer.participant_id}:changeStatus",
        json={"status": "PARTICIPANT_STATUS_PENDING_REVIEW", "reason": "again", "version": "2"},
        headers=rest.auth(),
    )
    assert detail(assert_status(backwards, 400, 9), "ErrorInfo")["reason"] == "ILLEGAL_STATUS_TRANSITION"

    unavailable = await rest.http.get("/v1/rules", headers=rest.auth())  # flows is not running
    assert_status(unavailable, 503, 14)

    # gRPC deadlines are coarse (a nanosecond is often no deadline at all): 1 ms against the national coverage,
    # tens of milliseconds of work.
    late = await rest.http.get("/v1/coverage", headers=rest.auth(**{"Grpc-Timeout": "1m"}))
    assert_status(late, 504, 4)
    assert rest.admitter.seen[-1]["client_timeout"] == pytest.approx(1e-3)


async def test_admission_refusals_become_http_errors(rest: Rest) -> None:
    bad_key = await rest.http.get("/v1/participants", headers={"Authorization": "Bearer nope"})
    body = assert_status(bad_key, 401, 16)
    assert detail(body, "ErrorInfo")["reason"] == "INVALID_KEY"
    # The rejection's own headers win (its challenge, its request id).
    assert bad_key.headers["www-authenticate"] == 'Bearer realm="greenmesh", error="invalid_token"'
    assert bad_key.headers["x-request-id"].startswith("made-")

    limited_key = rest.admitter.key_for(PLATFORM)
    rest.admitter.limited.add(limited_key)
    limited = await rest.http.get("/v1/participants", headers={"Authorization": f"Bearer {limited_key}"})
    body = assert_status(limited, 429, 8)
    assert detail(body, "RetryInfo")["retryDelay"] == "2.500s"
    assert limited.headers["retry-after"] == "3"  # from the RetryInfo, rounded up


async def test_routing_errors(rest: Rest) -> None:
    admitted = len(rest.admitter.seen)
    unknown = await rest.http.get("/v1/nothing/here", headers={"X-Request-Id": "req-404"})
    assert assert_status(unknown, 404, 5)["message"] == "Not Found"
    assert unknown.headers["x-request-id"] == "req-404"
    wrong_method = await rest.http.delete("/v1/participants")
    assert assert_status(wrong_method, 405, 12)["message"] == "Method Not Allowed"
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "POST"}
    assert len(rest.admitter.seen) == admitted  # neither reached the admitter
    # Paths outside the API are the app's own routes.
    health = await rest.http.get("/healthz")
    assert (health.status_code, health.text) == (200, "fine")
    elsewhere = await rest.http.get("/not-api")
    assert elsewhere.status_code == 404 and "x-trace-id" not in elsewhere.headers


async def test_body_size_and_content_type_limits(rest: Rest) -> None:
    big = {"creditCode": "x", "legalName": "大" * MAX_BODY}
    too_large = await rest.http.post("/v1/participants", json=big, headers=rest.auth())
    assert_status(too_large, 413, 8)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"legalName": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    streamed = await rest.http.post(
        "/v1/participants", content=chunks(), headers=rest.auth(**{"Content-Type": "application/json"})
    )
    assert "content-length" not in streamed.request.headers
    assert_status(streamed, 413, 8)

    text = await rest.http.post(
        "/v1/participants", content=b"creditCode=x", headers=rest.auth(**{"Content-Type": "text/plain"})
    )
    assert_status(text, 415, 3)
    latin = await rest.http.post(
        "/v1/participants", content=b"{}", headers=rest.auth(**{"Content-Type": "application/json; charset=latin-1"})
    )
    assert_status(latin, 415, 3)
    timeout = await rest.http.get("/v1/participants", headers=rest.auth(**{"Grpc-Timeout": "soon"}))
    assert "Grpc-Timeout" in assert_status(timeout, 400, 3)["message"]


async def test_local_mesh_status(rest: Rest) -> None:
    response = await rest.http.get("/v1/mesh/status", headers=rest.auth())
    assert response.status_code == 200, response.text
    body = response.json()
    states = {c["component"]: c["state"] for c in body["components"]}
    assert states == {
        "gateway": "SERVING_STATE_SERVING",
        "registry": "SERVING_STATE_SERVING",
        "flows": "SERVING_STATE_UNREACHABLE",
        "energy": "SERVING_STATE_UNREACHABLE",
    }
    assert body["allServing"] is False and body["provinceCode"] == "32"
    assert rest.admitter.seen[-1]["grpc_path"] == STATUS_PATH


# ---------------------------------------------------------------------------------------------------------------
# Request ids and traces


async def test_request_ids_on_every_response(rest: Rest) -> None:
    given = await rest.http.get("/v1/participants", headers=rest.auth(**{"X-Request-Id": "client-id-1"}))
    assert given.status_code == 200
    assert_common_headers(given, "client-id-1")
    assert rest.admitter.seen[-1]["request_id"] == "client-id-1"
    made = await rest.http.get("/v1/participants", headers=rest.auth())
    assert made.headers["x-request-id"].startswith("made-")  # the plan's
    # Before admission: the client's id when it is a sane token, else a new one.
    odd = await rest.http.get("/v1/nothing", headers={"X-Request-Id": "two words"})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["x-request-id"])
    assert odd.headers["x-trace-id"] != made.headers["x-trace-id"]


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
    ]


async def test_traceparent_is_continued_to_the_backend(rest: Rest) -> None:
    dealer = await participant(rest, "DEALER")
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    response = await rest.http.get(
        f"/v1/participants/{dealer.participant_id}", headers=rest.auth(traceparent=f"00-{trace_id}-{parent_id}-01")
    )
    assert response.status_code == 200
    assert response.headers["x-trace-id"] == trace_id

    async def registry_span_ended() -> bool:
        return any(s.kind is SpanKind.SERVER and s.resource.attributes["service.name"] == "registry"
                   for s in spans_of(rest.exporter, trace_id))  # fmt: skip

    await eventually(registry_span_ended)
    spans = spans_of(rest.exporter, trace_id)
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER and s.resource.attributes["service.name"] == "gateway"]
    assert server.name == "GET /v1/participants/{participant_id}"
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent_id
    expected = {
        "http.request.method": "GET",
        "http.route": "/v1/participants/{participant_id}",
        "url.path": f"/v1/participants/{dealer.participant_id}",
        "http.response.status_code": 200,
        "rpc.method": "GetParticipant",
        "rpc.service": "greenmesh.registry.v1.RegistryService",
    }
    assert server.attributes is not None
    assert {key: server.attributes.get(key) for key in expected} == expected
    (client,) = [s for s in spans if s.kind is SpanKind.CLIENT and s.resource.attributes["service.name"] == "gateway"]
    assert client.parent is not None and server.context is not None
    assert client.parent.span_id == server.context.span_id
    (backend,) = [s for s in spans if s.kind is SpanKind.SERVER and s.resource.attributes["service.name"] == "registry"]
    assert backend.parent is not None and client.context is not None
    assert backend.parent.span_id == client.context.span_id  # traceparent went over gRPC

    # Without a traceparent: a new trace, named by the route, also for a 404 (named by the method only).
    fresh = await rest.http.get("/v1/nowhere")
    (lonely,) = spans_of(rest.exporter, fresh.headers["x-trace-id"])
    assert lonely.name == "GET" and lonely.parent is None
    assert lonely.attributes is not None and lonely.attributes["http.response.status_code"] == 404


# ---------------------------------------------------------------------------------------------------------------
# Flows: a battery path variable with reserved characters, and the event subscription as NDJSON


def _event_json(step: str, site: str, battery: dict[str, str], when: dt.datetime, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "eventTime": when.isoformat(),
        "eventTimeZoneOffset": "+08:00",
        "bizStep": step,
        "facilityId": site,
        "batteries": [battery],
        **extra,
    }


async def test_battery_path_with_colons_and_escapes(flow_rest: FlowRest) -> None:
    rest, n = flow_rest.rest, flow_rest.network
    producer = rest.auth(n.producer.caller)
    battery = {
        "scheme": "IDENTIFIER_SCHEME_MANUFACTURER_SERIAL",
        "namespace": n.producer.participant.credit_code,
        "value": "SN:2026/07-A1",
    }
    commissioned = _event_json(
        "BIZ_STEP_COMMISSIONING",
        n.producer.site,
        battery,
        at(-30),
        modelId=n.model_id,
        productionDate="2026-07-01T00:00:00Z",
    )
    reported = await rest.http.post("/v1/events", json=commissioned, headers=producer)
    assert reported.status_code == 200, reported.text
    assert reported.json()["result"]["outcome"] == "EVENT_OUTCOME_ACCEPTED"
    query = {
        "battery_ref.scheme": "IDENTIFIER_SCHEME_MANUFACTURER_SERIAL",
        "batteryRef.namespace": battery["namespace"],
    }
    # Escaped reserved characters are decoded (%2F too: the variable is one segment), a raw colon is kept.
    for path in ("/v1/batteries/SN%3A2026%2F07-%41%31", "/v1/batteries/SN:2026%2F07-A1"):
        response = await rest.http.get(path, params=query, headers=producer)
        assert response.status_code == 200, (path, response.text)
        state = response.json()["state"]
        assert state["battery"]["value"] == "SN:2026/07-A1"
        assert state["holderFacilityId"] == n.producer.site
    unknown = await rest.http.get("/v1/batteries/SN%3Anever", params=query, headers=producer)
    assert_status(unknown, 404, 5)


async def test_subscription_is_newline_delimited_json(flow_rest: FlowRest) -> None:
    rest, flows, n = flow_rest.rest, flow_rest.flows, flow_rest.network
    battery = n.serial()
    await collected(flows, n, battery)
    response = await rest.http.get(
        "/v1/events:subscribe",
        params=[("resume_token", "0"), ("biz_steps", "BIZ_STEP_COLLECTING")],
        headers=rest.auth(**{"Grpc-Timeout": "2S"}),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    assert_common_headers(response)
    lines = [json.loads(line) for line in response.text.splitlines()]
    first = lines[0]["result"]
    assert first["event"]["bizStep"] == "BIZ_STEP_COLLECTING"
    assert first["event"]["batteries"][0]["value"] == battery.value
    assert first["resumeToken"].isdigit()
    # The stream ends at the client's deadline: a last line with the error, grpc-gateway's form.
    error = lines[-1]["error"]
    assert (error["code"], error["details"]) == (4, []) and "Deadline Exceeded" in error["message"]
    assert all("result" in line for line in lines[:-1])
    assert rest.admitter.seen[-1]["client_timeout"] == 2.0

    # An error before the first message is an ordinary HTTP error.
    bad_token = await rest.http.get("/v1/events:subscribe", params={"resume_token": "abc"}, headers=rest.auth())
    assert detail(assert_status(bad_token, 400, 3), "BadRequest")["fieldViolations"][0]["field"] == "resume_token"
    anonymous = await rest.http.get("/v1/events:subscribe")
    assert_status(anonymous, 401, 16)


async def test_a_client_that_goes_away_cancels_the_stream(flow_rest: FlowRest) -> None:
    rest, flows, n = flow_rest.rest, flow_rest.flows, flow_rest.network
    await collected(flows, n, n.serial())
    config = uvicorn.Config(rest.app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
    server = EmbeddedServer(config)
    started = asyncio.Event()
    serving = asyncio.create_task(serve_http(server, started))
    try:
        await asyncio.wait_for(started.wait(), 10)
        url = f"http://127.0.0.1:{server.bound_port}/v1/events:subscribe"
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "GET", url, params={"resume_token": "0"}, headers=rest.auth(**{"Grpc-Timeout": "60S"})
            ) as response,
        ):
            assert response.status_code == 200
            trace_id = response.headers["x-trace-id"]
            first = await anext(response.aiter_lines())
            assert "result" in json.loads(first)
            # Leaving the block closes the connection while the stream (60 s deadline) is still open.

        def gateway_server() -> list[ReadableSpan]:
            return [s for s in spans_of(rest.exporter, trace_id) if s.kind is SpanKind.SERVER]

        async def ended() -> bool:
            return bool(gateway_server())

        await eventually(ended, timeout=10)
        (span,) = gateway_server()
        assert span.attributes is not None
        assert span.attributes["error.type"] == "client_disconnected"
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
        (client_span,) = [s for s in spans_of(rest.exporter, trace_id) if s.kind is SpanKind.CLIENT]
        assert client_span.end_time is not None
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
