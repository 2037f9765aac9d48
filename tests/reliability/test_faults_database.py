"""Fault: the database goes away under load. SQLite: another connection holds the write lock (`BEGIN
EXCLUSIVE`) longer than the service's busy timeout. PostgreSQL: the service's backends are terminated
(`pg_terminate_backend`), then the server is stopped and started again. Clients get UNAVAILABLE (never INTERNAL),
send the same calls again, and in the end every event is stored exactly once, each battery's state agrees with
its events, and each stored event is in the stream once."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from meshkit.db import Database
from meshkit.errors import DATABASE_BUSY, DATABASE_UNAVAILABLE, database_unavailable
from meshkit.localinfra import EmbeddedPostgres
from tests.conftest import create_pg_database
from tests.reliability.conftest import Mesh, MeshFactory
from tests.reliability.helpers import Reporter, flows_tally

BUSY_TIMEOUT_SECONDS = 5.0  # meshkit/db.py: PRAGMA busy_timeout=5000


def hold_write_lock(path: Path, seconds: float) -> None:
    """Take SQLite's write lock from a connection of our own and keep it, as a stuck batch job would."""
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def under_load(mesh: Mesh, fault: Awaitable[object] | None = None) -> Reporter:
    """Report for a second, run `fault` while reporting, then report two more seconds; the reporter."""
    reporter = mesh.reporter(timeout=30.0)
    stop = asyncio.Event()
    load = asyncio.create_task(reporter.sustain(stop))
    try:
        await asyncio.sleep(1.0)
        if fault is not None:
            await fault
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await load
    return reporter


# ---- the mapping (meshkit.errors.database_unavailable), with errors the drivers really raise ----------


async def test_a_locked_sqlite_database_is_busy_not_internal(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sa_exc.OperationalError) as raised:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        await engine.dispose()
        holder.execute("ROLLBACK")
        holder.close()
    unavailable = database_unavailable(raised.value)
    assert unavailable is not None and unavailable.reason == DATABASE_BUSY


async def test_an_unreachable_postgresql_is_unavailable_not_internal(tmp_path: Path) -> None:
    # No server behind this socket directory: asyncpg's connect raises an OSError that SQLAlchemy passes on as is.
    database = Database(f"postgresql+asyncpg://postgres@/postgres?host={tmp_path / 'no-server'}")
    try:
        with pytest.raises(OSError) as raised:
            async with database.session() as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    finally:
        await database.dispose()
    unavailable = database_unavailable(raised.value)
    assert unavailable is not None and unavailable.reason == DATABASE_UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),  # 57P03
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),  # 08003
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),  # 53300
    ],
    ids=lambda error: type(error).__name__,
)
def test_postgresql_connection_errors_are_unavailable(error: Exception) -> None:
    wrapped = sa_exc.DBAPIError("SELECT 1", None, error)  # as SQLAlchemy raises it during a statement
    for raised in (error, wrapped):
        unavailable = database_unavailable(raised)
        assert unavailable is not None and unavailable.reason == DATABASE_UNAVAILABLE


def test_other_errors_stay_internal() -> None:
    assert database_unavailable(OSError("a file of the service itself is missing")) is None  # not from a driver
    assert database_unavailable(RuntimeError("a bug")) is None
    integrity = sa_exc.IntegrityError("INSERT", None, sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert database_unavailable(integrity) is None
    syntax = asyncpg.exceptions.PostgresSyntaxError("syntax error at or near")  # 42601: a bug, not an outage
    assert database_unavailable(sa_exc.DBAPIError("SELEC 1", None, syntax)) is None


# ---- under load ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_sqlite_write_lock_held_past_the_busy_timeout(inprocess_mesh: MeshFactory, tmp_path: Path) -> None:
    path = tmp_path / "flows-locked.db"
    database_url = f"sqlite+aiosqlite:///{path}"
    mesh = await inprocess_mesh(database_url)
    fault = asyncio.ensure_future(asyncio.to_thread(hold_write_lock, path, BUSY_TIMEOUT_SECONDS + 2.5))
    reporter = await under_load(mesh, fault)

    tally = await flows_tally("SQLite write lock held 7.5 s (BEGIN EXCLUSIVE)", reporter, database_url, mesh.nats.url)
    tally.report()
    tally.assert_nothing_lost()
    assert tally.extra["batteries_inconsistent"] == 0, tally.line()
    # The lock was felt, and only as a clear, retryable answer.
    assert reporter.codes, tally.line()
    assert set(reporter.codes) <= {"UNAVAILABLE", "ABORTED"}, tally.line()


async def terminate_backends(admin_url: str, database: str) -> int:
    """`pg_terminate_backend` for every session of `database` (the flows service's pool): what a failover or an
    administrator does to the connections of a running service."""
    url = make_url(admin_url)
    connection = await asyncpg.connect(
        user=url.username or "postgres", host=url.query.get("host") or url.host, port=url.port, database="postgres"
    )
    try:
        rows = await connection.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        return sum(1 for row in rows if row[0])
    finally:
        await connection.close()


@pytest.mark.slow
async def test_postgresql_backends_terminated_then_server_restarted(inprocess_mesh: MeshFactory) -> None:
    # A server of its own, to stop and start. Its data lives outside pytest's base temporary directory: a pytest
    # session starting meanwhile (another suite on this machine) makes that directory private to its owner again,
    # and the server, which runs as its own system user when the tests run as root, could not start back there.
    place = tempfile.TemporaryDirectory(prefix="greenmesh-pg-")
    postgres = EmbeddedPostgres(data_dir=Path(place.name) / "data").start()
    try:
        admin_url = postgres.url("postgres")
        database_url = await create_pg_database(admin_url)
        mesh = await inprocess_mesh(database_url)
        terminated: list[int] = []

        async def faults() -> None:
            terminated.append(await terminate_backends(admin_url, str(make_url(database_url).database)))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(postgres.pause)  # pg_ctl stop -m fast: every connection is cut
            await asyncio.sleep(2.0)
            await asyncio.to_thread(postgres.resume)

        reporter = await under_load(mesh, asyncio.ensure_future(faults()))
        tally = await flows_tally(
            "PostgreSQL backends terminated, then server stopped 2 s and started",
            reporter,
            database_url,
            mesh.nats.url,
            backends_terminated=terminated[0],
        )
        tally.report()
        tally.assert_nothing_lost()
        assert tally.extra["batteries_inconsistent"] == 0, tally.line()
        assert terminated[0] > 0 and reporter.codes, tally.line()
        assert set(reporter.codes) <= {"UNAVAILABLE", "ABORTED"}, tally.line()
        await mesh.runtime.stop()  # before the server goes away for good
    finally:
        postgres.stop()
        place.cleanup()
