"""The registry's queries. Only this module (and the migrations) touches the registry's tables."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy import CursorResult, update
from sqlmodel import SQLModel, and_, col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.errors import Aborted, NotFound
from services.registry.domain.geo import BoundingBox
from services.registry.tables import CooperationRow, CredentialRow, FacilityRow, ParticipantRow, StatusChangeRow

Row = TypeVar("Row", bound=SQLModel)


async def get_participant(session: AsyncSession, participant_id: str) -> ParticipantRow:
    row = await find_participant(session, participant_id)
    if row is None:
        raise NotFound("participant", participant_id)
    return row


async def find_participant(session: AsyncSession, participant_id: str) -> ParticipantRow | None:
    return await session.get(ParticipantRow, participant_id)


async def operates_facility_in(session: AsyncSession, operator_id: str, division_prefix: str) -> bool:
    """Whether the participant runs at least one facility whose county starts with `division_prefix` (the
    operator_id index finds its facilities; at most one row is read)."""
    query = (
        select(FacilityRow.facility_id)
        .where(col(FacilityRow.operator_id) == operator_id, col(FacilityRow.county_code).startswith(division_prefix))
        .limit(1)
    )
    return (await session.exec(query)).first() is not None


async def find_participant_by_code(session: AsyncSession, credit_code: str) -> ParticipantRow | None:
    return (await session.exec(select(ParticipantRow).where(col(ParticipantRow.credit_code) == credit_code))).first()


async def participants_by_codes(session: AsyncSession, codes: Collection[str]) -> dict[str, ParticipantRow]:
    if not codes:
        return {}
    rows = await session.exec(select(ParticipantRow).where(col(ParticipantRow.credit_code).in_(list(codes))))
    return {row.credit_code: row for row in rows.all()}


async def status_history(session: AsyncSession, participant_id: str) -> list[StatusChangeRow]:
    rows = await session.exec(
        select(StatusChangeRow)
        .where(col(StatusChangeRow.participant_id) == participant_id)
        .order_by(col(StatusChangeRow.change_id).desc())
    )
    return list(rows.all())


async def list_participants(
    session: AsyncSession,
    *,
    role: str,
    status: str,
    division_prefix: str,
    after: str | None,
    limit: int,
    participant_id: str = "",
) -> list[ParticipantRow]:
    """A page of participants in id order; `participant_id` (when set) keeps only that one."""
    query = select(ParticipantRow)
    if participant_id:
        query = query.where(col(ParticipantRow.participant_id) == participant_id)
    if role:
        # roles is a comma-separated list; match a whole name.
        query = query.where(
            or_(
                col(ParticipantRow.roles) == role,
                col(ParticipantRow.roles).startswith(f"{role},"),
                col(ParticipantRow.roles).endswith(f",{role}"),
                col(ParticipantRow.roles).contains(f",{role},"),
            )
        )
    if status:
        query = query.where(col(ParticipantRow.status) == status)
    if division_prefix:
        query = query.where(col(ParticipantRow.registration_division_code).startswith(division_prefix))
    if after:
        query = query.where(col(ParticipantRow.participant_id) > after)
    rows = await session.exec(query.order_by(col(ParticipantRow.participant_id)).limit(limit))
    return list(rows.all())


async def bump(
    session: AsyncSession, table: type[Row], key: Any, key_value: str, expected_version: int, values: dict[str, Any]
) -> None:
    """Update a row only if its version is still the one the caller read (optimistic concurrency)."""
    result: CursorResult[Any] = await session.exec(
        update(table)
        .where(key == key_value, table.version == expected_version)  # type: ignore[attr-defined]
        .values(**values, version=expected_version + 1)
    )
    if result.rowcount != 1:
        current = await session.get(table, key_value)
        if current is None:
            raise NotFound(table.__tablename__, key_value)  # type: ignore[arg-type]
        raise Aborted(
            f"{table.__tablename__} {key_value} is at version {current.version}, not {expected_version}; "  # type: ignore[attr-defined]
            "read it again and retry",
            metadata={"current_version": str(current.version)},  # type: ignore[attr-defined]
        )


async def get_facility(session: AsyncSession, facility_id: str) -> FacilityRow:
    row = await find_facility(session, facility_id)
    if row is None:
        raise NotFound("facility", facility_id)
    return row


async def find_facility(session: AsyncSession, facility_id: str) -> FacilityRow | None:
    return await session.get(FacilityRow, facility_id)


async def facilities_by_codes(
    session: AsyncSession, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], FacilityRow]:
    """Facilities by (operator_id, operator_facility_code), for idempotent imports."""
    wanted = list(set(keys))
    found: dict[tuple[str, str], FacilityRow] = {}
    for start in range(0, len(wanted), 400):  # bounded IN lists
        chunk = wanted[start : start + 400]
        condition = or_(
            *(
                and_(col(FacilityRow.operator_id) == op, col(FacilityRow.operator_facility_code) == code)
                for op, code in chunk
            )
        )
        for row in (await session.exec(select(FacilityRow).where(condition))).all():
            found[(row.operator_id, row.operator_facility_code)] = row
    return found


async def list_facilities(
    session: AsyncSession,
    *,
    operator_id: str,
    facility_type: str,
    accreditation: str,
    division_prefix: str,
    after: str | None,
    limit: int,
) -> list[FacilityRow]:
    query = select(FacilityRow)
    if operator_id:
        query = query.where(col(FacilityRow.operator_id) == operator_id)
    if facility_type:
        query = query.where(col(FacilityRow.facility_type) == facility_type)
    if accreditation:
        query = query.where(col(FacilityRow.accreditation_status) == accreditation)
    if division_prefix:
        query = query.where(col(FacilityRow.county_code).startswith(division_prefix))
    if after:
        query = query.where(col(FacilityRow.facility_id) > after)
    rows = await session.exec(query.order_by(col(FacilityRow.facility_id)).limit(limit))
    return list(rows.all())


async def listed_in_box(session: AsyncSession, box: BoundingBox, types: Sequence[str], mode: str) -> list[FacilityRow]:
    """Listed facilities of the given types inside a lat/lon box (the index-friendly prefilter)."""
    lon_ranges = box.lon_ranges()
    query = select(FacilityRow).where(
        col(FacilityRow.accreditation_status) == "LISTED",
        col(FacilityRow.latitude).between(box.min_lat, box.max_lat),
        or_(*(col(FacilityRow.longitude).between(low, high) for low, high in lon_ranges)),
        col(FacilityRow.facility_type).in_(list(types)),
    )
    if mode:
        query = query.where(col(FacilityRow.recycling_modes).contains(mode))
    return list((await session.exec(query)).all())


async def covered_counties(session: AsyncSession, types: Sequence[str], province_prefix: str) -> set[str]:
    query = (
        select(FacilityRow.county_code)
        .where(col(FacilityRow.accreditation_status) == "LISTED", col(FacilityRow.facility_type).in_(list(types)))
        .distinct()
    )
    if province_prefix:
        query = query.where(col(FacilityRow.county_code).startswith(province_prefix))
    return set((await session.exec(query)).all())


async def list_cooperations(
    session: AsyncSession, producer_id: str, operator_id: str, *, party_id: str = "", party_region: str = ""
) -> list[CooperationRow]:
    """Cooperations of a producer and/or an operator; `party_id` keeps those it is the producer or the operator
    of, `party_region` those with a party registered in a division starting with it."""
    query = select(CooperationRow)
    if producer_id:
        query = query.where(col(CooperationRow.producer_id) == producer_id)
    if operator_id:
        query = query.where(col(CooperationRow.operator_id) == operator_id)
    if party_id:
        query = query.where(
            or_(col(CooperationRow.producer_id) == party_id, col(CooperationRow.operator_id) == party_id)
        )
    if party_region:
        # Per cooperation found (by the indexed producer or operator), a primary-key look at each party.
        query = query.where(
            or_(
                _registered_in(col(CooperationRow.producer_id), party_region),
                _registered_in(col(CooperationRow.operator_id), party_region),
            )
        )
    return list((await session.exec(query.order_by(col(CooperationRow.created_at)))).all())


def _registered_in(participant_id: Any, division_prefix: str) -> Any:
    """SQL: the participant `participant_id` (a column) is registered in a division starting with the prefix."""
    return (
        select(ParticipantRow.participant_id)
        .where(
            col(ParticipantRow.participant_id) == participant_id,
            col(ParticipantRow.registration_division_code).startswith(division_prefix),
        )
        .exists()
    )


async def get_credential(session: AsyncSession, key_id: str) -> CredentialRow:
    row = await session.get(CredentialRow, key_id)
    if row is None:
        raise NotFound("credential", key_id)
    return row


async def list_credentials(session: AsyncSession, participant_id: str) -> list[CredentialRow]:
    rows = await session.exec(
        select(CredentialRow)
        .where(col(CredentialRow.participant_id) == participant_id)
        .order_by(col(CredentialRow.created_at))
    )
    return list(rows.all())
