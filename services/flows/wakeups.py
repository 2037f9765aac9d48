"""Waking the event subscriptions (SubscribeEvents) when events are recorded.

A replica's own captures wake its streams at once. Events recorded by the province's other replicas arrive as
their FlowEventRecorded messages on NATS: while at least one stream is open here, this replica listens to
that subject (a plain subscription: no durable state, each message handled in a CONSUMER span that continues
the reporter's trace) and wakes its streams. With no stream open nothing is subscribed, so heavy reporting
costs nothing here. Without NATS the streams still poll the database every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meshkit.bus import Bus

log = logging.getLogger(__name__)


@dataclass
class EventWakeups:
    # The bus when it is connected (None otherwise); the subject of FlowEventRecorded.
    bus: Callable[[], Bus | None]
    subject: str
    condition: asyncio.Condition = field(default_factory=asyncio.Condition)
    _listeners: int = 0
    _subscriptions: list[Subscription] = field(default_factory=list)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    heard: int = 0  # FlowEventRecorded messages received while listening (any replica's, this one's too)

    async def notify(self) -> None:
        async with self.condition:
            self.condition.notify_all()

    async def wait(self, timeout: float) -> None:
        async with self.condition:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.condition.wait()

    async def _recorded(self, _message: Msg) -> None:
        self.heard += 1
        await self.notify()

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Held by each open stream: the first subscribes to the recorded events, the last unsubscribes."""
        async with self._lock:
            self._listeners += 1
            bus = self.bus()
            if self._listeners == 1 and bus is not None and not self._subscriptions:
                try:
                    self._subscriptions = await bus.watch([self.subject], self._recorded)
                except Exception as exc:  # NATS went away meanwhile: the stream polls instead
                    log.warning("event subscription falls back to polling: %s", exc)
        try:
            yield
        finally:
            async with self._lock:
                self._listeners -= 1
                if self._listeners == 0:
                    subscriptions, self._subscriptions = self._subscriptions, []
                    for subscription in subscriptions:
                        with contextlib.suppress(Exception):
                            await subscription.unsubscribe()
