"""The pipelined outbox relay against a real nats-server and SQLite: a large backlog reaches the stream in seq
order exactly once, a failure inside a window marks only what came before it, and the relay catches up after a
NATS outage. Each message still carries the trace context of its own PRODUCER span."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from sqlalchemy import update
from sqlmodel import col, select

from greenmesh.mesh.v1 import probe_pb2
from meshkit.bus import Bus
from meshkit.config import Component, MeshSettings
from meshkit.db import Database
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from meshkit.outbox import OutboxPublishError, OutboxRelay, append_event
from meshkit.subjects import event_subject, stream_name
from meshkit.tables import OutboxEvent
from services.registry.service import MIGRATIONS as REGISTRY_MIGRATIONS
from tests.conftest import eventually

PROVINCE = "32"
SUBJECT = event_subject(PROVINCE, Component.REGISTRY, probe_pb2.ProbeEmitted)
STREAM = stream_name(PROVINCE, Component.REGISTRY)
# No stream listens here until a test adds one: a publish gets "no responders" as its ack.
ORPHAN_SUBJECT = f"greenmesh.{PROVINCE}.orphan.v1.probe_emitted"


BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate(db, REGISTRY_MIGRATIONS)
    yield db
    await db.dispose()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path, exporter: InMemorySpanExporter) -> AsyncIterator[Bus]:
    """The registry's connection, as its runtime would hold it, with its spans recorded."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    options: dict[str, Any] = {"nats_url": nats_server.url, "nats_reconnect_wait_seconds": 0.2}
    settings = MeshSettings(data_dir=tmp_path / "data", **options)
    connection = Bus(settings=settings, component=Component.REGISTRY, tracer=provider.get_tracer("tests"))
    await connection.connect()
    yield connection
    await connection.close()


async def fill(
    database: Database, count: int, *, subject: str = SUBJECT, note: str = "", writer: Tracer | None = None
) -> None:
    """Commit `count` events, each (when a writer tracer is given) written inside a span of its own."""
    async with database.transaction() as session:
        for index in range(count):
            span = writer.start_as_current_span("write") if writer else contextlib.nullcontext()
            with span:
                append_event(session, subject, probe_pb2.ProbeEmitted(probe_id=f"probe-{index}", note=note))


async def outbox(database: Database) -> list[OutboxEvent]:
    async with database.session() as session:
        return list((await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all())


async def stream_messages(nats_url: str, stream: str = STREAM, *, expected: int | None = None) -> list[Msg]:
    """Every message of a stream, in stream order (waiting until `expected` are stored, when given)."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()

        async def stored() -> bool:
            return (await js.stream_info(stream)).state.messages == expected

        if expected is not None:
            await eventually(stored)
        info = await js.stream_info(stream)
        if info.state.messages == 0:
            return []
        assert info.config.subjects
        subscription = await js.pull_subscribe(
            info.config.subjects[0], stream=stream, config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE)
        )
        messages: list[Msg] = []
        while len(messages) < info.state.messages:
            messages.extend(await subscription.fetch(1000, timeout=5))
        return messages
    finally:
        await client.close()


def message_ids(messages: list[Msg]) -> list[str]:
    return [(message.headers or {})["Nats-Msg-Id"] for message in messages]


@BOTH
async def test_a_large_backlog_reaches_the_stream_in_seq_order_exactly_once(
    database: Database, bus: Bus, nats_server: NatsServer
) -> None:
    await fill(database, 5000)
    ids = [row.event_id for row in await outbox(database)]
    relay = OutboxRelay(database, bus, batch_size=1000)

    assert await relay.publish_pending() == 5000
    assert await relay.pending_count() == 0
    assert message_ids(await stream_messages(nats_server.url)) == ids

    # A relay that crashed between publishing and marking sends every window again: JetStream drops the copies.
    async with database.transaction() as session:
        await session.exec(update(OutboxEvent).values(published_at=None))
    assert await relay.publish_pending() == 5000
    assert message_ids(await stream_messages(nats_server.url)) == ids


@BOTH
async def test_a_failed_ack_mid_window_marks_only_the_rows_before_it(
    database: Database, bus: Bus, nats_server: NatsServer
) -> None:
    await fill(database, 1500)
    await fill(database, 1, subject=ORPHAN_SUBJECT)
    await fill(database, 1499)
    ids = [row.event_id for row in await outbox(database)]
    relay = OutboxRelay(database, bus, batch_size=1000)

    with pytest.raises(OutboxPublishError, match="NoStreamResponseError"):
        await relay.publish_pending()
    rows = await outbox(database)
    assert [row.published_at is not None for row in rows] == [True] * 1500 + [False] * 1500
    assert rows[1500].attempts == 1 and "NoStreamResponseError" in (rows[1500].last_error or "")
    assert all(row.attempts == 0 for row in rows[1501:])
    # The publishes behind the failure went out in the same pipelined windows and were stored, unmarked.
    assert message_ids(await stream_messages(nats_server.url, expected=2999)) == ids[:1500] + ids[1501:]

    # Once a stream takes that subject, the next pass sends from the failed row on, and nothing twice.
    await bus.js.add_stream(name="ORPHANS", subjects=[f"greenmesh.{PROVINCE}.orphan.>"])
    assert await relay.publish_pending() == 1500
    assert await relay.pending_count() == 0
    assert message_ids(await stream_messages(nats_server.url)) == ids[:1500] + ids[1501:]
    assert message_ids(await stream_messages(nats_server.url, "ORPHANS")) == [ids[1500]]


@SQLITE
async def test_a_message_too_large_to_send_stops_the_pass_there(
    database: Database, bus: Bus, nats_server: NatsServer
) -> None:
    await fill(database, 700)
    await fill(database, 1, note="x" * (bus.client.max_payload + 1 if bus.client else 0))
    await fill(database, 499)
    rows = await outbox(database)
    ids = [row.event_id for row in rows]
    relay = OutboxRelay(database, bus, batch_size=500)

    with pytest.raises(OutboxPublishError, match="MaxPayloadError"):
        await relay.publish_pending()
    rows = await outbox(database)
    assert [row.published_at is not None for row in rows] == [True] * 700 + [False] * 500
    assert rows[700].attempts == 1 and "MaxPayloadError" in (rows[700].last_error or "")
    # Nothing after the message that could not be sent went out, in its window or the next.
    await asyncio.sleep(0.5)
    assert message_ids(await stream_messages(nats_server.url)) == ids[:700]

    # With the event made sendable, the next pass sends the rest in order.
    async with database.transaction() as session:
        small = probe_pb2.ProbeEmitted(probe_id="probe-resized").SerializeToString()
        await session.exec(update(OutboxEvent).where(col(OutboxEvent.seq) == rows[700].seq).values(payload=small))
    assert await relay.publish_pending() == 500
    assert message_ids(await stream_messages(nats_server.url)) == ids


@SQLITE
async def test_the_relay_retries_while_nats_is_down_and_catches_up(
    database: Database, bus: Bus, nats_server: NatsServer
) -> None:
    relay = OutboxRelay(database, bus, batch_size=500, poll_seconds=0.05)
    bus.listeners.append(lambda up: relay.notify() if up else None)  # as the runtime wires it
    task = asyncio.create_task(relay.run())

    async def drained() -> bool:
        return await relay.pending_count() == 0

    try:
        await fill(database, 1000)
        relay.notify()
        await eventually(drained)

        nats_server.kill()

        async def disconnected() -> bool:
            return not bus.connected

        await eventually(disconnected)
        await fill(database, 2500)
        relay.notify()
        # A pass while NATS is down sends nothing and notes the error on the first waiting row only.
        with pytest.raises(OutboxPublishError):
            await relay.publish_pending()
        waiting = [row for row in await outbox(database) if row.published_at is None]
        assert len(waiting) == 2500
        assert waiting[0].attempts >= 1 and waiting[0].last_error
        assert all(row.attempts == 0 for row in waiting[1:])

        nats_server.start()
        await eventually(drained, timeout=30)
    finally:
        relay.stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ids = [row.event_id for row in await outbox(database)]
    assert message_ids(await stream_messages(nats_server.url)) == ids


@SQLITE
async def test_each_message_carries_the_context_of_its_own_producer_span(
    database: Database, bus: Bus, nats_server: NatsServer, exporter: InMemorySpanExporter
) -> None:
    writer = TracerProvider().get_tracer("writer")
    await fill(database, 30, writer=writer)
    rows = await outbox(database)
    relay = OutboxRelay(database, bus, batch_size=8)

    assert await relay.publish_pending() == 30
    producers = {
        str((span.attributes or {})["messaging.message.id"]): span
        for span in exporter.get_finished_spans()
        if span.kind is SpanKind.PRODUCER
    }
    messages = await stream_messages(nats_server.url)
    assert len(producers) == len(messages) == 30
    for row, message in zip(rows, messages, strict=True):
        _, written_trace, written_span, _ = row.headers_json.split('"traceparent": "')[1].split('"')[0].split("-")
        _, sent_trace, sent_span, _ = (message.headers or {})["traceparent"].split("-")
        producer = producers[row.event_id]
        assert producer.context is not None and producer.parent is not None
        # writer's span -> PRODUCER span (the relay's send) -> the context consumers continue from
        assert format(producer.parent.span_id, "016x") == written_span
        assert format(producer.context.trace_id, "032x") == written_trace == sent_trace
        assert format(producer.context.span_id, "016x") == sent_span
        assert (producer.attributes or {})["messaging.nats.stream.sequence"] == message.metadata.sequence.stream
