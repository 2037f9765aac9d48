"""Participants over gRPC: registration, validation, duplicates, versions, status and who may do what."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sqlmodel import func, select

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.errors import error_reason, field_violations
from meshkit.tables import OutboxEvent
from services.registry.tables import ParticipantRow
from tests.registry.conftest import (
    ANONYMOUS,
    GUANGDONG_REGULATOR,
    JIANGSU_REGULATOR,
    PLATFORM,
    Registry,
    as_participant,
    credit_code,
)


async def counts(registry: Registry) -> tuple[int, int]:
    async with registry.runtime.database.session() as session:
        participants = (await session.exec(select(func.count()).select_from(ParticipantRow))).one()
        outbox = (await session.exec(select(func.count()).select_from(OutboxEvent))).one()
    return int(participants), int(outbox)


async def expect_error(
    registry: Registry, method: str, request: object, caller: object = PLATFORM
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call(method, request, caller)  # type: ignore[arg-type]
    return raised.value


async def test_register_then_read_back_by_id_and_by_code(registry: Registry) -> None:
    participant = await registry.participant("RECYCLING_OUTLET_OPERATOR", "COOP_STATION_OPERATOR", status="PENDING")
    assert participant.status == pb.PARTICIPANT_STATUS_PENDING_REVIEW
    assert participant.version == 1
    assert participant.registration_division_code == "320102"
    assert [h.reason for h in participant.status_history] == ["registered"]
    by_id = await registry.call("GetParticipant", pb.GetParticipantRequest(participant_id=participant.participant_id))
    by_code = await registry.call(
        "GetParticipant", pb.GetParticipantRequest(credit_code=participant.credit_code.lower())
    )
    assert by_id.participant == by_code.participant == participant


async def test_wrong_credit_codes_say_which_check_failed_and_write_nothing(registry: Registry) -> None:
    good = credit_code()
    wrong_check = good[:17] + ("0" if good[17] != "0" else "1")
    before = await counts(registry)
    for code, reason in [
        (wrong_check, "check_character"),
        (good[:10], "length"),
        (good[:5] + "I" + good[6:], "alphabet"),
    ]:
        error = await expect_error(
            registry,
            "RegisterParticipant",
            pb.RegisterParticipantRequest(
                participant=pb.Participant(credit_code=code, legal_name="X", roles=[pb.PARTICIPANT_ROLE_DEALER])
            ),
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        violations = field_violations(error)
        assert violations and violations[0].field == "participant.credit_code"
        assert violations[0].description.startswith(reason), violations
    assert await counts(registry) == before


async def test_every_field_is_validated(registry: Registry) -> None:
    error = await expect_error(
        registry,
        "RegisterParticipant",
        pb.RegisterParticipantRequest(
            participant=pb.Participant(
                credit_code=credit_code(),
                legal_name=" ",
                roles=[
                    pb.PARTICIPANT_ROLE_REGULATOR,
                    pb.ParticipantRole.ValueType(99),
                ],  # a regulator without a region, an unknown role
                contact_phone="call me",
            )
        ),
    )
    fields = {v.field for v in field_violations(error)}
    assert fields == {
        "participant.legal_name",
        "participant.supervised_division_code",
        "participant.contact_phone",
        "participant.roles",
    }


async def test_same_credit_code_twice_is_already_exists(registry: Registry) -> None:
    participant = await registry.participant("DEALER")
    before = await counts(registry)
    error = await expect_error(
        registry,
        "RegisterParticipant",
        pb.RegisterParticipantRequest(
            participant=pb.Participant(
                credit_code=participant.credit_code, legal_name="again", roles=[pb.PARTICIPANT_ROLE_DEALER]
            )
        ),
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert await counts(registry) == before


async def test_stale_version_is_aborted_and_changes_nothing(registry: Registry) -> None:
    participant = await registry.participant("DEALER")
    mask = pb.UpdateParticipantRequest(
        participant=pb.Participant(
            participant_id=participant.participant_id, contact_phone="13800000000", version=participant.version
        ),
        update_mask=FieldMask(paths=["contact_phone"]),
    )
    updated = await registry.call("UpdateParticipant", mask, as_participant(participant))
    assert updated.participant.version == participant.version + 1
    assert updated.participant.contact_phone == "13800000000"
    stale = await expect_error(registry, "UpdateParticipant", mask, as_participant(participant))  # same old version
    assert stale.code() is grpc.StatusCode.ABORTED
    again = await registry.call("GetParticipant", pb.GetParticipantRequest(participant_id=participant.participant_id))
    assert again.participant == updated.participant


async def test_a_participant_cannot_grant_itself_roles(registry: Registry) -> None:
    participant = await registry.participant("DEALER")
    error = await expect_error(
        registry,
        "UpdateParticipant",
        pb.UpdateParticipantRequest(
            participant=pb.Participant(
                participant_id=participant.participant_id,
                roles=[pb.PARTICIPANT_ROLE_RECYCLING_ENTERPRISE],
                version=participant.version,
            ),
            update_mask=FieldMask(paths=["roles"]),
        ),
        as_participant(participant),
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_status_changes_follow_the_rules_and_record_who_and_why(registry: Registry) -> None:
    participant = await registry.participant("RECYCLING_ENTERPRISE")  # registered, then activated by the platform
    suspended = await registry.call(
        "ChangeParticipantStatus",
        pb.ChangeParticipantStatusRequest(
            participant_id=participant.participant_id,
            status=pb.PARTICIPANT_STATUS_SUSPENDED,
            reason="licence expired",
            version=participant.version,
        ),
        JIANGSU_REGULATOR,
    )
    history = suspended.participant.status_history
    assert [(pb.ParticipantStatus.Name(h.status), h.changed_by, h.reason) for h in history[:1]] == [
        ("PARTICIPANT_STATUS_SUSPENDED", JIANGSU_REGULATOR.participant_id, "licence expired")
    ]
    # Another province's regulator may not; an illegal transition is FAILED_PRECONDITION with its reason.
    other = await expect_error(
        registry,
        "ChangeParticipantStatus",
        pb.ChangeParticipantStatusRequest(
            participant_id=participant.participant_id, status=pb.PARTICIPANT_STATUS_ACTIVE, reason="x",
            version=suspended.participant.version,
        ),
        GUANGDONG_REGULATOR,
    )  # fmt: skip
    assert other.code() is grpc.StatusCode.PERMISSION_DENIED
    revoked = await registry.call(
        "ChangeParticipantStatus",
        pb.ChangeParticipantStatusRequest(
            participant_id=participant.participant_id, status=pb.PARTICIPANT_STATUS_REVOKED, reason="fraud",
            version=suspended.participant.version,
        ),
    )  # fmt: skip
    illegal = await expect_error(
        registry,
        "ChangeParticipantStatus",
        pb.ChangeParticipantStatusRequest(
            participant_id=participant.participant_id, status=pb.PARTICIPANT_STATUS_ACTIVE, reason="undo",
            version=revoked.participant.version,
        ),
    )  # fmt: skip
    assert illegal.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(illegal) == "ILLEGAL_STATUS_TRANSITION"


async def test_unknown_ids_and_anonymous_callers(registry: Registry) -> None:
    missing = await expect_error(
        registry, "GetParticipant", pb.GetParticipantRequest(participant_id="0190a1b2-0000-7000-8000-000000000000")
    )
    assert missing.code() is grpc.StatusCode.NOT_FOUND
    malformed = await expect_error(registry, "GetParticipant", pb.GetParticipantRequest(participant_id="1 OR 1=1"))
    assert malformed.code() is grpc.StatusCode.INVALID_ARGUMENT
    anonymous = await expect_error(registry, "ListParticipants", pb.ListParticipantsRequest(), ANONYMOUS)
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    dealer = await registry.participant("DEALER")
    not_allowed = await expect_error(
        registry,
        "RegisterParticipant",
        pb.RegisterParticipantRequest(
            participant=pb.Participant(credit_code=credit_code(), legal_name="X", roles=[pb.PARTICIPANT_ROLE_DEALER])
        ),
        as_participant(dealer),
    )
    assert not_allowed.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_list_pages_through_everything_with_filters(registry: Registry) -> None:
    made = [await registry.participant("DEALER", status="PENDING") for _ in range(5)]
    await registry.participant("RECYCLING_ENTERPRISE", status="PENDING")
    seen: list[str] = []
    token = ""
    while True:
        page = await registry.call(
            "ListParticipants",
            pb.ListParticipantsRequest(page_size=2, role=pb.PARTICIPANT_ROLE_DEALER, page_token=token),
        )
        seen += [p.participant_id for p in page.participants]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(p.participant_id for p in made)
    forged = await expect_error(
        registry, "ListParticipants", pb.ListParticipantsRequest(page_token="eyJrIjoiJyBPUiAxPTEgLS0ifQ")
    )
    assert forged.code() is grpc.StatusCode.INVALID_ARGUMENT
    other_filters = await expect_error(
        registry,
        "ListParticipants",
        pb.ListParticipantsRequest(page_size=2, page_token=page.next_page_token or _first_token(made)),
    )
    assert other_filters.code() is grpc.StatusCode.INVALID_ARGUMENT


def _first_token(made: list[pb.Participant]) -> str:
    from meshkit.paging import encode_token

    return encode_token(made[0].participant_id, {"role": "DEALER", "status": "", "prefix": ""})
