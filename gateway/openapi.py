"""The OpenAPI 3.1 document of the gateway's REST API, generated from the same bindings the transcoder routes.

Nothing here is written per method. The paths come from `gateway.http_rules` (each RPC's `google.api.http`
rule and its additional bindings); the schemas come from the message descriptors, following the proto3 JSON
mapping as `google.protobuf.json_format` writes it (lowerCamelCase names, 64-bit integers as strings, enums by
name, well-known types in their JSON forms); the prose comes from the proto comments, read from the
`source_code_info` of `gen/descriptors/greenmesh.binpb` (the generated modules carry no comments).

    document = greenmesh_openapi()                 # the whole API, title "GreenMesh", the package's version
    routes = openapi_routes(document)              # GET /openapi.json and GET /docs, for the Starlette app

OpenAPI 3.1 rather than 3.0: its schemas are JSON Schema 2020-12, so a `$ref` can carry its own description
(a field's comment next to its message type) and a nullable wrapper is `type: [integer, "null"]`.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.docs_page import docs_html
from gateway.http_rules import HTTP_METHODS, Binding, Variable, load_bindings, resolve_field_path
from gateway.transcode import HTTP_STATUS

OPENAPI_VERSION = "3.1.0"
TITLE = "GreenMesh"
DISTRIBUTION = "greenmesh"
# protoc's descriptor set with --include_source_info: where the proto comments are.
DESCRIPTOR_SET = Path(__file__).resolve().parent.parent / "gen" / "descriptors" / "greenmesh.binpb"

JsonObject = dict[str, Any]

STATUS_SCHEMA = "google.rpc.Status"
ANY_SCHEMA = "google.protobuf.Any"
REQUEST_ID_HEADER = "X-Request-Id"
TRACE_ID_HEADER = "X-Trace-Id"
TIMEOUT_HEADER = "Grpc-Timeout"
BEARER_SCHEME = "bearer"
API_KEY_SCHEME = "apiKey"

# ---------------------------------------------------------------------------------------------------------------
# Proto comments


class ProtoComments:
    """The comments of services, methods, messages, fields, oneofs, enums and enum values, by full name.

    Enum values are named `package.Enum.VALUE` here (protobuf scopes them beside the enum, which could clash).
    """

    def __init__(self, comments: Mapping[str, str] | None = None) -> None:
        self._comments = dict(comments or {})

    def __len__(self) -> int:
        return len(self._comments)

    def get(self, full_name: str) -> str:
        return self._comments.get(full_name, "")

    @classmethod
    def from_descriptor_set(cls, data: bytes) -> ProtoComments:
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(data)
        comments: dict[str, str] = {}
        for file in descriptor_set.file:
            names = _element_names(file)
            for location in file.source_code_info.location:
                name = names.get(tuple(location.path))
                if name is None:
                    continue
                text = "\n".join(
                    part for part in (_clean(location.leading_comments), _clean(location.trailing_comments)) if part
                )
                if text:
                    comments[name] = text
        return cls(comments)

    @classmethod
    def load(cls, path: Path = DESCRIPTOR_SET) -> ProtoComments:
        """The comments in the descriptor set at `path`; none when it is not there (an install without gen/)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        return cls.from_descriptor_set(data)


# Field numbers of the descriptor.proto elements a source location path walks through.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    names: dict[tuple[int, ...], str] = {}
    prefix = f"{file.package}." if file.package else ""
    for index, message in enumerate(file.message_type):
        _index_message(message, (_FILE_MESSAGE, index), prefix + message.name, names)
    for index, enum in enumerate(file.enum_type):
        _index_enum(enum, (_FILE_ENUM, index), prefix + enum.name, names)
    for index, service in enumerate(file.service):
        service_name = prefix + service.name
        names[(_FILE_SERVICE, index)] = service_name
        for method_index, method in enumerate(service.method):
            names[(_FILE_SERVICE, index, _SERVICE_METHOD, method_index)] = f"{service_name}.{method.name}"
    return names


def _index_message(
    message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str, names: dict[tuple[int, ...], str]
) -> None:
    names[path] = name
    for index, field in enumerate(message.field):
        names[(*path, _MESSAGE_FIELD, index)] = f"{name}.{field.name}"
    for index, oneof in enumerate(message.oneof_decl):
        names[(*path, _MESSAGE_ONEOF, index)] = f"{name}.{oneof.name}"
    for index, nested in enumerate(message.nested_type):
        _index_message(nested, (*path, _MESSAGE_NESTED, index), f"{name}.{nested.name}", names)
    for index, enum in enumerate(message.enum_type):
        _index_enum(enum, (*path, _MESSAGE_ENUM, index), f"{name}.{enum.name}", names)


def _index_enum(
    enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str, names: dict[tuple[int, ...], str]
) -> None:
    names[path] = name
    for index, value in enumerate(enum.value):
        names[(*path, _ENUM_VALUE, index)] = f"{name}.{value.name}"


def _clean(comment: str) -> str:
    return textwrap.dedent(comment).strip()


def _summary(comment: str) -> str:
    """The first sentence of a comment's first paragraph, on one line, without its full stop."""
    paragraph = " ".join(comment.split("\n\n", 1)[0].split())
    sentence = re.split(r"(?<=[.!?])\s", paragraph, maxsplit=1)[0]
    return sentence.removesuffix(".")


def _words(camel: str) -> str:
    """`GetParticipant` -> `Get participant`: a summary for a method without a comment."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+", camel)
    text = " ".join(word if word.isupper() and len(word) > 1 else word.lower() for word in words)
    return text[:1].upper() + text[1:]


def _join(*parts: str) -> str:
    return "\n\n".join(part for part in parts if part)


# ---------------------------------------------------------------------------------------------------------------
# Schemas: the proto3 JSON mapping


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UINT64_TYPES = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
_INT32_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32_TYPES = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}


def _scalar_schema(field_type: int) -> JsonObject:
    if field_type in _INT64_TYPES:
        return {"type": "string", "format": "int64"}
    if field_type in _UINT64_TYPES:
        return {"type": "string", "format": "uint64"}
    if field_type in _INT32_TYPES:
        return {"type": "integer", "format": "int32"}
    if field_type in _UINT32_TYPES:
        return {"type": "integer", "format": "uint32", "minimum": 0}
    if field_type == FieldDescriptor.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if field_type == FieldDescriptor.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if field_type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field_type == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if field_type == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    raise ValueError(f"no JSON schema for field type {field_type}")


def _nullable(schema: JsonObject, what: str) -> Callable[[], JsonObject]:
    def build() -> JsonObject:
        return {
            **schema,
            "type": [schema["type"], "null"],
            "description": f"{what} (a wrapper: null or absent when unset).",
        }

    return build


# The well-known types whose JSON form is not an object of their fields. They are written inline (they are
# short), except Any, which google.rpc.Status uses too and is a component.
_WELL_KNOWN: dict[str, Callable[[], JsonObject]] = {
    "google.protobuf.Timestamp": lambda: {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": lambda: {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": 'Seconds with a trailing `s`, e.g. `"900s"` or `"1.5s"`.',
    },
    "google.protobuf.FieldMask": lambda: {
        "type": "string",
        "description": 'Field paths in lowerCamelCase, comma-separated, e.g. `"displayName,contact.phone"`.',
    },
    "google.protobuf.Struct": lambda: {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": lambda: {"description": "Any JSON value."},
    "google.protobuf.ListValue": lambda: {"type": "array", "items": {}},
    "google.protobuf.Empty": lambda: {"type": "object"},
    "google.protobuf.Any": lambda: _ref(ANY_SCHEMA),
    "google.protobuf.DoubleValue": _nullable({"type": "number", "format": "double"}, "A double"),
    "google.protobuf.FloatValue": _nullable({"type": "number", "format": "float"}, "A float"),
    "google.protobuf.Int64Value": _nullable({"type": "string", "format": "int64"}, "An int64"),
    "google.protobuf.UInt64Value": _nullable({"type": "string", "format": "uint64"}, "A uint64"),
    "google.protobuf.Int32Value": _nullable({"type": "integer", "format": "int32"}, "An int32"),
    "google.protobuf.UInt32Value": _nullable({"type": "integer", "format": "uint32"}, "A uint32"),
    "google.protobuf.BoolValue": _nullable({"type": "boolean"}, "A boolean"),
    "google.protobuf.StringValue": _nullable({"type": "string"}, "A string"),
    "google.protobuf.BytesValue": _nullable({"type": "string", "format": "byte"}, "Base64 bytes"),
}
# Well-known types a query parameter can carry (their JSON form is a single string, number or boolean).
_QUERY_WELL_KNOWN = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
    | {f"google.protobuf.{kind}Value" for kind in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32")}
    | {f"google.protobuf.{kind}Value" for kind in ("Bool", "String", "Bytes")}
)

_OUTPUT_ONLY = re.compile(r"^output only\b", re.IGNORECASE)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(field.is_repeated and message is not None and message.GetOptions().map_entry)


class _Schemas:
    """Builds component schemas on demand: a message's schema is written once, under its full name, and every
    use refers to it (so recursive messages need nothing special)."""

    def __init__(self, comments: ProtoComments) -> None:
        self.comments = comments
        self.components: dict[str, JsonObject] = {}
        self._synthetic: dict[str, frozenset[str]] = {}

    # -- types --------------------------------------------------------------------------------------------------

    def message(self, message: Descriptor) -> JsonObject:
        """The schema of a message-typed value: a well-known type's JSON form, else a $ref."""
        well_known = _WELL_KNOWN.get(message.full_name)
        if well_known is not None:
            schema = well_known()
            if message.full_name == ANY_SCHEMA:
                self._any()
            return schema
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # placeholder: a recursive reference stops here
            self.components[message.full_name] = self.message_schema(message)
        return _ref(message.full_name)

    def enum(self, enum: EnumDescriptor) -> JsonObject:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.components:
            values = [
                f"- `{value.name}`: {' '.join(comment.split())}"
                for value in enum.values
                if (comment := self.comments.get(f"{enum.full_name}.{value.name}"))
            ]
            schema: JsonObject = {"type": "string", "enum": [value.name for value in enum.values]}
            description = _join(self.comments.get(enum.full_name), "\n".join(values))
            if description:
                schema["description"] = description
            self.components[enum.full_name] = schema
        return _ref(enum.full_name)

    def value(self, field: FieldDescriptor) -> JsonObject:
        """One value of the field (an element, for a repeated field)."""
        if field.type == FieldDescriptor.TYPE_MESSAGE or field.type == FieldDescriptor.TYPE_GROUP:
            assert field.message_type is not None
            return self.message(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            assert field.enum_type is not None
            return self.enum(field.enum_type)
        return _scalar_schema(field.type)

    def field(self, field: FieldDescriptor) -> JsonObject:
        """The property schema of a field: its value, array or map, with the field's documentation."""
        if _is_map(field):
            assert field.message_type is not None
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            schema: JsonObject = {"type": "object", "additionalProperties": self.value(value)}
            key_names = _map_key_names(key)
            if key_names:
                schema["propertyNames"] = key_names
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
        else:
            schema = dict(self.value(field))
        comment = self.comments.get(field.full_name)
        # A well-known type's note on its format (a Duration's `s`) follows the field's own comment.
        text = _join(comment, schema.pop("description", ""), self.oneof_note(field))
        if text:
            schema["description"] = text
        if _OUTPUT_ONLY.match(comment):
            schema["readOnly"] = True
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    # -- messages -----------------------------------------------------------------------------------------------

    def message_schema(self, message: Descriptor, exclude: frozenset[tuple[str, ...]] = frozenset()) -> JsonObject:
        """An object schema of the message's fields, without the (proto-named) field paths in `exclude`: those
        a request takes from the URL path."""
        properties: JsonObject = {}
        for field in message.fields:
            if (field.name,) in exclude:
                continue
            nested = frozenset(path[1:] for path in exclude if len(path) > 1 and path[0] == field.name)
            if nested and field.message_type is not None and not field.is_repeated:
                inner = self.message_schema(field.message_type, nested)
                if not inner.get("properties"):
                    continue
                taken = ", ".join(f"`{'.'.join((field.name, *path))}`" for path in sorted(nested))
                inner["description"] = _join(
                    self.comments.get(field.full_name), inner.get("description", ""), f"Without {taken}: from the path."
                )
                properties[field.json_name] = inner
            else:
                properties[field.json_name] = self.field(field)
        schema: JsonObject = {"type": "object"}
        description = _join(self.comments.get(message.full_name), *self._oneof_summaries(message))
        if description:
            schema["description"] = description
        if properties:
            schema["properties"] = properties
        return schema

    def _real_oneofs(self, message: Descriptor) -> list[tuple[str, list[FieldDescriptor]]]:
        synthetic = self._synthetic_oneofs(message)
        return [(oneof.name, list(oneof.fields)) for oneof in message.oneofs if oneof.name not in synthetic]

    def _synthetic_oneofs(self, message: Descriptor) -> frozenset[str]:
        """The oneofs protoc makes for proto3 `optional` fields (presence, not a choice)."""
        if message.full_name not in self._synthetic:
            proto = descriptor_pb2.DescriptorProto()
            message.CopyToProto(proto)
            self._synthetic[message.full_name] = frozenset(
                proto.oneof_decl[field.oneof_index].name
                for field in proto.field
                if field.proto3_optional and field.HasField("oneof_index")
            )
        return self._synthetic[message.full_name]

    def _oneof_summaries(self, message: Descriptor) -> list[str]:
        return [
            _join(
                f"Oneof `{name}`: at most one of {', '.join(f'`{field.json_name}`' for field in fields)}.",
                self.comments.get(f"{message.full_name}.{name}"),
            )
            for name, fields in self._real_oneofs(message)
        ]

    def oneof_note(self, field: FieldDescriptor) -> str:
        oneof, message = field.containing_oneof, field.containing_type
        if oneof is None or message is None or oneof.name in self._synthetic_oneofs(message):
            return ""
        others = [f"`{other.json_name}`" for other in oneof.fields if other is not field]
        return f"Part of oneof `{oneof.name}`: set at most one of this and {', '.join(others)}."

    def _any(self) -> None:
        self.components.setdefault(
            ANY_SCHEMA,
            {
                "type": "object",
                "description": "A message of any type: `@type` names it (`type.googleapis.com/<full name>`), the "
                "other properties are its JSON form.",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
                "additionalProperties": True,
            },
        )

    def status(self) -> JsonObject:
        self._any()
        self.components.setdefault(
            STATUS_SCHEMA,
            {
                "type": "object",
                "description": "The gRPC status of a failed call (`google.rpc.Status`).",
                "properties": {
                    "code": {
                        "type": "integer",
                        "format": "int32",
                        "description": "The gRPC status code (3 INVALID_ARGUMENT, 5 NOT_FOUND, 7 PERMISSION_DENIED, "
                        "16 UNAUTHENTICATED, ...).",
                    },
                    "message": {"type": "string", "description": "For a developer, in English."},
                    "details": {
                        "type": "array",
                        "items": _ref(ANY_SCHEMA),
                        "description": "Error details such as `google.rpc.ErrorInfo`, `google.rpc.BadRequest`, "
                        "`google.rpc.RetryInfo`, each with its `@type`.",
                    },
                },
                "required": ["code"],
            },
        )
        return _ref(STATUS_SCHEMA)


def _map_key_names(key: FieldDescriptor) -> JsonObject:
    """JSON object keys are strings: the pattern of the key type's text form."""
    if key.type == FieldDescriptor.TYPE_BOOL:
        return {"enum": ["true", "false"]}
    if key.type in _INT64_TYPES | _INT32_TYPES:
        return {"pattern": "^-?[0-9]+$"}
    if key.type in _UINT64_TYPES | _UINT32_TYPES:
        return {"pattern": "^[0-9]+$"}
    return {}


# ---------------------------------------------------------------------------------------------------------------
# Paths and operations


def _path_key(binding: Binding, names: Sequence[str]) -> str:
    parts: list[str] = []
    variables = iter(names)
    for segment in binding.template.segments:
        parts.append(f"{{{next(variables)}}}" if isinstance(segment, Variable) else segment)
    verb = f":{binding.template.verb}" if binding.template.verb else ""
    return "/" + "/".join(parts) + verb


def _path_names(bindings: Sequence[Binding]) -> dict[int, tuple[str, ...]]:
    """The parameter names each binding's path uses in the document, by id(binding).

    OpenAPI forbids two paths that differ only in their parameters' names (`/v1/participants/{participant_id}`
    and `/v1/participants/{participant.participant_id}`): such templates share one path item, named after the
    template with the plainest names, and an operation whose field paths differ says which field each fills."""
    groups: dict[str, list[Binding]] = {}
    for binding in bindings:
        shape = _path_key(binding, ["" for _ in binding.template.variables])
        groups.setdefault(shape, []).append(binding)
    names: dict[int, tuple[str, ...]] = {}
    for group in groups.values():
        canonical = min(
            group, key=lambda b: (sum(v.field_path.count(".") for v in b.template.variables), b.template.source)
        )
        for binding in group:
            names[id(binding)] = canonical.path_fields
    return names


def _operation_ids(bindings: Sequence[Binding]) -> dict[int, str]:
    """`<Service>_<Method>`; a method's further bindings (its additional_bindings) get `_2`, `_3`..."""
    by_method: dict[str, list[Binding]] = {}
    for binding in bindings:
        by_method.setdefault(binding.method.full_name, []).append(binding)
    ids: dict[int, str] = {}
    taken: set[str] = set()
    for group in by_method.values():
        method = group[0].method
        base = f"{method.containing_service.name}_{method.name}"
        for index, binding in enumerate(sorted(group, key=lambda b: b.additional)):
            candidate = base if index == 0 else f"{base}_{index + 1}"
            suffix = index + 1
            while candidate in taken:
                suffix += 1
                candidate = f"{base}_{suffix}"
            taken.add(candidate)
            ids[id(binding)] = candidate
    return ids


class _Operations:
    def __init__(self, schemas: _Schemas) -> None:
        self.schemas = schemas
        self.comments = schemas.comments

    def build(self, binding: Binding, operation_id: str, names: Sequence[str]) -> JsonObject:
        method = binding.method
        comment = self.comments.get(method.full_name)
        notes = [f"gRPC: `{binding.grpc_path.lstrip('/')}`."]
        if binding.additional:
            notes.append("One of the method's additional HTTP bindings.")
        if any(segment in ("*", "**") for segment in binding.template.segments):
            notes.append("In the path, `*` stands for any one segment and `**` for the rest of the path.")
        operation: JsonObject = {
            "tags": [method.containing_service.name],
            "summary": _summary(comment) if comment else _words(method.name),
            "operationId": operation_id,
        }
        operation["description"] = _join(comment, " ".join(notes))
        parameters = self.path_parameters(binding, names) + self.query_parameters(binding)
        parameters += [{"$ref": f"#/components/parameters/{name}"} for name in (REQUEST_ID_HEADER, TIMEOUT_HEADER)]
        operation["parameters"] = parameters
        body = self.request_body(binding)
        if body is not None:
            operation["requestBody"] = body
        operation["responses"] = {
            "200": self.success(binding),
            "401": {"$ref": "#/components/responses/Unauthenticated"},
            "403": {"$ref": "#/components/responses/PermissionDenied"},
            "429": {"$ref": "#/components/responses/RateLimited"},
            "default": {"$ref": "#/components/responses/Error"},
        }
        if method.GetOptions().deprecated:
            operation["deprecated"] = True
        return operation

    # -- parameters ---------------------------------------------------------------------------------------------

    def path_parameters(self, binding: Binding, names: Sequence[str]) -> list[JsonObject]:
        parameters: list[JsonObject] = []
        for variable, name in zip(binding.template.variables, names, strict=True):
            field = resolve_field_path(binding.method.input_type, variable.field_path)[-1]
            notes: list[str] = []
            if name != variable.field_path:
                notes.append(f"Fills the request field `{variable.field_path}`.")
            if variable.multi_segment:
                notes.append(
                    f"Matches `{'/'.join(variable.pattern)}`: it spans path segments, so its slashes are sent as `/`."
                )
            elif variable.pattern != ("*",):
                notes.append(f"Matches `{'/'.join(variable.pattern)}`.")
            parameter: JsonObject = {"name": name, "in": "path", "required": True}
            comment = self.comments.get(field.full_name)
            description = _join("" if _OUTPUT_ONLY.match(comment) else comment, " ".join(notes))
            if description:
                parameter["description"] = description
            parameter["schema"] = self.schemas.value(field)
            if name != variable.field_path:
                parameter["x-field-path"] = variable.field_path
            parameters.append(parameter)
        return parameters

    def query_parameters(self, binding: Binding) -> list[JsonObject]:
        """Every request field the path and the body leave, as `name` or `outer.inner` (JSON names)."""
        if binding.body == "*":
            return []
        bound = {tuple(path.split(".")) for path in binding.path_fields}
        if binding.body:
            bound.add((binding.body,))
        parameters: list[JsonObject] = []
        self._query_fields(binding.method.input_type, (), (), frozenset(bound), parameters, {binding.method.input_type})
        return parameters

    def _query_fields(
        self,
        message: Descriptor,
        proto_prefix: tuple[str, ...],
        json_prefix: tuple[str, ...],
        bound: frozenset[tuple[str, ...]],
        parameters: list[JsonObject],
        seen: set[Descriptor],
    ) -> None:
        for field in message.fields:
            proto_path, json_path = (*proto_prefix, field.name), (*json_prefix, field.json_name)
            if proto_path in bound or _is_map(field):
                continue
            nested = field.message_type
            if nested is not None and nested.full_name not in _QUERY_WELL_KNOWN:
                # A message is spread over its fields' parameters; repeated, recursive and free-form ones cannot be.
                if field.is_repeated or nested in seen or nested.full_name in _WELL_KNOWN:
                    continue
                self._query_fields(nested, proto_path, json_path, bound, parameters, seen | {nested})
                continue
            parameter: JsonObject = {"name": ".".join(json_path), "in": "query"}
            description = _join(self.comments.get(field.full_name), self.schemas.oneof_note(field))
            if description:
                parameter["description"] = description
            if field.is_repeated:
                parameter["schema"] = {"type": "array", "items": self.schemas.value(field)}
                parameter["style"] = "form"
                parameter["explode"] = True
            else:
                parameter["schema"] = self.schemas.value(field)
            if field.GetOptions().deprecated:
                parameter["deprecated"] = True
            parameters.append(parameter)

    # -- bodies -------------------------------------------------------------------------------------------------

    def request_body(self, binding: Binding) -> JsonObject | None:
        if not binding.body:
            return None
        request = binding.method.input_type
        paths = [tuple(path.split(".")) for path in binding.path_fields]
        if binding.body == "*":
            if paths:
                schema = self.schemas.message_schema(request, frozenset(paths))
                schema["description"] = _join(
                    schema.get("description", ""), f"The request `{request.full_name}` without the fields in the path."
                )
            else:
                schema = self.schemas.message(request)
            description = "The request message."
        else:
            field = request.fields_by_name[binding.body]
            inside = frozenset(path[1:] for path in paths if len(path) > 1 and path[0] == binding.body)
            if inside and field.message_type is not None and not field.is_repeated:
                schema = self.schemas.message_schema(field.message_type, inside)
                taken = ", ".join(f"`{binding.body}.{'.'.join(path)}`" for path in sorted(inside))
                schema["description"] = _join(schema.get("description", ""), f"Without {taken}: from the path.")
            else:
                schema = self.schemas.field(field)
            description = f"The request field `{binding.body}`."
        return {"description": description, "required": True, "content": {"application/json": {"schema": schema}}}

    def success(self, binding: Binding) -> JsonObject:
        response = binding.method.output_type
        if binding.response_body:
            field = response.fields_by_name[binding.response_body]
            schema = self.schemas.field(field)
            what = f"The response field `{binding.response_body}` of `{response.full_name}`"
        else:
            schema = self.schemas.message(response)
            what = f"`{response.full_name}`"
        headers = _response_headers()
        if binding.server_streaming:
            line = {
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {"result": schema},
                        "required": ["result"],
                        "description": "One message of the stream.",
                    },
                    {
                        "type": "object",
                        "properties": {"error": self.schemas.status()},
                        "required": ["error"],
                        "description": "The stream's failure, its last line.",
                    },
                ],
            }
            return {
                "description": f'A stream of newline-delimited JSON objects, one per line: `{{"result": ...}}` for '
                f"each message ({what}). When the stream fails after its first message, a last line "
                '`{"error": ...}` holds the `google.rpc.Status`; a failure before it is an ordinary HTTP error. '
                "The schema is that of one line.",
                "headers": headers,
                "content": {"application/x-ndjson": {"schema": line}},
            }
        return {"description": f"OK: {what}.", "headers": headers, "content": {"application/json": {"schema": schema}}}


def _response_headers() -> JsonObject:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in (REQUEST_ID_HEADER, TRACE_ID_HEADER)}


# ---------------------------------------------------------------------------------------------------------------
# The document

_DESCRIPTION = """\
The REST/JSON side of the GreenMesh gateway: every call is transcoded to the gRPC method named in its
description, so the two APIs carry the same messages.

**JSON.** Messages follow the proto3 JSON mapping: lowerCamelCase property names (the proto field names are
accepted too), 64-bit integers as strings, enums by value name, `google.protobuf.Timestamp` as RFC 3339, bytes
as base64. Responses print every scalar, enum, repeated and map field, even at its default; unset message
fields and unset `optional` fields are left out. Unknown fields in a request are an error.

**Path, query and body.** A field named in the path template comes from the path; with a body of `*` every
other field comes from the JSON body; otherwise the body (when there is one) is the named field and the
remaining fields are query parameters (by JSON or proto name), a nested field as `outer.inner`, a repeated
one by repeating the parameter. A query parameter that names no such field is an error.

**Deadlines.** `Grpc-Timeout` (`5S`, `300m`) sets the call's deadline, capped by the gateway; without it the
gateway's default applies (longer for streams).

**Credentials.** An API key issued by the registry, as `Authorization: Bearer <key_id>.<secret>` or in
`X-Api-Key`. Without one a call is anonymous: the public queries (such as `GET /v1/outlets:nearest`) allow it,
the services refuse the rest. Calls are rate-limited per key (per client address when anonymous).

**Errors.** A `google.rpc.Status` (`code`, `message`, `details`), with the HTTP status of the gRPC code
(grpc-gateway's table): {status_table}. A path no template matches is 404, a known path with another method
405 (with `Allow`).
"""


def _status_table() -> str:
    by_status: dict[int, list[str]] = {}
    for code, status in HTTP_STATUS.items():
        if status != 200:
            by_status.setdefault(status, []).append(code.name)
    return ", ".join(f"{'/'.join(codes)} {status}" for status, codes in sorted(by_status.items()))


def _components(schemas: _Schemas) -> JsonObject:
    status = schemas.status()

    def error(description: str, *extra: tuple[str, JsonObject]) -> JsonObject:
        headers = _response_headers()
        headers.update(extra)
        return {"description": description, "headers": headers, "content": {"application/json": {"schema": status}}}

    return {
        "responses": {
            "Error": error("An error: the gRPC status of the failed call (see the API description for HTTP codes)."),
            "Unauthenticated": error(
                "UNAUTHENTICATED: the API key is unknown, revoked or malformed.",
                (
                    "WWW-Authenticate",
                    {"description": 'The scheme: `Bearer realm="greenmesh"`.', "schema": {"type": "string"}},
                ),
            ),
            "PermissionDenied": error("PERMISSION_DENIED: the caller may not do this."),
            "RateLimited": error(
                "RESOURCE_EXHAUSTED: over the rate limit of the key (or of the client address, when anonymous). "
                "The details include a `google.rpc.RetryInfo`.",
                (
                    "Retry-After",
                    {"description": "Seconds to wait before calling again.", "schema": {"type": "integer"}},
                ),
            ),
        },
        "parameters": {
            REQUEST_ID_HEADER: {
                "name": REQUEST_ID_HEADER,
                "in": "header",
                "required": False,
                "description": "The client's id of this call (1-128 of `A-Z a-z 0-9 . _ : -`), passed to the "
                "services and logged; the gateway makes one when it is missing or malformed.",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
            },
            TIMEOUT_HEADER: {
                "name": TIMEOUT_HEADER,
                "in": "header",
                "required": False,
                "description": "The call's deadline: up to 8 digits and a unit (`H`, `M`, `S`, `m` ms, `u` µs, "
                "`n` ns), e.g. `5S`; capped by the gateway.",
                "schema": {"type": "string", "pattern": "^[0-9]{1,8}[HMSmun]$"},
            },
        },
        "headers": {
            REQUEST_ID_HEADER: {
                "description": "The id of this call: the client's `X-Request-Id`, or the one the gateway made.",
                "schema": {"type": "string"},
            },
            TRACE_ID_HEADER: {
                "description": "The OpenTelemetry trace id of this call (32 hex digits), to find it in the traces.",
                "schema": {"type": "string"},
            },
        },
        "securitySchemes": {
            BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "<key_id>.<secret>",
                "description": "An API key issued by the registry (`IssueCredential`): `Authorization: Bearer "
                "<key_id>.<secret>`.",
            },
            API_KEY_SCHEME: {
                "type": "apiKey",
                "in": "header",
                "name": "X-Api-Key",
                "description": "The same API key (`<key_id>.<secret>`) in the `X-Api-Key` header.",
            },
        },
    }


def build_openapi(
    bindings: Sequence[Binding],
    *,
    title: str,
    version: str,
    server_url: str | None = None,
    comments: ProtoComments | None = None,
) -> JsonObject:
    """The OpenAPI 3.1 document of these HTTP bindings.

    `comments` default to those of the descriptor set in gen/descriptors. The result is plain JSON data
    (dicts, lists, strings, numbers, booleans), with paths and schemas in sorted order."""
    comments = ProtoComments.load() if comments is None else comments
    schemas = _Schemas(comments)
    operations = _Operations(schemas)
    names = _path_names(bindings)
    operation_ids = _operation_ids(bindings)
    paths: dict[str, JsonObject] = {}
    services: dict[str, str] = {}
    for binding in bindings:
        method = binding.http_method.lower()
        if method not in HTTP_METHODS:
            raise ValueError(f"{binding.method.full_name}: OpenAPI has no operation for HTTP {binding.http_method}")
        key = _path_key(binding, names[id(binding)])
        item = paths.setdefault(key, {})
        if method in item:
            raise ValueError(f"{binding.method.full_name}: a second {binding.http_method} {key}")
        item[method] = operations.build(binding, operation_ids[id(binding)], names[id(binding)])
        service = binding.method.containing_service
        services[service.name] = comments.get(service.full_name)

    components = _components(schemas)
    document: JsonObject = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": _DESCRIPTION.format(status_table=_status_table()),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
    }
    if server_url is not None:
        document["servers"] = [{"url": server_url}]
    document["security"] = [{}, {BEARER_SCHEME: []}, {API_KEY_SCHEME: []}]
    document["tags"] = [
        {"name": name, **({"description": text} if text else {})} for name, text in sorted(services.items())
    ]
    document["paths"] = {
        key: {method: item[method] for method in HTTP_METHODS if method in item} for key, item in sorted(paths.items())
    }
    components["schemas"] = dict(sorted(schemas.components.items()))
    document["components"] = components
    return document


def greenmesh_openapi(*, version: str | None = None, server_url: str | None = None) -> JsonObject:
    """The document of the gateway's whole REST API (every front service's bindings)."""
    return build_openapi(
        load_bindings(),
        title=TITLE,
        version=metadata.version(DISTRIBUTION) if version is None else version,
        server_url=server_url,
    )


def render_json(document: Mapping[str, Any]) -> str:
    """The document as the snapshot and `GET /openapi.json` write it: indented, keys in the built order."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Serving


def openapi_routes(document: Mapping[str, Any]) -> list[Route]:
    """`GET /openapi.json` (the document) and `GET /docs` (Swagger UI on it), for the gateway's Starlette app.

    The JSON is rendered once here. The docs page asks for the document at the app's root path, so it works
    behind a proxy that mounts the gateway under a prefix (when the proxy sets `root_path`)."""
    body = render_json(document).encode()

    async def openapi_json(_request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return HTMLResponse(docs_html(f"{root}/openapi.json"))

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], name="openapi"),
        Route("/docs", docs, methods=["GET"], name="docs"),
    ]


__all__ = [
    "DESCRIPTOR_SET",
    "OPENAPI_VERSION",
    "ProtoComments",
    "build_openapi",
    "docs_html",
    "greenmesh_openapi",
    "openapi_routes",
    "render_json",
]
