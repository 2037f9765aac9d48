"""registry: index for county coverage (listed sites of a type, per county).

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "registry_0002"
down_revision: str | Sequence[str] | None = "registry_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Coverage counts distinct counties of listed facilities by type: an index-only scan instead of a table scan.
    op.create_index("ix_facility_coverage", "facility", ["accreditation_status", "facility_type", "county_code"])


def downgrade() -> None:
    op.drop_index("ix_facility_coverage", table_name="facility")
