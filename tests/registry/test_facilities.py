"""Facilities over gRPC: county and location checks, accreditation by the region's regulator, updates."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlmodel import func, select

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.caller import Caller
from meshkit.errors import error_reason, field_violations
from meshkit.tables import OutboxEvent
from services.registry.tables import FacilityRow
from tests.registry.conftest import (
    GUANGDONG_REGULATOR,
    JIANGSU_REGULATOR,
    NANSHAN,
    QINHUAI,
    XUANWU,
    Registry,
    as_participant,
    facility_message,
)


async def rows(registry: Registry) -> tuple[int, int]:
    async with registry.runtime.database.session() as session:
        facilities = (await session.exec(select(func.count()).select_from(FacilityRow))).one()
        outbox = (await session.exec(select(func.count()).select_from(OutboxEvent))).one()
    return int(facilities), int(outbox)


async def rejected(registry: Registry, method: str, request: object, caller: Caller) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call(method, request, caller)
    return raised.value


async def test_operator_registers_a_facility_in_draft(registry: Registry) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    facility = await registry.facility(operator)
    assert facility.accreditation.status == pb.ACCREDITATION_STATUS_DRAFT
    assert facility.operator_id == operator.participant_id
    assert facility.county_code == "320102" and facility.version == 1
    got = await registry.call("GetFacility", pb.GetFacilityRequest(facility_id=facility.facility_id))
    assert got.facility == facility


async def test_county_and_location_are_checked_against_the_real_table(registry: Registry) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    before = await rows(registry)
    cases = [
        # not a county-level division (a province code), and a made-up code
        (facility_message(operator.participant_id, "320000", *XUANWU[1:]), "facility.county_code"),
        (facility_message(operator.participant_id, "329999", *XUANWU[1:]), "facility.county_code"),
        # a point in Shenzhen declared in Nanjing's Xuanwu district
        (facility_message(operator.participant_id, "320102", *NANSHAN[1:]), "facility.location"),
        # latitude and longitude swapped, and a point in the sea off Africa
        (facility_message(operator.participant_id, "320102", XUANWU[2], XUANWU[1]), "facility.location"),
        (facility_message(operator.participant_id, "320102", 0.0, 0.0), "facility.location"),
    ]
    for message, field in cases:
        error = await rejected(
            registry, "RegisterFacility", pb.RegisterFacilityRequest(facility=message), as_participant(operator)
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in [v.field for v in field_violations(error)], (message.county_code, field_violations(error))
    wrong_county = await rejected(
        registry,
        "RegisterFacility",
        pb.RegisterFacilityRequest(facility=facility_message(operator.participant_id, "320102", *NANSHAN[1:])),
        as_participant(operator),
    )
    description = field_violations(wrong_county)[0].description
    assert "440305" in description and "南山区" in description and "320102" in description
    assert await rows(registry) == before


async def test_a_storage_site_needs_its_limits_and_duplicates_are_refused(registry: Registry) -> None:
    operator = await registry.participant("TEMP_STORAGE_OPERATOR")
    message = facility_message(operator.participant_id, *QINHUAI, pb.FACILITY_TYPE_TEMP_STORAGE_POINT, code="S-1")
    message.storage_limits.max_dwell_days = 0
    error = await rejected(
        registry, "RegisterFacility", pb.RegisterFacilityRequest(facility=message), as_participant(operator)
    )
    assert [v.field for v in field_violations(error)] == ["facility.storage_limits.max_dwell_days"]
    message.storage_limits.max_dwell_days = 15
    message.safety.fire_class = "B" * 11  # longer than the column: a field violation, never INTERNAL on PostgreSQL
    before = await rows(registry)
    error = await rejected(
        registry, "RegisterFacility", pb.RegisterFacilityRequest(facility=message), as_participant(operator)
    )
    assert [v.field for v in field_violations(error)] == ["facility.safety.fire_class"]
    assert await rows(registry) == before
    message.safety.fire_class = "丙"
    await registry.call("RegisterFacility", pb.RegisterFacilityRequest(facility=message), as_participant(operator))
    again = await rejected(
        registry, "RegisterFacility", pb.RegisterFacilityRequest(facility=message), as_participant(operator)
    )
    assert again.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_only_the_operator_or_the_regions_regulator_keeps_a_facility(registry: Registry) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    stranger = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    message = facility_message(operator.participant_id, *XUANWU)
    for caller in (as_participant(stranger), GUANGDONG_REGULATOR):
        error = await rejected(registry, "RegisterFacility", pb.RegisterFacilityRequest(facility=message), caller)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    facility = await registry.facility(operator)
    update = pb.UpdateFacilityRequest(
        facility=pb.Facility(facility_id=facility.facility_id, phone="13900000000", version=facility.version),
        update_mask=FieldMask(paths=["phone"]),
    )
    error = await rejected(registry, "UpdateFacility", update, as_participant(stranger))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    updated = await registry.call("UpdateFacility", update, as_participant(operator))
    assert updated.facility.phone == "13900000000" and updated.facility.version == 2
    stale = await rejected(registry, "UpdateFacility", update, as_participant(operator))
    assert stale.code() is grpc.StatusCode.ABORTED


async def test_a_suspended_operator_cannot_add_facilities(registry: Registry) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    await registry.call(
        "ChangeParticipantStatus",
        pb.ChangeParticipantStatusRequest(
            participant_id=operator.participant_id, status=pb.PARTICIPANT_STATUS_SUSPENDED, reason="audit",
            version=operator.version,
        ),
    )  # fmt: skip
    error = await rejected(
        registry,
        "RegisterFacility",
        pb.RegisterFacilityRequest(facility=facility_message(operator.participant_id, *XUANWU)),
        as_participant(operator),
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "OPERATOR_NOT_ACTIVE"


async def test_accreditation_is_the_regional_regulators_and_follows_its_transitions(registry: Registry) -> None:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    facility = await registry.facility(operator)

    def change(status: pb.AccreditationStatus.ValueType, version: int) -> pb.ChangeAccreditationRequest:
        return pb.ChangeAccreditationRequest(
            facility_id=facility.facility_id, status=status, reason="r", version=version
        )

    # The operator may not list its own site, nor skip the review.
    error = await rejected(
        registry, "ChangeAccreditation", change(pb.ACCREDITATION_STATUS_LISTED, 1), as_participant(operator)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    skipped = await rejected(
        registry, "ChangeAccreditation", change(pb.ACCREDITATION_STATUS_LISTED, 1), JIANGSU_REGULATOR
    )
    assert skipped.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(skipped) == "ILLEGAL_ACCREDITATION_TRANSITION"
    submitted = await registry.call(
        "ChangeAccreditation", change(pb.ACCREDITATION_STATUS_UNDER_REVIEW, 1), as_participant(operator)
    )
    # Another province's regulator may not list it; Jiangsu's may.
    error = await rejected(
        registry, "ChangeAccreditation", change(pb.ACCREDITATION_STATUS_LISTED, 2), GUANGDONG_REGULATOR
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED and error_reason(error) == "NOT_REGULATOR_OF_REGION"
    listed = await registry.call(
        "ChangeAccreditation", change(pb.ACCREDITATION_STATUS_LISTED, submitted.facility.version), JIANGSU_REGULATOR
    )
    assert listed.facility.accreditation.status == pb.ACCREDITATION_STATUS_LISTED
    assert listed.facility.accreditation.changed_by == JIANGSU_REGULATOR.participant_id
    county_regulator = Caller(participant_id="00000000-0000-7000-8000-000000320104", roles=frozenset({"REGULATOR"}),
                              supervised_division="320104")  # fmt: skip
    other_county = await rejected(
        registry,
        "ChangeAccreditation",
        change(pb.ACCREDITATION_STATUS_SUSPENDED, listed.facility.version),
        county_regulator,
    )
    assert other_county.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_list_filters_by_operator_type_accreditation_and_division(registry: Registry) -> None:
    jiangsu = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    outlets = [await registry.facility(jiangsu, XUANWU) for _ in range(3)]
    storage = await registry.facility(jiangsu, QINHUAI, pb.FACILITY_TYPE_TEMP_STORAGE_POINT)
    listed = await registry.list_facility(outlets[0])
    page = await registry.call(
        "ListFacilities", pb.ListFacilitiesRequest(operator_id=jiangsu.participant_id, division_prefix="320102")
    )
    assert [f.facility_id for f in page.facilities] == [f.facility_id for f in outlets]
    page = await registry.call(
        "ListFacilities", pb.ListFacilitiesRequest(accreditation_status=pb.ACCREDITATION_STATUS_LISTED)
    )
    assert [f.facility_id for f in page.facilities] == [listed.facility_id]
    page = await registry.call(
        "ListFacilities", pb.ListFacilitiesRequest(facility_type=pb.FACILITY_TYPE_TEMP_STORAGE_POINT)
    )
    assert [f.facility_id for f in page.facilities] == [storage.facility_id]
    bad = await rejected(
        registry, "ListFacilities", pb.ListFacilitiesRequest(division_prefix="32%"), as_participant(jiangsu)
    )
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_cooperation_links_a_producer_to_the_outlets_it_is_responsible_for(registry: Registry) -> None:
    producer = await registry.participant("EBIKE_PRODUCER")
    recycler = await registry.participant("COOP_STATION_OPERATOR")
    site = await registry.facility(recycler, XUANWU, pb.FACILITY_TYPE_COOP_STATION)
    linked = await registry.call(
        "LinkCooperation",
        pb.LinkCooperationRequest(
            cooperation=pb.Cooperation(
                producer_id=producer.participant_id, operator_id=recycler.participant_id,
                kind=pb.COOPERATION_KIND_ENTRUSTED, facility_ids=[site.facility_id],
            )
        ),
        as_participant(producer),
    )  # fmt: skip
    found = await registry.call("ListCooperations", pb.ListCooperationsRequest(producer_id=producer.participant_id))
    assert list(found.cooperations) == [linked.cooperation]
    not_producer = await rejected(
        registry,
        "LinkCooperation",
        pb.LinkCooperationRequest(
            cooperation=pb.Cooperation(
                producer_id=recycler.participant_id, operator_id=recycler.participant_id,
                kind=pb.COOPERATION_KIND_CO_BUILT,
            )
        ),
        as_participant(recycler),
    )  # fmt: skip
    assert error_reason(not_producer) == "NOT_PRODUCER"
