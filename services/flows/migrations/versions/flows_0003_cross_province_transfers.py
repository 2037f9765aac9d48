"""flows: cross-province transfers (issue 7): the directory of other provinces' facilities and participants, and
the origin province of a shipment imported from another province.

Revision ID: flows_0003
Revises: flows_0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "flows_0003"
down_revision: str | Sequence[str] | None = "flows_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows are all reported here: "" (a constant default, so no table rewrite on PostgreSQL).
    op.add_column("flow_event", sa.Column("origin_province", sa.String(2), nullable=False, server_default=""))
    op.create_table(
        "remote_facility",
        sa.Column("facility_id", sa.String(64), primary_key=True),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("operator_id", sa.String(36), nullable=False),
        sa.Column("facility_type", sa.String(32), nullable=False),
        sa.Column("accreditation", sa.String(24), nullable=False),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "remote_participant",
        sa.Column("participant_id", sa.String(36), primary_key=True),
        sa.Column("province", sa.String(2), nullable=False),
        sa.Column("credit_code", sa.String(18), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_remote_participant_credit_code", "remote_participant", ["credit_code"])
    op.create_index("ix_remote_facility_updated_at", "remote_facility", ["updated_at"])
    op.create_index("ix_remote_participant_updated_at", "remote_participant", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_remote_participant_updated_at", table_name="remote_participant")
    op.drop_index("ix_remote_facility_updated_at", table_name="remote_facility")
    op.drop_index("ix_remote_participant_credit_code", table_name="remote_participant")
    op.drop_table("remote_participant")
    op.drop_table("remote_facility")
    op.drop_column("flow_event", "origin_province")
