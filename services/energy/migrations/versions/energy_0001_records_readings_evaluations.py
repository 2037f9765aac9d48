"""energy: catalogue, assets and their lifecycle, redundancy groups, power links, meters, readings, operating
states, drift findings, measures, M&V plans and savings evaluations.

Revision ID: energy_0001
Revises:
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "energy_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("energy",)
depends_on: str | Sequence[str] | None = ("meshkit_0001",)

ID = 36
SITE = 64


def _aware(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Text(), nullable=False)


def _id(name: str, *, nullable: bool = False, primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.String(ID), nullable=nullable, primary_key=primary_key)


def upgrade() -> None:
    op.create_table(
        "catalogue_entry",
        _id("catalogue_entry_id", primary_key=True),
        sa.Column("equipment_class", sa.String(32), nullable=False),
        sa.Column("manufacturer", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("rated_value", sa.Float(), nullable=False),
        sa.Column("rated_unit", sa.String(16), nullable=False),
        sa.Column("input_current", sa.String(2), nullable=False),
        sa.Column("input_voltage_class", sa.String(16), nullable=False),
        sa.Column("output_current", sa.String(2), nullable=False),
        sa.Column("output_voltage_class", sa.String(16), nullable=False),
        _text("curve_json"),
        sa.Column("no_load_loss_w", sa.Float(), nullable=True),
        sa.Column("load_loss_w", sa.Float(), nullable=True),
        sa.Column("grade", sa.Integer(), nullable=True),
        sa.Column("grade_standard", sa.String(64), nullable=False),
        sa.Column("grade_edition", sa.String(4), nullable=False),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("listing_editions", sa.String(200), nullable=False),
        _id("created_by"),
        _aware("created_at"),
        sa.UniqueConstraint("equipment_class", "manufacturer", "model", name="uq_catalogue_entry_model"),
    )
    op.create_table(
        "asset",
        _id("asset_id", primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        _id("operator_id"),
        sa.Column("county_code", sa.String(6), nullable=False),
        _id("catalogue_entry_id", nullable=True),
        sa.Column("equipment_class", sa.String(32), nullable=False),
        sa.Column("rated_value", sa.Float(), nullable=False),
        sa.Column("rated_unit", sa.String(16), nullable=False),
        sa.Column("serial_number", sa.String(100), nullable=False),
        sa.Column("asset_tag", sa.String(100), nullable=False),
        sa.Column("lifecycle_state", sa.String(16), nullable=False),
        sa.Column("lifecycle_date", sa.Date(), nullable=False),
        _id("redundancy_group_id", nullable=True),
        sa.Column("procured_on", sa.Date(), nullable=True),
        sa.Column("listed_at_procurement", sa.Boolean(), nullable=True),
        sa.Column("grade_at_procurement", sa.Integer(), nullable=True),
        sa.Column("grade_standard_at_procurement", sa.String(64), nullable=False),
        sa.Column("grade_edition_at_procurement", sa.String(4), nullable=False),
        sa.Column("purchase_order", sa.String(100), nullable=False),
        sa.Column("supplier", sa.String(200), nullable=False),
        _aware("created_at"),
        _aware("updated_at"),
        sa.UniqueConstraint("site_id", "serial_number", name="uq_asset_site_serial"),
    )
    op.create_index("ix_asset_operator_state", "asset", ["operator_id", "lifecycle_state"])
    op.create_table(
        "asset_transition",
        _id("asset_id", primary_key=True),
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("effective_date", sa.Date(), nullable=False),
        _text("note"),
        _id("recorded_by"),
        _aware("recorded_at"),
    )
    op.create_table(
        "redundancy_group",
        _id("redundancy_group_id", primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("scheme", sa.String(24), nullable=False),
        sa.Column("units", sa.Integer(), nullable=True),
        sa.Column("redundant_units", sa.Integer(), nullable=True),
        _aware("created_at"),
    )
    op.create_table(
        "power_link",
        _id("power_link_id", primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        _id("from_asset_id"),
        sa.Column("to_asset_id", sa.String(ID), nullable=False, index=True),
        sa.Column("medium", sa.String(16), nullable=False),
        sa.Column("path", sa.String(1), nullable=False),
        _aware("created_at"),
        sa.UniqueConstraint("from_asset_id", "to_asset_id", name="uq_power_link_pair"),
    )
    op.create_table(
        "meter",
        _id("meter_id", primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        sa.Column("asset_id", sa.String(ID), nullable=True, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("quantity", sa.String(24), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=True),
        sa.Column("current", sa.String(2), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("it_measurement_point", sa.String(24), nullable=False),
        sa.Column("rated_max_value", sa.Float(), nullable=True),
        sa.Column("rated_max_unit", sa.String(16), nullable=False),
        sa.Column("register_max", sa.Float(), nullable=True),
        _aware("created_at"),
    )
    op.create_table(
        "reading",
        _id("meter_id", primary_key=True),
        sa.Column("start_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("end_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("consumption", sa.Float(), nullable=True),
        sa.Column("flags", sa.Integer(), nullable=False),
    )
    op.create_table(
        "operating_state",
        _id("asset_id", primary_key=True),
        sa.Column("start_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("end_s", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("awake_modules", sa.Integer(), nullable=True),
    )
    op.create_table(
        "drift_finding",
        _id("finding_id", primary_key=True),
        _id("asset_id"),
        sa.Column("window_end_s", sa.BigInteger(), nullable=False),
        sa.Column("drift_pp", sa.Float(), nullable=False),
        sa.Column("threshold_pp", sa.Float(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        _aware("created_at"),
        sa.UniqueConstraint("asset_id", "window_end_s", name="uq_drift_finding_window"),
    )
    op.create_table(
        "measure",
        _id("measure_id", primary_key=True),
        sa.Column("site_id", sa.String(SITE), nullable=False, index=True),
        _id("operator_id"),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("measure_type", sa.String(32), nullable=False),
        _text("description"),
        _text("asset_ids"),
        _aware("installation_start"),
        _aware("installation_end"),
        sa.Column("claimed_savings_kwh_per_year", sa.Float(), nullable=True),
        _id("created_by"),
        _aware("created_at"),
    )
    op.create_table(
        "mv_plan",
        _id("plan_id", primary_key=True),
        sa.Column("measure_id", sa.String(ID), nullable=False, index=True),
        sa.Column("option", sa.String(16), nullable=False),
        _text("boundary"),
        _text("energy_meter_ids"),
        _text("variables_json"),
        _aware("baseline_start"),
        _aware("baseline_end"),
        _aware("reporting_start"),
        _aware("reporting_end"),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        _aware("created_at"),
    )
    op.create_table(
        "savings_evaluation",
        _id("evaluation_id", primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("plan_id", sa.String(ID), nullable=False, index=True),
        _id("measure_id"),
        sa.Column("measure_type", sa.String(32), nullable=False),
        sa.Column("site_id", sa.String(SITE), nullable=False),
        _id("operator_id"),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("savings_kwh", sa.Float(), nullable=False),
        _id("verified_by"),
        _aware("verified_at", nullable=True),
        sa.Column("supersedes", sa.Integer(), nullable=True),
        _text("correction_note"),
        _aware("created_at"),
        _aware("updated_at"),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_savings_evaluation_status", "savings_evaluation", ["status", "county_code"])


def downgrade() -> None:
    for table in (
        "savings_evaluation",
        "mv_plan",
        "measure",
        "drift_finding",
        "operating_state",
        "reading",
        "meter",
        "power_link",
        "redundancy_group",
        "asset_transition",
        "asset",
        "catalogue_entry",
    ):
        op.drop_table(table)
