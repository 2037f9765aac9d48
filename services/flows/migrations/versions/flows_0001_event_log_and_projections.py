"""flows: the event log, battery states, shipments, ledgers, declarations, releases, alerts, models, codes.

Revision ID: flows_0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "flows_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = ("flows",)
depends_on: str | Sequence[str] | None = ("meshkit_0001",)

KEY = 160  # a battery URN


def _aware(name: str, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.Text(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "flow_event",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_hash", sa.String(100), nullable=False),
        sa.Column("biz_step", sa.String(24), nullable=False),
        _aware("event_time"),
        _aware("record_time"),
        sa.Column("reporter_id", sa.String(36), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False),
        sa.Column("facility_type", sa.String(32), nullable=False),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("source_facility_id", sa.String(64), nullable=False),
        sa.Column("destination_facility_id", sa.String(64), nullable=False),
        sa.Column("collection_mode", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("battery_count", sa.Integer(), nullable=False),
        sa.Column("mass_kg", sa.Float(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("declared", sa.Boolean(), nullable=False),
        _text("hits_json"),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_flow_event_step_time", "flow_event", ["biz_step", "event_time"])
    op.create_index("ix_flow_event_county_time", "flow_event", ["county_code", "event_time"])
    op.create_index("ix_flow_event_facility", "flow_event", ["facility_id", "seq"])

    op.create_table(
        "event_battery",
        sa.Column("battery_key", sa.String(KEY), primary_key=True),
        sa.Column("event_seq", sa.BigInteger(), primary_key=True),
    )
    op.create_table(
        "battery",
        sa.Column("battery_key", sa.String(KEY), primary_key=True),
        sa.Column("scheme", sa.String(24), nullable=False),
        sa.Column("namespace", sa.String(18), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("state", sa.String(24), nullable=False, index=True),
        sa.Column("phase", sa.String(24), nullable=False),
        sa.Column("holder_id", sa.String(36), nullable=False),
        sa.Column("holder_facility_id", sa.String(64), nullable=False),
        sa.Column("waste", sa.Boolean(), nullable=False),
        sa.Column("reached_recycler", sa.Boolean(), nullable=False),
        sa.Column("model_id", sa.String(36), nullable=False),
        sa.Column("producer_id", sa.String(36), nullable=False),
        _aware("last_event_time", nullable=True),
        _aware("held_since", nullable=True),
        _aware("collected_at", nullable=True),
        sa.Column("collected_county", sa.String(6), nullable=False),
        sa.Column("collected_mode", sa.String(16), nullable=False),
        sa.Column("open_shipment_seq", sa.BigInteger(), nullable=True),
        _text("state_json"),
    )
    op.create_index("ix_battery_holder", "battery", ["holder_facility_id", "phase"])
    op.create_index("ix_battery_collected", "battery", ["collected_county", "collected_at", "reached_recycler"])

    op.create_table(
        "shipment",
        sa.Column("event_seq", sa.BigInteger(), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("source_facility_id", sa.String(64), nullable=False),
        sa.Column("destination_facility_id", sa.String(64), nullable=False),
        sa.Column("reporter_id", sa.String(36), nullable=False),
        sa.Column("county_code", sa.String(6), nullable=False),
        _aware("shipped_at"),
        sa.Column("battery_count", sa.Integer(), nullable=False),
        sa.Column("mass_kg", sa.Float(), nullable=False),
        sa.Column("received_seq", sa.BigInteger(), nullable=True),
        _aware("received_at", nullable=True),
    )
    op.create_index("ix_shipment_destination_open", "shipment", ["destination_facility_id", "received_seq"])
    op.create_index("ix_shipment_open_since", "shipment", ["received_seq", "shipped_at"])

    op.create_table(
        "facility_ledger",
        sa.Column("facility_id", sa.String(64), primary_key=True),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("units_in", sa.Integer(), nullable=False),
        sa.Column("units_out", sa.Integer(), nullable=False),
        sa.Column("kg_in", sa.Float(), nullable=False),
        sa.Column("kg_out", sa.Float(), nullable=False),
        sa.Column("treated_kg", sa.Float(), nullable=False),
        sa.Column("output_kg", sa.Float(), nullable=False),
    )
    op.create_table(
        "error_declaration",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("reason", sa.String(24), nullable=False),
        _text("corrective_event_ids"),
        _text("explanation"),
        sa.Column("declared_by", sa.String(36), nullable=False),
        _aware("declaration_time"),
    )
    op.create_table(
        "quarantine_release",
        sa.Column("release_id", sa.String(36), primary_key=True),
        sa.Column("battery_key", sa.String(KEY), nullable=False, index=True),
        sa.Column("released_by", sa.String(36), nullable=False),
        _aware("released_at"),
        _text("note"),
    )
    op.create_table(
        "alert",
        sa.Column("alert_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(24), nullable=False, index=True),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("facility_id", sa.String(64), nullable=False, index=True),
        sa.Column("county_code", sa.String(6), nullable=False),
        _text("battery_keys"),
        sa.Column("rule_id", sa.String(64), nullable=False),
        _text("message"),
        _aware("raised_at"),
        sa.Column("acknowledged_by", sa.String(36), nullable=False),
        _aware("acknowledged_at", nullable=True),
        _text("note"),
        _aware("resolved_at", nullable=True),
        sa.Column("open_key", sa.String(200), nullable=True, unique=True),
    )
    op.create_index("ix_alert_status_county", "alert", ["status", "county_code"])
    op.create_table(
        "battery_model",
        sa.Column("model_id", sa.String(36), primary_key=True),
        sa.Column("producer_id", sa.String(36), nullable=False),
        sa.Column("model_code", sa.String(64), nullable=False),
        sa.Column("chemistry", sa.String(16), nullable=False),
        sa.Column("nominal_voltage_v", sa.Float(), nullable=False),
        sa.Column("capacity_ah", sa.Float(), nullable=False),
        sa.Column("energy_wh", sa.Float(), nullable=False),
        sa.Column("mass_kg", sa.Float(), nullable=False),
        sa.Column("safe_service_life_years", sa.Integer(), nullable=False),
        _aware("created_at"),
        sa.UniqueConstraint("producer_id", "model_code", name="uq_battery_model_code"),
    )
    op.create_table(
        "platform_code",
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("issued_to", sa.String(36), nullable=False, index=True),
        _aware("issued_at"),
    )


def downgrade() -> None:
    for table in (
        "platform_code",
        "battery_model",
        "alert",
        "quarantine_release",
        "error_declaration",
        "facility_ledger",
        "shipment",
        "battery",
        "event_battery",
        "flow_event",
    ):
        op.drop_table(table)
