"""Asking components for their health over the standard grpc.health.v1 service."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.grpc_options import CHANNEL_OPTIONS


async def check(endpoint: str, timeout: float = 1.0) -> str:
    """SERVING, NOT_SERVING, or UNREACHABLE (with the reason) for one endpoint."""
    async with grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            return f"UNREACHABLE ({error.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def check_all(endpoints: dict[str, str], timeout: float = 1.0) -> dict[str, str]:
    names = list(endpoints)
    results = await asyncio.gather(*(check(endpoints[name], timeout) for name in names))
    return dict(zip(names, results, strict=True))


async def wait_serving(endpoint: str, timeout: float) -> bool:
    """Watch until SERVING or the timeout passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check(endpoint, timeout=1.0) == "SERVING":
            return True
        await asyncio.sleep(0.2)
    return False
