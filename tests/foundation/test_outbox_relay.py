"""The transactional outbox: a write commits while NATS is down, and its event reaches the stream
exactly once after NATS returns, even when the relay runs again over already-published rows."""

from __future__ import annotations

import grpc
import nats
import pytest
from nats.aio.msg import Msg
from sqlalchemy import update
from sqlmodel import col, select

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.localinfra import NatsServer
from meshkit.outbox import OutboxPublishError
from meshkit.server import ServiceRuntime
from meshkit.subjects import event_subject, stream_name
from meshkit.tables import OutboxEvent, ProbeEmission
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import NOT_SERVING, SERVING, wait_health


async def emit(runtime: ServiceRuntime, probe_id: str) -> probe_pb2.EmitProbeResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        return await probe_pb2_grpc.MeshProbeServiceStub(channel).EmitProbe(
            probe_pb2.EmitProbeRequest(probe_id=probe_id, note="outbox test"), timeout=5
        )


async def stream_messages(nats_url: str, runtime: ServiceRuntime) -> list[Msg]:
    """Every message in the registry stream on the probe subject, read with an ephemeral consumer."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        subject = event_subject(runtime.settings.province, runtime.component, probe_pb2.ProbeEmitted)
        info = await js.stream_info(stream_name(runtime.settings.province, runtime.component))
        if info.state.messages == 0:
            return []
        subscription = await js.pull_subscribe(subject, stream=info.config.name)
        messages: list[Msg] = []
        try:
            while True:
                batch = await subscription.fetch(100, timeout=0.5)
                messages.extend(batch)
        except TimeoutError:
            pass
        return messages
    finally:
        await client.close()


async def unpublished(runtime: ServiceRuntime) -> list[OutboxEvent]:
    async with runtime.database.session() as session:
        rows = await session.exec(select(OutboxEvent).where(col(OutboxEvent.published_at).is_(None)))
        return list(rows.all())


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_write_during_nats_outage_is_published_once_after(
    nats_server: NatsServer, make_runtime: RuntimeFactory, database_url: str
) -> None:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url, database_url=database_url)
    await wait_health(runtime, SERVING)

    nats_server.kill()
    await wait_health(runtime, NOT_SERVING)

    # The domain write commits although NATS is down: the event waits in the outbox.
    reply = await emit(runtime, "probe-during-outage")
    assert reply.created
    async with runtime.database.session() as session:
        assert await session.get(ProbeEmission, "probe-during-outage") is not None
    pending = await unpublished(runtime)
    assert [row.event_id for row in pending] == [reply.event_id]

    nats_server.start()
    await wait_health(runtime, SERVING)

    async def relayed() -> bool:
        return not await unpublished(runtime)

    await eventually(relayed)
    messages = await stream_messages(nats_server.url, runtime)
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.headers] == [reply.event_id]
    assert probe_pb2.ProbeEmitted.FromString(messages[0].data).probe_id == "probe-during-outage"

    # A relay that crashed after publishing but before marking the row publishes it again:
    # JetStream's de-duplication on Nats-Msg-Id keeps the stream at one copy.
    async with runtime.database.transaction() as session:
        await session.exec(update(OutboxEvent).values(published_at=None))
    assert await runtime.relay.publish_pending() == 1
    messages_after = await stream_messages(nats_server.url, runtime)
    assert len(messages_after) == 1


async def test_relay_keeps_order_and_records_failures(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    nats_server.kill()
    await wait_health(runtime, NOT_SERVING)
    ids = [(await emit(runtime, f"ordered-{i}")).event_id for i in range(5)]

    # A pass while NATS is down publishes nothing and notes the error on the first row only.
    with pytest.raises(OutboxPublishError):
        await runtime.relay.publish_pending()
    rows = await unpublished(runtime)
    assert [row.event_id for row in rows] == ids
    assert rows[0].attempts >= 1 and rows[0].last_error
    assert all(row.attempts == 0 for row in rows[1:])

    nats_server.start()

    async def drained() -> bool:
        return not await unpublished(runtime)

    await eventually(drained)
    messages = await stream_messages(nats_server.url, runtime)
    assert [m.headers["Nats-Msg-Id"] for m in messages if m.headers] == ids


async def test_emit_is_idempotent_on_probe_id(nats_server: NatsServer, make_runtime: RuntimeFactory) -> None:
    runtime = await make_runtime(REGISTRY, nats_url=nats_server.url)
    await wait_health(runtime, SERVING)
    first = await emit(runtime, "same-probe")
    second = await emit(runtime, "same-probe")
    assert first.created and not second.created
    assert first.event_id == second.event_id

    async def relayed() -> bool:
        return len(await stream_messages(nats_server.url, runtime)) == 1

    await eventually(relayed)
    async with runtime.database.session() as session:
        count = len((await session.exec(select(OutboxEvent))).all())
    assert count == 1
