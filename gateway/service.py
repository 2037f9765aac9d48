"""The gateway as the shared runtime runs it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence

import grpc
import uvicorn

from gateway.http import EmbeddedServer, build_app, serve_http
from gateway.mesh_status import MeshStatusServicer, ServiceChannels, mesh_status
from greenmesh.mesh.v1 import status_pb2, status_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime
from meshkit.telemetry import client_interceptors


def _status_source(runtime: ServiceRuntime, channels: ServiceChannels):  # type: ignore[no-untyped-def]
    async def status() -> status_pb2.GetMeshStatusResponse:
        endpoint = f"{runtime.settings.grpc_host}:{runtime.port}"
        return await mesh_status(channels, endpoint, runtime.readiness.ready)

    return status


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    channels = ServiceChannels(runtime.settings, interceptors=client_interceptors(runtime.telemetry))
    runtime.state["channels"] = channels
    status_pb2_grpc.add_MeshStatusServiceServicer_to_server(
        MeshStatusServicer(_status_source(runtime, channels)), server
    )
    return [status_pb2.DESCRIPTOR.services_by_name["MeshStatusService"].full_name]


async def _run_http(runtime: ServiceRuntime) -> None:
    channels = runtime.state["channels"]
    assert isinstance(channels, ServiceChannels)
    config = uvicorn.Config(
        build_app(_status_source(runtime, channels)),
        host=runtime.settings.http_host,
        port=runtime.settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = EmbeddedServer(config)
    started = asyncio.Event()
    runtime.state["http_server"] = server
    runtime.state["http_started"] = started
    try:
        await serve_http(server, started)
    finally:
        await channels.close()


def background(runtime: ServiceRuntime) -> Sequence[Coroutine[None, None, None]]:
    return [_run_http(runtime)]


DEFINITION = ServiceDefinition(
    component=Component.GATEWAY,
    register=register,
    uses_database=False,
    uses_bus=False,
    background=background,
)
