"""The OpenAPI document of the REST API: valid, current (the committed snapshot), complete (every binding), true
to the proto3 JSON mapping, and served with its docs page."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from starlette.applications import Starlette

from gateway.docs_page import docs_html
from gateway.http_rules import Binding, load_bindings, parse_template
from gateway.openapi import (
    ProtoComments,
    build_openapi,
    greenmesh_openapi,
    openapi_routes,
    render_json,
)
from greenmesh.flows.v1 import flows_pb2
from greenmesh.registry.v1 import registry_pb2
from meshkit.config import Component

REPO_ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("openapi.snapshot.json")
UPDATE_HINT = "python scripts/update_openapi_snapshot.py"
METHODS = ("get", "put", "post", "delete", "patch")

Json = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Json:
    return greenmesh_openapi()


@pytest.fixture(scope="module")
def bindings() -> list[Binding]:
    return load_bindings()


def operations(document: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(document: Json, node: Json) -> Json:
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = document["components"][section][name]
    return node


def shape(path: str) -> str:
    """A path with its variables blanked: `/v1/x/{a.b=y/*}:go` -> `/v1/x/{}:go`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def operation_of(document: Json, binding: Binding) -> tuple[str, Json]:
    """The binding's operation: same HTTP method, same path shape, same gRPC method."""
    found = [
        (path, operation)
        for path, method, operation in operations(document)
        if method == binding.http_method.lower()
        and shape(path) == shape(binding.template.source)
        and f"gRPC: `{binding.grpc_path.lstrip('/')}`" in operation["description"]
    ]
    assert len(found) == 1, f"{binding.http_method} {binding.template.source}: {len(found)} operations"
    return found[0]


# ---- valid and current ----------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(document: Json) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)
    # As served: the JSON text round-trips to the same document.
    assert json.loads(render_json(document)) == document


def test_the_document_equals_the_committed_snapshot(document: Json) -> None:
    """A change to the REST API is a change to the snapshot, reviewed with the protos that made it."""
    assert SNAPSHOT.exists(), f"{SNAPSHOT.name} is missing: run `{UPDATE_HINT}`"
    committed = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    current = json.loads(render_json(document))
    # A release changes info.version only; the snapshot is not stale for that.
    committed["info"].pop("version")
    current["info"].pop("version")
    if committed != current:
        diff = difflib.unified_diff(
            render_json(committed).splitlines(),
            render_json(current).splitlines(),
            "committed snapshot",
            "generated from the protos",
            lineterm="",
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(f"the OpenAPI document changed; if that is intended run `{UPDATE_HINT}` and commit it\n{shown}")


def test_title_and_version_come_from_the_package(document: Json) -> None:
    assert document["info"]["title"] == "GreenMesh"
    assert document["info"]["version"] == metadata.version("greenmesh")
    assert greenmesh_openapi(version="9.9.9", server_url="https://gw.example")["servers"] == [
        {"url": "https://gw.example"}
    ]
    assert "servers" not in document  # served by the gateway itself: relative to it


# ---- paths and operations -------------------------------------------------------------------------------


def test_every_binding_is_one_operation(document: Json, bindings: list[Binding]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(bindings)
    assert len(set(ids)) == len(ids)
    for binding in bindings:
        _, operation = operation_of(document, binding)
        service = binding.method.containing_service.name
        assert operation["tags"] == [service]
        assert operation["operationId"].startswith(f"{service}_{binding.method.name}")
    # GetParticipant has an additional binding: it gets the suffix.
    get_by_credit_code = document["paths"]["/v1/participants:byCreditCode/{credit_code}"]["get"]
    assert get_by_credit_code["operationId"] == "RegistryService_GetParticipant_2"
    assert document["paths"]["/v1/participants/{participant_id}"]["get"]["operationId"] == (
        "RegistryService_GetParticipant"
    )
    assert {tag["name"] for tag in document["tags"]} == {b.method.containing_service.name for b in bindings}


def test_path_parameters_are_the_template_variables(document: Json, bindings: list[Binding]) -> None:
    for binding in bindings:
        path, operation = operation_of(document, binding)
        parameters = [resolve(document, p) for p in operation["parameters"]]
        in_path = [p for p in parameters if p["in"] == "path"]
        # In template order, each filling the variable's field (its name, or x-field-path where two templates of
        # the same shape share one path item).
        assert [p.get("x-field-path", p["name"]) for p in in_path] == list(binding.path_fields), path
        assert re.findall(r"\{([^}]*)\}", path) == [p["name"] for p in in_path]
        assert all(p["required"] for p in in_path)
        verb = binding.template.verb
        assert path.endswith(f":{verb}") if verb else ":" not in path.rsplit("/", 1)[-1]
    # The PATCH of a participant names the nested field but shares the GET's path item.
    patch = document["paths"]["/v1/participants/{participant_id}"]["patch"]
    assert patch["parameters"][0]["x-field-path"] == "participant.participant_id"
    assert not any("{participant.participant_id}" in path for path in document["paths"])


def test_query_parameters_are_the_fields_left_by_path_and_body(document: Json) -> None:
    def query(path: str, method: str) -> dict[str, Json]:
        parameters = (resolve(document, p) for p in document["paths"][path][method]["parameters"])
        return {p["name"]: p for p in parameters if p["in"] == "query"}

    # No body: every field of the request (JSON names).
    listing = query("/v1/participants", "get")
    expected = {f.json_name for f in registry_pb2.ListParticipantsRequest.DESCRIPTOR.fields}
    assert set(listing) == expected
    # A named body: the fields outside it, here the update mask (a comma-separated string).
    update = query("/v1/participants/{participant_id}", "patch")
    assert set(update) == {"updateMask"}
    assert update["updateMask"]["schema"]["type"] == "string"
    # A `*` body: none.
    assert query("/v1/participants/{participant_id}:changeStatus", "post") == {}
    # A repeated enum: an exploded array of the enum's names.
    steps = query("/v1/events:subscribe", "get")["bizSteps"]
    assert steps["schema"]["type"] == "array"
    assert steps["style"] == "form"
    assert steps["explode"] is True
    biz_step = flows_pb2.SubscribeEventsRequest.DESCRIPTOR.fields_by_name["biz_steps"].enum_type
    assert biz_step is not None
    assert resolve(document, steps["schema"]["items"])["enum"] == [value.name for value in biz_step.values]


def test_bodies_and_responses(document: Json) -> None:
    # body "participant": the Participant schema without the field the path fills.
    patch = document["paths"]["/v1/participants/{participant_id}"]["patch"]
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "participantId" not in body["properties"]
    assert "legalName" in body["properties"]
    # body "*" without path fields: the request message itself.
    register = document["paths"]["/v1/events:batch"]["post"]["requestBody"]["content"]["application/json"]
    assert register["schema"] == {"$ref": "#/components/schemas/greenmesh.flows.v1.ReportEventsRequest"}
    ok = patch["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/greenmesh.registry.v1.UpdateParticipantResponse"
    }
    assert set(ok["headers"]) == {"X-Request-Id", "X-Trace-Id"}
    status = resolve(document, patch["responses"]["default"])["content"]["application/json"]["schema"]
    assert status == {"$ref": "#/components/schemas/google.rpc.Status"}
    details = document["components"]["schemas"]["google.rpc.Status"]["properties"]["details"]
    assert resolve(document, details["items"])["required"] == ["@type"]
    rate_limited = resolve(document, patch["responses"]["429"])
    assert "Retry-After" in rate_limited["headers"]
    assert "WWW-Authenticate" in resolve(document, patch["responses"]["401"])["headers"]
    # The headers the gateway reads, on every operation.
    headers = {
        resolve(document, p)["name"]: resolve(document, p)
        for _, _, op in operations(document)
        for p in op["parameters"]
    }
    assert re.fullmatch(headers["Grpc-Timeout"]["schema"]["pattern"], "300m")
    assert headers["X-Request-Id"]["in"] == "header"
    for _, _, operation in operations(document):
        assert {"$ref": "#/components/parameters/Grpc-Timeout"} in operation["parameters"]


def test_a_server_stream_is_newline_delimited_json(document: Json) -> None:
    ok = document["paths"]["/v1/events:subscribe"]["get"]["responses"]["200"]
    assert list(ok["content"]) == ["application/x-ndjson"]
    line = ok["content"]["application/x-ndjson"]["schema"]
    result, error = line["oneOf"]
    assert result["properties"]["result"] == {"$ref": "#/components/schemas/greenmesh.flows.v1.SubscribeEventsResponse"}
    assert error["properties"]["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_credentials_are_optional_bearer_or_api_key(document: Json) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-Api-Key"}
    # Anonymous calls are allowed by the gateway (the public lookups); the services refuse the rest.
    assert document["security"] == [{}, {"bearer": []}, {"apiKey": []}]


def test_descriptions_come_from_the_proto_comments(document: Json) -> None:
    """Checked against the .proto text itself: the `//` lines right above each annotated rpc."""
    source = (REPO_ROOT / "protos/greenmesh/registry/v1/registry.proto").read_text(encoding="utf-8")
    checked = 0
    for found in re.finditer(r"((?:^ *//[^\n]*\n)+) *rpc (\w+)\(", source, re.MULTILINE):
        comment = "\n".join(line.strip().removeprefix("//").strip() for line in found.group(1).splitlines())
        ids = [op for _, _, op in operations(document) if op["operationId"] == f"RegistryService_{found.group(2)}"]
        if ids:
            assert ids[0]["description"].startswith(comment)
            assert comment.startswith(ids[0]["summary"])
            checked += 1
    assert checked >= 5
    tag = next(t for t in document["tags"] if t["name"] == "RegistryService")
    assert "participants" in tag["description"]
    participant = document["components"]["schemas"]["greenmesh.registry.v1.Participant"]["properties"]
    assert participant["status"]["readOnly"] is True  # "Output only."
    assert "readOnly" not in participant["legalName"]


# ---- schemas: the proto3 JSON mapping -------------------------------------------------------------------


def message_components(document: Json) -> Iterator[tuple[Descriptor, Json]]:
    pool = descriptor_pool.Default()
    for name, schema in document["components"]["schemas"].items():
        if schema.get("type") == "object" and not name.startswith(("google.rpc.", "google.protobuf.")):
            yield pool.FindMessageTypeByName(name), schema


def test_properties_are_json_names_and_int64_is_a_string(document: Json) -> None:
    int64_fields = 0
    for message, schema in message_components(document):
        assert set(schema.get("properties", {})) == {f.json_name for f in message.fields}, message.full_name
        for field in message.fields:
            prop = schema["properties"][field.json_name]
            value = prop["items"] if field.is_repeated else prop
            if field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
                assert value["type"] == "string"
                assert value["format"] == "int64"
                int64_fields += 1
            elif field.type == FieldDescriptor.TYPE_INT32:
                assert value["type"] == "integer"
            elif field.type == FieldDescriptor.TYPE_BOOL:
                assert value["type"] == "boolean"
    assert int64_fields > 10
    version = document["components"]["schemas"]["greenmesh.registry.v1.Participant"]["properties"]["version"]
    assert (version["type"], version["format"]) == ("string", "int64")


def test_an_enum_lists_its_value_names(document: Json) -> None:
    status = document["components"]["schemas"]["greenmesh.registry.v1.ParticipantStatus"]
    assert status["type"] == "string"
    assert status["enum"] == [value.name for value in registry_pb2.ParticipantStatus.DESCRIPTOR.values]
    assert "PARTICIPANT_STATUS_ACTIVE" in status["enum"]


def test_well_known_types_take_their_json_forms(document: Json) -> None:
    participant = document["components"]["schemas"]["greenmesh.registry.v1.Participant"]["properties"]
    assert participant["createdAt"]["type"] == "string"
    assert participant["createdAt"]["format"] == "date-time"
    assert "google.protobuf.Timestamp" not in document["components"]["schemas"]


# A message with every shape the mapping distinguishes, in a pool of its own:
#   message Node { string name = 1; repeated Node children = 2; map<string, int64> counts = 3;
#     google.protobuf.Int32Value limit = 4; google.protobuf.Duration wait = 5; bytes blob = 6; uint64 big = 7;
#     oneof choice { string a = 8; int32 b = 9; } optional double ratio = 10; google.protobuf.Struct extra = 11;
#     map<int32, Node> by_rank = 12; }
#   service NodeService { rpc GetNode(Node) returns (stream Node); }
def _synthetic_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for module in (wrappers_pb2, duration_pb2, struct_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    file = descriptor_pb2.FileDescriptorProto(
        name="demo/v1/node.proto",
        package="demo.v1",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "google/protobuf/duration.proto", "google/protobuf/struct.proto"],
    )
    node = file.message_type.add(name="Node")
    label = descriptor_pb2.FieldDescriptorProto

    def add(
        name: str, number: int, kind: int, type_name: str = "", repeated: bool = False
    ) -> descriptor_pb2.FieldDescriptorProto:
        field = node.field.add(
            name=name, number=number, type=kind, label=label.LABEL_REPEATED if repeated else label.LABEL_OPTIONAL
        )
        if type_name:
            field.type_name = type_name
        return field

    for entry, key in (("CountsEntry", label.TYPE_STRING), ("ByRankEntry", label.TYPE_INT32)):
        nested = node.nested_type.add(name=entry)
        nested.options.map_entry = True
        nested.field.add(name="key", number=1, type=key, label=label.LABEL_OPTIONAL)
    node.nested_type[0].field.add(name="value", number=2, type=label.TYPE_INT64, label=label.LABEL_OPTIONAL)
    node.nested_type[1].field.add(
        name="value", number=2, type=label.TYPE_MESSAGE, type_name=".demo.v1.Node", label=label.LABEL_OPTIONAL
    )
    add("name", 1, label.TYPE_STRING)
    add("children", 2, label.TYPE_MESSAGE, ".demo.v1.Node", repeated=True)
    add("counts", 3, label.TYPE_MESSAGE, ".demo.v1.Node.CountsEntry", repeated=True)
    add("limit", 4, label.TYPE_MESSAGE, ".google.protobuf.Int32Value")
    add("wait", 5, label.TYPE_MESSAGE, ".google.protobuf.Duration")
    add("blob", 6, label.TYPE_BYTES)
    add("big", 7, label.TYPE_UINT64)
    node.oneof_decl.add(name="choice")
    add("a", 8, label.TYPE_STRING).oneof_index = 0
    add("b", 9, label.TYPE_INT32).oneof_index = 0
    node.oneof_decl.add(name="_ratio")
    ratio = add("ratio", 10, label.TYPE_DOUBLE)
    ratio.oneof_index, ratio.proto3_optional = 1, True
    add("extra", 11, label.TYPE_MESSAGE, ".google.protobuf.Struct")
    add("by_rank", 12, label.TYPE_MESSAGE, ".demo.v1.Node.ByRankEntry", repeated=True)
    service = file.service.add(name="NodeService")
    service.method.add(name="GetNode", input_type=".demo.v1.Node", output_type=".demo.v1.Node", server_streaming=True)
    pool.Add(file)
    return pool


def test_the_mapping_of_maps_wrappers_oneofs_recursion_and_wide_paths() -> None:
    pool = _synthetic_pool()
    method = pool.FindServiceByName("demo.v1.NodeService").methods_by_name["GetNode"]
    binding = Binding(
        method=method,
        component=Component.GATEWAY,
        http_method="GET",
        template=parse_template("/v1/{name=nodes/**}"),
        body="",
        response_body="",
        additional=False,
    )
    doc = build_openapi([binding], title="Demo", version="1", comments=ProtoComments())
    validate(doc, cls=OpenAPIV31SpecValidator)
    node = doc["components"]["schemas"]["demo.v1.Node"]["properties"]
    ref = {"$ref": "#/components/schemas/demo.v1.Node"}
    assert node["children"] == {"type": "array", "items": ref}  # recursion by reference
    assert node["counts"] == {"type": "object", "additionalProperties": {"type": "string", "format": "int64"}}
    assert node["byRank"] == {"type": "object", "additionalProperties": ref, "propertyNames": {"pattern": "^-?[0-9]+$"}}
    assert node["limit"]["type"] == ["integer", "null"]
    assert node["wait"]["type"] == "string"
    assert re.fullmatch(node["wait"]["pattern"], "1.5s")
    assert node["blob"] == {"type": "string", "format": "byte"}
    assert node["big"] == {"type": "string", "format": "uint64"}
    assert node["extra"] == {"type": "object", "additionalProperties": True}
    assert "at most one" in node["a"]["description"]
    assert "oneof" not in node["ratio"].get("description", "")  # proto3 optional: presence, not a choice
    assert "Oneof `choice`" in doc["components"]["schemas"]["demo.v1.Node"]["description"]

    operation = doc["paths"]["/v1/{name}"]["get"]
    assert operation["operationId"] == "NodeService_GetNode"
    parameters = {p["name"]: p for p in operation["parameters"] if "name" in p}
    assert "nodes/**" in parameters["name"]["description"]
    # Query: scalars and scalar-like wrappers; not repeated messages, maps or free-form Struct.
    assert set(parameters) - {"name"} == {"limit", "wait", "blob", "big", "a", "b", "ratio"}
    assert "application/x-ndjson" in operation["responses"]["200"]["content"]


def test_proto_comments_are_read_from_source_info() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="c.proto", package="c")
    message = file.message_type.add(name="Thing")
    message.field.add(name="size", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32)
    enum = file.enum_type.add(name="Color")
    enum.value.add(name="COLOR_RED", number=0)
    for path, text in (([4, 0], " A thing.\n Two lines.\n"), ([4, 0, 2, 0], " Its size.\n"), ([5, 0, 2, 0], " Red.\n")):
        file.source_code_info.location.add(path=path, leading_comments=text)
    data = descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString()
    comments = ProtoComments.from_descriptor_set(data)
    assert comments.get("c.Thing") == "A thing.\nTwo lines."
    assert comments.get("c.Thing.size") == "Its size."
    assert comments.get("c.Color.COLOR_RED") == "Red."
    assert comments.get("c.Missing") == ""
    assert len(ProtoComments.load(Path("/nonexistent/descriptors.binpb"))) == 0


# ---- serving --------------------------------------------------------------------------------------------


def test_the_docs_page_loads_the_document() -> None:
    page = docs_html()
    assert '"/openapi.json"' in page  # the URL Swagger UI fetches
    assert '<a href="/openapi.json">' in page  # for a browser without JavaScript or the CDN
    assert "<noscript>" in page
    assert "swagger-ui-bundle.js" in page
    hostile = docs_html('/x"</script><script>alert(1)</script>')
    assert "</script><script>alert(1)" not in hostile


async def test_the_routes_serve_the_document_and_the_docs(document: Json) -> None:
    app = Starlette(routes=openapi_routes(document))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        served = await client.get("/openapi.json")
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/json"
        assert served.json() == document
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '"/openapi.json"' in page.text
        assert (await client.post("/openapi.json")).status_code == 405
    # Behind a proxy that mounts the gateway under a prefix, the page asks for the prefixed document.
    prefixed = httpx.ASGITransport(app=app, root_path="/api")
    async with httpx.AsyncClient(transport=prefixed, base_url="http://gateway") as client:
        assert '"/api/openapi.json"' in (await client.get("/docs")).text
