"""The NATS JetStream bus: connection with reconnect handling, idempotent stream and consumer
declarations, traced publishing and supervised pull consumers.

Trace context crosses NATS in W3C headers: the publisher injects inside a PRODUCER span, the consumer
extracts into a CONSUMER span (parented to the producer, plus a link; link-only when configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from meshkit.config import Component, MeshSettings
from meshkit.subjects import stream_name, stream_subjects

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
EVENT_TYPE_HEADER = "Greenmesh-Event-Type"
CONTENT_TYPE_HEADER = "Content-Type"
PROTOBUF_CONTENT_TYPE = "application/protobuf"

StateListener = Callable[[bool], None]
MessageHandler = Callable[[Msg], Awaitable[None]]
MAX_BATCH_LINKS = 128  # the SDK's default limit of links on a span
# Applies a whole fetched batch (in order) and acknowledges it: one transaction instead of one per message.
BatchHandler = Callable[[list[Msg]], Awaitable[None]]


def messaging_attributes(subject: str, message_id: str | None) -> dict[str, str]:
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject}
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


def producer_headers(headers: Mapping[str, str] | None, message_id: str, context: Context | None) -> dict[str, str]:
    """The headers sent with a message: the given ones with the trace context of `context` (which holds
    the PRODUCER span, so consumers become its children) instead of any stored one, and `Nats-Msg-Id`."""
    carrier: dict[str, str] = {k: v for k, v in (headers or {}).items() if k not in ("traceparent", "tracestate")}
    propagate.inject(carrier, context=context)
    carrier[MSG_ID_HEADER] = message_id
    return carrier


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message of a pipelined window (see `Bus.send_window`)."""

    subject: str
    payload: bytes
    message_id: str
    headers: Mapping[str, str] | None = None
    parent: Context | None = None


class NotSentError(Exception):
    """A message of a window that was never sent, because an earlier one of the window could not be sent."""


class AckTimeoutError(TimeoutError):
    """No publish acknowledgement arrived in time; the message may or may not be stored."""


class _AckWindow:
    """The outcomes of one sent window, filled in by the ack subscription as the acks arrive."""

    __slots__ = ("complete", "limit", "pending", "results")

    def __init__(self, size: int) -> None:
        self.results: list[api.PubAck | Exception | None] = [None] * size
        self.limit = size  # messages from here on were never sent
        self.pending = size
        self.complete = asyncio.Event()
        if size == 0:
            self.complete.set()

    def settle(self, index: int, outcome: api.PubAck | Exception) -> None:
        if 0 <= index < self.limit and self.results[index] is None:
            self.results[index] = outcome
            self.pending -= 1
            if self.pending == 0:
                self.complete.set()

    def stop_at(self, index: int) -> None:
        """Sending failed at `index`: that message and the later ones will get no ack."""
        self.pending -= sum(1 for outcome in self.results[index : self.limit] if outcome is None)
        self.limit = index
        if self.pending == 0:
            self.complete.set()


def _record_ack(span: Span, ack: api.PubAck) -> None:
    span.set_attributes({"messaging.nats.stream.sequence": ack.seq, "messaging.nats.duplicate": bool(ack.duplicate)})


class SentWindow:
    """A window sent by `Bus.send_window`; `results()` waits for its acks (until its deadline)."""

    def __init__(self, bus: Bus, window_id: int, size: int, ack_timeout: float) -> None:
        self.bus = bus
        self.window_id = window_id
        self.size = size
        self.ack_timeout = ack_timeout
        self.deadline = asyncio.get_running_loop().time() + ack_timeout
        self.acks = _AckWindow(size)
        self.spans: list[Span] = []
        self.send_error: Exception | None = None
        self.closed = False

    async def results(self) -> list[api.PubAck | Exception]:
        """One result per message, in order: its `PubAck` or the exception that failed it.

        The message that could not be sent gets its exception and every later one a `NotSentError`.
        A message whose ack failed or did not arrive before the deadline (`AckTimeoutError`) may be
        followed by messages that were stored: a caller that keeps order acts only on the acknowledged
        prefix and sends the rest again (`Nats-Msg-Id` de-duplicates).
        """
        try:
            async with asyncio.timeout_at(self.deadline):
                await self.acks.complete.wait()
        except TimeoutError:
            pass  # the missing acks are reported below
        except BaseException:
            self.abandon()
            raise
        self._close()
        results: list[api.PubAck | Exception] = []
        for index, span in enumerate(self.spans):
            outcome: api.PubAck | Exception
            settled = self.acks.results[index]
            if index == len(self.spans) - 1 and self.send_error is not None:
                outcome = self.send_error
            elif settled is None:
                outcome = AckTimeoutError(f"no publish acknowledgement within {self.ack_timeout}s")
            else:
                outcome = settled
            if isinstance(outcome, api.PubAck):
                _record_ack(span, outcome)
            else:
                span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
            span.end()
            results.append(outcome)
        if len(results) < self.size:
            reason = type(self.send_error).__name__ if self.send_error is not None else "window timed out"
            results.extend(
                NotSentError(f"not sent: an earlier message failed ({reason})") for _ in range(self.size - len(results))
            )
        return results

    def abandon(self) -> None:
        """Stop waiting for the acks; the messages may or may not be stored."""
        if not self.closed:
            self._close()
            for span in self.spans:
                span.set_status(Status(StatusCode.ERROR, "acknowledgement not awaited"))
                span.end()

    def _close(self) -> None:
        self.closed = True
        self.bus._ack_windows.pop(self.window_id, None)


@dataclass
class ConsumerSpec:
    """A durable pull consumer of one component's stream, or of another stream of the province (``stream``,
    declared by ``declare`` before each subscription, as a component's stream is by ``Bus.ensure_stream``)."""

    durable: str
    source: Component
    filter_subjects: list[str]
    handler: MessageHandler
    batch: int = 64
    stream: str | None = None
    declare: Callable[[JetStreamContext], Awaitable[None]] | None = None
    # When set, each fetched batch goes to it at once (under one CONSUMER span linked to the producers) instead
    # of message by message to ``handler``.
    batch_handler: BatchHandler | None = None


@dataclass
class Bus:
    settings: MeshSettings
    component: Component
    tracer: trace.Tracer
    listeners: list[StateListener] = field(default_factory=list)
    # Declare the component's own stream at connection (not the national view's: it publishes nothing).
    declares_own_stream: bool = True
    client: NatsClient | None = None
    _js: JetStreamContext | None = None
    _consumer_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False
    # send_window's acks: one wildcard inbox subscription, and the windows still waiting for acks.
    _ack_client: NatsClient | None = None
    _ack_inbox: str | None = None
    _ack_windows: dict[int, _AckWindow] = field(default_factory=dict)
    _window_counter: int = 0

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

    async def slowest_durable_consumer(self) -> tuple[str, int] | None:
        """The durable consumer of this component's stream with the most messages not yet delivered to it, and
        that number; None when the stream has none. Ephemeral consumers (a national hub sourcing the stream, a
        KV watch) are left out: a link that is down must not hold the province back."""
        infos = await self.js.consumers_info(stream_name(self.settings.province, self.component))
        durable = [(info.name, info.num_pending or 0) for info in infos if info.config.durable_name]
        return max(durable, key=lambda pair: pair[1], default=None)

    async def ensure_streams(self) -> None:
        # A service declares its own stream and every stream it consumes, so start-up order never matters.
        own = {self.component} if self.declares_own_stream else set()
        # A consumer of another stream (``ConsumerSpec.stream``) declares that stream itself (``declare``).
        sources = own | {spec.source for spec in self._consumer_specs if spec.stream is None}
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
            # The PRODUCER span is current here, so consumers become its children.
            carrier = producer_headers(headers, message_id, None)
            try:
                ack = await self.js.publish(subject, payload, headers=carrier)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            _record_ack(span, ack)
            return ack

    async def send_window(self, messages: Sequence[OutgoingMessage], *, ack_timeout: float = 5.0) -> SentWindow:
        """Send a window of messages pipelined: in order, on the one connection, without waiting for any
        ack, so the stream stores them in that order (and after any window sent before). The acks are
        collected by `SentWindow.results()`.

        Sending stops at the first message that cannot be sent (too large for the server, connection
        closed). Each message is sent inside its own PRODUCER span, a child of its `parent`, and carries
        that span's trace context, exactly as `publish` does; the span ends when its ack is collected.
        """
        if not self.connected:
            # Fail at once: publishes while disconnected would only wait for their ack timeout.
            raise nats.errors.ConnectionClosedError
        client = self.client
        assert client is not None
        if self._ack_inbox is None or self._ack_client is not client:
            # One wildcard subscription for the acks of every window, made once: the client keeps it
            # across reconnects. Each message's reply subject is <inbox>.<window>_<index>.
            inbox = client.new_inbox()
            await client.subscribe(f"{inbox}.*", cb=self._on_ack)
            self._ack_inbox, self._ack_client = inbox, client
        self._window_counter += 1
        window = SentWindow(self, self._window_counter, len(messages), ack_timeout)
        self._ack_windows[window.window_id] = window.acks
        reply_prefix = f"{self._ack_inbox}.{window.window_id}_"
        try:
            async with asyncio.timeout_at(window.deadline):
                # No await here yields unless the client's buffer is full, so the window leaves in a
                # few socket writes rather than one per message.
                for index, message in enumerate(messages):
                    span = self.tracer.start_span(
                        f"send {message.subject}",
                        context=message.parent,
                        kind=SpanKind.PRODUCER,
                        attributes=messaging_attributes(message.subject, message.message_id),
                    )
                    window.spans.append(span)
                    carrier = producer_headers(
                        message.headers, message.message_id, trace.set_span_in_context(span, message.parent)
                    )
                    try:
                        await client.publish(
                            message.subject, message.payload, reply=f"{reply_prefix}{index}", headers=carrier
                        )
                    except Exception as exc:
                        window.send_error = exc
                        window.acks.stop_at(index)
                        break
        except TimeoutError:
            pass  # the client's buffer stayed full: the rest is reported as not sent
        except BaseException:
            window.abandon()
            raise
        return window

    async def _on_ack(self, msg: Msg) -> None:
        """A JetStream publish acknowledgement (or error) for a message sent by `send_window`."""
        window_id, _, index = msg.subject.rpartition(".")[2].partition("_")
        window = self._ack_windows.get(int(window_id))
        if window is None:
            return  # a window that timed out already
        outcome: api.PubAck | Exception
        if msg.headers and msg.headers.get(api.Header.STATUS) == "503":
            outcome = nats.js.errors.NoStreamResponseError()
        else:
            try:
                response = json.loads(msg.data)
                if "error" in response:
                    outcome = nats.js.errors.APIError.from_error(response["error"])
                else:
                    outcome = api.PubAck(
                        stream=response["stream"],
                        seq=response["seq"],
                        domain=response.get("domain"),
                        duplicate=response.get("duplicate"),
                    )
            except (ValueError, KeyError, TypeError) as exc:
                outcome = exc
        window.settle(int(index), outcome)

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

    async def watch(self, subjects: Sequence[str], handler: MessageHandler) -> list[Subscription]:
        """Plain (core NATS) subscriptions for a cache that must hear of changes at once: every message
        published from now on, without durable state or acks. The client re-subscribes after a reconnect, but
        what was published meanwhile is missed, so a watcher must forget what it cached when the bus reports
        the connection lost (a listener). Each message is handled in a CONSUMER span continuing its producer."""

        async def deliver(message: Msg) -> None:
            headers = message.headers or {}
            with self.tracer.start_as_current_span(
                f"process {message.subject}",
                context=propagate.extract(headers),
                kind=SpanKind.CONSUMER,
                attributes=messaging_attributes(message.subject, headers.get(MSG_ID_HEADER)),
            ) as span:
                try:
                    await handler(message)
                except Exception as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    log.exception("watcher of %s failed on a message", message.subject)

        client = self.client
        if client is None:
            raise RuntimeError("the bus is not connected")
        return [await client.subscribe(subject, cb=deliver) for subject in subjects]

    async def _consume_forever(self, spec: ConsumerSpec) -> None:
        # Supervised: any failure (server restart, deleted consumer, lost stream) re-creates the
        # subscription, because a pull subscription does not resume by itself (nats.py#504).
        stream = spec.stream or stream_name(self.settings.province, spec.source)
        while not self._stopping:
            try:
                if not self.connected:
                    await asyncio.sleep(0.2)
                    continue
                if spec.declare is not None:
                    await spec.declare(self.js)
                else:
                    await self.ensure_stream(spec.source)
                await self.js.add_consumer(stream, config=self.consumer_config(spec))
                subscription = await self.js.pull_subscribe_bind(durable=spec.durable, stream=stream)
                try:
                    while not self._stopping:
                        try:
                            messages = await subscription.fetch(spec.batch, timeout=1.0)
                        except TimeoutError:
                            continue  # nothing waiting: fetch reports an empty batch as a timeout
                        if spec.batch_handler is not None:
                            await self._deliver_batch(spec, spec.batch_handler, messages)
                            continue
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

    async def _deliver_batch(self, spec: ConsumerSpec, handler: BatchHandler, messages: list[Msg]) -> None:
        links = []
        for message in messages[:MAX_BATCH_LINKS]:
            producer = trace.get_current_span(propagate.extract(message.headers or {})).get_span_context()
            if producer.is_valid:
                links.append(Link(producer))
        with self.tracer.start_as_current_span(
            f"process {spec.stream or spec.source.value} batch",
            context=Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(messages),
                "messaging.consumer.group.name": spec.durable,
            },
        ) as span:
            try:
                await handler(messages)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.record_exception(exc)
                log.exception("consumer %s failed on a batch of %d; will be redelivered", spec.durable, len(messages))
                for message in messages:
                    with contextlib.suppress(Exception):
                        await message.nak(delay=1.0)

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
