"""The energy service over gRPC: bulk reading ingest against a raw insert of the same rows, and a savings
evaluation over a year of 15-minute readings against the bare domain computation.

Set-up (not timed): a nats-server, then the real registry runtime in its own process (`bench.registry --serve`)
on a fresh SQLite file; a data-centre operator and its DATA_CENTER site in 南京 玄武 (320102) are registered through
the registry's gRPC API. Once the registry's directory (the NATS KV bucket) holds them, the registry stops. Each
measurement starts the real energy runtime (`meshkit.server.ServiceRuntime` with
`services.energy.service.DEFINITION`, default settings: spans to local JSON lines, outbox relay, directory watch)
in its own process (`python -m bench.energy --serve ...`, printing `READY <port>`) on a freshly migrated SQLite
database, and creates the meters through the API.

Figures (references measured in the same run):
  - `energy.reading_ingest_sqlite`: readings/s through `UploadReadings` (one client stream, messages of 5,000
    readings of one meter, each message one transaction: judged by the domain, written with one executemany
    upsert) into a fresh database: 4 meters x one year of 15-minute readings (140,160 rows; `--quick`: 2 meters,
    70,080 rows), against SQLAlchemy Core executemany of the very rows the service stored (read back
    afterwards) into a fresh database with the same migrated schema, one transaction per 5,000 rows;
  - `energy.savings_evaluation`: seconds per `EvaluateSavings` call (the median of a few; each reads the plan's
    two series, 35,040 15-minute readings each, aligns them and fits the baseline) for a plan over one year
    (2025): baseline January-June, a one-day installation on 1 July, reporting from 2 July to the year's end,
    with IT load as the independent variable; against the bare `evaluate_savings` of the domain on the same
    aligned series in-process (the median of as many calls).
"""

from __future__ import annotations

# grpcio ships no type information of its own (see bench/grpc_reference.py).
# mypy: disable-error-code="import-untyped"
import argparse
import asyncio
import contextlib
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import func, insert, select

from bench.common import Result, RunContext, log, measure_repeatedly, ratio_of, serve_runtime, signed_metadata
from bench.grpc_reference import subprocess_server
from bench.registry import registry_server
from greenmesh.energy.v1 import energy_pb2 as pb
from greenmesh.energy.v1 import energy_pb2_grpc
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh.registry.v1 import registry_pb2_grpc
from greenmesh_cli.health import wait_serving
from meshkit.caller import Caller
from meshkit.db import Database, build_engine
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from services.energy.domain.readings import Period
from services.energy.domain.savings import IpmvpOption, Measure, MeasureType, MvPlan, SeriesData, evaluate_savings
from services.energy.tables import ReadingRow
from services.registry.domain.credit_code import make_credit_code

BENCHES: tuple[str, ...] = ("energy.reading_ingest_sqlite", "energy.savings_evaluation")

PLATFORM = Caller(participant_id="00000000-0000-7000-8000-000000000001", roles=frozenset({"PLATFORM_OPERATOR"}))
XUANWU = ("320102", 32.0750, 118.7960)
QUARTER = 900
CHUNK = 5_000  # readings per UploadReadings message, and rows per raw transaction
YEAR_START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
YEAR_POINTS = 35_040  # 365 days of 15-minute intervals
INSTALLATION = (dt.datetime(2025, 7, 1, tzinfo=dt.UTC), dt.datetime(2025, 7, 2, tzinfo=dt.UTC))
EVALUATION_CALLS = 5

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sizes:
    ingest_meters: int
    ingest_points: int  # readings per meter
    evaluation_calls: int


FULL = Sizes(4, YEAR_POINTS, EVALUATION_CALLS)
QUICK = Sizes(2, YEAR_POINTS, 3)


@dataclass(frozen=True)
class Operator:
    participant_id: str
    site_id: str

    @property
    def metadata(self) -> Metadata:
        caller = Caller(participant_id=self.participant_id, roles=frozenset({"DATA_CENTER_OPERATOR"}))
        return signed_metadata(caller)


# ---- set-up -------------------------------------------------------------------------------------------------


async def register_operator(target: str) -> Operator:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        meta = signed_metadata(PLATFORM)
        registered = await stub.RegisterParticipant(
            rpb.RegisterParticipantRequest(
                participant=rpb.Participant(
                    credit_code=make_credit_code(XUANWU[0], rng=random.Random(5)),
                    legal_name="基准数据中心运营企业",
                    roles=[rpb.PARTICIPANT_ROLE_DATA_CENTER_OPERATOR],
                )
            ),
            metadata=meta,
            timeout=30,
        )
        participant = registered.participant
        await stub.ChangeParticipantStatus(
            rpb.ChangeParticipantStatusRequest(
                participant_id=participant.participant_id,
                status=rpb.PARTICIPANT_STATUS_ACTIVE,
                reason="documents checked",
                version=participant.version,
            ),
            metadata=meta,
            timeout=30,
        )
        operator = Caller(participant_id=participant.participant_id, roles=frozenset({"DATA_CENTER_OPERATOR"}))
        site = await stub.RegisterFacility(
            rpb.RegisterFacilityRequest(
                facility=rpb.Facility(
                    operator_id=participant.participant_id,
                    operator_facility_code="BENCH-DC-1",
                    name="基准数据中心",
                    facility_type=rpb.FACILITY_TYPE_DATA_CENTER,
                    county_code=XUANWU[0],
                    location=rpb.GeoPoint(latitude=XUANWU[1], longitude=XUANWU[2]),
                    address="测试路 1 号",
                    opening_hours="00:00-24:00",
                    phone="025-8888 0000",
                    safety=rpb.SafetyAttributes(fire_class="A", has_monitoring=True),
                )
            ),
            metadata=signed_metadata(operator),
            timeout=30,
        )
    return Operator(participant.participant_id, site.facility.facility_id)


async def serve(database_url: str, nats_url: str, data_dir: Path) -> None:
    """Run the real energy runtime until SIGTERM/SIGINT; print `READY <port>` once it listens."""
    from services.energy.service import DEFINITION

    await serve_runtime(DEFINITION, database_url, nats_url, data_dir)


async def migrate_energy(url: str) -> None:
    from services.energy.service import MIGRATIONS

    database = Database(url)
    try:
        await migrate(database, MIGRATIONS)
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def energy_service(database_url: str, nats_url: str, data_dir: Path, operator: Operator) -> AsyncIterator[Any]:
    """The energy runtime in its own process on a migrated database, SERVING and its directory loaded; yields a
    stub on one channel."""
    await migrate_energy(database_url)
    argv = [
        sys.executable, "-m", "bench.energy", "--serve", "--database-url", database_url, "--nats-url", nats_url,
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    with subprocess_server(argv, timeout=60) as target:
        if not await wait_serving(target, timeout=60):
            raise RuntimeError(f"the energy service at {target} is not SERVING")
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = energy_pb2_grpc.EnergyServiceStub(channel)
            deadline = time.monotonic() + 60
            while True:  # until the directory holds the site (the meter is created then)
                try:
                    await stub.ListMeters(pb.ListMetersRequest(site_id=operator.site_id), metadata=operator.metadata)
                    await create_meter(stub, operator, pb.METER_ROLE_AUX, "warm-up")
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT):
                        raise
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            yield stub


async def create_meter(stub: Any, operator: Operator, role: pb.MeterRole.ValueType, name: str, **fields: Any) -> str:
    reply = await stub.CreateMeter(
        pb.CreateMeterRequest(
            meter=pb.Meter(
                site_id=operator.site_id,
                name=name,
                quantity=fields.pop("quantity", pb.METER_QUANTITY_ACTIVE_ENERGY),
                unit=pb.UNIT_KWH,
                mode=pb.READING_MODE_INTERVAL,
                interval=Duration(seconds=QUARTER),
                role=role,
                **fields,
            )
        ),
        metadata=operator.metadata,
        timeout=30,
    )
    return str(reply.meter.meter_id)


# ---- the series -----------------------------------------------------------------------------------------------


def it_load_series(points: int, seed: int) -> np.ndarray:
    """kWh per 15 minutes of an IT load around 800 kW with a daily cycle and noise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(points) / 4.0
    load_kw = 800 + 120 * np.sin(2 * np.pi * (hours % 24) / 24) + 40 * np.sin(2 * np.pi * hours / (24 * 365))
    return np.round((load_kw + rng.normal(0, 15, points)) / 4, 3)  # type: ignore[no-any-return]


def facility_series(it: np.ndarray, seed: int, saving_from: int) -> np.ndarray:
    """Facility kWh: 60 kWh fixed + 1.35 x IT per interval, 6 % less from `saving_from` on, with noise."""
    rng = np.random.default_rng(seed)
    energy = 60 + 1.35 * it + rng.normal(0, 4, it.size)
    energy[saving_from:] *= 0.94
    return np.round(energy, 3)


def upload_messages(meter_id: str, start: dt.datetime, values: np.ndarray) -> list[pb.UploadReadingsRequest]:
    first = int(start.timestamp())
    messages = []
    for offset in range(0, values.size, CHUNK):
        chunk = values[offset : offset + CHUNK]
        messages.append(
            pb.UploadReadingsRequest(
                meter_id=meter_id,
                readings=[
                    pb.Reading(
                        start_time=Timestamp(seconds=first + (offset + i) * QUARTER),
                        end_time=Timestamp(seconds=first + (offset + i + 1) * QUARTER),
                        value=float(v),
                    )
                    for i, v in enumerate(chunk)
                ],
            )
        )
    return messages


async def upload(stub: Any, operator: Operator, messages: Sequence[pb.UploadReadingsRequest]) -> tuple[float, Any]:
    async def stream() -> AsyncIterator[pb.UploadReadingsRequest]:
        for message in messages:
            yield message

    started = time.perf_counter()
    summary = await stub.UploadReadings(stream(), metadata=operator.metadata, timeout=600)
    return time.perf_counter() - started, summary


# ---- ingest ---------------------------------------------------------------------------------------------------


async def read_readings(url: str) -> list[dict[str, Any]]:
    engine = build_engine(url)
    table = ReadingRow.__table__  # type: ignore[attr-defined]
    try:
        async with engine.connect() as connection:
            result = await connection.execute(select(table).order_by(*table.primary_key.columns))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def raw_insert_rate(url: str, rows: Sequence[dict[str, Any]]) -> float:
    """Rows/s of Core executemany inserts of `rows` into a freshly migrated database, CHUNK rows a transaction."""
    await migrate_energy(url)
    engine = build_engine(url)
    table = ReadingRow.__table__  # type: ignore[attr-defined]
    try:
        async with engine.connect() as connection:
            await connection.execute(select(1))
        started = time.perf_counter()
        for offset in range(0, len(rows), CHUNK):
            async with engine.begin() as connection:
                await connection.execute(insert(table), list(rows[offset : offset + CHUNK]))
        elapsed = time.perf_counter() - started
        async with engine.connect() as connection:
            stored = (await connection.execute(select(func.count()).select_from(table))).scalar_one()
        if stored != len(rows):
            raise RuntimeError(f"raw insert stored {stored} of {len(rows)} rows")
    finally:
        await engine.dispose()
    return len(rows) / elapsed


async def _ingest(ctx: RunContext, sizes: Sizes, root: Path, nats_url: str, operator: Operator) -> None:
    number = 0
    total = sizes.ingest_meters * sizes.ingest_points

    async def once() -> tuple[float, float]:
        nonlocal number
        number += 1
        service_url = f"sqlite+aiosqlite:///{root / f'ingest-{number}.db'}"
        raw_url = f"sqlite+aiosqlite:///{root / f'raw-{number}.db'}"
        async with energy_service(service_url, nats_url, root / f"energy-ingest-{number}", operator) as stub:
            messages: list[pb.UploadReadingsRequest] = []
            for index in range(sizes.ingest_meters):
                meter_id = await create_meter(stub, operator, pb.METER_ROLE_FACILITY_TOTAL, f"meter {index}")
                messages += upload_messages(meter_id, YEAR_START, it_load_series(sizes.ingest_points, index) * 1.4)
            elapsed, summary = await upload(stub, operator, messages)
        if summary.inserted != total or summary.rejected:
            raise RuntimeError(f"upload: {summary}")
        raw = await raw_insert_rate(raw_url, await read_readings(service_url))
        return total / elapsed, raw

    runs = await measure_repeatedly(
        "energy sqlite ingest (UploadReadings) and raw insert of the same rows",
        ctx.repeats if ctx.quick else min(ctx.repeats, 3),
        once,
        lambda pair: f"service {pair[0]:,.0f} rows/s, raw {pair[1]:,.0f} rows/s, ratio {pair[0] / pair[1]:.3f}",
        other_cpu=ctx.other_cpu,
        helpers=ctx.helper_pids,
    )
    name = "energy.reading_ingest_sqlite"
    ctx.samples[name] = [service for service, _ in runs]
    service = max(service for service, _ in runs)
    raw = max(raw for _, raw in runs)
    ctx.emit(
        Result(
            name,
            service,
            "rows/s",
            reference=(
                f"raw Core executemany of the same {total:,} reading rows into the same migrated schema, "
                f"{CHUNK:,} rows per transaction, {raw:,.0f} rows/s (same run)"
            ),
            ratio=ratio_of(service, raw),
        )
    )


# ---- savings evaluation ---------------------------------------------------------------------------------------


async def _evaluation(ctx: RunContext, sizes: Sizes, root: Path, nats_url: str, operator: Operator) -> None:
    it = it_load_series(YEAR_POINTS, 11)
    saving_from = int((INSTALLATION[1] - YEAR_START).total_seconds()) // QUARTER
    energy = facility_series(it, 12, saving_from)
    url = f"sqlite+aiosqlite:///{root / 'evaluation.db'}"
    async with energy_service(url, nats_url, root / "energy-evaluation", operator) as stub:
        facility = await create_meter(stub, operator, pb.METER_ROLE_FACILITY_TOTAL, "facility")
        it_meter = await create_meter(
            stub, operator, pb.METER_ROLE_IT_LOAD, "IT", it_measurement_point=pb.IT_MEASUREMENT_POINT_UPS_OUTPUT
        )
        for meter_id, values in ((facility, energy), (it_meter, it)):
            _, summary = await upload(stub, operator, upload_messages(meter_id, YEAR_START, values))
            if summary.inserted != YEAR_POINTS:
                raise RuntimeError(f"upload: {summary}")
        measure = await stub.CreateMeasure(
            pb.CreateMeasureRequest(
                measure=pb.Measure(
                    site_id=operator.site_id,
                    measure_type=pb.MEASURE_TYPE_AI_CONTROL,
                    installation=_period(*INSTALLATION),
                )
            ),
            metadata=operator.metadata,
            timeout=30,
        )
        plan = await stub.CreateMvPlan(
            pb.CreateMvPlanRequest(
                plan=pb.MvPlan(
                    measure_id=measure.measure.measure_id,
                    option=pb.IPMVP_OPTION_C,
                    measurement_boundary=[operator.site_id],
                    energy_meter_ids=[facility],
                    baseline_period=_period(YEAR_START, INSTALLATION[0]),
                    reporting_period=_period(INSTALLATION[1], YEAR_START + dt.timedelta(days=365)),
                    interval=Duration(seconds=QUARTER),
                    independent_variables=[pb.IndependentVariable(name="it_load_kwh", meter_id=it_meter)],
                )
            ),
            metadata=operator.metadata,
            timeout=30,
        )
        request = pb.EvaluateSavingsRequest(plan_id=plan.plan.plan_id)

        async def call() -> float:
            started = time.perf_counter()
            reply = await stub.EvaluateSavings(request, metadata=operator.metadata, timeout=120)
            elapsed = time.perf_counter() - started
            result = reply.evaluation.result
            if result.model.n + result.reporting_points != YEAR_POINTS - 96:
                raise RuntimeError(f"evaluation used {result.model.n} + {result.reporting_points} points")
            return elapsed

        await call()  # warm-up: the first call creates version 1; the timed ones revise the draft
        service = [await call() for _ in range(sizes.evaluation_calls)]
    log(f"energy evaluation: EvaluateSavings {', '.join(f'{s * 1000:.0f} ms' for s in service)}")

    # The bare domain computation on the same aligned series.
    baseline_slots = int((INSTALLATION[0] - YEAR_START).total_seconds()) // QUARTER
    domain_plan = MvPlan(
        option=IpmvpOption.OPTION_C,
        measurement_boundary=(operator.site_id,),
        baseline_period=Period(YEAR_START, INSTALLATION[0]),
        reporting_period=Period(INSTALLATION[1], YEAR_START + dt.timedelta(days=365)),
        interval=dt.timedelta(seconds=QUARTER),
        independent_variables=("it_load_kwh",),
    )
    domain_measure = Measure("m", MeasureType.AI_CONTROL, Period(*INSTALLATION))
    baseline = SeriesData(energy[:baseline_slots], {"it_load_kwh": it[:baseline_slots]})
    reporting = SeriesData(energy[saving_from:], {"it_load_kwh": it[saving_from:]})
    bare = []
    for _ in range(sizes.evaluation_calls + 1):
        started = time.perf_counter()
        evaluate_savings(domain_plan, domain_measure, baseline, reporting)
        bare.append(time.perf_counter() - started)
    reference = statistics.median(bare[1:])
    value = statistics.median(service)
    ctx.samples["energy.savings_evaluation"] = service
    ctx.emit(
        Result(
            "energy.savings_evaluation",
            value,
            "s",
            reference=(
                f"the bare domain evaluate_savings on the same aligned series in-process, {reference * 1000:.1f} ms "
                f"(same run); {YEAR_POINTS:,} 15-minute points of energy and IT load"
            ),
            ratio=ratio_of(value, reference),
        )
    )


def _period(start: dt.datetime, end: dt.datetime) -> pb.Period:
    return pb.Period(
        start_time=Timestamp(seconds=int(start.timestamp())), end_time=Timestamp(seconds=int(end.timestamp()))
    )


async def run(ctx: RunContext) -> None:
    sizes = QUICK if ctx.quick else FULL
    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-energy-") as directory:
        root = Path(directory)
        with NatsServer(store_dir=root / "nats") as nats:
            registry_url = f"sqlite+aiosqlite:///{root / 'registry.db'}"
            from services.registry.service import MIGRATIONS as REGISTRY_MIGRATIONS

            registry_db = Database(registry_url)
            try:
                await migrate(registry_db, REGISTRY_MIGRATIONS)
            finally:
                await registry_db.dispose()
            with registry_server(registry_url, nats.url, root / "registry") as registry:
                if not await wait_serving(registry, timeout=60):
                    raise RuntimeError(f"the registry at {registry} is not SERVING")
                operator = await register_operator(registry)
                # The energy service reads the site from the directory, which the registry fills from its
                # own events: keep the registry up until a service has seen it (energy_service waits for that).
                url = f"sqlite+aiosqlite:///{root / 'probe.db'}"
                async with energy_service(url, nats.url, root / "energy-probe", operator):
                    pass
            ctx.facts["Energy"] = (
                "the energy runtime in its own process with its default settings (spans to local JSON lines, outbox "
                "relay, directory watch), nats-server; one DATA_CENTER site registered through the registry"
            )
            if ctx.selected("energy.reading_ingest_sqlite"):
                await _ingest(ctx, sizes, root, nats.url, operator)
            if ctx.selected("energy.savings_evaluation"):
                await _evaluation(ctx, sizes, root, nats.url, operator)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The energy runtime for the benchmark (prints READY <port>).")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.database_url, args.nats_url, args.data_dir))


if __name__ == "__main__":
    main()
