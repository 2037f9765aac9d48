"""Event subscriptions across replicas: a stream open on one flows replica hears at once of events another
replica recorded (their FlowEventRecorded on NATS), and nothing is subscribed while no stream is open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from meshkit.localinfra import NatsServer
from services.flows.service import DEFINITION as FLOWS
from services.flows.servicer import SUBSCRIPTION_POLL_SECONDS
from tests.conftest import RuntimeFactory, eventually
from tests.flows.conftest import Flows, Network
from tests.flows.test_flows_reporting import collected
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import PLATFORM


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # Both replicas share one database; SQLite is enough to show the wake-up (it is not about storage).
    return f"sqlite+aiosqlite:///{tmp_path / 'flows.db'}"


async def test_a_stream_on_one_replica_hears_of_events_recorded_by_another(
    flows: Flows, network: Network, nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str
) -> None:
    other = await make_runtime(FLOWS, nats_url=nats_server.url, database_url=database_url)
    await wait_health(other, SERVING)
    servicer = flows.runtime.state.get("servicer")
    wakeups = getattr(servicer, "wakeups", None)
    assert wakeups is not None
    assert wakeups._subscriptions == []  # no stream open: nothing subscribed
    stream = flows.stub.SubscribeEvents(
        fpb.SubscribeEventsRequest(biz_steps=[fpb.BIZ_STEP_COLLECTING]),
        metadata=tuple(PLATFORM.metadata(flows.key)),
        timeout=30,
    )
    await asyncio.sleep(0.3)  # the stream is open and waiting

    async def subscribed() -> bool:
        return bool(wakeups._subscriptions)

    await eventually(subscribed)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
        on_other = Flows(other, flows_pb2_grpc.FlowServiceStub(channel), flows.registry)
        battery = network.serial()
        reported_at = asyncio.get_running_loop().time()
        await collected(on_other, network, battery, day=0)
        item = await stream.read()
        waited = asyncio.get_running_loop().time() - reported_at
    assert isinstance(item, fpb.SubscribeEventsResponse)
    assert item.event.batteries[0].value == battery.value
    assert wakeups.heard >= 1  # woken by NATS …
    assert waited < SUBSCRIPTION_POLL_SECONDS  # … not by the once-a-second poll
    stream.cancel()

    async def unsubscribed() -> bool:
        return not wakeups._subscriptions

    await eventually(unsubscribed)
