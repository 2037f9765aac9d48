"""Faults of a consumer (meshkit.bus pull consumers with meshkit.inbox idempotent handlers):

- it crashes half-way through a message (the effect raises after writing part of its work), or it crashes
  after committing but before acknowledging: the transaction rolls back (or is kept), the message is delivered
  again, and its effect is applied exactly once. (A message delivered again after a clean commit and ack is
  covered by tests/foundation/test_inbox.py::test_redelivered_message_is_applied_once.)
- it is slow: what it holds in flight stays bounded by its fetch batch (and the consumer's max_ack_pending),
  the backlog waits in the JetStream stream rather than in the consumer's memory, and nothing is lost.

The consumer is the runtime's own machinery (a `Bus` with a `ConsumerSpec` and `idempotent_handler`) on a
real nats-server and a SQLite database migrated with the meshkit branch (inbox and probe tables)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from opentelemetry import trace
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.mesh.v1 import probe_pb2
from meshkit.bus import EVENT_TYPE_HEADER, MSG_ID_HEADER, Bus, ConsumerSpec
from meshkit.config import Component, MeshSettings
from meshkit.db import Database
from meshkit.inbox import idempotent_handler, message_id_of
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from meshkit.probe import record_probe_receipt
from meshkit.subjects import event_subject, stream_name
from meshkit.tables import InboxMessage, ProbeReceipt
from tests.conftest import eventually
from tests.reliability.helpers import PROVINCE, Tally, rss_bytes

SOURCE = Component.FLOWS
SUBJECT = event_subject(PROVINCE, SOURCE, probe_pb2.ProbeEmitted)
STREAM = stream_name(PROVINCE, SOURCE)
CONSUMER = "energy--flows"
EFFECT_TYPE = probe_pb2.ProbeEmitted.DESCRIPTOR.full_name

Effect = Callable[[AsyncSession, Msg], Awaitable[None]]


@dataclass
class Rig:
    database: Database
    bus: Bus
    spec: ConsumerSpec
    nats_url: str

    async def applied(self) -> Counter[str]:
        """Receipts per probe id: the effect's rows."""
        async with self.database.session() as session:
            rows = await session.exec(select(ProbeReceipt.probe_id))
            return Counter(rows.all())

    async def inbox_rows(self) -> int:
        async with self.database.session() as session:
            return int(
                (
                    await session.exec(
                        select(func.count()).select_from(InboxMessage).where(col(InboxMessage.consumer) == CONSUMER)
                    )
                ).one()
            )

    async def consumer_state(self) -> tuple[int, int]:
        """(messages delivered and not yet acknowledged, messages waiting in the stream for this consumer)."""
        info = await self.bus.js.consumer_info(STREAM, CONSUMER)
        return info.num_ack_pending or 0, info.num_pending or 0


@contextlib.asynccontextmanager
async def consumer_rig(
    tmp_path: Path,
    nats_url: str,
    effect: Effect,
    *,
    wrap: Callable[[Callable[[Msg], Awaitable[None]]], Callable[[Msg], Awaitable[None]]] = lambda handler: handler,
    ack_wait_seconds: float = 30.0,
) -> AsyncIterator[Rig]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}")
    await migrate(database, None)
    settings = MeshSettings(
        data_dir=tmp_path,
        nats_url=nats_url,
        nats_reconnect_wait_seconds=0.2,
        consumer_ack_wait_seconds=ack_wait_seconds,
    )  # type: ignore[call-arg]
    bus = Bus(settings=settings, component=Component.ENERGY, tracer=trace.get_tracer(__name__))
    spec = ConsumerSpec(
        durable=CONSUMER,
        source=SOURCE,
        filter_subjects=[SUBJECT],
        handler=wrap(idempotent_handler(database, CONSUMER, {EFFECT_TYPE: effect})),
    )
    bus.add_consumer(spec)
    await bus.connect()
    bus.start_consumers()
    try:
        yield Rig(database, bus, spec, nats_url)
    finally:
        await bus.close()
        await database.dispose()


async def publish_probes(nats_url: str, count: int, *, note: str = "", prefix: str = "probe") -> list[str]:
    """Publish `count` ProbeEmitted events as the flows service's relay would (Nats-Msg-Id = the event id);
    every publish is acknowledged by JetStream. Returns the probe ids."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream(timeout=10)
        probe_ids = [f"{prefix}-{n:05d}" for n in range(count)]

        async def publish(probe_id: str) -> None:
            event_id = f"event-{probe_id}"
            message = probe_pb2.ProbeEmitted(
                metadata=event_pb2.EventMetadata(
                    event_id=event_id, event_type=EFFECT_TYPE, province_code=PROVINCE, source_component=SOURCE.value
                ),
                probe_id=probe_id,
                note=note,
            )
            ack = await js.publish(
                SUBJECT,
                message.SerializeToString(),
                headers={MSG_ID_HEADER: event_id, EVENT_TYPE_HEADER: EFFECT_TYPE},
            )
            assert not ack.duplicate

        for start in range(0, count, 100):
            await asyncio.gather(*(publish(p) for p in probe_ids[start : start + 100]))
        return probe_ids
    finally:
        await client.close()


def probe_of(message: Msg) -> str:
    return probe_pb2.ProbeEmitted.FromString(message.data).probe_id


async def test_a_consumer_crashing_half_way_or_before_its_ack_applies_each_message_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    count = 200
    crash_half_way = {f"probe-{n:05d}" for n in range(0, count, 5)}  # the effect raises after writing
    lose_ack = {f"probe-{n:05d}" for n in range(3, count, 7)} - crash_half_way  # committed, then no ack
    deliveries: Counter[str] = Counter()
    effect_runs: Counter[str] = Counter()
    rolled_back: list[bool] = []  # per redelivered crash: nothing of the first attempt was left in the database
    database_of: list[Database] = []

    async def effect(session: AsyncSession, message: Msg) -> None:
        probe_id = probe_of(message)
        effect_runs[probe_id] += 1
        if probe_id in crash_half_way and effect_runs[probe_id] > 1:
            async with database_of[0].session() as other:  # another connection sees only what was committed
                left_receipt = await other.get(ProbeReceipt, (probe_id, SOURCE.value))
                left_inbox = await other.get(InboxMessage, (CONSUMER, message_id_of(message)))
            rolled_back.append(left_receipt is None and left_inbox is None)
        await record_probe_receipt(session, message)
        await session.flush()  # the receipt and the inbox row are written in the transaction ...
        if probe_id in crash_half_way and effect_runs[probe_id] == 1:
            raise RuntimeError("the consumer crashed half-way through the message")  # ... and rolled back

    def wrap(handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def delivered(message: Msg) -> None:
            probe_id = probe_of(message)
            deliveries[probe_id] += 1
            if probe_id in lose_ack and deliveries[probe_id] == 1:

                async def lost_ack(timeout: float = 1.0) -> Msg:
                    raise ConnectionError("the process died between its commit and its ack")

                message.ack_sync = lost_ack  # type: ignore[method-assign]
            await handler(message)

        return delivered

    async with consumer_rig(tmp_path, nats_server.url, effect, wrap=wrap) as rig:
        database_of.append(rig.database)
        probe_ids = await publish_probes(nats_server.url, count)

        async def all_applied() -> bool:
            return len(await rig.applied()) == count and all(deliveries[p] >= 2 for p in crash_half_way | lose_ack)

        await eventually(all_applied, timeout=30)
        await asyncio.sleep(0.3)  # let any late redelivery arrive before counting
        applied = await rig.applied()
        inbox = await rig.inbox_rows()
        ack_pending, _ = await rig.consumer_state()

    tally = Tally(
        fault="consumer crash half-way (effect raises) or before its ack",
        sent=count,
        acknowledged=count,  # every publish was acknowledged by JetStream
        stored=sum(1 for p in probe_ids if applied[p] > 0),
        duplicates=sum(1 for p in lose_ack if deliveries[p] > 1),  # redelivered after commit: recognised
        twice=sum(1 for c in applied.values() if c > 1) + sum(1 for p in lose_ack if effect_runs[p] > 1),
        lost=sum(1 for p in probe_ids if applied[p] == 0),
        extra={
            "crashed_half_way": len(crash_half_way),
            "rolled_back_then_applied_once": sum(rolled_back),
            "lost_acks": len(lose_ack),
            "deliveries": sum(deliveries.values()),
            "inbox_rows": inbox,
            "ack_pending_at_end": ack_pending,
        },
    )
    tally.report()
    tally.assert_nothing_lost()
    assert rolled_back and all(rolled_back) and len(rolled_back) == len(crash_half_way), tally.line()
    assert all(effect_runs[p] == 2 for p in crash_half_way), tally.line()  # once rolled back, once committed
    assert inbox == count and ack_pending == 0, tally.line()


@pytest.mark.slow
async def test_a_slow_consumer_keeps_in_flight_work_and_memory_bounded(tmp_path: Path, nats_server: NatsServer) -> None:
    # 24 kB a message, 36 MB of backlog, which the consumer must not hold in memory: large beside what one fetch
    # batch holds (64 messages, 1.5 MB) and beside the noise of this process's RSS (a few MB), so that holding the
    # backlog cannot pass for noise, nor noise for holding it.
    count = 1500
    note = "x" * 24_000
    effect_seconds = 0.002

    async def slow_effect(session: AsyncSession, message: Msg) -> None:
        await asyncio.sleep(effect_seconds)
        await record_probe_receipt(session, message)

    async with consumer_rig(tmp_path, nats_server.url, slow_effect) as rig:
        started = time.monotonic()
        probe_ids = await publish_probes(nats_server.url, count, note=note)
        published_in = time.monotonic() - started
        baseline_rss = rss_bytes()
        samples: list[tuple[int, int, int]] = []  # (ack pending, waiting in the stream, rss)

        async def drained() -> bool:
            ack_pending, waiting = await rig.consumer_state()
            samples.append((ack_pending, waiting, rss_bytes()))
            return waiting == 0 and ack_pending == 0

        await eventually(drained, timeout=60, interval=0.1)
        consumed_in = time.monotonic() - started
        applied = await rig.applied()
        inbox = await rig.inbox_rows()
        max_ack_pending = rig.bus.consumer_config(rig.spec).max_ack_pending
        assert max_ack_pending is not None

    peak_in_flight = max(s[0] for s in samples)
    peak_backlog = max(s[1] for s in samples)
    rss_growth = max(s[2] for s in samples) - baseline_rss
    backlog_bytes = count * len(note)
    tally = Tally(
        fault="slow consumer (2 ms per message)",
        sent=count,
        acknowledged=count,
        stored=sum(1 for p in probe_ids if applied[p] > 0),
        twice=sum(1 for c in applied.values() if c > 1),
        lost=sum(1 for p in probe_ids if applied[p] == 0),
        extra={
            "published_in_s": round(published_in, 2),
            "consumed_in_s": round(consumed_in, 2),
            "peak_in_flight": peak_in_flight,
            "fetch_batch": rig.spec.batch,
            "max_ack_pending": max_ack_pending,
            "peak_backlog_in_stream": peak_backlog,
            "backlog_mb": round(backlog_bytes / 1e6, 1),
            "rss_growth_mb": round(rss_growth / 1e6, 1),
            "inbox_rows": inbox,
        },
    )
    tally.report()
    tally.assert_nothing_lost()
    # In flight: at most one fetch batch, far below max_ack_pending; the backlog waited in the stream.
    assert peak_in_flight <= rig.spec.batch <= max_ack_pending, tally.line()
    assert peak_backlog >= count // 2, tally.line()
    # Memory: the consumer's process grew by a fraction of the backlog, not by the backlog.
    assert rss_growth < backlog_bytes / 4, tally.line()
