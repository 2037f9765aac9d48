"""Migrations, the shared tables and `Database.read` on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Connection, inspect, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from greenmesh.mesh.v1 import probe_pb2
from meshkit.db import Database
from meshkit.migrate import migrate
from meshkit.outbox import append_event
from meshkit.tables import InboxMessage, OutboxEvent
from meshkit.telemetry import Telemetry, instrument_engine
from services.registry.service import MIGRATIONS as REGISTRY_MIGRATIONS


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate(db, REGISTRY_MIGRATIONS)
    yield db
    await db.dispose()


async def test_migrations_create_the_shared_tables_and_are_idempotent(database: Database) -> None:
    await migrate(database, REGISTRY_MIGRATIONS)  # a second run changes nothing and does not fail
    async with database.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert {"outbox_event", "inbox_message", "probe_emission", "probe_receipt", "alembic_version"} <= tables


async def test_outbox_rows_keep_commit_order_and_roll_back_with_the_change(database: Database) -> None:
    async with database.transaction() as session:
        for i in range(3):
            append_event(session, "greenmesh.32.registry.v1.probe_emitted", probe_pb2.ProbeEmitted(probe_id=f"p{i}"))
    with pytest.raises(RuntimeError):
        async with database.transaction() as session:
            append_event(session, "greenmesh.32.registry.v1.probe_emitted", probe_pb2.ProbeEmitted(probe_id="lost"))
            raise RuntimeError("the domain change failed")
    async with database.session() as session:
        rows = list((await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))).all())
    assert [probe_pb2.ProbeEmitted.FromString(r.payload).probe_id for r in rows] == ["p0", "p1", "p2"]
    assert all(r.published_at is None and r.event_type == "greenmesh.mesh.v1.ProbeEmitted" for r in rows)
    assert len({r.event_id for r in rows}) == 3


async def test_inbox_key_is_unique_per_consumer(database: Database) -> None:
    now = datetime.now(UTC)
    async with database.transaction() as session:
        session.add(InboxMessage(consumer="flows--registry", message_id="m1", subject="s", received_at=now))
        session.add(InboxMessage(consumer="energy--registry", message_id="m1", subject="s", received_at=now))
    with pytest.raises(IntegrityError):
        async with database.transaction() as session:
            session.add(InboxMessage(consumer="flows--registry", message_id="m1", subject="s", received_at=now))


def _message_ids(connection: Connection) -> list[str]:
    inbox = InboxMessage.__table__  # type: ignore[attr-defined]
    return [row.message_id for row in connection.execute(sa_select(inbox.c.message_id).order_by(inbox.c.message_id))]


async def test_read_sees_what_is_committed_and_nothing_else(database: Database) -> None:
    """Database.read (the fast path for a call's read) sees committed rows, not a transaction still open."""
    now = datetime.now(UTC)
    async with database.transaction() as session:
        session.add(InboxMessage(consumer="c", message_id="committed", subject="s", received_at=now))
    async with database.transaction() as session:
        session.add(InboxMessage(consumer="c", message_id="pending", subject="s", received_at=now))
        await session.flush()  # written inside the open transaction
        assert await database.read(_message_ids) == ["committed"]
    assert await database.read(_message_ids) == ["committed", "pending"]


async def test_read_runs_on_the_loops_thread_on_sqlite_through_pysqlite(database: Database) -> None:
    """No worker thread either way: a SQLite file is read in place on its own pysqlite connection, PostgreSQL
    through run_sync on the asyncpg connection (which awaits on the loop's thread)."""

    def where(connection: Connection) -> tuple[int, str]:
        connection.execute(text("SELECT 1"))
        connection.execute(text("SELECT 2"))  # a second statement: still the same thread
        return threading.get_ident(), connection.engine.url.drivername

    ident, driver = await database.read(where)
    assert ident == threading.get_ident()
    if database.is_postgres:
        assert database.read_engine is None and driver == "postgresql+asyncpg"
    else:
        assert database.read_engine is not None and driver == "sqlite+pysqlite"


async def test_read_on_an_in_memory_sqlite_database_uses_its_own_connection() -> None:
    """Another connection would open another (empty) in-memory database, so `read` takes the async engine's."""
    db = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert db.read_engine is None and len(db.engines) == 1
        assert await db.read(lambda connection: connection.execute(text("SELECT 41 + 1")).scalar_one()) == 42
    finally:
        await db.dispose()


async def test_a_reads_sql_span_is_a_child_of_the_callers_span(database: Database) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider=provider, component="test")
    for engine in database.engines:
        instrument_engine(engine, telemetry)
    with provider.get_tracer("test").start_as_current_span("the call") as call:
        await database.read(_message_ids)
    spans = exporter.get_finished_spans()
    sql = [s for s in spans if s.name != "the call" and s.attributes and "db.statement" in s.attributes]
    assert sql, [s.name for s in spans]
    assert all(s.parent is not None and s.parent.span_id == call.get_span_context().span_id for s in sql)
    assert "inbox_message" in str((sql[-1].attributes or {})["db.statement"])


async def test_reads_on_a_sqlite_file_map_it_and_the_writer_does_not(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'mapped.db'}")
    try:
        mapped = await db.read(lambda connection: connection.execute(text("PRAGMA mmap_size")).scalar_one())
        assert mapped > 0
        async with db.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA mmap_size"))).scalar_one() == 0
    finally:
        await db.dispose()
