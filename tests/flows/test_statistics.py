"""Dispatch statistics (定期调度) straight from the flows tables, on SQLite and PostgreSQL: rows are inserted
directly (this tests the figures, not the capture). October 2026 in Jiangsu (32) is the period; Guangdong
(44) rows, declared events, and rows just outside the period must not count."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import event as sql_event
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.db import Database
from meshkit.migrate import migrate
from services.flows.domain.events import BizStep
from services.flows.statistics import (
    AlertFigure,
    DispatchFigures,
    ModeFigure,
    dispatch_statistics,
    division_prefix,
    figures_to_proto,
    statistics_violations,
)
from services.flows.tables import AlertRow, BatteryRow, FlowEventRow

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "flows" / "migrations" / "versions"
CHINA = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2026, 10, 1, tzinfo=CHINA)  # 2026-09-30T16:00Z
END = dt.datetime(2026, 11, 1, tzinfo=CHINA)
MID = dt.datetime(2026, 10, 15, 10, 30, tzinfo=CHINA)
JUST_BEFORE_END = END - dt.timedelta(microseconds=1)
XUANWU, SUZHOU, TAIZHOU_JS, NANSHAN = "320102", "320506", "321002", "440305"
_numbers = itertools.count(1)


def event(
    step: str,
    county: str,
    when: dt.datetime,
    *,
    batteries: int = 1,
    kg: float = 10.0,
    mode: str = "",
    facility_type: str = "RECYCLING_OUTLET",
    late: bool = False,
    declared: bool = False,
) -> FlowEventRow:
    number = next(_numbers)
    moment = when.astimezone(dt.UTC)  # the capture stores UTC
    return FlowEventRow(
        event_id=str(uuid.uuid4()),
        event_hash=f"ni:///sha-256;{number:064x}?ver=CBV2.0",
        biz_step=step,
        event_time=moment,
        record_time=moment + dt.timedelta(hours=1),
        reporter_id=str(uuid.uuid4()),
        facility_id=f"facility-{number}",
        facility_type=facility_type,
        county_code=county,
        collection_mode=mode,
        outcome="ACCEPTED",
        battery_count=batteries,
        mass_kg=kg,
        late=late,
        declared=declared,
        payload=b"",
    )


def battery(county: str, collected_at: dt.datetime | None, reached: bool) -> BatteryRow:
    number = next(_numbers)
    return BatteryRow(
        battery_key=f"urn:greenmesh:battery:platform:GM{number:08d}",
        scheme="PLATFORM",
        value=f"GM{number:08d}",
        state="RECYCLED" if reached else "COLLECTED",
        phase="REVERSE",
        reached_recycler=reached,
        collected_at=collected_at.astimezone(dt.UTC) if collected_at else None,
        collected_county=county if collected_at else "",
        collected_mode="TRADE_IN" if collected_at else "",
    )


def alert(kind: str, status: str, county: str) -> AlertRow:
    alert_id = str(uuid.uuid4())
    return AlertRow(
        alert_id=alert_id,
        kind=kind,
        severity="WARNING",
        status=status,
        county_code=county,
        message=f"{kind} in {county}",
        raised_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),  # long before the period: alerts are not period-bound
        open_key=None if status == "RESOLVED" else f"{kind}:{alert_id}",
    )


def rows() -> list[Any]:
    collected = [
        event("COLLECTING", XUANWU, MID, batteries=3, kg=30.5, mode="TRADE_IN"),
        event("COLLECTING", SUZHOU, MID, batteries=2, kg=20.25, mode="TRADE_IN"),
        event("COLLECTING", XUANWU, MID, batteries=1, kg=12.0, mode="DOOR_TO_DOOR", late=True),
        event("COLLECTING", TAIZHOU_JS, MID, batteries=5, kg=40.0, mode="COOP_STATION", facility_type="COOP_STATION"),
        event("COLLECTING", XUANWU, START, batteries=4, kg=8.0, mode="INTERNET"),  # the first instant counts
        event("COLLECTING", XUANWU, JUST_BEFORE_END, batteries=7, kg=70.0, mode="FLEET_RETURN"),
        # not counted: declared in error, another province, at the end instant, just before the start
        event("COLLECTING", XUANWU, MID, batteries=100, kg=1000.0, mode="TRADE_IN", declared=True, late=True),
        event("COLLECTING", NANSHAN, MID, batteries=50, kg=500.0, mode="DROP_OFF", late=True),
        event("COLLECTING", XUANWU, END, batteries=60, kg=600.0, mode="FLEET_RETURN", late=True),
        event("COLLECTING", XUANWU, START - dt.timedelta(seconds=1), batteries=70, kg=700.0, mode="TRADE_IN"),
    ]
    delivered = [
        event("RECEIVING", XUANWU, MID, batteries=6, kg=60.0, facility_type="DISMANTLING_BASE"),
        event("RECEIVING", SUZHOU, MID, batteries=4, kg=41.5, facility_type="RECYCLING_PLANT", late=True),
        # a receipt at a storage point is not a delivery to a recycler
        event("RECEIVING", XUANWU, MID, batteries=10, kg=100.0, facility_type="TEMP_STORAGE_POINT"),
        event("RECEIVING", XUANWU, MID, batteries=9, kg=90.0, facility_type="RECYCLING_PLANT", declared=True),
        event("RECEIVING", NANSHAN, MID, batteries=8, kg=80.0, facility_type="RECYCLING_PLANT"),
    ]
    recycled = [
        event("RECYCLING", TAIZHOU_JS, MID, batteries=3, kg=29.0, facility_type="RECYCLING_PLANT"),
        event("RECYCLING", XUANWU, MID, batteries=0, kg=12.5, facility_type="RECYCLING_PLANT"),  # by weight only
        event("RECYCLING", XUANWU, END, batteries=5, kg=50.0, facility_type="RECYCLING_PLANT"),
    ]
    other = [
        event("SHIPPING", XUANWU, MID, late=True),  # late, and only that
        event("STORING", SUZHOU, MID, late=True, declared=True),
        event("SHIPPING", XUANWU, END + dt.timedelta(days=3), late=True),
    ]
    batteries = [
        battery(XUANWU, MID, reached=True),
        battery(SUZHOU, MID, reached=False),
        battery(TAIZHOU_JS, MID, reached=True),
        battery(XUANWU, START, reached=False),  # the first instant counts
        battery(NANSHAN, MID, reached=True),  # another province
        battery(XUANWU, START - dt.timedelta(days=1), reached=True),  # collected before the period
        battery(XUANWU, END, reached=True),  # at the end instant: the next period's
        battery(XUANWU, None, reached=False),  # never collected
    ]
    alerts = [
        alert("OVERDUE_STORAGE", "OPEN", XUANWU),
        alert("OVERDUE_STORAGE", "ACKNOWLEDGED", SUZHOU),
        alert("OVERDUE_STORAGE", "RESOLVED", XUANWU),
        alert("POSSIBLE_DIVERSION", "OPEN", TAIZHOU_JS),
        alert("MASS_BALANCE", "OPEN", NANSHAN),
    ]
    return [*collected, *delivered, *recycled, *other, *batteries, *alerts]


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await migrate(database, MIGRATIONS)
    async with database.transaction() as session:
        session.add_all(rows())
    yield database
    await database.dispose()


async def figures_of(database: Database, division: str, start: dt.datetime = START, end: dt.datetime = END) -> Any:
    async with database.session() as session:
        return await dispatch_statistics(session, division, start, end)


def modes(figures: DispatchFigures) -> dict[str, tuple[int, float]]:
    return {m.mode: (m.batteries, m.kilograms) for m in figures.collected_by_mode}


def alerts_of(figures: DispatchFigures) -> dict[str, int]:
    return {a.kind: a.open for a in figures.open_alerts}


async def test_every_figure_of_a_province(database: Database) -> None:
    figures = await figures_of(database, "32")
    assert modes(figures) == {
        "TRADE_IN": (5, 50.75),
        "DOOR_TO_DOOR": (1, 12.0),
        "INTERNET": (4, 8.0),
        "DROP_OFF": (0, 0.0),
        "COOP_STATION": (5, 40.0),
        "FLEET_RETURN": (7, 70.0),
    }
    assert [m.mode for m in figures.collected_by_mode] == [
        "TRADE_IN", "DOOR_TO_DOOR", "INTERNET", "DROP_OFF", "COOP_STATION", "FLEET_RETURN",
    ]  # fmt: skip
    assert (figures.collected_batteries, figures.collected_kilograms) == (22, 180.75)
    assert (figures.delivered_to_recyclers_batteries, figures.delivered_to_recyclers_kilograms) == (10, 101.5)
    assert (figures.recycled_batteries, figures.recycled_kilograms) == (3, 41.5)
    # Batteries first collected in October in Jiangsu: Xuanwu (reached), Suzhou, Taizhou (reached), Xuanwu at
    # the first instant.
    assert (figures.rate_reached_recycler, figures.rate_denominator) == (2, 4)
    assert figures.compliant_channel_rate == 0.5
    assert alerts_of(figures) == {
        "OVERDUE_STORAGE": 2, "POSSIBLE_DIVERSION": 1, "OVERSTOCK": 0, "MASS_BALANCE": 0, "RULE_HIT": 0,
    }  # fmt: skip
    # DOOR_TO_DOOR collection, the recycling plant's receipt, the shipment: not the declared, Guangdong or
    # out-of-period ones.
    assert figures.late_reports == 3
    assert (figures.division_code, figures.period_start, figures.period_end) == ("32", START, END)


async def test_a_county_and_a_prefecture(database: Database) -> None:
    xuanwu = await figures_of(database, XUANWU)
    assert {mode: figure for mode, figure in modes(xuanwu).items() if figure[0]} == {
        "TRADE_IN": (3, 30.5),
        "DOOR_TO_DOOR": (1, 12.0),
        "INTERNET": (4, 8.0),
        "FLEET_RETURN": (7, 70.0),
    }
    assert (xuanwu.collected_batteries, xuanwu.collected_kilograms) == (15, 120.5)
    assert (xuanwu.delivered_to_recyclers_batteries, xuanwu.delivered_to_recyclers_kilograms) == (6, 60.0)
    assert (xuanwu.recycled_batteries, xuanwu.recycled_kilograms) == (0, 12.5)
    assert (xuanwu.rate_reached_recycler, xuanwu.rate_denominator, xuanwu.compliant_channel_rate) == (1, 2, 0.5)
    assert alerts_of(xuanwu)["OVERDUE_STORAGE"] == 1 and alerts_of(xuanwu)["POSSIBLE_DIVERSION"] == 0
    assert xuanwu.late_reports == 2

    # Nanjing (3201) holds Xuanwu only here; 320100 and 320000 mean 3201 and 32.
    assert (await figures_of(database, "3201")).collected_batteries == 15
    assert (await figures_of(database, "320100")).collected_batteries == 15
    assert (await figures_of(database, "320000")).collected_batteries == 22
    assert (await figures_of(database, "3205")).collected_batteries == 2

    guangdong = await figures_of(database, "44")
    assert (guangdong.collected_batteries, guangdong.delivered_to_recyclers_batteries) == (50, 8)
    assert alerts_of(guangdong)["MASS_BALANCE"] == 1 and guangdong.late_reports == 1


async def test_period_bounds_start_inclusive_end_exclusive(database: Database) -> None:
    # The next period starts where October ended: the rows at END belong to it.
    november = await figures_of(database, "32", END, END + dt.timedelta(days=30))
    assert modes(november)["FLEET_RETURN"] == (60, 600.0)
    assert (november.recycled_batteries, november.recycled_kilograms) == (5, 50.0)
    assert (november.rate_reached_recycler, november.rate_denominator) == (1, 1)
    assert november.late_reports == 2  # the collection at END and the shipment three days later
    # Alerts are the open ones now, whatever the period.
    assert alerts_of(november) == alerts_of(await figures_of(database, "32"))
    # The same instants written in UTC give the same figures.
    in_utc = await figures_of(database, "32", START.astimezone(dt.UTC), END.astimezone(dt.UTC))
    assert in_utc == await figures_of(database, "32")


async def test_nothing_collected_gives_a_rate_of_zero_with_an_empty_denominator(database: Database) -> None:
    beijing = await figures_of(database, "11")
    assert (beijing.collected_batteries, beijing.collected_kilograms, beijing.late_reports) == (0, 0.0, 0)
    assert (beijing.compliant_channel_rate, beijing.rate_denominator, beijing.rate_reached_recycler) == (0.0, 0, 0)
    assert all(figure == (0, 0.0) for figure in modes(beijing).values()) and len(beijing.collected_by_mode) == 6
    assert set(alerts_of(beijing).values()) == {0}


async def test_collections_without_a_mode_still_add_up(database: Database) -> None:
    async with database.transaction() as session:
        session.add(event("COLLECTING", SUZHOU, MID, batteries=2, kg=3.0, mode=""))
        session.add(event("COLLECTING", SUZHOU, MID, batteries=1, kg=1.0, mode="CARRIER_PIGEON"))
    figures = await figures_of(database, "3205")
    assert modes(figures)[""] == (3, 4.0)
    assert figures.collected_batteries == sum(m.batteries for m in figures.collected_by_mode) == 5
    message = figures_to_proto(figures)
    assert message.collected_by_mode[-1].mode == pb.COLLECTION_MODE_UNSPECIFIED


async def test_late_reports_count_at_every_step(database: Database) -> None:
    before = await figures_of(database, "3205")
    async with database.transaction() as session:
        session.add_all(
            event(str(step), SUZHOU, MID, late=True, facility_type="TEMP_STORAGE_POINT") for step in BizStep
        )
        session.add(event("RECEIVING", SUZHOU, MID, late=True, declared=True, facility_type="RECYCLING_PLANT"))
    after = await figures_of(database, "3205")
    assert after.late_reports == before.late_reports + len(BizStep)
    # A receipt at a storage point is late like any other, but no delivery to a recycler.
    assert after.delivered_to_recyclers_batteries == before.delivered_to_recyclers_batteries
    assert (after.collected_batteries, after.recycled_batteries) == (
        before.collected_batteries + 1,
        before.recycled_batteries + 1,
    )


async def test_the_event_figures_come_from_the_covering_index_alone(database: Database) -> None:
    """Each flow_event query of a province's figures is answered from ix_flow_event_step_time_covering without
    a table lookup per event (the 1,000,000-event timings of the module docstring rest on it)."""
    statements: list[tuple[str, Any]] = []

    def record(_c: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    sql_event.listen(database.engine.sync_engine, "before_cursor_execute", record)
    try:
        await figures_of(database, "32")
    finally:
        sql_event.remove(database.engine.sync_engine, "before_cursor_execute", record)
    queries = [(statement, parameters) for statement, parameters in statements if "FROM flow_event" in statement]
    assert len(queries) == 2

    async with database.session() as session:
        connection = await session.connection()
        if database.is_postgres:
            # Only an index-only scan is left to the planner, and it can take one only if the index covers.
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_indexscan"):
                await connection.execute(text(f"SET LOCAL {setting} = off"))
        for statement, parameters in queries:
            explain = "EXPLAIN " if database.is_postgres else "EXPLAIN QUERY PLAN "
            plan = "\n".join(str(row[-1]) for row in await connection.exec_driver_sql(explain + statement, parameters))
            if database.is_postgres:
                assert "Index Only Scan using ix_flow_event_step_time_covering" in plan, plan
                assert "Seq Scan" not in plan, plan
            else:
                scans = [line for line in plan.splitlines() if "flow_event" in line]
                assert scans and all("COVERING INDEX ix_flow_event_step_time_covering" in s for s in scans), plan


async def test_postgresql_plans_the_figures_for_their_values_in_that_transaction_only(database: Database) -> None:
    """A generic plan (PostgreSQL's choice from a prepared statement's sixth run) cannot see the period's width;
    the statistics ask for custom plans, and only until the caller's transaction ends."""
    if not database.is_postgres:
        pytest.skip("PostgreSQL's plan cache")
    async with database.engine.connect() as connection:
        async with AsyncSession(bind=connection) as session:  # the session's transaction, as in the servicer
            for _ in range(7):  # past the point where a generic plan may be chosen: the figures stay the same
                figures = await dispatch_statistics(session, "32", START, END)
                assert figures.collected_batteries == 22 and figures.late_reports == 3
            setting = await (await session.connection()).execute(text("SHOW plan_cache_mode"))
            assert setting.scalar_one() == "force_custom_plan"
        # The session rolled its transaction back: the pooled connection is as it was.
        assert (await connection.execute(text("SHOW plan_cache_mode"))).scalar_one() == "auto"


def test_division_prefixes() -> None:
    assert [division_prefix(code) for code in ("32", "320000", "3201", "320100", "320102", "3200")] == [
        "32", "32", "3201", "3201", "320102", "32",
    ]  # fmt: skip


def test_figures_to_proto() -> None:
    figures = DispatchFigures(
        division_code="32",
        period_start=START,
        period_end=END,
        collected_by_mode=(ModeFigure("TRADE_IN", 5, 50.75), ModeFigure("FLEET_RETURN", 7, 70.0)),
        collected_batteries=12,
        collected_kilograms=120.75,
        delivered_to_recyclers_batteries=10,
        delivered_to_recyclers_kilograms=101.5,
        recycled_batteries=3,
        recycled_kilograms=41.5,
        compliant_channel_rate=0.5,
        rate_denominator=4,
        rate_reached_recycler=2,
        open_alerts=(AlertFigure("OVERDUE_STORAGE", 2), AlertFigure("RULE_HIT", 1)),
        late_reports=3,
    )
    message = figures_to_proto(figures)
    assert message.division_code == "32"
    assert message.period_start.ToDatetime(tzinfo=dt.UTC) == START
    assert message.period_end.ToJsonString() == "2026-10-31T16:00:00Z"
    assert [(m.mode, m.batteries, m.kilograms) for m in message.collected_by_mode] == [
        (pb.COLLECTION_MODE_TRADE_IN, 5, 50.75),
        (pb.COLLECTION_MODE_FLEET_RETURN, 7, 70.0),
    ]
    assert (message.collected_batteries, message.collected_kilograms) == (12, 120.75)
    assert (message.delivered_to_recyclers_batteries, message.delivered_to_recyclers_kilograms) == (10, 101.5)
    assert (message.recycled_batteries, message.recycled_kilograms) == (3, 41.5)
    assert message.compliant_channel_rate == 0.5
    assert [(a.kind, a.open) for a in message.open_alerts] == [
        (pb.ALERT_KIND_OVERDUE_STORAGE, 2),
        (pb.ALERT_KIND_RULE_HIT, 1),
    ]
    assert message.late_reports == 3


def request(division: str = "32", start: dt.datetime | None = START, end: dt.datetime | None = END) -> Any:
    message = pb.GetDispatchStatisticsRequest(division_code=division)
    if start is not None:
        message.period_start.FromDatetime(start)
    if end is not None:
        message.period_end.FromDatetime(end)
    return message


def violations(message: pb.GetDispatchStatisticsRequest) -> dict[str, str]:
    return {v.field: v.description for v in statistics_violations(message)}


def test_request_checks() -> None:
    for code in ("32", "3201", "320102", "320000"):
        assert violations(request(code)) == {}, code
    for code in ("", "3", "320", "32010", "3201020", "32a1", "\uff13\uff12", " 32"):  # fullwidth 32 too
        assert set(violations(request(code))) == {"division_code"}, code
    assert "2 digits for a province" in violations(request("3"))["division_code"]

    assert violations(request(start=None)) == {"period_start": "required"}
    assert violations(request(end=None, start=None)) == {"period_start": "required", "period_end": "required"}
    assert violations(request(end=START)) == {"period_end": "must be after period_start"}
    assert violations(request(start=END, end=START)) == {"period_end": "must be after period_start"}

    a_year = dt.datetime(2027, 10, 1, tzinfo=CHINA)
    assert violations(request(end=a_year)) == {}
    assert violations(request(end=START + dt.timedelta(days=400))) == {}
    too_long = violations(request(end=START + dt.timedelta(days=401)))
    assert too_long == {"period_end": "the period may span at most 400 days; this one spans 401 days"}

    garbage = pb.GetDispatchStatisticsRequest(
        division_code="32", period_start=Timestamp(seconds=2**62), period_end=Timestamp(seconds=0, nanos=-5)
    )
    found = violations(garbage)
    assert set(found) == {"period_start", "period_end"}
    assert all(text.startswith("not a valid timestamp") for text in found.values())
