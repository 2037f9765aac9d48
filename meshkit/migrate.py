"""Applying Alembic migrations: the shared meshkit branch plus the service's own branch."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import text
from sqlalchemy.engine import Connection

from meshkit.db import Database

MESHKIT_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same in every replica that may migrate concurrently.
_PG_ADVISORY_LOCK_KEY = 0x6772_6E6D  # "grnm"


def alembic_config(url: str, service_versions: Path | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MESHKIT_MIGRATIONS))
    locations = [str(MESHKIT_MIGRATIONS / "versions")]
    if service_versions is not None and service_versions.is_dir():
        locations.append(str(service_versions))
    # Alembic splits this option on the path separator named here.
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(locations))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates %
    return config


def _upgrade(connection: Connection, config: Config) -> None:
    if connection.dialect.name == "postgresql":
        # Several replicas may start at once; only one migrates, the others wait and find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_ADVISORY_LOCK_KEY})
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


async def migrate(database: Database, service_versions: Path | None) -> None:
    """Bring the database to the newest revision of every branch (idempotent)."""
    config = alembic_config(database.url, service_versions)
    with suppress_instrumentation():  # schema changes at start-up are not request traces
        async with database.engine.begin() as connection:
            await connection.run_sync(_upgrade, config)


def migrate_blocking(url: str, service_versions: Path | None) -> None:
    async def run() -> None:
        database = Database(url)
        try:
            await migrate(database, service_versions)
        finally:
            await database.dispose()

    asyncio.run(run())
