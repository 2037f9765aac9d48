"""The flows service over gRPC: batch ingest against raw inserts of the same rows, unary reports against bare
grpc.aio, and a battery trace, the dispatch statistics and the peak memory over a loaded event log.

Set-up (not timed): a nats-server, then the real registry runtime in its own process (`bench.registry
--serve`) on a fresh SQLite file. A recycling network in six districts of Jiangsu (32) is registered through
the registry's gRPC API: 2 battery producers, 3 dealers (their sites unlisted, as in the e2e test), 12
recycling outlets, a temporary storage point per district, 2 regional sorting centres and 2 recycling
plants, all LISTED by a Jiangsu regulator. Once the registry's directory (the NATS KV bucket) holds every
entry, the registry stops. Each measurement then starts the real flows runtime (`meshkit.server.ServiceRuntime`
with `services.flows.service.DEFINITION`, default settings: spans to local JSON lines, outbox relay, directory
watch and monitors running) in its own process (`python -m bench.flows --serve ...`, printing `READY <port>`)
on a freshly migrated database, and registers one battery model per producer.

Events are whole battery lives, the 16 steps of `tests/flows/test_flows_e2e.py` (commissioning, sale,
collection at an outlet, temporary storage, sorting centre, recycler), each reported by the party that runs
the site. A *cohort* is 500 batteries on one chain of sites; each party reports its part of a cohort in
batches of 500 (2 to 4 events per battery, so a multiple of 500 events per party), in the order the
batteries move. Collection modes rotate (trade-in, drop-off, door-to-door, internet); event times lie in the
past year.

Figures (references measured in the same run):
  - `flows.batch_ingest_sqlite`, `flows.batch_ingest_postgresql`: events/s of `ReportEvents` (batches of 500,
    PROCEED, one call in flight) into a fresh database, against SQLAlchemy Core executemany of the very rows
    the capture wrote (read back afterwards: flow_event, event_battery, battery, shipment, facility_ledger,
    outbox_event) into a fresh database with the same migrated schema, one transaction per batch of 500 events;
  - after loading 1,000,000 events through `ReportEvents` into SQLite (75 % whole lives of 16 events, 25 %
    still at a sorting centre after 10) and waiting for the outbox relay to publish them all:
    `flows.trace_p99` (`GetBatteryTrace` of random batteries as a regulator, one call in flight, against the
    bare unary p99), `flows.dispatch_statistics` (`GetDispatchStatistics` for province 32 over a period that
    holds every event, the median of a few calls, against the bare unary p50) and `flows.peak_memory` (VmHWM
    of the flows process at the end of the load, against its RSS when idle after start);
  - `flows.unary_report`: `ReportEvent` calls/s, 32 in flight over one channel (each of 32 workers reports
    whole lives of its own batteries, so a battery's events arrive in order) into a fresh SQLite database,
    against the bare unary loop of `bench.grpc_reference` at 32 in flight. A failed call is counted and
    reported, not fatal (SQLite's "database is locked" after its 5 s busy timeout can happen here).

`--quick` loads 21,750 events instead; `GREENMESH_BENCH_FLOWS_EVENTS=<n>` sets the load size of any run.
"""

from __future__ import annotations

# grpcio ships no type information of its own (see bench/grpc_reference.py).
# mypy: disable-error-code="import-untyped"
import argparse
import asyncio
import contextlib
import datetime as dt
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Table, func, insert, select
from sqlalchemy.engine import make_url

from bench.common import (
    Result,
    RunContext,
    log,
    measure_repeatedly,
    percentile,
    ratio_of,
    serve_runtime,
    signed_metadata,
)
from bench.grpc_reference import reference_payload, reference_server, subprocess_server, unary_latencies
from bench.grpc_reference import unary_throughput as bare_unary_throughput
from bench.registry import registry_server
from bench.storage_reference import local_postmaster_pid, postgres_database
from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.flows.v1 import flows_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from greenmesh_cli.health import wait_serving
from meshkit.caller import Caller
from meshkit.db import Database, build_engine
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from meshkit.tables import OutboxEvent
from services.flows.tables import BatteryRow, EventBatteryRow, FacilityLedgerRow, FlowEventRow, ShipmentRow
from services.registry.domain.credit_code import make_credit_code

BENCHES: tuple[str, ...] = (
    "flows.batch_ingest_sqlite",
    "flows.batch_ingest_postgresql",
    "flows.unary_report",
    "flows.trace_p99",
    "flows.trace_server_cpu_ms",
    "flows.dispatch_statistics",
    "flows.peak_memory",
)

SERVICE = "/greenmesh.flows.v1.FlowService"
REPORT_EVENTS_METHOD = f"{SERVICE}/ReportEvents"
REPORT_EVENT_METHOD = f"{SERVICE}/ReportEvent"
TRACE_METHOD = f"{SERVICE}/GetBatteryTrace"
STATISTICS_METHOD = f"{SERVICE}/GetDispatchStatistics"
LIST_RULES_METHOD = f"{SERVICE}/ListRules"

PROVINCE = "32"
# 玄武, 秦淮, 建邺, 鼓楼 (Nanjing), 滨湖 (Wuxi), 姑苏 (Suzhou).
COUNTIES = ("320102", "320104", "320105", "320106", "320211", "320508")
BATCH = 500  # events per ReportEvents call
COHORT = 500  # batteries per cohort: each party's share of a cohort is then a multiple of BATCH events
FULL_LIFE_SHARE = 0.75  # of the loaded batteries; the others are still at a sorting centre (10 events)
UNARY_CONCURRENCY = 32
REPEATS = 3
LOAD_ENV = "GREENMESH_BENCH_FLOWS_EVENTS"
PID_FILE = "flows.pid"
CN = dt.timezone(dt.timedelta(hours=8))
COLLECTION_MODES = (
    pb.COLLECTION_MODE_TRADE_IN,
    pb.COLLECTION_MODE_DROP_OFF,
    pb.COLLECTION_MODE_DOOR_TO_DOOR,
    pb.COLLECTION_MODE_INTERNET,
)

PLATFORM = Caller(participant_id="00000000-0000-7000-8000-000000000001", roles=frozenset({"PLATFORM_OPERATOR"}))
JIANGSU_REGULATOR = Caller(
    participant_id="00000000-0000-7000-8000-000000000032",
    roles=frozenset({"REGULATOR"}),
    supervised_division="320000",
)

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sizes:
    ingest_cohorts: int  # cohorts of whole lives per ingest repeat (16 events per battery)
    unary_lives: int  # whole lives per worker, timed (16 calls each)
    unary_warmup_lives: int  # whole lives per worker, not timed
    bare_unary_calls: int
    load_events: int
    trace_calls: int
    trace_warmup: int
    statistics_calls: int


FULL = Sizes(2, 4, 1, 20_000, 1_000_000, 1_000, 100, 5)
QUICK = Sizes(1, 1, 1, 2_000, 20_000, 200, 20, 3)


# ---- the network --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A participant and the one site it runs."""

    participant_id: str
    credit_code: str
    roles: frozenset[str]
    facility_id: str
    county_code: str

    @property
    def caller(self) -> Caller:
        return Caller(participant_id=self.participant_id, roles=self.roles)

    @property
    def metadata(self) -> Metadata:
        return signed_metadata(self.caller)


@dataclass(frozen=True)
class Chain:
    """The sites one cohort of batteries passes through, in order."""

    producer: Party
    dealer: Party
    outlet: Party
    storage: Party
    sorter: Party
    recycler: Party

    def stage(self, index: int) -> Party:
        return (self.producer, self.dealer, self.outlet, self.storage, self.sorter, self.recycler)[index]


@dataclass(frozen=True)
class Network:
    producers: tuple[Party, ...]
    dealers: tuple[Party, ...]
    outlets: tuple[Party, ...]
    storages: dict[str, Party]  # county -> its temporary storage point
    sorters: tuple[Party, ...]
    recyclers: tuple[Party, ...]

    def chain(self, index: int) -> Chain:
        outlet = self.outlets[index % len(self.outlets)]
        county = COUNTIES.index(outlet.county_code)
        return Chain(
            producer=self.producers[index % len(self.producers)],
            dealer=self.dealers[index % len(self.dealers)],
            outlet=outlet,
            storage=self.storages[outlet.county_code],
            sorter=self.sorters[county % len(self.sorters)],
            recycler=self.recyclers[index % len(self.recyclers)],
        )

    def parties(self) -> list[Party]:
        return [
            *self.producers,
            *self.dealers,
            *self.outlets,
            *self.storages.values(),
            *self.sorters,
            *self.recyclers,
        ]


# (role, facility type, listed, count per county or in all)
PLAN: tuple[tuple[str, int, bool], ...] = (
    ("BATTERY_PRODUCER", rpb.FACILITY_TYPE_PRODUCTION_PLANT, False),
    ("DEALER", rpb.FACILITY_TYPE_DEALER_STORE, False),
    ("RECYCLING_OUTLET_OPERATOR", rpb.FACILITY_TYPE_RECYCLING_OUTLET, True),
    ("TEMP_STORAGE_OPERATOR", rpb.FACILITY_TYPE_TEMP_STORAGE_POINT, True),
    ("SORTING_CENTER_OPERATOR", rpb.FACILITY_TYPE_REGIONAL_SORTING_CENTER, True),
    ("RECYCLING_ENTERPRISE", rpb.FACILITY_TYPE_RECYCLING_PLANT, True),
)


class _Registrar:
    """Registers participants and their sites through the registry's gRPC API, as the tests do."""

    def __init__(self, stub: registry_pb2_grpc.RegistryServiceStub, points: dict[str, tuple[float, float]]) -> None:
        self.stub = stub
        self.points = points
        self.rng = random.Random(32)
        self.count = 0
        # directory key -> the version its entry must reach
        self.expected: dict[str, int] = {}

    async def call(self, method: str, request: Any, caller: Caller) -> Any:
        return await getattr(self.stub, method)(request, metadata=signed_metadata(caller), timeout=30)

    async def party(self, role: str, facility_type: int, listed: bool, county: str) -> Party:
        self.count += 1
        registered = await self.call(
            "RegisterParticipant",
            rpb.RegisterParticipantRequest(
                participant=rpb.Participant(
                    credit_code=make_credit_code(county, rng=self.rng),
                    legal_name=f"基准企业 {self.count}",
                    roles=[rpb.ParticipantRole.Value(f"PARTICIPANT_ROLE_{role}")],
                )
            ),
            PLATFORM,
        )
        activated = await self.call(
            "ChangeParticipantStatus",
            rpb.ChangeParticipantStatusRequest(
                participant_id=registered.participant.participant_id,
                status=rpb.PARTICIPANT_STATUS_ACTIVE,
                reason="documents checked",
                version=registered.participant.version,
            ),
            PLATFORM,
        )
        participant: rpb.Participant = activated.participant
        operator = Caller(participant_id=participant.participant_id, roles=frozenset({role}))
        lat, lon = self.points[county]
        jitter = self.count * 0.0004  # a few hundred metres apart, well inside the 2 km tolerance
        site = (
            await self.call(
                "RegisterFacility",
                rpb.RegisterFacilityRequest(
                    facility=rpb.Facility(
                        operator_id=participant.participant_id,
                        operator_facility_code=f"BENCH-{self.count:03d}",
                        name=f"基准站点 {self.count}",
                        facility_type=facility_type,  # type: ignore[arg-type]
                        county_code=county,
                        location=rpb.GeoPoint(latitude=lat + jitter % 0.004, longitude=lon - jitter % 0.004),
                        address="测试路 1 号",
                        opening_hours="09:00-18:00",
                        phone="025-8888 0000",
                        recycling_modes=[rpb.RECYCLING_MODE_TRADE_IN, rpb.RECYCLING_MODE_DROP_OFF],
                        storage_limits=rpb.StorageLimits(max_stock_kg=20_000, max_stock_units=2_000, max_dwell_days=30),
                        safety=rpb.SafetyAttributes(fire_class="B", has_discharge_equipment=True, has_monitoring=True),
                    )
                ),
                operator,
            )
        ).facility
        if listed:
            for status, caller in (
                (rpb.ACCREDITATION_STATUS_UNDER_REVIEW, operator),
                (rpb.ACCREDITATION_STATUS_LISTED, JIANGSU_REGULATOR),
            ):
                site = (
                    await self.call(
                        "ChangeAccreditation",
                        rpb.ChangeAccreditationRequest(
                            facility_id=site.facility_id, status=status, reason="inspected", version=site.version
                        ),
                        caller,
                    )
                ).facility
        self.expected[f"participant.{participant.participant_id}"] = participant.version
        self.expected[f"facility.{site.facility_id}"] = site.version
        return Party(participant.participant_id, participant.credit_code, frozenset({role}), site.facility_id, county)


def county_points() -> dict[str, tuple[float, float]]:
    """A point inside each county (lat, lon): its polygon's representative point."""
    from services.registry.domain.divisions import load_division_table

    table = load_division_table()
    points = {}
    for code in COUNTIES:
        point = table.geometries[code].representative_point()
        points[code] = (round(point.y, 6), round(point.x, 6))
    return points


async def register_network(target: str, points: dict[str, tuple[float, float]]) -> tuple[Network, dict[str, int]]:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        registrar = _Registrar(registry_pb2_grpc.RegistryServiceStub(channel), points)

        async def several(index: int, counties: Sequence[str]) -> tuple[Party, ...]:
            role, kind, listed = PLAN[index]
            return tuple([await registrar.party(role, kind, listed, county) for county in counties])

        producers = await several(0, COUNTIES[:2])
        dealers = await several(1, COUNTIES[:3])
        outlets = await several(2, [county for county in COUNTIES for _ in range(2)])
        storages = await several(3, COUNTIES)
        sorters = await several(4, (COUNTIES[1], COUNTIES[4]))
        recyclers = await several(5, (COUNTIES[2], COUNTIES[5]))
    network = Network(producers, dealers, outlets, {p.county_code: p for p in storages}, sorters, recyclers)
    return network, registrar.expected


async def wait_for_directory(nats_url: str, expected: dict[str, int], timeout: float = 60.0) -> None:
    """Until the registry's KV directory holds every entry at its final version (what the flows service loads)."""
    import nats

    from services.registry.events import directory_bucket

    client = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kv = await client.jetstream().key_value(directory_bucket(PROVINCE))
                behind = []
                for key, version in expected.items():
                    try:
                        entry = await kv.get(key)
                    except Exception:  # not written yet
                        behind.append(key)
                        continue
                    if rpb.DirectoryEntry.FromString(entry.value or b"").version < version:
                        behind.append(key)
            except Exception as error:  # the bucket itself may not exist yet
                behind = [repr(error)]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"directory incomplete after {timeout:.0f}s: {behind[:3]}…")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


# ---- events -------------------------------------------------------------------------------------------


def _ts(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def battery_ref(producer: Party, serial: str) -> pb.BatteryRef:
    return pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=producer.credit_code, value=serial)


def life(
    chain: Chain,
    battery: pb.BatteryRef,
    start: dt.datetime,
    model_id: str,
    mode: int,
    rng: random.Random,
    *,
    full: bool = True,
) -> list[tuple[int, pb.FlowEvent]]:
    """(stage, event) for one battery: the e2e test's whole life, or (`full=False`) its first 10 events, up to
    the sorting centre's receipt. The stage is the index of the reporting party in `Chain`."""

    def event(stage: int, step: int, hours: float, **fields: Any) -> tuple[int, pb.FlowEvent]:
        message = pb.FlowEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event_time=_ts(start + dt.timedelta(hours=hours)),
            event_time_zone_offset="+08:00",
            biz_step=step,  # type: ignore[arg-type]
            facility_id=chain.stage(stage).facility_id,
            batteries=[battery],
            **fields,
        )
        return stage, message

    c = chain
    serial = battery.value
    manifest = [pb.BusinessTransaction(transaction_type="TRANSFER_MANIFEST", transaction_id=f"ZY-{serial}")]
    trade_in = [pb.BusinessTransaction(transaction_type="TRADE_IN_ORDER", transaction_id=f"TI-{serial}")]
    produced = dt.datetime.combine((start - dt.timedelta(days=30)).date(), dt.time(), dt.UTC)
    day = 24
    events = [
        event(0, pb.BIZ_STEP_COMMISSIONING, 0, model_id=model_id, production_date=_ts(produced)),
        event(0, pb.BIZ_STEP_SHIPPING, 1, destination_facility_id=c.dealer.facility_id),
        event(1, pb.BIZ_STEP_RECEIVING, 20, source_facility_id=c.producer.facility_id),
        event(1, pb.BIZ_STEP_RETAIL_SELLING, 30),
        event(
            2,
            pb.BIZ_STEP_COLLECTING,
            day * 60,
            collection_mode=mode,
            disposition=pb.DISPOSITION_WASTE,
            business_transactions=trade_in if mode == pb.COLLECTION_MODE_TRADE_IN else [],
        ),
        event(
            2,
            pb.BIZ_STEP_SHIPPING,
            day * 61,
            destination_facility_id=c.storage.facility_id,
            business_transactions=manifest,
        ),
        event(
            3,
            pb.BIZ_STEP_RECEIVING,
            day * 61 + 3,
            source_facility_id=c.outlet.facility_id,
            business_transactions=manifest,
        ),
        event(3, pb.BIZ_STEP_STORING, day * 61 + 4),
        event(3, pb.BIZ_STEP_SHIPPING, day * 65, destination_facility_id=c.sorter.facility_id),
        event(4, pb.BIZ_STEP_RECEIVING, day * 65 + 2, source_facility_id=c.storage.facility_id),
    ]
    if full:
        black_mass = pb.QuantityElement(product_class="black_mass", quantity=3.2, unit=pb.UNIT_OF_MEASURE_KILOGRAMS)
        events += [
            event(4, pb.BIZ_STEP_SORTING, day * 65 + 3),
            event(4, pb.BIZ_STEP_SHIPPING, day * 67, destination_facility_id=c.recycler.facility_id),
            event(5, pb.BIZ_STEP_RECEIVING, day * 67 + 5, source_facility_id=c.sorter.facility_id),
            event(5, pb.BIZ_STEP_DISCHARGING, day * 68),
            event(5, pb.BIZ_STEP_DISMANTLING, day * 69, outputs=[black_mass]),
            event(5, pb.BIZ_STEP_RECYCLING, day * 70),
        ]
    return events


@dataclass
class Batch:
    reporter: Party
    events: list[pb.FlowEvent]

    def request(self) -> bytes:
        message = pb.ReportEventsRequest(events=self.events, error_behaviour=pb.ERROR_BEHAVIOUR_PROCEED)
        return message.SerializeToString()


@dataclass
class Cohort:
    batches: list[Batch]
    batteries: list[tuple[pb.BatteryRef, bool]]  # (battery, whole life)

    @property
    def events(self) -> int:
        return sum(len(batch.events) for batch in self.batches)


def cohort(
    network: Network,
    models: dict[str, str],
    index: int,
    start: dt.datetime,
    *,
    full_share: float,
    tag: str,
) -> Cohort:
    """COHORT batteries on chain `index`, starting a minute apart from `start`; each party's events in batches
    of BATCH, ordered by battery and step, the parties in the order the batteries reach them."""
    rng = random.Random(f"{tag}-{index}")
    chain = network.chain(index)
    stages: list[list[pb.FlowEvent]] = [[] for _ in range(6)]
    batteries = []
    for number in range(COHORT):
        battery = battery_ref(chain.producer, f"{tag}{index:05d}B{number:03d}")
        full = full_share >= 1.0 or rng.random() < full_share
        batteries.append((battery, full))
        mode = COLLECTION_MODES[(index + number) % len(COLLECTION_MODES)]
        born = start + dt.timedelta(minutes=number)
        for stage, message in life(chain, battery, born, models[chain.producer.participant_id], mode, rng, full=full):
            stages[stage].append(message)
    batches = [
        Batch(chain.stage(stage), events[offset : offset + BATCH])
        for stage, events in enumerate(stages)
        for offset in range(0, len(events), BATCH)
    ]
    return Cohort(batches, batteries)


def cohort_starts(count: int, now: dt.datetime) -> list[dt.datetime]:
    """Cohort start times spread over 300 days, the first 380 days ago: every life (70 days) ends in the past
    and every event lies inside one statistics period of 390 days (the service allows 400)."""
    first = now - dt.timedelta(days=380)
    step = dt.timedelta(days=300) / max(1, count)
    return [first + i * step for i in range(count)]


def outcomes_of(replies: Sequence[bytes]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reply in replies:
        for result in pb.ReportEventsResponse.FromString(reply).results:
            name = pb.EventOutcome.Name(result.outcome).removeprefix("EVENT_OUTCOME_")
            counts[name] = counts.get(name, 0) + 1
    return counts


def first_problem(replies: Sequence[bytes]) -> str:
    for reply in replies:
        for result in pb.ReportEventsResponse.FromString(reply).results:
            if result.outcome != pb.EVENT_OUTCOME_ACCEPTED:
                return str(result).replace("\n", " ")[:600]
    return ""


def require_all_accepted(replies: Sequence[bytes], expected: int, what: str) -> None:
    counts = outcomes_of(replies)
    if counts.get("ACCEPTED", 0) != expected:
        raise RuntimeError(
            f"{what}: outcomes {counts}, expected {expected:,} ACCEPTED; first: {first_problem(replies)}"
        )


# ---- the flows service in its own process -------------------------------------------------------------


async def serve(database_url: str, nats_url: str, data_dir: Path) -> None:
    """Run the real flows runtime until SIGTERM/SIGINT, as a service process does (heap settled once started);
    print `READY <port>` once it listens. The benchmark reads its memory from /proc/<pid>/status."""
    from services.flows.service import DEFINITION

    await serve_runtime(DEFINITION, database_url, nats_url, data_dir, settle=True, pid_file=data_dir / PID_FILE)


@dataclass(frozen=True)
class Flows:
    target: str
    pid: int
    models: dict[str, str]  # producer participant id -> battery model id


@contextlib.asynccontextmanager
async def flows_service(database_url: str, nats_url: str, data_dir: Path, network: Network) -> Any:
    """The flows runtime in its own process on an already migrated database, SERVING, its directory loaded
    and a battery model registered per producer."""
    argv = [
        sys.executable, "-m", "bench.flows", "--serve", "--database-url", database_url, "--nats-url", nats_url,
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    with subprocess_server(argv, timeout=60) as target:
        if not await wait_serving(target, timeout=60):
            raise RuntimeError(f"the flows service at {target} is not SERVING")
        pid = int((data_dir / PID_FILE).read_text(encoding="utf-8"))
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = flows_pb2_grpc.FlowServiceStub(channel)
            models = {}
            for producer in network.producers:
                reply = await stub.RegisterBatteryModel(
                    pb.RegisterBatteryModelRequest(
                        model=pb.BatteryModel(
                            model_code="TDR-48V20AH",
                            chemistry=pb.CHEMISTRY_LFP,
                            nominal_voltage_v=48,
                            capacity_ah=20,
                            energy_wh=960,
                            mass_kg=9.5,
                            safe_service_life_years=5,
                        )
                    ),
                    metadata=producer.metadata,
                    timeout=30,
                )
                models[producer.participant_id] = reply.model.model_id
            await _directory_loaded(stub, network.producers[0])
        yield Flows(target, pid, models)


async def _directory_loaded(stub: flows_pb2_grpc.FlowServiceAsyncStub, reporter: Party, timeout: float = 60.0) -> None:
    """A report waits (up to 5 s, then UNAVAILABLE) for the directory snapshot: send one that is refused by
    validation (so nothing is stored) until it is answered."""
    deadline = time.monotonic() + timeout
    request = pb.ReportEventsRequest(events=[pb.FlowEvent()], error_behaviour=pb.ERROR_BEHAVIOUR_PROCEED)
    while True:
        try:
            await stub.ReportEvents(request, metadata=reporter.metadata, timeout=10)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


# ---- databases ---------------------------------------------------------------------------------------------


async def migrate_flows(url: str) -> None:
    from services.flows.service import MIGRATIONS

    database = Database(url)
    try:
        await migrate(database, MIGRATIONS)
    finally:
        await database.dispose()


async def create_pg_database(admin_url: str, name: str) -> str:
    url = make_url(admin_url)
    connection = await asyncpg.connect(
        user=url.username or "postgres",
        password=url.password,
        host=url.query.get("host") or url.host,
        port=url.port,
        database=url.database or "postgres",
    )
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return str(url.set(database=name).render_as_string(hide_password=False))


def _table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


# The tables the capture writes, in the order it writes them.
WRITTEN = (FlowEventRow, EventBatteryRow, ShipmentRow, FacilityLedgerRow, BatteryRow, OutboxEvent)


async def read_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables the capture writes, by table name, in primary-key order."""
    engine = build_engine(url)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        async with engine.connect() as connection:
            for model in WRITTEN:
                table = _table(model)
                result = await connection.execute(select(table).order_by(*table.primary_key.columns))
                rows[table.name] = [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()
    return rows


def raw_plan(rows: dict[str, list[dict[str, Any]]], batch_sizes: Sequence[int]) -> list[list[tuple[Table, list[Any]]]]:
    """The captured rows split into the batches they were reported in: an event's rows (its flow_event,
    event_battery, shipment and outbox_event rows) go with its batch; a battery's and a facility ledger's
    final row with the batch of their first event. Outbox rows as written: not yet published."""
    events = rows["flow_event"]
    outbox = rows["outbox_event"]
    if len(events) != sum(batch_sizes) or len(outbox) != len(events):
        raise RuntimeError(f"{len(events)} events and {len(outbox)} outbox rows for {sum(batch_sizes)} reported")
    batch_of: dict[int, int] = {}
    position = 0
    for number, size in enumerate(batch_sizes):
        for row in events[position : position + size]:
            batch_of[row["seq"]] = number
        position += size
    first_of_battery: dict[str, int] = {}
    for row in rows["event_battery"]:
        key = row["battery_key"]
        first_of_battery[key] = min(first_of_battery.get(key, row["event_seq"]), row["event_seq"])
    first_at_facility: dict[str, int] = {}
    for row in events:
        first_at_facility.setdefault(row["facility_id"], row["seq"])

    plan: list[dict[str, list[Any]]] = [{_table(model).name: [] for model in WRITTEN} for _ in batch_sizes]
    for row in events:
        plan[batch_of[row["seq"]]]["flow_event"].append(row)
    for row in rows["event_battery"]:
        plan[batch_of[row["event_seq"]]]["event_battery"].append(row)
    for row in rows["shipment"]:
        plan[batch_of[row["event_seq"]]]["shipment"].append(row)
    for row in rows["battery"]:
        plan[batch_of[first_of_battery[row["battery_key"]]]]["battery"].append(row)
    for row in rows["facility_ledger"]:
        plan[batch_of[first_at_facility[row["facility_id"]]]]["facility_ledger"].append(row)
    position = 0
    for number, size in enumerate(batch_sizes):
        for row in outbox[position : position + size]:
            plan[number]["outbox_event"].append({**row, "published_at": None, "attempts": 0, "last_error": None})
        position += size
    tables = [_table(model) for model in WRITTEN]
    return [[(table, batch[table.name]) for table in tables if batch[table.name]] for batch in plan]


async def raw_insert_rate(url: str, plan: Sequence[Sequence[tuple[Table, list[Any]]]], events: int) -> float:
    """Events/s inserting the planned rows into a freshly migrated database at `url`: per batch one
    transaction, one Core `insert()` executemany per table. Checks the row counts afterwards."""
    await migrate_flows(url)
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:  # opens the pooled connection before the clock starts
            await connection.execute(select(1))
        started = time.perf_counter()
        for batch in plan:
            async with engine.begin() as connection:
                for table, rows in batch:
                    await connection.execute(insert(table), rows)
        elapsed = time.perf_counter() - started
        async with engine.connect() as connection:
            for table in {table for batch in plan for table, _ in batch}:
                stored = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                planned = sum(len(rows) for batch in plan for t, rows in batch if t is table)
                if stored != planned:
                    raise RuntimeError(f"raw insert: {table.name} holds {stored} rows, planned {planned}")
    finally:
        await engine.dispose()
    return events / elapsed


# ---- client loops --------------------------------------------------------------------------------------


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


async def send_batches(target: str, requests: Sequence[tuple[bytes, Metadata]]) -> tuple[float, list[bytes]]:
    """ReportEvents calls one after another (a battery's later steps need its earlier ones stored); returns
    the seconds they took and the replies."""
    async with _channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPORT_EVENTS_METHOD)
        await channel.channel_ready()
        replies = []
        started = time.perf_counter()
        for request, metadata in requests:
            replies.append(await call(request, metadata=metadata, timeout=300))
        elapsed = time.perf_counter() - started
    return elapsed, replies


Lane = Sequence[Sequence[tuple[bytes, Metadata]]]  # a worker's battery lives, each a sequence of calls


@dataclass
class UnaryRun:
    rate: float  # successful calls per second
    replies: list[bytes]
    failures: list[str]  # one per failed call (the rest of that battery's life is then skipped)


async def report_throughput(target: str, warmup: Sequence[Lane], lanes: Sequence[Lane]) -> UnaryRun:
    """ReportEvent calls/s: one worker per lane, each sending its lane's calls in order and awaiting each
    reply before the next (the closed loop of `bench.grpc_reference.unary_throughput`, with each call's
    identity in its metadata and a battery's events in order). The warm-up lanes run first, untimed.

    A failed call is counted, not raised (the figure says how many failed), and the rest of that battery's
    life is skipped: its later events would only be refused for lack of the missing one."""
    async with _channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPORT_EVENT_METHOD)
        await channel.channel_ready()
        replies: list[bytes] = []
        failures: list[str] = []

        async def run(groups: Sequence[Lane]) -> None:
            async def worker(lane: Lane) -> None:
                for calls in lane:
                    for request, metadata in calls:
                        try:
                            replies.append(await call(request, metadata=metadata, timeout=60))
                        except grpc.aio.AioRpcError as error:
                            failures.append(f"{error.code().name}: {error.details()}")
                            break

            async with asyncio.TaskGroup() as group:
                for lane in groups:
                    group.create_task(worker(lane))

        await run(warmup)
        replies.clear()
        failures.clear()
        started = time.perf_counter()
        await run(lanes)
        elapsed = time.perf_counter() - started
    return UnaryRun(len(replies) / elapsed, replies, failures)


async def latencies(
    target: str, method: str, requests: Sequence[bytes], metadata: Metadata, warmup: int
) -> tuple[list[float], list[bytes]]:
    """Seconds per call, one call in flight (as `bench.grpc_reference.unary_latencies`, with the caller's
    identity in the metadata); the first `warmup` requests are not timed. Also returns the timed replies."""
    timed: list[float] = []
    replies: list[bytes] = []
    async with _channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await channel.channel_ready()
        for request in requests[:warmup]:
            await call(request, metadata=metadata, timeout=60)
        for request in requests[warmup:]:
            started = time.perf_counter()
            reply = await call(request, metadata=metadata, timeout=60)
            timed.append(time.perf_counter() - started)
            replies.append(reply)
    return timed, replies


def _show_latency(samples: Sequence[float]) -> str:
    return f"p50 {percentile(samples, 50) * 1000:.3f} ms, p99 {percentile(samples, 99) * 1000:.3f} ms"


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class Setting:
    """What every part of the run shares."""

    ctx: RunContext
    sizes: Sizes
    root: Path
    nats_url: str
    network: Network
    bare: str
    runs: int = 0

    def repeats(self) -> int:
        """Each ingest repeat starts a service on a fresh database: best of 3 (not 5) keeps the module's
        repeated figures to a few minutes. `--quick` runs once, as everywhere."""
        return min(self.ctx.repeats, REPEATS)

    def data_dir(self, label: str) -> Path:
        self.runs += 1
        return self.root / f"flows-{self.runs:02d}-{label}"


def load_size(ctx: RunContext, sizes: Sizes) -> int:
    configured = os.environ.get(LOAD_ENV, "").replace("_", "").strip()
    return int(configured) if configured else sizes.load_events


async def run(ctx: RunContext) -> None:
    sizes = QUICK if ctx.quick else FULL
    want = {name: ctx.selected(name) for name in BENCHES}
    # The traces' latency and their CPU are measured in the same calls.
    traces = want["flows.trace_p99"] or want["flows.trace_server_cpu_ms"]
    want_load = traces or want["flows.dispatch_statistics"] or want["flows.peak_memory"]

    started = time.perf_counter()
    points = await asyncio.to_thread(county_points)
    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-flows-") as directory:
        root = Path(directory)
        with NatsServer(store_dir=root / "nats") as nats:
            nats_url = nats.url
            registry_url = f"sqlite+aiosqlite:///{root / 'registry.db'}"
            from services.registry.service import MIGRATIONS as REGISTRY_MIGRATIONS

            registry_db = Database(registry_url)
            try:
                await migrate(registry_db, REGISTRY_MIGRATIONS)
            finally:
                await registry_db.dispose()
            with registry_server(registry_url, nats_url, root / "registry") as registry:
                if not await wait_serving(registry, timeout=60):
                    raise RuntimeError(f"the registry at {registry} is not SERVING")
                network, expected = await register_network(registry, points)
                await wait_for_directory(nats_url, expected)
            log(
                f"flows: network of {len(network.parties())} participants and sites in {len(COUNTIES)} districts of "
                f"province {PROVINCE} registered and in the directory after {time.perf_counter() - started:.1f}s"
            )
            ctx.facts["Flows"] = (
                f"the flows runtime in its own process with its default settings (spans to local JSON lines, outbox "
                f"relay, directory watch, monitors every 60 s), nats-server; a network of {len(network.parties())} "
                f"participants with one site each in {len(COUNTIES)} districts of Jiangsu, registered through the "
                "registry; events are whole battery lives (16 steps, tests/flows/test_flows_e2e.py)"
            )
            with reference_server() as bare:
                setting = Setting(ctx, sizes, root, nats_url, network, bare)
                if want["flows.batch_ingest_sqlite"] or want["flows.batch_ingest_postgresql"]:
                    await _ingest(setting, want["flows.batch_ingest_sqlite"], want["flows.batch_ingest_postgresql"])
                if want_load:
                    await _loaded(setting, want)
                if want["flows.unary_report"]:
                    await _unary(setting)


# ---- batch ingest ------------------------------------------------------------------------------------------


async def _ingest(setting: Setting, want_sqlite: bool, want_postgres: bool) -> None:
    ctx, sizes = setting.ctx, setting.sizes
    events = sizes.ingest_cohorts * COHORT * 16
    log(
        f"flows ingest: {events:,} events ({sizes.ingest_cohorts * COHORT:,} whole lives) per repeat, ReportEvents "
        f"batches of {BATCH}, PROCEED, one call in flight, a new database and service each repeat"
    )
    if want_sqlite:

        async def sqlite_urls(number: int) -> tuple[str, str]:
            return (
                f"sqlite+aiosqlite:///{setting.root / f'ingest-{number}.db'}",
                f"sqlite+aiosqlite:///{setting.root / f'raw-{number}.db'}",
            )

        await _ingest_on(setting, "flows.batch_ingest_sqlite", "sqlite", sqlite_urls)
    if want_postgres:
        started = time.perf_counter()
        with postgres_database() as admin_url:
            log(f"flows ingest: PostgreSQL ready in {time.perf_counter() - started:.1f}s")
            postmaster = await local_postmaster_pid(admin_url)
            if postmaster is not None:
                ctx.helper_pids.add(postmaster)
            suffix = uuid.uuid4().hex[:8]

            async def postgres_urls(number: int) -> tuple[str, str]:
                return (
                    await create_pg_database(admin_url, f"flows_ingest_{suffix}_{number}"),
                    await create_pg_database(admin_url, f"flows_raw_{suffix}_{number}"),
                )

            try:
                await _ingest_on(setting, "flows.batch_ingest_postgresql", "postgresql", postgres_urls)
            finally:
                ctx.helper_pids.discard(postmaster or 0)


async def _ingest_on(
    setting: Setting,
    name: str,
    label: str,
    urls: Callable[[int], Awaitable[tuple[str, str]]],
) -> None:
    ctx, sizes = setting.ctx, setting.sizes
    number = 0

    async def once() -> tuple[float, float]:
        nonlocal number
        number += 1
        service_url, raw_url = await urls(number)
        await migrate_flows(service_url)
        now = dt.datetime.now(CN)
        async with flows_service(service_url, setting.nats_url, setting.data_dir(label), setting.network) as flows:
            starts = cohort_starts(sizes.ingest_cohorts, now)
            cohorts = [
                cohort(setting.network, flows.models, index, start, full_share=1.0, tag=f"I{number}")
                for index, start in enumerate(starts)
            ]
            batches = [batch for c in cohorts for batch in c.batches]
            requests = [(batch.request(), batch.reporter.metadata) for batch in batches]
            elapsed, replies = await send_batches(flows.target, requests)
        sizes_of = [len(batch.events) for batch in batches]
        total = sum(sizes_of)
        require_all_accepted(replies, total, f"{label} ingest")
        plan = raw_plan(await read_rows(service_url), sizes_of)
        raw = await raw_insert_rate(raw_url, plan, total)
        return total / elapsed, raw

    runs = await measure_repeatedly(
        f"flows {label} ingest (ReportEvents) and raw insert of the same rows",
        setting.repeats(),
        once,
        lambda pair: f"service {pair[0]:,.1f} events/s, raw {pair[1]:,.1f} events/s, ratio {pair[0] / pair[1]:.3f}",
        other_cpu=ctx.other_cpu,
        helpers=ctx.helper_pids,
    )
    ctx.samples[name] = [service for service, _ in runs]
    service = max(service for service, _ in runs)
    raw = max(raw for _, raw in runs)
    events = sizes.ingest_cohorts * COHORT * 16
    ctx.emit(
        Result(
            name,
            service,
            "events/s",
            reference=(
                f"raw Core executemany of the same rows ({events:,} events; flow_event, event_battery, battery, "
                f"shipment, facility_ledger, outbox_event), {BATCH} events per transaction, {raw:,.0f} events/s "
                "(same run)"
            ),
            ratio=ratio_of(service, raw),
        )
    )


# ---- unary reports -------------------------------------------------------------------------------------------


def unary_lanes(network: Network, models: dict[str, str], lives: int, tag: str, now: dt.datetime) -> list[Lane]:
    """UNARY_CONCURRENCY lanes of `lives` whole lives each, every event a serialized ReportEventRequest with its
    reporter's metadata; a lane's batteries are its own, so its worker sends each battery's events in order."""
    lanes: list[Lane] = []
    for lane in range(UNARY_CONCURRENCY):
        rng = random.Random(f"{tag}-{lane}")
        lane_lives: list[list[tuple[bytes, Metadata]]] = []
        for number in range(lives):
            chain = network.chain(lane * lives + number)
            battery = battery_ref(chain.producer, f"{tag}L{lane:02d}N{number:03d}")
            start = now - dt.timedelta(days=200, minutes=lane * lives + number)
            mode = COLLECTION_MODES[(lane + number) % len(COLLECTION_MODES)]
            calls = []
            for stage, message in life(chain, battery, start, models[chain.producer.participant_id], mode, rng):
                request = pb.ReportEventRequest(event=message).SerializeToString()
                calls.append((request, chain.stage(stage).metadata))
            lane_lives.append(calls)
        lanes.append(lane_lives)
    return lanes


async def _unary(setting: Setting) -> None:
    ctx, sizes = setting.ctx, setting.sizes
    repeats = setting.repeats()
    bare = await _best_rate(
        setting,
        f"flows reference: bare unary x{sizes.bare_unary_calls} @{UNARY_CONCURRENCY} in flight",
        lambda: bare_unary_throughput(setting.bare, reference_payload(), sizes.bare_unary_calls, UNARY_CONCURRENCY),
        "calls/s",
        repeats,
    )
    url = f"sqlite+aiosqlite:///{setting.root / 'unary.db'}"
    await migrate_flows(url)
    calls = UNARY_CONCURRENCY * sizes.unary_lives * 16
    async with flows_service(url, setting.nats_url, setting.data_dir("unary"), setting.network) as flows:
        now = dt.datetime.now(CN)
        number = 0
        failed: list[int] = []

        async def once() -> float:
            nonlocal number
            number += 1
            warmup = unary_lanes(setting.network, flows.models, sizes.unary_warmup_lives, f"W{number}", now)
            lanes = unary_lanes(setting.network, flows.models, sizes.unary_lives, f"U{number}", now)
            measured = await report_throughput(flows.target, warmup, lanes)
            outcomes = [pb.ReportEventResponse.FromString(reply).result.outcome for reply in measured.replies]
            accepted = sum(outcome == pb.EVENT_OUTCOME_ACCEPTED for outcome in outcomes)
            if accepted != len(measured.replies):
                raise RuntimeError(f"unary: {accepted} of {len(measured.replies)} answered events ACCEPTED")
            if measured.failures:
                failed.append(len(measured.failures))
                log(f"flows unary: {len(measured.failures)} of {calls} calls failed, e.g. {measured.failures[0]}")
            return measured.rate

        rate = await _best_rate(
            setting,
            f"flows ReportEvent x{calls} @{UNARY_CONCURRENCY} in flight (SQLite)",
            once,
            "calls/s",
            repeats,
            name="flows.unary_report",
        )
    ctx.emit(
        Result(
            "flows.unary_report",
            rate,
            "calls/s",
            reference=(
                f"grpc.unary_calls_per_s ({UNARY_CONCURRENCY} in flight, bare grpc.aio, same run): "
                f"{bare:,.0f} calls/s; flows on a fresh SQLite database"
                + (f"; {sum(failed)} calls failed over the repeats (see the log)" if failed else "")
            ),
            ratio=ratio_of(rate, bare),
        )
    )


async def _best_rate(
    setting: Setting,
    label: str,
    measure: Callable[[], Awaitable[float]],
    unit: str,
    repeats: int,
    *,
    name: str | None = None,
) -> float:
    ctx = setting.ctx
    samples = await measure_repeatedly(
        label, repeats, measure, lambda rate: f"{rate:,.1f} {unit}", other_cpu=ctx.other_cpu, helpers=ctx.helper_pids
    )
    if name is not None:
        ctx.samples[name] = samples
    best = max(samples)
    if len(samples) > 1:
        log(f"{label}: best {best:,.1f} {unit} (median {statistics.median(samples):,.1f}, min {min(samples):,.1f})")
    return best


# ---- the loaded event log ------------------------------------------------------------------------------------


async def _unpublished(url: str) -> int:
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            outbox = _table(OutboxEvent)
            query = select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            return int((await connection.execute(query)).scalar_one())
    finally:
        await engine.dispose()


async def _loaded(setting: Setting, want: dict[str, bool]) -> None:
    ctx, sizes = setting.ctx, setting.sizes
    target_events = load_size(ctx, sizes)
    per_cohort = round(COHORT * (FULL_LIFE_SHARE * 16 + (1 - FULL_LIFE_SHARE) * 10))
    count = max(1, math.ceil(target_events / per_cohort))
    url = f"sqlite+aiosqlite:///{setting.root / 'loaded.db'}"
    await migrate_flows(url)
    now = dt.datetime.now(CN)
    async with flows_service(url, setting.nats_url, setting.data_dir("loaded"), setting.network) as flows:
        idle = memory_kib(flows.pid)["VmRSS"]
        log(
            f"flows load: about {count * per_cohort:,} events in {count} cohorts of {COHORT} batteries through "
            f"ReportEvents (batches of {BATCH}, one in flight) into SQLite; flows RSS {idle / 1024:.1f} MiB idle"
        )
        batteries: list[tuple[pb.BatteryRef, bool]] = []
        stored = 0
        started = time.perf_counter()
        shown = started
        async with _channel(flows.target) as channel:
            call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPORT_EVENTS_METHOD)
            for index, start in enumerate(cohort_starts(count, now)):
                made = cohort(setting.network, flows.models, index, start, full_share=FULL_LIFE_SHARE, tag="L")
                replies = [
                    await call(batch.request(), metadata=batch.reporter.metadata, timeout=300) for batch in made.batches
                ]
                require_all_accepted(replies, made.events, f"load, cohort {index}")
                stored += made.events
                batteries += made.batteries
                if time.perf_counter() - shown > 30 or index == count - 1:
                    shown = time.perf_counter()
                    elapsed = shown - started
                    log(
                        f"flows load: {stored:,} events in {elapsed:.0f}s ({stored / elapsed:,.0f} events/s), flows "
                        f"RSS {memory_kib(flows.pid)['VmRSS'] / 1024:.0f} MiB"
                    )
        load_seconds = time.perf_counter() - started
        memory = memory_kib(flows.pid)
        log(
            f"flows load: {stored:,} events stored in {load_seconds:.0f}s ({stored / load_seconds:,.0f} events/s); "
            f"flows VmHWM {memory['VmHWM'] / 1024:.1f} MiB, VmRSS {memory['VmRSS'] / 1024:.1f} MiB"
        )
        waited = time.perf_counter()
        backlog = await _unpublished(url)
        log(f"flows load: {backlog:,} events still to publish (outbox relay); waiting for it before the queries")
        while (left := await _unpublished(url)) > 0:
            if time.perf_counter() - waited > 1_800:
                raise RuntimeError(f"the outbox relay still has {left:,} events to publish after 30 minutes")
            await asyncio.sleep(2)
        drained = time.perf_counter() - waited
        memory_after = memory_kib(flows.pid)
        log(
            f"flows load: outbox relay caught up {drained:.0f}s after the load ({backlog / max(drained, 1e-9):,.0f} "
            f"events/s once alone); flows VmHWM {memory_after['VmHWM'] / 1024:.1f} MiB"
        )
        full = sum(1 for _, whole in batteries if whole)
        ctx.facts["Flows loaded"] = (
            f"{stored:,} events of {len(batteries):,} batteries ({full:,} whole lives of 16 events, the rest "
            f"10 events, still at a sorting centre) loaded through ReportEvents into SQLite in {load_seconds:.0f}s "
            f"({stored / load_seconds:,.0f} events/s, outbox relay and monitors running)"
        )
        if want["flows.peak_memory"]:
            ctx.emit(
                Result(
                    "flows.peak_memory",
                    memory["VmHWM"] / 1024,
                    "MiB",
                    reference=(
                        f"VmHWM of the flows process over loading {stored:,} events; reference: its RSS idle after "
                        f"start, {idle / 1024:.1f} MiB (same run)"
                    ),
                    ratio=ratio_of(memory["VmHWM"], idle),
                )
            )
        if want["flows.trace_p99"] or want["flows.trace_server_cpu_ms"] or want["flows.dispatch_statistics"]:
            await _queries(setting, flows, batteries, stored, now, want)


async def _queries(
    setting: Setting,
    flows: Flows,
    batteries: Sequence[tuple[pb.BatteryRef, bool]],
    stored: int,
    now: dt.datetime,
    want: dict[str, bool],
) -> None:
    ctx, sizes = setting.ctx, setting.sizes
    repeats = setting.repeats()
    size = f"{stored:,} events"

    runs = await measure_repeatedly(
        f"flows reference: bare unary latency, {sizes.trace_calls} calls one at a time",
        repeats,
        lambda: unary_latencies(setting.bare, reference_payload(), sizes.trace_calls),
        _show_latency,
        other_cpu=ctx.other_cpu,
        helpers=ctx.helper_pids,
    )
    best = min(runs, key=lambda samples: percentile(samples, 50))
    bare_p50, bare_p99 = percentile(best, 50) * 1000, percentile(best, 99) * 1000

    if want["flows.trace_p99"] or want["flows.trace_server_cpu_ms"]:
        rng = random.Random(99)
        metadata = signed_metadata(JIANGSU_REGULATOR)
        whole = next(ref for ref, full in batteries if full)
        partial = next(ref for ref, full in batteries if not full)
        await _check_traces(flows.target, whole, partial, metadata)
        picks = [batteries[rng.randrange(len(batteries))][0] for _ in range(sizes.trace_warmup + sizes.trace_calls)]
        requests = [pb.GetBatteryTraceRequest(battery_ref=ref).SerializeToString() for ref in picks]

        cpu_per_call: dict[str, list[float]] = {"trace": [], "rules": []}
        rules = [pb.ListRulesRequest().SerializeToString()] * (sizes.trace_warmup + sizes.trace_calls)

        async def traces() -> list[float]:
            fresh = signed_metadata(JIANGSU_REGULATOR)  # each repeat signs anew: a signature lasts 5 minutes
            # The flows process's CPU per call, warm-up included: the traces', then ListRules' (no database, the same
            # gRPC server and interceptors: what any call costs there).
            for kind, method, sent in (("trace", TRACE_METHOD, requests), ("rules", LIST_RULES_METHOD, rules)):
                before = process_cpu_seconds(flows.pid)
                timed, _ = await latencies(flows.target, method, sent, fresh, sizes.trace_warmup)
                cpu_per_call[kind].append((process_cpu_seconds(flows.pid) - before) / len(sent) * 1000)
                if kind == "trace":
                    traced = timed
            log(f"flows CPU per call: GetBatteryTrace {cpu_per_call['trace'][-1]:.3f} ms, ListRules "
                f"{cpu_per_call['rules'][-1]:.3f} ms")  # fmt: skip
            return traced

        runs = await measure_repeatedly(
            f"flows GetBatteryTrace, {sizes.trace_calls} random batteries of {len(batteries):,}, one at a time",
            repeats,
            traces,
            _show_latency,
            other_cpu=ctx.other_cpu,
            helpers=ctx.helper_pids,
        )
        best = min(runs, key=lambda samples: percentile(samples, 50))
        ctx.samples["flows.trace_p99"] = [percentile(samples, 99) * 1000 for samples in runs]
        value = percentile(best, 99) * 1000
        if want["flows.trace_p99"]:
            ctx.emit(
                Result(
                    "flows.trace_p99",
                    value,
                    "ms",
                    reference=(
                        f"grpc.unary_latency_p99_ms (bare grpc.aio, 1 in flight, same run): {bare_p99:.3f} ms; "
                        f"{sizes.trace_calls:,} traces of random batteries among {size} (SQLite), p50 "
                        f"{percentile(best, 50) * 1000:.3f} ms"
                    ),
                    ratio=ratio_of(value, bare_p99),
                )
            )
        ctx.samples["flows.trace_server_cpu_ms"] = cpu_per_call["trace"]
        trace_cpu, rules_cpu = min(cpu_per_call["trace"]), min(cpu_per_call["rules"])
        if want["flows.trace_server_cpu_ms"]:
            ctx.emit(
                Result(
                    "flows.trace_server_cpu_ms",
                    trace_cpu,
                    "ms",
                    reference=(
                        f"the flows process's CPU per ListRules call (no database; the same server and interceptors), "
                        f"{rules_cpu:.3f} ms (same run, same loop); CPU per GetBatteryTrace among {size}, least of "
                        f"{len(cpu_per_call['trace'])} runs"
                    ),
                    ratio=ratio_of(trace_cpu, rules_cpu),
                )
            )

    if want["flows.dispatch_statistics"]:
        request = pb.GetDispatchStatisticsRequest(
            division_code=PROVINCE,
            period_start=_ts(now - dt.timedelta(days=390)),
            period_end=_ts(now),
        ).SerializeToString()
        metadata = signed_metadata(JIANGSU_REGULATOR)
        full = sum(1 for _, whole in batteries if whole)
        _, replies = await latencies(flows.target, STATISTICS_METHOD, [request], metadata, warmup=0)
        figures = pb.GetDispatchStatisticsResponse.FromString(replies[0])
        got = (figures.collected_batteries, figures.delivered_to_recyclers_batteries, figures.recycled_batteries)
        if got != (len(batteries), full, full):
            raise RuntimeError(f"dispatch statistics (collected, delivered, recycled) = {got}, expected "
                               f"{(len(batteries), full, full)}")  # fmt: skip
        log(
            f"flows: dispatch statistics as expected: {figures.collected_batteries:,} collected, "
            f"{figures.recycled_batteries:,} recycled, {figures.late_reports:,} late reports, open alerts "
            f"{sum(a.open for a in figures.open_alerts)}"
        )

        async def median_ms() -> float:
            fresh = signed_metadata(JIANGSU_REGULATOR)  # each repeat signs anew: a signature lasts 5 minutes
            timed, _ = await latencies(
                flows.target, STATISTICS_METHOD, [request] * (sizes.statistics_calls + 1), fresh, warmup=1
            )
            return statistics.median(timed) * 1000

        medians = await measure_repeatedly(
            f"flows GetDispatchStatistics for province {PROVINCE} over {size}, median of {sizes.statistics_calls}",
            repeats,
            median_ms,
            lambda median: f"median {median:,.1f} ms",
            other_cpu=ctx.other_cpu,
            helpers=ctx.helper_pids,
        )
        ctx.samples["flows.dispatch_statistics"] = medians
        value = min(medians)
        ctx.emit(
            Result(
                "flows.dispatch_statistics",
                value,
                "ms",
                reference=(
                    f"grpc.unary_latency_p50_ms (bare grpc.aio, 1 in flight, same run): {bare_p50:.3f} ms; "
                    f"province {PROVINCE}, a 390-day period holding all {size} (SQLite), median of "
                    f"{sizes.statistics_calls} calls"
                ),
                ratio=ratio_of(value, bare_p50),
            )
        )


async def _check_traces(target: str, whole: pb.BatteryRef, partial: pb.BatteryRef, metadata: Metadata) -> None:
    """A whole life traces as 16 steps ending RECYCLED at a compliant channel; a partial one as 10."""
    async with _channel(target) as channel:
        stub = flows_pb2_grpc.FlowServiceStub(channel)
        for ref, steps, reached in ((whole, 16, True), (partial, 10, False)):
            trace = await stub.GetBatteryTrace(
                pb.GetBatteryTraceRequest(battery_ref=ref), metadata=metadata, timeout=30
            )
            if len(trace.steps) != steps or trace.reached_compliant_channel != reached:
                raise RuntimeError(
                    f"trace of {ref.value}: {len(trace.steps)} steps, compliant {trace.reached_compliant_channel}"
                )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The flows runtime for the benchmark (prints READY <port>).")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.database_url, args.nats_url, args.data_dir))


if __name__ == "__main__":
    main()
