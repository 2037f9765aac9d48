"""flows: whether an event happened at a listed recycling enterprise (its facility a listed dismantling base or
recycling plant of a recycling enterprise, by the directory at capture). A battery with an effective event there
has reached the compliant channel; the national view (services/national) recomputes that after an error
declaration from this column, having no directory of its own.

Revision ID: flows_0004
Revises: flows_0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "flows_0004"
down_revision: str | Sequence[str] | None = "flows_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: no table rewrite on PostgreSQL. Events captured before it read as not at a recycler,
    # which only the national view reads, and it starts from events captured after.
    op.add_column(
        "flow_event", sa.Column("at_listed_recycler", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("flow_event", "at_listed_recycler")
