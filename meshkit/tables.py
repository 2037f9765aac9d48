"""SQLModel tables of the shared runtime, present in every service database (migration meshkit_0001)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, LargeBinary, Text, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(column_name: str, *, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(column_name, DateTime(timezone=True), nullable=nullable)


class OutboxEvent(SQLModel, table=True):
    """An event written in the same transaction as the change it records; the relay publishes it."""

    __tablename__ = "outbox_event"
    # The relay looks only at unpublished rows; a partial index keeps that lookup small.
    __table_args__ = (
        Index(
            "ix_outbox_event_unpublished",
            "seq",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )

    seq: int | None = Field(
        default=None,
        sa_column=Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    event_id: str = Field(max_length=64, unique=True)
    subject: str = Field(max_length=255)
    event_type: str = Field(max_length=255)
    payload: bytes = Field(sa_column=Column("payload", LargeBinary(), nullable=False))
    headers_json: str = Field(sa_column=Column("headers_json", Text(), nullable=False))
    created_at: datetime = Field(sa_column=_aware("created_at"))
    published_at: datetime | None = Field(default=None, sa_column=_aware("published_at", nullable=True))
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column("last_error", Text(), nullable=True))


class InboxMessage(SQLModel, table=True):
    """A message a consumer has applied; recorded in the same transaction as the effect."""

    __tablename__ = "inbox_message"

    consumer: str = Field(primary_key=True, max_length=128)
    message_id: str = Field(primary_key=True, max_length=128)
    subject: str = Field(max_length=255)
    received_at: datetime = Field(sa_column=_aware("received_at"))


class ProbeEmission(SQLModel, table=True):
    __tablename__ = "probe_emission"

    probe_id: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(max_length=64)
    note: str = Field(default="", max_length=200)
    created_at: datetime = Field(sa_column=_aware("created_at"))


class ProbeReceipt(SQLModel, table=True):
    __tablename__ = "probe_receipt"

    probe_id: str = Field(primary_key=True, max_length=64)
    emitted_by: str = Field(primary_key=True, max_length=32)
    received_at: datetime = Field(sa_column=_aware("received_at"))
    trace_id: str = Field(max_length=32)
