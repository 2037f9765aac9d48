"""The national view's one consumer: ``national--flows`` on the hub's ``GREENMESH_NATIONAL_FLOWS`` (which
``greenmesh national sync`` declares, sourcing every province's flows stream), taking the events the dispatch
statistics are made of, each applied once (services.national.projection). Each fetched batch (up to 256) is one
inbox transaction, with the batch's recorded events stored together: the hub carries every province's load, which
one transaction per event could not keep up with (bench/national.py)."""

from __future__ import annotations

import logging
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlmodel.ext.asyncio.session import AsyncSession

from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.bus import EVENT_TYPE_HEADER, ConsumerSpec
from meshkit.config import Component
from meshkit.inbox import decoded, idempotent_batch_handler, idempotent_handler
from meshkit.national import national_stream_name
from meshkit.server import ServiceRuntime
from meshkit.subjects import event_subject
from services.national import projection

log = logging.getLogger(__name__)

NATIONAL_CONSUMER = "national--flows"
EVENT_TYPES: tuple[Any, ...] = (pb.FlowEventRecorded, pb.ErrorDeclared, pb.AlertRaised, pb.AlertStatusChanged)


def subjects() -> list[str]:
    """The subjects of those events from every province (``greenmesh.*.flows.v1.<event>``)."""
    return [event_subject("*", Component.FLOWS, kind) for kind in EVENT_TYPES]


def province_of(subject: str) -> str:
    parts = subject.split(".")
    return parts[1] if len(parts) > 2 else ""


class NationalStreamMissing(RuntimeError):
    pass


async def require_national_stream(js: JetStreamContext) -> None:
    """The stream is the hub's (its sources name the provinces): wait for it rather than declare it."""
    name = national_stream_name(Component.FLOWS)
    try:
        await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        raise NationalStreamMissing(f"{name} is not declared on this NATS yet: run `greenmesh national sync`") from None


def national_consumer(runtime: ServiceRuntime) -> ConsumerSpec:
    async def on_recorded(session: AsyncSession, message: Msg) -> None:
        recorded = decoded(pb.FlowEventRecorded, message)
        if recorded is not None:
            province = recorded.metadata.province_code or province_of(message.subject)
            await projection.record_event(session, recorded, province)

    async def on_declared(session: AsyncSession, message: Msg) -> None:
        declared = decoded(pb.ErrorDeclared, message)
        if declared is not None:
            await projection.declare_error(session, declared)

    async def on_raised(session: AsyncSession, message: Msg) -> None:
        raised = decoded(pb.AlertRaised, message)
        if raised is not None:
            await projection.record_alert(session, raised.alert, raised=True)

    async def on_status(session: AsyncSession, message: Msg) -> None:
        changed = decoded(pb.AlertStatusChanged, message)
        if changed is not None:
            await projection.record_alert(session, changed.alert, raised=False)

    effects = {
        pb.FlowEventRecorded.DESCRIPTOR.full_name: on_recorded,
        pb.ErrorDeclared.DESCRIPTOR.full_name: on_declared,
        pb.AlertRaised.DESCRIPTOR.full_name: on_raised,
        pb.AlertStatusChanged.DESCRIPTOR.full_name: on_status,
    }

    async def apply_batch(session: AsyncSession, messages: list[Msg]) -> None:
        """In order; each run of FlowEventRecorded (nearly everything) is stored with a few statements."""
        run: list[tuple[pb.FlowEventRecorded, str]] = []
        for message in messages:
            event_type = (message.headers or {}).get(EVENT_TYPE_HEADER, "")
            if event_type == pb.FlowEventRecorded.DESCRIPTOR.full_name:
                recorded = decoded(pb.FlowEventRecorded, message)
                if recorded is not None:
                    run.append((recorded, recorded.metadata.province_code or province_of(message.subject)))
                continue
            await projection.record_events(session, run)
            run = []
            effect = effects.get(event_type)
            if effect is not None:
                await effect(session, message)
        await projection.record_events(session, run)

    one_by_one = idempotent_handler(runtime.database, NATIONAL_CONSUMER, effects)
    return ConsumerSpec(
        durable=NATIONAL_CONSUMER,
        source=Component.FLOWS,
        filter_subjects=subjects(),
        handler=one_by_one,
        batch=256,
        stream=national_stream_name(Component.FLOWS),
        declare=require_national_stream,
        batch_handler=idempotent_batch_handler(runtime.database, NATIONAL_CONSUMER, apply_batch, one_by_one),
    )
