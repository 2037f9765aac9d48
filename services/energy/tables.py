"""The energy service's tables (SQLModel; migrations energy_0001, energy_0002).

Reference and operation records (catalogue entries, assets with their lifecycle history, redundancy groups, power
links, meters, measures, M&V plans) are ordinary rows. Readings and operating states are keyed by their interval,
stored as Unix seconds (UTC) in BIGINT columns rather than timestamps: the reading table is the one that grows
(35,040 rows per meter and year at 15 minutes), its key is the upsert key ``(meter_id, start_s, end_s)``, and
integers keep the bulk writes, the range scans and the alignment of series for a regression cheap on both
databases. Independent series (energy_0002) are stored like meters and their values like readings, keyed
``(series_id, start_s, end_s)``. Evaluations are versioned: ``(evaluation_id, version)``, the result kept as the
serialized proto; a verified row is never updated again. Enum values are stored by name without their proto
prefix ("IN_SERVICE").
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Column, Date, DateTime, Index, LargeBinary, Text, UniqueConstraint, false
from sqlmodel import Field, SQLModel

ID = 36  # a UUID
SITE = 64  # a registry facility id


def _aware(name: str, *, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, DateTime(timezone=True), nullable=nullable)


def _seconds(name: str, *, primary_key: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, BigInteger(), primary_key=primary_key, nullable=False, autoincrement=False)


class CatalogueEntryRow(SQLModel, table=True):
    __tablename__ = "catalogue_entry"
    __table_args__ = (UniqueConstraint("equipment_class", "manufacturer", "model", name="uq_catalogue_entry_model"),)

    catalogue_entry_id: str = Field(primary_key=True, max_length=ID)
    equipment_class: str = Field(max_length=32)
    manufacturer: str = Field(max_length=200)
    model: str = Field(max_length=200)
    rated_value: float
    rated_unit: str = Field(max_length=16)
    input_current: str = Field(default="", max_length=2)
    input_voltage_class: str = Field(default="", max_length=16)
    output_current: str = Field(default="", max_length=2)
    output_voltage_class: str = Field(default="", max_length=16)
    # [[load_fraction, efficiency], ...]
    curve_json: str = Field(default="[]", sa_column=Column("curve_json", Text(), nullable=False))
    no_load_loss_w: float | None = None
    load_loss_w: float | None = None
    grade: int | None = None
    grade_standard: str = Field(default="", max_length=64)
    grade_edition: str = Field(default="", max_length=4)
    listed: bool = False
    listing_editions: str = Field(default="", max_length=200)  # comma-separated years
    created_by: str = Field(max_length=ID)
    created_at: datetime = Field(sa_column=_aware("created_at"))


class AssetRow(SQLModel, table=True):
    __tablename__ = "asset"
    __table_args__ = (
        UniqueConstraint("site_id", "serial_number", name="uq_asset_site_serial"),
        Index("ix_asset_operator_state", "operator_id", "lifecycle_state"),
    )

    asset_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    # The site's operator and county as the directory had them at registration.
    operator_id: str = Field(max_length=ID)
    county_code: str = Field(default="", max_length=6)
    catalogue_entry_id: str | None = Field(default=None, max_length=ID)
    equipment_class: str = Field(max_length=32)
    rated_value: float
    rated_unit: str = Field(max_length=16)
    serial_number: str = Field(max_length=100)
    asset_tag: str = Field(default="", max_length=100)
    lifecycle_state: str = Field(max_length=16)
    lifecycle_date: date = Field(sa_column=Column("lifecycle_date", Date(), nullable=False))
    redundancy_group_id: str | None = Field(default=None, max_length=ID)
    # The procurement record: all null until one is recorded.
    procured_on: date | None = Field(default=None, sa_column=Column("procured_on", Date(), nullable=True))
    listed_at_procurement: bool | None = None
    grade_at_procurement: int | None = None
    grade_standard_at_procurement: str = Field(default="", max_length=64)
    grade_edition_at_procurement: str = Field(default="", max_length=4)
    purchase_order: str = Field(default="", max_length=100)
    supplier: str = Field(default="", max_length=200)
    created_at: datetime = Field(sa_column=_aware("created_at"))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))


class AssetTransitionRow(SQLModel, table=True):
    """The lifecycle history: registration is transition 1 (from_state empty)."""

    __tablename__ = "asset_transition"

    asset_id: str = Field(primary_key=True, max_length=ID)
    number: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    from_state: str = Field(default="", max_length=16)
    to_state: str = Field(max_length=16)
    effective_date: date = Field(sa_column=Column("effective_date", Date(), nullable=False))
    note: str = Field(default="", sa_column=Column("note", Text(), nullable=False))
    recorded_by: str = Field(max_length=ID)
    recorded_at: datetime = Field(sa_column=_aware("recorded_at"))


class RedundancyGroupRow(SQLModel, table=True):
    __tablename__ = "redundancy_group"

    redundancy_group_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    name: str = Field(max_length=200)
    scheme: str = Field(max_length=24)
    units: int | None = None
    redundant_units: int | None = None
    created_at: datetime = Field(sa_column=_aware("created_at"))


class PowerLinkRow(SQLModel, table=True):
    """A power-chain edge: from_asset feeds to_asset."""

    __tablename__ = "power_link"
    __table_args__ = (UniqueConstraint("from_asset_id", "to_asset_id", name="uq_power_link_pair"),)

    power_link_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    from_asset_id: str = Field(max_length=ID)
    to_asset_id: str = Field(max_length=ID, index=True)
    medium: str = Field(default="", max_length=16)
    path: str = Field(default="", max_length=1)
    created_at: datetime = Field(sa_column=_aware("created_at"))


class MeterRow(SQLModel, table=True):
    __tablename__ = "meter"

    meter_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    asset_id: str | None = Field(default=None, max_length=ID, index=True)
    name: str = Field(default="", max_length=200)
    quantity: str = Field(max_length=24)
    unit: str = Field(max_length=16)
    mode: str = Field(max_length=16)
    interval_s: int | None = None  # None: irregular intervals
    current: str = Field(max_length=2)
    direction: str = Field(max_length=8)
    role: str = Field(max_length=16)
    it_measurement_point: str = Field(default="", max_length=24)
    rated_max_value: float | None = None
    rated_max_unit: str = Field(default="", max_length=16)
    register_max: float | None = None
    created_at: datetime = Field(sa_column=_aware("created_at"))


class ReadingRow(SQLModel, table=True):
    """One reading, keyed by its meter and interval (the upsert key). ``flags`` is a bit set of the quality flags
    (:data:`services.energy.store.FLAG_BITS`); ``consumption`` the interval's amount when it has one."""

    __tablename__ = "reading"

    meter_id: str = Field(primary_key=True, max_length=ID)
    start_s: int = Field(sa_column=_seconds("start_s", primary_key=True))
    end_s: int = Field(sa_column=_seconds("end_s", primary_key=True))
    value: float
    consumption: float | None = None
    flags: int = 0


class IndependentSeriesRow(SQLModel, table=True):
    """A named series of an independent variable at a site (not a meter): outdoor temperature, traffic, IT load."""

    __tablename__ = "independent_series"
    __table_args__ = (UniqueConstraint("site_id", "name", name="uq_independent_series_site_name"),)

    series_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    name: str = Field(max_length=63)
    unit: str = Field(default="", max_length=16)  # a Unit name, or "" when unit_label names it
    unit_label: str = Field(default="", max_length=32)
    aggregation: str = Field(max_length=8)  # SUM or MEAN
    interval_s: int | None = None  # None: irregular intervals
    source: str = Field(default="", max_length=200)
    created_by: str = Field(max_length=ID)
    created_at: datetime = Field(sa_column=_aware("created_at"))


class SeriesValueRow(SQLModel, table=True):
    """One value of an independent series, keyed by its interval (the upsert key); ``flags`` as in ``reading``."""

    __tablename__ = "series_value"

    series_id: str = Field(primary_key=True, max_length=ID)
    start_s: int = Field(sa_column=_seconds("start_s", primary_key=True))
    end_s: int = Field(sa_column=_seconds("end_s", primary_key=True))
    value: float
    flags: int = 0


class OperatingStateRow(SQLModel, table=True):
    __tablename__ = "operating_state"

    asset_id: str = Field(primary_key=True, max_length=ID)
    start_s: int = Field(sa_column=_seconds("start_s", primary_key=True))
    end_s: int = Field(sa_column=_seconds("end_s", primary_key=True))
    state: str = Field(max_length=24)
    awake_modules: int | None = None


class DriftFindingRow(SQLModel, table=True):
    """A drift alert raised for an asset, once per last drifted window (so a repeated evaluation is quiet)."""

    __tablename__ = "drift_finding"
    __table_args__ = (UniqueConstraint("asset_id", "window_end_s", name="uq_drift_finding_window"),)

    finding_id: str = Field(primary_key=True, max_length=ID)
    asset_id: str = Field(max_length=ID)
    window_end_s: int = Field(sa_column=_seconds("window_end_s"))
    drift_pp: float
    threshold_pp: float
    windows: int
    created_at: datetime = Field(sa_column=_aware("created_at"))


class MeasureRow(SQLModel, table=True):
    __tablename__ = "measure"

    measure_id: str = Field(primary_key=True, max_length=ID)
    site_id: str = Field(max_length=SITE, index=True)
    operator_id: str = Field(max_length=ID)
    county_code: str = Field(default="", max_length=6)
    measure_type: str = Field(max_length=32)
    description: str = Field(default="", sa_column=Column("description", Text(), nullable=False))
    asset_ids: str = Field(default="", sa_column=Column("asset_ids", Text(), nullable=False))  # comma-separated
    installation_start: datetime = Field(sa_column=_aware("installation_start"))
    installation_end: datetime = Field(sa_column=_aware("installation_end"))
    claimed_savings_kwh_per_year: float | None = None
    created_by: str = Field(max_length=ID)
    created_at: datetime = Field(sa_column=_aware("created_at"))


class MvPlanRow(SQLModel, table=True):
    __tablename__ = "mv_plan"

    plan_id: str = Field(primary_key=True, max_length=ID)
    measure_id: str = Field(max_length=ID, index=True)
    option: str = Field(max_length=16)
    boundary: str = Field(sa_column=Column("boundary", Text(), nullable=False))  # comma-separated ids
    energy_meter_ids: str = Field(sa_column=Column("energy_meter_ids", Text(), nullable=False))
    # [{"name": …, "meter_id": …} or {"name": …, "series_id": …}, ...] (energy_0002; before: [[name, meter_id]])
    variables_json: str = Field(default="[]", sa_column=Column("variables_json", Text(), nullable=False))
    baseline_start: datetime = Field(sa_column=_aware("baseline_start"))
    baseline_end: datetime = Field(sa_column=_aware("baseline_end"))
    reporting_start: datetime = Field(sa_column=_aware("reporting_start"))
    reporting_end: datetime = Field(sa_column=_aware("reporting_end"))
    interval_s: int  # 0 for a monthly plan
    confidence: float
    created_at: datetime = Field(sa_column=_aware("created_at"))
    # energy_0002: calendar months instead of interval_s, and the normal conditions of normalised savings (the
    # period, and every variable's source over it, in the form of variables_json).
    monthly: bool = Field(default=False, sa_column=Column("monthly", Boolean(), nullable=False, server_default=false()))
    normal_start: datetime | None = Field(default=None, sa_column=_aware("normal_start", nullable=True))
    normal_end: datetime | None = Field(default=None, sa_column=_aware("normal_end", nullable=True))
    normal_variables_json: str = Field(
        default="[]", sa_column=Column("normal_variables_json", Text(), nullable=False, server_default="[]")
    )


class EvaluationRow(SQLModel, table=True):
    """One version of a plan's savings evaluation; the grouping fields of the totals are copied here."""

    __tablename__ = "savings_evaluation"
    __table_args__ = (Index("ix_savings_evaluation_status", "status", "county_code"),)

    evaluation_id: str = Field(primary_key=True, max_length=ID)
    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    plan_id: str = Field(max_length=ID, index=True)
    measure_id: str = Field(max_length=ID)
    measure_type: str = Field(max_length=32)
    site_id: str = Field(max_length=SITE)
    operator_id: str = Field(max_length=ID)
    county_code: str = Field(default="", max_length=6)
    status: str = Field(max_length=16)
    savings_kwh: float
    verified_by: str = Field(default="", max_length=ID)
    verified_at: datetime | None = Field(default=None, sa_column=_aware("verified_at", nullable=True))
    supersedes: int | None = None
    correction_note: str = Field(default="", sa_column=Column("correction_note", Text(), nullable=False))
    created_at: datetime = Field(sa_column=_aware("created_at"))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))
    # The Evaluation message (result included) as last written.
    payload: bytes = Field(sa_column=Column("payload", LargeBinary(), nullable=False))
