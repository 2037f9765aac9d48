"""Health follows the dependencies: SERVING only while the database and NATS are both up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshkit.localinfra import EmbeddedPostgres, NatsServer, free_port
from meshkit.server import ServiceRuntime
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(runtime: ServiceRuntime, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return int(reply.status)


async def wait_health(runtime: ServiceRuntime, expected: int, timeout: float = 15.0) -> None:
    async def reached() -> bool:
        return await health_of(runtime) == expected

    await eventually(reached, timeout=timeout)


async def test_serving_only_after_nats_is_reachable(tmp_path: Path, make_runtime: RuntimeFactory) -> None:
    # NATS is not running yet: the service starts, answers health, and says NOT_SERVING.
    nats = NatsServer(store_dir=tmp_path / "nats", port=free_port())
    runtime = await make_runtime(REGISTRY, nats_url=nats.url)
    assert await health_of(runtime) == NOT_SERVING
    nats.start()
    try:
        await wait_health(runtime, SERVING)
        # Per-service status too, for probes that name the service.
        assert await health_of(runtime, "greenmesh.mesh.v1.MeshProbeService") == SERVING
    finally:
        nats.stop()


async def test_nats_outage_turns_not_serving_and_back(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(FLOWS, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)

    nats_server.kill()
    await wait_health(runtime, NOT_SERVING)

    nats_server.start()  # same port, same store
    await wait_health(runtime, SERVING)


@pytest.mark.slow
async def test_database_outage_turns_not_serving_and_back(
    tmp_path: Path, nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    postgres = EmbeddedPostgres(data_dir=tmp_path / "pg").start()
    try:
        runtime = await make_runtime(REGISTRY, nats_url=nats_server.url, database_url=postgres.url("postgres"))
        await wait_health(runtime, SERVING)

        postgres.pause()
        await wait_health(runtime, NOT_SERVING)

        postgres.resume()
        await wait_health(runtime, SERVING, timeout=30)
        await runtime.stop()  # before the server goes away for good
    finally:
        postgres.stop()


async def test_shutdown_announces_not_serving_before_closing(
    nats_server: NatsServer, make_runtime: RuntimeFactory
) -> None:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    seen: list[int] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        seen.append(first.status)
        stopping = asyncio.create_task(runtime.stop())
        try:
            while (update := await watch.read()) is not grpc.aio.EOF:
                seen.append(update.status)
        except grpc.aio.AioRpcError:
            pass  # the server cancelled the stream once the grace period ended
        await stopping
    assert seen[0] == SERVING
    assert NOT_SERVING in seen[1:], seen


async def test_the_database_is_pinged_every_interval_not_in_a_busy_loop(tmp_path: Path) -> None:
    """Each ping reports the same state again; that must not wake the watcher at once (it did: an idle service
    pinged its database thousands of times a second and burnt most of a CPU)."""
    from grpc_health.v1._async import HealthServicer

    from meshkit.db import Database
    from meshkit.readiness import Readiness

    class CountingDatabase(Database):
        pings = 0

        async def ping(self, timeout: float = 2.0) -> bool:
            CountingDatabase.pings += 1
            return await super().ping(timeout)

    database = CountingDatabase(f"sqlite+aiosqlite:///{tmp_path / 'ping.db'}")
    readiness = Readiness(HealthServicer(), [], needs_nats=False)
    watcher = asyncio.create_task(readiness.run(database, ping_seconds=0.2))
    try:
        await asyncio.sleep(1.0)
        assert readiness.ready
        # About 5 pings in a second at 0.2 s; allow for a slow machine, but not for a loop.
        assert 2 <= CountingDatabase.pings <= 8, CountingDatabase.pings
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await database.dispose()
