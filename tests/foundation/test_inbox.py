"""Idempotent consumers: a message delivered again is acknowledged but applied once."""

from __future__ import annotations

import grpc
import nats
from nats.js import api
from sqlmodel import func, select

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.inbox import idempotent_handler
from meshkit.localinfra import NatsServer
from meshkit.probe import record_probe_receipt
from meshkit.subjects import event_subject, stream_name
from meshkit.tables import InboxMessage, ProbeReceipt
from services.energy.service import DEFINITION as ENERGY
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import SERVING, wait_health


async def test_redelivered_message_is_applied_once(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    registry = await make_runtime(REGISTRY, nats_url=nats_server.url)
    energy = await make_runtime(ENERGY, nats_url=nats_server.url)
    await wait_health(registry, SERVING)
    await wait_health(energy, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.port}") as channel:
        stub = probe_pb2_grpc.MeshProbeServiceStub(channel)
        for i in range(3):
            await stub.EmitProbe(probe_pb2.EmitProbeRequest(probe_id=f"redeliver-{i}"), timeout=5)

    async def receipts() -> int:
        async with energy.database.session() as session:
            return int((await session.exec(select(func.count()).select_from(ProbeReceipt))).one())

    async def all_applied() -> bool:
        return await receipts() == 3

    await eventually(all_applied)

    # Deliver every message of the stream again to the same inbox (as a redelivery after a crash
    # between commit and ack would): each is acknowledged, none is applied a second time.
    durable = "energy--registry"
    handler = idempotent_handler(
        energy.database, durable, {probe_pb2.ProbeEmitted.DESCRIPTOR.full_name: record_probe_receipt}
    )
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        subscription = await js.pull_subscribe(
            event_subject("32", "registry", probe_pb2.ProbeEmitted),
            durable="replay-for-test",
            stream=stream_name("32", "registry"),
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        )
        replayed = await subscription.fetch(10, timeout=2)
        assert len(replayed) == 3
        for message in replayed:
            await handler(message)
    finally:
        await client.close()
    assert await receipts() == 3
    async with energy.database.session() as session:
        recorded = (await session.exec(select(func.count()).select_from(InboxMessage))).one()
    assert recorded == 3
