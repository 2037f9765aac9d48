"""The NATS JetStream bus: connection with reconnect handling, idempotent stream and consumer
declarations, traced publishing and supervised pull consumers.

Trace context crosses NATS in W3C headers: the publisher injects inside a PRODUCER span, the consumer
extracts into a CONSUMER span (parented to the producer, plus a link; link-only when configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from meshkit.config import Component, MeshSettings
from meshkit.subjects import stream_name, stream_subjects

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_TYPE_HEADER = "Greenmesh-Event-Type"
CONTENT_TYPE_HEADER = "Content-Type"
PROTOBUF_CONTENT_TYPE = "application/protobuf"

StateListener = Callable[[bool], None]
MessageHandler = Callable[[Msg], Awaitable[None]]


def messaging_attributes(subject: str, message_id: str | None) -> dict[str, str]:
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject}
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


@dataclass
class ConsumerSpec:
    """A durable pull consumer of one component's stream."""

    durable: str
    source: Component
    filter_subjects: list[str]
    handler: MessageHandler
    batch: int = 64


@dataclass
class Bus:
    settings: MeshSettings
    component: Component
    tracer: trace.Tracer
    listeners: list[StateListener] = field(default_factory=list)
    client: NatsClient | None = None
    _js: JetStreamContext | None = None
    _consumer_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    # -- connection -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the bus is not connected")
        return self._js

    def _notify(self, up: bool) -> None:
        for listener in self.listeners:
            listener(up)

    async def connect(self) -> None:
        """Connect, retrying until NATS answers; reconnects afterwards are handled by the client."""

        async def disconnected() -> None:
            if not self._stopping:
                log.warning("NATS connection lost; reconnecting")
            self._notify(False)

        async def reconnected() -> None:
            log.info("NATS connection restored")
            # A server that lost its store (a fresh pod) must get its streams back before we publish.
            try:
                await self.ensure_streams()
            except Exception:
                log.exception("re-declaring streams after reconnect failed")
            self._notify(True)

        async def error(exc: Exception) -> None:
            log.debug("NATS client error: %s", exc)

        servers = [url.strip() for url in self.settings.nats_url.split(",") if url.strip()]
        delay = self.settings.nats_reconnect_wait_seconds
        while True:
            try:
                self.client = await nats.connect(
                    servers=servers,
                    name=f"greenmesh-{self.component.value}-{self.settings.province}",
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=delay,
                    connect_timeout=2,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
                break
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                log.warning("NATS at %s not reachable (%s); retrying", self.settings.nats_url, exc)
                await asyncio.sleep(delay)
        self._js = self.client.jetstream(timeout=5)
        await self.ensure_streams()
        self._notify(True)

    async def close(self) -> None:
        """Stop consumers, then drain: in-flight messages finish and pending publishes flush."""
        self._stopping = True
        await self.stop_consumers()
        if self.client is not None and not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.drain(), timeout=5)
            except Exception:
                # NATS is already gone (or draining timed out): close without flushing.
                with contextlib.suppress(Exception):
                    await self.client.close()

    # -- streams --------------------------------------------------------------------------------

    def stream_config(self, source: Component) -> api.StreamConfig:
        return api.StreamConfig(
            name=stream_name(self.settings.province, source),
            subjects=stream_subjects(self.settings.province, source),
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            num_replicas=self.settings.stream_replicas,
            max_age=self.settings.stream_max_age_days * 86400,
            duplicate_window=self.settings.stream_duplicate_window_seconds,
        )

    async def ensure_stream(self, source: Component) -> None:
        """Create the stream, or update it to the declared config; safe to call from any service."""
        config = self.stream_config(source)
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.update_stream(config)

    async def ensure_streams(self) -> None:
        # A service declares its own stream and every stream it consumes, so start-up order never matters.
        sources = {self.component} | {spec.source for spec in self._consumer_specs}
        for source in sorted(sources):
            if source is not Component.GATEWAY:
                await self.ensure_stream(source)

    async def key_value(self, bucket: str) -> KeyValue:
        """A JetStream key-value bucket, created (file storage, one revision kept) when missing."""
        try:
            return await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(
                api.KeyValueConfig(
                    bucket=bucket, history=1, storage=api.StorageType.FILE, replicas=self.settings.stream_replicas
                )
            )

    # -- publishing -----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        message_id: str,
        headers: Mapping[str, str] | None = None,
        parent: Context | None = None,
    ) -> api.PubAck:
        """Publish inside a PRODUCER span (a child of `parent`, the context stored with the outbox row)."""
        if not self.connected:
            # Fail at once: a publish while disconnected would only wait for its ack timeout.
            raise nats.errors.ConnectionClosedError
        with self.tracer.start_as_current_span(
            f"send {subject}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=messaging_attributes(subject, message_id),
        ) as span:
            carrier: dict[str, str] = {
                k: v for k, v in (headers or {}).items() if k not in ("traceparent", "tracestate")
            }
            propagate.inject(carrier)  # the PRODUCER span is current here, so consumers become its children
            carrier[MSG_ID_HEADER] = message_id
            try:
                ack = await self.js.publish(subject, payload, headers=carrier)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute("messaging.nats.stream.sequence", ack.seq)
            span.set_attribute("messaging.nats.duplicate", bool(ack.duplicate))
            return ack

    # -- consuming ------------------------------------------------------------------------------

    _consumer_specs: list[ConsumerSpec] = field(default_factory=list)

    def add_consumer(self, spec: ConsumerSpec) -> None:
        self._consumer_specs.append(spec)

    def consumer_config(self, spec: ConsumerSpec) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.settings.consumer_ack_wait_seconds,
            max_deliver=self.settings.consumer_max_deliver,
            max_ack_pending=1000,
            filter_subjects=spec.filter_subjects,
        )

    def start_consumers(self) -> None:
        for spec in self._consumer_specs:
            self._consumer_tasks.append(
                asyncio.create_task(self._consume_forever(spec), name=f"consumer:{spec.durable}")
            )

    async def stop_consumers(self) -> None:
        self._stopping = True
        for task in self._consumer_tasks:
            task.cancel()
        await asyncio.gather(*self._consumer_tasks, return_exceptions=True)
        self._consumer_tasks.clear()

    async def _consume_forever(self, spec: ConsumerSpec) -> None:
        # Supervised: any failure (server restart, deleted consumer, lost stream) re-creates the
        # subscription, because a pull subscription does not resume by itself (nats.py#504).
        stream = stream_name(self.settings.province, spec.source)
        while not self._stopping:
            try:
                if not self.connected:
                    await asyncio.sleep(0.2)
                    continue
                await self.ensure_stream(spec.source)
                await self.js.add_consumer(stream, config=self.consumer_config(spec))
                subscription = await self.js.pull_subscribe_bind(durable=spec.durable, stream=stream)
                try:
                    while not self._stopping:
                        try:
                            messages = await subscription.fetch(spec.batch, timeout=1.0)
                        except TimeoutError:
                            continue  # nothing waiting: fetch reports an empty batch as a timeout
                        for message in messages:
                            await self._deliver(spec, message)
                finally:
                    with contextlib.suppress(Exception):
                        await subscription.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._stopping:
                    log.warning("consumer %s interrupted (%s); re-subscribing", spec.durable, exc)
                await asyncio.sleep(0.5)

    async def _deliver(self, spec: ConsumerSpec, message: Msg) -> None:
        headers = message.headers or {}
        producer_context = propagate.extract(headers)
        producer_span = trace.get_current_span(producer_context).get_span_context()
        links = [Link(producer_span)] if producer_span.is_valid else []
        parent = Context() if self.settings.trace_consumer_link_only else producer_context
        with self.tracer.start_as_current_span(
            f"process {message.subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                **messaging_attributes(message.subject, headers.get(MSG_ID_HEADER)),
                "messaging.consumer.group.name": spec.durable,
            },
        ) as span:
            try:
                await spec.handler(message)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.record_exception(exc)
                log.exception("consumer %s failed on %s; will be redelivered", spec.durable, message.subject)
                with contextlib.suppress(Exception):
                    await message.nak(delay=1.0)
