"""Fault: the NATS server is killed -9 and restarted (same port, same JetStream store) while clients keep
reporting. Reports keep committing during the outage (their events wait in the outbox); once NATS is back the
relay catches up and every committed event is in the stream exactly once, and the registry's idempotent
consumer of the flows stream applies every probe the flows service emitted meanwhile exactly once."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest
from sqlmodel import col, select

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.config import Component
from meshkit.subjects import event_subject
from meshkit.tables import InboxMessage, ProbeReceipt
from tests.conftest import eventually
from tests.reliability.conftest import MeshFactory
from tests.reliability.helpers import RETRYABLE, Tally, flows_tally, message_ids, read_stream, store_facts

pytestmark = pytest.mark.slow

PROBE_SUBJECT = event_subject("32", Component.FLOWS, probe_pb2.ProbeEmitted)
CONSUMER = "registry--flows"  # the registry's durable consumer of the flows stream (meshkit.server.build_consumers)


async def emit_probes(
    stub: probe_pb2_grpc.MeshProbeServiceAsyncStub, stop: asyncio.Event, emitted: dict[str, str]
) -> None:
    """EmitProbe on the flows service until `stop`, each probe sent until answered (it is idempotent on its id)."""
    for n in itertools.count():
        if stop.is_set():
            return
        probe_id = f"nats-outage-{n}"
        while True:
            try:
                reply = await stub.EmitProbe(probe_pb2.EmitProbeRequest(probe_id=probe_id), timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() in RETRYABLE, error
                await asyncio.sleep(0.1)
                continue
            emitted[probe_id] = reply.event_id
            break
        await asyncio.sleep(0.02)


async def test_nats_killed_and_restarted_during_sustained_reports(
    inprocess_mesh: MeshFactory, database_url: str
) -> None:
    mesh = await inprocess_mesh(database_url)
    reporter = mesh.reporter()
    emitted: dict[str, str] = {}
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.runtime.port}") as channel:
        load = asyncio.gather(
            reporter.sustain(stop), emit_probes(probe_pb2_grpc.MeshProbeServiceStub(channel), stop, emitted)
        )
        try:
            await asyncio.sleep(1.5)
            mesh.nats.kill()
            sent_before_outage = len(reporter.sent)
            await asyncio.sleep(2.5)
            waiting_in_outbox = (await store_facts(database_url)).unpublished
            sent_during_outage = len(reporter.sent) - sent_before_outage
            await asyncio.to_thread(mesh.nats.start)  # the same port and store directory
            await asyncio.sleep(2.0)
        finally:
            stop.set()
            await load
    assert waiting_in_outbox > 0 and sent_during_outage > 0, "the outage was not felt"

    tally = await flows_tally(
        f"NATS kill -9 and restart under load ({mesh.runtime.database.dialect})",
        reporter,
        database_url,
        mesh.nats.url,
        sent_during_outage=sent_during_outage,
        waiting_in_outbox_during_outage=waiting_in_outbox,
    )
    tally.report()
    tally.assert_nothing_lost()
    assert tally.extra["batteries_inconsistent"] == 0, tally.line()
    # The reports never depended on NATS: none failed.
    assert not reporter.codes, tally.line()

    # ---- the consumer: every probe emitted around the outage is applied once by the registry ----
    registry_database = mesh.registry.runtime.database

    async def receipts() -> dict[str, int]:
        async with registry_database.session() as session:
            rows = await session.exec(select(ProbeReceipt.probe_id).where(col(ProbeReceipt.emitted_by) == "flows"))
            found: dict[str, int] = {}
            for probe_id in rows.all():
                found[probe_id] = found.get(probe_id, 0) + 1
            return found

    async def all_received() -> bool:
        return set(await receipts()) >= set(emitted)

    await eventually(all_received, timeout=30)
    applied = await receipts()
    async with registry_database.session() as session:
        inbox = (
            await session.exec(select(InboxMessage.message_id).where(col(InboxMessage.consumer) == CONSUMER))
        ).all()
    in_stream = message_ids(await read_stream(mesh.nats.url, PROBE_SUBJECT))
    event_ids = set(emitted.values())
    consumer = Tally(
        fault=f"NATS kill -9 and restart: probes through the registry's consumer ({mesh.runtime.database.dialect})",
        sent=len(emitted),
        acknowledged=len(emitted),
        stored=sum(1 for probe_id in emitted if applied.get(probe_id, 0) > 0),
        twice=sum(1 for count in applied.values() if count > 1)
        + len(inbox)
        - len(set(inbox))
        + sum(1 for count in in_stream.values() if count > 1),
        lost=sum(1 for probe_id in emitted if probe_id not in applied) + len(event_ids - set(in_stream)),
        extra={"inbox_rows": len(inbox), "published": len(event_ids & set(in_stream))},
    )
    consumer.report()
    consumer.assert_nothing_lost()
    assert event_ids <= set(inbox), consumer.line()
