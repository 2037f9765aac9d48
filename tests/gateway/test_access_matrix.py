"""Who may do what, through the gateway: seven callers against the mesh's RPCs, over REST and over gRPC.

Every caller holds a real API key the registry issued (anonymous holds none). Each cell is the status the
caller must get, the same through both doors; for lists an allowed caller may still see nothing of another's
data, which the cell's check asserts. One mesh serves the whole matrix, so the cells run in one test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import ParseDict
from google.protobuf.message import Message

from gateway.http_rules import front_methods
from gateway.transcode import http_status
from greenmesh.flows.v1 import flows_pb2 as fpb
from tests.flows.test_flows_reporting import collected
from tests.gateway.conftest import Mesh

CALLERS = ("anonymous", "enterprise_a", "enterprise_b", "producer", "regulator", "other_regulator", "platform")
OK, UNAUTHENTICATED, DENIED = grpc.StatusCode.OK, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


@dataclass
class Case:
    name: str
    grpc_path: str
    http_method: str
    path: str
    # The request as JSON: query parameters for GET, the body otherwise (built per caller for writes).
    request: Callable[[str], dict[str, Any]]
    expected: dict[str, grpc.StatusCode]
    # Checks an allowed answer (the JSON form of the response) for this caller.
    check: Callable[[str, dict[str, Any]], None] = lambda _caller, _answer: None
    # Request fields the path carries (not sent again as query parameters).
    in_path: frozenset[str] = frozenset()
    # The field that is the HTTP body (the binding's `body`), when it is not the whole request.
    body_field: str = ""


def allowed(*callers: str, denied: grpc.StatusCode = DENIED) -> dict[str, grpc.StatusCode]:
    return {c: OK if c in callers else (UNAUTHENTICATED if c == "anonymous" else denied) for c in CALLERS}


def everyone() -> dict[str, grpc.StatusCode]:
    return dict.fromkeys(CALLERS, OK)


def cases(mesh: Mesh, battery: fpb.BatteryRef) -> list[Case]:
    n = mesh.network
    a, a_site = n.outlet.id, n.outlet.site
    ref = {"scheme": fpb.IdentifierScheme.Name(battery.scheme), "namespace": battery.namespace}
    period = {"periodStart": "2026-08-01T00:00:00Z", "periodEnd": "2026-10-01T00:00:00Z"}

    def only_a(caller: str, answer: dict[str, Any]) -> None:
        operators = {f["operatorId"] for f in answer["facilities"]}
        assert operators == ({a} if caller != "other_regulator" else set()), (caller, operators)

    def facility_for_a(caller: str) -> dict[str, Any]:
        return {
            "operatorId": a,
            "operatorFacilityCode": f"MATRIX-{caller}",
            "name": "矩阵测试回收点",
            "facilityType": "FACILITY_TYPE_RECYCLING_OUTLET",
            "countyCode": "320102",
            "address": "南京市玄武区",
            "location": {"latitude": 32.07, "longitude": 118.79},
            "recyclingModes": ["RECYCLING_MODE_DROP_OFF"],
            "storageLimits": {"maxStockKg": 100, "maxStockUnits": 10, "maxDwellDays": 30},
            "safety": {"fireClass": "B", "hasDischargeEquipment": True, "hasMonitoring": True},
        }

    return [
        Case(
            "read participant A",
            "/greenmesh.registry.v1.RegistryService/GetParticipant",
            "GET",
            f"/v1/participants/{a}",
            lambda _c: {"participantId": a},
            allowed("enterprise_a", "regulator", "platform"),
            in_path=frozenset({"participantId"}),
        ),
        Case(
            "list A's facilities",
            "/greenmesh.registry.v1.RegistryService/ListFacilities",
            "GET",
            "/v1/facilities",
            lambda _c: {"operatorId": a},
            # Another province's regulator may list, and sees nothing outside its region.
            allowed("enterprise_a", "regulator", "other_regulator", "platform"),
            only_a,
        ),
        Case(
            "register a facility for A",
            "/greenmesh.registry.v1.RegistryService/RegisterFacility",
            "POST",
            "/v1/facilities",
            lambda caller: {"facility": facility_for_a(caller)},
            allowed("enterprise_a", "regulator", "platform"),
            body_field="facility",
        ),
        Case(
            "nearest outlets (public)",
            "/greenmesh.registry.v1.RegistryService/FindNearestOutlets",
            "GET",
            "/v1/outlets:nearest",
            lambda _c: {"location": {"latitude": 32.075, "longitude": 118.796}, "limit": 5},
            everyone(),
            lambda _c, answer: _assert_public_outlets(answer, a_site),
        ),
        Case(
            "battery status (public)",
            "/greenmesh.flows.v1.FlowService/GetBatteryStatus",
            "GET",
            f"/v1/public/batteries/{battery.value}:status",
            lambda _c: {"batteryRef": {**ref, "value": battery.value}},
            everyone(),
            lambda _c, answer: _assert_public_status(answer),
            in_path=frozenset({"batteryRef.value"}),
        ),
        Case(
            "trace of A's battery",
            "/greenmesh.flows.v1.FlowService/GetBatteryTrace",
            "GET",
            f"/v1/batteries/{battery.value}/trace",
            lambda _c: {"batteryRef": {**ref, "value": battery.value}},
            allowed("enterprise_a", "producer", "regulator", "platform"),
            in_path=frozenset({"batteryRef.value"}),
        ),
        Case(
            "events A reported",
            "/greenmesh.flows.v1.FlowService/QueryEvents",
            "GET",
            "/v1/events",
            lambda _c: {"facilityId": a_site, "pageSize": 50},
            allowed("enterprise_a", "enterprise_b", "producer", "regulator", "other_regulator", "platform"),
            lambda caller, answer: _assert_events_seen(caller, answer, a),
        ),
        Case(
            "alerts",
            "/greenmesh.flows.v1.FlowService/ListAlerts",
            "GET",
            "/v1/alerts",
            lambda _c: {"pageSize": 10},
            allowed("regulator", "other_regulator", "platform"),
        ),
        Case(
            "Jiangsu's dispatch statistics",
            "/greenmesh.flows.v1.FlowService/GetDispatchStatistics",
            "GET",
            "/v1/statistics/dispatch",
            lambda _c: {"divisionCode": "32", **period},
            allowed("regulator", "platform"),
        ),
    ]


def _assert_public_outlets(answer: dict[str, Any], a_site: str) -> None:
    assert answer["outlets"], answer
    for outlet in answer["outlets"]:
        assert not {"operatorId", "creditCode", "contactPhone", "contactName"} & set(outlet), outlet


def _assert_public_status(answer: dict[str, Any]) -> None:
    assert answer["known"] is True and answer["status"] == "PUBLIC_BATTERY_STATUS_IN_COMPLIANT_CHANNEL", answer
    assert set(answer) <= {"status", "known", "inCompliantChannel", "lastUpdatedOn", "regionCode"}, answer


def _assert_events_seen(caller: str, answer: dict[str, Any], a: str) -> None:
    reporters = {e["reporterId"] for e in answer["events"]}
    sees_all = caller in ("enterprise_a", "regulator", "platform")
    assert (reporters == {a}) if sees_all else (reporters == set()), (caller, reporters)


def grpc_request(case: Case, caller: str) -> Message:
    method, _component = front_methods()[case.grpc_path]
    request_class: Any = type(method.input_type._concrete_class())  # type: ignore[attr-defined]
    message: Message = ParseDict(case.request(caller), request_class())
    return message


def flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in flatten(f"{prefix}.{key}" if prefix else key, inner)]
    return [(prefix, str(value).lower() if isinstance(value, bool) else str(value))]


async def call_rest(mesh: Mesh, case: Case, caller: str, key: str | None) -> tuple[grpc.StatusCode, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = case.request(caller)
    if case.http_method == "GET":
        params: list[tuple[str, str | int | float | bool | None]] = [
            (name, value) for name, value in flatten("", request) if name not in case.in_path
        ]
        response = await mesh.http.get(case.path, params=params, headers=headers)
    else:
        body = request[case.body_field] if case.body_field else request
        response = await mesh.http.request(case.http_method, case.path, json=body, headers=headers)
    answer: dict[str, Any] = response.json()
    if response.status_code == 200:
        return OK, answer
    code = next(c for c in grpc.StatusCode if c.value[0] == answer["code"])
    assert http_status(code) == response.status_code, (case.name, caller, response.status_code, answer)
    return code, answer


async def call_grpc(mesh: Mesh, case: Case, caller: str, key: str | None) -> tuple[grpc.StatusCode, dict[str, Any]]:
    from google.protobuf.json_format import MessageToDict

    method, _component = front_methods()[case.grpc_path]
    response_class: Any = type(method.output_type._concrete_class())  # type: ignore[attr-defined]
    call: Any = mesh.grpc_channel.unary_unary(
        case.grpc_path,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        reply = await call(grpc_request(case, caller), metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as error:
        return error.code(), {}
    return OK, MessageToDict(reply, always_print_fields_with_no_presence=True)


@pytest.mark.parametrize("door", ["rest", "grpc"])
async def test_the_access_matrix(mesh: Mesh, door: str) -> None:
    battery = mesh.network.serial()
    await collected(mesh.flows, mesh.network, battery)
    keys: dict[str, str | None] = {
        "anonymous": None,
        "enterprise_a": mesh.keys.enterprise_a,
        "enterprise_b": mesh.keys.enterprise_b,
        "producer": mesh.keys.producer,
        "regulator": mesh.keys.regulator,
        "other_regulator": mesh.keys.other_regulator,
        "platform": mesh.keys.platform,
    }
    call = call_rest if door == "rest" else call_grpc
    wrong: list[str] = []
    checked = 0
    for case in cases(mesh, battery):
        for caller in CALLERS:
            # Writes use a code per caller and door, so an allowed write never collides with another's.
            original = case.request
            case.request = lambda c, original=original: _per_door(original(c), door)  # type: ignore[misc]
            code, answer = await call(mesh, case, caller, keys[caller])
            case.request = original
            expected = case.expected[caller]
            if code is not expected:
                wrong.append(f"{case.name} as {caller} over {door}: {code.name}, expected {expected.name}")
            elif code is OK:
                case.check(caller, answer)
                checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked >= 30


def _per_door(request: dict[str, Any], door: str) -> dict[str, Any]:
    facility = request.get("facility")
    if isinstance(facility, dict):
        facility = {**facility, "operatorFacilityCode": f"{facility['operatorFacilityCode']}-{door}"}
        return {**request, "facility": facility}
    return request
