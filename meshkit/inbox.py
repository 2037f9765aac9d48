"""The inbox for idempotent consumers: the message id is recorded in the same transaction as the
message's effect, and the message is acknowledged only after that transaction commits. A redelivered
message finds its id already recorded and is acknowledged without being applied again."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from meshkit.bus import EVENT_TYPE_HEADER, MSG_ID_HEADER, BatchHandler, MessageHandler
from meshkit.db import Database
from meshkit.tables import InboxMessage, utcnow

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# An effect handler applies one event inside the inbox transaction; it must not commit.
EffectHandler = Callable[[AsyncSession, Msg], Awaitable[None]]


def decoded(kind: type[M], message: Msg) -> M | None:
    """The message's protobuf payload as ``kind``, or None (logged) when it does not decode: an effect skips it,
    and the inbox records it as handled, so a poison message never blocks the consumer."""
    try:
        return kind.FromString(message.data)
    except DecodeError:
        log.warning("%s on %s does not decode; ignored", kind.DESCRIPTOR.name, message.subject)
        return None


def message_id_of(message: Msg) -> str:
    headers = message.headers or {}
    if MSG_ID_HEADER in headers:
        return headers[MSG_ID_HEADER]
    # Messages published without an id (never by GreenMesh) fall back to their stream position.
    meta = message.metadata
    return f"{meta.stream}:{meta.sequence.stream}"


def idempotent_handler(
    database: Database,
    consumer: str,
    effects: Mapping[str, EffectHandler],
    *,
    on_applied: Callable[[], None] | None = None,
    transaction: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None,
) -> MessageHandler:
    """Build a bus handler that applies each event at most once per consumer.

    `effects` maps the event type (the payload's proto full name) to its effect; events of other types
    are recorded and acknowledged so they never block the consumer. `transaction` opens the transaction the
    inbox row and the effect share (default: `database.transaction`; e.g. one that also holds a writer's lock).
    """
    begin = transaction or database.transaction

    async def handle(message: Msg) -> None:
        message_id = message_id_of(message)
        event_type = (message.headers or {}).get(EVENT_TYPE_HEADER, "")
        try:
            async with begin() as session:
                seen = await session.exec(
                    select(col(InboxMessage.message_id)).where(
                        col(InboxMessage.consumer) == consumer, col(InboxMessage.message_id) == message_id
                    )
                )
                if seen.first() is None:
                    session.add(
                        InboxMessage(
                            consumer=consumer, message_id=message_id, subject=message.subject, received_at=utcnow()
                        )
                    )
                    effect = effects.get(event_type)
                    if effect is not None:
                        await effect(session, message)
                    await session.flush()
                else:
                    log.debug("consumer %s: %s already applied", consumer, message_id)
        except IntegrityError:
            # Another replica applied it concurrently: the unique key kept it to one effect.
            log.debug("consumer %s: %s applied concurrently", consumer, message_id)
        await message.ack_sync()
        if on_applied is not None:
            on_applied()

    return handle


# Applies the messages of a batch not applied before, in order, inside the batch's transaction; must not commit.
BatchEffect = Callable[[AsyncSession, list[Msg]], Awaitable[None]]


def idempotent_batch_handler(
    database: Database, consumer: str, apply: BatchEffect, fallback: MessageHandler
) -> BatchHandler:
    """Build a bus batch handler that applies each fetched batch in one transaction: the ids of its messages not
    yet in the inbox are recorded with one statement and those messages handed to ``apply`` (in order, a message
    repeated within the batch once); then every message is acknowledged. If another replica recorded one of
    them meanwhile (a unique violation), the batch is applied message by message through ``fallback`` (an
    :func:`idempotent_handler`), which acknowledges each itself."""

    async def handle(messages: list[Msg]) -> None:
        ids = [message_id_of(message) for message in messages]
        try:
            async with database.transaction() as session:
                seen: set[str] = set()
                for start in range(0, len(ids), 500):
                    found = await session.exec(
                        select(col(InboxMessage.message_id)).where(
                            col(InboxMessage.consumer) == consumer,
                            col(InboxMessage.message_id).in_(ids[start : start + 500]),
                        )
                    )
                    seen.update(found.all())
                fresh: list[Msg] = []
                rows = []
                now = utcnow()
                for message, message_id in zip(messages, ids, strict=True):
                    if message_id in seen:
                        continue
                    seen.add(message_id)
                    fresh.append(message)
                    rows.append(
                        {"consumer": consumer, "message_id": message_id, "subject": message.subject, "received_at": now}
                    )
                if rows:
                    await session.exec(insert(InboxMessage).values(rows))
                    await apply(session, fresh)
        except IntegrityError:
            log.debug("consumer %s: a batch overlapped another replica's; applying it message by message", consumer)
            for message in messages:
                await fallback(message)
            return
        for message in messages[:-1]:
            await message.ack()  # queued on the connection, sent in order before the last one's
        if messages:
            await messages[-1].ack_sync()

    return handle
