"""Hostile and broken input against the real mesh: a clear error, never INTERNAL, never a change in stored data.

How hypothesis drives a real mesh. Starting a mesh (nats-server, registry, flows, energy, gateway) takes a few
seconds, so it must not be started per example. pytest-asyncio (1.x) runs an `async def` test decorated with
`@given` as hypothesis' inner test, each example on the test's own event loop (`runner.run`), while the
function-scoped `mesh` fixture is set up once for the whole test: every example of a property runs against the
same mesh, which keeps running between examples. The examples are drawn with `st.data()` from strategies derived
from the descriptors (`tests/gateway/hostile.py`), so hypothesis still shrinks a failure to a minimal request and
prints it. The fixture is function-scoped on purpose (hypothesis' `function_scoped_fixture` health check is
suppressed): nothing an example does is undone, which is the point: a refused request must leave the stored
data as it found it, and each example checks exactly that with a snapshot of every service's database taken
before and after it (`Stored`). Accepted requests (a random request is sometimes valid) may change data; the
snapshot is then simply taken again.

Properties (every annotated RPC of the three services, from `gateway.http_rules.load_bindings()`, and every RPC
through the gRPC door, from `front_methods()`):

1. REST: the status is 2xx or 4xx, never 5xx; a 4xx body is a `google.rpc.Status` whose code agrees with the
   HTTP status and is neither UNKNOWN nor INTERNAL; a refused request changes no stored row.
2. gRPC, through the gateway with any credential and directly to the owning service with a signed (or forged)
   identity: random messages built from the input descriptors, or bytes that are not protobuf: the status is
   never UNKNOWN, INTERNAL, DATA_LOSS or UNAVAILABLE, undecodable bytes are INVALID_ARGUMENT, and a refused call
   changes no stored row.
3. Deterministic cases the random search would rarely reach: 10,000-level nesting, lone surrogates, forged and
   replayed page tokens (random, base64 garbage, edited, issued for other filters, another caller or another
   RPC, and forged with a correct fingerprint around an injection string).
4. The limits, each with the behaviour README documents (the limits section of RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from gateway import transcode
from gateway.http_rules import Binding, front_methods, load_bindings
from gateway.transcode import http_status, json_depth_exceeds
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit import bounded_status, grpc_options
from meshkit.caller import Caller
from meshkit.config import Component
from meshkit.errors import InvalidArgument, error_reason, field_violations
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.paging import decode_integer_token, encode_token
from meshkit.server import ServiceRuntime
from services.flows.directory_view import DirectoryView
from tests.conftest import eventually
from tests.energy.conftest import site
from tests.flows.conftest import event as flow_event
from tests.flows.conftest import ts
from tests.flows.test_flows_reporting import at
from tests.gateway import hostile
from tests.gateway.conftest import Mesh, issue_key
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM, XUANWU

# A generous rate for the properties (the limits have their own settings below), so no example is a 429.
UNLIMITED = {
    "gateway_rate_per_second": 1e6,
    "gateway_rate_burst": 1e6,
    "gateway_anonymous_rate_per_second": 1e6,
    "gateway_anonymous_rate_burst": 1e6,
}
# Examples per property (the page-token property a third of it); a soak run sets more, e.g.
# GREENMESH_HOSTILE_EXAMPLES=5000 (about a minute per property).
EXAMPLES = int(os.environ.get("GREENMESH_HOSTILE_EXAMPLES", "500"))
NEVER = {code_pb2.UNKNOWN, code_pb2.INTERNAL, code_pb2.DATA_LOSS, code_pb2.UNAVAILABLE}
NEVER_GRPC = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
BINDINGS = load_bindings()
PRODUCED = ts(dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
METHODS = front_methods()


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    return dict(UNLIMITED)


# -- stored data -------------------------------------------------------------------------------------------------

# Rows that change without a request: the relay's bookkeeping, the consumers' receipts, the probe.
_IGNORED_TABLES = {"alembic_version", "inbox_message", "probe_emission", "probe_receipt", "sqlite_sequence"}
_OUTBOX_KEEP = "seq, event_id, subject, event_type, payload"


@dataclass(frozen=True)
class Stored:
    """Every row of every service's database (SQLite files), table by table."""

    tables: dict[str, tuple[tuple[Any, ...], ...]]

    @staticmethod
    def of(runtimes: Sequence[ServiceRuntime]) -> Stored:
        tables: dict[str, tuple[tuple[Any, ...], ...]] = {}
        for runtime in runtimes:
            path = make_url(str(runtime.settings.database_url)).database
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                for name in sorted(set(names) - _IGNORED_TABLES):
                    columns = _OUTBOX_KEEP if name == "outbox_event" else "*"
                    rows = connection.execute(f'SELECT {columns} FROM "{name}"').fetchall()
                    tables[f"{runtime.component.value}.{name}"] = tuple(sorted(rows, key=repr))
            finally:
                connection.close()
        return Stored(tables)

    def changes(self, after: Stored) -> list[str]:
        return [
            f"{name}: {len(rows)} -> {len(after.tables.get(name, ()))} rows"
            for name, rows in self.tables.items()
            if after.tables.get(name) != rows
        ]


def services(mesh: Mesh) -> list[ServiceRuntime]:
    return [mesh.registry.runtime, mesh.flows.runtime, mesh.energy]


def real_ids(mesh: Mesh) -> list[str]:
    """Ids that exist, so that path variables sometimes name real records."""
    n = mesh.network
    parties = [n.producer, n.dealer, n.outlet, n.storage, n.sorter, n.recycler, n.unlisted_outlet]
    return [*(p.id for p in parties), *(p.site for p in parties), n.model_id, n.producer.participant.credit_code]


def hostile_for(mesh: Mesh) -> hostile.Hostile:
    return hostile.Hostile(ids=tuple(real_ids(mesh)), keys=tuple(all_keys(mesh)))


def all_keys(mesh: Mesh) -> list[str]:
    k = mesh.keys
    return [k.platform, k.regulator, k.other_regulator, k.producer, k.enterprise_a, k.enterprise_b]


# -- checks --------------------------------------------------------------------------------------------------


def check_rest_answer(response: httpx.Response, what: str) -> None:
    """2xx, or 4xx with a google.rpc.Status body of a code that is the client's fault (never 5xx)."""
    status = response.status_code
    assert status < 500, f"{what}\n-> {status} {response.text[:500]}"
    if status < 400:
        return
    if not response.request.url.raw_path.startswith(b"/v1"):
        # The client resolved `..` out of the API (`/v1/meters/../../etc`): the app's own 404, not the API's.
        assert status == 404, f"{what}\n-> {status} {response.text[:500]}"
        return
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("code"), int) and "message" in body, f"{what}: {body}"
    assert body["code"] not in NEVER, f"{what}\n-> {status} {body}"
    # The status follows the code (grpc-gateway's table), but for the door's own 405, 413 and 415.
    expected = {405: code_pb2.UNIMPLEMENTED, 413: code_pb2.RESOURCE_EXHAUSTED, 415: code_pb2.INVALID_ARGUMENT}
    if status in expected:
        assert body["code"] == expected[status], f"{what}: {status} {body}"
    else:
        assert http_status(body["code"]) == status, f"{what}: {status} {body}"


async def send(mesh: Mesh, case: hostile.RestCase) -> httpx.Response:
    return await mesh.http.request(case.method, case.url, headers=case.headers, content=case.content)


# -- 1. REST ---------------------------------------------------------------------------------------------------


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES)
@given(data=st.data())
async def test_rest_requests_never_fail_inside_or_change_data_when_refused(mesh: Mesh, data: st.DataObject) -> None:
    bindings = [b for b in BINDINGS if not b.server_streaming]
    case = data.draw(hostile_for(mesh).rest_cases(bindings), label="request")
    before = Stored.of(services(mesh))
    response = await send(mesh, case)
    event(f"HTTP {response.status_code}")
    check_rest_answer(response, repr(case))
    if response.status_code >= 300:
        assert before.changes(Stored.of(services(mesh))) == [], repr(case)


# -- 2. gRPC ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where a gRPC call goes: the gateway with an API key, or a service's own port with an identity."""

    name: str
    address: str
    metadata: tuple[tuple[str, str], ...]


def targets_for(mesh: Mesh, path: str, draw: st.DataObject) -> Target:
    _method, component = METHODS[path]
    if component is Component.GATEWAY or draw.draw(st.booleans(), label="through the gateway"):
        # gRPC metadata values are printable ASCII (the client library refuses anything else before sending).
        bad = [c for c in hostile.BAD_CREDENTIALS if c.isascii() and c.isprintable()]
        unusual = st.sampled_from(bad) | st.none()
        valid = st.sampled_from(all_keys(mesh)).map(lambda key: f"Bearer {key}")
        credential = draw.draw(hostile.mostly(valid, unusual, 6), label="credential")
        metadata = () if credential is None else (("authorization", credential),)
        return Target("gateway", f"127.0.0.1:{mesh.gateway.port}", metadata)
    runtime = {Component.REGISTRY: mesh.registry.runtime, Component.FLOWS: mesh.flows.runtime}.get(
        component, mesh.energy
    )
    n = mesh.network
    callers: list[Caller] = [PLATFORM, JIANGSU_REGULATOR, GUANGDONG_REGULATOR, n.producer.caller, n.outlet.caller]
    caller = draw.draw(hostile.mostly(st.sampled_from(callers), st.just(Caller()), 8), label="caller")
    signed = tuple(caller.metadata(mesh.flows.key))
    if signed and draw.draw(st.integers(0, 5), label="forge") == 0:
        # A forged identity: the same headers with another participant, the signature kept.
        signed = tuple(
            (k, "00000000-0000-7000-8000-00000000dead" if k == "x-greenmesh-participant-id" else v) for k, v in signed
        )
    return Target(runtime.component.value, f"127.0.0.1:{runtime.port}", signed)


def raw_unary(channel: grpc.aio.Channel, path: str) -> Any:
    """A method of `channel` that sends and returns bytes as they are (no serializers)."""
    return channel.unary_unary(path)


def raw_unary_stream(channel: grpc.aio.Channel, path: str) -> Any:
    return channel.unary_stream(path)


def raw_stream_unary(channel: grpc.aio.Channel, path: str) -> Any:
    return channel.stream_unary(path)


# grpcio's asyncio client, when a server ends a client-streaming call while a write is still in flight, replaces
# the server's status with this one of its own (grpc/grpc#36066; the fix, grpc/grpc#43486, is not released). It
# happens to the gateway too, as the client of the backend: an upload refused at once (no key, a bad message)
# reaches the caller as this INTERNAL now and then. It is the library's, not a handler's, and changes nothing.
GRPC_AIO_WRITE_RACE = "Internal error from Core"


async def call_raw(
    channel: grpc.aio.Channel, path: str, requests: list[bytes], metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode | None, str]:
    """Call `path` with serialized requests: the status code and message (None: a stream still open after a
    moment, i.e. a subscription that was accepted and waits for events)."""
    method, _component = METHODS[path]
    try:
        if method.client_streaming:

            async def stream() -> AsyncIterator[bytes]:
                for request in requests:
                    yield request

            await raw_stream_unary(channel, path)(stream(), metadata=metadata, timeout=20)
        elif method.server_streaming:
            call = raw_unary_stream(channel, path)(requests[0], metadata=metadata, timeout=20)
            try:
                await asyncio.wait_for(call.read(), 0.5)
            except TimeoutError:
                return None, ""
            finally:
                call.cancel()
        else:
            await raw_unary(channel, path)(requests[0], metadata=metadata, timeout=20)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES)
@given(data=st.data())
async def test_grpc_requests_never_fail_inside_or_change_data_when_refused(mesh: Mesh, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(sorted(METHODS)), label="method")
    method, _component = METHODS[path]
    target = targets_for(mesh, path, data)
    count = data.draw(st.integers(0, 3), label="messages") if method.client_streaming else 1
    requests = [data.draw(hostile_for(mesh).grpc_requests(method.input_type), label="request") for _ in range(count)]
    before = Stored.of(services(mesh))
    async with grpc.aio.insecure_channel(target.address, options=CHANNEL_OPTIONS) as channel:
        code, message = await call_raw(channel, path, requests, target.metadata)
    what = f"{path} at {target.name}"
    event(f"{target.name} {code}")
    library_race = method.client_streaming and code is grpc.StatusCode.INTERNAL and message == GRPC_AIO_WRITE_RACE
    assert code not in NEVER_GRPC or library_race, f"{what} -> {code} {message[:300]}"
    if code is not None and code is not grpc.StatusCode.OK:
        assert before.changes(Stored.of(services(mesh))) == [], what


# -- 3. the edges the random search rarely reaches -------------------------------------------------------------


def status_details(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The details of one google.rpc type (`BadRequest`, `ErrorInfo` …) in a Status JSON body."""
    return [d for d in body.get("details", []) if str(d.get("@type", "")).endswith(f"google.rpc.{kind}")]


def violated_fields(body: dict[str, Any]) -> set[str]:
    return {v["field"] for d in status_details(body, "BadRequest") for v in d.get("fieldViolations", [])}


EXTREME_BODIES: tuple[tuple[bytes, str], ...] = (
    (hostile.deep_json(10_000, "array"), "deeper than 100 levels"),
    (hostile.deep_json(10_000, "object"), "deeper than 100 levels"),
    (hostile.deep_json(100_000, "unclosed"), "deeper than 100 levels"),
    (hostile.deep_json(10_000, "field"), "deeper than 100 levels"),
    (hostile.deep_json(101, "array"), "deeper than 100 levels"),
    (b'{"x": "\\ud800"}', "without its pair"),
    (b'{"\\udfff": 1}', "without its pair"),
    (b'{"a": "\xed\xa0\x80"}', "not UTF-8"),
    (b'{"a": NaN}', "not valid JSON"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),
    (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
)


async def test_bodies_at_the_edges_are_invalid_argument_for_every_binding(mesh: Mesh) -> None:
    """Nesting 10,000 and 100,000 deep (Python's JSON parser would recurse into a RecursionError), lone surrogates
    (which no UTF-8 can encode, so the error itself could not be written), CESU-8, NaN, a BOM and a 5,000-digit
    number: 400 INVALID_ARGUMENT naming the problem, for every binding that takes a body; nothing stored."""
    before = Stored.of(services(mesh))
    bindings = [b for b in BINDINGS if b.body]
    auth = {"authorization": f"Bearer {mesh.keys.platform}", "content-type": "application/json"}
    for binding in bindings:
        path = binding.template.source
        for variable in binding.template.variables:
            path = path.replace("{" + variable.field_path + "}", "x", 1)
        for body, expected in EXTREME_BODIES:
            response = await mesh.http.request(binding.http_method, path, headers=auth, content=body)
            what = f"{binding.http_method} {path} {body[:40]!r}"
            assert response.status_code == 400, f"{what} -> {response.status_code} {response.text[:300]}"
            status = response.json()
            assert status["code"] == code_pb2.INVALID_ARGUMENT and expected in status["message"], f"{what}: {status}"
    # At the limit itself the depth is fine (the value is then refused for what it is, not for its depth).
    at_limit = b'{"legalName": ' + b"[" * 99 + b"]" * 99 + b"}"
    response = await mesh.http.post("/v1/participants", headers=auth, content=at_limit)
    assert response.status_code == 400 and violated_fields(response.json()) == {"participant.legalName"}
    assert before.changes(Stored.of(services(mesh))) == []


UNDECODABLE = (b"\xff\xff\xff\x0f", b"\x0a\xff\x01", b"\x08")  # corrupt, a length past the end, a tag without value


async def test_bytes_that_are_not_the_message_are_invalid_argument(mesh: Mesh) -> None:
    """gRPC itself answers UNKNOWN ("Unexpected <class 'DecodeError'>") for a unary request it cannot decode, and
    a client stream's bad message became INTERNAL; now both are INVALID_ARGUMENT, reason MALFORMED_REQUEST,
    through the gateway and at the service, and nothing is stored."""
    before = Stored.of(services(mesh))
    paths = [
        "/greenmesh.registry.v1.RegistryService/GetCountyCoverage",
        "/greenmesh.registry.v1.RegistryService/RegisterParticipant",
        "/greenmesh.flows.v1.FlowService/ReportEvents",
        "/greenmesh.flows.v1.FlowService/UploadEvents",
        "/greenmesh.flows.v1.FlowService/SubscribeEvents",
        "/greenmesh.energy.v1.EnergyService/UploadReadings",
        "/greenmesh.registry.v1.RegistryService/ImportFacilities",
    ]
    for path in paths:
        _method, component = METHODS[path]
        runtime = {Component.REGISTRY: mesh.registry.runtime, Component.FLOWS: mesh.flows.runtime}.get(
            component, mesh.energy
        )
        doors = [
            (f"127.0.0.1:{mesh.gateway.port}", (("authorization", f"Bearer {mesh.keys.platform}"),)),
            (f"127.0.0.1:{runtime.port}", tuple(PLATFORM.metadata(mesh.flows.key))),
        ]
        for address, metadata in doors:
            async with grpc.aio.insecure_channel(address) as channel:
                for garbage in UNDECODABLE:
                    try:
                        await grpc_call(channel, path, garbage, metadata)
                    except grpc.aio.AioRpcError as error:
                        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, f"{path} at {address}: {error}"
                        assert error_reason(error) == "MALFORMED_REQUEST", f"{path} at {address}"
                    else:
                        raise AssertionError(f"{path} at {address} accepted {garbage!r}")
    assert before.changes(Stored.of(services(mesh))) == []


async def grpc_call(channel: grpc.aio.Channel, path: str, request: bytes, metadata: Any) -> None:
    method, _component = METHODS[path]
    if method.client_streaming:

        async def one() -> AsyncIterator[bytes]:
            yield request

        await raw_stream_unary(channel, path)(one(), metadata=metadata, timeout=10)
    elif method.server_streaming:
        call = raw_unary_stream(channel, path)(request, metadata=metadata, timeout=10)
        await call.read()
        call.cancel()
    else:
        await raw_unary(channel, path)(request, metadata=metadata, timeout=10)


async def test_an_error_quoting_a_huge_value_still_reaches_the_client_as_itself(mesh: Mesh) -> None:
    """A status travels in trailers, which gRPC clients cap at 8 KiB (16 KiB hard): an INVALID_ARGUMENT quoting a
    30 KB value arrived as RESOURCE_EXHAUSTED "received metadata size exceeds …" (429 over REST, which invites a
    retry). Its message and details are now cut to fit: still INVALID_ARGUMENT, naming the field."""
    huge = "9" * 30_000
    request = rpb.GetCountyCoverageRequest(province_code=huge)
    for address in (f"127.0.0.1:{mesh.gateway.port}", f"127.0.0.1:{mesh.registry.runtime.port}"):
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await registry_pb2_grpc.RegistryServiceStub(channel).GetCountyCoverage(request, timeout=10)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, address
        assert len((refused.value.details() or "").encode()) <= bounded_status.MAX_MESSAGE_BYTES
        assert [v.field for v in field_violations(refused.value)] == ["province_code"]
    response = await mesh.http.get("/v1/coverage", params={"provinceCode": huge})
    assert response.status_code == 400 and violated_fields(response.json()) == {"province_code"}
    assert response.json()["message"].endswith("…")


# -- page tokens -----------------------------------------------------------------------------------------------


@dataclass
class Issued:
    """A page token the mesh issued: for which list, caller and query."""

    path: str
    key: str
    query: tuple[tuple[str, str], ...]
    token: str


@dataclass
class Lists:
    """The list RPCs (GET, no path variables, a page token), the tokens issued for them, and what each caller
    sees of each list without a token."""

    bindings: list[Binding]
    issued: list[Issued]
    visible: dict[tuple[str, str], set[str]]


def listed_items(body: dict[str, Any]) -> list[str]:
    """The items of a list response (its repeated field), each as canonical JSON."""
    items = next((value for value in body.values() if isinstance(value, list)), [])
    return [json.dumps(item, sort_keys=True) for item in items]


async def lists_of(mesh: Mesh) -> Lists:
    """Collected once per mesh (the examples of a property share it): two flow events so that events have pages
    too, the list bindings, a first page of one item for every list and caller (its token), and every list as
    each caller sees it whole."""
    found = mesh.gateway.state.get("hostile_lists")
    if isinstance(found, Lists):
        return found
    n = mesh.network
    for _ in range(2):
        battery = n.serial()
        commissioning = flow_event(
            fpb.BIZ_STEP_COMMISSIONING, n.producer, [battery], at(-30), model_id=n.model_id, production_date=PRODUCED
        )
        reply = await mesh.flows.call("ReportEvent", fpb.ReportEventRequest(event=commissioning), n.producer.caller)
        assert reply.result.outcome == fpb.EVENT_OUTCOME_ACCEPTED
    bindings = [
        b
        for b in BINDINGS
        if b.http_method == "GET"
        and not b.template.variables
        and "page_token" in b.method.input_type.fields_by_name
        and not b.server_streaming
    ]
    issued: list[Issued] = []
    visible: dict[tuple[str, str], set[str]] = {}
    for binding in bindings:
        path = binding.template.source
        for key in all_keys(mesh):
            headers = {"authorization": f"Bearer {key}"}
            whole = await mesh.http.get(path, params={"pageSize": "500"}, headers=headers)
            visible[(path, key)] = set(listed_items(whole.json())) if whole.status_code == 200 else set()
            first = await mesh.http.get(path, params={"pageSize": "1"}, headers=headers)
            token = first.json().get("nextPageToken", "") if first.status_code == 200 else ""
            if token:
                issued.append(Issued(path, key, (("pageSize", "1"),), token))
    assert {i.path for i in issued} >= {"/v1/participants", "/v1/facilities", "/v1/events"}
    found = mesh.gateway.state["hostile_lists"] = Lists(bindings, issued, visible)
    return found


def forged(token: str, key: str) -> str:
    """The token with another last key and its own fingerprint: the format is no secret, only the fingerprint
    binds it to a query."""
    padded = token + "=" * (-len(token) % 4)
    data = json.loads(base64.urlsafe_b64decode(padded))
    data["k"] = key
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def edited(token: str, position: int, replacement: str) -> str:
    position %= max(len(token), 1)
    return token[:position] + replacement + token[position + 1 :]


@settings(PROPERTY_SETTINGS, max_examples=EXAMPLES // 3)
@given(data=st.data())
async def test_forged_and_replayed_page_tokens_are_refused_or_grant_nothing(mesh: Mesh, data: st.DataObject) -> None:
    """A page token from another list, another caller, other filters, edited, base64 garbage or random text is
    400 INVALID_ARGUMENT on `page_token`. One forged with its own fingerprint around any key (an injection, a
    number past any column, text where a sequence number belongs) is refused when the key cannot be one, and
    otherwise only moves the cursor: the page holds nothing the caller could not list anyway."""
    lists = await lists_of(mesh)
    origin = data.draw(st.sampled_from(lists.issued), label="issued")
    kind = data.draw(st.sampled_from(["replayed", "edited", "forged", "garbage"]), label="kind")
    token = origin.token
    if kind == "edited":
        token = edited(token, data.draw(st.integers(0, 200)), data.draw(st.sampled_from("AaZz09-_=.")))
    elif kind == "forged":
        key = data.draw(
            hostile.mostly(st.sampled_from(hostile.INJECTIONS), st.text(max_size=30) | st.sampled_from(["", "-1"]))
        )
        token = forged(token, key)
    elif kind == "garbage":
        token = data.draw(
            st.one_of(
                st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
                st.sampled_from(['{"k":"x","f":"y"}', "e30", "bnVsbA", "W10", "eyJrIjpudWxsLCJmIjpudWxsfQ"]),
                hostile.url_text,
            ),
            label="garbage",
        )
    # Replayed as issued (same list, caller and query), or elsewhere: another list, caller or filter.
    path = data.draw(hostile.mostly(st.just(origin.path), st.sampled_from([b.template.source for b in lists.bindings])))
    key = data.draw(hostile.mostly(st.just(origin.key), st.sampled_from(all_keys(mesh))), label="caller")
    query = dict(origin.query)
    if data.draw(st.integers(0, 4), label="other filter") == 4 and path == "/v1/participants":
        query["divisionPrefix"] = "32"
    query["pageToken"] = token
    before = Stored.of(services(mesh))
    response = await mesh.http.get(path, params=query, headers={"authorization": f"Bearer {key}"})
    what = f"{kind} token {token!r} at {path} (issued at {origin.path})"
    event(f"{kind}: HTTP {response.status_code}")
    check_rest_answer(response, what)
    if response.status_code == 200:
        shown = set(listed_items(response.json()))
        assert shown <= lists.visible[(path, key)], f"{what} showed more than the caller may list"
    else:
        assert response.status_code in (400, 403), what
        if response.status_code == 400:
            assert violated_fields(response.json()) == {"page_token"}, f"{what}: {response.json()}"
    assert before.changes(Stored.of(services(mesh))) == []


async def test_positions_that_cannot_be_a_sequence_number_are_refused(mesh: Mesh) -> None:
    """Tokens keyed by an integer (event sequence numbers, reading start seconds) and the subscription's resume
    token: a forged key that is text, a number past SQL's BIGINT, or digits Python reads but SQL does not (full
    width, superscript) was a ValueError or OverflowError, so INTERNAL; now 400 on the token."""
    lists = await lists_of(mesh)
    events_token = next(i for i in lists.issued if i.path == "/v1/events")
    auth = {"authorization": f"Bearer {events_token.key}"}
    not_positions = ("abc", "9" * 30, hostile.full_width("12"), "\u00b2", "1e3", "-", "' OR 1=1 --")
    for key in (*not_positions, " 1", "+1"):
        query = {**dict(events_token.query), "pageToken": forged(events_token.token, key)}
        response = await mesh.http.get("/v1/events", params=query, headers=auth)
        assert response.status_code == 400, f"{key!r}: {response.status_code} {response.text[:300]}"
        assert violated_fields(response.json()) == {"page_token"}
    for key in not_positions:  # (a resume token is stripped: " 1" is position 1)
        resumed = await mesh.http.get("/v1/events:subscribe", params={"resumeToken": key}, headers=auth)
        assert resumed.status_code == 400, f"{key!r}: {resumed.status_code} {resumed.text[:300]}"
        assert violated_fields(resumed.json()) == {"resume_token"}
    # Within range, any number is only a position: an empty page after the last event, no error.
    query = {**dict(events_token.query), "pageToken": forged(events_token.token, "9" * 18)}
    response = await mesh.http.get("/v1/events", params=query, headers=auth)
    assert response.status_code == 200 and listed_items(response.json()) == []


# -- 4. limits -----------------------------------------------------------------------------------------------------


class TestRequestSizeAndRate:
    """A small body limit and a small rate, to reach both quickly."""

    @pytest.fixture
    def gateway_settings(self) -> dict[str, Any]:
        return {
            "gateway_max_request_bytes": 64 * 1024,
            "gateway_rate_per_second": 0.5,
            "gateway_rate_burst": 4,
            "gateway_anonymous_rate_per_second": 0.5,
            "gateway_anonymous_rate_burst": 2,
        }

    async def test_a_body_over_the_limit_is_413_and_stores_nothing(self, mesh: Mesh) -> None:
        limit = 64 * 1024
        before = Stored.of(services(mesh))
        auth = {"authorization": f"Bearer {mesh.keys.enterprise_b}", "content-type": "application/json"}
        over = b'{"legalName": "' + b"x" * limit + b'"}'
        # Declared by Content-Length: refused before the body is read (and before the key is checked).
        declared = await mesh.http.post("/v1/participants", headers=auth, content=over)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(over), 4096):
                yield over[start : start + 4096]

        # Chunked, with no length: refused as soon as the bytes read pass the limit.
        streamed = await mesh.http.post("/v1/participants", headers=auth, content=chunks())
        for response in (declared, streamed):
            assert response.status_code == 413, response.text[:300]
            status = response.json()
            assert status["code"] == code_pb2.RESOURCE_EXHAUSTED
            assert status["message"] == f"the request body is larger than {limit} bytes"
            assert "retry-after" not in response.headers  # not a rate: the same request never fits
        # At the limit exactly the size is fine; the participant is then refused for what it is.
        exact = b'{"legalName": "' + b"x" * (limit - 17) + b'"}'
        assert len(exact) == limit
        response = await mesh.http.post("/v1/participants", headers=auth, content=exact)
        assert response.status_code in (400, 403), response.text[:300]
        assert before.changes(Stored.of(services(mesh))) == []

    async def test_over_the_rate_limit_is_429_with_retry_after_and_stores_nothing(self, mesh: Mesh) -> None:
        auth = {"authorization": f"Bearer {mesh.keys.regulator}"}
        for _ in range(4):  # the burst
            assert (await mesh.http.get("/v1/participants", params={"pageSize": "1"}, headers=auth)).status_code == 200
        before = Stored.of(services(mesh))
        participant = {"creditCode": "91320102257WTT7079", "legalName": "x", "roles": ["PARTICIPANT_ROLE_DEALER"]}
        limited = await mesh.http.post("/v1/participants", headers=auth, json=participant)
        assert limited.status_code == 429, limited.text[:300]
        status = limited.json()
        assert status["code"] == code_pb2.RESOURCE_EXHAUSTED
        assert [d["reason"] for d in status_details(status, "ErrorInfo")] == ["RATE_LIMITED"]
        assert status_details(status, "RetryInfo")[0]["retryDelay"].endswith("s")
        assert limited.headers["retry-after"] == "2"  # one token at 0.5 per second
        assert before.changes(Stored.of(services(mesh))) == []
        # Another key has its own bucket; callers without a key share one per address.
        other = {"authorization": f"Bearer {mesh.keys.platform}"}
        assert (await mesh.http.get("/v1/participants", params={"pageSize": "1"}, headers=other)).status_code == 200
        public = [(await mesh.http.get("/v1/coverage", params={"provinceCode": "32"})).status_code for _ in range(3)]
        assert public == [200, 200, 429]


async def test_grpc_messages_over_16_mib_are_resource_exhausted(mesh: Mesh) -> None:
    """MAX_MESSAGE_BYTES (16 MiB) on every server and channel of the mesh: a bigger request is refused by gRPC
    itself before any handler runs (RESOURCE_EXHAUSTED), at the gateway and at a service; one just under it
    passes the gateway to the service. So does request metadata over gRPC's 16 KiB (8 KiB soft) limit."""
    base = rpb.ListParticipantsRequest(page_size=1).SerializeToString()

    def with_padding(size: int) -> bytes:
        # An unknown field (number 1000, bytes) that the service skips: only the size matters.
        return base + b"\xc2\x3e" + _varint(size) + b"\x00" * size

    doors = [
        (f"127.0.0.1:{mesh.gateway.port}", (("authorization", f"Bearer {mesh.keys.platform}"),)),
        (f"127.0.0.1:{mesh.registry.runtime.port}", tuple(PLATFORM.metadata(mesh.flows.key))),
    ]
    path = "/greenmesh.registry.v1.RegistryService/ListParticipants"
    for address, metadata in doors:
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            call = raw_unary(channel, path)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(with_padding(grpc_options.MAX_MESSAGE_BYTES), metadata=metadata, timeout=30)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, address
            assert "larger than max" in (refused.value.details() or ""), refused.value.details()
            reply = await call(with_padding(grpc_options.MAX_MESSAGE_BYTES - 1024), metadata=metadata, timeout=30)
            assert rpb.ListParticipantsResponse.FromString(reply).participants
            with pytest.raises(grpc.aio.AioRpcError) as big_metadata:
                await call(base, metadata=(*metadata, ("x-padding", "a" * 20_000)), timeout=10)
            assert big_metadata.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, address


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


async def test_batch_page_and_query_limits(mesh: Mesh) -> None:
    """ReportEvents takes at most 1,000 events, IssuePlatformCodes 1 to 1,000 codes, FindNearestOutlets at most 50
    results within 200 km; a negative page size is refused; a REST request at most 1,000 query parameters, and a
    URL of about 64 KiB. Each refusal is 400 naming the field, and stores nothing."""
    auth = {"authorization": f"Bearer {mesh.keys.platform}"}
    producer = {"authorization": f"Bearer {mesh.keys.producer}"}
    outlet = {"authorization": f"Bearer {mesh.keys.enterprise_a}"}
    before = Stored.of(services(mesh))

    def batch(size: int) -> dict[str, Any]:
        # Events the rules refuse one by one (a battery code of the wrong form): the size is what is tested.
        shaped = {"eventId": "", "bizStep": "BIZ_STEP_COMMISSIONING", "eventTime": "2026-09-01T08:00:00Z"}
        return {"events": [shaped] * size, "errorBehaviour": "ERROR_BEHAVIOUR_ROLLBACK"}

    over = await mesh.http.post("/v1/events:batch", headers=producer, json=batch(1001))
    assert over.status_code == 400 and violated_fields(over.json()) == {"events"}, over.text[:300]
    assert "at most 1000 events" in over.json()["message"]
    at_limit = await mesh.http.post("/v1/events:batch", headers=producer, json=batch(1000))
    assert at_limit.status_code == 200, at_limit.text[:300]
    assert len(at_limit.json()["results"]) == 1000 and at_limit.json()["rolledBack"]

    for count in ("0", "1001", "-1"):
        codes = await mesh.http.post("/v1/platformCodes", headers=outlet, json={"count": count})
        assert codes.status_code == 400 and violated_fields(codes.json()) == {"count"}, codes.text[:300]
    for name, value in (("limit", "51"), ("limit", "-1"), ("maxDistanceKm", "200.5")):
        query = {"location.latitude": "32.07", "location.longitude": "118.79", name: value}
        nearest = await mesh.http.get("/v1/outlets:nearest", params=query)
        assert nearest.status_code == 400, nearest.text[:300]
        assert violated_fields(nearest.json()) == {"limit" if name == "limit" else "max_distance_km"}

    for path in ("/v1/participants", "/v1/facilities", "/v1/events", "/v1/assets", "/v1/measures"):
        negative = await mesh.http.get(path, params={"pageSize": "-1"}, headers=auth)
        assert negative.status_code == 400 and violated_fields(negative.json()) == {"page_size"}, path
        huge = await mesh.http.get(path, params={"pageSize": str(2**31 - 1)}, headers=auth)
        assert huge.status_code == 200, path  # capped at 500 (see the readings below)

    many = "&".join(["pageSize=1"] * 1001)
    too_many = await mesh.http.get(f"/v1/participants?{many}", headers=auth)
    assert too_many.status_code == 400 and "Max number of fields exceeded" in too_many.json()["message"]
    # httpx itself refuses URLs over 64 KiB, so this one goes over a socket.
    head = await raw_http(mesh.http_port, b"GET /v1/coverage?provinceCode=" + b"9" * 70_000 + b" HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")  # the HTTP server's own refusal, before the gateway (text/plain)
    assert before.changes(Stored.of(services(mesh))) == []


async def test_readings_batch_and_page_size_limits(mesh: Mesh) -> None:
    """UpsertReadings takes at most 10,000 readings (10,001: 400 naming `readings`, nothing stored); a page holds
    at most 500 items whatever the page size asked, and the next token carries on from there."""
    data_center = await site(mesh.registry, "DATA_CENTER_OPERATOR", rpb.FACILITY_TYPE_DATA_CENTER, XUANWU)
    directory = mesh.energy.state["directory"]
    assert isinstance(directory, DirectoryView)

    async def known() -> bool:
        return directory.facility(data_center.id) is not None

    await eventually(known, timeout=20)
    key = await issue_key(mesh.registry, data_center.operator)
    auth = {"authorization": f"Bearer {key}"}
    meter = {
        "siteId": data_center.id,
        "quantity": "METER_QUANTITY_ACTIVE_ENERGY",
        "unit": "UNIT_KWH",
        "mode": "READING_MODE_INTERVAL",
        "interval": "900s",
        "role": "METER_ROLE_FACILITY_TOTAL",
    }
    created = await mesh.http.post("/v1/meters", headers=auth, json=meter)
    assert created.status_code == 200, created.text[:300]
    meter_id = created.json()["meter"]["meterId"]
    start = 1_767_225_600  # 2026-01-01T00:00:00Z

    def readings(count: int) -> list[dict[str, Any]]:
        return [
            {
                "startTime": _rfc3339(start + i * 900),
                "endTime": _rfc3339(start + (i + 1) * 900),
                "value": 1.0,
            }
            for i in range(count)
        ]

    before = Stored.of(services(mesh))
    over = await mesh.http.post(
        f"/v1/meters/{meter_id}/readings:upsert", headers=auth, json={"readings": readings(10_001)}
    )
    assert over.status_code == 400 and violated_fields(over.json()) == {"readings"}, over.text[:300]
    assert "at most 10,000 readings" in over.json()["message"]
    assert before.changes(Stored.of(services(mesh))) == []
    at_limit = await mesh.http.post(
        f"/v1/meters/{meter_id}/readings:upsert", headers=auth, json={"readings": readings(10_000)}
    )
    assert at_limit.status_code == 200 and at_limit.json()["inserted"] == 10_000, at_limit.text[:300]

    first = await mesh.http.get(f"/v1/meters/{meter_id}/readings", params={"pageSize": "100000"}, headers=auth)
    assert first.status_code == 200 and len(first.json()["readings"]) == 500
    token = first.json()["nextPageToken"]
    second = await mesh.http.get(
        f"/v1/meters/{meter_id}/readings", params={"pageSize": "100000", "pageToken": token}, headers=auth
    )
    assert second.status_code == 200 and len(second.json()["readings"]) == 500
    assert second.json()["readings"][0]["startTime"] == _rfc3339(start + 500 * 900)
    # A forged key in the token (the fingerprint kept): a number past BIGINT, or text, is refused.
    for forged_key in ("9" * 30, "abc"):
        query = {"pageSize": "100000", "pageToken": forged(token, forged_key)}
        refused = await mesh.http.get(f"/v1/meters/{meter_id}/readings", params=query, headers=auth)
        assert refused.status_code == 400 and violated_fields(refused.json()) == {"page_token"}, refused.text[:300]


def _rfc3339(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes to the REST port; the start of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(200), 10)
    finally:
        writer.close()


# -- 5. the pieces, without a mesh ---------------------------------------------------------------------------------


def test_json_depth_is_counted_outside_strings_and_before_parsing() -> None:
    assert not json_depth_exceeds("[" * 100 + "]" * 100, 100)
    assert json_depth_exceeds("[" * 101 + "]" * 101, 100)
    assert json_depth_exceeds("[" * 200, 100)  # unclosed: measured all the same
    assert not json_depth_exceeds('["' + "[" * 500 + '"]', 100)  # brackets inside a string
    assert not json_depth_exceeds(r'["\"' + "{" * 500 + '"]', 100)  # after an escaped quote: still the string
    assert json_depth_exceeds(r'["\\"' + ",[" * 500, 100)  # an escaped backslash ends it: arrays again


def test_a_status_is_cut_to_fit_the_trailers() -> None:
    small = transcode.make_status(grpc.StatusCode.NOT_FOUND, "participant 'x' not found")
    assert bounded_status.bounded(small) is small
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=f"events[{i}].facility_id", description="国" * 5000)
        for i in range(100)
    ]
    info = error_details_pb2.ErrorInfo(reason="R", domain="greenmesh.io", metadata={"value": "9" * 30_000})
    huge = transcode.make_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request: " + "国" * 30_000,
        [error_details_pb2.BadRequest(field_violations=violations), info],
    )
    cut = bounded_status.bounded(huge)
    assert cut.code == code_pb2.INVALID_ARGUMENT
    assert len(cut.message.encode()) <= bounded_status.MAX_MESSAGE_BYTES and cut.message.endswith("…")
    assert cut.ByteSize() - len(cut.message.encode()) <= bounded_status.MAX_DETAILS_BYTES + 8
    request = error_details_pb2.BadRequest()
    assert cut.details[0].Unpack(request)
    assert 0 < len(request.field_violations) < 100 and request.field_violations[0].field == "events[0].facility_id"
    assert all(len(v.description.encode()) <= bounded_status.MAX_TEXT_BYTES for v in request.field_violations)
    # What gRPC sends: the message percent-encoded (each UTF-8 byte of "国" as %XX), the details in base64.
    trailers = rpc_status.to_status(cut).trailing_metadata
    details_bin = dict(trailers)["grpc-status-details-bin"]
    assert isinstance(details_bin, bytes)
    assert 3 * len(cut.message.encode()) + len(details_bin) * 4 // 3 < 8 * 1024


def test_integer_tokens_hold_only_what_sql_can() -> None:
    filters = {"q": "x"}
    assert decode_integer_token(encode_token("12", filters), filters) == 12
    assert decode_integer_token(encode_token("-5", filters), filters) == -5
    assert decode_integer_token("", filters) is None
    for key in ("abc", "9" * 19, "1e3", "\u00b2", hostile.full_width("1"), " 1", ""):
        with pytest.raises(InvalidArgument):
            decode_integer_token(encode_token(key, filters), filters)
