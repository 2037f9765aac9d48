"""The national view's read model (services/national): the pure battery figures, and the projection of the hub's
events into a flows-schema database (SQLite and PostgreSQL), read back through the dispatch statistics."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.db import Database
from meshkit.migrate import migrate
from services.flows.statistics import dispatch_statistics
from services.flows.tables import AlertRow
from services.national import projection
from services.national.figures import EventFacts, battery_figures

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "flows" / "migrations" / "versions"
PRODUCER = "91320102MA1W2X3Y4K"
T0 = dt.datetime(2026, 10, 1, 1, 0, tzinfo=dt.UTC)
YEAR = (dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC))


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


# ---- the figures (pure) ------------------------------------------------------------------------------------------


def fact(key: str, step: str, days: float, county: str = "320102", mode: str = "", listed: bool = False) -> EventFacts:
    return EventFacts(key, step, at(days), county, mode, listed)


def test_figures_take_the_first_collection_and_any_listed_recycler_in_any_order() -> None:
    facts = [
        fact("a", "COLLECTING", 2, "440305", "DROP_OFF"),
        fact("a", "COLLECTING", 1, "320102", "TRADE_IN"),
        fact("a", "SHIPPING", 3),
        fact("a", "RECEIVING", 4, "440305", listed=True),
        fact("b", "RECEIVING", 5, "320102"),
    ]
    expected = battery_figures(facts)
    assert expected["a"].collected_at == at(1)
    assert (expected["a"].collected_county, expected["a"].collected_mode) == ("320102", "TRADE_IN")
    assert expected["a"].reached_recycler and expected["a"].last_event_time == at(4)
    assert expected["b"].collected_at is None and not expected["b"].reached_recycler
    for order in itertools.permutations(facts):
        assert battery_figures(order) == expected
    # A tie in time never depends on the order either: the lower county code is taken.
    tie = [fact("c", "COLLECTING", 1, "440305", "DROP_OFF"), fact("c", "COLLECTING", 1, "320102", "TRADE_IN")]
    assert battery_figures(tie)["c"].collected_county == battery_figures(tie[::-1])["c"].collected_county == "320102"


# ---- the projection ------------------------------------------------------------------------------------------------


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate(db, MIGRATIONS)
    yield db
    await db.dispose()


def ref(n: int) -> pb.BatteryRef:
    return pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=PRODUCER, value=f"SN{n:05d}")


def recorded(
    n: int,
    step: pb.BizStep.ValueType,
    days: float,
    county: str,
    batteries: list[int],
    *,
    mode: pb.CollectionMode.ValueType = pb.COLLECTION_MODE_UNSPECIFIED,
    facility_type: str = "RECYCLING_OUTLET",
    listed: bool = False,
    kilograms: float = 0.0,
    late: bool = False,
) -> pb.FlowEventRecorded:
    message = pb.FlowEvent(
        event_id=f"0190a000-0000-7000-8000-{n:012d}",
        biz_step=step,
        facility_id=f"F-{county}-{facility_type}",
        batteries=[ref(b) for b in batteries],
        event_time_zone_offset="+08:00",
        collection_mode=mode,
        reporter_id="0190a000-0000-7000-8000-00000000aaaa",
        county_code=county,
    )
    message.event_time.FromDatetime(at(days))
    message.record_time.FromDatetime(at(days + 1))
    return pb.FlowEventRecorded(
        event=message,
        outcome=pb.EVENT_OUTCOME_ACCEPTED,
        facility_type=facility_type,
        late=late,
        battery_count=len(batteries),
        mass_kg=kilograms,
        at_listed_recycler=listed,
    )


def declared(n: int) -> pb.ErrorDeclared:
    message = pb.ErrorDeclared(
        event_id=f"0190a000-0000-7000-8000-{n:012d}",
        declaration=pb.ErrorDeclaration(reason=pb.ERROR_REASON_DID_NOT_OCCUR, declared_by="someone"),
    )
    message.declaration.declaration_time.FromDatetime(at(30))
    return message


async def apply(database: Database, *messages: object) -> None:
    """Each message in its own transaction, as the consumer's inbox applies them."""
    for message in messages:
        async with database.transaction() as session:
            if isinstance(message, pb.FlowEventRecorded):
                await projection.record_event(session, message, message.event.county_code[:2])
            elif isinstance(message, pb.ErrorDeclared):
                await projection.declare_error(session, message)
            else:
                raise AssertionError(message)


async def national_figures(database: Database, division: str = "00") -> tuple[int, int, int, int, int, float]:
    async with database.session() as session:
        f = await dispatch_statistics(session, division, *YEAR)
    return (
        f.collected_batteries,
        f.delivered_to_recyclers_batteries,
        f.recycled_batteries,
        f.rate_reached_recycler,
        f.rate_denominator,
        f.collected_kilograms,
    )


async def test_events_of_two_provinces_count_once_and_corrections_undo_them(database: Database) -> None:
    collected_32 = recorded(
        1, pb.BIZ_STEP_COLLECTING, 0, "320102", [1, 2], mode=pb.COLLECTION_MODE_TRADE_IN, kilograms=22
    )
    received_44 = recorded(
        2, pb.BIZ_STEP_RECEIVING, 3, "440305", [1], facility_type="RECYCLING_PLANT", listed=True, kilograms=11
    )
    collected_44 = recorded(3, pb.BIZ_STEP_COLLECTING, 1, "440305", [3], mode=pb.COLLECTION_MODE_DROP_OFF, late=True)
    # In the order the hub interleaves them, one redelivered under a new message id: applied once.
    await apply(database, received_44, collected_32, collected_44, received_44)
    assert await national_figures(database) == (3, 1, 0, 1, 3, 22.0)
    assert await national_figures(database, "32") == (2, 0, 0, 1, 2, 22.0)  # battery 1 reached 44's recycler
    assert await national_figures(database, "44") == (1, 1, 0, 0, 1, 0.0)
    async with database.session() as session:
        assert (await dispatch_statistics(session, "00", *YEAR)).late_reports == 1

    # The receipt declared in error: battery 1 has not reached a recycler after all, and nothing was delivered.
    await apply(database, declared(2))
    assert await national_figures(database) == (3, 0, 0, 0, 3, 22.0)
    # A declaration that arrives before its event (the event is kept, declared from the start).
    await apply(
        database, declared(4), recorded(4, pb.BIZ_STEP_COLLECTING, 2, "320102", [9], mode=pb.COLLECTION_MODE_INTERNET)
    )
    assert await national_figures(database) == (3, 0, 0, 0, 3, 22.0)
    # Declaring again changes nothing.
    async with database.transaction() as session:
        assert not await projection.declare_error(session, declared(2))


async def test_alerts_follow_their_status_whatever_the_order(database: Database) -> None:
    raised = pb.Alert(
        alert_id="0190a000-0000-7000-8000-0000000000a1",
        kind=pb.ALERT_KIND_POSSIBLE_DIVERSION,
        severity=pb.SEVERITY_HIGH,
        status=pb.ALERT_STATUS_OPEN,
        county_code="440305",
        batteries=[ref(1)],
        message="not received",
    )
    raised.raised_at.FromDatetime(at(10))
    resolved = pb.Alert()
    resolved.CopyFrom(raised)
    resolved.status = pb.ALERT_STATUS_RESOLVED
    resolved.resolved_at.FromDatetime(at(12))
    async with database.transaction() as session:
        await projection.record_alert(session, raised, raised=True)
    async with database.session() as session:
        assert (await dispatch_statistics(session, "44", *YEAR)).open_alerts[1].open == 1
    # The resolution, then the raise again (a redelivery): the alert stays resolved.
    for alert, is_raise in ((resolved, False), (raised, True)):
        async with database.transaction() as session:
            await projection.record_alert(session, alert, raised=is_raise)
    async with database.session() as session:
        row = await session.get(AlertRow, raised.alert_id)
        assert row is not None and row.status == "RESOLVED" and row.open_key is None
        assert [a.open for a in (await dispatch_statistics(session, "00", *YEAR)).open_alerts] == [0] * 5
