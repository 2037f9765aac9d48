"""Server bootstrap shared by every service: one `ServiceRuntime` per process (or several in a test).

Start: database (migrations) -> gRPC server on grpc.aio with interceptors, health (NOT_SERVING) and
reflection -> NATS (retrying) -> outbox relay and consumers -> SERVING once database and NATS are up.
Stop (SIGTERM/SIGINT): NOT_SERVING -> stop accepting and finish RPCs within the grace period ->
relay a last time -> stop consumers and drain NATS -> close the database -> flush spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.trace import SpanProcessor

from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc
from meshkit.bus import Bus, ConsumerSpec
from meshkit.caller import CallerSignatureInterceptor, signing_key
from meshkit.config import SERVICES, Component, MeshSettings
from meshkit.db import Database
from meshkit.decoding import DecodingInterceptor
from meshkit.errors import ErrorMappingInterceptor, ResourceExhausted
from meshkit.grpc_options import SERVER_OPTIONS
from meshkit.inbox import EffectHandler, idempotent_handler
from meshkit.migrate import migrate
from meshkit.outbox import OutboxRelay
from meshkit.probe import MeshProbeServicer, record_probe_receipt
from meshkit.readiness import Readiness
from meshkit.subjects import event_subject
from meshkit.telemetry import Telemetry, instrument_engine, setup_telemetry

log = logging.getLogger(__name__)

# How long a client refused for the outbox backlog is told to wait (RetryInfo; Retry-After through the gateway).
OUTBOX_BACKLOG_RETRY_SECONDS = 5.0


async def cancel_and_wait(tasks: Sequence[asyncio.Task[None]], timeout: float) -> None:
    """Cancel background tasks and wait for them, but never forever: a task that swallowed its
    cancellation is reported rather than allowed to hang shutdown."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        log.error("task %s did not stop within %.0fs of being cancelled", task.get_name(), timeout)


@dataclass(frozen=True)
class Subscription:
    """This service applies `effect` to every `message_type` event published by `source`."""

    source: Component
    message_type: type[Message]
    effect: EffectHandler


Registrar = Callable[[grpc.aio.Server, "ServiceRuntime"], Sequence[str]]


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service adds to the shared runtime."""

    component: Component
    # Adds the service's servicers; returns the full names of the gRPC services it added.
    register: Registrar
    # The service's own Alembic versions directory (its branch depends on meshkit's).
    migrations: Path | None = None
    subscriptions: Callable[[ServiceRuntime], Sequence[Subscription]] = lambda _runtime: ()
    # The gateway has no database and, for now, no bus; every domain service has both.
    uses_database: bool = True
    uses_bus: bool = True
    # Work before the server starts (loading reference data); runs after migrations.
    prepare: Callable[[ServiceRuntime], Awaitable[None]] | None = None
    # Long-running tasks beside the gRPC server (the gateway's HTTP server); cancelled on stop.
    background: Callable[[ServiceRuntime], Sequence[Coroutine[None, None, None]]] = lambda _runtime: ()
    # Accept a caller identity only when signed with the mesh's key (meshkit/caller.py). The gateway, which
    # authenticates API keys itself and signs what it forwards, is the one that does not.
    verifies_caller: bool = True
    # Publishes on its province's stream through the outbox (declared at start, probed by `greenmesh status
    # --probe`). The national view does not: it only reads the hub's streams, and a province stream declared on
    # the hub would capture what the provinces publish over their leaf connections.
    publishes: bool = True


def probe_subscriptions(component: Component) -> list[Subscription]:
    return [
        Subscription(source=other, message_type=probe_pb2.ProbeEmitted, effect=record_probe_receipt)
        for other in SERVICES
        if other is not component
    ]


def build_consumers(runtime: ServiceRuntime, subscriptions: Sequence[Subscription]) -> list[ConsumerSpec]:
    """One durable consumer per source stream, filtering exactly the event subjects it handles."""
    by_source: dict[Component, list[Subscription]] = defaultdict(list)
    for subscription in subscriptions:
        by_source[subscription.source].append(subscription)
    specs = []
    for source, items in sorted(by_source.items()):
        durable = f"{runtime.component.value}--{source.value}"
        effects = {item.message_type.DESCRIPTOR.full_name: item.effect for item in items}
        subjects = sorted({event_subject(runtime.settings.province, source, item.message_type) for item in items})
        specs.append(
            ConsumerSpec(
                durable=durable,
                source=source,
                filter_subjects=subjects,
                handler=idempotent_handler(runtime.database, durable, effects),
            )
        )
    return specs


@dataclass
class ServiceRuntime:
    definition: ServiceDefinition
    settings: MeshSettings
    span_processors: Sequence[SpanProcessor] = ()
    install_global_telemetry: bool = False
    telemetry: Telemetry = field(init=False)
    database: Database = field(init=False)
    bus: Bus = field(init=False)
    relay: OutboxRelay = field(init=False)
    health: HealthServicer = field(init=False)
    readiness: Readiness = field(init=False)
    server: grpc.aio.Server = field(init=False)
    port: int = 0
    # Per-process objects a component keeps beside the runtime (the gateway's HTTP server, say).
    state: dict[str, object] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def component(self) -> Component:
        return self.definition.component

    async def start(self) -> int:
        settings = self.settings
        definition = self.definition
        self.telemetry = setup_telemetry(
            self.component.value,
            province=settings.province,
            data_dir=settings.data_dir,
            processors=self.span_processors,
            install_global=self.install_global_telemetry,
        )
        if definition.uses_database:
            self.database = Database(settings.database_url_for(self.component))
            for engine in self.database.engines:
                instrument_engine(engine, self.telemetry)
            if settings.migrate_on_start:
                await migrate(self.database, definition.migrations)
        if definition.uses_bus:
            self.bus = Bus(
                settings=settings,
                component=self.component,
                tracer=self.telemetry.tracer("meshkit.bus"),
                declares_own_stream=definition.publishes,
            )
            self.relay = OutboxRelay(
                self.database,
                self.bus,
                batch_size=settings.outbox_batch_size,
                poll_seconds=settings.outbox_poll_seconds,
                consumer_lag_limit=settings.consumer_lag_limit,
            )

        if definition.prepare is not None:
            await definition.prepare(self)

        interceptors: list[grpc.aio.ServerInterceptor] = [
            # Outermost first: the span sees the final status the error mapping produced.
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=self.telemetry.provider, filter_=filters.negate(filters.health_check())
            ),
        ]
        if definition.verifies_caller:
            # A forged or stale identity is refused before the handler (and the error mapping) runs.
            interceptors.append(CallerSignatureInterceptor(signing_key(settings)))
        interceptors.append(ErrorMappingInterceptor())
        # Innermost: a request that is not its message is INVALID_ARGUMENT (through the error mapping).
        interceptors.append(DecodingInterceptor())
        self.server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        service_names = list(definition.register(self.server, self))
        if definition.uses_bus and definition.uses_database and definition.publishes:
            probe_pb2_grpc.add_MeshProbeServiceServicer_to_server(MeshProbeServicer(self), self.server)
            service_names.append(probe_pb2.DESCRIPTOR.services_by_name["MeshProbeService"].full_name)
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
                self.server,
            )
        self.readiness = Readiness(
            self.health, service_names, needs_database=definition.uses_database, needs_nats=definition.uses_bus
        )
        if definition.uses_bus:
            self.bus.listeners.append(self.readiness.set_nats)
            # Back from an outage: publish what the outbox gathered now rather than after the back-off.
            self.bus.listeners.append(lambda up: self.relay.notify() if up else None)
            probes = probe_subscriptions(self.component) if definition.publishes else []
            subscriptions = [*definition.subscriptions(self), *probes]
            for spec in build_consumers(self, subscriptions):
                self.bus.add_consumer(spec)

        address = f"{settings.grpc_host}:{settings.grpc_port_for(self.component)}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await self.server.start()
        database = self.database if definition.uses_database else None
        self._tasks.append(asyncio.create_task(self.readiness.run(database, settings.db_ping_seconds)))
        if definition.uses_bus:
            self._tasks.append(asyncio.create_task(self._connect_bus()))
        for coroutine in definition.background(self):
            self._tasks.append(asyncio.create_task(coroutine))
        log.info("%s listening on %s:%d", self.component.value, settings.grpc_host, self.port)
        return self.port

    def refuse_when_backlogged(self) -> None:
        """Called first by calls that add events: while more outbox rows than `outbox_backlog_limit` wait to be
        published (NATS away, or the relay held by a slow consumer), they answer RESOURCE_EXHAUSTED (reason
        OUTBOX_BACKLOG, with a RetryInfo) and store nothing, so back-pressure reaches the client."""
        limit = self.settings.outbox_backlog_limit
        if limit and self.definition.uses_bus and self.relay.backlog > limit:
            raise ResourceExhausted(
                f"{self.relay.backlog:,} events wait to be published, more than this service holds back "
                f"({limit:,}); nothing was stored: retry later",
                reason="OUTBOX_BACKLOG",
                retry_after_seconds=OUTBOX_BACKLOG_RETRY_SECONDS,
            )

    async def _connect_bus(self) -> None:
        await self.bus.connect()
        self.bus.start_consumers()
        if self.definition.publishes:
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.readiness.shutdown()
        await self.server.stop(self.settings.shutdown_grace_seconds)
        if self.definition.uses_bus:
            self.relay.stopping = True
            await self.bus.stop_consumers()
        await cancel_and_wait(self._tasks, timeout=5.0)
        if self.definition.uses_bus:
            if self.definition.publishes and self.bus.connected:
                # Events committed by the last RPCs go out now rather than at the next start.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.relay.publish_pending(), timeout=5)
            await self.bus.close()
        if self.definition.uses_database:
            await self.database.dispose()
        self.telemetry.shutdown()
        log.info("%s stopped", self.component.value)

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        settle_heap()
        await stop.wait()
        log.info("%s: shutdown requested", self.component.value)
        await self.stop()


def settle_heap() -> None:
    """Once a service process has started: collect, then move every object alive now (modules, descriptors,
    the ORM's metadata, caches) out of the collector's sight. A full collection otherwise walks those hundreds of
    thousands of objects each time it runs, a pause of tens of milliseconds in whatever request is in flight.
    For the one runtime of a process (`run_until_signal`), not for tests that start many in one process."""
    gc.collect()
    gc.freeze()
