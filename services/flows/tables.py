"""The flows service's tables (SQLModel; migration flows_0001).

The event log (`flow_event`, with `event_battery` linking batteries to events) is append-only: corrections
are rows of `error_declaration`, never updates of an event's content. Everything else is a projection the
capture keeps up to date in the same transaction and a replay can rebuild: each battery's state
(`battery`), open and closed shipments (`shipment`), each facility's stock and mass balance
(`facility_ledger`). Enum values are stored by name without their proto prefix ("COLLECTING").
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

# A URN such as urn:greenmesh:battery:serial:<18-character credit code>:<serial of up to 64 characters>.
BATTERY_KEY_LENGTH = 160


def _aware(name: str, *, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(name, DateTime(timezone=True), nullable=nullable)


class FlowEventRow(SQLModel, table=True):
    """One stored event. `seq` is the capture order: the resume point of subscriptions and the replay order."""

    __tablename__ = "flow_event"
    __table_args__ = (
        # EPCIS-style queries and the dispatch statistics: by step and time, by county and time, by facility.
        # The step-and-time index carries every column the statistics read (migration flows_0002), so that a
        # province's period is an index-only range per step on SQLite and PostgreSQL (services.flows.statistics).
        Index(
            "ix_flow_event_step_time_covering",
            "biz_step",
            "event_time",
            "county_code",
            "declared",
            "late",
            "collection_mode",
            "facility_type",
            "battery_count",
            "mass_kg",
        ),
        Index("ix_flow_event_county_time", "county_code", "event_time"),
        Index("ix_flow_event_facility", "facility_id", "seq"),
    )

    seq: int | None = Field(
        default=None,
        sa_column=Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    event_id: str = Field(max_length=36, unique=True)
    event_hash: str = Field(max_length=100)
    biz_step: str = Field(max_length=24)
    event_time: datetime = Field(sa_column=_aware("event_time"))
    record_time: datetime = Field(sa_column=_aware("record_time"))
    reporter_id: str = Field(max_length=36)
    facility_id: str = Field(max_length=64)
    # The facility's type and county as the directory had them at capture (statistics keep them).
    facility_type: str = Field(default="", max_length=32)
    county_code: str = Field(default="", max_length=6)
    source_facility_id: str = Field(default="", max_length=64)
    destination_facility_id: str = Field(default="", max_length=64)
    collection_mode: str = Field(default="", max_length=16)
    outcome: str = Field(max_length=16)
    battery_count: int = 0
    mass_kg: float = 0.0
    late: bool = False
    declared: bool = False
    hits_json: str = Field(default="[]", sa_column=Column("hits_json", Text(), nullable=False))
    payload: bytes = Field(sa_column=Column("payload", LargeBinary(), nullable=False))
    # "" for an event reported here; the origin province's code for a shipment imported from it (a cross-province
    # transfer, services.flows.transfers; migration flows_0003): judged there, so never re-judged here.
    origin_province: str = Field(default="", max_length=2)
    # The facility is a listed recycling enterprise's dismantling base or recycling plant (the directory at capture;
    # migration flows_0004): a battery with an effective event here has reached the compliant channel.
    at_listed_recycler: bool = False


class EventBatteryRow(SQLModel, table=True):
    """Which batteries an event touched: the trace of a battery is one index range."""

    __tablename__ = "event_battery"

    battery_key: str = Field(primary_key=True, max_length=BATTERY_KEY_LENGTH)
    event_seq: int = Field(sa_column=Column("event_seq", BigInteger(), primary_key=True))
    # The battery's state after this event as the capture judged it (a CustodyState value). A trace whose events
    # were captured in order, with nothing declared, released or imported, reads its steps from here instead of
    # replaying them (services.flows.trace). NULL where something else wrote the link: an import from another
    # province, the national view, links captured before flows_0005.
    state_after: str | None = Field(default=None, max_length=24)


class BatteryRow(SQLModel, table=True):
    """A battery's current state, derived from its effective events (the custody state machine)."""

    __tablename__ = "battery"
    __table_args__ = (
        Index("ix_battery_holder", "holder_facility_id", "phase"),
        Index("ix_battery_collected", "collected_county", "collected_at", "reached_recycler"),
    )

    battery_key: str = Field(primary_key=True, max_length=BATTERY_KEY_LENGTH)
    scheme: str = Field(max_length=24)
    namespace: str = Field(default="", max_length=18)
    value: str = Field(max_length=64)
    state: str = Field(max_length=24, index=True)
    phase: str = Field(max_length=24)
    holder_id: str = Field(default="", max_length=36)
    holder_facility_id: str = Field(default="", max_length=64)
    waste: bool = False
    reached_recycler: bool = False
    model_id: str = Field(default="", max_length=36)
    producer_id: str = Field(default="", max_length=36)
    last_event_time: datetime | None = Field(default=None, sa_column=_aware("last_event_time", nullable=True))
    # When the current holder took it (overdue storage is measured from here).
    held_since: datetime | None = Field(default=None, sa_column=_aware("held_since", nullable=True))
    # The first collection: the denominator of the compliant-channel rate.
    collected_at: datetime | None = Field(default=None, sa_column=_aware("collected_at", nullable=True))
    collected_county: str = Field(default="", max_length=6)
    collected_mode: str = Field(default="", max_length=16)
    open_shipment_seq: int | None = Field(default=None, sa_column=Column("open_shipment_seq", BigInteger()))
    # The rest of the domain BatteryState (flags, quarantine causes, production date) as JSON.
    state_json: str = Field(default="{}", sa_column=Column("state_json", Text(), nullable=False))


class ShipmentRow(SQLModel, table=True):
    """A shipping event and, once it arrives, the receipt that answered it (diversion watch)."""

    __tablename__ = "shipment"
    __table_args__ = (
        Index("ix_shipment_destination_open", "destination_facility_id", "received_seq"),
        Index("ix_shipment_open_since", "received_seq", "shipped_at"),
    )

    event_seq: int = Field(sa_column=Column("event_seq", BigInteger(), primary_key=True))
    event_id: str = Field(max_length=36)
    source_facility_id: str = Field(max_length=64)
    destination_facility_id: str = Field(max_length=64)
    reporter_id: str = Field(max_length=36)
    county_code: str = Field(default="", max_length=6)
    shipped_at: datetime = Field(sa_column=_aware("shipped_at"))
    battery_count: int = 0
    mass_kg: float = 0.0
    received_seq: int | None = Field(default=None, sa_column=Column("received_seq", BigInteger()))
    received_at: datetime | None = Field(default=None, sa_column=_aware("received_at", nullable=True))


class FacilityLedgerRow(SQLModel, table=True):
    """Running totals per facility: stock (in minus out) and a recycler's mass balance (treated in, output)."""

    __tablename__ = "facility_ledger"

    facility_id: str = Field(primary_key=True, max_length=64)
    county_code: str = Field(default="", max_length=6)
    units_in: int = 0
    units_out: int = 0
    kg_in: float = 0.0
    kg_out: float = 0.0
    treated_kg: float = 0.0
    output_kg: float = 0.0


class ErrorDeclarationRow(SQLModel, table=True):
    """EPCIS error declaration of a stored event; the event stays, marked declared, and is no longer applied."""

    __tablename__ = "error_declaration"

    event_id: str = Field(primary_key=True, max_length=36)
    reason: str = Field(max_length=24)
    corrective_event_ids: str = Field(default="", sa_column=Column("corrective_event_ids", Text(), nullable=False))
    explanation: str = Field(default="", sa_column=Column("explanation", Text(), nullable=False))
    declared_by: str = Field(max_length=36)
    declaration_time: datetime = Field(sa_column=_aware("declaration_time"))


class QuarantineReleaseRow(SQLModel, table=True):
    __tablename__ = "quarantine_release"

    release_id: str = Field(primary_key=True, max_length=36)
    battery_key: str = Field(max_length=BATTERY_KEY_LENGTH, index=True)
    released_by: str = Field(max_length=36)
    released_at: datetime = Field(sa_column=_aware("released_at"))
    note: str = Field(default="", sa_column=Column("note", Text(), nullable=False))


class AlertRow(SQLModel, table=True):
    """A monitoring alert or a rule-hit alert. `open_key` is set while the alert is open or acknowledged and
    cleared when it is resolved, so a condition raises at most one open alert (NULLs are not unique)."""

    __tablename__ = "alert"
    __table_args__ = (Index("ix_alert_status_county", "status", "county_code"),)

    alert_id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=24, index=True)
    severity: str = Field(max_length=10)
    status: str = Field(max_length=16)
    facility_id: str = Field(default="", max_length=64, index=True)
    county_code: str = Field(default="", max_length=6)
    battery_keys: str = Field(default="[]", sa_column=Column("battery_keys", Text(), nullable=False))
    rule_id: str = Field(default="", max_length=64)
    message: str = Field(sa_column=Column("message", Text(), nullable=False))
    raised_at: datetime = Field(sa_column=_aware("raised_at"))
    acknowledged_by: str = Field(default="", max_length=36)
    acknowledged_at: datetime | None = Field(default=None, sa_column=_aware("acknowledged_at", nullable=True))
    note: str = Field(default="", sa_column=Column("note", Text(), nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=_aware("resolved_at", nullable=True))
    open_key: str | None = Field(default=None, max_length=200, unique=True)


class BatteryModelRow(SQLModel, table=True):
    __tablename__ = "battery_model"
    __table_args__ = (UniqueConstraint("producer_id", "model_code", name="uq_battery_model_code"),)

    model_id: str = Field(primary_key=True, max_length=36)
    producer_id: str = Field(max_length=36)
    model_code: str = Field(max_length=64)
    chemistry: str = Field(max_length=16)
    nominal_voltage_v: float
    capacity_ah: float
    energy_wh: float
    mass_kg: float
    safe_service_life_years: int
    created_at: datetime = Field(sa_column=_aware("created_at"))


class PlatformCodeRow(SQLModel, table=True):
    """Platform codes issued at intake to batteries with no readable code (unique by the primary key)."""

    __tablename__ = "platform_code"

    code: str = Field(primary_key=True, max_length=20)
    issued_to: str = Field(max_length=36, index=True)
    issued_at: datetime = Field(sa_column=_aware("issued_at"))


class RemoteFacilityRow(SQLModel, table=True):
    """A facility of another province, from its registry's FacilityChanged through the national hub (migration
    flows_0003): what the rules need to judge a shipment to it. The local directory wins over these."""

    __tablename__ = "remote_facility"
    # Every replica follows the rows the others wrote by this column (services.flows.transfers).
    __table_args__ = (Index("ix_remote_facility_updated_at", "updated_at"),)

    facility_id: str = Field(primary_key=True, max_length=64)
    province: str = Field(max_length=2)
    operator_id: str = Field(default="", max_length=36)
    facility_type: str = Field(default="", max_length=32)
    accreditation: str = Field(default="", max_length=24)
    county_code: str = Field(default="", max_length=6)
    version: int = Field(default=0, sa_column=Column("version", BigInteger(), nullable=False))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))


class RemoteParticipantRow(SQLModel, table=True):
    """A participant registered in another province (ParticipantChanged through the national hub): the roles the
    rules check of a remote facility's operator, and the producers behind the namespaces of imported batteries."""

    __tablename__ = "remote_participant"
    __table_args__ = (Index("ix_remote_participant_updated_at", "updated_at"),)

    participant_id: str = Field(primary_key=True, max_length=36)
    province: str = Field(max_length=2)
    credit_code: str = Field(default="", max_length=18, index=True)
    # Role names without their proto prefix, comma-separated ("BATTERY_PRODUCER,DEALER").
    roles: str = Field(default="", sa_column=Column("roles", Text(), nullable=False))
    status: str = Field(default="", max_length=24)
    version: int = Field(default=0, sa_column=Column("version", BigInteger(), nullable=False))
    updated_at: datetime = Field(sa_column=_aware("updated_at"))
