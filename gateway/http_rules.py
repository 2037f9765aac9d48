"""The HTTP bindings of the mesh's RPCs, read from their `google.api.http` annotations.

Nothing here is written per method: each RPC's `HttpRule` (and its `additional_bindings`) is read from the
service descriptors, which are the same FileDescriptorProtos as `gen/descriptors/greenmesh.binpb`. The path
template grammar is the one `google/api/http.proto` documents:

    Template = "/" Segments [ Verb ] ;  Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;  Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

The REST transcoder routes with these bindings and the OpenAPI document is generated from them, so the two
cannot disagree.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor

from greenmesh.energy.v1 import energy_pb2
from greenmesh.flows.v1 import flows_pb2
from greenmesh.mesh.v1 import status_pb2
from greenmesh.registry.v1 import registry_pb2
from meshkit.config import Component

# The services behind the front door and who serves them (the gateway answers MeshStatusService itself).
# MeshProbeService is absent on purpose: every service serves its own, it is the operators' canary.
FRONT_SERVICES: tuple[tuple[ServiceDescriptor, Component], ...] = (
    (registry_pb2.DESCRIPTOR.services_by_name["RegistryService"], Component.REGISTRY),
    (flows_pb2.DESCRIPTOR.services_by_name["FlowService"], Component.FLOWS),
    (energy_pb2.DESCRIPTOR.services_by_name["EnergyService"], Component.ENERGY),
    (status_pb2.DESCRIPTOR.services_by_name["MeshStatusService"], Component.GATEWAY),
)

HTTP_METHODS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A path template that does not follow the grammar (a proto author's mistake, found at start-up)."""


@dataclass(frozen=True)
class Variable:
    """`{field.path=pattern}`: the path segments it captures fill a (possibly nested) request field."""

    field_path: str
    # The segments inside the variable: literals, "*" (one segment) or "**" (the rest of the path).
    pattern: tuple[str, ...] = ("*",)

    @property
    def multi_segment(self) -> bool:
        return len(self.pattern) > 1 or "**" in self.pattern


Segment = str | Variable


@dataclass(frozen=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]
    verb: str = ""

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(segment for segment in self.segments if isinstance(segment, Variable))

    @property
    def literal_count(self) -> int:
        return sum(1 for segment in self.segments if isinstance(segment, str) and segment not in ("*", "**"))

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        """Matches the raw (still percent-encoded) path; group `v<i>` holds the i-th variable."""
        parts: list[str] = []
        index = 0
        for segment in self.segments:
            if isinstance(segment, Variable):
                parts.append(f"(?P<v{index}>{'/'.join(_segment_regex(p) for p in segment.pattern)})")
                index += 1
            else:
                parts.append(_segment_regex(segment))
        verb = f":{re.escape(self.verb)}" if self.verb else ""
        return re.compile("/" + "/".join(parts) + verb + r"\Z")

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The variables' values, percent-decoded (a multi-segment variable keeps its reserved `%2F` as is,
        as http.proto asks), or None when the path does not fit."""
        found = self.regex.match(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, variable in enumerate(self.variables):
            raw = found.group(f"v{index}")
            values[variable.field_path] = _decode_multi(raw) if variable.multi_segment else unquote(raw)
        return values


def _segment_regex(segment: str) -> str:
    if segment == "*":
        return "[^/]+"
    if segment == "**":
        return ".+"
    return re.escape(segment)


def _decode_multi(raw: str) -> str:
    # Every escape but the slash's is decoded: a %2F inside a segment stays distinguishable from a separator.
    return "%2F".join(unquote(piece) for piece in re.split("%2[fF]", raw))


_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:=([^{}]+))?\}")


def parse_template(source: str) -> PathTemplate:
    if not source.startswith("/"):
        raise TemplateError(f"{source!r}: a template starts with /")
    body = source[1:]
    verb = ""
    # The verb is a ":LITERAL" after the last segment, outside any variable.
    last_slash = body.rfind("/")
    last_brace = body.rfind("}")
    colon = body.rfind(":")
    if colon > max(last_slash, last_brace):
        body, verb = body[:colon], body[colon + 1 :]
        if not verb:
            raise TemplateError(f"{source!r}: empty verb")
    segments: list[Segment] = []
    position = 0
    while position <= len(body):
        if body.startswith("{", position):
            found = _VARIABLE.match(body, position)
            if found is None:
                raise TemplateError(f"{source!r}: bad variable at {position + 1}")
            pattern = tuple(found.group(2).split("/")) if found.group(2) else ("*",)
            if any(not p or "{" in p for p in pattern):
                raise TemplateError(f"{source!r}: bad variable pattern {found.group(2)!r}")
            segments.append(Variable(found.group(1), pattern))
            position = found.end()
            if position < len(body) and body[position] != "/":
                raise TemplateError(f"{source!r}: a variable must be a whole segment")
            position += 1
            continue
        end = body.find("/", position)
        end = len(body) if end < 0 else end
        literal = body[position:end]
        if not literal or "{" in literal or "}" in literal:
            raise TemplateError(f"{source!r}: bad segment {literal!r}")
        segments.append(literal)
        position = end + 1
    if "**" in segments[:-1]:
        raise TemplateError(f"{source!r}: ** may only end a template")
    return PathTemplate(source=source, segments=tuple(segments), verb=verb)


@dataclass(frozen=True)
class Binding:
    """One HTTP route of one RPC."""

    method: MethodDescriptor
    component: Component
    http_method: str  # upper case: GET, POST, PATCH, PUT, DELETE
    template: PathTemplate
    # "" (no body: every field not bound by the path is a query parameter), "*" (the whole request) or a field.
    body: str
    # "" (the whole response) or the response field that is the HTTP body.
    response_body: str
    # False for the rule itself, True for its additional_bindings.
    additional: bool

    @property
    def grpc_path(self) -> str:
        """The method's gRPC path, `/package.Service/Method`."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(variable.field_path for variable in self.template.variables)

    def body_field(self) -> FieldDescriptor | None:
        if self.body in ("", "*"):
            return None
        return self.method.input_type.fields_by_name[self.body]


def _rule_bindings(
    method: MethodDescriptor, component: Component, rule: http_pb2.HttpRule, additional: bool
) -> Binding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise TemplateError(f"{method.full_name}: an HttpRule without a method")
    if pattern == "custom":
        http_method, source = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, source = pattern.upper(), getattr(rule, pattern)
    template = parse_template(source)
    binding = Binding(
        method=method,
        component=component,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        additional=additional,
    )
    _check_fields(binding)
    return binding


def _check_fields(binding: Binding) -> None:
    """Every field a rule names exists, so a typo in a proto fails at start-up, not on a client's request."""
    method = binding.method
    for field_path in binding.path_fields:
        resolve_field_path(method.input_type, field_path, where=f"{method.full_name} {binding.template.source}")
    if binding.body not in ("", "*") and binding.body not in method.input_type.fields_by_name:
        raise TemplateError(f"{method.full_name}: body field {binding.body!r} does not exist")
    if binding.response_body and binding.response_body not in method.output_type.fields_by_name:
        raise TemplateError(f"{method.full_name}: response_body field {binding.response_body!r} does not exist")


def resolve_field_path(message_type: object, field_path: str, *, where: str = "") -> list[FieldDescriptor]:
    """The descriptors along `a.b.c`; every step but the last must be a singular message field."""
    from google.protobuf.descriptor import Descriptor

    assert isinstance(message_type, Descriptor)
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message_type
    for name in field_path.split("."):
        if current is None or name not in current.fields_by_name:
            raise TemplateError(f"{where}: field {field_path!r} does not exist")
        field = current.fields_by_name[name]
        fields.append(field)
        current = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    for field in fields[:-1]:
        if _is_repeated(field):
            raise TemplateError(f"{where}: {field_path!r} goes through a repeated field")
    return fields


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def method_bindings(method: MethodDescriptor, component: Component) -> list[Binding]:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    bindings = [_rule_bindings(method, component, rule, additional=False)]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise TemplateError(f"{method.full_name}: additional_bindings may not nest")
        bindings.append(_rule_bindings(method, component, extra, additional=True))
    return bindings


def load_bindings(services: Iterable[tuple[ServiceDescriptor, Component]] = FRONT_SERVICES) -> list[Binding]:
    """Every HTTP route of the front services, most specific first (the order the router tries them)."""
    bindings = [
        binding
        for service, component in services
        for method in service.methods
        for binding in method_bindings(method, component)
    ]
    return sorted(bindings, key=route_priority)


def route_priority(binding: Binding) -> tuple[int, int, int]:
    """Verbs before plain paths, more literal segments before fewer, `**` last: `/v1/x/{id}:cancel` wins over
    `/v1/x/{id}` for the same request path."""
    template = binding.template
    has_rest = any((isinstance(s, Variable) and "**" in s.pattern) or s == "**" for s in template.segments)
    return (0 if template.verb else 1, -template.literal_count, 1 if has_rest else 0)


def front_methods(
    services: Sequence[tuple[ServiceDescriptor, Component]] = FRONT_SERVICES,
) -> dict[str, tuple[MethodDescriptor, Component]]:
    """Every RPC of the front services by gRPC path (`/pkg.Service/Method`), annotated or not: what the gRPC
    pass-through forwards."""
    return {
        f"/{service.full_name}/{method.name}": (method, component)
        for service, component in services
        for method in service.methods
    }
