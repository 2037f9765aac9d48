"""The pure REST/JSON ↔ gRPC conversions of gateway.transcode, on the mesh's own bindings and on a test
message that has every kind of field the URL can set (built in its own descriptor pool)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, timestamp_pb2, wrappers_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import transcode
from gateway.http_rules import Binding, load_bindings, parse_template
from gateway.transcode import TranscodeError, build_request
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.config import Component

BINDINGS = load_bindings()


def binding(method: str, http_method: str | None = None, additional: bool = False) -> Binding:
    for candidate in BINDINGS:
        same_method = candidate.method.name == method and candidate.additional == additional
        if same_method and (http_method is None or candidate.http_method == http_method):
            return candidate
    raise LookupError(method)


def rejected(call: Any, **kwargs: Any) -> TranscodeError:
    with pytest.raises(TranscodeError) as raised:
        call(**kwargs)
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    return error


# ---------------------------------------------------------------------------------------------------------------
# A test service whose request has every kind of field (int64, uint32, bool, bytes, float, wrappers, Duration,
# Timestamp, a nested message, a map, a oneof, repeated enums and int64s).


def _test_binding(template: str, http_method: str = "GET", body: str = "") -> Binding:
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, duration_pb2, timestamp_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="transcode_test.proto",
        package="tt",
        syntax="proto3",
        dependency=[
            "google/protobuf/wrappers.proto",
            "google/protobuf/duration.proto",
            "google/protobuf/timestamp.proto",
        ],
    )
    kind = descriptor_pb2.FieldDescriptorProto
    optional, repeated = kind.LABEL_OPTIONAL, kind.LABEL_REPEATED
    color = proto.enum_type.add(name="Color")
    for number, name in enumerate(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_GREEN"]):
        color.value.add(name=name, number=number)
    inner = proto.message_type.add(name="Inner")
    inner.field.add(name="name", number=1, type=kind.TYPE_STRING, label=optional, json_name="name")
    inner.field.add(name="size_kb", number=2, type=kind.TYPE_INT64, label=optional, json_name="sizeKb")
    request = proto.message_type.add(name="Thing")
    entry = request.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=kind.TYPE_STRING, label=optional, json_name="key")
    entry.field.add(name="value", number=2, type=kind.TYPE_STRING, label=optional, json_name="value")
    fields: list[tuple[str, int, int, str]] = [
        ("count", kind.TYPE_INT64, optional, ""),
        ("small", kind.TYPE_INT32, optional, ""),
        ("positive", kind.TYPE_UINT32, optional, ""),
        ("flag", kind.TYPE_BOOL, optional, ""),
        ("blob", kind.TYPE_BYTES, optional, ""),
        ("ratio", kind.TYPE_FLOAT, optional, ""),
        ("color", kind.TYPE_ENUM, optional, ".tt.Color"),
        ("colors", kind.TYPE_ENUM, repeated, ".tt.Color"),
        ("ids", kind.TYPE_INT64, repeated, ""),
        ("wrapped", kind.TYPE_MESSAGE, optional, ".google.protobuf.Int64Value"),
        ("wait", kind.TYPE_MESSAGE, optional, ".google.protobuf.Duration"),
        ("at", kind.TYPE_MESSAGE, optional, ".google.protobuf.Timestamp"),
        ("inner", kind.TYPE_MESSAGE, optional, ".tt.Inner"),
        ("labels", kind.TYPE_MESSAGE, repeated, ".tt.Thing.LabelsEntry"),
        ("first_choice", kind.TYPE_STRING, optional, ""),
        ("second_choice", kind.TYPE_STRING, optional, ""),
    ]
    request.oneof_decl.add(name="choice")
    for number, (name, field_type, label, type_name) in enumerate(fields, start=1):
        added = request.field.add(name=name, number=number, type=field_type, label=label)
        if type_name:
            added.type_name = type_name
        added.json_name = "".join(part if i == 0 else part.title() for i, part in enumerate(name.split("_")))
        if name.endswith("_choice"):
            added.oneof_index = 0
    service = proto.service.add(name="Things")
    service.method.add(name="GetThing", input_type=".tt.Thing", output_type=".tt.Thing")
    pool.Add(proto)
    method = pool.FindMethodByName("tt.Things.GetThing")
    return Binding(
        method=method,
        component=Component.REGISTRY,
        http_method=http_method,
        template=parse_template(template),
        body=body,
        response_body="",
        additional=False,
    )


THING = _test_binding("/v1/things/{inner.name}")


def thing(query: list[tuple[str, str]], path: str = "/v1/things/x") -> Any:
    values = THING.template.match(path)
    assert values is not None
    return build_request(THING, path_values=values, query=query)


def test_query_values_are_converted_to_each_field_type() -> None:
    message = thing(
        [
            ("count", "-9007199254740993"),  # beyond a double's integers: int64 is exact
            ("small", "-5"),
            ("positive", "7"),
            ("flag", "t"),
            ("blob", "aGk_"),  # URL-safe base64 without padding
            ("ratio", "0.5"),
            ("color", "COLOR_GREEN"),
            ("colors", "COLOR_RED"),
            ("colors", "2"),  # by number too
            ("ids", "1"),
            ("ids", "18446744073709551"),
            ("wrapped", "42"),
            ("wait", "1.5s"),
            ("at", "2026-05-01T08:00:00+08:00"),
            ("inner.sizeKb", "3"),  # nested, by JSON name
            ("first_choice", "a"),
        ]
    )
    assert message.count == -9007199254740993
    assert (message.small, message.positive, message.flag, message.blob) == (-5, 7, True, b"hi?")
    assert message.ratio == 0.5
    assert (message.color, list(message.colors), list(message.ids)) == (2, [1, 2], [1, 18446744073709551])
    assert message.wrapped.value == 42
    assert message.wait.ToTimedelta() == dt.timedelta(seconds=1.5)
    assert message.at.ToDatetime(tzinfo=dt.UTC) == dt.datetime(2026, 5, 1, 0, 0, tzinfo=dt.UTC)
    assert (message.inner.name, message.inner.size_kb) == ("x", 3)
    assert message.first_choice == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("1", True), ("F", False), ("false", False), ("0", False)],
)
def test_booleans_read_as_go_parsebool(text: str, expected: bool) -> None:
    assert thing([("flag", text)]).flag is expected


@pytest.mark.parametrize(
    ("query", "name", "says"),
    [
        ([("nope", "1")], "nope", "unknown field"),
        ([("inner.nope", "1")], "inner.nope", "unknown field"),
        ([("count", "1.5")], "count", "expected an integer"),
        ([("count", "1e3")], "count", "expected an integer"),
        ([("small", "2147483648")], "small", "out of the range"),
        ([("positive", "-1")], "positive", "out of the range"),
        ([("flag", "yes")], "flag", "expected true or false"),
        ([("blob", "***")], "blob", "expected base64"),
        ([("color", "PURPLE")], "color", "tt.Color"),
        ([("ratio", "1e39")], "ratio", "out of the range of a float"),
        ([("at", "yesterday")], "at", "RFC 3339"),
        ([("wait", "5 minutes")], "wait", "duration"),
        ([("count", "1"), ("count", "2")], "count", "not repeated"),
        ([("inner", "x")], "inner", "message field"),
        ([("labels", "a")], "labels", "map"),
        ([("count.x", "1")], "count.x", "not a singular message"),
        ([("first_choice", "a"), ("second_choice", "b")], "second_choice", "oneof"),
        # Values are never split on commas: a repeated field takes the parameter repeated.
        ([("ids", "1,2")], "ids", "expected an integer"),
    ],
)
def test_bad_query_parameters_are_named_in_a_field_violation(
    query: list[tuple[str, str]], name: str, says: str
) -> None:
    error = rejected(thing, query=query)
    assert error.violations[0][0] == name
    assert says in error.violations[0][1]
    status = error.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    (bad_request,) = transcode.detail_messages(status, error_details_pb2.BadRequest)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == name


def test_a_query_parameter_may_not_set_a_path_bound_field() -> None:
    error = rejected(thing, query=[("inner.name", "y")])
    assert error.violations == [("inner.name", "this field is bound by the path, not a query parameter")]
    # A sibling of the path-bound field is an ordinary query parameter.
    assert thing([("inner.size_kb", "9")]).inner.size_kb == 9


def test_path_variables_are_decoded_and_nested() -> None:
    get_battery = binding("GetBattery")
    assert get_battery.template.source == "/v1/batteries/{battery_ref.value}"
    values = get_battery.template.match("/v1/batteries/GB%3A36N%2F01%20x")
    assert values == {"battery_ref.value": "GB:36N/01 x"}
    request = build_request(
        get_battery,
        path_values=values,
        query=[("battery_ref.scheme", "IDENTIFIER_SCHEME_MANUFACTURER_SERIAL"), ("batteryRef.namespace", "9132")],
    )
    assert request == fpb.GetBatteryRequest(
        battery_ref=fpb.BatteryRef(
            scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace="9132", value="GB:36N/01 x"
        )
    )


def test_path_variables_are_typed_like_query_parameters() -> None:
    typed = _test_binding("/v1/things/{count}/{color}/{at}")
    values = typed.template.match("/v1/things/-12/COLOR_RED/2026-01-02T03:04:05Z")
    assert values is not None
    message: Any = build_request(typed, path_values=values)
    assert (message.count, message.color, message.at.seconds) == (-12, 1, 1767323045)
    error = rejected(
        build_request, binding=typed, path_values={"count": "x", "color": "1", "at": "1970-01-01T00:00:00Z"}
    )
    assert error.violations[0][0] == "count"


def test_additional_binding_fills_its_own_field() -> None:
    by_code = binding("GetParticipant", additional=True)
    assert by_code.template.source == "/v1/participants:byCreditCode/{credit_code}"
    values = by_code.template.match("/v1/participants:byCreditCode/91320102MA1X")
    assert values is not None
    assert build_request(by_code, path_values=values) == rpb.GetParticipantRequest(credit_code="91320102MA1X")


def test_repeated_enum_and_nested_query_parameters_on_a_mesh_method() -> None:
    nearest = binding("FindNearestOutlets")
    request = build_request(
        nearest,
        path_values={},
        query=[
            ("location.latitude", "32.075"),
            ("location.longitude", "118.796"),
            ("facility_types", "FACILITY_TYPE_RECYCLING_OUTLET"),
            ("facilityTypes", "FACILITY_TYPE_COOP_STATION"),
            ("limit", "5"),
        ],
    )
    assert request == rpb.FindNearestOutletsRequest(
        location=rpb.GeoPoint(latitude=32.075, longitude=118.796),
        facility_types=[rpb.FACILITY_TYPE_RECYCLING_OUTLET, rpb.FACILITY_TYPE_COOP_STATION],
        limit=5,
    )


# ---------------------------------------------------------------------------------------------------------------
# Bodies


def test_body_star_takes_the_whole_request_in_either_name_style() -> None:
    change = binding("ChangeParticipantStatus")
    assert change.body == "*"
    body = b'{"status": "PARTICIPANT_STATUS_ACTIVE", "reason": "checked", "version": "4"}'
    request = build_request(change, path_values={"participant_id": "p-1"}, body=body)
    assert request == rpb.ChangeParticipantStatusRequest(
        participant_id="p-1", status=rpb.PARTICIPANT_STATUS_ACTIVE, reason="checked", version=4
    )
    proto_names = build_request(change, path_values={"participant_id": "p-1"}, body=b'{"participant_id": "p-2"}')
    # The path variable overrides the body.
    assert proto_names == rpb.ChangeParticipantStatusRequest(participant_id="p-1")


def test_body_star_takes_no_query_parameters() -> None:
    change = binding("ChangeParticipantStatus")
    error = rejected(build_request, binding=change, path_values={"participant_id": "p"}, query=[("reason", "x")])
    assert error.violations[0][0] == "reason"
    assert "query parameters are not accepted" in error.violations[0][1]


def test_a_named_body_fills_that_field_and_its_query_parameters_are_refused() -> None:
    register = binding("RegisterParticipant")
    assert register.body == "participant"
    request = build_request(
        register,
        path_values={},
        body='{"creditCode": "9132", "legal_name": "测试", "roles": ["PARTICIPANT_ROLE_DEALER", 12]}'.encode(),
    )
    assert request == rpb.RegisterParticipantRequest(
        participant=rpb.Participant(
            credit_code="9132",
            legal_name="测试",
            roles=[rpb.PARTICIPANT_ROLE_DEALER, rpb.PARTICIPANT_ROLE_RECYCLING_ENTERPRISE],
        )
    )
    error = rejected(build_request, binding=register, path_values={}, query=[("participant.legalName", "x")])
    assert error.violations == [("participant.legalName", "this field is bound by the body, not a query parameter")]


def test_an_empty_body_is_an_empty_message() -> None:
    register = binding("RegisterParticipant")
    assert build_request(register, path_values={}, body=b"  \n") == rpb.RegisterParticipantRequest()


@pytest.mark.parametrize(
    ("body", "name", "says"),
    [
        (b'{"legalName": "x", "nickName": "y"}', "participant.nickName", "unknown field"),
        (b'{"qualifications": [{"number": "1"}, {"numbr": "2"}]}', "participant.qualifications[1].numbr", "unknown"),
        (b'{"legalName": "a", "legal_name": "b"}', "participant.legal_name", "the same field as 'legalName'"),
        (
            b'{"version": "abc"}',
            "participant.version",
            'expected an integer (a number, or a string of digits), got "abc"',
        ),
        (b'{"legalName": 5}', "participant.legalName", "expected a string, got 5"),
        (b'{"roles": ["PARTICIPANT_ROLE_DEALER", "KING"]}', "participant.roles[1]", "ParticipantRole"),
        (b'{"roles": "PARTICIPANT_ROLE_DEALER"}', "participant.roles", "expected a JSON array"),
        (b'{"qualifications": [{"validFrom": "tomorrow"}]}', "participant.qualifications[0].validFrom", "RFC 3339"),
        (b"[1, 2]", "participant", "expected a JSON object"),
    ],
)
def test_body_errors_name_the_field(body: bytes, name: str, says: str) -> None:
    error = rejected(build_request, binding=binding("RegisterParticipant"), path_values={}, body=body)
    assert error.violations[0][0] == name
    assert says in error.violations[0][1]
    assert name in error.message


@pytest.mark.parametrize("body", [b'{"reason": ', b"{'reason': 'x'}", b'{"reason": NaN}', b"\xff\xfe"])
def test_malformed_json_is_invalid_argument(body: bytes) -> None:
    error = rejected(
        build_request, binding=binding("ChangeParticipantStatus"), path_values={"participant_id": "p"}, body=body
    )
    assert error.violations == []
    assert "JSON" in error.message or "UTF-8" in error.message


def test_body_star_must_be_an_object() -> None:
    error = rejected(
        build_request, binding=binding("ChangeParticipantStatus"), path_values={"participant_id": "p"}, body=b'"x"'
    )
    assert error.message == "the request body must be a JSON object"


# ---------------------------------------------------------------------------------------------------------------
# PATCH: the FieldMask from the body


def test_patch_fills_the_field_mask_from_the_body_keys() -> None:
    update = binding("UpdateFacility")
    assert update.http_method == "PATCH" and transcode.patch_mask_field(update) is not None
    body = json.dumps(
        {
            "name": "新网点",
            "openingHours": "08:00-20:00",
            "location": {"latitude": 32.02, "longitude": 118.79},
            "recyclingModes": ["RECYCLING_MODE_DROP_OFF"],
            "safety": None,
        }
    ).encode()
    request = build_request(update, path_values={"facility.facility_id": "f-1"}, body=body)
    assert isinstance(request, rpb.UpdateFacilityRequest)
    assert list(request.update_mask.paths) == [
        "name",
        "opening_hours",
        "location.latitude",
        "location.longitude",
        "recycling_modes",
        "safety",
    ]
    assert request.facility.facility_id == "f-1" and request.facility.location.latitude == 32.02


def test_patch_keeps_a_mask_the_client_set() -> None:
    update = binding("UpdateParticipant")
    request = build_request(
        update,
        path_values={"participant.participant_id": "p-1"},
        query=[("updateMask", "shortName,contact_phone")],
        body=b'{"shortName": "x", "legalName": "y"}',
    )
    assert isinstance(request, rpb.UpdateParticipantRequest)
    assert list(request.update_mask.paths) == ["short_name", "contact_phone"]


def test_no_mask_is_made_for_other_methods_or_an_empty_body() -> None:
    update = binding("UpdateParticipant")
    assert not build_request(update, path_values={"participant.participant_id": "p"}).HasField("update_mask")
    as_post = dataclasses.replace(update, http_method="POST")
    assert transcode.patch_mask_field(as_post) is None
    assert transcode.patch_mask_field(binding("ChangeParticipantStatus")) is None
    assert transcode.mask_paths_from_json(rpb.Participant.DESCRIPTOR, {}) == []
    assert transcode.mask_paths_from_json(rpb.Participant.DESCRIPTOR, {"qualifications": [{"number": "1"}]}) == [
        "qualifications"
    ]


# ---------------------------------------------------------------------------------------------------------------
# Responses and errors


def test_responses_use_the_proto3_json_mapping() -> None:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(dt.datetime(2026, 3, 1, 1, 2, 3, tzinfo=dt.UTC))
    reply = rpb.GetParticipantResponse(
        participant=rpb.Participant(
            participant_id="p-1",
            version=9007199254740993,
            status=rpb.PARTICIPANT_STATUS_ACTIVE,
            roles=[rpb.PARTICIPANT_ROLE_DEALER],
            created_at=created,
        )
    )
    document = transcode.response_to_json(binding("GetParticipant"), reply)
    participant = document["participant"]
    assert participant["version"] == "9007199254740993"  # int64 as a string
    assert participant["status"] == "PARTICIPANT_STATUS_ACTIVE"  # enums by name
    assert participant["roles"] == ["PARTICIPANT_ROLE_DEALER"]
    assert participant["createdAt"] == "2026-03-01T01:02:03Z"  # RFC 3339
    assert participant["participantId"] == "p-1"  # lowerCamelCase
    # Fields without presence are printed at their defaults; unset messages are left out.
    assert participant["shortName"] == "" and participant["qualifications"] == []
    assert "updatedAt" not in participant


def test_response_body_selects_one_field() -> None:
    only_participant = dataclasses.replace(binding("GetParticipant"), response_body="participant")
    reply = rpb.GetParticipantResponse(participant=rpb.Participant(legal_name="x"))
    assert transcode.response_to_json(only_participant, reply)["legalName"] == "x"
    list_binding = dataclasses.replace(binding("ListParticipants"), response_body="participants")
    listed = rpb.ListParticipantsResponse(participants=[rpb.Participant(version=2)])
    body = transcode.response_to_json(list_binding, listed)
    assert isinstance(body, list) and body[0]["version"] == "2"


def test_http_status_follows_grpc_gateway() -> None:
    expected = {
        "OK": 200,
        "CANCELLED": 499,
        "UNKNOWN": 500,
        "INVALID_ARGUMENT": 400,
        "DEADLINE_EXCEEDED": 504,
        "NOT_FOUND": 404,
        "ALREADY_EXISTS": 409,
        "PERMISSION_DENIED": 403,
        "UNAUTHENTICATED": 401,
        "RESOURCE_EXHAUSTED": 429,
        "FAILED_PRECONDITION": 400,
        "ABORTED": 409,
        "OUT_OF_RANGE": 400,
        "UNIMPLEMENTED": 501,
        "INTERNAL": 500,
        "UNAVAILABLE": 503,
        "DATA_LOSS": 500,
    }
    assert {code.name: transcode.http_status(code) for code in grpc.StatusCode} == expected
    assert transcode.http_status(5) == 404 and transcode.http_status(99) == 500


def test_status_json_has_numeric_code_and_typed_details() -> None:
    status = transcode.make_status(
        grpc.StatusCode.NOT_FOUND,
        "participant 'x' not found",
        [error_details_pb2.ResourceInfo(resource_type="participant", resource_name="x")],
    )
    document = transcode.status_to_json(status)
    assert document["code"] == 5 and document["message"] == "participant 'x' not found"
    assert document["details"][0]["@type"] == "type.googleapis.com/google.rpc.ResourceInfo"
    assert document["details"][0]["resourceName"] == "x"
    # A detail type nobody knows is kept, opaque, rather than failing the whole error.
    status.details.add(type_url="type.googleapis.com/acme.Secret", value=b"\x01")
    kept = transcode.status_to_json(status)
    assert kept["details"][1] == {"@type": "type.googleapis.com/acme.Secret", "value": "AQ=="}
    assert kept["details"][0]["resourceType"] == "participant"


def _rpc_error(code: grpc.StatusCode, message: str, rich: status_pb2.Status | None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if rich is not None:
        trailing.add("grpc-status-details-bin", rich.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


def test_status_from_a_backend_error() -> None:
    rich = transcode.make_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad",
        [error_details_pb2.BadRequest(field_violations=[{"field": "a", "description": "b"}])],
    )
    decoded = transcode.status_from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad", rich))
    assert decoded == rich
    assert rpc_status.to_status(decoded).code is grpc.StatusCode.INVALID_ARGUMENT
    plain = transcode.status_from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "down", None))
    assert plain == status_pb2.Status(code=14, message="down")
    # Details that disagree with the call: the call's code and message, the details kept.
    mixed = transcode.status_from_rpc_error(_rpc_error(grpc.StatusCode.INTERNAL, "other", rich))
    assert (mixed.code, mixed.message, len(mixed.details)) == (13, "other", 1)


@pytest.mark.parametrize(
    ("header", "seconds"), [("5S", 5.0), ("300m", 0.3), ("1H", 3600.0), ("2M", 120.0), ("1500u", 0.0015), ("7n", 7e-9)]
)
def test_grpc_timeout_header(header: str, seconds: float) -> None:
    assert transcode.parse_grpc_timeout(header) == pytest.approx(seconds)


@pytest.mark.parametrize("header", ["5", "S", "123456789S", "1.5S", "5s ", "-1S", "5X"])
def test_malformed_grpc_timeout(header: str) -> None:
    with pytest.raises(ValueError, match="Grpc-Timeout"):
        transcode.parse_grpc_timeout(header)


def test_message_class_round_trips_a_dynamic_message() -> None:
    cls = transcode.message_class(THING.method.input_type)
    message: Message = cls()
    assert transcode.message_to_json(message)["count"] == "0"
