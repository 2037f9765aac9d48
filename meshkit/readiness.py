"""Readiness: a service is SERVING only while its database and NATS are both reachable, and
NOT_SERVING from the moment shutdown begins. Published through the standard grpc.health.v1 service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from meshkit.db import Database

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Readiness:
    health: HealthServicer
    service_names: list[str]
    needs_database: bool = True
    needs_nats: bool = True
    database_up: bool = False
    nats_up: bool = False
    shutting_down: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _published: bool | None = None

    @property
    def ready(self) -> bool:
        return (
            not self.shutting_down
            and (self.database_up or not self.needs_database)
            and (self.nats_up or not self.needs_nats)
        )

    def set_nats(self, up: bool) -> None:
        if up != self.nats_up:
            self.nats_up = up
            self._changed.set()

    def set_database(self, up: bool) -> None:
        # Only a change wakes `run`: setting the same value again (each ping does) must not, or `run` would
        # ping the database in a busy loop instead of every `ping_seconds`.
        if up != self.database_up:
            self.database_up = up
            self._changed.set()

    async def publish(self) -> None:
        ready = self.ready
        if ready == self._published or self.shutting_down:
            return
        status = SERVING if ready else NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)
        if self._published is not None or not ready:
            log.info(
                "health %s (database %s, NATS %s)",
                "SERVING" if ready else "NOT_SERVING",
                "up" if self.database_up else "down",
                "up" if self.nats_up else "down",
            )
        else:
            log.info("health SERVING")
        self._published = ready

    async def run(self, database: Database | None, ping_seconds: float) -> None:
        """Watch the database (by pinging) and publish every change of readiness."""
        await self.publish()
        while not self.shutting_down:
            if database is not None:
                self.set_database(await database.ping(timeout=min(ping_seconds, 2.0)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=ping_seconds)
            self._changed.clear()
            await self.publish()

    async def shutdown(self) -> None:
        self.shutting_down = True
        await self.health.enter_graceful_shutdown()
