"""The registry's tables (SQLModel). Enum values are stored by name without their proto prefix
(e.g. "RECYCLING_OUTLET"), so the database reads well and the domain rules use the same words."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _aware(name: str, *, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, DateTime(timezone=True), nullable=nullable)


class ParticipantRow(SQLModel, table=True):
    __tablename__ = "participant"

    participant_id: str = Field(primary_key=True, max_length=36)
    credit_code: str = Field(max_length=18, unique=True)
    legal_name: str = Field(max_length=200)
    short_name: str = Field(default="", max_length=100)
    roles: str = Field(max_length=500, description="comma-separated role names")
    supervised_division_code: str = Field(default="", max_length=6)
    status: str = Field(max_length=20, index=True)
    registration_division_code: str = Field(max_length=6, index=True)
    qualifications_json: str = Field(default="[]", sa_column=Column("qualifications_json", Text(), nullable=False))
    contact_phone: str = Field(default="", max_length=25)
    version: int = 1
    created_at: datetime = Field(sa_column=_aware("created_at"))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))


class StatusChangeRow(SQLModel, table=True):
    __tablename__ = "participant_status_change"

    change_id: int | None = Field(default=None, primary_key=True)
    participant_id: str = Field(max_length=36, index=True)
    status: str = Field(max_length=20)
    changed_by: str = Field(max_length=36)
    reason: str = Field(max_length=500)
    changed_at: datetime = Field(sa_column=_aware("changed_at"))


class CooperationRow(SQLModel, table=True):
    __tablename__ = "cooperation"

    cooperation_id: str = Field(primary_key=True, max_length=36)
    producer_id: str = Field(max_length=36, index=True)
    operator_id: str = Field(max_length=36, index=True)
    kind: str = Field(max_length=20)
    facility_ids: str = Field(default="", sa_column=Column("facility_ids", Text(), nullable=False))
    valid_from: datetime | None = Field(default=None, sa_column=_aware("valid_from", nullable=True))
    valid_to: datetime | None = Field(default=None, sa_column=_aware("valid_to", nullable=True))
    created_at: datetime = Field(sa_column=_aware("created_at"))


class FacilityRow(SQLModel, table=True):
    __tablename__ = "facility"
    __table_args__ = (
        UniqueConstraint("operator_id", "operator_facility_code", name="uq_facility_operator_code"),
        # The nearest-outlet query: listed sites of some types inside a lat/lon box.
        Index("ix_facility_listed_geo", "accreditation_status", "latitude", "longitude"),
        # County coverage: distinct counties of listed sites per type (migration registry_0002).
        Index("ix_facility_coverage", "accreditation_status", "facility_type", "county_code"),
    )

    facility_id: str = Field(primary_key=True, max_length=36)
    operator_id: str = Field(max_length=36, index=True)
    operator_facility_code: str = Field(max_length=64)
    name: str = Field(max_length=200)
    facility_type: str = Field(max_length=32, index=True)
    county_code: str = Field(max_length=6, index=True)
    latitude: float
    longitude: float
    address: str = Field(default="", max_length=300)
    opening_hours: str = Field(default="", max_length=100)
    phone: str = Field(default="", max_length=25)
    recycling_modes: str = Field(default="", max_length=200, description="comma-separated mode names")
    max_stock_kg: float = 0.0
    max_stock_units: int = 0
    max_dwell_days: int = 0
    fire_class: str = Field(default="", max_length=10)
    has_discharge_equipment: bool = False
    has_monitoring: bool = False
    accreditation_status: str = Field(max_length=20)
    accreditation_changed_by: str = Field(default="", max_length=36)
    accreditation_reason: str = Field(default="", max_length=500)
    accreditation_changed_at: datetime = Field(sa_column=_aware("accreditation_changed_at"))
    version: int = 1
    created_at: datetime = Field(sa_column=_aware("created_at"))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))


class CredentialRow(SQLModel, table=True):
    __tablename__ = "credential"

    key_id: str = Field(primary_key=True, max_length=32)
    participant_id: str = Field(max_length=36, index=True)
    secret_hash: str = Field(max_length=64)
    label: str = Field(default="", max_length=100)
    issued_by: str = Field(max_length=36)
    created_at: datetime = Field(sa_column=_aware("created_at"))
    revoked_at: datetime | None = Field(default=None, sa_column=_aware("revoked_at", nullable=True))
    revoked_by: str = Field(default="", max_length=36)
    revoke_reason: str = Field(default="", max_length=500)
