"""Caller identities are signed (meshkit/caller.py): the canonical form and its signature, the key and where it
comes from, and a real registry (gRPC on port 0, real NATS, SQLite) that refuses unsigned, forged, altered and
stale identities on all four kinds of RPC before any handler runs, and still serves anonymous callers."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import re
import stat
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import ValidationError
from sqlmodel import col, select

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.caller import (
    ANONYMOUS,
    CALLER_KEY_FILE,
    CALLER_NOT_SIGNED,
    CALLER_SIGNATURE_EXPIRED,
    DIVISION_HEADER,
    PARTICIPANT_HEADER,
    ROLES_HEADER,
    SIGNATURE_HEADER,
    Caller,
    CallerNotVerified,
    caller_signature,
    canonical_identity,
    read_or_create_key_file,
    signing_key,
    verify_caller,
)
from meshkit.config import ConfigError, MeshSettings, load_settings
from meshkit.errors import ERROR_DOMAIN, status_from_error
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.registry.service import DEFINITION as REGISTRY
from services.registry.tables import FacilityRow, ParticipantRow
from tests.conftest import RuntimeFactory
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import PLATFORM, XUANWU, credit_code, facility_message

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
REGULATOR = Caller(participant_id="p-32", roles=frozenset({"REGULATOR"}), supervised_division="320000")
ENTERPRISE = Caller(participant_id="00000000-0000-7000-8000-0000000000e1", roles=frozenset({"PRODUCER"}))
Metadata = tuple[tuple[str, str], ...]


def replaced(metadata: Sequence[tuple[str, str]], name: str, value: str | None) -> Metadata:
    """The metadata with header `name` set to `value` (removed when None)."""
    kept = tuple((key, old) for key, old in metadata if key != name)
    return kept if value is None else (*kept, (name, value))


def signed(caller: Caller, key: bytes, issued_at: int | None = None) -> Metadata:
    return tuple(caller.metadata(key, issued_at=issued_at))


# ---- the canonical form and the signature ----


def test_the_signature_is_an_hmac_sha256_of_the_documented_canonical_string() -> None:
    caller = Caller(participant_id="p-1", roles=frozenset({"REGULATOR", "PLATFORM_OPERATOR"}), supervised_division="32")
    canonical = b'["greenmesh-caller","v1","p-1",["PLATFORM_OPERATOR","REGULATOR"],"32",1700000000]'
    assert canonical_identity(caller, 1_700_000_000) == canonical
    mac = base64.urlsafe_b64encode(hmac.new(KEY, canonical, hashlib.sha256).digest()).rstrip(b"=").decode()
    assert caller_signature(KEY, caller, 1_700_000_000) == f"v1.1700000000.{mac}"
    assert re.fullmatch(r"v1\.1700000000\.[A-Za-z0-9_-]{43}", caller_signature(KEY, caller, 1_700_000_000))


def test_every_field_of_the_identity_and_the_time_change_the_canonical_string() -> None:
    base = canonical_identity(REGULATOR, 1_700_000_000)
    variants = [
        canonical_identity(dataclasses.replace(REGULATOR, participant_id="p-33"), 1_700_000_000),
        canonical_identity(dataclasses.replace(REGULATOR, roles=frozenset({"PLATFORM_OPERATOR"})), 1_700_000_000),
        canonical_identity(dataclasses.replace(REGULATOR, supervised_division="440000"), 1_700_000_000),
        canonical_identity(REGULATOR, 1_700_000_001),
        # a field cannot run into the next one
        canonical_identity(Caller(participant_id="p-32,REGULATOR", supervised_division="320000"), 1_700_000_000),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # the order roles come in does not matter
    again = Caller(participant_id="p-32", roles=frozenset(["REGULATOR"]), supervised_division="320000")
    assert canonical_identity(again, 1_700_000_000) == base


def test_metadata_carries_the_identity_and_its_signature() -> None:
    metadata = REGULATOR.metadata(KEY, issued_at=1_700_000_000)
    assert dict(metadata) == {
        PARTICIPANT_HEADER: "p-32",
        ROLES_HEADER: "REGULATOR",
        DIVISION_HEADER: "320000",
        SIGNATURE_HEADER: caller_signature(KEY, REGULATOR, 1_700_000_000),
    }
    assert ANONYMOUS.metadata(KEY) == []
    assert verify_caller(metadata, KEY, now=1_700_000_000) == REGULATOR


def test_verification() -> None:
    now = time.time()
    signed = ENTERPRISE.metadata(KEY)
    assert verify_caller(signed, KEY) == ENTERPRISE
    assert verify_caller([], KEY) is ANONYMOUS
    assert verify_caller([("x-request-id", "r1")], KEY) is ANONYMOUS

    def refused(metadata: Sequence[tuple[str, str]], key: bytes = KEY, **kwargs: Any) -> str:
        with pytest.raises(CallerNotVerified) as raised:
            verify_caller(metadata, key, **kwargs)
        return raised.value.reason

    assert refused(replaced(signed, SIGNATURE_HEADER, None)) == CALLER_NOT_SIGNED
    assert refused(signed, OTHER_KEY) == CALLER_NOT_SIGNED
    assert refused(replaced(signed, ROLES_HEADER, "PLATFORM_OPERATOR")) == CALLER_NOT_SIGNED
    assert refused(replaced(signed, PARTICIPANT_HEADER, "someone-else")) == CALLER_NOT_SIGNED
    assert refused([*signed, (DIVISION_HEADER, "320000")]) == CALLER_NOT_SIGNED  # a division added
    assert refused([*signed, (ROLES_HEADER, "PLATFORM_OPERATOR")]) == CALLER_NOT_SIGNED  # a header repeated
    assert refused([(ROLES_HEADER, "PLATFORM_OPERATOR")]) == CALLER_NOT_SIGNED  # roles without a participant
    signature = dict(signed)[SIGNATURE_HEADER]
    _version, seconds, mac = signature.split(".")
    for bad in ("", "v1", f"v2.{seconds}.{mac}", f"v1.-{seconds}.{mac}", f"v1.{seconds}.{mac}=", f"v1.{seconds}.x"):
        assert refused(replaced(signed, SIGNATURE_HEADER, bad)) == CALLER_NOT_SIGNED, bad
    # the time is part of what is signed: moving it breaks the signature
    assert refused(replaced(signed, SIGNATURE_HEADER, f"v1.{int(seconds) + 1}.{mac}")) == CALLER_NOT_SIGNED
    # stale, or from a clock too far ahead
    old = ENTERPRISE.metadata(KEY, issued_at=int(now) - 301)
    ahead = ENTERPRISE.metadata(KEY, issued_at=int(now) + 301)
    assert refused(old) == CALLER_SIGNATURE_EXPIRED
    assert refused(ahead) == CALLER_SIGNATURE_EXPIRED
    assert verify_caller(old, KEY, max_age_seconds=600) == ENTERPRISE
    assert verify_caller(ENTERPRISE.metadata(KEY, issued_at=int(now) - 250), KEY) == ENTERPRISE


def test_the_identity_is_signed_as_services_read_it() -> None:
    written = Caller(participant_id="p-1", roles=frozenset({"regulator "}), supervised_division="320000")
    read = verify_caller(written.metadata(KEY), KEY)
    assert read.roles == {"REGULATOR"} and read.participant_id == "p-1"
    with pytest.raises(ValueError):
        caller_signature(b"", written, 0)


# ---- the key ----


def test_the_key_file_is_made_once_private_and_shared(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = MeshSettings.model_validate({"data_dir": tmp_path / "data"})
    with caplog.at_level(logging.WARNING, logger="meshkit.caller"):
        first = signing_key(settings)
    assert "GREENMESH_CALLER_KEY is not set" in caplog.text
    path = tmp_path / "data" / CALLER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    assert path.read_text(encoding="ascii") == first.decode() + "\n"
    modified = path.stat().st_mtime_ns
    assert signing_key(MeshSettings.model_validate({"data_dir": tmp_path / "data"}), warn=False) == first
    assert path.stat().st_mtime_ns == modified
    assert sorted(p.name for p in path.parent.iterdir()) == [CALLER_KEY_FILE]  # no temporary file left
    # another data directory, another key
    assert signing_key(MeshSettings.model_validate({"data_dir": tmp_path / "elsewhere"}), warn=False) != first


def test_processes_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "mesh" / CALLER_KEY_FILE
    with ThreadPoolExecutor(max_workers=16) as pool:
        keys = set(pool.map(lambda _: read_or_create_key_file(path), range(64)))
    assert keys == {path.read_text(encoding="ascii").strip().encode()}
    assert sorted(p.name for p in path.parent.iterdir()) == [CALLER_KEY_FILE]


def test_the_configured_key_wins_over_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from_file = signing_key(MeshSettings.model_validate({"data_dir": tmp_path}), warn=False)
    configured = "c" * 40
    with caplog.at_level(logging.WARNING, logger="meshkit.caller"):
        key = signing_key(MeshSettings.model_validate({"data_dir": tmp_path, "caller_key": configured}))
    assert key == configured.encode() != from_file
    assert caplog.text == ""
    # the file's text works as the configured key: the same mesh, whichever way a process gets it
    same = MeshSettings.model_validate({"data_dir": tmp_path / "other", "caller_key": from_file.decode()})
    assert signing_key(same) == from_file
    assert not (tmp_path / "other" / CALLER_KEY_FILE).exists()


def test_a_damaged_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / CALLER_KEY_FILE).write_text("short\n", encoding="ascii")
    with pytest.raises(RuntimeError, match="holds no caller key"):
        signing_key(MeshSettings.model_validate({"data_dir": tmp_path}), warn=False)


def test_a_short_or_placeholder_key_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GREENMESH_CALLER_KEY", "too-short")
    with pytest.raises(ConfigError):
        load_settings()
    assert capsys.readouterr().err.startswith(
        "greenmesh: configuration error: GREENMESH_CALLER_KEY: must be at least 32"
    )
    with pytest.raises(ValidationError, match="placeholder"):
        MeshSettings.model_validate({"caller_key": "CHANGE-ME-placeholder-generate-with-openssl-rand-hex-32"})
    monkeypatch.setenv("GREENMESH_CALLER_KEY", "x" * 32)
    settings = load_settings()
    assert settings.caller_key is not None and settings.caller_key.get_secret_value() == "x" * 32
    assert "x" * 32 not in repr(settings)  # a secret: never printed with the settings


# ---- a real registry ----


@dataclass
class Served:
    runtime: ServiceRuntime
    channel: grpc.aio.Channel
    key: bytes

    @property
    def stub(self) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel)

    async def participants_with(self, code: str) -> int:
        async with self.runtime.database.session() as session:
            rows = (await session.exec(select(ParticipantRow).where(col(ParticipantRow.credit_code) == code))).all()
        return len(rows)

    async def facilities(self) -> list[str]:
        async with self.runtime.database.session() as session:
            return list((await session.exec(select(FacilityRow.operator_facility_code))).all())


@pytest.fixture
async def served(nats_server: NatsServer, make_runtime: RuntimeFactory) -> AsyncIterator[Served]:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield Served(runtime, channel, signing_key(runtime.settings, warn=False))


def register_request(code: str) -> pb.RegisterParticipantRequest:
    return pb.RegisterParticipantRequest(
        participant=pb.Participant(
            credit_code=code, legal_name="签名测试企业", roles=[pb.PARTICIPANT_ROLE_RECYCLING_OUTLET_OPERATOR]
        )
    )


def unsigned(caller: Caller) -> Metadata:
    """The identity headers as a client would forge them: everything but a valid signature."""
    return replaced(caller.metadata(KEY), SIGNATURE_HEADER, None)


def assert_refused(error: grpc.aio.AioRpcError, reason: str) -> None:
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED, error
    status = status_from_error(error)
    assert status is not None
    (detail,) = status.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert (info.reason, info.domain) == (reason, ERROR_DOMAIN)


async def test_a_signed_platform_operator_registers_and_forged_identities_store_nothing(served: Served) -> None:
    signed_code = credit_code()
    reply = await served.stub.RegisterParticipant(
        register_request(signed_code), metadata=signed(PLATFORM, served.key), timeout=10
    )
    assert reply.participant.credit_code == signed_code
    assert await served.participants_with(signed_code) == 1

    enterprise_signed = signed(ENTERPRISE, served.key)
    now = int(time.time())
    forged: list[tuple[str, Metadata, str]] = [
        ("unsigned", unsigned(PLATFORM), CALLER_NOT_SIGNED),
        ("another key", signed(PLATFORM, OTHER_KEY), CALLER_NOT_SIGNED),
        ("roles changed", replaced(enterprise_signed, ROLES_HEADER, "PLATFORM_OPERATOR"), CALLER_NOT_SIGNED),
        ("expired", signed(PLATFORM, served.key, now - 3600), CALLER_SIGNATURE_EXPIRED),
        ("from the future", signed(PLATFORM, served.key, now + 3600), CALLER_SIGNATURE_EXPIRED),
    ]
    for label, metadata, reason in forged:
        code = credit_code()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await served.stub.RegisterParticipant(register_request(code), metadata=metadata, timeout=10)
        assert_refused(raised.value, reason)
        assert await served.participants_with(code) == 0, label

    # The enterprise's own signed identity still works: it is only refused the platform's work.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.RegisterParticipant(register_request(credit_code()), metadata=enterprise_signed, timeout=10)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_anonymous_calls_to_public_rpcs_still_work(served: Served) -> None:
    _county, lat, lon = XUANWU
    reply = await served.stub.FindNearestOutlets(
        pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=lat, longitude=lon)), timeout=10
    )
    assert list(reply.outlets) == []
    # and anonymous calls that need a caller get the usual answer, not a signature error
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.RegisterParticipant(register_request(credit_code()), timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert_refused(raised.value, "UNAUTHENTICATED")


async def test_a_client_stream_is_refused_before_any_row_is_read(served: Served) -> None:
    operator = (
        await served.stub.RegisterParticipant(
            register_request(credit_code()), metadata=signed(PLATFORM, served.key), timeout=10
        )
    ).participant
    await served.stub.ChangeParticipantStatus(
        pb.ChangeParticipantStatusRequest(
            participant_id=operator.participant_id,
            status=pb.PARTICIPANT_STATUS_ACTIVE,
            reason="documents checked",
            version=operator.version,
        ),
        metadata=signed(PLATFORM, served.key),
        timeout=10,
    )

    def rows(code: str) -> list[pb.ImportFacilitiesRequest]:
        county, lat, lon = XUANWU
        facility = facility_message("", county, lat, lon, code=code)
        facility.ClearField("operator_id")
        return [pb.ImportFacilitiesRequest(row_number=2, facility=facility, operator_credit_code=operator.credit_code)]

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await served.stub.ImportFacilities(iter(rows("FORGED-1")), metadata=unsigned(PLATFORM), timeout=10)
    assert_refused(raised.value, CALLER_NOT_SIGNED)
    assert await served.facilities() == []

    summary = await served.stub.ImportFacilities(
        iter(rows("SIGNED-1")), metadata=signed(PLATFORM, served.key), timeout=10
    )
    assert (summary.rows_received, summary.created) == (1, 1)
    assert await served.facilities() == ["SIGNED-1"]


async def test_server_and_bidirectional_streams_are_checked_too(served: Served) -> None:
    # The standard health Watch (a server stream) and reflection (bidirectional) run behind the same check.
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(
        health_pb2.HealthCheckRequest(), metadata=unsigned(PLATFORM), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await watch.read()
    assert_refused(raised.value, CALLER_NOT_SIGNED)

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reflect = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in reflect.ServerReflectionInfo(iter([request]), metadata=unsigned(PLATFORM), timeout=10):
            pass
    assert_refused(raised.value, CALLER_NOT_SIGNED)

    # signed, or with no identity at all, they answer
    answers = [a async for a in reflect.ServerReflectionInfo(iter([request]), metadata=signed(PLATFORM, served.key))]
    assert any(s.name == "greenmesh.registry.v1.RegistryService" for s in answers[0].list_services_response.service)
    watch = health_pb2_grpc.HealthStub(served.channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert (await watch.read()).status == SERVING
    watch.cancel()


async def test_a_runtime_that_does_not_verify_callers_takes_them_as_they_come(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    """What the gateway's runtime does (it authenticates API keys itself); never a service's."""
    assert REGISTRY.verifies_caller is True
    runtime = await make_runtime(dataclasses.replace(REGISTRY, verifies_caller=False), nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        code = credit_code()
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        reply = await stub.RegisterParticipant(register_request(code), metadata=unsigned(PLATFORM), timeout=10)
    assert reply.participant.credit_code == code
