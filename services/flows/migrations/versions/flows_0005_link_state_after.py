"""flows: each event_battery link keeps the battery's state after the event, as the capture judged it, so that
a battery's trace in capture order is read rather than replayed (services.flows.trace).

Revision ID: flows_0005
Revises: flows_0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "flows_0005"
down_revision: str | Sequence[str] | None = "flows_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: no table rewrite on PostgreSQL. Links captured before read as NULL, and their
    # batteries' traces are replayed as before.
    op.add_column("event_battery", sa.Column("state_after", sa.String(length=24), nullable=True))


def downgrade() -> None:
    op.drop_column("event_battery", "state_after")
