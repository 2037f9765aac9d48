"""Migrations and the shared tables on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from greenmesh.mesh.v1 import probe_pb2
from meshkit.db import Database
from meshkit.migrate import migrate
from meshkit.outbox import append_event
from meshkit.tables import InboxMessage, OutboxEvent
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
