"""The national view (services/national): how fast it takes in the hub's flows stream, against raw inserts of the
same rows.

`national.projection`: events/s the national view applies from ``GREENMESH_NATIONAL_FLOWS`` into a fresh SQLite
database: the stream is filled first with the ``FlowEventRecorded`` events of whole battery lives in two provinces
(collected in one, shipped, received by a listed recycler, some in the other province, recycled), then the
national view's real runtime starts in this process and the clock runs until every event is stored. On the hub the
stream sources the provinces' streams; here it takes their subjects directly (the consumer reads it the same way).
Reference: SQLAlchemy Core executemany of the very rows the view wrote (read back afterwards: flow_event,
event_battery, battery, inbox_message) into a freshly migrated database, one transaction per 256 events (the
consumer's fetch). There is no target in an issue: the figure says how many provinces' peak load one national view
keeps up with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nats
from nats.js import api
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import Result, RunContext, bench_settings, log, ratio_of
from bench.flows import migrate_flows, raw_insert_rate
from greenmesh.common.v1 import event_pb2
from greenmesh.flows.v1 import flows_pb2 as pb
from meshkit.bus import CONTENT_TYPE_HEADER, EVENT_TYPE_HEADER, MSG_ID_HEADER, PROTOBUF_CONTENT_TYPE
from meshkit.config import Component
from meshkit.db import build_engine
from meshkit.localinfra import NatsServer
from meshkit.national import national_stream_name
from meshkit.server import ServiceRuntime
from meshkit.tables import InboxMessage
from services.flows.tables import BatteryRow, EventBatteryRow, FlowEventRow
from services.national.consumer import NATIONAL_CONSUMER
from services.national.service import DEFINITION as NATIONAL

BENCHES: tuple[str, ...] = ("national.projection",)
BATCH = 256  # the national consumer's fetch (services.national.consumer)
PRODUCER = "91320102MA1W2X3Y4K"
T0 = dt.datetime(2026, 10, 1, 1, 0, tzinfo=dt.UTC)
WRITTEN: tuple[Any, ...] = (FlowEventRow, EventBatteryRow, BatteryRow, InboxMessage)


def _table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


# ---- the stream's content -----------------------------------------------------------------------------------------


def _recorded(
    province: str,
    number: int,
    step: pb.BizStep.ValueType,
    hours: float,
    county: str,
    facility_type: str,
    *,
    mode: pb.CollectionMode.ValueType = pb.COLLECTION_MODE_UNSPECIFIED,
    listed: bool = False,
) -> pb.FlowEventRecorded:
    event = pb.FlowEvent(
        event_id=str(uuid.uuid4()),
        biz_step=step,
        facility_id=f"F-{county}-{facility_type}",
        batteries=[
            pb.BatteryRef(scheme=pb.IDENTIFIER_SCHEME_MANUFACTURER_SERIAL, namespace=PRODUCER, value=f"N{number:08d}")
        ],
        event_time_zone_offset="+08:00",
        collection_mode=mode,
        reporter_id="0190a000-0000-7000-8000-00000000aaaa",
        county_code=county,
        event_hash="ni:///sha-256;" + uuid.uuid4().hex + "?ver=CBV2.0",
    )
    event.event_time.FromDatetime(T0 + dt.timedelta(hours=hours))
    event.record_time.FromDatetime(T0 + dt.timedelta(hours=hours + 1))
    metadata = event_pb2.EventMetadata(
        event_id=str(uuid.uuid4()), event_type=pb.FlowEventRecorded.DESCRIPTOR.full_name, province_code=province
    )
    return pb.FlowEventRecorded(
        metadata=metadata,
        event=event,
        outcome=pb.EVENT_OUTCOME_ACCEPTED,
        facility_type=facility_type,
        battery_count=1,
        mass_kg=11.5,
        at_listed_recycler=listed,
    )


def stream_content(events: int) -> list[pb.FlowEventRecorded]:
    """Whole lives of ``events // 4`` batteries, in capture order per province: collected (32 or 44), shipped,
    received by a listed recycler (one in five in the other province) and recycled."""
    lives = []
    for number in range(events // 4):
        home = "32" if number % 2 == 0 else "44"
        county = "320102" if home == "32" else "440305"
        there = county if number % 5 else ("440305" if home == "32" else "320102")
        at = number * 0.01
        lives.append(
            [
                _recorded(home, number, pb.BIZ_STEP_COLLECTING, at, county, "RECYCLING_OUTLET",
                          mode=pb.COLLECTION_MODE_TRADE_IN),
                _recorded(home, number, pb.BIZ_STEP_SHIPPING, at + 24, county, "RECYCLING_OUTLET"),
                _recorded(there[:2], number, pb.BIZ_STEP_RECEIVING, at + 48, there, "RECYCLING_PLANT", listed=True),
                _recorded(there[:2], number, pb.BIZ_STEP_RECYCLING, at + 96, there, "RECYCLING_PLANT", listed=True),
            ]
        )  # fmt: skip
    # Interleaved as the hub's stream interleaves the provinces: step by step across the batteries.
    return [life[step] for step in range(4) for life in lives]


async def fill_stream(url: str, content: Sequence[pb.FlowEventRecorded]) -> None:
    connection = await nats.connect(url)
    try:
        js = connection.jetstream(timeout=30)
        await js.add_stream(
            api.StreamConfig(
                name=national_stream_name(Component.FLOWS),
                subjects=["greenmesh.*.flows.v1.>"],
                storage=api.StorageType.FILE,
            )
        )
        for start in range(0, len(content), 500):
            acks = [
                js.publish(
                    f"greenmesh.{recorded.metadata.province_code}.flows.v1.flow_event_recorded",
                    recorded.SerializeToString(),
                    headers={
                        MSG_ID_HEADER: recorded.metadata.event_id,
                        EVENT_TYPE_HEADER: pb.FlowEventRecorded.DESCRIPTOR.full_name,
                        CONTENT_TYPE_HEADER: PROTOBUF_CONTENT_TYPE,
                    },
                )
                for recorded in content[start : start + 500]
            ]
            await asyncio.gather(*acks)
    finally:
        await connection.close()


# ---- the measurement ----------------------------------------------------------------------------------------------


async def _count(engine: AsyncEngine, table: Table) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(table))).scalar_one())


async def apply_rate(root: Path, nats_url: str, database_url: str, events: int) -> float:
    """Events/s from the national view's start until its database holds every event of the stream."""
    runtime = ServiceRuntime(NATIONAL, bench_settings(root / "data", nats_url, database_url))
    watcher = build_engine(database_url)
    try:
        started = time.perf_counter()
        await runtime.start()
        while True:  # the database is the only place that says every event is in
            if await _count(watcher, _table(FlowEventRow)) >= events:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        await watcher.dispose()
        await runtime.stop()
    return events / elapsed


async def read_back(url: str) -> dict[str, list[dict[str, Any]]]:
    engine = build_engine(url)
    try:
        async with engine.connect() as connection:
            found = {}
            for model in WRITTEN:
                table = _table(model)
                order = table.primary_key.columns.values()
                result = await connection.execute(select(table).order_by(*order))
                found[table.name] = [dict(row._mapping) for row in result]
            return found
    finally:
        await engine.dispose()


def raw_plan(rows: dict[str, list[dict[str, Any]]]) -> list[list[tuple[Table, list[Any]]]]:
    """The rows in the consumer's batches of events: an event's links and inbox row with it, a battery with its
    first event."""
    events = sorted(rows["flow_event"], key=lambda row: row["seq"])
    batch_of = {row["seq"]: index // BATCH for index, row in enumerate(events)}
    batches = max(batch_of.values(), default=-1) + 1
    plan: list[dict[str, list[Any]]] = [{_table(model).name: [] for model in WRITTEN} for _ in range(batches)]
    first: dict[str, int] = {}
    for row in rows["event_battery"]:
        plan[batch_of[row["event_seq"]]]["event_battery"].append(row)
        first[row["battery_key"]] = min(first.get(row["battery_key"], row["event_seq"]), row["event_seq"])
    for row in events:
        plan[batch_of[row["seq"]]]["flow_event"].append(row)
    for row in rows["battery"]:
        plan[batch_of[first[row["battery_key"]]]]["battery"].append(row)
    inbox = [row for row in rows["inbox_message"] if row["consumer"] == NATIONAL_CONSUMER]
    for index, row in enumerate(inbox):
        plan[min(index // BATCH, batches - 1)]["inbox_message"].append(row)
    tables = [_table(model) for model in WRITTEN]
    return [[(table, batch[table.name]) for table in tables if batch[table.name]] for batch in plan]


async def run(ctx: RunContext) -> None:
    events = 1_000 if ctx.quick else 8_000
    content = stream_content(events)

    async def measure() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="greenmesh-bench-national-") as directory:
            root = Path(directory)
            server = NatsServer(store_dir=root / "nats").start()
            try:
                await fill_stream(server.url, content)
                view_url = f"sqlite+aiosqlite:///{root / 'national.db'}"
                await migrate_flows(view_url)
                rate = await apply_rate(root, server.url, view_url, len(content))
            finally:
                server.stop()
            rows = await read_back(view_url)
            raw = await raw_insert_rate(f"sqlite+aiosqlite:///{root / 'raw.db'}", raw_plan(rows), len(content))
            return rate, raw

    runs = await ctx.measure_repeatedly(
        "national view applying the hub's flows stream, and raw insert of the same rows",
        measure,
        lambda pair: f"view {pair[0]:,.1f} events/s, raw {pair[1]:,.1f} events/s, ratio {pair[0] / pair[1]:.3f}",
    )
    view = max(rate for rate, _ in runs)
    raw = max(raw for _, raw in runs)
    log(f"national.projection: best {view:,.1f} events/s against raw {raw:,.1f}")
    ctx.emit(
        Result(
            bench="national.projection",
            value=view,
            unit="events/s",
            reference=(
                f"raw Core executemany of the same rows ({len(content):,} FlowEventRecorded of 2 provinces; "
                f"flow_event, event_battery, battery, inbox_message), {BATCH} events per transaction, SQLite, "
                f"{raw:,.0f} events/s (same run)"
            ),
            ratio=ratio_of(view, raw),
        )
    )
