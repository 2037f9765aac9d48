"""REST/JSON ↔ gRPC transcoding: pure conversions, no I/O (the HTTP side is `gateway.rest`).

The contract is grpc-gateway v2's and Envoy's gRPC-JSON transcoder's, so either could replace this gateway
without clients noticing. The choices, where those two (or the proto3 JSON mapping) leave room:

Requests
    * Path variables, then query parameters, are converted to the type of the field they name: strings as
      they are, integers in decimal (int64 too), floats (also `NaN`, `Infinity`), booleans as Go's
      `strconv.ParseBool` reads them (`true`/`false`/`1`/`0`/`t`/`f`…), enums by value name or number, bytes
      as base64 (standard or URL-safe, padding optional), the wrapper types as their inner value, `Timestamp`
      as RFC 3339, `Duration` as `"1.5s"`, `FieldMask` as comma-separated paths (proto or lowerCamelCase).
    * A query parameter names a field by its proto name or its JSON name, nested with dots (`a.b=1`); a
      repeated field takes the parameter repeated (`?x=1&x=2`; values are never split on commas); a
      singular field given twice is an error. With `body: "*"` every field not bound by the path comes from
      the body, so there are no query parameters (google/api/http.proto).
    * Query parameters are strict, as Envoy's `ignore_unknown_query_parameters: false` default: a parameter
      that names no field, a field bound by the path or by the body, a message or a map is INVALID_ARGUMENT
      with a `google.rpc.BadRequest` field violation naming the parameter. (grpc-gateway ignores them.)
    * The body is parsed with `json_format.ParseDict`, which accepts lowerCamelCase and proto field names.
      **Unknown JSON fields are rejected** (INVALID_ARGUMENT with a field violation naming the field, e.g.
      `participant.nickName`), as Envoy does; grpc-gateway v2 discards them by default. A typo in a field
      name then fails loudly instead of silently not updating anything. The same field given under both of
      its names, a value of the wrong JSON type, and malformed JSON are INVALID_ARGUMENT too; an empty body is
      an empty message (grpc-gateway tolerates it the same way).
    * The body is read first, the path variables override it, then the query parameters are applied.
    * PATCH with `body: <field>` and exactly one `google.protobuf.FieldMask` field in the request: when the
      client did not set the mask (e.g. `?update_mask=…`), it is filled with the paths of the JSON body's keys
      (proto names, nested objects giving dotted paths, repeated and map fields ending a path) — grpc-gateway's
      PATCH feature (`docs/docs/mapping/patch_feature.md`).

Responses
    * The proto3 JSON mapping: lowerCamelCase names, 64-bit integers as strings, enums by name, timestamps in
      RFC 3339, and every field without presence printed even when it holds its default (scalars, enums,
      repeated and map fields: `always_print_fields_with_no_presence=True`, Envoy's
      `always_print_primitive_fields`). Unset message fields are left out (grpc-gateway v2's `EmitUnpopulated`
      would print them as `null`). `response_body` selects one field of the response as the whole body.
    * Errors: the HTTP status of grpc-gateway's `HTTPStatusFromCode` table (`HTTP_STATUS`), and the body the
      `google.rpc.Status` in JSON: `code` as the number, `message`, and `details` with `@type` (decoded from
      the backend's `grpc-status-details-bin`). The google.rpc detail types are imported here so that their
      `@type` resolves in the default descriptor pool.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import any_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.http_rules import Binding

# Importing error_details_pb2 puts every google.rpc detail type in the default pool, so `@type` renders.

# The JSON printing options of every response (see the module docstring).
JSON_PRINT_OPTIONS: Mapping[str, bool] = {
    "always_print_fields_with_no_presence": True,
    "preserving_proto_field_name": False,
    "use_integers_for_enums": False,
}

# grpc-gateway v2 `runtime.HTTPStatusFromCode`.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_CODE_BY_NUMBER: Mapping[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_FIELD_MASK = "google.protobuf.FieldMask"

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
INT_RANGES: Mapping[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_DECIMAL = re.compile(r"[+-]?[0-9]+")
# The deepest JSON body accepted, as deep as protobuf's own JSON parser goes (json_format's max_recursion_depth).
MAX_JSON_DEPTH = 100
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# ---------------------------------------------------------------------------------------------------------------
# Errors


@dataclass
class TranscodeError(Exception):
    """The HTTP request cannot become the gRPC request: INVALID_ARGUMENT with field violations."""

    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_status(self) -> status_pb2.Status:
        details: list[Message] = []
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=name, description=description)
                        for name, description in self.violations
                    ]
                )
            )
        return make_status(self.code, self.message, details)


def _violation(name: str, description: str) -> TranscodeError:
    return TranscodeError(f"invalid request: {name}: {description}", [(name, description)])


def make_status(code: grpc.StatusCode, message: str, details: Iterable[Message] = ()) -> status_pb2.Status:
    """A `google.rpc.Status` with the detail messages packed into `Any`s."""
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The backend's rich status (`grpc-status-details-bin`), or one built from the code and message."""
    try:
        rich = rpc_status.from_call(error)
    except ValueError:
        # The details disagree with the call's code or message: keep the call's, and the detail messages.
        rich = None
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                rich = status_pb2.Status.FromString(value)
                rich.code = error.code().value[0]
                rich.message = error.details() or ""
    if rich is not None:
        return rich
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)


def http_status(code: grpc.StatusCode | int) -> int:
    """The HTTP status of a gRPC code (grpc-gateway's table; an unknown code is 500)."""
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return HTTP_STATUS.get(code, 500)


def status_to_json(status: status_pb2.Status) -> dict[str, Any]:
    """`{"code": 5, "message": "...", "details": [{"@type": "type.googleapis.com/google.rpc.ResourceInfo", ...}]}`."""
    try:
        return message_to_json(status)
    except (TypeError, KeyError, json_format.Error):
        # A detail type the gateway does not know: keep it, opaque, rather than lose the whole error.
        return {
            "code": status.code,
            "message": status.message,
            "details": [_detail_json(detail) for detail in status.details],
        }


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return message_to_json(detail)
    except (TypeError, KeyError, json_format.Error):
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode("ascii")}


def detail_messages(status: status_pb2.Status, kind: type[Message]) -> list[Message]:
    """The details of one type (e.g. `error_details_pb2.RetryInfo`) in a status."""
    found: list[Message] = []
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            found.append(message)
    return found


# ---------------------------------------------------------------------------------------------------------------
# Responses


def message_to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=JSON_PRINT_OPTIONS["always_print_fields_with_no_presence"],
        preserving_proto_field_name=JSON_PRINT_OPTIONS["preserving_proto_field_name"],
        use_integers_for_enums=JSON_PRINT_OPTIONS["use_integers_for_enums"],
    )


def response_to_json(binding: Binding, message: Message) -> Any:
    """The HTTP body of a response: the whole message, or its `response_body` field."""
    if not binding.response_body:
        return message_to_json(message)
    selected = message.DESCRIPTOR.fields_by_name[binding.response_body]
    if selected.message_type is not None and not selected.is_repeated:
        return message_to_json(getattr(message, selected.name))
    return message_to_json(message).get(selected.json_name)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, non-ASCII as is (what protojson writes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Requests


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def build_request(
    binding: Binding,
    *,
    path_values: Mapping[str, str],
    query: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> Message:
    """The gRPC request of one HTTP request: the body (per `binding.body`), the path variables (as
    `PathTemplate.match` returns them, decoded) and the query parameters (decoded pairs, in order).
    Raises TranscodeError."""
    request = message_class(binding.method.input_type)()
    document = _body_document(binding, body)
    if document is not None:
        _parse_body(binding, document, request)
    for field_path, text in path_values.items():
        _assign(request, field_path.split("."), [text], name=field_path)
    _apply_query(binding, request, query)
    mask = patch_mask_field(binding)
    if mask is not None and document is not None:
        current = getattr(request, mask.name)
        if not request.HasField(mask.name) or not current.paths:
            body_field = binding.body_field()
            assert body_field is not None and body_field.message_type is not None
            paths = mask_paths_from_json(body_field.message_type, document)
            if paths:
                current.paths.extend(paths)
    return request


def _body_document(binding: Binding, body: bytes) -> Any | None:
    """The parsed JSON body, or None when the binding takes no body or the body is empty."""
    if binding.body == "" or not body.strip():
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise TranscodeError(f"the request body is not UTF-8: {error}") from None
    if json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise TranscodeError(f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise TranscodeError(f"the request body is not valid JSON: {error}") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(document):
        raise TranscodeError(
            "the request body is not valid JSON text: a \\uD800-\\uDFFF escape without its pair is no Unicode character"
        )
    return document


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether arrays and objects nest deeper than `limit` anywhere in `text` (brackets in strings do not count).
    Measured on the text before it is parsed, so unbalanced text is measured too: Python's JSON parser recurses
    once per level and would exhaust the stack (a RecursionError, not a ValueError) on thousands of levels."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _has_lone_surrogate(document: Any) -> bool:
    """A string (or key) of the parsed document holds half a surrogate pair, which no UTF-8 can encode."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_body(binding: Binding, document: Any, request: Message) -> None:
    descriptor = binding.method.input_type
    if binding.body == "*":
        if not isinstance(document, dict):
            raise TranscodeError("the request body must be a JSON object")
        _check_object(descriptor, document, "")
        wrapped: dict[str, Any] = document
    else:
        body_field = descriptor.fields_by_name[binding.body]
        _check_value(body_field, document, body_field.name)
        wrapped = {body_field.name: document}
    try:
        json_format.ParseDict(wrapped, request, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        located = _locate_bad_value(descriptor, wrapped, "" if binding.body == "*" else None)
        if located is not None:
            raise _violation(*located) from None
        raise TranscodeError(f"invalid request body: {_clean(str(error))}") from None


def _descriptor(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def _message_type(item: FieldDescriptor) -> Descriptor:
    assert item.message_type is not None, item.full_name
    return item.message_type


def _enum_name(item: FieldDescriptor) -> str:
    return item.enum_type.full_name if item.enum_type is not None else "the enum"


def _fields_by_any_name(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    found: dict[str, FieldDescriptor] = {}
    for item in descriptor.fields:
        found[item.name] = item
        found[item.json_name] = item
    return found


def _is_wkt(descriptor: Descriptor | None) -> bool:
    return descriptor is not None and descriptor.full_name.startswith("google.protobuf.")


def _is_map(item: FieldDescriptor) -> bool:
    return item.message_type is not None and bool(item.message_type.GetOptions().map_entry)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_object(descriptor: Descriptor, document: dict[str, Any], path: str) -> None:
    """Unknown keys, a field given under both of its names, and objects where arrays or objects belong —
    reported with the field's path, before ParseDict (whose messages name no path)."""
    known = _fields_by_any_name(descriptor)
    seen: dict[str, str] = {}
    for key, value in document.items():
        item = known.get(key)
        if item is None:
            if key.startswith("[") and key.endswith("]"):
                continue  # an extension: ParseDict decides
            raise _violation(_join(path, key), "unknown field")
        if item.name in seen:
            raise _violation(_join(path, key), f"the same field as {seen[item.name]!r}")
        seen[item.name] = key
        _check_value(item, value, _join(path, key))


def _check_value(item: FieldDescriptor, value: Any, path: str) -> None:
    if value is None:
        return
    if _is_map(item):
        if not isinstance(value, dict):
            raise _violation(path, "expected a JSON object (a map)")
        entry_value = _message_type(item).fields_by_name["value"]
        if entry_value.message_type is not None and not _is_wkt(entry_value.message_type):
            for key, entry in value.items():
                if entry is not None:
                    _check_message(entry_value.message_type, entry, f"{path}[{key}]")
        return
    if item.is_repeated:
        if not isinstance(value, list):
            raise _violation(path, "expected a JSON array")
        if item.message_type is not None and not _is_wkt(item.message_type):
            for index, element in enumerate(value):
                _check_message(item.message_type, element, f"{path}[{index}]")
        return
    if item.message_type is not None and not _is_wkt(item.message_type):
        _check_message(item.message_type, value, path)


def _check_message(descriptor: Descriptor, value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise _violation(path, "expected a JSON object")
    _check_object(descriptor, value, path)


def _locate_bad_value(descriptor: Descriptor, document: dict[str, Any], path: str | None) -> tuple[str, str] | None:
    """Which value ParseDict refused: each scalar, enum or well-known value is parsed alone in its message.
    `path` None: the top level is the body-field wrapper, whose key is the body field's name."""
    known = _fields_by_any_name(descriptor)
    container = message_class(descriptor)
    for key, value in document.items():
        item = known.get(key)
        if item is None or value is None:
            continue
        where = key if path is None else _join(path, key)
        found: tuple[str, str] | None = None
        if _is_map(item) and isinstance(value, dict):
            entry = _message_type(item).fields_by_name["value"]
            for map_key, element in value.items():
                if _is_plain_message(entry) and isinstance(element, dict):
                    found = _locate_bad_value(_message_type(entry), element, f"{where}[{map_key}]")
                else:
                    found = _try_alone(container, key, {map_key: element}, f"{where}[{map_key}]", entry, element)
                if found:
                    return found
        elif item.is_repeated and isinstance(value, list):
            for index, element in enumerate(value):
                if _is_plain_message(item) and isinstance(element, dict):
                    found = _locate_bad_value(_message_type(item), element, f"{where}[{index}]")
                else:
                    found = _try_alone(container, key, [element], f"{where}[{index}]", item, element)
                if found:
                    return found
        elif _is_plain_message(item) and isinstance(value, dict):
            found = _locate_bad_value(_message_type(item), value, where)
        else:
            found = _try_alone(container, key, value, where, item, value)
        if found:
            return found
    return None


def _is_plain_message(item: FieldDescriptor) -> bool:
    """A message field whose JSON is an object of its fields (not a well-known type)."""
    return item.message_type is not None and not _is_wkt(item.message_type)


def _try_alone(
    container: type[Message], key: str, value: Any, where: str, item: FieldDescriptor, shown_value: Any
) -> tuple[str, str] | None:
    try:
        json_format.ParseDict({key: value}, container(), ignore_unknown_fields=False)
    except json_format.ParseError as error:
        detail = _clean(str(error)) if item.message_type is not None else ""
        shown = json.dumps(shown_value, ensure_ascii=False)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return where, f"{_expected(item)}, got {shown}" + (f" ({detail})" if detail else "")
    return None


def _expected(item: FieldDescriptor) -> str:
    message_type = item.message_type
    if message_type is not None:
        name = message_type.full_name
        if name == _TIMESTAMP:
            return 'expected an RFC 3339 timestamp such as "2026-05-01T08:00:00+08:00"'
        if name == _DURATION:
            return 'expected a duration such as "1.5s"'
        if name == _FIELD_MASK:
            return "expected comma-separated field paths"
        if name in _WRAPPERS:
            return _expected(message_type.fields_by_name["value"])
        return f"expected a {name} in JSON"
    kind = item.type
    if kind == FieldDescriptor.TYPE_STRING:
        return "expected a string"
    if kind == FieldDescriptor.TYPE_BYTES:
        return "expected base64 in a string"
    if kind == FieldDescriptor.TYPE_BOOL:
        return "expected true or false"
    if kind == FieldDescriptor.TYPE_ENUM:
        return f"expected a value name of {_enum_name(item)} (or its number)"
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return "expected a number"
    return "expected an integer (a number, or a string of digits)"


def _clean(text: str) -> str:
    """ParseDict's message without its `Failed to parse x field:` chain and ` at Type.path` suffix."""
    text = text.split("\n", 1)[0]
    while True:
        stripped = re.sub(r"^Failed to parse \S+ field: ", "", text)
        if stripped == text:
            break
        text = stripped
    text = re.sub(r' at "?[\w.\[\]]+"?\.*$', "", text)
    return text.rstrip(".")


# -- path variables and query parameters ------------------------------------------------------------------


def _apply_query(binding: Binding, request: Message, query: Sequence[tuple[str, str]]) -> None:
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    if not grouped:
        return
    if binding.body == "*":
        name = next(iter(grouped))
        raise _violation(name, "this method takes its request from the body; query parameters are not accepted")
    bound = [path.split(".") for path in binding.path_fields]
    if binding.body:
        bound.append([binding.body])
    for key, values in grouped.items():
        proto_path = _proto_path(_descriptor(request), key)
        for prefix in bound:
            if proto_path[: len(prefix)] == prefix:
                where = "the body" if binding.body and prefix == [binding.body] else "the path"
                raise _violation(key, f"this field is bound by {where}, not a query parameter")
        _assign(request, proto_path, values, name=key)


def _proto_path(descriptor: Descriptor, dotted: str) -> list[str]:
    """`batteryRef.value` → ["battery_ref", "value"]; an unknown name is a violation naming the parameter."""
    parts = dotted.split(".")
    names: list[str] = []
    current: Descriptor | None = descriptor
    for index, part in enumerate(parts):
        item = _fields_by_any_name(current).get(part) if current is not None else None
        if item is None:
            raise _violation(dotted, "unknown field")
        names.append(item.name)
        is_last = index == len(parts) - 1
        if not is_last and (item.message_type is None or item.is_repeated or _is_map(item)):
            raise _violation(dotted, f"{'.'.join(parts[: index + 1])} is not a singular message field")
        current = item.message_type
    return names


def _assign(message: Message, path: Sequence[str], values: Sequence[str], *, name: str) -> None:
    """Set the field at `path` (proto or JSON names) from text values (path variables, query parameters)."""
    target = message
    for part in path[:-1]:
        item = _fields_by_any_name(_descriptor(target)).get(part)
        if item is None or item.message_type is None or item.is_repeated:
            raise _violation(name, "not a field of the request")
        _check_oneof(target, item, name)
        target = getattr(target, item.name)
    item = _fields_by_any_name(_descriptor(target)).get(path[-1])
    if item is None:
        raise _violation(name, "unknown field")
    if _is_map(item):
        raise _violation(name, "a map field cannot be set from the URL")
    message_type = item.message_type
    if message_type is not None and not _is_text_message(message_type):
        raise _violation(name, "a message field cannot be set from the URL; set its fields (name.field=…)")
    if not item.is_repeated and len(values) > 1:
        raise _violation(name, "given more than once, but the field is not repeated")
    _check_oneof(target, item, name)
    try:
        if item.is_repeated:
            container = getattr(target, item.name)
            for text in values:
                if message_type is not None:
                    _merge_text_message(container.add(), text)
                else:
                    container.append(scalar_from_text(item, text))
        elif message_type is not None:
            _merge_text_message(getattr(target, item.name), values[0])
        else:
            setattr(target, item.name, scalar_from_text(item, values[0]))
    except ValueError as error:
        raise _violation(name, str(error)) from None


def _check_oneof(target: Message, item: FieldDescriptor, name: str) -> None:
    oneof = item.containing_oneof
    if oneof is None:
        return
    chosen = target.WhichOneof(oneof.name)
    if chosen is not None and chosen != item.name:
        raise _violation(name, f"{chosen!r} of the same oneof {oneof.name!r} is already set")


def _is_text_message(descriptor: Descriptor) -> bool:
    return descriptor.full_name in _WRAPPERS or descriptor.full_name in (_TIMESTAMP, _DURATION, _FIELD_MASK)


def _merge_text_message(target: Message, text: str) -> None:
    """Set a well-known message from its JSON string form (through the generated class, then bytes: the
    target may come from another descriptor pool)."""
    name = target.DESCRIPTOR.full_name
    parsed: Message
    if name == _TIMESTAMP:
        stamp = Timestamp()
        try:
            stamp.FromJsonString(text)
        except ValueError:
            raise ValueError(f'expected an RFC 3339 timestamp such as "2026-05-01T08:00:00Z", got {text!r}') from None
        parsed = stamp
    elif name == _DURATION:
        duration = Duration()
        try:
            duration.FromJsonString(text)
        except ValueError:
            raise ValueError(f'expected a duration such as "1.5s", got {text!r}') from None
        parsed = duration
    elif name == _FIELD_MASK:
        parsed = FieldMask(paths=[_snake_path(path.strip()) for path in text.split(",") if path.strip()])
    else:  # a wrapper
        inner = _descriptor(target).fields_by_name["value"]
        setattr(target, "value", scalar_from_text(inner, text))  # noqa: B010 (the wrappers' one field)
        return
    target.MergeFromString(parsed.SerializeToString())


def _snake_path(path: str) -> str:
    """A FieldMask path in proto names (`storageLimits.maxStockKg` → `storage_limits.max_stock_kg`)."""
    return ".".join(
        part if "_" in part else re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), part) for part in path.split(".")
    )


def scalar_from_text(item: FieldDescriptor, text: str) -> Any:
    """A path variable's or query parameter's text as the value of a scalar or enum field.
    Raises ValueError with a description for a field violation."""
    kind = item.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BOOL:
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = item.enum_type
        assert enum is not None
        by_name = enum.values_by_name.get(text)
        if by_name is not None:
            return by_name.number
        if _DECIMAL.fullmatch(text) and -(2**31) <= int(text) < 2**31:
            return int(text)
        raise ValueError(f"expected a value name of {enum.full_name} (or its number), got {text!r}")
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if kind == FieldDescriptor.TYPE_FLOAT and math.isfinite(number) and abs(number) > 3.4028234663852886e38:
            raise ValueError(f"{text} is out of the range of a float")
        return number
    if kind == FieldDescriptor.TYPE_BYTES:
        return _base64(text)
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        if not _DECIMAL.fullmatch(text):
            raise ValueError(f"expected an integer, got {text!r}")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{text} is out of the range of the field ({low} to {high})")
        return value
    raise ValueError("this field cannot be set from the URL")


def _base64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded.encode("ascii"))
        return base64.b64decode(padded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError(f"expected base64, got {text!r}") from None


# -- PATCH: the FieldMask from the body ------------------------------------------------------------------


def patch_mask_field(binding: Binding) -> FieldDescriptor | None:
    """The request's FieldMask that a PATCH fills from the body's keys: only for `body: <field>` (a message)
    and a request with exactly one singular FieldMask field."""
    if binding.http_method != "PATCH" or binding.body in ("", "*"):
        return None
    body_field = binding.body_field()
    if body_field is None or body_field.message_type is None or body_field.is_repeated:
        return None
    masks = [
        item
        for item in binding.method.input_type.fields
        if item.message_type is not None and item.message_type.full_name == _FIELD_MASK and not item.is_repeated
    ]
    return masks[0] if len(masks) == 1 else None


def mask_paths_from_json(descriptor: Descriptor, document: Any) -> list[str]:
    """The FieldMask paths of a JSON object (grpc-gateway's `FieldMaskFromRequestBody`): each key in proto
    names; an object for a (non well-known) message field recurses into dotted paths; a repeated or map field,
    a scalar, a well-known type or null ends a path."""
    paths: list[str] = []
    if isinstance(document, dict):
        _collect_mask_paths(descriptor, document, "", paths)
    return paths


def _collect_mask_paths(descriptor: Descriptor, document: dict[str, Any], prefix: str, paths: list[str]) -> None:
    known = _fields_by_any_name(descriptor)
    for key, value in document.items():
        item = known.get(key)
        if item is None:
            continue
        path = _join(prefix, item.name)
        message_type = item.message_type
        if (
            isinstance(value, dict)
            and message_type is not None
            and not item.is_repeated
            and not _is_map(item)
            and not _is_wkt(message_type)
        ):
            _collect_mask_paths(message_type, value, path, paths)
        elif path not in paths:
            paths.append(path)


# -- headers ---------------------------------------------------------------------------------------------------

_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS: Mapping[str, float] = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(text: str) -> float:
    """The `Grpc-Timeout` header (`5S`, `300m`, `1H`: at most 8 digits and a unit) in seconds."""
    found = _GRPC_TIMEOUT.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"malformed Grpc-Timeout {text!r}: expected up to 8 digits and a unit (H, M, S, m, u, n)")
    return int(found.group(1)) * _TIMEOUT_UNITS[found.group(2)]
