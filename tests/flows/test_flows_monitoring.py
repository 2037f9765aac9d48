"""Continuous monitoring in the running service: alerts raised from the stored flows, published on NATS,
listed and acknowledged by operators, and resolved when the condition clears."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from greenmesh.flows.v1 import flows_pb2 as fpb
from meshkit.config import Component
from meshkit.localinfra import NatsServer
from meshkit.subjects import event_subject
from tests.conftest import eventually
from tests.flows.conftest import CN, Flows, Network, event
from tests.registry.conftest import JIANGSU_REGULATOR, PLATFORM

T0 = dt.datetime(2026, 9, 1, 9, 0, tzinfo=CN)


@pytest.fixture
def flows_settings() -> dict[str, Any]:
    return {"flows_monitor_interval_seconds": 0.2, "flows_diversion_days": 7.0}


async def alerts_of(flows: Flows, kind: fpb.AlertKind.ValueType, status: fpb.AlertStatus.ValueType) -> list[Any]:
    reply = await flows.call("ListAlerts", fpb.ListAlertsRequest(kind=kind, status=status), PLATFORM)
    return list(reply.alerts)


async def test_a_shipment_never_received_raises_possible_diversion_until_it_arrives(
    flows: Flows, network: Network, nats_server: NatsServer
) -> None:
    n = network
    published: list[fpb.AlertRaised] = []
    client = await nats.connect(nats_server.url)

    async def on_alert(message: Msg) -> None:
        published.append(fpb.AlertRaised.FromString(message.data))

    subscription = await client.subscribe(event_subject("32", Component.FLOWS, fpb.AlertRaised), cb=on_alert)
    try:
        battery = n.serial()
        intake = event(fpb.BIZ_STEP_COLLECTING, n.outlet, [battery], T0, collection_mode=fpb.COLLECTION_MODE_DROP_OFF)
        shipped = event(
            fpb.BIZ_STEP_SHIPPING,
            n.outlet,
            [battery],
            T0 + dt.timedelta(days=1),
            destination_facility_id=n.storage.site,
        )
        for message in (intake, shipped):
            assert (await flows.report(message, n.outlet.caller)).outcome in (
                fpb.EVENT_OUTCOME_ACCEPTED,
                fpb.EVENT_OUTCOME_QUARANTINED,
            )

        async def diversion_open() -> bool:
            return len(await alerts_of(flows, fpb.ALERT_KIND_POSSIBLE_DIVERSION, fpb.ALERT_STATUS_OPEN)) == 1

        await eventually(diversion_open, timeout=20)
        (alert,) = await alerts_of(flows, fpb.ALERT_KIND_POSSIBLE_DIVERSION, fpb.ALERT_STATUS_OPEN)
        assert alert.facility_id == n.outlet.site and alert.county_code == "320102"
        assert alert.severity == fpb.SEVERITY_HIGH

        async def published_on_nats() -> bool:
            return any(a.alert.alert_id == alert.alert_id for a in published)

        await eventually(published_on_nats, timeout=20)
        await asyncio.sleep(0.6)  # a few more monitor passes raise nothing new
        assert len(await alerts_of(flows, fpb.ALERT_KIND_POSSIBLE_DIVERSION, fpb.ALERT_STATUS_UNSPECIFIED)) == 1

        acknowledged = await flows.call(
            "AcknowledgeAlert",
            fpb.AcknowledgeAlertRequest(alert_id=alert.alert_id, note="called the outlet"),
            JIANGSU_REGULATOR,
        )
        assert acknowledged.alert.status == fpb.ALERT_STATUS_ACKNOWLEDGED
        assert acknowledged.alert.acknowledged_by == JIANGSU_REGULATOR.participant_id

        received = event(
            fpb.BIZ_STEP_RECEIVING, n.storage, [battery], T0 + dt.timedelta(days=12), source_facility_id=n.outlet.site
        )
        await flows.report(received, n.storage.caller)

        async def resolved() -> bool:
            return len(await alerts_of(flows, fpb.ALERT_KIND_POSSIBLE_DIVERSION, fpb.ALERT_STATUS_RESOLVED)) == 1

        await eventually(resolved, timeout=20)
    finally:
        await subscription.unsubscribe()
        await client.close()


async def test_stock_above_the_limit_and_overdue_storage_raise_alerts(flows: Flows, network: Network) -> None:
    n = network
    # The outlet may hold 60 units for 30 days (tests/registry/conftest.py facility_message).
    pieces = [fpb.QuantityElement(product_class=n.model_id, quantity=61, unit=fpb.UNIT_OF_MEASURE_PIECES)]
    intake = event(
        fpb.BIZ_STEP_COLLECTING, n.outlet, [], T0, quantities=pieces, collection_mode=fpb.COLLECTION_MODE_DROP_OFF
    )
    assert (await flows.report(intake, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED
    battery = n.serial()
    held = event(fpb.BIZ_STEP_COLLECTING, n.outlet, [battery], T0, collection_mode=fpb.COLLECTION_MODE_DROP_OFF)
    assert (await flows.report(held, n.outlet.caller)).outcome == fpb.EVENT_OUTCOME_ACCEPTED

    async def both_open() -> bool:
        overstock = await alerts_of(flows, fpb.ALERT_KIND_OVERSTOCK, fpb.ALERT_STATUS_OPEN)
        overdue = await alerts_of(flows, fpb.ALERT_KIND_OVERDUE_STORAGE, fpb.ALERT_STATUS_OPEN)
        return len(overstock) == 1 and len(overdue) == 1

    await eventually(both_open, timeout=20)
    (overdue,) = await alerts_of(flows, fpb.ALERT_KIND_OVERDUE_STORAGE, fpb.ALERT_STATUS_OPEN)
    assert [b.value for b in overdue.batteries] == [battery.value]
