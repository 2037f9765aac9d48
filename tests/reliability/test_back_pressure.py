"""Back-pressure from a consumer that stops taking messages, all the way to the client.

A durable consumer of the flows stream that takes nothing falls behind; past `consumer_lag_limit` the outbox relay
stops publishing (rows wait, committed, in the outbox); past `outbox_backlog_limit` waiting rows, reports answer
RESOURCE_EXHAUSTED (reason OUTBOX_BACKLOG, with a RetryInfo) and store nothing. Once the consumer catches up the
relay publishes again, the backlog drains, the refused report is accepted when sent again, and the tally finds
every event stored and published exactly once. SQLite only: the mechanism is the relay's and the servicer's,
not the database's (the outbox on PostgreSQL is covered by the NATS fault test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import nats
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.js import api

from greenmesh.flows.v1 import flows_pb2 as fpb
from meshkit.errors import error_reason
from tests.conftest import eventually
from tests.reliability.conftest import MeshFactory
from tests.reliability.helpers import FLOWS_STREAM, RECORDED_SUBJECT, flows_tally, store_facts

LAG_LIMIT = 30
BACKLOG_LIMIT = 60
STALLED = "stalled-consumer"


async def test_a_stalled_consumer_holds_the_relay_and_the_backlog_refuses_reports(
    inprocess_mesh: MeshFactory, tmp_path: Path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'flows-back-pressure.db'}"
    mesh = await inprocess_mesh(database_url, consumer_lag_limit=LAG_LIMIT, outbox_backlog_limit=BACKLOG_LIMIT)
    relay = mesh.runtime.relay
    reporter = mesh.reporter()
    client = await nats.connect(mesh.nats.url)
    try:
        js = client.jetstream(timeout=10)
        # A durable consumer that takes nothing: every FlowEventRecorded from now on waits for it.
        await js.add_consumer(
            FLOWS_STREAM,
            config=api.ConsumerConfig(
                durable_name=STALLED,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.NEW,
                filter_subject=RECORDED_SUBJECT,
            ),
        )

        # ---- 1. report until the service refuses: the consumer holds the relay, the backlog the client ----
        refused: grpc.aio.AioRpcError | None = None
        refused_events: list[fpb.FlowEvent] = []
        for _ in range(200):
            events = reporter.new_pairs(5)
            reporter.calls += 1
            for message in events:
                reporter.sent[message.event_id] = message
            try:
                reply = await reporter.stub.ReportEvents(
                    fpb.ReportEventsRequest(events=events, error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK),
                    metadata=reporter.chain.producer.caller.metadata(reporter.key),
                    timeout=15,
                )
            except grpc.aio.AioRpcError as error:
                reporter.codes[error.code().name] += 1
                refused, refused_events = error, events
                break
            assert all(r.outcome == fpb.EVENT_OUTCOME_ACCEPTED for r in reply.results)
            reporter.acknowledged.update(r.event_id for r in reply.results)
            await asyncio.sleep(0.05)
        assert refused is not None, f"never refused: backlog {relay.backlog}, held by {relay.held_by}"
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        assert error_reason(refused) == "OUTBOX_BACKLOG", refused.details()
        status = rpc_status.from_call(refused)
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        assert relay.held_by is not None and relay.held_by[0] == STALLED and relay.held_by[1] > LAG_LIMIT
        waiting = await store_facts(database_url)
        assert waiting.unpublished > BACKLOG_LIMIT
        # The refused batch stored nothing.
        assert all(waiting.stored[m.event_id] == 0 for m in refused_events)

        # ---- 2. the consumer catches up: the relay publishes again and the backlog drains ----
        subscription = await js.pull_subscribe_bind(durable=STALLED, stream=FLOWS_STREAM)
        taken = 0

        async def caught_up() -> bool:
            nonlocal taken
            try:
                messages = await subscription.fetch(200, timeout=0.5)
            except nats.errors.TimeoutError:
                messages = []
            for message in messages:
                await message.ack()
            taken += len(messages)
            return (await store_facts(database_url)).unpublished == 0 and relay.held_by is None

        await eventually(caught_up, timeout=60, interval=0.1)

        async def backlog_counted_again() -> bool:  # the relay counts at most every half second
            return relay.backlog == 0

        await eventually(backlog_counted_again, timeout=10, interval=0.1)

        # ---- 3. the refused report, sent again, is accepted; nothing lost, nothing twice ----
        results = await reporter.report_batch(refused_events)
        assert [r.outcome for r in results] == [fpb.EVENT_OUTCOME_ACCEPTED] * len(refused_events)
    finally:
        await client.close()

    tally = await flows_tally(
        "a stalled consumer: relay held, reports refused, then caught up",
        reporter,
        database_url,
        mesh.nats.url,
        consumer_lag_limit=LAG_LIMIT,
        outbox_backlog_limit=BACKLOG_LIMIT,
        unpublished_when_refused=waiting.unpublished,
        taken_by_the_consumer=taken,
    )
    tally.report()
    tally.assert_nothing_lost()
    assert tally.extra["errors"] == {"RESOURCE_EXHAUSTED": 1}, tally.line()
