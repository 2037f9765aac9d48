"""The public battery status (GetBatteryStatus): the pure mapping from custody states, and the lookup over gRPC
against the real mesh (NATS, registry, flows on SQLite and PostgreSQL), anonymous and without credentials."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from google.type import date_pb2

from greenmesh.flows.v1 import flows_pb2 as fpb
from meshkit.errors import field_violations
from services.flows import mapping
from services.flows.domain.custody import CustodyState
from services.flows.domain.identity import platform_check_character
from services.flows.domain.public import (
    PUBLIC_STATUS,
    RECYCLING_CHAIN_PHASES,
    UNKNOWN_VIEW,
    PublicStatus,
    PublicView,
    StatusFacts,
    city_code,
    public_view,
)
from tests.flows.conftest import CN, Flows, Network, event, ts
from tests.registry.conftest import JIANGSU_REGULATOR, PLATFORM

S = CustodyState
P = PublicStatus

# ---------------------------------------------------------------------------------------------------
# The pure mapping

# Written out state by state: a custody state added to the domain has no entry here and fails the tests below
# until someone decides what the public sees of it.
EXPECTED: dict[CustodyState, tuple[PublicStatus, bool]] = {
    # state: (public status, in a compliant channel when not quarantined)
    S.UNKNOWN: (P.UNKNOWN_TO_PLATFORM, False),
    S.REGISTERED: (P.IN_USE, False),
    S.IN_DISTRIBUTION: (P.IN_USE, False),
    S.AT_DEALER: (P.IN_USE, False),
    S.IN_USE: (P.IN_USE, False),
    S.COLLECTED: (P.IN_COMPLIANT_CHANNEL, True),
    S.IN_TEMP_STORAGE: (P.IN_COMPLIANT_CHANNEL, True),
    S.IN_TRANSIT_REVERSE: (P.IN_COMPLIANT_CHANNEL, True),
    S.AT_SORTING_CENTER: (P.IN_COMPLIANT_CHANNEL, True),
    S.AT_RECYCLER: (P.IN_COMPLIANT_CHANNEL, True),
    S.DISMANTLED: (P.RECYCLED, True),
    S.RECYCLED: (P.RECYCLED, True),
    S.DESTROYED: (P.DESTROYED, False),  # True only once handed in, see the DESTROYED test
    S.QUARANTINED: (P.QUARANTINED, False),
}

LATE_EVENING_UTC = dt.datetime(2026, 9, 1, 23, 30, tzinfo=dt.UTC)  # 2026-09-02 07:30 in China


def facts(state: CustodyState, **changes: Any) -> StatusFacts:
    values: dict[str, Any] = {
        "state": state,
        "phase": state,
        "last_event_time": LATE_EVENING_UTC,
        "holder_county": "320104",
        "collected_county": "320102",
    }
    return StatusFacts(**(values | changes))


@pytest.mark.parametrize("state", list(CustodyState), ids=str)
def test_every_custody_state_has_its_public_status(state: CustodyState) -> None:
    status, in_channel = EXPECTED[state]
    assert PUBLIC_STATUS[state] is status
    view = public_view(facts(state))
    assert view.status is status
    assert view.known is (state is not S.UNKNOWN)
    assert view.in_compliant_channel is in_channel
    # the city of the holder's facility, only while the recycling chain holds the battery
    assert view.region_code == ("320100" if state in RECYCLING_CHAIN_PHASES else "")
    assert view.last_updated_on == (None if state is S.UNKNOWN else dt.date(2026, 9, 2))


def test_the_tables_cover_exactly_the_custody_states_and_every_public_value_is_used() -> None:
    assert set(EXPECTED) == set(CustodyState) == set(PUBLIC_STATUS)
    assert set(PUBLIC_STATUS.values()) == set(PublicStatus)
    # and the proto's enum: one value per domain member besides UNSPECIFIED, which is never answered
    assert {mapping.PUBLIC_STATUSES.to_proto(s) for s in PublicStatus} == {
        v.number for v in fpb.PublicBatteryStatus.DESCRIPTOR.values if v.number
    }


def test_every_custody_state_of_the_proto_has_a_public_status() -> None:
    for described in fpb.CustodyState.DESCRIPTOR.values:
        state = mapping.custody_state_from_proto(described.number)
        assert state is not None and state in PUBLIC_STATUS, described.name


def test_no_row_and_no_effective_event_are_both_unknown() -> None:
    assert public_view(None) == UNKNOWN_VIEW == PublicView(P.UNKNOWN_TO_PLATFORM, known=False)
    # a row whose every event was declared in error
    assert public_view(facts(S.UNKNOWN)) == UNKNOWN_VIEW


@pytest.mark.parametrize("phase", sorted(RECYCLING_CHAIN_PHASES), ids=str)
def test_a_quarantined_battery_in_the_recycling_chain_shows_where_but_not_compliance(phase: CustodyState) -> None:
    view = public_view(facts(S.QUARANTINED, phase=phase))
    assert view == PublicView(P.QUARANTINED, True, False, dt.date(2026, 9, 2), "320100")


@pytest.mark.parametrize("phase", [S.REGISTERED, S.IN_DISTRIBUTION, S.AT_DEALER, S.IN_USE], ids=str)
def test_a_quarantined_battery_on_the_market_shows_no_region(phase: CustodyState) -> None:
    view = public_view(facts(S.QUARANTINED, phase=phase))
    assert view == PublicView(P.QUARANTINED, True, False, dt.date(2026, 9, 2), "")


def test_a_destroyed_battery_counts_as_in_the_channel_only_once_handed_in() -> None:
    assert public_view(facts(S.DESTROYED, handed_in=True)) == PublicView(
        P.DESTROYED, True, True, dt.date(2026, 9, 2), "320100"
    )
    # a producer destroying its own stock: no channel, and where its plant is stays private
    assert public_view(facts(S.DESTROYED)) == PublicView(P.DESTROYED, True, False, dt.date(2026, 9, 2), "")


def test_the_region_is_the_holder_city_else_the_collection_city() -> None:
    moved = public_view(facts(S.AT_RECYCLER, holder_county="440305", collected_county="320102"))
    assert moved.region_code == "440300"
    unlisted_holder = public_view(facts(S.COLLECTED, holder_county=""))
    assert unlisted_holder.region_code == "320100"
    assert public_view(facts(S.COLLECTED, holder_county="", collected_county="")).region_code == ""


@pytest.mark.parametrize(
    ("code", "city"),
    [("320102", "320100"), ("110101", "110100"), ("441900", "441900"), ("32", ""), ("", ""), ("32010X", "")],
)
def test_city_code(code: str, city: str) -> None:
    assert city_code(code) == city


def test_the_day_is_the_china_day_and_may_be_missing() -> None:
    evening_in_china = dt.datetime(2026, 9, 1, 15, 59, tzinfo=dt.UTC)  # 23:59 in China
    assert public_view(facts(S.COLLECTED, last_event_time=evening_in_china)).last_updated_on == dt.date(2026, 9, 1)
    naive_utc = dt.datetime(2026, 9, 1, 16, 0)  # as SQLite may give it back: UTC, 2026-09-02 00:00 in China
    assert public_view(facts(S.COLLECTED, last_event_time=naive_utc)).last_updated_on == dt.date(2026, 9, 2)
    assert public_view(facts(S.COLLECTED, last_event_time=None)).last_updated_on is None


def test_the_proto_answer_holds_the_view_and_nothing_else() -> None:
    full = mapping.public_view_to_proto(PublicView(P.RECYCLED, True, True, dt.date(2026, 9, 2), "320100"))
    assert full == fpb.GetBatteryStatusResponse(
        status=fpb.PUBLIC_BATTERY_STATUS_RECYCLED,
        known=True,
        in_compliant_channel=True,
        last_updated_on=date_pb2.Date(year=2026, month=9, day=2),
        region_code="320100",
    )
    unknown = mapping.public_view_to_proto(UNKNOWN_VIEW)
    assert [f.name for f, _ in unknown.ListFields()] == ["status"]
    assert unknown.status == fpb.PUBLIC_BATTERY_STATUS_UNKNOWN_TO_PLATFORM
    # the message itself has no room for more
    assert [f.name for f in fpb.GetBatteryStatusResponse.DESCRIPTOR.fields] == [
        "status",
        "known",
        "in_compliant_channel",
        "last_updated_on",
        "region_code",
    ]


# ---------------------------------------------------------------------------------------------------
# Over gRPC, against the real mesh

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)


def at(days: float) -> dt.datetime:
    return T0 + dt.timedelta(days=days)


async def anonymous(flows: Flows, battery: fpb.BatteryRef) -> fpb.GetBatteryStatusResponse:
    """The call a citizen's phone makes: no credential, no metadata at all."""
    request = fpb.GetBatteryStatusRequest(battery_ref=battery)
    reply: fpb.GetBatteryStatusResponse = await flows.stub.GetBatteryStatus(request, timeout=20)
    return reply


def set_fields(message: Any) -> dict[str, Any]:
    return {f.name: value for f, value in message.ListFields()}


async def accepted(flows: Flows, message: fpb.FlowEvent, reporter: Any) -> None:
    result = await flows.report(message, reporter.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_ACCEPTED, result


async def collect(flows: Flows, n: Network, battery: fpb.BatteryRef, when: dt.datetime) -> None:
    collecting = event(
        fpb.BIZ_STEP_COLLECTING,
        n.outlet,
        [battery],
        when,
        collection_mode=fpb.COLLECTION_MODE_DROP_OFF,
        disposition=fpb.DISPOSITION_WASTE,
    )
    await accepted(flows, collecting, n.outlet)


async def test_anyone_sees_a_collected_battery_in_a_compliant_channel_and_nothing_else(
    flows: Flows, network: Network
) -> None:
    n = network
    battery = n.serial()
    # 2026-09-02 07:30 in China is still 2026-09-01 in UTC: the day shown is China's
    await collect(flows, n, battery, dt.datetime(2026, 9, 2, 7, 30, tzinfo=CN))

    status = await anonymous(flows, battery)
    assert set_fields(status) == {
        "status": fpb.PUBLIC_BATTERY_STATUS_IN_COMPLIANT_CHANNEL,
        "known": True,
        "in_compliant_channel": True,
        "last_updated_on": date_pb2.Date(year=2026, month=9, day=2),
        "region_code": "320100",  # the outlet is in Xuanwu, 320102
    }
    # Authenticated callers get the same, no more: the platform, a regulator, the collector itself.
    for caller in (PLATFORM, JIANGSU_REGULATOR, n.outlet.caller):
        same = await flows.call("GetBatteryStatus", fpb.GetBatteryStatusRequest(battery_ref=battery), caller)
        assert same == status

    # The code as printed: lower case and spaces are normalised like everywhere else.
    scanned = fpb.BatteryRef()
    scanned.CopyFrom(battery)
    scanned.value = f" {battery.value.lower()} "
    assert await anonymous(flows, scanned) == status


async def test_a_code_the_platform_does_not_know_is_an_answer_not_an_error(flows: Flows, network: Network) -> None:
    unknown = await anonymous(flows, network.serial())
    assert set_fields(unknown) == {"status": fpb.PUBLIC_BATTERY_STATUS_UNKNOWN_TO_PLATFORM}
    assert not unknown.known and not unknown.in_compliant_channel

    # A malformed code is INVALID_ARGUMENT with the field that is wrong.
    payload = "GM320J5M8Q2R7T4V"
    wrong = next(c for c in "AB" if c != platform_check_character(payload))
    bad_check = fpb.BatteryRef(scheme=fpb.IDENTIFIER_SCHEME_PLATFORM, value=payload + wrong)
    no_scheme = fpb.BatteryRef(value="SN00000001")
    no_namespace = fpb.BatteryRef(scheme=fpb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, value="SN00000001")
    for ref, field in ((bad_check, "battery_ref"), (no_scheme, "battery_ref.scheme"), (no_namespace, "battery_ref")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await anonymous(flows, ref)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(raised.value)] == [field], ref
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await flows.stub.GetBatteryStatus(fpb.GetBatteryStatusRequest(), timeout=20)
    assert [v.field for v in field_violations(empty.value)] == ["battery_ref.scheme"]


async def test_a_battery_on_the_market_is_known_but_shows_no_place(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    commissioning = event(
        fpb.BIZ_STEP_COMMISSIONING,
        n.producer,
        [battery],
        at(0),
        model_id=n.model_id,
        production_date=ts(dt.datetime(2026, 8, 1, tzinfo=dt.UTC)),
    )
    await accepted(flows, commissioning, n.producer)
    status = await anonymous(flows, battery)
    assert set_fields(status) == {
        "status": fpb.PUBLIC_BATTERY_STATUS_IN_USE,
        "known": True,
        "last_updated_on": date_pb2.Date(year=2026, month=9, day=1),
    }


async def test_a_recycled_battery(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    await collect(flows, n, battery, at(0))
    shipping = event(fpb.BIZ_STEP_SHIPPING, n.outlet, [battery], at(1), destination_facility_id=n.recycler.site)
    await accepted(flows, shipping, n.outlet)
    in_transit = await anonymous(flows, battery)
    assert in_transit.status == fpb.PUBLIC_BATTERY_STATUS_IN_COMPLIANT_CHANNEL and in_transit.in_compliant_channel
    receiving = event(fpb.BIZ_STEP_RECEIVING, n.recycler, [battery], at(2), source_facility_id=n.outlet.site)
    await accepted(flows, receiving, n.recycler)
    await accepted(flows, event(fpb.BIZ_STEP_RECYCLING, n.recycler, [battery], at(5)), n.recycler)

    status = await anonymous(flows, battery)
    assert set_fields(status) == {
        "status": fpb.PUBLIC_BATTERY_STATUS_RECYCLED,
        "known": True,
        "in_compliant_channel": True,
        "last_updated_on": date_pb2.Date(year=2026, month=9, day=6),
        "region_code": "320100",  # the recycler, in Xuanwu
    }


async def test_a_quarantined_battery_and_its_release(flows: Flows, network: Network) -> None:
    n = network
    battery = n.serial()
    await collect(flows, n, battery, at(0))
    # FLOW-004: the storage operator ships a battery the outlet holds; the battery is quarantined for review.
    conflict = event(fpb.BIZ_STEP_SHIPPING, n.storage, [battery], at(3), destination_facility_id=n.sorter.site)
    result = await flows.report(conflict, n.storage.caller)
    assert result.outcome == fpb.EVENT_OUTCOME_QUARANTINED

    status = await anonymous(flows, battery)
    assert set_fields(status) == {
        "status": fpb.PUBLIC_BATTERY_STATUS_QUARANTINED,
        "known": True,
        "last_updated_on": date_pb2.Date(year=2026, month=9, day=4),
        "region_code": "320100",
    }  # no rule id, no message: those are for the regulator

    release = fpb.ReleaseQuarantineRequest(battery_ref=battery, note="the outlet handed the battery over on paper")
    await flows.call("ReleaseQuarantine", release, JIANGSU_REGULATOR)
    released = await anonymous(flows, battery)
    assert released.status == fpb.PUBLIC_BATTERY_STATUS_IN_COMPLIANT_CHANNEL and released.in_compliant_channel
