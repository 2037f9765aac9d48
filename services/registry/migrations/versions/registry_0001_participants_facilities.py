"""registry: participants, status history, cooperations, facilities, credentials.

Revision ID: registry_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "registry_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("registry",)
depends_on: str | Sequence[str] | None = ("meshkit_0001",)


def _aware(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "participant",
        sa.Column("participant_id", sa.String(36), primary_key=True),
        sa.Column("credit_code", sa.String(18), nullable=False, unique=True),
        sa.Column("legal_name", sa.String(200), nullable=False),
        sa.Column("short_name", sa.String(100), nullable=False),
        sa.Column("roles", sa.String(500), nullable=False),
        sa.Column("supervised_division_code", sa.String(6), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("registration_division_code", sa.String(6), nullable=False, index=True),
        sa.Column("qualifications_json", sa.Text(), nullable=False),
        sa.Column("contact_phone", sa.String(25), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _aware("created_at"),
        _aware("updated_at"),
    )
    op.create_table(
        "participant_status_change",
        sa.Column("change_id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("participant_id", sa.String(36), nullable=False, index=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("changed_by", sa.String(36), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        _aware("changed_at"),
    )
    op.create_table(
        "cooperation",
        sa.Column("cooperation_id", sa.String(36), primary_key=True),
        sa.Column("producer_id", sa.String(36), nullable=False, index=True),
        sa.Column("operator_id", sa.String(36), nullable=False, index=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("facility_ids", sa.Text(), nullable=False),
        _aware("valid_from", nullable=True),
        _aware("valid_to", nullable=True),
        _aware("created_at"),
    )
    op.create_table(
        "facility",
        sa.Column("facility_id", sa.String(36), primary_key=True),
        sa.Column("operator_id", sa.String(36), nullable=False, index=True),
        sa.Column("operator_facility_code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("facility_type", sa.String(32), nullable=False, index=True),
        sa.Column("county_code", sa.String(6), nullable=False, index=True),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("address", sa.String(300), nullable=False),
        sa.Column("opening_hours", sa.String(100), nullable=False),
        sa.Column("phone", sa.String(25), nullable=False),
        sa.Column("recycling_modes", sa.String(200), nullable=False),
        sa.Column("max_stock_kg", sa.Float(), nullable=False),
        sa.Column("max_stock_units", sa.Integer(), nullable=False),
        sa.Column("max_dwell_days", sa.Integer(), nullable=False),
        sa.Column("fire_class", sa.String(10), nullable=False),
        sa.Column("has_discharge_equipment", sa.Boolean(), nullable=False),
        sa.Column("has_monitoring", sa.Boolean(), nullable=False),
        sa.Column("accreditation_status", sa.String(20), nullable=False),
        sa.Column("accreditation_changed_by", sa.String(36), nullable=False),
        sa.Column("accreditation_reason", sa.String(500), nullable=False),
        _aware("accreditation_changed_at"),
        sa.Column("version", sa.Integer(), nullable=False),
        _aware("created_at"),
        _aware("updated_at"),
        sa.UniqueConstraint("operator_id", "operator_facility_code", name="uq_facility_operator_code"),
    )
    op.create_index("ix_facility_listed_geo", "facility", ["accreditation_status", "latitude", "longitude"])
    op.create_table(
        "credential",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("participant_id", sa.String(36), nullable=False, index=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("issued_by", sa.String(36), nullable=False),
        _aware("created_at"),
        _aware("revoked_at", nullable=True),
        sa.Column("revoked_by", sa.String(36), nullable=False),
        sa.Column("revoke_reason", sa.String(500), nullable=False),
    )


def downgrade() -> None:
    for table in ("credential", "facility", "cooperation", "participant_status_change", "participant"):
        op.drop_table(table)
