"""The `greenmesh` command: run the mesh, one component, migrations, status and local traces."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from greenmesh_cli.energy_import import IMPORT_HELP as ENERGY_IMPORT_HELP
from greenmesh_cli.k8s import app as k8s_app
from greenmesh_cli.national import app as national_app
from greenmesh_cli.registry_import import IMPORT_HELP, LOCAL_OPERATOR_ID
from greenmesh_cli.report import DISPATCH_HELP
from meshkit.config import SERVICES, Component, load_settings

app = typer.Typer(
    help="GreenMesh: battery recycling flows and energy-equipment records, as a gRPC mesh.", no_args_is_help=True
)
console = Console()


@app.command()
def up(
    nats_port: Annotated[int, typer.Option(help="port for the mesh's own nats-server; 0 picks a free one")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every component to be SERVING")] = 60.0,
) -> None:
    """Start the whole mesh on this machine: NATS, registry, flows, energy and the gateway."""
    from greenmesh_cli.up import run_up

    raise typer.Exit(run_up(load_settings(), nats_port, timeout, console))


@app.command()
def serve(
    component: Annotated[
        Component, typer.Argument(help="registry, flows, energy, gateway, or national (the national view)")
    ],
) -> None:
    """Run one component in the foreground (what a container runs)."""
    from meshkit.logs import configure_logging
    from meshkit.server import ServiceRuntime
    from services import definition_of

    settings = load_settings()
    configure_logging(component.value, settings.log_level, settings.log_format)
    runtime = ServiceRuntime(definition_of(component), settings, install_global_telemetry=True)
    asyncio.run(runtime.run_until_signal())


@app.command()
def migrate(
    component: Annotated[Component | None, typer.Argument(help="one service; all services when omitted")] = None,
) -> None:
    """Apply the database migrations of one service (or all) and exit."""
    from meshkit.migrate import migrate_blocking
    from services import definition_of

    settings = load_settings()
    targets = [component] if component else list(SERVICES)
    for target in targets:
        if target is Component.GATEWAY:
            console.print("the gateway has no database")
            continue
        definition = definition_of(target)
        migrate_blocking(settings.database_url_for(target), definition.migrations)
        console.print(f"{target.value}: database at the newest revision")


@app.command()
def status(
    probe: Annotated[
        bool, typer.Option(help="also send a probe event through the outbox and NATS to every service")
    ] = False,
) -> None:
    """Show the health of each component of the mesh `greenmesh up` started."""
    from greenmesh_cli.health import check_all
    from greenmesh_cli.mesh_file import MeshEndpoints

    settings = load_settings()
    endpoints = MeshEndpoints.load(settings.data_dir)
    if endpoints is None:
        grpc_endpoints = {c.value: settings.service_addr(c) for c in SERVICES}
        console.print(f"no {settings.data_dir}/mesh.json (is `greenmesh up` running?); using the configured addresses")
    else:
        grpc_endpoints = endpoints.grpc
    statuses = asyncio.run(check_all(grpc_endpoints))
    table = Table(title="GreenMesh status")
    table.add_column("component")
    table.add_column("endpoint")
    table.add_column("health")
    for name, endpoint in grpc_endpoints.items():
        state = statuses[name]
        colour = "green" if state == "SERVING" else "red"
        table.add_row(name, endpoint, f"[{colour}]{state}[/{colour}]")
    console.print(table)
    healthy = all(state == "SERVING" for state in statuses.values())
    if probe and healthy:
        healthy = asyncio.run(_probe(grpc_endpoints))
    raise typer.Exit(0 if healthy else 1)


async def _probe(endpoints: dict[str, str], timeout: float = 15.0) -> bool:
    """Emit a probe at the registry and wait until flows and energy have consumed it."""
    import grpc

    from greenmesh.mesh.v1 import probe_pb2, probe_pb2_grpc

    probe_id = f"status-{uuid.uuid4()}"
    receivers = [c.value for c in SERVICES if c is not Component.REGISTRY]
    async with grpc.aio.insecure_channel(endpoints[Component.REGISTRY.value]) as channel:
        await probe_pb2_grpc.MeshProbeServiceStub(channel).EmitProbe(
            probe_pb2.EmitProbeRequest(probe_id=probe_id, note="greenmesh status --probe"), timeout=5
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(receivers)
    while pending and loop.time() < deadline:
        for name in sorted(pending):
            async with grpc.aio.insecure_channel(endpoints[name]) as channel:
                reply = await probe_pb2_grpc.MeshProbeServiceStub(channel).GetProbe(
                    probe_pb2.GetProbeRequest(probe_id=probe_id), timeout=5
                )
            if any(r.emitted_by == Component.REGISTRY.value for r in reply.receipts):
                pending.discard(name)
                console.print(f"probe {probe_id}: received by {name} (trace {reply.receipts[0].trace_id})")
        await asyncio.sleep(0.2)
    if pending:
        console.print(f"[red]probe {probe_id} not received by {', '.join(sorted(pending))} within {timeout:.0f}s[/red]")
        return False
    return True


@app.command()
def traces(
    trace_id: Annotated[str | None, typer.Argument(help="a trace id (or its prefix) to print as a tree")] = None,
    limit: Annotated[int, typer.Option(help="how many recent traces to list")] = 20,
) -> None:
    """List recent traces from the local span files, or print one as a tree (service, span, duration)."""
    from greenmesh_cli.traces import find_trace, load_traces, trace_list, trace_tree

    settings = load_settings()
    found = load_traces(settings.data_dir)
    if not found:
        console.print(
            f"no spans under {settings.data_dir}/traces (with OTEL_EXPORTER_OTLP_ENDPOINT set they go to the collector)"
        )
        raise typer.Exit(1)
    if trace_id is None:
        console.print(trace_list(found, limit))
        return
    matches = find_trace(found, trace_id)
    if len(matches) != 1:
        console.print(f"{len(matches)} traces match {trace_id!r}")
        raise typer.Exit(1)
    console.print(trace_tree(matches[0]))


registry_app = typer.Typer(help="The registry: participants and facilities.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("import", help=IMPORT_HELP)
def registry_import(
    file: Annotated[Path, typer.Argument(help="the CSV file (UTF-8, header row first)", show_default=False)],
    registry: Annotated[
        str | None, typer.Option(help="host:port of the registry; default: the running mesh, else the configuration")
    ] = None,
    as_participant: Annotated[
        str, typer.Option(help="participant id of the local platform operator the CLI acts as")
    ] = LOCAL_OPERATOR_ID,
    errors_csv: Annotated[
        Path | None, typer.Option(help="write every rejected row (row, field, description) to this CSV")
    ] = None,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the registry to answer")] = 5.0,
) -> None:
    from greenmesh_cli.registry_import import run_import_command

    raise typer.Exit(run_import_command(file, registry, as_participant, errors_csv, connect_timeout, console))


report_app = typer.Typer(help="Reports for regulators: the ministry's dispatch statistics.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("dispatch", help=DISPATCH_HELP)
def report_dispatch(
    division: Annotated[
        str | None, typer.Option(help="GB/T 2260 code: 32 (province), 3201 (prefecture), 320102 (county); required")
    ] = None,
    from_day: Annotated[
        str | None, typer.Option("--from", help="first day of the period, YYYY-MM-DD (China time); required")
    ] = None,
    to_day: Annotated[
        str | None, typer.Option("--to", help="the day after the period's last day, YYYY-MM-DD; required")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="json, csv or both")] = "both",
    output: Annotated[
        Path | None,
        typer.Option(help="file to write (for both: its .json and .csv siblings); default dispatch-<division>-<days>"),
    ] = None,
    flows: Annotated[
        str | None,
        typer.Option(help="host:port of the flows service; default: the running mesh, else configuration"),
    ] = None,
    as_participant: Annotated[
        str, typer.Option(help="participant id of the local platform operator the CLI acts as")
    ] = LOCAL_OPERATOR_ID,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the flows service to answer")] = 5.0,
) -> None:
    from greenmesh_cli.report import run_dispatch_command

    raise typer.Exit(
        run_dispatch_command(division, from_day, to_day, fmt, output, flows, as_participant, connect_timeout, console)
    )


energy_app = typer.Typer(help="The energy records: equipment, meters, readings, savings.", no_args_is_help=True)
app.add_typer(energy_app, name="energy")


@energy_app.command("import-readings", help=ENERGY_IMPORT_HELP)
def energy_import_readings(
    file: Annotated[Path, typer.Argument(help="the CSV file (UTF-8, header row first)", show_default=False)],
    meter: Annotated[str | None, typer.Option(help="the meter of every row (instead of a meter_id column)")] = None,
    timezone: Annotated[str, typer.Option(help="UTC offset of times written without one")] = "+08:00",
    energy: Annotated[
        str | None,
        typer.Option(help="host:port of the energy service; default: the running mesh, else the configuration"),
    ] = None,
    as_participant: Annotated[
        str, typer.Option(help="participant id of the local platform operator the CLI acts as")
    ] = LOCAL_OPERATOR_ID,
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the energy service to answer")] = 5.0,
) -> None:
    from greenmesh_cli.energy_import import run_import_command as run_energy_import

    raise typer.Exit(run_energy_import(file, energy, meter, timezone, as_participant, connect_timeout, console))


app.add_typer(k8s_app, name="k8s")
app.add_typer(national_app, name="national")


credential_app = typer.Typer(help="API keys for the gateway.", no_args_is_help=True)
app.add_typer(credential_app, name="credential")


@credential_app.command("bootstrap")
def credential_bootstrap(
    registry: Annotated[
        str | None, typer.Option(help="host:port of the registry; default: the running mesh, else the configuration")
    ] = None,
    credit_code: Annotated[
        str | None,
        typer.Option(help="the platform operator's unified social credit code; default: a made-up local one"),
    ] = None,
    legal_name: Annotated[
        str, typer.Option(help="its name, when it must be registered")
    ] = "GreenMesh 平台运营方 (本机)",
    label: Annotated[str, typer.Option(help="the key's label")] = "greenmesh credential bootstrap",
    connect_timeout: Annotated[float, typer.Option(help="seconds to wait for the registry to answer")] = 5.0,
) -> None:
    """Issue an API key of the platform operator, registering that operator first if need be.

    Talks to the registry directly as this machine's operator (the mesh key in the data directory, or
    GREENMESH_CALLER_KEY), so it works before any key exists. Prints only the key on standard output:
    KEY=$(greenmesh credential bootstrap)."""
    from greenmesh_cli.credentials import run_bootstrap_command

    status, key = run_bootstrap_command(registry, credit_code, legal_name, label, connect_timeout, Console(stderr=True))
    if key:
        print(key)
    raise typer.Exit(status)


@app.command()
def loadgen(
    rate: Annotated[float, typer.Option(help="items per second: flow events, deliberate retries and readings")] = 200.0,
    duration: Annotated[float, typer.Option(help="seconds of load (unless --events is given)")] = 60.0,
    events: Annotated[
        int | None, typer.Option(help="send this many new flow events instead of running for --duration")
    ] = None,
    facilities: Annotated[int, typer.Option(help="facilities of the simulated province, of every kind")] = 1000,
    batch_share: Annotated[
        float, typer.Option(help="share of events sent in ReportEvents batches (and of readings by UploadReadings)")
    ] = 0.5,
    readings_share: Annotated[float, typer.Option(help="share of the rate spent on energy meter readings")] = 0.1,
    retry_share: Annotated[
        float, typer.Option(help="share of the event budget spent re-sending acknowledged events (must be DUPLICATE)")
    ] = 0.02,
    seed: Annotated[int, typer.Option(help="seed of the mix (ids and codes are new every run)")] = 1,
    json_path: Annotated[Path | None, typer.Option("--json", help="also write the report to this JSON file")] = None,
    gateway: Annotated[
        str | None, typer.Option(help="host:port of the gateway's gRPC door; default: the running mesh")
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="host:port of the registry, for the first (platform) key; default: the mesh")
    ] = None,
    nats: Annotated[str | None, typer.Option(help="NATS URL for the stream check; default: the mesh's")] = None,
    concurrency: Annotated[int, typer.Option(help="calls in flight at most")] = 64,
    batch_size: Annotated[int, typer.Option(help="events per ReportEvents batch at most")] = 100,
    readings_per_call: Annotated[int, typer.Option(help="15-minute readings per readings call")] = 24,
    setup_keys: Annotated[
        int, typer.Option(help="API keys each of the platform and the regulator spread the set-up calls over")
    ] = 4,
    setup_concurrency: Annotated[int, typer.Option(help="enterprises registered at once")] = 8,
    ledger: Annotated[
        Path | None, typer.Option(help="SQLite file for the events' answers (default: memory; long runs: a file)")
    ] = None,
    settle_timeout: Annotated[
        float, typer.Option(help="seconds the outbox relay may take to publish every acknowledged event")
    ] = 120.0,
    sample_every: Annotated[
        float, typer.Option(help="seconds between samples of the mesh processes' memory and descriptors")
    ] = 60.0,
) -> None:
    """Simulate a province against the running mesh, through the gateway's gRPC port with API keys.

    Sets up a recycling network (enterprises, their sites listed by a regulator, battery models, a data centre's
    meters), then sends battery lives (commissioning, sale, trade-in / door-to-door / drop-off collection, storage,
    transfers, sorting, recycling), deliberate retries and meter readings at --rate for --duration seconds (or
    --events events), with a live display. Afterwards every acknowledged event must be found exactly once in the
    store (QueryEvents) and in the stream GREENMESH_<province>_FLOWS; the report (and --json) says what was sent,
    acknowledged, rejected and found, the latencies, and the mesh processes' memory and open descriptors at the
    start, every --sample-every seconds, and the end of the load. Exit
    status 0 when nothing was lost or duplicated, 1 otherwise, 2 when the mesh could not be used."""
    from greenmesh_cli.loadgen import Options, run_loadgen_command

    options = Options(
        rate=rate,
        duration=duration,
        events=events,
        facilities=facilities,
        batch_share=batch_share,
        readings_share=readings_share,
        retry_share=retry_share,
        seed=seed,
        json_path=json_path,
        gateway=gateway,
        registry=registry,
        nats=nats,
        concurrency=concurrency,
        batch_size=batch_size,
        readings_per_call=readings_per_call,
        setup_keys=setup_keys,
        setup_concurrency=setup_concurrency,
        ledger=ledger,
        settle_timeout=settle_timeout,
        sample_every=sample_every,
    )
    raise typer.Exit(run_loadgen_command(options, console))
