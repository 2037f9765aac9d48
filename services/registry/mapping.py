"""Between the registry's proto messages and its rows (enum names are stored without their prefix)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.errors import FieldViolation, InvalidArgument
from meshkit.ids import new_id
from meshkit.tables import utcnow
from services.registry.domain import rules
from services.registry.tables import CooperationRow, CredentialRow, FacilityRow, ParticipantRow, StatusChangeRow


def enum_name(enum: object, value: int, prefix: str) -> str:
    """registry_pb2.FacilityType, 1 -> "RECYCLING_OUTLET" ("" for UNSPECIFIED or unknown numbers)."""
    try:
        name = str(enum.Name(value))  # type: ignore[attr-defined]
    except ValueError:
        return ""
    stripped = name.removeprefix(prefix)
    return "" if stripped == "UNSPECIFIED" else stripped


def enum_value(enum: object, name: str, prefix: str) -> Any:
    """The enum number for a stored name (typed Any: each proto enum has its own ValueType)."""
    return int(enum.Value(prefix + name)) if name else 0  # type: ignore[attr-defined]


def role_name(value: int) -> str:
    return enum_name(pb.ParticipantRole, value, "PARTICIPANT_ROLE_")


def status_name(value: int) -> str:
    return enum_name(pb.ParticipantStatus, value, "PARTICIPANT_STATUS_")


def facility_type_name(value: int) -> str:
    return enum_name(pb.FacilityType, value, "FACILITY_TYPE_")


def mode_name(value: int) -> str:
    return enum_name(pb.RecyclingMode, value, "RECYCLING_MODE_")


def accreditation_name(value: int) -> str:
    return enum_name(pb.AccreditationStatus, value, "ACCREDITATION_STATUS_")


def timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    return stamp


def from_timestamp(stamp: Timestamp, present: bool, field: str = "timestamp") -> datetime | None:
    """The moment of a client's Timestamp; one outside 0001-01-01..9999-12-31 (or nanos outside [0, 10^9)) is
    INVALID_ARGUMENT naming `field`."""
    if not present:
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument([FieldViolation(field, f"not a valid timestamp: {error}")]) from None


def qualifications_to_json(items: list[pb.Qualification]) -> str:
    return json.dumps(
        [
            {
                "type": q.qualification_type,
                "number": q.number,
                "issuer": q.issuer,
                "valid_from": q.valid_from.ToJsonString() if q.HasField("valid_from") else None,
                "valid_to": q.valid_to.ToJsonString() if q.HasField("valid_to") else None,
            }
            for q in items
        ],
        ensure_ascii=False,
        sort_keys=True,
    )


def qualifications_from_json(text: str) -> list[pb.Qualification]:
    found = []
    for item in json.loads(text):
        qualification = pb.Qualification(qualification_type=item["type"], number=item["number"], issuer=item["issuer"])
        if item.get("valid_from"):
            qualification.valid_from.FromJsonString(item["valid_from"])
        if item.get("valid_to"):
            qualification.valid_to.FromJsonString(item["valid_to"])
        found.append(qualification)
    return found


def participant_message(row: ParticipantRow, history: list[StatusChangeRow] | None = None) -> pb.Participant:
    message = pb.Participant(
        participant_id=row.participant_id,
        credit_code=row.credit_code,
        legal_name=row.legal_name,
        short_name=row.short_name,
        roles=[enum_value(pb.ParticipantRole, r, "PARTICIPANT_ROLE_") for r in row.roles.split(",") if r],
        supervised_division_code=row.supervised_division_code,
        status=enum_value(pb.ParticipantStatus, row.status, "PARTICIPANT_STATUS_"),
        qualifications=qualifications_from_json(row.qualifications_json),
        contact_phone=row.contact_phone,
        version=row.version,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        registration_division_code=row.registration_division_code,
    )
    for change in history or []:
        message.status_history.append(
            pb.StatusChange(
                status=enum_value(pb.ParticipantStatus, change.status, "PARTICIPANT_STATUS_"),
                changed_by=change.changed_by,
                reason=change.reason,
                changed_at=timestamp(change.changed_at),
            )
        )
    return message


def facility_message(row: FacilityRow) -> pb.Facility:
    return pb.Facility(
        facility_id=row.facility_id,
        operator_id=row.operator_id,
        operator_facility_code=row.operator_facility_code,
        name=row.name,
        facility_type=enum_value(pb.FacilityType, row.facility_type, "FACILITY_TYPE_"),
        county_code=row.county_code,
        location=pb.GeoPoint(latitude=row.latitude, longitude=row.longitude),
        address=row.address,
        opening_hours=row.opening_hours,
        phone=row.phone,
        recycling_modes=[
            enum_value(pb.RecyclingMode, m, "RECYCLING_MODE_") for m in row.recycling_modes.split(",") if m
        ],
        storage_limits=pb.StorageLimits(
            max_stock_kg=row.max_stock_kg, max_stock_units=row.max_stock_units, max_dwell_days=row.max_dwell_days
        ),
        safety=pb.SafetyAttributes(
            fire_class=row.fire_class,
            has_discharge_equipment=row.has_discharge_equipment,
            has_monitoring=row.has_monitoring,
        ),
        accreditation=pb.Accreditation(
            status=enum_value(pb.AccreditationStatus, row.accreditation_status, "ACCREDITATION_STATUS_"),
            changed_by=row.accreditation_changed_by,
            reason=row.accreditation_reason,
            changed_at=timestamp(row.accreditation_changed_at),
        ),
        version=row.version,
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
    )


# The facility columns an operator's data sets (import compares exactly these to find "unchanged" rows).
FACILITY_DATA_COLUMNS = (
    "name", "facility_type", "county_code", "latitude", "longitude", "address", "opening_hours", "phone",
    "recycling_modes", "max_stock_kg", "max_stock_units", "max_dwell_days", "fire_class",
    "has_discharge_equipment", "has_monitoring",
)  # fmt: skip


def facility_data(facility: pb.Facility) -> dict[str, object]:
    """The operator-provided columns of a facility message, as stored."""
    return {
        "name": facility.name.strip(),
        "facility_type": facility_type_name(facility.facility_type),
        "county_code": facility.county_code.strip(),
        "latitude": facility.location.latitude,
        "longitude": facility.location.longitude,
        "address": facility.address.strip(),
        "opening_hours": facility.opening_hours.strip(),
        "phone": facility.phone.strip(),
        "recycling_modes": ",".join(sorted(mode_name(m) for m in facility.recycling_modes)),
        "max_stock_kg": facility.storage_limits.max_stock_kg,
        "max_stock_units": facility.storage_limits.max_stock_units,
        "max_dwell_days": facility.storage_limits.max_dwell_days,
        "fire_class": facility.safety.fire_class.strip(),
        "has_discharge_equipment": facility.safety.has_discharge_equipment,
        "has_monitoring": facility.safety.has_monitoring,
    }


def cooperation_message(row: CooperationRow) -> pb.Cooperation:
    return pb.Cooperation(
        cooperation_id=row.cooperation_id,
        producer_id=row.producer_id,
        operator_id=row.operator_id,
        kind=enum_value(pb.CooperationKind, row.kind, "COOPERATION_KIND_"),
        facility_ids=[f for f in row.facility_ids.split(",") if f],
        valid_from=timestamp(row.valid_from),
        valid_to=timestamp(row.valid_to),
        created_at=timestamp(row.created_at),
    )


def credential_message(row: CredentialRow) -> pb.Credential:
    return pb.Credential(
        key_id=row.key_id,
        participant_id=row.participant_id,
        label=row.label,
        issued_by=row.issued_by,
        created_at=timestamp(row.created_at),
        revoked_at=timestamp(row.revoked_at),
        revoked_by=row.revoked_by,
    )


def same_message(a: Message, b: Message) -> bool:
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


# ---- proto -> the domain's field sets and new rows --------------------------------------------------


def participant_fields(participant: pb.Participant) -> rules.ParticipantFields:
    return rules.ParticipantFields(
        credit_code=participant.credit_code,
        legal_name=participant.legal_name,
        short_name=participant.short_name,
        roles=[role_name(r) or f"#{r}" for r in participant.roles],
        supervised_division_code=participant.supervised_division_code.strip(),
        contact_phone=participant.contact_phone.strip(),
    )


def facility_fields(facility: pb.Facility) -> rules.FacilityFields:
    return rules.FacilityFields(
        name=facility.name,
        facility_type=facility_type_name(facility.facility_type),
        operator_facility_code=facility.operator_facility_code,
        county_code=facility.county_code.strip(),
        latitude=facility.location.latitude,
        longitude=facility.location.longitude,
        address=facility.address,
        opening_hours=facility.opening_hours,
        phone=facility.phone.strip(),
        recycling_modes=[mode_name(m) or f"#{m}" for m in facility.recycling_modes],
        max_stock_kg=facility.storage_limits.max_stock_kg,
        max_stock_units=facility.storage_limits.max_stock_units,
        max_dwell_days=facility.storage_limits.max_dwell_days,
        fire_class=facility.safety.fire_class.strip(),
    )


def enum_violations(field: str, names: list[str]) -> list[FieldViolation]:
    return [FieldViolation(field, f"unknown value {name[1:]}") for name in names if name.startswith("#")]


def new_facility_row(operator_id: str, facility: pb.Facility, changed_by: str, reason: str) -> FacilityRow:
    """A new facility, in DRAFT, from the operator-provided fields of a message."""
    now = utcnow()
    return FacilityRow(
        facility_id=new_id(),
        operator_id=operator_id,
        operator_facility_code=facility.operator_facility_code.strip(),
        accreditation_status="DRAFT",
        accreditation_changed_by=changed_by,
        accreditation_reason=reason,
        accreditation_changed_at=now,
        version=1,
        created_at=now,
        updated_at=now,
        **facility_data(facility),  # type: ignore[arg-type]
    )
