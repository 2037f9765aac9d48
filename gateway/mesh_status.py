"""The mesh status: the health of every component, as the gateway sees it over gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from greenmesh.mesh.v1 import status_pb2, status_pb2_grpc
from meshkit.config import SERVICES, Component, MeshSettings
from meshkit.grpc_options import CHANNEL_OPTIONS

_STATE = {
    health_pb2.HealthCheckResponse.SERVING: status_pb2.SERVING_STATE_SERVING,
    health_pb2.HealthCheckResponse.NOT_SERVING: status_pb2.SERVING_STATE_NOT_SERVING,
}


@dataclass
class ServiceChannels:
    """One long-lived channel per backend service (channels reconnect by themselves)."""

    settings: MeshSettings
    # Client interceptors (tracing) applied to every channel, so calls continue the caller's trace.
    interceptors: list[Any] = field(default_factory=list)
    channels: dict[Component, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, component: Component) -> grpc.aio.Channel:
        if component not in self.channels:
            self.channels[component] = grpc.aio.insecure_channel(
                self.settings.service_addr(component), options=CHANNEL_OPTIONS, interceptors=self.interceptors
            )
        return self.channels[component]

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels.values()))
        self.channels.clear()


async def check_component(
    channels: ServiceChannels, component: Component, timeout: float
) -> status_pb2.ComponentStatus:
    endpoint = channels.settings.service_addr(component)
    stub = health_pb2_grpc.HealthStub(channels.channel(component))
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return status_pb2.ComponentStatus(
            component=component.value,
            endpoint=endpoint,
            state=status_pb2.SERVING_STATE_UNREACHABLE,
            detail=f"{error.code().name}: {error.details() or ''}".strip(),
        )
    return status_pb2.ComponentStatus(
        component=component.value,
        endpoint=endpoint,
        state=_STATE.get(reply.status, status_pb2.SERVING_STATE_UNSPECIFIED),
    )


async def mesh_status(
    channels: ServiceChannels, gateway_endpoint: str, gateway_serving: bool, timeout: float = 1.0
) -> status_pb2.GetMeshStatusResponse:
    checked = await asyncio.gather(*(check_component(channels, component, timeout) for component in SERVICES))
    gateway = status_pb2.ComponentStatus(
        component=Component.GATEWAY.value,
        endpoint=gateway_endpoint,
        state=status_pb2.SERVING_STATE_SERVING if gateway_serving else status_pb2.SERVING_STATE_NOT_SERVING,
    )
    components = [gateway, *checked]
    now = Timestamp()
    now.GetCurrentTime()
    return status_pb2.GetMeshStatusResponse(
        province_code=channels.settings.province,
        components=components,
        all_serving=all(c.state == status_pb2.SERVING_STATE_SERVING for c in components),
        checked_at=now,
    )


StatusSource = Callable[[], Awaitable[status_pb2.GetMeshStatusResponse]]


class MeshStatusServicer(status_pb2_grpc.MeshStatusServiceServicer):
    def __init__(self, status: StatusSource) -> None:
        self.status = status

    async def GetMeshStatus(
        self, request: status_pb2.GetMeshStatusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> status_pb2.GetMeshStatusResponse:
        return await self.status()
