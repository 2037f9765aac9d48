"""Cross-province transfers, the parts without NATS: the other provinces' directory behind the local one, the
rules on a shipment to another province's facility, the import of a shipment (on a real SQLite database), the
inbound stream's configuration and the stitching of a national trace."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import typer
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.common.v1 import event_pb2
from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.registry.v1 import registry_pb2 as rpb
from greenmesh_cli.national import NationalStep, parse_addresses, step_row, stitch_traces
from meshkit.config import MeshSettings
from meshkit.db import Database
from meshkit.migrate import migrate
from meshkit.national import inbound_stream_config, inbound_stream_name, receipt_subject, transfer_subject
from meshkit.tables import OutboxEvent
from services.flows import capture, store
from services.flows.directory_view import DirectoryView
from services.flows.domain import (
    BatteryState,
    BizStep,
    CustodyState,
    FacilityInfo,
    FlowEvent,
    ParticipantInfo,
    RuleConfig,
    RuleContext,
    evaluate_all,
    make_judge,
    replay,
)
from services.flows.domain.identity import BatteryId, IdentifierScheme
from services.flows.domain.transfers import import_states, province_of, sparing_imported, transfer_destination
from services.flows.mapping import event_to_proto
from services.flows.service import MIGRATIONS
from services.flows.statistics import dispatch_statistics
from services.flows.transfers import (
    import_receipt,
    import_transfer,
    load_remote_directory,
    upsert_remote_facility,
    upsert_remote_participant,
)
from services.registry.domain.credit_code import make_credit_code

UTC = dt.UTC
T0 = dt.datetime(2026, 10, 1, 1, 0, tzinfo=UTC)
PRODUCER_CODE = make_credit_code("320102", seed=7)
BATTERY = BatteryId(IdentifierScheme.MANUFACTURER_SERIAL, PRODUCER_CODE, "SN-1")

OUTLET = FacilityInfo("outlet-32", "RECYCLING_OUTLET", "LISTED", "op-outlet", "320102")
RECYCLER = FacilityInfo("recycler-44", "RECYCLING_PLANT", "LISTED", "op-recycler", "440305")
UNLISTED = FacilityInfo("sorter-44", "REGIONAL_SORTING_CENTER", "UNDER_REVIEW", "op-sorter", "440305")
OUTLET_OPERATOR = ParticipantInfo("op-outlet", roles=frozenset({"RECYCLING_OUTLET_OPERATOR"}))
RECYCLER_OPERATOR = ParticipantInfo("op-recycler", roles=frozenset({"RECYCLING_ENTERPRISE"}))
PRODUCER = ParticipantInfo("op-producer", PRODUCER_CODE, frozenset({"BATTERY_PRODUCER"}))


def jiangsu_view() -> DirectoryView:
    """Province 32's view: its own outlet, and Guangdong's sites heard through the hub."""
    view = DirectoryView.of([OUTLET], [OUTLET_OPERATOR, PRODUCER])
    view.apply_remote_facility(RECYCLER, "44", 3)
    view.apply_remote_facility(UNLISTED, "44", 2)
    view.apply_remote_participant(RECYCLER_OPERATOR, "44", 2)
    return view


def shipping(destination: str, **fields: object) -> FlowEvent:
    return FlowEvent(
        event_id=str(fields.pop("event_id", "ship-1")),
        event_time=T0,
        event_time_zone_offset="+08:00",
        biz_step=BizStep.SHIPPING,
        reporter_id="op-outlet",
        facility_id=OUTLET.facility_id,
        batteries=(BATTERY,),
        destination_facility_id=destination,
        record_time=T0,
        **fields,  # type: ignore[arg-type]
    )


COLLECTED = BatteryState(
    BATTERY, phase=CustodyState.COLLECTED, holder_id="op-outlet", holder_facility_id="outlet-32", waste=True
)


# ---- the directory of the other provinces ------------------------------------------------------------------------


def test_the_local_directory_wins_and_a_newer_remote_version_replaces_an_older() -> None:
    view = DirectoryView.of([OUTLET], [OUTLET_OPERATOR])
    assert view.facility(RECYCLER.facility_id) is None
    assert view.apply_remote_facility(RECYCLER, "44", 3)
    assert view.facility(RECYCLER.facility_id) == RECYCLER
    suspended = FacilityInfo(RECYCLER.facility_id, "RECYCLING_PLANT", "SUSPENDED", "op-recycler", "440305")
    assert not view.apply_remote_facility(suspended, "44", 2)  # older: ignored
    assert view.facility(RECYCLER.facility_id) == RECYCLER
    assert view.apply_remote_facility(suspended, "44", 4)
    assert view.facility(RECYCLER.facility_id) == suspended
    # A remote entry under a local id never hides the local one.
    view.apply_remote_facility(FacilityInfo(OUTLET.facility_id, "DEALER_STORE", "DRAFT", "x", "440305"), "44", 9)
    assert view.facility(OUTLET.facility_id) == OUTLET
    # Remote sites are not operated here, nor limited: monitors and visibility stay local.
    assert view.facilities_of("op-recycler") == frozenset()
    assert [f.facility_id for f in view.facilities()] == [OUTLET.facility_id]
    assert view.limits(RECYCLER.facility_id) is None


def test_remote_participants_answer_by_id_and_by_credit_code_and_never_supervise() -> None:
    view = DirectoryView.of([], [OUTLET_OPERATOR])
    regulator = ParticipantInfo("reg-44", "11440000MB2C00001X", frozenset({"REGULATOR"}))
    view.apply_remote_participant(regulator, "44", 1)
    view.apply_remote_participant(PRODUCER, "44", 1)
    assert view.participant("reg-44") == regulator
    assert view.participant_by_credit_code(PRODUCER_CODE) == PRODUCER
    assert view.supervised_division("reg-44") == ""
    renamed = ParticipantInfo(PRODUCER.participant_id, "91440300MA5XYZ0002", PRODUCER.roles)
    assert view.apply_remote_participant(renamed, "44", 2)
    assert view.participant_by_credit_code(PRODUCER_CODE) is None
    assert view.participant_by_credit_code(renamed.credit_code) == renamed


# ---- the rules on a shipment to another province --------------------------------------------------------------


def rule_ids(event: FlowEvent, view: DirectoryView) -> list[str]:
    hits = evaluate_all(event, {BATTERY: COLLECTED}, view, RuleContext(now=T0 + dt.timedelta(days=1)))
    return [hit.rule_id for hit in hits]


def test_a_shipment_to_a_listed_recycler_of_another_province_passes_the_rules() -> None:
    assert rule_ids(shipping(RECYCLER.facility_id), jiangsu_view()) == []


def test_a_shipment_to_an_unlisted_or_unknown_site_of_another_province_is_refused() -> None:
    view = jiangsu_view()
    assert rule_ids(shipping(UNLISTED.facility_id), view) == ["FLOW-002-DESTINATION-NOT-ALLOWED"]
    assert rule_ids(shipping("nowhere-44"), view) == ["FLOW-002-DESTINATION-NOT-ALLOWED"]
    # A recycling plant whose operator (in its province) is not a recycling enterprise.
    view.apply_remote_participant(ParticipantInfo("op-recycler", roles=frozenset({"DEALER"})), "44", 3)
    assert rule_ids(shipping(RECYCLER.facility_id), view) == ["FLOW-002-DESTINATION-NOT-ALLOWED"]


def test_which_shipments_are_transfers() -> None:
    view = jiangsu_view()
    assert province_of("440305") == "44" and province_of("") == ""
    assert transfer_destination(shipping(RECYCLER.facility_id), view, "32") == "44"
    assert transfer_destination(shipping(OUTLET.facility_id), view, "32") == ""
    assert transfer_destination(shipping("nowhere"), view, "32") == ""
    collecting = FlowEvent("c", T0, "+08:00", BizStep.COLLECTING, "op-outlet", OUTLET.facility_id, (BATTERY,))
    assert transfer_destination(collecting, view, "32") == ""


# ---- the import in the destination province -----------------------------------------------------------------------


def guangdong_view() -> DirectoryView:
    view = DirectoryView.of([RECYCLER], [RECYCLER_OPERATOR])
    view.apply_remote_facility(OUTLET, "32", 1)
    view.apply_remote_participant(PRODUCER, "32", 1)
    return view


def test_an_imported_shipment_puts_an_unknown_battery_in_transit_to_the_destination() -> None:
    states = import_states(shipping(RECYCLER.facility_id), {}, guangdong_view())
    state = states[BATTERY]
    assert (state.phase, state.in_transit_to, state.waste) == (
        CustodyState.IN_TRANSIT_REVERSE,
        RECYCLER.facility_id,
        True,
    )
    receipt = FlowEvent(
        "rcv-1",
        T0 + dt.timedelta(days=2),
        "+08:00",
        BizStep.RECEIVING,
        "op-recycler",
        RECYCLER.facility_id,
        (BATTERY,),
        source_facility_id=OUTLET.facility_id,
    )
    hits = evaluate_all(receipt, states, guangdong_view(), RuleContext(now=T0 + dt.timedelta(days=3)))
    assert [hit.rule_id for hit in hits] == []


def test_a_replay_spares_the_imported_shipment() -> None:
    """Re-judged (a late event, a correction), the imported shipment would be a custody conflict here: the sender
    never held the battery in this province. The imported events keep their recorded (no) hits."""
    ship = shipping(RECYCLER.facility_id)
    receipt = FlowEvent(
        "rcv-1", T0 + dt.timedelta(days=2), "+08:00", BizStep.RECEIVING, "op-recycler", RECYCLER.facility_id, (BATTERY,)
    )
    judged = replay([ship, receipt], guangdong_view(), judge=make_judge())
    assert judged.state(BATTERY).quarantined  # FLOW-004 on the shipment, judged as if reported here
    spared = replay([ship, receipt], guangdong_view(), judge=sparing_imported(make_judge(), {ship.event_id: []}))
    state = spared.state(BATTERY)
    assert (state.phase, state.quarantined, state.reached_recycler) == (CustodyState.AT_RECYCLER, False, True)


def transfer_message(event: FlowEvent) -> pb.TransferShipped:
    message = event_to_proto(event, event_hash="ni:///sha-256;00?ver=CBV2.0", outcome=pb.EVENT_OUTCOME_ACCEPTED)
    message.county_code = OUTLET.county_code
    return pb.TransferShipped(
        metadata=event_pb2.EventMetadata(event_id="m-1", province_code="32"),
        origin_province="32",
        destination_province="44",
        event=message,
        outcome=pb.EVENT_OUTCOME_ACCEPTED,
        origin_facility_type="RECYCLING_OUTLET",
    )


async def test_the_import_is_stored_once_with_its_origin_and_the_directory_survives_a_restart(
    database_url: str,
) -> None:
    database = Database(database_url)
    await migrate(database, MIGRATIONS)
    view = guangdong_view()
    transfer = transfer_message(shipping(RECYCLER.facility_id))
    try:
        async with database.transaction() as session:
            assert await import_transfer(session, "44", view, RuleConfig(), transfer)
        async with database.transaction() as session:
            assert not await import_transfer(session, "44", view, RuleConfig(), transfer)  # redelivered: once
            assert not await import_transfer(session, "32", view, RuleConfig(), transfer)  # not for 32
        async with database.session() as session:
            history = await store.battery_history(session, [BATTERY.urn], with_batteries=True)
            row = await store.event_row(session, "ship-1")
            assert row is not None and (row.origin_province, row.county_code) == ("32", "320102")
            assert history.imported == {"ship-1": "32"}
            battery = history.batteries[BATTERY.urn]
            assert (battery.phase, battery.open_shipment_seq) == ("IN_TRANSIT_REVERSE", row.seq)
            candidates = await store.shipments_to(session, RECYCLER.facility_id)
            assert [c.event.event_id for c in candidates] == ["ship-1"]

        # The other provinces' entries: kept at their newest version, this province's own ignored, reloaded.
        facility = rpb.Facility(
            facility_id="outlet-32",
            operator_id="op-outlet",
            facility_type=rpb.FACILITY_TYPE_RECYCLING_OUTLET,
            county_code="320102",
            accreditation=rpb.Accreditation(status=rpb.ACCREDITATION_STATUS_LISTED),
            version=5,
        )
        producer = rpb.Participant(
            participant_id="op-producer",
            credit_code=PRODUCER_CODE,
            roles=[rpb.PARTICIPANT_ROLE_BATTERY_PRODUCER],
            status=rpb.PARTICIPANT_STATUS_ACTIVE,
            version=2,
        )
        own = rpb.Facility(facility_id="mine", county_code="440305", version=1)
        async with database.transaction() as session:
            assert await upsert_remote_facility(session, view, "44", facility, "32")
            assert await upsert_remote_participant(session, view, "44", producer, "32")
            assert not await upsert_remote_facility(session, view, "44", own, "44")
        async with database.transaction() as session:
            older = rpb.Facility()
            older.CopyFrom(facility)
            older.version = 4
            older.accreditation.status = rpb.ACCREDITATION_STATUS_SUSPENDED
            assert not await upsert_remote_facility(session, view, "44", older, "32")
        fresh = DirectoryView()
        async with database.session() as session:
            later = dt.datetime.now(UTC) + dt.timedelta(minutes=5)
            assert await load_remote_directory(session, fresh, since=later) == 0  # what another replica follows
            assert await load_remote_directory(session, fresh, since=later - dt.timedelta(hours=1)) == 2
            assert await load_remote_directory(session, fresh) == 2
        assert fresh.facility("outlet-32") == OUTLET
        assert fresh.participant_by_credit_code(PRODUCER_CODE) == PRODUCER
        assert fresh.facility("mine") is None
    finally:
        await database.dispose()


async def test_a_receipt_reported_before_its_transfer_arrived_is_answered_once_it_does(
    database_url: str, tmp_path: Path
) -> None:
    """The link was down: the receiver reported the receipt first (an orphan, quarantined). When the shipment
    arrives, the battery's state is rebuilt with it (no longer quarantined) and the shipment counts as received."""
    database = Database(database_url)
    await migrate(database, MIGRATIONS)
    view = guangdong_view()
    settings = MeshSettings.model_validate({"province": "44", "data_dir": tmp_path})
    receipt = pb.FlowEvent(
        event_id="0b7c53b6-8d5e-4b7e-9a43-1f1f0c0d0e01",
        event_time=event_to_proto(shipping(RECYCLER.facility_id)).event_time,
        event_time_zone_offset="+08:00",
        biz_step=pb.BIZ_STEP_RECEIVING,
        facility_id=RECYCLER.facility_id,
        source_facility_id=OUTLET.facility_id,
        batteries=[
            pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=PRODUCER_CODE, value="SN-1")
        ],
    )
    receipt.event_time.FromDatetime(T0 + dt.timedelta(days=2))
    try:
        async with database.transaction() as session:
            result = await capture.capture_batch(
                session, settings, view, RuleConfig(), [receipt], "op-recycler", rollback_on_error=True
            )
        assert [h.rule_id for h in result.judged[0].hits] == ["FLOW-005-ORPHAN-RECEIPT"]
        async with database.transaction() as session:
            assert await import_transfer(
                session, "44", view, RuleConfig(), transfer_message(shipping(RECYCLER.facility_id))
            )
        async with database.session() as session:
            battery = await store.battery_row(session, BATTERY.urn)
            assert battery is not None and (battery.state, battery.phase) == ("AT_RECYCLER", "AT_RECYCLER")
            (view_of_shipment,) = await store.shipments_to(session, RECYCLER.facility_id)
            assert view_of_shipment.receipt is not None and view_of_shipment.receipt.event_id == receipt.event_id
    finally:
        await database.dispose()


def battery_ref() -> pb.BatteryRef:
    return pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=PRODUCER_CODE, value="SN-1")


def flow_event(event_id: str, step: pb.BizStep.ValueType, facility: str, day: float, **fields: object) -> pb.FlowEvent:
    message = pb.FlowEvent(
        event_id=event_id,
        event_time_zone_offset="+08:00",
        biz_step=step,
        facility_id=facility,
        batteries=[battery_ref()],
        **fields,  # type: ignore[arg-type]
    )
    message.event_time.FromDatetime(T0 + dt.timedelta(days=day))
    return message


async def test_the_receipt_goes_back_to_the_origin_which_stops_counting_the_battery_in_transit(
    database_url: str, tmp_path: Path
) -> None:
    """44 receives a shipment from 32: its capture writes TransferReceived for 32; 32 imports it once, and there
    too the battery is at a listed recycler (the compliant channel, in 32's own dispatch statistics)."""
    jiangsu_db, guangdong_db = Database(database_url), Database(f"sqlite+aiosqlite:///{tmp_path / 'flows44.db'}")
    for database in (jiangsu_db, guangdong_db):
        await migrate(database, MIGRATIONS)
    config = RuleConfig()
    jiangsu, guangdong = jiangsu_view(), guangdong_view()
    at_32 = MeshSettings.model_validate({"province": "32", "data_dir": tmp_path})
    at_44 = MeshSettings.model_validate({"province": "44", "data_dir": tmp_path})
    collect = flow_event(
        "0b7c53b6-8d5e-4b7e-9a43-1f1f0c0d0e10", pb.BIZ_STEP_COLLECTING, OUTLET.facility_id, 0,
        collection_mode=pb.COLLECTION_MODE_TRADE_IN, disposition=pb.DISPOSITION_WASTE,
    )  # fmt: skip
    ship = flow_event(
        "0b7c53b6-8d5e-4b7e-9a43-1f1f0c0d0e11", pb.BIZ_STEP_SHIPPING, OUTLET.facility_id, 1,
        destination_facility_id=RECYCLER.facility_id,
    )  # fmt: skip
    receive = flow_event(
        "0b7c53b6-8d5e-4b7e-9a43-1f1f0c0d0e12", pb.BIZ_STEP_RECEIVING, RECYCLER.facility_id, 3,
        source_facility_id=OUTLET.facility_id,
    )  # fmt: skip
    try:
        async with jiangsu_db.transaction() as session:
            shipped = await capture.capture_batch(
                session, at_32, jiangsu, config, [collect, ship], "op-outlet", rollback_on_error=True
            )
        assert [j.outcome for j in shipped.judged] == [pb.EVENT_OUTCOME_ACCEPTED] * 2
        async with jiangsu_db.session() as session:
            [transfer] = [
                pb.TransferShipped.FromString(r.payload) for r in await outbox_rows(session, "TransferShipped")
            ]
        async with guangdong_db.transaction() as session:
            assert await import_transfer(session, "44", guangdong, config, transfer)
        async with guangdong_db.transaction() as session:
            received = await capture.capture_batch(
                session, at_44, guangdong, config, [receive], "op-recycler", rollback_on_error=True
            )
        assert received.judged[0].outcome == pb.EVENT_OUTCOME_ACCEPTED
        async with guangdong_db.session() as session:
            [row] = await outbox_rows(session, "TransferReceived")
        assert row.subject == receipt_subject("44", "32") == "greenmesh.44.flows.v1.transfer_received.32"
        receipt = pb.TransferReceived.FromString(row.payload)
        assert (receipt.origin_province, receipt.destination_province) == ("32", "44")
        assert (receipt.shipment_event_id, receipt.event.event_id) == (ship.event_id, receive.event_id)
        assert receipt.facility_type == "RECYCLING_PLANT" and receipt.event.county_code == "440305"

        async with jiangsu_db.session() as session:
            before = await store.battery_row(session, BATTERY.urn)
            assert before is not None and (before.phase, before.reached_recycler) == ("IN_TRANSIT_REVERSE", False)
            figures = await dispatch_statistics(session, "32", T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=9))
            assert (figures.rate_reached_recycler, figures.rate_denominator) == (0, 1)
        async with jiangsu_db.transaction() as session:
            assert not await import_receipt(session, "44", jiangsu, config, receipt)  # not for 44
            assert await import_receipt(session, "32", jiangsu, config, receipt)
        async with jiangsu_db.transaction() as session:
            assert not await import_receipt(session, "32", jiangsu, config, receipt)  # redelivered: once
        async with jiangsu_db.session() as session:
            after = await store.battery_row(session, BATTERY.urn)
            assert after is not None and (after.phase, after.reached_recycler) == ("AT_RECYCLER", True)
            assert after.holder_facility_id == RECYCLER.facility_id and after.open_shipment_seq is None
            history = await store.battery_history(session, [BATTERY.urn])
            assert history.imported == {receive.event_id: "44"}
            figures = await dispatch_statistics(session, "32", T0 - dt.timedelta(days=1), T0 + dt.timedelta(days=9))
            # reached the compliant channel; the delivery itself is Guangdong's figure, not counted in 32
            assert (figures.rate_reached_recycler, figures.rate_denominator) == (1, 1)
            assert figures.delivered_to_recyclers_batteries == 0
        # A later correction in 32 replays the history with the imported receipt, not judging it again.
        async with jiangsu_db.transaction() as session:
            states = await capture.recompute(session, [BATTERY.urn], jiangsu, config)
        assert states[BATTERY.urn].reached_recycler and not states[BATTERY.urn].quarantined
    finally:
        await jiangsu_db.dispose()
        await guangdong_db.dispose()


async def outbox_rows(session: AsyncSession, event_type: str) -> list[OutboxEvent]:
    rows = await session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq)))
    return [row for row in rows.all() if row.event_type == f"greenmesh.flows.v1.{event_type}"]


# ---- the inbound stream -------------------------------------------------------------------------------------------


def test_the_inbound_stream_sources_the_hub_through_its_domain() -> None:
    config = inbound_stream_config("44")
    assert config.name == inbound_stream_name("44") == "GREENMESH_44_INBOUND"
    assert config.subjects == []
    sources = [(s.name, s.filter_subject, s.external.api if s.external else None) for s in config.sources or []]
    assert sources == [
        ("GREENMESH_NATIONAL_REGISTRY", "greenmesh.*.registry.v1.facility_changed", "$JS.national.API"),
        ("GREENMESH_NATIONAL_REGISTRY", "greenmesh.*.registry.v1.participant_changed", "$JS.national.API"),
        ("GREENMESH_NATIONAL_FLOWS", "greenmesh.*.flows.v1.transfer_shipped.44", "$JS.national.API"),
        ("GREENMESH_NATIONAL_FLOWS", "greenmesh.*.flows.v1.transfer_received.44", "$JS.national.API"),
    ]
    assert transfer_subject("32", "44") == "greenmesh.32.flows.v1.transfer_shipped.44"
    assert receipt_subject("44", "32") == "greenmesh.44.flows.v1.transfer_received.32"


# ---- the national trace -------------------------------------------------------------------------------------------


def step(event_id: str, biz_step: pb.BizStep.ValueType, county: str, day: int) -> pb.TraceStep:
    message = pb.FlowEvent(event_id=event_id, biz_step=biz_step, county_code=county)
    message.event_time.FromDatetime(T0 + dt.timedelta(days=day))
    return pb.TraceStep(event=message, county_code=county)


def trace(*steps: pb.TraceStep) -> pb.GetBatteryTraceResponse:
    return pb.GetBatteryTraceResponse(steps=list(steps))


def chain(steps: tuple[NationalStep, ...]) -> list[tuple[str, str, str]]:
    return [(s.province, s.event_province, s.step.event.event_id) for s in steps]


JIANGSU = trace(
    step("collect", pb.BIZ_STEP_COLLECTING, "320102", 0),
    step("ship", pb.BIZ_STEP_SHIPPING, "320102", 1),
)
GUANGDONG = trace(
    step("ship", pb.BIZ_STEP_SHIPPING, "320102", 1),
    step("receive", pb.BIZ_STEP_RECEIVING, "440305", 3),
    step("recycle", pb.BIZ_STEP_RECYCLING, "440305", 10),
)


def test_stitching_joins_the_halves_at_the_shipment() -> None:
    stitched = stitch_traces({"44": GUANGDONG, "32": JIANGSU})
    assert chain(stitched.steps) == [
        ("32", "32", "collect"),
        ("32", "32", "ship"),
        ("44", "44", "receive"),
        ("44", "44", "recycle"),
    ]
    assert stitched.unplaced == () and stitched.missing_provinces == ()


def test_stitching_follows_a_return_and_names_a_province_not_given() -> None:
    back = trace(
        step("collect", pb.BIZ_STEP_COLLECTING, "320102", 0),
        step("ship", pb.BIZ_STEP_SHIPPING, "320102", 1),
        step("receive", pb.BIZ_STEP_RECEIVING, "440305", 3),  # 44's receipt, sent back to 32 (TransferReceived)
        step("ship-back", pb.BIZ_STEP_SHIPPING, "440305", 5),
        step("receive-back", pb.BIZ_STEP_RECEIVING, "320102", 7),
    )
    there = trace(
        step("ship", pb.BIZ_STEP_SHIPPING, "320102", 1),
        step("receive", pb.BIZ_STEP_RECEIVING, "440305", 3),
        step("ship-back", pb.BIZ_STEP_SHIPPING, "440305", 5),
    )
    stitched = stitch_traces({"32": back, "44": there})
    assert [event_id for _, _, event_id in chain(stitched.steps)] == [
        "collect",
        "ship",
        "receive",
        "ship-back",
        "receive-back",
    ]
    assert stitched.unplaced == ()  # 32's copy of the receipt is 44's step, shown once, where 44 has it
    only_there = stitch_traces({"44": GUANGDONG})
    assert [event_id for _, _, event_id in chain(only_there.steps)] == ["ship", "receive", "recycle"]
    assert only_there.missing_provinces == ("32",)
    assert stitch_traces({}).steps == ()


def test_a_national_step_prints_where_it_happened() -> None:
    stitched = stitch_traces({"44": GUANGDONG, "32": JIANGSU})
    rows = [step_row(number, item) for number, item in enumerate(stitched.steps, 1)]
    assert [(row[0], row[1], row[3]) for row in rows] == [
        ("1", "32", "COLLECTING"),
        ("2", "32", "SHIPPING"),
        ("3", "44", "RECEIVING"),
        ("4", "44", "RECYCLING"),
    ]
    assert rows[0][2] == "2026-10-01 01:00:00Z"
    assert parse_addresses(["32=flows:50052", " 44 = gw:50050 "]) == {"32": "flows:50052", "44": "gw:50050"}
    with pytest.raises(typer.BadParameter):
        parse_addresses(["99=somewhere:1"])
