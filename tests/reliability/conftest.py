"""Fixtures of the fault tests: the registry (in this process, SQLite) with the recycling network of
`tests/flows/conftest.py`, and the flows service either in this process (`inprocess_mesh`) or as a process of its
own (`FlowsProcess`, in the tests that kill it)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.flows.service import DEFINITION as FLOWS
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory
from tests.flows.conftest import Flows, Network, build_network
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import Registry
from tests.reliability.helpers import Chain, Reporter


@dataclass
class Mesh:
    """The registry and the flows service in this process, the network registered and in the directory."""

    nats: NatsServer
    registry: Registry
    flows: Flows
    network: Network
    database_url: str

    @property
    def runtime(self) -> ServiceRuntime:
        return self.flows.runtime

    def reporter(self, **options: Any) -> Reporter:
        return Reporter(self.flows.stub, self.flows.key, Chain.of(self.network), **options)


MeshFactory = Callable[..., Awaitable[Mesh]]


@pytest.fixture
async def registry_runtime(nats_server: NatsServer, make_runtime: RuntimeFactory) -> ServiceRuntime:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    return runtime


@pytest.fixture
async def registry(registry_runtime: ServiceRuntime) -> AsyncIterator[Registry]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry_runtime.port}") as channel:
        yield Registry(registry_runtime, registry_pb2_grpc.RegistryServiceStub(channel))


@pytest.fixture
async def inprocess_mesh(
    nats_server: NatsServer, make_runtime: RuntimeFactory, registry: Registry
) -> AsyncIterator[MeshFactory]:
    """Start the flows service in this process on a database URL (and settings) of the test's choosing."""
    async with contextlib.AsyncExitStack() as stack:

        async def factory(database_url: str, **settings: Any) -> Mesh:
            runtime = await make_runtime(FLOWS, nats_url=nats_server.url, database_url=database_url, **settings)
            await wait_health(runtime, SERVING)
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}"))
            flows = Flows(runtime, flows_pb2_grpc.FlowServiceStub(channel), registry)
            return Mesh(nats_server, registry, flows, await build_network(registry, flows), database_url)

        yield factory
