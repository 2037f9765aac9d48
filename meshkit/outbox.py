"""The transactional outbox: an event row written in the same transaction as the domain change,
and a relay that publishes unpublished rows to JetStream with `Nats-Msg-Id` = the event id.

The relay keeps trying while NATS is down and catches up when it returns. A row published but not yet
marked (a crash in between) is published again on the next pass and dropped by JetStream's
de-duplication window; consumers are idempotent (see `meshkit.inbox`) for anything older than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field

from google.protobuf.message import Message
from opentelemetry import propagate
from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import update
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.bus import CONTENT_TYPE_HEADER, EVENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE, Bus
from meshkit.db import Database
from meshkit.tables import OutboxEvent, utcnow

log = logging.getLogger(__name__)


def new_event_id() -> str:
    return str(uuid.uuid4())


def append_event(session: AsyncSession, subject: str, message: Message, *, event_id: str | None = None) -> OutboxEvent:
    """Stage an event in the caller's transaction; it is published only if that transaction commits.

    The current trace context is captured now, at write time: the relay runs later, for many requests
    at once, so its own context would be the wrong parent.
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    headers = {
        EVENT_TYPE_HEADER: message.DESCRIPTOR.full_name,
        CONTENT_TYPE_HEADER: PROTOBUF_CONTENT_TYPE,
        **carrier,
    }
    row = OutboxEvent(
        event_id=event_id or new_event_id(),
        subject=subject,
        event_type=message.DESCRIPTOR.full_name,
        payload=message.SerializeToString(deterministic=True),
        headers_json=json.dumps(headers, sort_keys=True),
        created_at=utcnow(),
    )
    session.add(row)
    return row


@dataclass
class OutboxRelay:
    database: Database
    bus: Bus
    batch_size: int = 200
    poll_seconds: float = 0.5
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    published_total: int = 0
    stopping: bool = False

    def notify(self) -> None:
        """Called after a commit that wrote outbox rows, so they go out without waiting for the poll."""
        self._wakeup.set()

    async def pending_count(self) -> int:
        async with self.database.session() as session:
            rows = await session.exec(
                select(func.count()).select_from(OutboxEvent).where(col(OutboxEvent.published_at).is_(None))
            )
            return int(rows.one())

    async def publish_pending(self) -> int:
        """One pass: publish every unpublished row in order, in batches; returns how many were sent.

        Stops at the first failure so that order is kept; the row's attempt count and error are noted.
        """
        sent = 0
        while True:
            published_now = await self._publish_batch()
            sent += published_now
            if published_now < self.batch_size:
                return sent

    async def _publish_batch(self) -> int:
        # The relay's own SQL is not traced: it polls, and each poll would otherwise be a trace of its own.
        with suppress_instrumentation():
            return await self._publish_batch_untraced()

    async def _publish_batch_untraced(self) -> int:
        async with self.database.transaction() as session:
            query = (
                select(OutboxEvent)
                .where(col(OutboxEvent.published_at).is_(None))
                .order_by(col(OutboxEvent.seq))
                .limit(self.batch_size)
            )
            if self.database.is_postgres:
                # Several replicas may relay at once; each takes rows the others have not locked.
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.exec(query)).all())
            if not rows:
                return 0
            published: list[int] = []
            failure: tuple[int, str] | None = None
            for row in rows:
                headers: dict[str, str] = json.loads(row.headers_json)
                parent = propagate.extract(headers)
                try:
                    await self.bus.publish(
                        row.subject, row.payload, message_id=row.event_id, headers=headers, parent=parent
                    )
                except Exception as exc:
                    assert row.seq is not None
                    failure = (row.seq, f"{type(exc).__name__}: {exc}"[:500])
                    break
                assert row.seq is not None
                published.append(row.seq)
            now = utcnow()
            if published:
                await session.exec(
                    update(OutboxEvent).where(col(OutboxEvent.seq).in_(published)).values(published_at=now)
                )
            if failure is not None:
                await session.exec(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.seq) == failure[0])
                    .values(attempts=OutboxEvent.attempts + 1, last_error=failure[1])
                )
        self.published_total += len(published)
        if failure is not None:
            raise OutboxPublishError(failure[1])
        return len(published)

    async def run(self) -> None:
        """Relay forever: publish on notify or every poll interval; back off while NATS is down."""
        backoff = self.poll_seconds
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            if not self.bus.connected:
                backoff = min(backoff * 2, 5.0)  # the bus notifies us as soon as NATS is back
                continue
            try:
                await self.publish_pending()
                backoff = self.poll_seconds
            except asyncio.CancelledError:
                raise
            except OutboxPublishError as exc:
                log.warning("outbox relay: publish failed (%s); will retry", exc)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("outbox relay pass failed; will retry")
                backoff = min(backoff * 2, 5.0)


class OutboxPublishError(Exception):
    pass
