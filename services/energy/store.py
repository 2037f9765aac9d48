"""The energy service's queries. Only this module (and the migrations) touches the energy tables by name; the
servicer, the ingest and the figures speak rows and plain values.

The reading paths are SQLAlchemy Core on the session's connection: a batch is read with two range queries and
written with one executemany upsert, never one ORM object per reading. The values of independent series take the
same paths over their own table (``series_value``, keyed ``(series_id, start_s, end_s)``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table, and_, bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col
from sqlmodel import select as sm_select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.energy.domain.readings import QualityFlag
from services.energy.tables import (
    AssetRow,
    AssetTransitionRow,
    CatalogueEntryRow,
    DriftFindingRow,
    EvaluationRow,
    IndependentSeriesRow,
    MeasureRow,
    MeterRow,
    MvPlanRow,
    OperatingStateRow,
    PowerLinkRow,
    ReadingRow,
    RedundancyGroupRow,
    SeriesValueRow,
)

T = TypeVar("T")
IN_CHUNK = 500
WRITE_CHUNK = 2_000

FLAG_BITS: dict[QualityFlag, int] = {
    QualityFlag.ESTIMATED: 1,
    QualityFlag.NEGATIVE_DELTA: 2,
    QualityFlag.ROLLOVER: 4,
    QualityFlag.OUT_OF_RANGE: 8,
    QualityFlag.STUCK: 16,
}
"""Bits of ``reading.flags``; never renumber them (stored data)."""


def flags_to_bits(flags: Collection[QualityFlag]) -> int:
    bits = 0
    for flag in flags:
        bits |= FLAG_BITS[flag]
    return bits


def bits_to_flags(bits: int) -> list[QualityFlag]:
    return [flag for flag, bit in FLAG_BITS.items() if bits & bit]


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


READING = table(ReadingRow)
SERIES_VALUE = table(SeriesValueRow)
STATE = table(OperatingStateRow)


async def execute(session: AsyncSession, statement: Any, parameters: Any = None) -> Any:
    """A Core statement on the session's connection, inside its transaction, without ORM bookkeeping."""
    connection = await session.connection()
    return await connection.execute(statement, parameters)


def _dialect(session: AsyncSession) -> Any:
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


# ---- catalogue, assets, groups, links, meters -----------------------------------------------------------------


async def catalogue_entry(session: AsyncSession, entry_id: str) -> CatalogueEntryRow | None:
    return await session.get(CatalogueEntryRow, entry_id)


async def list_catalogue(
    session: AsyncSession, *, equipment_class: str, manufacturer: str, listed_only: bool, after: str, limit: int
) -> list[CatalogueEntryRow]:
    query = sm_select(CatalogueEntryRow).where(col(CatalogueEntryRow.catalogue_entry_id) > after)
    if equipment_class:
        query = query.where(col(CatalogueEntryRow.equipment_class) == equipment_class)
    if manufacturer:
        query = query.where(col(CatalogueEntryRow.manufacturer) == manufacturer)
    if listed_only:
        query = query.where(col(CatalogueEntryRow.listed).is_(True))
    query = query.order_by(col(CatalogueEntryRow.catalogue_entry_id)).limit(limit)
    return list((await session.exec(query)).all())


async def asset(session: AsyncSession, asset_id: str) -> AssetRow | None:
    return await session.get(AssetRow, asset_id)


async def assets(session: AsyncSession, asset_ids: Collection[str]) -> dict[str, AssetRow]:
    found: dict[str, AssetRow] = {}
    for part in chunks(sorted(asset_ids)):
        rows = await session.exec(sm_select(AssetRow).where(col(AssetRow.asset_id).in_(part)))
        found.update({row.asset_id: row for row in rows.all()})
    return found


@dataclass(frozen=True)
class Scope:
    """What a caller may see: everything, a division prefix (regulators), or one operator's records."""

    division_prefix: str = ""
    operator_id: str = ""


async def list_assets(
    session: AsyncSession,
    scope: Scope,
    *,
    site_id: str,
    equipment_class: str,
    lifecycle_state: str,
    after: str,
    limit: int,
) -> list[AssetRow]:
    query = sm_select(AssetRow).where(col(AssetRow.asset_id) > after)
    if scope.operator_id:
        query = query.where(col(AssetRow.operator_id) == scope.operator_id)
    if scope.division_prefix:
        query = query.where(col(AssetRow.county_code).startswith(scope.division_prefix))
    if site_id:
        query = query.where(col(AssetRow.site_id) == site_id)
    if equipment_class:
        query = query.where(col(AssetRow.equipment_class) == equipment_class)
    if lifecycle_state:
        query = query.where(col(AssetRow.lifecycle_state) == lifecycle_state)
    query = query.order_by(col(AssetRow.asset_id)).limit(limit)
    return list((await session.exec(query)).all())


async def transitions(session: AsyncSession, asset_id: str) -> list[AssetTransitionRow]:
    query = (
        sm_select(AssetTransitionRow)
        .where(col(AssetTransitionRow.asset_id) == asset_id)
        .order_by(col(AssetTransitionRow.number))
    )
    return list((await session.exec(query)).all())


async def links_of(session: AsyncSession, asset_id: str) -> tuple[list[PowerLinkRow], list[PowerLinkRow]]:
    """(links the asset feeds, links that feed it)."""
    feeds = await session.exec(sm_select(PowerLinkRow).where(col(PowerLinkRow.from_asset_id) == asset_id))
    fed_by = await session.exec(sm_select(PowerLinkRow).where(col(PowerLinkRow.to_asset_id) == asset_id))
    return list(feeds.all()), list(fed_by.all())


async def site_links(session: AsyncSession, site_id: str) -> list[tuple[str, str]]:
    rows = await session.exec(
        sm_select(PowerLinkRow.from_asset_id, PowerLinkRow.to_asset_id).where(col(PowerLinkRow.site_id) == site_id)
    )
    return [(a, b) for a, b in rows.all()]


async def redundancy_group(session: AsyncSession, group_id: str) -> RedundancyGroupRow | None:
    return await session.get(RedundancyGroupRow, group_id)


async def group_members(session: AsyncSession, group_id: str) -> int:
    rows = await session.exec(
        sm_select(func.count()).select_from(AssetRow).where(col(AssetRow.redundancy_group_id) == group_id)
    )
    return int(rows.one())


async def meter(session: AsyncSession, meter_id: str) -> MeterRow | None:
    return await session.get(MeterRow, meter_id)


async def meters(session: AsyncSession, meter_ids: Collection[str]) -> dict[str, MeterRow]:
    found: dict[str, MeterRow] = {}
    for part in chunks(sorted(meter_ids)):
        rows = await session.exec(sm_select(MeterRow).where(col(MeterRow.meter_id).in_(part)))
        found.update({row.meter_id: row for row in rows.all()})
    return found


async def list_meters(
    session: AsyncSession, *, site_ids: Collection[str] | None, site_id: str, asset_id: str, after: str, limit: int
) -> list[MeterRow]:
    query = sm_select(MeterRow).where(col(MeterRow.meter_id) > after)
    if site_ids is not None:
        query = query.where(col(MeterRow.site_id).in_(sorted(site_ids)))
    if site_id:
        query = query.where(col(MeterRow.site_id) == site_id)
    if asset_id:
        query = query.where(col(MeterRow.asset_id) == asset_id)
    return list((await session.exec(query.order_by(col(MeterRow.meter_id)).limit(limit))).all())


async def site_meters(session: AsyncSession, site_id: str) -> list[MeterRow]:
    return list((await session.exec(sm_select(MeterRow).where(col(MeterRow.site_id) == site_id))).all())


async def asset_meters(session: AsyncSession, asset_id: str) -> list[MeterRow]:
    return list((await session.exec(sm_select(MeterRow).where(col(MeterRow.asset_id) == asset_id))).all())


async def independent_series(session: AsyncSession, series_id: str) -> IndependentSeriesRow | None:
    return await session.get(IndependentSeriesRow, series_id)


async def independent_series_many(
    session: AsyncSession, series_ids: Collection[str]
) -> dict[str, IndependentSeriesRow]:
    found: dict[str, IndependentSeriesRow] = {}
    for part in chunks(sorted(series_ids)):
        rows = await session.exec(sm_select(IndependentSeriesRow).where(col(IndependentSeriesRow.series_id).in_(part)))
        found.update({row.series_id: row for row in rows.all()})
    return found


async def list_independent_series(
    session: AsyncSession, *, site_ids: Collection[str] | None, site_id: str, after: str, limit: int
) -> list[IndependentSeriesRow]:
    query = sm_select(IndependentSeriesRow).where(col(IndependentSeriesRow.series_id) > after)
    if site_ids is not None:
        query = query.where(col(IndependentSeriesRow.site_id).in_(sorted(site_ids)))
    if site_id:
        query = query.where(col(IndependentSeriesRow.site_id) == site_id)
    return list((await session.exec(query.order_by(col(IndependentSeriesRow.series_id)).limit(limit))).all())


# ---- readings --------------------------------------------------------------------------------------------------

StoredReading = tuple[int, int, float, int]  # start_s, end_s, value, flags


def _keyed(source: Table) -> tuple[Table, Any]:
    """A table of interval values and its key column: ``reading.meter_id`` or ``series_value.series_id``."""
    return source, source.c.meter_id if source is READING else source.c.series_id


async def readings_before(
    session: AsyncSession, meter_id: str, before_s: int, limit: int, *, source: Table = READING
) -> list[StoredReading]:
    """The last ``limit`` readings (of ``source``: a meter's, or a series' values) starting before ``before_s``,
    oldest first."""
    values, key = _keyed(source)
    c = values.c
    query = (
        select(c.start_s, c.end_s, c.value, c.flags)
        .where(and_(key == meter_id, c.start_s < before_s))
        .order_by(c.start_s.desc())
        .limit(limit)
    )
    rows = (await execute(session, query)).all()
    return [(int(s), int(e), float(v), int(f)) for s, e, v, f in reversed(rows)]


async def readings_starting_in(
    session: AsyncSession, meter_id: str, start_s: int, end_s: int, *, source: Table = READING
) -> list[StoredReading]:
    """Readings (of ``source``) whose start lies in [start_s, end_s), in time order."""
    values, key = _keyed(source)
    c = values.c
    query = (
        select(c.start_s, c.end_s, c.value, c.flags)
        .where(and_(key == meter_id, c.start_s >= start_s, c.start_s < end_s))
        .order_by(c.start_s)
    )
    return [(int(s), int(e), float(v), int(f)) for s, e, v, f in (await execute(session, query)).all()]


READING_COLUMNS = ("meter_id", "start_s", "end_s", "value", "consumption", "flags")
SERIES_VALUE_COLUMNS = ("series_id", "start_s", "end_s", "value", "flags")
_COLUMNS_OF = {"reading": READING_COLUMNS, "series_value": SERIES_VALUE_COLUMNS}


def reading_upsert(session: AsyncSession, source: Table = READING) -> Any:
    """INSERT … ON CONFLICT (key, start_s, end_s) DO UPDATE of every other column, for ``reading`` or
    ``series_value``."""
    columns = _COLUMNS_OF[source.name]
    statement = _dialect(session).insert(source)
    return statement.on_conflict_do_update(
        index_elements=list(columns[:3]), set_={name: statement.excluded[name] for name in columns[3:]}
    )


_upsert_sql: dict[tuple[str, str], str] = {}


def _upsert_statement(session: AsyncSession, source: Table) -> str:
    """The upsert compiled once per dialect and table, its parameters in the table's column order."""
    dialect = session.get_bind().dialect
    sql = _upsert_sql.get((dialect.name, source.name))
    if sql is None:
        compiled = reading_upsert(session, source).compile(dialect=dialect)
        if tuple(compiled.positiontup or ()) != _COLUMNS_OF[source.name]:  # pragma: no cover - a dialect change
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
        sql = _upsert_sql[(dialect.name, source.name)] = str(compiled)
    return sql


async def _upsert(session: AsyncSession, source: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    if not rows:
        return
    sql = _upsert_sql.get((session.get_bind().dialect.name, source.name)) or _upsert_statement(session, source)
    connection = await session.connection()
    for part in chunks(rows, WRITE_CHUNK):
        await connection.exec_driver_sql(sql, list(part))


async def upsert_readings(
    session: AsyncSession, rows: Sequence[tuple[str, int, int, float, float | None, int]]
) -> None:
    """One executemany upsert per WRITE_CHUNK rows, keyed on (meter_id, start_s, end_s). The rows are tuples in
    READING_COLUMNS order handed to the driver as they are: the statement is compiled once, and SQLAlchemy's
    per-row parameter processing (a dict per row) is skipped."""
    await _upsert(session, READING, rows)


async def upsert_series_values(session: AsyncSession, rows: Sequence[tuple[str, int, int, float, int]]) -> None:
    """:func:`upsert_readings` for series values, keyed on (series_id, start_s, end_s), SERIES_VALUE_COLUMNS order."""
    await _upsert(session, SERIES_VALUE, rows)


async def list_readings(
    session: AsyncSession, meter_id: str, start_s: int, end_s: int, limit: int
) -> list[tuple[int, int, float, float | None, int]]:
    c = READING.c
    query = (
        select(c.start_s, c.end_s, c.value, c.consumption, c.flags)
        .where(and_(c.meter_id == meter_id, c.start_s >= start_s, c.start_s < end_s))
        .order_by(c.start_s)
        .limit(limit)
    )
    return [(int(s), int(e), float(v), u, int(f)) for s, e, v, u, f in (await execute(session, query)).all()]


async def list_series_values(
    session: AsyncSession, series_id: str, start_s: int, end_s: int, limit: int
) -> list[tuple[int, int, float, float | None, int]]:
    """A series' values in the shape of :func:`list_readings` (no consumption)."""
    c = SERIES_VALUE.c
    query = (
        select(c.start_s, c.end_s, c.value, c.flags)
        .where(and_(c.series_id == series_id, c.start_s >= start_s, c.start_s < end_s))
        .order_by(c.start_s)
        .limit(limit)
    )
    return [(int(s), int(e), float(v), None, int(f)) for s, e, v, f in (await execute(session, query)).all()]


Columns = tuple[list[int], list[int], list[float], list[float | None], list[int]]
_series_sql: dict[tuple[str, str], str] = {}


def _series_statement(session: AsyncSession, source: Table) -> str:
    """The series query compiled once per dialect and table; parameters: key, start_s, end_s, end_s. The series
    values have no consumption: their value stands in its place."""
    dialect = session.get_bind().dialect
    sql = _series_sql.get((dialect.name, source.name))
    if sql is None:
        values, key = _keyed(source)
        c = values.c
        consumption = c.consumption if source is READING else c.value
        query = (
            select(c.start_s, c.end_s, c.value, consumption, c.flags)
            .where(
                and_(
                    key == bindparam("key"),
                    c.start_s >= bindparam("first"),
                    c.start_s < bindparam("last"),
                    c.end_s <= bindparam("bound"),
                )
            )
            .order_by(c.start_s)
        )
        compiled = query.compile(dialect=dialect)
        if tuple(compiled.positiontup or ()) != ("key", "first", "last", "bound"):  # pragma: no cover
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup}")
        sql = _series_sql[(dialect.name, source.name)] = str(compiled)
    return sql


async def series(
    session: AsyncSession, meter_ids: Collection[str], start_s: int, end_s: int, *, source: Table = READING
) -> dict[str, Columns]:
    """Columns (start, end, value, consumption, flags) of each meter's readings (or, with ``source`` =
    SERIES_VALUE, each independent series' values, consumption = value) lying inside [start_s, end_s). A year of
    15-minute readings is 35,040 rows per meter: the rows come straight from the driver (a statement compiled
    once, no result-row processing) and are transposed into columns in one step."""
    sql = _series_statement(session, source)
    connection = await session.connection()
    found: dict[str, Columns] = {}
    for meter_id in meter_ids:
        result = await connection.exec_driver_sql(sql, (meter_id, start_s, end_s, end_s))
        rows = result.all()
        if not rows:
            found[meter_id] = ([], [], [], [], [])
            continue
        starts, ends, values, consumptions, flags = (list(column) for column in zip(*rows, strict=True))
        found[meter_id] = (starts, ends, values, consumptions, flags)
    return found


# ---- operating states ------------------------------------------------------------------------------------------

StoredState = tuple[int, int, str, int | None]  # start_s, end_s, state, awake_modules


async def states_overlapping(session: AsyncSession, asset_id: str, start_s: int, end_s: int) -> list[StoredState]:
    """State intervals that share time with [start_s, end_s): those starting inside it, plus the last one
    starting before it (stored intervals never overlap each other)."""
    c = STATE.c
    inside = (
        select(c.start_s, c.end_s, c.state, c.awake_modules)
        .where(and_(c.asset_id == asset_id, c.start_s >= start_s, c.start_s < end_s))
        .order_by(c.start_s)
    )
    before = (
        select(c.start_s, c.end_s, c.state, c.awake_modules)
        .where(and_(c.asset_id == asset_id, c.start_s < start_s))
        .order_by(c.start_s.desc())
        .limit(1)
    )
    earlier = [(int(s), int(e), str(t), a) for s, e, t, a in (await execute(session, before)).all() if e > start_s]
    return earlier + [(int(s), int(e), str(t), a) for s, e, t, a in (await execute(session, inside)).all()]


async def insert_states(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await execute(session, insert(STATE), list(rows))


# ---- findings, measures, plans, evaluations --------------------------------------------------------------------


async def drift_finding_exists(session: AsyncSession, asset_id: str, window_end_s: int) -> bool:
    rows = await session.exec(
        sm_select(DriftFindingRow.finding_id).where(
            col(DriftFindingRow.asset_id) == asset_id, col(DriftFindingRow.window_end_s) == window_end_s
        )
    )
    return rows.first() is not None


async def measure(session: AsyncSession, measure_id: str) -> MeasureRow | None:
    return await session.get(MeasureRow, measure_id)


async def list_measures(
    session: AsyncSession,
    scope: Scope,
    *,
    site_id: str,
    operator_id: str,
    measure_type: str,
    after: str,
    limit: int,
) -> list[MeasureRow]:
    query = sm_select(MeasureRow).where(col(MeasureRow.measure_id) > after)
    if scope.operator_id:
        query = query.where(col(MeasureRow.operator_id) == scope.operator_id)
    if scope.division_prefix:
        query = query.where(col(MeasureRow.county_code).startswith(scope.division_prefix))
    if site_id:
        query = query.where(col(MeasureRow.site_id) == site_id)
    if operator_id:
        query = query.where(col(MeasureRow.operator_id) == operator_id)
    if measure_type:
        query = query.where(col(MeasureRow.measure_type) == measure_type)
    return list((await session.exec(query.order_by(col(MeasureRow.measure_id)).limit(limit))).all())


async def plan(session: AsyncSession, plan_id: str) -> MvPlanRow | None:
    return await session.get(MvPlanRow, plan_id)


async def plan_ids_of_measure(session: AsyncSession, measure_id: str) -> list[str]:
    query = (
        sm_select(MvPlanRow.plan_id)
        .where(col(MvPlanRow.measure_id) == measure_id)
        .order_by(col(MvPlanRow.created_at), col(MvPlanRow.plan_id))
    )
    return list((await session.exec(query)).all())


async def evaluation_versions(session: AsyncSession, evaluation_id: str) -> list[EvaluationRow]:
    query = (
        sm_select(EvaluationRow)
        .where(col(EvaluationRow.evaluation_id) == evaluation_id)
        .order_by(col(EvaluationRow.version))
    )
    return list((await session.exec(query)).all())


async def evaluation_of_plan(session: AsyncSession, plan_id: str) -> list[EvaluationRow]:
    query = sm_select(EvaluationRow).where(col(EvaluationRow.plan_id) == plan_id).order_by(col(EvaluationRow.version))
    return list((await session.exec(query)).all())


async def verified_evaluations(session: AsyncSession, scope: Scope) -> list[EvaluationRow]:
    query = sm_select(EvaluationRow).where(col(EvaluationRow.status) == "VERIFIED")
    if scope.operator_id:
        query = query.where(col(EvaluationRow.operator_id) == scope.operator_id)
    if scope.division_prefix:
        query = query.where(col(EvaluationRow.county_code).startswith(scope.division_prefix))
    return list((await session.exec(query)).all())


async def assets_in_scope(session: AsyncSession, scope: Scope) -> list[AssetRow]:
    query = sm_select(AssetRow)
    if scope.operator_id:
        query = query.where(col(AssetRow.operator_id) == scope.operator_id)
    if scope.division_prefix:
        query = query.where(col(AssetRow.county_code).startswith(scope.division_prefix))
    return list((await session.exec(query)).all())


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
