"""Fault: the flows service is killed -9 in the middle of a batch (`ReportEvents`) and of an upload
(`UploadEvents`), then restarted on the same database and NATS; the client sends the same calls again with the
same event ids. Every event ends up stored exactly once (those stored before the kill answer DUPLICATE), nothing
of a transaction is half-written, and the stream GREENMESH_32_FLOWS holds one FlowEventRecorded per event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from meshkit.caller import signing_key
from meshkit.db import Database
from meshkit.localinfra import NatsServer
from meshkit.server import ServiceRuntime
from services.flows.servicer import UPLOAD_CHUNK
from tests.registry.conftest import Registry
from tests.reliability.helpers import (
    FlowsProcess,
    Reporter,
    flows_channel,
    flows_tally,
    register_chain,
    store_facts,
    wait_stored,
)

pytestmark = pytest.mark.slow

BATCHES = 6
PAIRS_PER_BATCH = 125  # 250 events per ReportEvents call
UPLOAD_PAIRS = 1_500  # 3,000 events: six upload chunks of 500


@pytest.fixture
async def flows_process(
    tmp_path: Path, nats_server: NatsServer, registry_runtime: ServiceRuntime, database_url: str
) -> AsyncIterator[FlowsProcess]:
    process = FlowsProcess(
        workdir=tmp_path / "flows",
        nats_url=nats_server.url,
        database_url=database_url,
        caller_key=signing_key(registry_runtime.settings, warn=False).decode(),
        registry_addr=f"127.0.0.1:{registry_runtime.port}",
    )
    await process.start()
    try:
        yield process
    finally:
        process.stop()


async def restarted(process: FlowsProcess, channel: grpc.aio.Channel) -> grpc.aio.Channel:
    """Start the killed service again and open a new channel (the old one backs off its reconnects)."""
    await channel.close()
    await process.start()
    return flows_channel(process.address)


async def test_kill9_mid_batch_and_mid_upload_then_the_client_retries(
    flows_process: FlowsProcess, registry: Registry, database_url: str, nats_server: NatsServer
) -> None:
    key = signing_key(registry.runtime.settings, warn=False)
    database = Database(database_url)
    channel = flows_channel(flows_process.address)
    try:
        stub = flows_pb2_grpc.FlowServiceStub(channel)
        chain = await register_chain(registry, stub, key)
        reporter = Reporter(stub, key, chain)
        baseline = await wait_stored(database, 0)  # the warm-up pair

        # ---- ReportEvents: six batches queue behind the single writer; kill -9 once two are stored. ----
        batches = [reporter.new_pairs(PAIRS_PER_BATCH) for _ in range(BATCHES)]
        size = len(batches[0])
        first = [asyncio.create_task(reporter.attempt_batch(batch)) for batch in batches]
        await wait_stored(database, baseline + 2 * size)
        flows_process.kill9()
        answers = await asyncio.gather(*first)
        unanswered = [i for i, answer in enumerate(answers) if isinstance(answer, grpc.StatusCode)]
        assert unanswered, "every batch was answered before the kill: nothing was in flight"
        assert {answers[i] for i in unanswered} == {grpc.StatusCode.UNAVAILABLE}

        # Before any retry: each batch is in the store completely or not at all (one transaction each).
        facts = await store_facts(database_url)
        stored_per_batch = [sum(facts.stored[m.event_id] for m in batch) for batch in batches]
        assert all(count in (0, size) for count in stored_per_batch), stored_per_batch
        stored_but_unanswered = sum(1 for i in unanswered if stored_per_batch[i] == size)

        channel = await restarted(flows_process, channel)
        reporter.stub = flows_pb2_grpc.FlowServiceStub(channel)
        for i in unanswered:
            results = await reporter.report_batch(batches[i])
            expected = fpb.EVENT_OUTCOME_DUPLICATE if stored_per_batch[i] == size else fpb.EVENT_OUTCOME_ACCEPTED
            assert {r.outcome for r in results} == {expected}, (i, stored_per_batch[i])
        answered = next(i for i, answer in enumerate(answers) if not isinstance(answer, grpc.StatusCode))
        again = await reporter.report_batch(batches[answered])  # a retry of an answered batch changes nothing
        assert {r.outcome for r in again} == {fpb.EVENT_OUTCOME_DUPLICATE}

        # ---- UploadEvents: chunks of 500 in their own transactions; kill -9 once the first is stored. ----
        upload = reporter.new_pairs(UPLOAD_PAIRS)
        before_upload = await wait_stored(database, 0)
        streaming = asyncio.create_task(reporter.upload(upload))
        await wait_stored(database, before_upload + UPLOAD_CHUNK)
        flows_process.kill9()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await streaming
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        facts = await store_facts(database_url)
        stored_of_upload = sum(facts.stored[m.event_id] for m in upload)
        assert stored_of_upload % UPLOAD_CHUNK == 0 and 0 < stored_of_upload < len(upload), stored_of_upload

        channel = await restarted(flows_process, channel)
        reporter.stub = flows_pb2_grpc.FlowServiceStub(channel)
        summary = await reporter.upload(upload)
        assert (summary.received, summary.accepted, summary.duplicates) == (
            len(upload),
            len(upload) - stored_of_upload,
            stored_of_upload,
        )

        tally = await flows_tally(
            f"flows kill -9 mid-batch and mid-upload ({database.dialect})",
            reporter,
            database_url,
            nats_server.url,
            kills=2,
            batches_unanswered=len(unanswered),
            batches_stored_but_unanswered=stored_but_unanswered,
            upload_stored_before_retry=stored_of_upload,
        )
        tally.report()
        tally.assert_nothing_lost()
        assert tally.extra["batteries_inconsistent"] == 0, tally.line()
        assert set(reporter.codes) == {"UNAVAILABLE"}, tally.line()
    finally:
        await channel.close()
        await database.dispose()
