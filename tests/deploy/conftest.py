"""Fixtures of the national-level tests: a hub and two province leaf nodes (real nats-servers), with each province's
registry and flows running in this process on SQLite, linked to the hub (`GREENMESH_NATIONAL_LINK=true`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest

from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.config import Component
from meshkit.localinfra import NatsServer
from meshkit.national import ensure_national_streams
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory
from tests.deploy.test_national_nats import national_servers
from tests.flows.conftest import Flows
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import Registry

PROVINCES = ("32", "44")


@dataclass
class Province:
    code: str
    nats: NatsServer
    registry: Registry
    flows: Flows


@dataclass
class Nation:
    hub: NatsServer
    provinces: dict[str, Province]
    data_dir: Path


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[NatsServer, dict[str, NatsServer]]]:
    yield from national_servers(tmp_path, PROVINCES)


@pytest.fixture
async def nation(
    servers: tuple[NatsServer, dict[str, NatsServer]], make_runtime: RuntimeFactory, tmp_path: Path
) -> AsyncIterator[Nation]:
    hub, nats_servers = servers
    connection = await nats.connect(hub.url)
    try:  # what `greenmesh national sync` declares, for the components that carry transfers
        await ensure_national_streams(connection.jetstream(), PROVINCES, [Component.REGISTRY, Component.FLOWS])
    finally:
        await connection.close()
    provinces: dict[str, Province] = {}
    channels = []
    # One after another: Alembic's migration context is process-global.
    for code, server in nats_servers.items():
        registry_runtime = await make_runtime(
            REGISTRY,
            nats_url=server.url,
            database_url=f"sqlite+aiosqlite:///{tmp_path / f'registry{code}.db'}",
            province=code,
        )
        flows_runtime = await make_runtime(
            FLOWS,
            nats_url=server.url,
            database_url=f"sqlite+aiosqlite:///{tmp_path / f'flows{code}.db'}",
            province=code,
            national_link=True,
        )
        await wait_health(registry_runtime, SERVING)
        await wait_health(flows_runtime, SERVING)
        registry_channel = grpc.aio.insecure_channel(f"127.0.0.1:{registry_runtime.port}")
        flows_channel = grpc.aio.insecure_channel(f"127.0.0.1:{flows_runtime.port}")
        channels += [registry_channel, flows_channel]
        registry = Registry(registry_runtime, registry_pb2_grpc.RegistryServiceStub(registry_channel))
        flows = Flows(flows_runtime, flows_pb2_grpc.FlowServiceStub(flows_channel), registry)
        provinces[code] = Province(code, server, registry, flows)
    yield Nation(hub, provinces, tmp_path / "data")
    for channel in channels:
        await channel.close()
