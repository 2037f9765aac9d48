"""Each service's Alembic migrations build exactly the tables its SQLModel classes describe.

The models are what the code queries; the migrations are what a deployed database has. If a column, an index or
a constraint is added to one and not the other, this test names it, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import Connection

from meshkit.db import Database
from meshkit.migrate import migrate

SERVICES = ["registry", "flows", "energy"]


def tables_of(module: ModuleType) -> list[Table]:
    return [v.__table__ for v in vars(module).values() if isinstance(getattr(v, "__table__", None), Table)]


def expected_metadata(service: str) -> MetaData:
    metadata = MetaData()
    for module_name in ("meshkit.tables", f"services.{service}.tables"):
        for table in tables_of(importlib.import_module(module_name)):
            table.to_metadata(metadata)
    return metadata


def differences(connection: Connection, metadata: MetaData) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_name": lambda name, kind, parent: kind != "table" or name != "alembic_version",
        },
    )
    return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_the_models(service: str, database_url: str) -> None:
    versions = Path(importlib.import_module(f"services.{service}.service").__file__ or "").parent / "migrations"
    database = Database(database_url)
    try:
        await migrate(database, versions / "versions")
        async with database.engine.connect() as connection:
            found = await connection.run_sync(differences, expected_metadata(service))
    finally:
        await database.dispose()
    assert found == [], "\n".join(map(str, found))
