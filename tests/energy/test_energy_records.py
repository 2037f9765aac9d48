"""Catalogue entries, assets (sites from the registry directory, lifecycle with dated transitions, procurement,
redundancy groups, power-chain links), meters and who may write or read them, over gRPC on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import grpc

from greenmesh.energy.v1 import energy_pb2 as pb
from tests.energy.conftest import Energy, day, has_violation, kw, minutes, reason_of, violations_of
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, PLATFORM


async def test_catalogue_entries_are_validated_listed_and_unique(energy: Energy) -> None:
    entry = await energy.catalogue_entry(
        model="UPS5000-E-400K",
        rated_capacity=pb.Quantity(value=400, unit=pb.UNIT_KVA),
        input=pb.PowerPort(current=pb.CURRENT_KIND_AC, voltage_class=pb.VOLTAGE_CLASS_AC_380V),
        output=pb.PowerPort(current=pb.CURRENT_KIND_AC, voltage_class=pb.VOLTAGE_CLASS_AC_380V),
        grade=pb.GradeRating(grade=1, standard="YD/T 2165", edition="2017"),
        listed_in_recommended_catalogue=True,
        listing_editions=["2024", "2025"],
    )
    assert entry.catalogue_entry_id and entry.created_by == energy.data_center.operator.participant_id
    got = await energy.call(
        "GetCatalogueEntry", pb.GetCatalogueEntryRequest(catalogue_entry_id=entry.catalogue_entry_id)
    )
    assert got.entry == entry
    assert [p.load_fraction for p in got.entry.efficiency_curve] == [0.25, 0.5, 0.75, 1.0]

    again = await energy.refused(
        "CreateCatalogueEntry", pb.CreateCatalogueEntryRequest(entry=entry), energy.data_center.caller
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS

    # kW is not kVA for a transformer, losses only on transformers, a curve out of order, a port's class mismatch.
    bad = pb.CatalogueEntry(
        equipment_class=pb.EQUIPMENT_CLASS_TRANSFORMER,
        manufacturer="特变电工",
        model="SCB18-1250",
        rated_capacity=kw(1250),
        input=pb.PowerPort(current=pb.CURRENT_KIND_DC, voltage_class=pb.VOLTAGE_CLASS_AC_10KV),
        efficiency_curve=[
            pb.EfficiencyPoint(load_fraction=0.5, efficiency=0.99),
            pb.EfficiencyPoint(load_fraction=0.25, efficiency=0.98),
        ],
    )
    error = await energy.refused("CreateCatalogueEntry", pb.CreateCatalogueEntryRequest(entry=bad), PLATFORM)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert has_violation(error, "entry.efficiency_curve[1].load_fraction", "sorted")
    bad.ClearField("efficiency_curve")
    error = await energy.refused("CreateCatalogueEntry", pb.CreateCatalogueEntryRequest(entry=bad), PLATFORM)
    assert has_violation(error, "entry.rated_capacity.unit", "UNIT_MISMATCH")
    assert has_violation(error, "entry.input.voltage_class")

    # A regulator reads the catalogue but does not write it.
    denied = await energy.refused("CreateCatalogueEntry", pb.CreateCatalogueEntryRequest(entry=bad), JIANGSU_REGULATOR)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await energy.call(
        "ListCatalogueEntries",
        pb.ListCatalogueEntriesRequest(listed_only=True, page_size=10),
        JIANGSU_REGULATOR,
    )
    assert [e.catalogue_entry_id for e in listed.entries] == [entry.catalogue_entry_id]


async def test_an_asset_lives_through_dated_lifecycle_transitions(energy: Energy) -> None:
    asset = await energy.asset(
        lifecycle_state=pb.LIFECYCLE_STATE_PLANNED,
        lifecycle_date=day(dt.date(2025, 1, 10)),
        asset_tag="UPS-A1",
    )
    assert asset.lifecycle_state == pb.LIFECYCLE_STATE_PLANNED
    assert asset.operator_id == energy.data_center.operator.participant_id
    assert asset.county_code == "320102"
    assert asset.rated_capacity == kw(100)  # from the catalogue entry

    async def move(to: pb.LifecycleState.ValueType, when: dt.date) -> pb.Asset:
        reply = await energy.call(
            "TransitionAsset",
            pb.TransitionAssetRequest(asset_id=asset.asset_id, to_state=to, effective_date=day(when), note="工单 42"),
            energy.data_center.caller,
        )
        return reply.asset  # type: ignore[no-any-return]

    await move(pb.LIFECYCLE_STATE_PROCURED, dt.date(2025, 2, 1))
    await move(pb.LIFECYCLE_STATE_INSTALLED, dt.date(2025, 3, 1))
    await move(pb.LIFECYCLE_STATE_IN_SERVICE, dt.date(2025, 3, 1))  # the same day: allowed, order kept

    # Illegal: IN_SERVICE cannot go back to PROCURED; out of order: dated before the last transition.
    illegal = await energy.refused(
        "TransitionAsset",
        pb.TransitionAssetRequest(
            asset_id=asset.asset_id, to_state=pb.LIFECYCLE_STATE_PROCURED, effective_date=day(dt.date(2025, 4, 1))
        ),
        energy.data_center.caller,
    )
    assert illegal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(illegal) == "ILLEGAL_LIFECYCLE_TRANSITION"
    late = await energy.refused(
        "TransitionAsset",
        pb.TransitionAssetRequest(
            asset_id=asset.asset_id, to_state=pb.LIFECYCLE_STATE_STANDBY, effective_date=day(dt.date(2025, 2, 15))
        ),
        energy.data_center.caller,
    )
    assert reason_of(late) == "LIFECYCLE_TRANSITION_OUT_OF_ORDER"
    future = await energy.refused(
        "TransitionAsset",
        pb.TransitionAssetRequest(
            asset_id=asset.asset_id, to_state=pb.LIFECYCLE_STATE_STANDBY, effective_date=day(dt.date(2099, 1, 1))
        ),
        energy.data_center.caller,
    )
    assert reason_of(future) == "LIFECYCLE_TRANSITION_IN_FUTURE"
    # Another operator may not move it.
    denied = await energy.refused(
        "TransitionAsset",
        pb.TransitionAssetRequest(
            asset_id=asset.asset_id, to_state=pb.LIFECYCLE_STATE_STANDBY, effective_date=day(dt.date(2025, 5, 1))
        ),
        energy.base_station.caller,
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED

    got = (await energy.call("GetAsset", pb.GetAssetRequest(asset_id=asset.asset_id), JIANGSU_REGULATOR)).asset
    assert got.lifecycle_state == pb.LIFECYCLE_STATE_IN_SERVICE
    assert got.lifecycle_date == day(dt.date(2025, 3, 1))
    assert [(t.from_state, t.to_state) for t in got.transitions] == [
        (pb.LIFECYCLE_STATE_UNSPECIFIED, pb.LIFECYCLE_STATE_PLANNED),
        (pb.LIFECYCLE_STATE_PLANNED, pb.LIFECYCLE_STATE_PROCURED),
        (pb.LIFECYCLE_STATE_PROCURED, pb.LIFECYCLE_STATE_INSTALLED),
        (pb.LIFECYCLE_STATE_INSTALLED, pb.LIFECYCLE_STATE_IN_SERVICE),
    ]
    # Every accepted change went out through the outbox: the registration and three transitions.
    published = [
        pb.AssetLifecycleChanged.FromString(p) for p in await energy.outbox("greenmesh.energy.v1.AssetLifecycleChanged")
    ]
    assert [e.transition.to_state for e in published if e.asset.asset_id == asset.asset_id] == [
        pb.LIFECYCLE_STATE_PLANNED,
        pb.LIFECYCLE_STATE_PROCURED,
        pb.LIFECYCLE_STATE_INSTALLED,
        pb.LIFECYCLE_STATE_IN_SERVICE,
    ]
    # A regulator of another province does not see it.
    hidden = await energy.refused("GetAsset", pb.GetAssetRequest(asset_id=asset.asset_id), GUANGDONG_REGULATOR)
    assert hidden.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_asset_registration_refuses_unknown_sites_and_bad_fields_and_writes_nothing(energy: Energy) -> None:
    before = await energy.count("asset")
    unknown = await energy.refused(
        "RegisterAsset",
        pb.RegisterAssetRequest(asset=pb.Asset(site_id="no-such-site", serial_number="X")),
        energy.data_center.caller,
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert has_violation(unknown, "asset.site_id", "unknown site")
    outlet = await energy.refused(
        "RegisterAsset", pb.RegisterAssetRequest(asset=pb.Asset(site_id=energy.outlet_id)), PLATFORM
    )
    assert has_violation(outlet, "asset.site_id", "not a DATA_CENTER or BASE_STATION")
    # Not the operator of the site.
    other = await energy.refused(
        "RegisterAsset",
        pb.RegisterAssetRequest(asset=pb.Asset(site_id=energy.data_center.id, serial_number="X")),
        energy.shenzhen.caller,
    )
    assert other.code() == grpc.StatusCode.PERMISSION_DENIED
    # A legacy unit without a catalogue entry needs its class and rating; the rating must fit the class.
    legacy = await energy.refused(
        "RegisterAsset",
        pb.RegisterAssetRequest(
            asset=pb.Asset(
                site_id=energy.data_center.id,
                serial_number="OLD-1",
                equipment_class=pb.EQUIPMENT_CLASS_TRANSFORMER,
                rated_capacity=pb.Quantity(value=800, unit=pb.UNIT_KWH),
                lifecycle_state=pb.LIFECYCLE_STATE_IN_SERVICE,
            )
        ),
        energy.data_center.caller,
    )
    found = violations_of(legacy)
    assert "UNIT_MISMATCH" in found["asset.rated_capacity.unit"]
    assert found["asset.lifecycle_date"] == "required"
    # Registered already retired: FAILED_PRECONDITION with the lifecycle reason.
    retired = await energy.refused(
        "RegisterAsset",
        pb.RegisterAssetRequest(
            asset=pb.Asset(
                site_id=energy.data_center.id,
                serial_number="OLD-2",
                equipment_class=pb.EQUIPMENT_CLASS_RECTIFIER_48V,
                rated_capacity=kw(30),
                lifecycle_state=pb.LIFECYCLE_STATE_RETIRED,
                lifecycle_date=day(dt.date(2024, 1, 1)),
            )
        ),
        energy.data_center.caller,
    )
    assert reason_of(retired) == "ILLEGAL_INITIAL_LIFECYCLE_STATE"
    assert await energy.count("asset") == before
    assert await energy.count("asset_transition") == 0

    # The same serial twice at a site is ALREADY_EXISTS.
    first = await energy.asset(serial_number="DUP-1")
    again = await energy.refused(
        "RegisterAsset",
        pb.RegisterAssetRequest(
            asset=pb.Asset(
                site_id=energy.data_center.id,
                serial_number="DUP-1",
                catalogue_entry_id=first.catalogue_entry_id,
                lifecycle_state=pb.LIFECYCLE_STATE_IN_SERVICE,
                lifecycle_date=day(dt.date(2025, 1, 1)),
            )
        ),
        energy.data_center.caller,
    )
    assert again.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_procurement_groups_links_and_meters(energy: Energy) -> None:
    ups = await energy.asset()
    pdu = await energy.asset(
        equipment_class=pb.EQUIPMENT_CLASS_PDU, rated_capacity=kw(20), lifecycle_date=day(dt.date(2025, 1, 1))
    )
    # Procurement: listed at procurement makes the asset high-efficiency.
    recorded = await energy.call(
        "RecordProcurement",
        pb.RecordProcurementRequest(
            asset_id=ups.asset_id,
            procurement=pb.ProcurementRecord(
                procurement_date=day(dt.date(2025, 3, 1)),
                listed_at_procurement=False,
                grade_at_procurement=pb.GradeRating(grade=2, standard="YD/T 2165", edition="2017"),
                purchase_order="PO-7",
            ),
        ),
        energy.data_center.caller,
    )
    assert recorded.asset.high_efficiency_basis == pb.HIGH_EFFICIENCY_BASIS_GRADE_2
    bad_grade = await energy.refused(
        "RecordProcurement",
        pb.RecordProcurementRequest(
            asset_id=ups.asset_id,
            procurement=pb.ProcurementRecord(
                procurement_date=day(dt.date(2025, 3, 1)), grade_at_procurement=pb.GradeRating(grade=4)
            ),
        ),
        energy.data_center.caller,
    )
    assert has_violation(bad_grade, "procurement.grade_at_procurement.grade")
    assert has_violation(bad_grade, "procurement.grade_at_procurement.edition")

    # A 4-module N+1 group: design maximum 75 % per module.
    group = (
        await energy.call(
            "CreateRedundancyGroup",
            pb.CreateRedundancyGroupRequest(
                group=pb.RedundancyGroup(
                    site_id=energy.data_center.id, name="UPS A", scheme=pb.REDUNDANCY_SCHEME_N_PLUS_1, units=4
                )
            ),
            energy.data_center.caller,
        )
    ).group
    assert group.design_max_load_rate == 0.75
    bad_group = await energy.refused(
        "CreateRedundancyGroup",
        pb.CreateRedundancyGroupRequest(
            group=pb.RedundancyGroup(site_id=energy.data_center.id, name="B", scheme=pb.REDUNDANCY_SCHEME_N_PLUS_1)
        ),
        energy.data_center.caller,
    )
    assert has_violation(bad_group, "group.units")
    assigned = await energy.call(
        "AssignRedundancyGroup",
        pb.AssignRedundancyGroupRequest(asset_id=ups.asset_id, redundancy_group_id=group.redundancy_group_id),
        energy.data_center.caller,
    )
    assert assigned.asset.redundancy_group_id == group.redundancy_group_id

    # The power chain: the UPS feeds the PDU; the reverse would close a loop.
    link = (
        await energy.call(
            "LinkAssets",
            pb.LinkAssetsRequest(
                link=pb.PowerLink(
                    from_asset_id=ups.asset_id, to_asset_id=pdu.asset_id, medium=pb.VOLTAGE_CLASS_AC_380V, path="A"
                )
            ),
            energy.data_center.caller,
        )
    ).link
    loop = await energy.refused(
        "LinkAssets",
        pb.LinkAssetsRequest(link=pb.PowerLink(from_asset_id=pdu.asset_id, to_asset_id=ups.asset_id)),
        energy.data_center.caller,
    )
    assert has_violation(loop, "link", "loop")
    elsewhere = await energy.asset(site=energy.shenzhen)
    apart = await energy.refused(
        "LinkAssets",
        pb.LinkAssetsRequest(link=pb.PowerLink(from_asset_id=ups.asset_id, to_asset_id=elsewhere.asset_id)),
        PLATFORM,
    )
    assert has_violation(apart, "link.to_asset_id", "different sites")
    got = (await energy.call("GetAsset", pb.GetAssetRequest(asset_id=pdu.asset_id), energy.data_center.caller)).asset
    assert [link.power_link_id] == [f.power_link_id for f in got.fed_by]

    # Meters: unit of the quantity's dimension, a mode that fits, IT meters say where they measure.
    meter = await energy.meter(asset_id=ups.asset_id, role=pb.METER_ROLE_OUTPUT, rated_max=kw(120), name="UPS A output")
    assert meter.interval == minutes(15) and meter.current == pb.CURRENT_KIND_AC
    error = await energy.refused(
        "CreateMeter",
        pb.CreateMeterRequest(
            meter=pb.Meter(
                site_id=energy.data_center.id,
                quantity=pb.METER_QUANTITY_ACTIVE_ENERGY,
                unit=pb.UNIT_KW,
                mode=pb.READING_MODE_AVERAGE,
                role=pb.METER_ROLE_IT_LOAD,
            )
        ),
        energy.data_center.caller,
    )
    found = violations_of(error)
    assert "UNIT_MISMATCH" in found["meter.unit"]
    assert "meter.mode" in found and "meter.it_measurement_point" in found
    listed = await energy.call("ListMeters", pb.ListMetersRequest(), energy.data_center.caller)
    assert [m.meter_id for m in listed.meters] == [meter.meter_id]
    assert (await energy.call("ListMeters", pb.ListMetersRequest(), energy.shenzhen.caller)).meters == []
    first = await energy.call("ListAssets", pb.ListAssetsRequest(page_size=1), JIANGSU_REGULATOR)
    assert len(first.assets) == 1 and first.next_page_token
    rest = await energy.call(
        "ListAssets", pb.ListAssetsRequest(page_size=5, page_token=first.next_page_token), JIANGSU_REGULATOR
    )
    assert [a.asset_id for a in (*first.assets, *rest.assets)] == [ups.asset_id, pdu.asset_id]  # not Shenzhen's
    assert not rest.next_page_token
    edited = await energy.refused(
        "ListAssets",
        pb.ListAssetsRequest(page_size=5, page_token=first.next_page_token, site_id=energy.data_center.id),
        JIANGSU_REGULATOR,
    )
    assert has_violation(edited, "page_token")
