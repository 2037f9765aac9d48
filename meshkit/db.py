"""Async database access with SQLModel: SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg).

Each service owns its own database. `Database` bundles the engine and a session factory; build one per
service (never at import time) so tests can build as many as they need.

`Database.read` is the fast path for a short read that answers one call (a battery's trace): on SQLite,
aiosqlite sends every step of a statement (connect, execute, fetch, commit) through its own thread, each a
round trip through the event loop, so one primary-key read costs ~0.8 ms of which SQLite's work is ~0.1 ms.
`read` runs the whole read on a synchronous connection, in place on the event loop's thread (see `read` for why
not in a worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.config import normalise_database_url

T = TypeVar("T")
# Database.read's SQLite connections map the file (up to 2 GiB; SQLite caps it at its build's maximum, 2 GiB for
# the usual builds) and read pages from memory instead of a pread each: a battery's history is ~20 pages scattered
# over the file, which no page cache of a few MB holds once the file is large. With 1,000,000 events (2.3 GB) a
# trace's read measured p50 0.65 -> 0.39 ms and p99 1.8 -> 0.5 ms. The mapped pages are the kernel's page cache
# (clean, shared, reclaimable), though they show in the process's RSS once read. The writer keeps plain I/O.
READ_MMAP_BYTES = 2 * 1024**3


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers proceed while one writer commits; busy_timeout waits for the lock rather than
    # failing at once; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def build_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    url = normalise_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


def build_sync_sqlite_engine(url: str, *, echo: bool = False) -> Engine | None:
    """A synchronous (pysqlite) engine on the same SQLite file as `url`, with the same pragmas, for
    `Database.read`; None for anything else (PostgreSQL, or an in-memory SQLite database, which another
    connection would not see)."""
    parsed = make_url(normalise_database_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    # A read runs whole without yielding to the loop, so one connection serves a loop's reads; a Database used from
    # several threads (a test's, a CLI's) gets more, and a connection may move between them (never used by two at once).
    engine = create_engine(
        parsed.set(drivername="sqlite+pysqlite"),
        echo=echo,
        connect_args={"check_same_thread": False},
        pool_size=1,
        max_overflow=4,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "connect", _map_for_reads)
    return engine


def _map_for_reads(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA mmap_size={READ_MMAP_BYTES}")
    cursor.close()


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalise_database_url(url)
        self.engine = build_engine(self.url, echo=echo)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self.read_engine = build_sync_sqlite_engine(self.url, echo=echo)

    @property
    def engines(self) -> list[Engine]:
        """Every (synchronous) engine behind this database, for instrumentation."""
        return [self.engine.sync_engine] + ([self.read_engine] if self.read_engine is not None else [])

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self._sessions() as session, session.begin():
            yield session

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` on a synchronous connection, for a short read-only use of Core statements (one
        battery's rows: a few indexed lookups, never a scan).

        SQLite (a file): in place, on a pysqlite connection; each statement sees the latest committed data (WAL:
        the writer does not block it). Not in a worker thread: such a read is mostly Python (SQLAlchemy, building
        rows), which holds the GIL and so stops the loop's Python whichever thread runs it, and SQLite's own part is
        ~0.1 ms on mapped pages; a thread only added its hop (submit, wake-up, the loop woken back), measured at ~10%
        of a trace's CPU and latency (2026-12-02, `bench --only flows.trace`). PostgreSQL: on the async engine's
        connection via `run_sync` (asyncpg awaits in place). Nothing is committed: `work` must not write."""
        if self.read_engine is None:
            async with self.engine.connect() as connection:
                return await connection.run_sync(work)
        with self.read_engine.connect() as connection:
            return work(connection)

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            with suppress_instrumentation():  # readiness pings are not worth a trace each
                async with asyncio.timeout(timeout), self.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            # On Python 3.11 a cancellation that meets the timeout can surface as TimeoutError; a
            # task being cancelled must stop, not report the database as down and carry on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not None:
            self.read_engine.dispose()
