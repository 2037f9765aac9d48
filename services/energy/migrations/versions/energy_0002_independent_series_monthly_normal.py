"""energy: independent series and their values; monthly M&V plans and their normal conditions; plan variables
that name a meter or a series.

- ``independent_series`` and ``series_value`` (keyed like ``reading``);
- ``mv_plan.monthly``, ``normal_start``, ``normal_end``, ``normal_variables_json``;
- ``mv_plan.variables_json`` rewritten from ``[[name, meter_id], ...]`` to ``[{"name": …, "meter_id": …}, ...]``,
  the form that can also hold ``series_id``.

Revision ID: energy_0002
Revises: energy_0001
Create Date: 2026-12-09
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "energy_0002"
down_revision: str | Sequence[str] | None = "energy_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = 36
SITE = 64

PLANS = sa.table("mv_plan", sa.column("plan_id", sa.String(ID)), sa.column("variables_json", sa.Text()))


def _rewrite_variables(convert: object) -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(PLANS.c.plan_id, PLANS.c.variables_json)).all()
    for plan_id, text in rows:
        rewritten = json.dumps([convert(item) for item in json.loads(text)])  # type: ignore[operator]
        if rewritten != text:
            connection.execute(PLANS.update().where(PLANS.c.plan_id == plan_id).values(variables_json=rewritten))


def _to_objects(item: object) -> object:
    if isinstance(item, list):
        name, meter_id = item
        return {"name": name, "meter_id": meter_id}
    return item


def _to_pairs(item: object) -> object:
    if isinstance(item, dict):
        if "meter_id" not in item:
            raise RuntimeError("a plan uses an independent series: energy_0001 cannot hold it")
        return [item["name"], item["meter_id"]]
    return item


def upgrade() -> None:
    op.create_table(
        "independent_series",
        sa.Column("series_id", sa.String(ID), primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("unit_label", sa.String(32), nullable=False),
        sa.Column("aggregation", sa.String(8), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(ID), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site_id", "name", name="uq_independent_series_site_name"),
    )
    op.create_table(
        "series_value",
        sa.Column("series_id", sa.String(ID), primary_key=True),
        sa.Column("start_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("end_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("flags", sa.Integer(), nullable=False),
    )
    op.add_column("mv_plan", sa.Column("monthly", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("mv_plan", sa.Column("normal_start", sa.DateTime(timezone=True), nullable=True))
    op.add_column("mv_plan", sa.Column("normal_end", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "mv_plan", sa.Column("normal_variables_json", sa.Text(), nullable=False, server_default=sa.text("'[]'"))
    )
    _rewrite_variables(_to_objects)


def downgrade() -> None:
    connection = op.get_bind()
    plans = sa.table("mv_plan", sa.column("monthly", sa.Boolean()), sa.column("normal_start", sa.DateTime()))
    kept = connection.execute(
        sa.select(sa.func.count()).where(sa.or_(plans.c.monthly.is_(True), plans.c.normal_start.is_not(None)))
    ).scalar_one()
    if kept:
        raise RuntimeError(f"{kept} plan(s) are monthly or state normal conditions: energy_0001 cannot hold them")
    _rewrite_variables(_to_pairs)
    with op.batch_alter_table("mv_plan") as batch:
        batch.drop_column("normal_variables_json")
        batch.drop_column("normal_end")
        batch.drop_column("normal_start")
        batch.drop_column("monthly")
    op.drop_table("series_value")
    op.drop_table("independent_series")
