"""What the fault tests share: a tally of what was sent, acknowledged, stored and published (and so lost), a
client that reports batteries and retries what failed with the same event ids, reads of the store and of the
JetStream stream by event id, and the flows service as a process of its own (so that it can be killed -9)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import nats
from nats.aio.msg import Msg
from nats.js import api
from sqlalchemy import func as sa_func
from sqlalchemy import select as sa_select
from sqlmodel import col

from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh_cli.health import check
from meshkit.bus import MSG_ID_HEADER
from meshkit.config import Component
from meshkit.db import Database
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.localinfra import free_port
from meshkit.subjects import event_subject, stream_name
from meshkit.tables import OutboxEvent
from services.flows.tables import BatteryRow, EventBatteryRow, FlowEventRow
from tests.flows.conftest import CN, Network, Party, event, party, ts
from tests.registry.conftest import XUANWU, Registry

T = TypeVar("T")

PROVINCE = "32"
FLOWS_STREAM = stream_name(PROVINCE, Component.FLOWS)  # GREENMESH_32_FLOWS
RECORDED_SUBJECT = event_subject(PROVINCE, Component.FLOWS, fpb.FlowEventRecorded)
RECORDED_TYPE = fpb.FlowEventRecorded.DESCRIPTOR.full_name
T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)
PRODUCED = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
SHIPPED_STATE = "IN_DISTRIBUTION"  # a battery commissioned and shipped to a dealer
# What a fault may answer: the call did not happen, or happened completely, and the client sends it again as it
# is (the event ids make the second one harmless). The tests assert that nothing else was answered; INTERNAL
# above all says nothing of what was stored.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
# The load still retries any other code (counting it), so that a wrong answer shows in the tally rather than
# ending the load; these it never retries, as they say the call itself is wrong.
NOT_RETRIED = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
_serials = itertools.count(1)


# ---- the tally ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """The final count of one fault: `lost` and `twice` must be zero."""

    fault: str
    sent: int = 0  # distinct events (or messages) the client sent
    acknowledged: int = 0  # of those, how many got a success answer (ACCEPTED/DUPLICATE, a publish ack)
    stored: int = 0  # of those, how many are in the store (or applied by the consumer)
    duplicates: int = 0  # answers DUPLICATE to a retry, or redeliveries the consumer recognised
    twice: int = 0  # stored, published or applied more than once
    lost: int = 0  # sent (or acknowledged) but not stored, or stored but not published
    extra: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        figures = {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "twice": self.twice,
            "lost": self.lost,
            **self.extra,
        }
        return f"TALLY {self.fault}: " + json.dumps(figures, sort_keys=False, default=str)

    def report(self) -> None:
        print(self.line(), flush=True)

    def assert_nothing_lost(self) -> None:
        assert (self.lost, self.twice) == (0, 0), self.line()
        assert self.sent == self.acknowledged == self.stored, self.line()


# ---- the reporting client -------------------------------------------------------------------------


@dataclass
class Chain:
    """Who the load reports as: a producer commissions batteries and ships them to a dealer."""

    producer: Party
    dealer: Party
    model_id: str

    @classmethod
    def of(cls, network: Network) -> Chain:
        return cls(network.producer, network.dealer, network.model_id)

    def battery(self) -> fpb.BatteryRef:
        return fpb.BatteryRef(
            scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL,
            namespace=self.producer.participant.credit_code,
            value=f"RL{next(_serials):08d}",
        )

    def pair(self, battery: fpb.BatteryRef) -> list[fpb.FlowEvent]:
        """Commissioning and shipping of one battery: stored together, it ends IN_DISTRIBUTION."""
        return [
            event(
                fpb.BIZ_STEP_COMMISSIONING, self.producer, [battery], T0,
                model_id=self.model_id, production_date=ts(PRODUCED),
            ),
            event(
                fpb.BIZ_STEP_SHIPPING, self.producer, [battery], T0 + dt.timedelta(hours=1),
                destination_facility_id=self.dealer.site,
            ),
        ]  # fmt: skip


async def register_chain(registry: Registry, flows: flows_pb2_grpc.FlowServiceAsyncStub, key: bytes) -> Chain:
    """The producer and dealer of `tests/flows/conftest.py` (`party`), for a flows service in another process.

    `build_network` waits on the flows process's directory, which a test cannot read in another process;
    here a warm-up pair (ROLLBACK, so a refusal stores nothing and the same ids can be sent again) is reported
    until it is accepted, which needs both parties in the flows service's directory."""
    producer = await party(registry, "BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, XUANWU, listed=False)
    dealer = await party(registry, "DEALER", rpb.FACILITY_TYPE_DEALER_STORE, XUANWU, listed=False)
    model = await flows.RegisterBatteryModel(
        fpb.RegisterBatteryModelRequest(
            model=fpb.BatteryModel(
                model_code="TDR-48V20AH", chemistry=fpb.CHEMISTRY_LFP, nominal_voltage_v=48, capacity_ah=20,
                energy_wh=960, mass_kg=9.5, safe_service_life_years=5,
            )
        ),
        metadata=producer.caller.metadata(key),
        timeout=10,
    )  # fmt: skip
    chain = Chain(producer, dealer, model.model.model_id)
    warm_up = chain.pair(chain.battery())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        reply = await flows.ReportEvents(
            fpb.ReportEventsRequest(events=warm_up), metadata=producer.caller.metadata(key), timeout=10
        )
        if all(r.outcome == fpb.EVENT_OUTCOME_ACCEPTED for r in reply.results):
            return chain
        assert loop.time() < deadline, f"the flows directory never had the parties: {reply.results}"
        await asyncio.sleep(0.2)


@dataclass
class Reporter:
    """Reports as the chain's producer and, like a careful client, sends a failed call again with the same
    event ids until it is answered. Keeps what it sent, what was acknowledged and every error code it got."""

    stub: flows_pb2_grpc.FlowServiceAsyncStub
    key: bytes
    chain: Chain
    timeout: float = 15.0
    give_up_after: float = 90.0
    sent: dict[str, fpb.FlowEvent] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    outcomes: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    batteries: list[fpb.BatteryRef] = field(default_factory=list)
    calls: int = 0

    def new_pairs(self, count: int) -> list[fpb.FlowEvent]:
        events: list[fpb.FlowEvent] = []
        for _ in range(count):
            battery = self.chain.battery()
            self.batteries.append(battery)
            events.extend(self.chain.pair(battery))
        return events

    def _metadata(self) -> list[tuple[str, str]]:
        return self.chain.producer.caller.metadata(self.key)

    def _note(self, results: Iterable[fpb.EventResult]) -> None:
        for result in results:
            self.outcomes[fpb.EventOutcome.Name(result.outcome).removeprefix("EVENT_OUTCOME_")] += 1
            if result.outcome in (fpb.EVENT_OUTCOME_ACCEPTED, fpb.EVENT_OUTCOME_DUPLICATE):
                self.acknowledged.add(result.event_id)

    async def until_answered(self, call: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        delay = 0.05
        while True:
            self.calls += 1
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                self.codes[error.code().name] += 1
                if error.code() in NOT_RETRIED or loop.time() > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def attempt_batch(self, events: Sequence[fpb.FlowEvent]) -> list[fpb.EventResult] | grpc.StatusCode:
        """One `ReportEvents` (ROLLBACK) call, not retried: its results, or the status code it failed with."""
        for message in events:
            self.sent[message.event_id] = message
        self.calls += 1
        try:
            reply: fpb.ReportEventsResponse = await self.stub.ReportEvents(
                fpb.ReportEventsRequest(events=events, error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK),
                metadata=self._metadata(),
                timeout=self.timeout,
            )
        except grpc.aio.AioRpcError as error:
            self.codes[error.code().name] += 1
            return error.code()
        self._note(reply.results)
        return list(reply.results)

    async def report_batch(self, events: Sequence[fpb.FlowEvent]) -> list[fpb.EventResult]:
        """`ReportEvents` with ROLLBACK (all or nothing), sent until answered."""
        for message in events:
            self.sent[message.event_id] = message
        request = fpb.ReportEventsRequest(events=events, error_behaviour=fpb.ERROR_BEHAVIOUR_ROLLBACK)

        async def call() -> fpb.ReportEventsResponse:
            reply: fpb.ReportEventsResponse = await self.stub.ReportEvents(
                request, metadata=self._metadata(), timeout=self.timeout
            )
            return reply

        reply = await self.until_answered(call)
        self._note(reply.results)
        return list(reply.results)

    async def report_one(self, message: fpb.FlowEvent) -> fpb.EventResult:
        """`ReportEvent` (captured with the other single reports waiting: group commit), sent until answered."""
        self.sent[message.event_id] = message

        async def call() -> fpb.ReportEventResponse:
            reply: fpb.ReportEventResponse = await self.stub.ReportEvent(
                fpb.ReportEventRequest(event=message), metadata=self._metadata(), timeout=self.timeout
            )
            return reply

        result = (await self.until_answered(call)).result
        self._note([result])
        return result

    async def upload(self, events: Sequence[fpb.FlowEvent], *, timeout: float = 60.0) -> fpb.UploadEventsResponse:
        """One `UploadEvents` stream (no retry: the caller decides)."""
        for message in events:
            self.sent[message.event_id] = message

        async def lines() -> AsyncIterator[fpb.UploadEventsRequest]:
            for message in events:
                yield fpb.UploadEventsRequest(event=message)

        self.calls += 1
        try:
            summary: fpb.UploadEventsResponse = await self.stub.UploadEvents(
                lines(), metadata=self._metadata(), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            self.codes[error.code().name] += 1
            raise
        self.outcomes["DUPLICATE"] += summary.duplicates
        if summary.accepted + summary.duplicates == len(events):
            self.acknowledged.update(m.event_id for m in events)
        return summary

    async def sustain(self, stop: asyncio.Event, *, pairs_per_batch: int = 10, singles: bool = True) -> None:
        """Report until `stop` is set: batches of pairs (ROLLBACK) and, beside them, single commissionings
        (group commit); every call is sent until answered, so each event is acknowledged in the end."""

        async def batches() -> None:
            while not stop.is_set():
                await self.report_batch(self.new_pairs(pairs_per_batch))

        async def single_reports() -> None:
            while not stop.is_set():
                battery = self.chain.battery()
                self.batteries.append(battery)
                commissioning, shipping = self.chain.pair(battery)
                await self.report_one(commissioning)
                await self.report_one(shipping)

        await asyncio.gather(batches(), *([single_reports(), single_reports()] if singles else []))


# ---- the store and the stream, by event id --------------------------------------------------------


@dataclass
class StoreFacts:
    stored: Counter[str]  # flow event id -> rows
    battery_states: dict[str, tuple[str, int]]  # battery value -> (state, events recorded against it)
    recorded_outbox_rows: int  # FlowEventRecorded rows in the outbox
    unpublished: int  # outbox rows not yet relayed


async def store_facts(database_url: str) -> StoreFacts:
    database = Database(database_url)
    try:
        async with database.session() as session:
            connection = await session.connection()
            stored = Counter(
                {
                    event_id: int(rows)
                    for event_id, rows in await connection.execute(
                        sa_select(col(FlowEventRow.event_id), sa_func.count()).group_by(col(FlowEventRow.event_id))
                    )
                }
            )
            batteries = await connection.execute(
                sa_select(col(BatteryRow.value), col(BatteryRow.state), sa_func.count(col(EventBatteryRow.event_seq)))
                .outerjoin(EventBatteryRow, col(EventBatteryRow.battery_key) == col(BatteryRow.battery_key))
                .group_by(col(BatteryRow.battery_key), col(BatteryRow.value), col(BatteryRow.state))
            )
            states = {value: (state, int(events)) for value, state, events in batteries}
            recorded = await connection.scalar(
                sa_select(sa_func.count()).select_from(OutboxEvent).where(col(OutboxEvent.event_type) == RECORDED_TYPE)
            )
            unpublished = await connection.scalar(
                sa_select(sa_func.count()).select_from(OutboxEvent).where(col(OutboxEvent.published_at).is_(None))
            )
        return StoreFacts(stored, states, int(recorded or 0), int(unpublished or 0))
    finally:
        await database.dispose()


async def wait_stored(database: Database, at_least: int, timeout: float = 30.0) -> int:
    """Poll the number of stored flow events until it reaches `at_least`; that number."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        async with database.session() as session:
            connection = await session.connection()
            stored = int(await connection.scalar(sa_select(sa_func.count()).select_from(FlowEventRow)) or 0)
        if stored >= at_least:
            return stored
        assert loop.time() < deadline, f"only {stored} events stored after {timeout}s"
        await asyncio.sleep(0.01)


async def outbox_drained(database_url: str, timeout: float = 30.0) -> StoreFacts:
    """Wait until the relay published every outbox row; the store as it is then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        facts = await store_facts(database_url)
        if facts.unpublished == 0:
            return facts
        assert loop.time() < deadline, f"{facts.unpublished} outbox rows still unpublished after {timeout}s"
        await asyncio.sleep(0.2)


@dataclass
class StreamFacts:
    by_event: Counter[str]  # flow event id -> FlowEventRecorded messages in the stream
    by_message_id: Counter[str]  # Nats-Msg-Id -> messages


async def read_stream(nats_url: str, subject: str, stream: str = FLOWS_STREAM) -> list[Msg]:
    """Every message of `stream` on `subject`, read with an ephemeral consumer that acknowledges nothing."""
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream(timeout=10)
        subscription = await js.pull_subscribe(
            subject,
            stream=stream,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL),
        )
        remaining = (await subscription.consumer_info()).num_pending or 0
        messages: list[Msg] = []
        while remaining > 0:
            batch = await subscription.fetch(min(remaining, 1000), timeout=10)
            messages.extend(batch)
            remaining -= len(batch)
        await subscription.unsubscribe()
        return messages
    finally:
        await client.close()


def message_ids(messages: Iterable[Msg]) -> Counter[str]:
    return Counter((message.headers or {}).get(MSG_ID_HEADER, "") for message in messages)


async def stream_facts(nats_url: str) -> StreamFacts:
    """The FlowEventRecorded messages of the flows stream, by the flow event they record and by message id."""
    messages = await read_stream(nats_url, RECORDED_SUBJECT)
    by_event = Counter(fpb.FlowEventRecorded.FromString(message.data).event.event_id for message in messages)
    return StreamFacts(by_event, message_ids(messages))


async def flows_tally(fault: str, reporter: Reporter, database_url: str, nats_url: str, **extra: object) -> Tally:
    """Settle the outbox, then count every event the reporter sent in the store and in the stream."""
    facts = await outbox_drained(database_url)
    stream = await stream_facts(nats_url)
    sent = set(reporter.sent)
    stored = {event_id for event_id in sent if facts.stored[event_id] > 0}
    published = {event_id for event_id in sent if stream.by_event[event_id] > 0}
    twice = (
        sum(1 for event_id in sent if facts.stored[event_id] > 1)
        + sum(1 for event_id in sent if stream.by_event[event_id] > 1)
        + sum(1 for count in stream.by_message_id.values() if count > 1)
    )
    inconsistent = [
        battery.value for battery in reporter.batteries if facts.battery_states.get(battery.value) != (SHIPPED_STATE, 2)
    ]
    # One FlowEventRecorded outbox row per stored event (the warm-up's too), no more and no fewer.
    stored_rows = sum(facts.stored.values())
    twice += max(0, facts.recorded_outbox_rows - stored_rows)
    return Tally(
        fault=fault,
        sent=len(sent),
        acknowledged=len(sent & reporter.acknowledged),
        stored=len(stored),
        duplicates=reporter.outcomes["DUPLICATE"],
        twice=twice,
        lost=len(sent - stored)
        + len((sent & reporter.acknowledged) - stored)
        + len(stored - published)
        + max(0, stored_rows - facts.recorded_outbox_rows),
        extra={
            "published": len(published),
            "batteries": len(reporter.batteries),
            "batteries_inconsistent": len(inconsistent),
            "calls": reporter.calls,
            "errors": dict(reporter.codes),
            **extra,
        },
    )


# ---- the flows service in a process of its own ----------------------------------------------------


@dataclass
class FlowsProcess:
    """`python -m greenmesh_cli serve flows` with its settings in GREENMESH_* variables; restartable on the
    same port, database and NATS, and killable with SIGKILL as a crash would end it."""

    workdir: Path
    nats_url: str
    database_url: str
    caller_key: str
    registry_addr: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
        return {
            **inherited,
            "GREENMESH_PROVINCE": PROVINCE,
            "GREENMESH_DATA_DIR": str(self.workdir / "data"),
            "GREENMESH_NATS_URL": self.nats_url,
            "GREENMESH_DATABASE_URL": self.database_url,
            "GREENMESH_GRPC_PORT": str(self.port),
            "GREENMESH_REGISTRY_ADDR": self.registry_addr,
            "GREENMESH_CALLER_KEY": self.caller_key,
            "GREENMESH_NATS_RECONNECT_WAIT_SECONDS": "0.2",
            "GREENMESH_OUTBOX_POLL_SECONDS": "0.1",
            "GREENMESH_DB_PING_SECONDS": "0.5",
            "GREENMESH_SHUTDOWN_GRACE_SECONDS": "1",
            "GREENMESH_LOG_LEVEL": "WARNING",
            "GREENMESH_LOG_FORMAT": "text",
            "OTEL_TRACES_EXPORTER": "none",
        }

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted(self.workdir.glob("flows-*.log"))
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}" for log in logs)

    async def start(self, timeout: float = 60.0) -> None:
        assert self.process is None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.process = self._spawn(self.workdir / f"flows-{self.starts}.log")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await check(self.address, timeout=1.0) != "SERVING":
            assert self.process.poll() is None, f"flows exited with {self.process.returncode}:\n{self.log_tail()}"
            assert loop.time() < deadline, f"flows not SERVING after {timeout}s:\n{self.log_tail()}"
            await asyncio.sleep(0.1)

    def _spawn(self, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as output:
            return subprocess.Popen(
                [sys.executable, "-m", "greenmesh_cli", "serve", "flows"],
                env=self.environment(),
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no last relay pass, whatever transaction is open is cut off."""
        assert self.process is not None and self.process.poll() is None, "flows is not running"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def flows_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default)."""
    import psutil  # a dev dependency

    return int(psutil.Process(pid or os.getpid()).memory_info().rss)
