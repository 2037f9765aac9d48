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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message
from nats.js.api import PubAck
from opentelemetry import propagate
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.propagators.textmap import Getter
from sqlalchemy import Update, update
from sqlalchemy import select as sa_select
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.bus import CONTENT_TYPE_HEADER, EVENT_TYPE_HEADER, PROTOBUF_CONTENT_TYPE, Bus, OutgoingMessage, SentWindow
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


def mark_published(seqs: Sequence[int], now: datetime) -> Update:
    """One UPDATE marking rows published: by seq range when the seqs are contiguous (then the range
    holds exactly these rows, seq being the key), else by the list (rows another replica has locked
    on PostgreSQL, or deleted ones, leave gaps)."""
    statement = update(OutboxEvent).values(published_at=now)
    if seqs[-1] - seqs[0] + 1 == len(seqs):
        return statement.where(col(OutboxEvent.seq).between(seqs[0], seqs[-1]))
    return statement.where(col(OutboxEvent.seq).in_(seqs))


class _HeaderGetter(Getter[Mapping[str, str]]):
    """`DefaultGetter` for the str-to-str headers stored with an event, without its per-call ABC checks
    (the relay extracts a parent context from every row it sends)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


HEADER_GETTER = _HeaderGetter()


@dataclass
class _Window:
    """A window of outbox rows being relayed: its open transaction and its sent messages."""

    stack: contextlib.AsyncExitStack
    session: AsyncSession
    seqs: list[int]
    full: bool
    sent: SentWindow | None = None
    send_failure: Exception | None = None
    closed: bool = False

    async def abandon(self) -> None:
        """Give the window up unmarked (a later window or pass sends its rows again)."""
        self.closed = True
        if self.sent is not None:
            self.sent.abandon()
        try:
            await self.stack.aclose()  # nothing was written: this only ends the transaction
        except Exception:
            log.warning("outbox relay: ending an abandoned window's transaction failed", exc_info=True)


@dataclass
class OutboxRelay:
    database: Database
    bus: Bus
    batch_size: int = 1000
    poll_seconds: float = 0.5
    ack_timeout_seconds: float = 5.0
    # Back-pressure from a slow consumer: while a durable consumer of the stream has more than this many messages
    # not yet delivered, nothing more is published (rows wait here, committed); 0: never hold.
    consumer_lag_limit: int = 0
    lag_check_seconds: float = 1.0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    published_total: int = 0
    stopping: bool = False
    # Rows waiting to be published, as of the last pass: what services compare with their backlog limit.
    backlog: int = 0
    # The consumer holding the relay back (name, messages it has not been delivered), or None.
    held_by: tuple[str, int] | None = None
    _lag_checked_at: float = float("-inf")
    backlog_refresh_seconds: float = 0.5
    _backlog_counted_at: float = float("-inf")

    def notify(self) -> None:
        """Called after a commit that wrote outbox rows, so they go out without waiting for the poll."""
        self._wakeup.set()

    async def pending_count(self) -> int:
        # Not traced, like the relay's other SQL: the relay asks after every pass.
        with suppress_instrumentation():
            return await self._pending_count_untraced()

    async def _pending_count_untraced(self) -> int:
        async with self.database.session() as session:
            rows = await session.exec(
                select(func.count()).select_from(OutboxEvent).where(col(OutboxEvent.published_at).is_(None))
            )
            return int(rows.one())

    async def publish_pending(self) -> int:
        """One pass: publish every unpublished row in seq order, a window of `batch_size` rows at a time;
        returns how many were published.

        A window is sent pipelined (every publish before any ack is awaited), and the next window is read
        and sent while the acks of the previous one come in; both go out in seq order on the one NATS
        connection, so the stream keeps that order. Each window's acknowledged prefix is marked with one
        UPDATE. At the first failure the pass stops: that row's attempt count and error are noted and
        nothing after it is marked; the next pass sends again from it, and JetStream drops the copies
        of rows already stored (`Nats-Msg-Id`).
        """
        # The relay's own SQL is not traced: it polls, and each poll would otherwise be a trace of its own.
        with suppress_instrumentation():
            return await self._publish_pending_untraced()

    async def _publish_pending_untraced(self) -> int:
        published = 0
        after: int | None = None
        in_flight: _Window | None = None
        following: _Window | None = None
        try:
            while True:
                # A window that failed to send must not be overtaken: nothing after it goes out.
                if in_flight is None or (in_flight.full and in_flight.send_failure is None):
                    following = await self._open_window(after)
                    if following is not None:
                        after = following.seqs[-1]
                if in_flight is not None:
                    published += await self._settle(in_flight)
                if following is None:
                    return published
                in_flight, following = following, None
        finally:
            for window in (in_flight, following):
                if window is not None and not window.closed:
                    await window.abandon()

    async def _open_window(self, after: int | None) -> _Window | None:
        """Read the next window of unpublished rows (seq > after) and send it; its transaction stays
        open until `_settle` marks it (on PostgreSQL it holds the rows' locks against other replicas)."""
        stack = contextlib.AsyncExitStack()
        session = await stack.enter_async_context(self.database.transaction())
        try:
            # Plain Core rows of the columns the relay sends: no ORM objects to build for a window.
            query = (
                sa_select(
                    col(OutboxEvent.seq),
                    col(OutboxEvent.event_id),
                    col(OutboxEvent.subject),
                    col(OutboxEvent.payload),
                    col(OutboxEvent.headers_json),
                )
                .where(col(OutboxEvent.published_at).is_(None))  # served by ix_outbox_event_unpublished
                .order_by(col(OutboxEvent.seq))
                .limit(self.batch_size)
            )
            if after is not None:
                query = query.where(col(OutboxEvent.seq) > after)
            if self.database.is_postgres:
                # Several replicas may relay at once; each takes rows the others have not locked.
                query = query.with_for_update(skip_locked=True)
            connection = await session.connection()
            rows = (await connection.execute(query)).all()
            if not rows:
                await stack.aclose()
                return None
            seqs: list[int] = []
            messages: list[OutgoingMessage] = []
            for seq, event_id, subject, payload, headers_json in rows:
                headers: dict[str, str] = json.loads(headers_json)
                seqs.append(seq)
                messages.append(
                    OutgoingMessage(
                        subject,
                        payload,
                        message_id=event_id,
                        headers=headers,
                        parent=propagate.extract(headers, getter=HEADER_GETTER),
                    )
                )
            window = _Window(stack, session, seqs, full=len(rows) == self.batch_size)
            try:
                window.sent = await self.bus.send_window(messages, ack_timeout=self.ack_timeout_seconds)
            except Exception as exc:  # nothing was sent (NATS is down)
                window.send_failure = exc
            else:
                window.send_failure = window.sent.send_error
            return window
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def _settle(self, window: _Window) -> int:
        """Wait for a window's acks, mark its acknowledged prefix and note the first failure; commit."""
        failure: str | None = None
        try:
            results: list[PubAck | Exception]
            if window.sent is None:
                assert window.send_failure is not None
                results = [window.send_failure]
            else:
                results = await window.sent.results()
            # Only the acknowledged prefix is marked: the rows from the first failure on are sent again
            # on the next pass, in order, and JetStream drops the copies of any that were stored.
            published = 0
            while published < len(results) and isinstance(results[published], PubAck):
                published += 1
            if published:
                await window.session.exec(mark_published(window.seqs[:published], utcnow()))
            if published < len(window.seqs):
                error = results[published]
                failure = f"{type(error).__name__}: {error}"[:500]
                await window.session.exec(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.seq) == window.seqs[published])
                    .values(attempts=OutboxEvent.attempts + 1, last_error=failure)
                )
        except BaseException as exc:  # cancelled, or the database failed: roll back, nothing is marked
            window.closed = True
            if window.sent is not None:
                window.sent.abandon()
            await window.stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        window.closed = True
        await window.stack.aclose()  # commits
        self.published_total += published
        if failure is not None:
            raise OutboxPublishError(failure)
        return published

    async def run(self) -> None:
        """Relay forever: publish on notify or every poll interval; back off while NATS is down."""
        backoff = self.poll_seconds
        while not self.stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            await self._refresh_backlog()
            if not self.bus.connected:
                backoff = min(backoff * 2, 5.0)  # the bus notifies us as soon as NATS is back
                continue
            try:
                if await self._held_by_a_slow_consumer():
                    backoff = self.lag_check_seconds
                    continue
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

    async def _refresh_backlog(self) -> None:
        """Count the waiting rows again, at most every `backlog_refresh_seconds`: a pass may run after every commit,
        and the limit this feeds is far above what half a second adds."""
        now = asyncio.get_running_loop().time()
        if now - self._backlog_counted_at < self.backlog_refresh_seconds:
            return
        self._backlog_counted_at = now
        with contextlib.suppress(Exception):  # the database may be away; the pass will say so
            self.backlog = await self.pending_count()

    async def _held_by_a_slow_consumer(self) -> bool:
        """Whether a durable consumer of the stream is further behind than `consumer_lag_limit` (asked of NATS at
        most every `lag_check_seconds`)."""
        if self.consumer_lag_limit <= 0:
            return False
        now = asyncio.get_running_loop().time()
        if now - self._lag_checked_at < self.lag_check_seconds:
            return self.held_by is not None
        self._lag_checked_at = now
        slowest = await self.bus.slowest_durable_consumer()
        was_held = self.held_by is not None
        self.held_by = slowest if slowest is not None and slowest[1] > self.consumer_lag_limit else None
        if self.held_by is not None and not was_held:
            log.warning(
                "outbox relay: holding publication while consumer %s has %d messages not yet delivered (limit %d)",
                *self.held_by,
                self.consumer_lag_limit,
            )
        elif was_held and self.held_by is None:
            log.info("outbox relay: the slow consumer caught up; publishing again")
        return self.held_by is not None


class OutboxPublishError(Exception):
    pass
