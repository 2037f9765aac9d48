"""`greenmesh national sync`: declare the national hub's streams, each sourcing every province's stream.
`greenmesh national trace`: one battery's custody chain across provinces, stitched from each province's trace.

A battery shipped from a facility in province A to one in province B has two halves: A's trace ends with the
shipment, and B's starts with the same shipping event, imported from A (its facility and county are A's), then
continues with B's receipt. :func:`stitch_traces` joins them at that event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import grpc
import nats
import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.flows.v1 import flows_pb2_grpc
from meshkit.config import SERVICES
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.national import ensure_national_streams
from meshkit.provinces import MAINLAND_PROVINCES

app = typer.Typer(help="The national level: the hub's streams over every province's.", no_args_is_help=True)


def parse_provinces(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(MAINLAND_PROVINCES)
    codes = [code.strip() for code in text.split(",") if code.strip()]
    unknown = [code for code in codes if code not in MAINLAND_PROVINCES]
    if unknown or not codes:
        raise typer.BadParameter(f"not mainland province codes: {', '.join(unknown) or '(none)'}")
    return sorted(set(codes))


async def _sync(url: str, provinces: list[str], replicas: int) -> list[str]:
    connection = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        return await ensure_national_streams(connection.jetstream(timeout=10), provinces, SERVICES, replicas=replicas)
    finally:
        await connection.close()


@app.command("sync")
def sync(
    nats_url: Annotated[str, typer.Option(help="the national hub, e.g. nats://nats:4222 in greenmesh-national")],
    provinces: Annotated[
        str, typer.Option(help="comma-separated province codes, or all (the 31 mainland ones)")
    ] = "all",
    replicas: Annotated[int, typer.Option(min=1, max=5, help="replicas of each national stream")] = 1,
) -> None:
    """Declare or update the hub's streams (GREENMESH_NATIONAL_<COMPONENT>), each sourcing that component's stream
    of every province through the province's JetStream domain (p<code>). Idempotent: run it again to add a
    province."""
    codes = parse_provinces(provinces)
    names = asyncio.run(_sync(nats_url, codes, replicas))
    Console().print(f"{', '.join(names)}: sourcing {len(codes)} provinces ({', '.join(codes)})")


# ---- the national trace ------------------------------------------------------------------------------------------

TRACE_TIMEOUT_SECONDS: Final = 30.0


@dataclass(frozen=True)
class NationalStep:
    """One step of a battery's national chain: the province whose trace it comes from, and the step there."""

    province: str
    step: pb.TraceStep

    @property
    def event_province(self) -> str:
        """Where the event happened: its facility's province (the county code's first two digits)."""
        return self.step.event.county_code[:2] or self.province


@dataclass(frozen=True)
class NationalTrace:
    """The stitched chain, and what it could not follow: steps of the traces that are not on it (in event-time
    order), and provinces that an imported shipment came from but whose trace was not given."""

    steps: tuple[NationalStep, ...]
    unplaced: tuple[NationalStep, ...] = ()
    missing_provinces: tuple[str, ...] = ()


def _imported(province: str, step: pb.TraceStep) -> bool:
    """An event this province imported from another (its facility is in the other province): a shipment sent
    here, or the receipt elsewhere of a shipment sent from here. Only shipments join two traces."""
    county = step.event.county_code
    return len(county) >= 2 and county[:2] != province


def _time(step: pb.TraceStep) -> tuple[int, int]:
    return (step.event.event_time.seconds, step.event.event_time.nanos)


def stitch_traces(traces: Mapping[str, pb.GetBatteryTraceResponse]) -> NationalTrace:
    """One chain from each province's trace of the same battery (province code → its GetBatteryTrace answer).

    The chain starts in the province whose first step was not imported (the earliest, if several), follows its
    steps and, at a shipment another province imported, continues in that province after its copy of the
    shipment; the shared shipping step appears once, as the origin recorded it (with the origin's rule hits and
    states). A shipment that was imported back (a return) is followed the same way."""
    steps = {province: list(trace.steps) for province, trace in traces.items() if trace.steps}
    # event id of an imported shipment → (importing province, position of its copy there)
    copies: dict[str, list[tuple[str, int]]] = {}
    for province, items in steps.items():
        for position, step in enumerate(items):
            if _imported(province, step) and step.event.biz_step == pb.BIZ_STEP_SHIPPING:
                copies.setdefault(step.event.event_id, []).append((province, position))
    missing = sorted(
        {
            step.event.county_code[:2]
            for province, items in steps.items()
            for step in items
            if _imported(province, step) and step.event.county_code[:2] not in steps
        }
    )
    starts = sorted(
        (_time(items[0]), province) for province, items in steps.items() if not _imported(province, items[0])
    )
    if not starts:  # only importing provinces were given: start where the chain is known earliest
        starts = sorted((_time(items[0]), province) for province, items in steps.items())
    chain: list[NationalStep] = []
    placed: set[tuple[str, int]] = set()
    if starts:
        province, position = starts[0][1], 0
        while position < len(steps[province]) and (province, position) not in placed:
            step = steps[province][position]
            placed.add((province, position))
            chain.append(NationalStep(province, step))
            onward = [
                (other, at)
                for other, at in copies.get(step.event.event_id, [])
                if other != province and (other, at) not in placed
            ]
            if step.event.biz_step == pb.BIZ_STEP_SHIPPING and onward:
                placed.add(onward[0])  # the copy is the same event: shown once, as the origin has it
                province, position = onward[0][0], onward[0][1] + 1
            else:
                position += 1
    unplaced = sorted(
        (
            NationalStep(province, step)
            for province, items in steps.items()
            for position, step in enumerate(items)
            if (province, position) not in placed and not _imported(province, step)
        ),
        key=lambda s: (_time(s.step), s.province),
    )
    return NationalTrace(tuple(chain), tuple(unplaced), tuple(missing))


def parse_addresses(values: Sequence[str], option: str = "--province") -> dict[str, str]:
    """`32=host:port` pairs → {province: address}."""
    found: dict[str, str] = {}
    for value in values:
        code, _, address = value.partition("=")
        code = code.strip()
        if code not in MAINLAND_PROVINCES or not address.strip():
            raise typer.BadParameter(f"{value!r}: write <province code>=<host:port>, e.g. 32=flows.greenmesh-32:50052")
        found[code] = address.strip()
    if not found:
        raise typer.BadParameter(f"give at least one {option}")
    return found


async def fetch_trace(
    address: str, battery: pb.BatteryRef, metadata: Sequence[tuple[str, str]], *, timeout: float = TRACE_TIMEOUT_SECONDS
) -> pb.GetBatteryTraceResponse | None:
    """A province's trace of the battery (flows, or its gateway); None when the province does not know it."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = flows_pb2_grpc.FlowServiceStub(channel)
        try:
            reply: pb.GetBatteryTraceResponse = await stub.GetBatteryTrace(
                pb.GetBatteryTraceRequest(battery_ref=battery), metadata=list(metadata), timeout=timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return reply


async def national_trace(
    addresses: Mapping[str, str], battery: pb.BatteryRef, metadata: Mapping[str, Sequence[tuple[str, str]]]
) -> tuple[NationalTrace, dict[str, pb.GetBatteryTraceResponse]]:
    """Every given province's trace of the battery (at once), stitched."""
    codes = sorted(addresses)
    replies = await asyncio.gather(*(fetch_trace(addresses[code], battery, metadata[code]) for code in codes))
    traces = {code: reply for code, reply in zip(codes, replies, strict=True) if reply is not None}
    return stitch_traces(traces), traces


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def step_row(number: int, item: NationalStep) -> list[str]:
    step = item.step
    event = step.event
    hits = ", ".join(hit.rule_id for hit in step.rule_hits)
    return [
        str(number),
        item.event_province,
        event.event_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") + "Z",
        _name(pb.BizStep, event.biz_step, "BIZ_STEP_"),
        event.facility_id + (f" → {event.destination_facility_id}" if event.destination_facility_id else ""),
        step.county_code,
        f"{_name(pb.CustodyState, step.state_before, 'CUSTODY_STATE_')} → "
        f"{_name(pb.CustodyState, step.state_after, 'CUSTODY_STATE_')}",
        _name(pb.EventOutcome, event.outcome, "EVENT_OUTCOME_") + (f" ({hits})" if hits else ""),
    ]


def trace_json(result: NationalTrace) -> dict[str, Any]:
    def item(step: NationalStep) -> dict[str, Any]:
        return {"province": step.event_province, "trace_province": step.province, "step": MessageToDict(step.step)}

    return {
        "steps": [item(s) for s in result.steps],
        "unplaced": [item(s) for s in result.unplaced],
        "missing_provinces": list(result.missing_provinces),
    }


@app.command("trace")
def trace(
    province: Annotated[
        list[str],
        typer.Option(
            help="a province's flows service or gateway, <code>=<host:port>; repeat for each province to follow"
        ),
    ],
    value: Annotated[str, typer.Option(help="the battery's code (serial, GB/T 34014 code or platform code)")],
    scheme: Annotated[str, typer.Option(help="MANUFACTURER_SERIAL, GBT34014 or PLATFORM")] = "MANUFACTURER_SERIAL",
    namespace: Annotated[str, typer.Option(help="for a manufacturer serial: the producer's credit code")] = "",
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            help="<code>=<API key> for a province reached through its gateway; otherwise the CLI calls as "
            "the local platform operator, signed with GREENMESH_CALLER_KEY (that province's mesh key)"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the chain as JSON")] = False,
) -> None:
    """One battery's custody chain across provinces: each given province's trace (GetBatteryTrace), stitched at the
    shipments one province sent to another (a cross-province transfer), in order. Exit status 1 when no province
    knows the battery, 2 when a province cannot be reached or refuses."""
    from greenmesh_cli.mesh_file import local_caller_key
    from greenmesh_cli.registry_import import operator_caller

    addresses = parse_addresses(province)
    keys = parse_addresses(api_key or [], "--api-key") if api_key else {}
    try:
        scheme_number = pb.IdentifierScheme.Value(
            f"IDENTIFIER_SCHEME_{scheme.upper().removeprefix('IDENTIFIER_SCHEME_')}"
        )
    except ValueError:
        raise typer.BadParameter(f"--scheme {scheme!r}: MANUFACTURER_SERIAL, GBT34014 or PLATFORM") from None
    battery = pb.BatteryRef(scheme=scheme_number, namespace=namespace, value=value)
    metadata: dict[str, Sequence[tuple[str, str]]] = {}
    signed: Sequence[tuple[str, str]] | None = None
    for code in addresses:
        if code in keys:
            metadata[code] = [("authorization", f"Bearer {keys[code]}")]
        else:
            signed = signed or operator_caller().metadata(local_caller_key())
            metadata[code] = signed
    console = Console()
    try:
        result, traces = asyncio.run(national_trace(addresses, battery, metadata))
    except grpc.aio.AioRpcError as error:
        console.print(f"[red]greenmesh national trace: {error.code().name}: {error.details()}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(trace_json(result), ensure_ascii=False, indent=2))
    else:
        table = Table(title=f"{scheme.upper()} {namespace + ' ' if namespace else ''}{value}: national chain")
        for column in ("#", "province", "event time", "step", "facility", "county", "state", "outcome"):
            table.add_column(column)
        for number, item in enumerate(result.steps, 1):
            table.add_row(*step_row(number, item))
        console.print(table)
        for item in result.unplaced:
            console.print("not on the chain: " + " | ".join(step_row(0, item)[1:]))
        if result.missing_provinces:
            console.print(f"the chain continues in provinces not given: {', '.join(result.missing_provinces)}")
    if not traces:
        raise typer.Exit(1)
