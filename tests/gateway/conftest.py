"""A real province mesh behind a real gateway: nats-server, registry, flows and energy (SQLite files) and the
gateway, all on port 0, with a recycling network registered and an API key for each kind of caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.http import EmbeddedServer
from gateway.service import DEFINITION as GATEWAY
from greenmesh.registry.v1 import registry_pb2 as rpb
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.energy.service import DEFINITION as ENERGY
from tests.conftest import RuntimeFactory, eventually
from tests.flows.conftest import Flows, Network, build_network, flows, flows_settings  # noqa: F401 (fixtures)
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import NANSHAN, PLATFORM, Registry


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The gateway tests are about the front door: the services run on SQLite only."""
    return f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Every span of every runtime of the test (the services' and the gateway's), exported as it ends."""
    return InMemorySpanExporter()


@pytest.fixture
def make_runtime(make_runtime: RuntimeFactory, spans: InMemorySpanExporter) -> RuntimeFactory:
    """The shared factory, with each runtime's spans collected in `spans`."""

    async def factory(definition: Any, **kwargs: Any) -> ServiceRuntime:
        kwargs.setdefault("span_processors", [SimpleSpanProcessor(spans)])
        return await make_runtime(definition, **kwargs)

    return factory


@pytest.fixture
def gateway_settings() -> dict[str, Any]:
    """Settings overrides for the gateway (a test module redefines this fixture to change them)."""
    return {}


@dataclass
class Keys:
    """An API key per kind of caller, issued by the registry like any other."""

    platform: str
    regulator: str  # Jiangsu (320000), where the network is
    other_regulator: str  # Guangdong (440000)
    producer: str
    enterprise_a: str  # the recycling outlet's operator
    enterprise_b: str  # the sorting centre's operator
    by_key: dict[str, str] = field(default_factory=dict)  # key -> participant id


@dataclass
class Mesh:
    flows: Flows
    network: Network
    gateway: ServiceRuntime
    energy: ServiceRuntime
    keys: Keys
    grpc_channel: grpc.aio.Channel
    http: httpx.AsyncClient

    @property
    def registry(self) -> Registry:
        return self.flows.registry

    @property
    def http_port(self) -> int:
        server = self.gateway.state["http_server"]
        assert isinstance(server, EmbeddedServer)
        return server.bound_port


async def issue_key(registry: Registry, participant: rpb.Participant, label: str = "test") -> str:
    reply = await registry.call(
        "IssueCredential", rpb.IssueCredentialRequest(participant_id=participant.participant_id, label=label), PLATFORM
    )
    return str(reply.api_key)


@pytest.fixture
async def mesh(
    flows: Flows,  # noqa: F811 (the fixture imported above)
    nats_server: NatsServer,
    make_runtime: RuntimeFactory,
    gateway_settings: dict[str, Any],
) -> AsyncIterator[Mesh]:
    registry = flows.registry
    network = await build_network(registry, flows)
    energy = await make_runtime(ENERGY, nats_url=nats_server.url)
    addresses = {
        "registry_addr": f"127.0.0.1:{registry.runtime.port}",
        "flows_addr": f"127.0.0.1:{flows.runtime.port}",
        "energy_addr": f"127.0.0.1:{energy.port}",
    }
    gateway = await make_runtime(GATEWAY, nats_url=nats_server.url, **addresses, **gateway_settings)
    await wait_health(energy, SERVING)
    await wait_health(gateway, SERVING)

    async def http_started() -> bool:
        started = gateway.state.get("http_started")
        return started is not None and started.is_set()  # type: ignore[attr-defined]

    async def watching() -> bool:
        return "registry_watch" in gateway.state

    await eventually(http_started)
    await eventually(watching)
    platform = await registry.participant("PLATFORM_OPERATOR")
    regulator = await registry.participant("REGULATOR", supervised="320000")
    other = await registry.participant("REGULATOR", division=NANSHAN[0], supervised="440000")
    keys = Keys(
        platform=await issue_key(registry, platform),
        regulator=await issue_key(registry, regulator),
        other_regulator=await issue_key(registry, other),
        producer=await issue_key(registry, network.producer.participant),
        enterprise_a=await issue_key(registry, network.outlet.participant),
        enterprise_b=await issue_key(registry, network.sorter.participant),
    )
    server = gateway.state["http_server"]
    assert isinstance(server, EmbeddedServer)
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.bound_port}", timeout=20) as http,
    ):
        yield Mesh(flows, network, gateway, energy, keys, channel, http)
