"""Idempotent consumers: a message delivered again is acknowledged but applied once."""

from __future__ import annotations

import asyncio

import grpc
import nats
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from sqlalchemy.exc import IntegrityError
from sqlmodel import func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.bus import MSG_ID_HEADER
from meshkit.db import Database
from meshkit.inbox import idempotent_batch_handler, idempotent_handler
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
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


# ---- a batch in one transaction (meshkit.inbox.idempotent_batch_handler) ------------------------------------------


async def publish(js: JetStreamContext, message_id: str) -> None:
    await js.publish("batch.test", message_id.encode(), headers={MSG_ID_HEADER: message_id})


async def test_a_batch_is_applied_once_in_order_and_falls_back_to_one_by_one(
    nats_server: NatsServer, database_url: str
) -> None:
    database = Database(database_url)
    await migrate(database, None)
    applied: list[str] = []
    attempts: list[list[str]] = []
    refuse: list[Exception] = []

    async def apply(_session: AsyncSession, messages: list[Msg]) -> None:
        attempts.append([m.data.decode() for m in messages])
        if refuse:
            raise refuse.pop()
        applied.extend(m.data.decode() for m in messages)

    async def one(_session: AsyncSession, message: Msg) -> None:
        applied.append("one:" + message.data.decode())

    fallback = idempotent_handler(database, "batch-test", {"": one})
    handle = idempotent_batch_handler(database, "batch-test", apply, fallback)
    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        # a duplicate window short enough that a repeated message id is stored again (as after a day)
        await js.add_stream(api.StreamConfig(name="BATCH", subjects=["batch.>"], duplicate_window=0.1))
        for message_id in ("a", "b", "c"):
            await publish(js, message_id)
        await asyncio.sleep(0.3)
        await publish(js, "b")
        reader = await js.pull_subscribe("batch.test", durable="reader", stream="BATCH")
        await handle(await reader.fetch(10, timeout=2))
        assert applied == ["a", "b", "c"]  # the repeat of b within the batch: once
        info = await js.consumer_info("BATCH", "reader")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)  # all four acknowledged

        # Delivered again (a crash between commit and ack): acknowledged, nothing applied, apply not even called.
        replay = await js.pull_subscribe(
            "batch.test",
            durable="replay",
            stream="BATCH",
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        )
        attempts.clear()
        await handle(await replay.fetch(10, timeout=2))
        assert applied == ["a", "b", "c"] and attempts == []

        # A failure rolls the batch back: nothing recorded, the error goes to the bus (which naks the batch).
        await publish(js, "d")
        await publish(js, "e")
        batch = await reader.fetch(10, timeout=2)
        refuse.append(RuntimeError("the effect failed"))
        with pytest.raises(RuntimeError):
            await handle(batch)
        async with database.session() as session:
            recorded = set((await session.exec(select(InboxMessage.message_id))).all())
        assert recorded == {"a", "b", "c"}
        # A unique violation (another replica): the same batch message by message, each applied once and acked.
        refuse.append(IntegrityError("INSERT INTO inbox_message", {}, Exception("another replica recorded it")))
        await handle(batch)
        assert applied == ["a", "b", "c", "one:d", "one:e"]
        info = await js.consumer_info("BATCH", "reader")
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await client.close()
        await database.dispose()
