"""`greenmesh loadgen`, part 3: the self-check, and the mesh's processes.

Every acknowledged event (ACCEPTED, QUARANTINED, or DUPLICATE when an earlier attempt had failed in transit) must
be found exactly once

- in the store: `QueryEvents` through the gateway as the platform operator, every page of the events recorded
  since the load began (a keyset scan: one call per 500 events, whatever the ledger's size), and
- in the stream `GREENMESH_<province>_FLOWS`: an ordered (ephemeral, unacknowledged) consumer of the
  `FlowEventRecorded` subject from the load's start, read until every acknowledged event has been seen and the
  consumer has caught up, or until the outbox relay has had `settle_timeout` seconds to publish.

Each sighting is counted in the ledger, so `lost` (acknowledged, missing in either place) and `duplicated` (seen
more than once in either place) are SQL counts. Events that were refused and yet show up are `phantom`. Meter
readings are checked by count: each meter was made for this run, so `ListReadings` must list exactly the readings
the service acknowledged.

The mesh's processes (`greenmesh up`'s children: nats-server and the four components) are sampled with psutil for
their resident memory, open file descriptors, TCP connections and threads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from greenmesh.energy.v1 import energy_pb2 as epb
from greenmesh.flows.v1 import flows_pb2 as fpb
from greenmesh_cli.loadgen_network import Front, MeterLine
from greenmesh_cli.loadgen_traffic import Ledger

EVENT_TYPE = fpb.FlowEventRecorded.DESCRIPTOR.full_name
PAGE_SIZE = 500


@dataclass
class Sightings:
    scanned: int = 0  # events (store) or messages (stream) read
    found: int = 0  # acknowledged events seen at least once
    seconds: float = 0.0
    caught_up: bool = True
    note: str = ""
    failure: str = ""  # why the check could not read everything


async def check_store(front: Front, platform_key: str, since: dt.datetime, ledger: Ledger) -> Sightings:
    """Page through every event recorded since `since`, as the platform operator."""
    import grpc

    from greenmesh_cli.loadgen_network import describe

    started = time.monotonic()
    frm = Timestamp()
    frm.FromDatetime(since)
    result = Sightings()
    token = ""
    try:
        while True:
            reply = await front.call(
                front.flows.QueryEvents,
                fpb.QueryEventsRequest(page_size=PAGE_SIZE, page_token=token, record_time_from=frm),
                platform_key,
            )
            ids = [event.event_id for event in reply.events]
            result.scanned += len(ids)
            result.found += ledger.mark("store_n", ids)
            token = reply.next_page_token
            if not token:
                break
    except grpc.aio.AioRpcError as error:
        result.failure = f"QueryEvents failed after {result.scanned:,} events: {describe(error)}"
    result.seconds = time.monotonic() - started
    return result


async def check_stream(
    nats_url: str,
    province: str,
    since: dt.datetime,
    ledger: Ledger,
    acknowledged: int,
    settle_timeout: float,
) -> Sightings:
    """Read the flows stream's FlowEventRecorded messages from `since` until every acknowledged event is seen and
    nothing is pending, or `settle_timeout` seconds pass without that."""
    import nats
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from meshkit.subjects import event_subject, stream_name

    started = time.monotonic()
    result = Sightings()
    try:
        client = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3, allow_reconnect=True)
    except Exception as error:  # nats-py raises its own errors and OSError
        result.failure = f"no NATS at {nats_url}: {error!r}"
        return result
    try:
        js = client.jetstream()
        subscription = await js.subscribe(
            event_subject(province, "flows", fpb.FlowEventRecorded),
            stream=stream_name(province, "flows"),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            config=ConsumerConfig(opt_start_time=since),
        )
        ids: list[str] = []
        pending = 1
        deadline = time.monotonic() + settle_timeout

        def flush() -> None:
            result.found += ledger.mark("stream_n", ids)
            ids.clear()

        while True:
            try:
                message = await subscription.next_msg(timeout=1.0)
            except NatsTimeout:
                flush()
                pending = 0
                if result.found >= acknowledged or time.monotonic() > deadline:
                    break
                continue
            result.scanned += 1
            pending = message.metadata.num_pending
            if (message.headers or {}).get("Greenmesh-Event-Type", EVENT_TYPE) == EVENT_TYPE:
                recorded = fpb.FlowEventRecorded.FromString(message.data)
                ids.append(recorded.event.event_id)
            if len(ids) >= 2000 or pending == 0:
                flush()
                if pending == 0 and result.found >= acknowledged:
                    break
                if time.monotonic() > deadline and pending == 0:
                    break
        flush()
        result.caught_up = pending == 0
        await subscription.unsubscribe()
    except Exception as error:  # the stream missing, NATS gone: the check is incomplete, not the run broken
        result.failure = f"reading the stream failed after {result.scanned:,} messages: {error!r}"
    finally:
        await client.close()
    result.seconds = time.monotonic() - started
    if result.found < acknowledged:
        result.note = f"waited {settle_timeout:g} s for the outbox relay"
    return result


async def check_readings(front: Front, meters: Sequence[MeterLine]) -> dict[str, Any]:
    """Each meter's stored readings, counted with ListReadings as its operator, against those acknowledged."""
    import grpc

    from greenmesh_cli.loadgen_network import describe

    found = missing = extra = 0
    failure = ""
    for meter in meters:
        token = ""
        count = 0
        try:
            while True:
                reply = await front.call(
                    front.energy.ListReadings,
                    epb.ListReadingsRequest(meter_id=meter.meter_id, page_size=PAGE_SIZE, page_token=token),
                    meter.operator.api_key,
                )
                count += len(reply.readings)
                token = reply.next_page_token
                if not token:
                    break
        except grpc.aio.AioRpcError as error:
            failure = f"ListReadings of meter {meter.meter_id} failed: {describe(error)}"
        found += count
        missing += max(0, meter.acknowledged - count)
        extra += max(0, count - meter.acknowledged)
    return {
        "meters": len(meters),
        "acknowledged": sum(m.acknowledged for m in meters),
        "found": found,
        "missing": missing,
        "unexpected": extra,
        "failure": failure,
    }


def verdict(ledger: Ledger) -> dict[str, Any]:
    acked = Ledger.acked()
    refused = f"outcome IN ({fpb.EVENT_OUTCOME_REJECTED}, {fpb.EVENT_OUTCOME_NOT_STORED})"
    lost_where = f"{acked} AND (store_n = 0 OR stream_n = 0)"
    duplicated_where = "(store_n > 1 OR stream_n > 1)"
    phantom_where = f"{refused} AND (store_n > 0 OR stream_n > 0)"
    return {
        "acknowledged": ledger.count(acked),
        "lost": ledger.count(lost_where),
        "lost_in_store": ledger.count(f"{acked} AND store_n = 0"),
        "lost_in_stream": ledger.count(f"{acked} AND stream_n = 0"),
        "duplicated": ledger.count(duplicated_where),
        "duplicated_in_store": ledger.count("store_n > 1"),
        "duplicated_in_stream": ledger.count("stream_n > 1"),
        "phantom": ledger.count(phantom_where),
        "errors_found_stored": ledger.count("outcome >= 100 AND store_n > 0"),
        "samples": {
            "lost": ledger.sample(lost_where),
            "duplicated": ledger.sample(duplicated_where),
            "phantom": ledger.sample(phantom_where),
        },
    }


# ---- the mesh's processes -------------------------------------------------------------------------------------


def mesh_processes(up_pid: int | None, ports: dict[str, int]) -> dict[str, int]:
    """component -> pid: `greenmesh up`'s children (by their command lines), else whoever listens on the mesh's
    ports. Empty without psutil (a development dependency) or when nothing is found."""
    try:
        import psutil
    except ImportError:
        return {}
    found: dict[str, int] = {}
    if up_pid is not None:
        try:
            children = psutil.Process(up_pid).children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            if "serve" in argv and argv.index("serve") + 1 < len(argv):
                found[argv[argv.index("serve") + 1]] = child.pid
            elif any("nats-server" in part for part in argv[:1]):
                found["nats"] = child.pid
    if not found and ports:
        try:
            listening = psutil.net_connections(kind="tcp")
        except psutil.Error:
            listening = []
        by_port = {port: name for name, port in ports.items()}
        for connection in listening:
            if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.pid:
                name = by_port.get(connection.laddr.port)
                if name is not None:
                    found[name] = connection.pid
    return found


def sample_processes(pids: dict[str, int]) -> dict[str, dict[str, float | int]]:
    """RSS (MiB), open file descriptors, TCP connections and threads of each process."""
    try:
        import psutil
    except ImportError:
        return {}
    samples: dict[str, dict[str, float | int]] = {}
    for name, pid in sorted(pids.items()):
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                samples[name] = {
                    "pid": pid,
                    "rss_mib": round(process.memory_info().rss / 2**20, 1),
                    "open_fds": process.num_fds(),
                    "tcp_connections": len(process.net_connections(kind="tcp")),
                    "threads": process.num_threads(),
                }
        except psutil.Error:
            continue
    return samples


async def settle(seconds: float) -> None:
    """Give the services a moment after the load (relay, consumers) before the end sample."""
    await asyncio.sleep(seconds)
