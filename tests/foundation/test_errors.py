"""Errors reach clients as google.rpc.Status with details; unexpected ones leak nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlmodel import func, select

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.config import Component
from meshkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    error_reason,
    field_violations,
    status_from_error,
)
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceDefinition, ServiceRuntime
from meshkit.tables import OutboxEvent, ProbeEmission
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory

_identity = (lambda raw: raw, lambda raw: raw)


def _failing_handlers() -> grpc.GenericRpcHandler:
    """A test-only service whose methods fail in each of the ways the interceptor maps."""

    async def not_found(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise NotFound("facility", "F-404")

    async def precondition(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise FailedPrecondition("battery already recycled", reason="BATTERY_TERMINAL", metadata={"battery": "B1"})

    async def exists(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise AlreadyExists("participant", "91320000MA1XXXXX0X")

    async def crash(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    async def stream_crash(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> AsyncIterator[bytes]:
        yield b"first"
        raise RuntimeError("secret in a stream")

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity[0], response_serializer=_identity[1]
        )
        for name, fn in {"NotFound": not_found, "Precondition": precondition, "Exists": exists, "Crash": crash}.items()
    }
    handlers["StreamCrash"] = grpc.unary_stream_rpc_method_handler(
        stream_crash, request_deserializer=_identity[0], response_serializer=_identity[1]
    )
    return grpc.method_handlers_generic_handler("greenmesh.test.v1.FailingService", handlers)


def _register(server: grpc.aio.Server, _runtime: ServiceRuntime) -> Sequence[str]:
    server.add_generic_rpc_handlers((_failing_handlers(),))
    return []


FAILING = ServiceDefinition(component=Component.ENERGY, register=_register)


async def _call(runtime: ServiceRuntime, method: str) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/greenmesh.test.v1.FailingService/{method}"
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(b"", timeout=5)
        return raised.value


async def test_domain_errors_carry_details(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(FAILING, nats_url=nats_server.url)

    error = await _call(runtime, "NotFound")
    assert error.code() is grpc.StatusCode.NOT_FOUND
    status = status_from_error(error)
    assert status is not None
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("facility", "F-404")

    error = await _call(runtime, "Precondition")
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "BATTERY_TERMINAL"
    assert "battery already recycled" in (error.details() or "")

    error = await _call(runtime, "Exists")
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(error) == "ALREADY_EXISTS"


async def test_unexpected_errors_are_internal_without_internals(
    nats_server: NatsServer, make_runtime: RuntimeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = await make_runtime(FAILING, nats_url=nats_server.url)
    error = await _call(runtime, "Crash")
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "") and "postgres" not in (error.details() or "")
    assert "internal error (trace id " in (error.details() or "")
    # ... while the log keeps the cause for operators.
    assert any("hunter2" in (record.exc_text or str(record.exc_info)) for record in caplog.records)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        method: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/greenmesh.test.v1.FailingService/StreamCrash"
        )
        stream = method(b"", timeout=5)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for item in stream:
                received.append(item)
    assert received == [b"first"]
    assert raised.value.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (raised.value.details() or "")


async def test_invalid_probe_is_rejected_with_field_violations_and_writes_nothing(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = probe_pb2_grpc.MeshProbeServiceStub(channel)
        for request, field in [
            (probe_pb2.EmitProbeRequest(probe_id=""), "probe_id"),
            (probe_pb2.EmitProbeRequest(probe_id="x" * 65), "probe_id"),
            (probe_pb2.EmitProbeRequest(probe_id="ok", note="n" * 201), "note"),
            (probe_pb2.EmitProbeRequest(probe_id="bad\nid"), "probe_id"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.EmitProbe(request, timeout=5)
            assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert [v.field for v in field_violations(raised.value)] == [field]
    async with runtime.database.session() as session:
        for table in (OutboxEvent, ProbeEmission):
            assert (await session.exec(select(func.count()).select_from(table))).one() == 0
