"""`greenmesh loadgen`: a province in a box, against a running mesh.

It builds a province's recycling network through the gateway (`loadgen_network`), sends a mix of battery lives,
deliberate retries and meter readings through the gateway's gRPC door at a rate (`loadgen_traffic`), shows its
progress, and then checks itself (`loadgen_check`): every acknowledged event must be found exactly once in the
store and in the JetStream stream. Exit status: 0 when nothing was lost, duplicated or stored against its answer;
1 when something was; 2 when the mesh could not be used.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import signal
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from greenmesh_cli.loadgen_check import (
    check_readings,
    check_store,
    check_stream,
    mesh_processes,
    sample_processes,
    verdict,
)
from greenmesh_cli.loadgen_network import (
    KINDS,
    Builder,
    Front,
    KeyPool,
    Network,
    SetupProblem,
    meter_start,
    operators_needed,
    plan_network,
    site_counts,
    wait_for_directory,
)
from greenmesh_cli.loadgen_traffic import Ledger, Load, Mix, Stats

REPORT_VERSION = 1
AUTO_LEDGER_EVENTS = 500_000  # planned events above which the ledger goes to a file in the data directory


@dataclass(frozen=True)
class Options:
    rate: float = 200.0
    duration: float = 60.0
    events: int | None = None
    facilities: int = 1000
    batch_share: float = 0.5
    readings_share: float = 0.1
    retry_share: float = 0.02
    seed: int = 1
    json_path: Path | None = None
    gateway: str | None = None
    registry: str | None = None
    nats: str | None = None
    concurrency: int = 64
    batch_size: int = 100
    readings_per_call: int = 24
    setup_keys: int = 4
    setup_concurrency: int = 8
    ledger: Path | None = None
    settle_timeout: float = 120.0
    connect_timeout: float = 10.0
    sample_every: float = 60.0


def problems_of(options: Options) -> list[str]:
    found = []
    if not options.rate > 0:
        found.append("--rate must be > 0")
    if not options.sample_every > 0:
        found.append("--sample-every must be > 0")
    if options.events is None and not options.duration > 0:
        found.append("--duration must be > 0")
    if options.events is not None and options.events < 1:
        found.append("--events must be at least 1")
    for name in ("batch_share", "readings_share", "retry_share"):
        if not 0 <= getattr(options, name) <= 1:
            found.append(f"--{name.replace('_', '-')} must lie between 0 and 1")
    try:
        site_counts(options.facilities)
    except ValueError as error:
        found.append(f"--facilities: {error}")
    if not 1 <= options.batch_size <= 1000:
        found.append("--batch-size must lie between 1 and 1,000 (ReportEvents takes at most 1,000 events)")
    if not 1 <= options.readings_per_call <= 10_000:
        found.append("--readings-per-call must lie between 1 and 10,000")
    for name in ("concurrency", "setup_keys", "setup_concurrency"):
        if getattr(options, name) < 1:
            found.append(f"--{name.replace('_', '-')} must be at least 1")
    return found


@dataclass(frozen=True)
class Targets:
    gateway: str
    registry: str
    nats_url: str
    province: str
    up_pid: int | None
    ports: dict[str, int]
    source: str


def resolve_targets(options: Options) -> Targets:
    """The gateway, the registry (for the first key), NATS and the province: options, else the running mesh's
    mesh.json, else the configuration."""
    from greenmesh_cli.mesh_file import MeshEndpoints, component_address
    from meshkit.config import load_settings

    settings = load_settings()
    try:
        endpoints = MeshEndpoints.load(settings.data_dir)
    except (OSError, ValueError, TypeError):
        endpoints = None
    gateway, source = (options.gateway, "--gateway") if options.gateway else component_address("gateway")
    registry = options.registry or component_address("registry")[0]
    nats_url = options.nats or (endpoints.nats_url if endpoints else settings.nats_url)
    province = endpoints.province if endpoints else settings.province
    ports: dict[str, int] = {}
    up_pid = None
    if endpoints is not None and (options.gateway is None or options.gateway == endpoints.grpc.get("gateway")):
        up_pid = endpoints.pid
        addresses = {**endpoints.grpc, "nats": endpoints.nats_url.split(",")[0]}
        for name, address in addresses.items():
            with contextlib.suppress(ValueError):  # only for finding the processes by port, if need be
                ports[name] = int(address.rsplit(":", 1)[1])
    return Targets(gateway, registry, nats_url, province, up_pid, ports, source)


# ---- the run ------------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, options: Options, console: Console) -> None:
        self.options = options
        self.console = console
        self.tag = uuid.uuid4().hex[:6].upper()
        self.rng = random.Random(f"{options.seed}-{self.tag}")
        self.stats = Stats()
        self.processes: dict[str, Any] = {}
        self.interrupted = False

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}", soft_wrap=True)

    async def run(self) -> dict[str, Any]:
        from greenmesh_cli.credentials import LOCAL_OPERATOR_NAME, bootstrap, local_operator_code
        from greenmesh_cli.mesh_file import local_caller_key

        options = self.options
        targets = resolve_targets(options)
        pids = mesh_processes(targets.up_pid, targets.ports)
        self.processes["pids"] = pids
        self.processes["before_setup"] = sample_processes(pids)
        self.say(
            f"run {self.tag}: province {targets.province}, gateway {targets.gateway} ({targets.source}), "
            f"NATS {targets.nats_url}"
        )
        front = Front(targets.gateway)
        try:
            await front.ready(options.connect_timeout)
            try:
                first = await bootstrap(
                    targets.registry,
                    local_operator_code(targets.province),
                    LOCAL_OPERATOR_NAME,
                    f"greenmesh loadgen {self.tag}",
                    local_caller_key(),
                    options.connect_timeout,
                )
            except Exception as error:  # BootstrapProblem, or the key file
                raise SetupProblem(f"no platform key from the registry at {targets.registry}: {error}") from None
            network = await self.setup(front, targets, first.participant_id, first.api_key)
            return await self.load_and_check(front, targets, network)
        finally:
            await front.close()

    async def setup(self, front: Front, targets: Targets, platform_id: str, platform_key: str) -> Network:
        import grpc

        options = self.options
        started = time.monotonic()
        counts = site_counts(options.facilities)
        planned = await asyncio.to_thread(
            plan_network, targets.province, options.facilities, random.Random(options.seed), self.tag, self.rng
        )
        self.say(
            f"setting up {options.facilities:,} facilities of {operators_needed(counts):,} enterprises "
            f"({', '.join(f'{n} {k}' for k, n in counts.items())})"
        )
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=not self.console.is_terminal, disable=not self.console.is_terminal,
        )  # fmt: skip
        tasks = {
            "enterprises": progress.add_task("enterprises", total=len(planned)),
            "facilities": progress.add_task("facilities", total=options.facilities),
        }
        builder = Builder(
            front,
            targets.province,
            platform_id,
            KeyPool([platform_key]),
            self.tag,
            options.setup_keys,
            options.setup_concurrency,
            lambda what, n: progress.advance(tasks[what], n),
        )
        try:
            with progress:
                await builder.more_platform_keys()
                regulator = await builder.regulator_keys()
                enterprises = await builder.all_enterprises(planned)
            sites: dict[str, list[Any]] = {kind.name: [] for kind in KINDS}
            for enterprise in enterprises:
                for site in enterprise.sites:
                    sites[site.kind].append(site)
            self.say(f"registered {len(enterprises):,} enterprises and {options.facilities:,} facilities")
            models = await builder.models([e for e in enterprises if e.kind == "producer"])
            meters = await builder.meters(sites["datacenter"], meter_start(dt.datetime.now(dt.UTC)), self.rng)
            self.say(f"{sum(len(m) for m in models.values())} battery models, {len(meters)} meters; waiting for "
                     "the flows service to know every facility")  # fmt: skip
            directory = await wait_for_directory(front, enterprises, timeout=120.0)
        except grpc.aio.AioRpcError as error:
            from greenmesh_cli.loadgen_network import describe

            raise SetupProblem(f"the set-up was refused: {describe(error)}") from None
        network = Network(
            targets.province, platform_id, builder.platform, regulator, enterprises, sites, models, meters
        )
        network.setup_seconds = time.monotonic() - started
        network.setup_calls = front.calls
        network.setup_throttled = front.throttled
        network.directory_seconds = directory
        self.say(f"set-up done in {network.setup_seconds:.1f} s ({front.calls:,} calls through the gateway)")
        return network

    def ledger(self) -> Ledger:
        options = self.options
        planned = options.events if options.events is not None else options.rate * options.duration
        if options.ledger is not None:
            return Ledger(str(options.ledger))
        if planned > AUTO_LEDGER_EVENTS:
            from meshkit.config import load_settings

            folder = load_settings().data_dir / "loadgen"
            folder.mkdir(parents=True, exist_ok=True)
            return Ledger(str(folder / f"ledger-{self.tag}.sqlite"))
        return Ledger()

    async def load_and_check(self, front: Front, targets: Targets, network: Network) -> dict[str, Any]:
        options = self.options
        mix = Mix(
            rate=options.rate,
            duration=None if options.events is not None else options.duration,
            events=options.events,
            batch_share=options.batch_share,
            readings_share=options.readings_share,
            retry_share=options.retry_share,
            batch_size=options.batch_size,
            readings_per_call=options.readings_per_call,
            concurrency=options.concurrency,
        )
        ledger = self.ledger()
        load = Load(front, network, mix, ledger, self.stats, options.seed, self.tag)
        pids = self.processes["pids"]
        self.processes["load_start"] = sample_processes(pids)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=10)
        what = f"{options.events:,} events" if options.events is not None else f"{options.duration:g} s"
        self.say(f"load: {options.rate:g}/s for {what}")
        self.stats.started = time.monotonic()
        sampler = asyncio.create_task(self.sample_during_load(pids), name="loadgen-process-samples")
        try:
            await self.with_display(load)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        self.processes["load_end"] = sample_processes(pids)
        stats = self.stats
        if self.interrupted:
            self.say("[yellow]load stopped by Ctrl-C; checking what was sent[/yellow]")
        self.say(
            f"load done: {stats.sent:,} events sent in {stats.elapsed:.1f} s, {stats.acknowledged:,} acknowledged; "
            "checking the store"
        )
        platform_key = network.platform.next()
        store = await check_store(front, platform_key, since, ledger)
        self.say(
            f"store: {store.scanned:,} events read in {store.seconds:.1f} s; checking the stream "
            f"GREENMESH_{targets.province}_FLOWS"
        )
        stream = await check_stream(
            targets.nats_url, targets.province, since, ledger, stats.acknowledged, options.settle_timeout
        )
        self.say(f"stream: {stream.scanned:,} messages read in {stream.seconds:.1f} s")
        readings = await check_readings(front, network.meters) if network.meters else {}
        self.processes["after_check"] = sample_processes(pids)
        checked = verdict(ledger)
        ledger.close()
        return self.report(targets, network, store, stream, readings, checked, ledger.path)

    async def sample_during_load(self, pids: dict[str, int]) -> None:
        """The mesh processes every `sample_every` seconds of the load, so that a leak shows as a trend."""
        samples: list[dict[str, Any]] = []
        self.processes["during_load"] = samples
        while True:
            await asyncio.sleep(self.options.sample_every)
            taken = await asyncio.to_thread(sample_processes, pids)
            samples.append({"at_seconds": round(self.stats.elapsed, 1), "processes": taken})

    async def with_display(self, load: Load) -> None:
        """The load with its live display; Ctrl-C ends the load early, and the check still runs."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers on this platform
            loop.add_signal_handler(signal.SIGINT, self.interrupt, load)
        try:
            await self.display(load)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)

    def interrupt(self, load: Load) -> None:
        if not load.stopped:
            self.interrupted = True
            load.stop()

    async def display(self, load: Load) -> None:
        console = self.console
        if not console.is_terminal:
            last = [time.monotonic()]

            def line() -> None:
                if time.monotonic() - last[0] >= 5.0:
                    last[0] = time.monotonic()
                    self.say(self.status_line(load))

            await load.run(line)
            return
        with Live(self.live_table(load), console=console, refresh_per_second=4, transient=False) as live:
            shown = [0.0]

            def refresh() -> None:
                if time.monotonic() - shown[0] >= 0.25:
                    shown[0] = time.monotonic()
                    live.update(self.live_table(load))

            await load.run(refresh)
            live.update(self.live_table(load))

    def status_line(self, load: Load) -> str:
        s = self.stats
        rate, p50, p99 = s.window()
        return (
            f"{s.elapsed:6.1f} s  sent {s.sent:,}  {rate:,.0f}/s  acknowledged {s.acknowledged:,}  "
            f"rejected {sum(s.rejected.values()):,}  errors {sum(s.errors.values()):,}  throttled {s.throttled:,}  "
            f"retries {s.retry_answers.get('DUPLICATE', 0):,}/{s.retries_sent:,}  readings "
            f"{s.readings_acknowledged:,}/{s.readings_sent:,}  p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
            f"in flight {len(load.inflight)}"
        )

    def live_table(self, load: Load) -> Group:
        s = self.stats
        rate, p50, p99 = s.window()
        options = self.options
        planned = (
            f"{s.sent:,} / {options.events:,} events"
            if options.events is not None
            else f"{s.elapsed:,.0f} / {options.duration:g} s"
        )
        table = Table(title=f"greenmesh loadgen {self.tag}: {planned}", show_header=False, min_width=60)
        table.add_column("figure")
        table.add_column("value", justify="right")
        for name, value in (
            ("events sent", f"{s.sent:,}"),
            ("sent per second (last 5 s, all items)", f"{rate:,.0f}"),
            ("acknowledged", f"{s.acknowledged:,}"),
            ("rejected", f"{sum(s.rejected.values()):,}"),
            ("quarantined", f"{sum(s.quarantined.values()):,}"),
            ("errors (attempts)", f"{sum(s.errors.values()):,}"),
            ("throttled (waited out)", f"{s.throttled:,}"),
            ("retries answered DUPLICATE", f"{s.retry_answers.get('DUPLICATE', 0):,} / {s.retries_sent:,}"),
            ("readings acknowledged", f"{s.readings_acknowledged:,} / {s.readings_sent:,}"),
            ("latency p50 / p99 (last 5 s)", f"{p50:,.1f} / {p99:,.1f} ms"),
            ("calls in flight", f"{len(load.inflight)}"),
            ("batteries (recycled)", f"{s.batteries:,} ({s.recycled:,})"),
        ):
            table.add_row(name, value)
        return Group(table)

    # ---- the report ----

    def report(
        self,
        targets: Targets,
        network: Network,
        store: Any,
        stream: Any,
        readings: dict[str, Any],
        checked: dict[str, Any],
        ledger_path: str,
    ) -> dict[str, Any]:
        s = self.stats
        seconds = max(s.elapsed, 1e-9)
        final_errors = {name: n for name, n in s.outcomes.items() if name.startswith("ERROR_")}
        refused = dict(s.rejected)
        if s.outcomes.get("CONFLICT"):
            refused["CONFLICT"] = s.outcomes["CONFLICT"]
        retry_other = {name: n for name, n in s.retry_answers.items() if name != "DUPLICATE"}
        retry_wrong = sum(n for name, n in retry_other.items() if not name.startswith("ERROR_"))
        problems = []
        if checked["lost"]:
            problems.append(f"{checked['lost']:,} acknowledged events lost")
        if checked["duplicated"]:
            problems.append(f"{checked['duplicated']:,} events duplicated")
        if checked["phantom"]:
            problems.append(f"{checked['phantom']:,} refused events found stored")
        if readings.get("missing"):
            problems.append(f"{readings['missing']:,} acknowledged readings missing")
        if retry_wrong:
            problems.append(f"{retry_wrong:,} retries answered other than DUPLICATE")
        for failure in (store.failure, stream.failure, readings.get("failure", "")):
            if failure:
                problems.append(failure)
        if not checked["acknowledged"]:
            problems.append("nothing was acknowledged")
        if s.client_failures:
            problems.append(f"{sum(s.client_failures.values()):,} calls failed in the load generator")
        return {
            "greenmesh_loadgen": REPORT_VERSION,
            "run": {
                "tag": self.tag,
                "province": targets.province,
                "gateway": targets.gateway,
                "nats_url": targets.nats_url,
                "ledger": ledger_path,
                "interrupted": self.interrupted,
                "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()},
            "network": network.summary(),
            "load": {
                "seconds": round(seconds, 2),
                "sent": s.sent,
                "acknowledged": s.acknowledged,
                "events_per_second": round(s.sent / seconds, 1),
                "acknowledged_per_second": round(s.acknowledged / seconds, 1),
                "items_per_second": round((s.sent + s.retries_sent + s.readings_sent) / seconds, 1),
                "outcomes": dict(sorted(s.outcomes.items())),
                "rejected": {"total": sum(refused.values()), "by_reason": dict(refused)},
                "quarantined": {"total": sum(s.quarantined.values()), "by_rule": dict(s.quarantined)},
                "errors": {
                    "attempts": sum(s.errors.values()),
                    "by_code": dict(s.errors),
                    "final": final_errors,
                    "resent": s.resent,
                    "throttled": s.throttled,
                },
                "unary_events": s.unary_events,
                "batch_events": s.batch_events,
                "calls": dict(s.calls),
                "steps": dict(s.steps.most_common()),
                "collection_modes": dict(s.modes.most_common()),
                "batteries": {
                    "started": s.batteries,
                    "lives_ending_in_use": s.in_use,
                    "recycled": s.recycled,
                    "stopped_by_an_answer": s.stopped,
                },
                "retries": {
                    "sent": s.retries_sent,
                    "duplicate": s.retry_answers.get("DUPLICATE", 0),
                    "other": retry_other,
                },
                "readings": {
                    "sent": s.readings_sent,
                    "acknowledged": s.readings_acknowledged,
                    "rejected": dict(s.readings_rejected),
                    "errors": s.readings_errors,
                },
                "latency_ms": s.latency_summary(),
                "client_failures": dict(s.client_failures),
            },
            "check": {
                **{k: v for k, v in checked.items() if k != "samples"},
                "store": asdict(store),
                "stream": asdict(stream),
                "readings": readings,
                "samples": checked["samples"],
                "problems": problems,
                "ok": not problems,
            },
            "processes": self.processes,
        }


# ---- printing ---------------------------------------------------------------------------------------------------


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items(), key=lambda item: -item[1])) or "none"


def print_report(report: dict[str, Any], console: Console) -> None:
    network, load, check = report["network"], report["load"], report["check"]
    latency = load["latency_ms"]
    console.print(
        _table(
            f"network (province {report['run']['province']})",
            [
                ("enterprises", f"{network['enterprises']:,}"),
                ("facilities", f"{network['facilities']:,} ({network['listed']:,} listed)"),
                ("by kind", _counts(network["facilities_by_kind"])),
                ("battery models / meters", f"{network['battery_models']} / {network['meters']}"),
                ("set-up", f"{network['setup_seconds']:.1f} s, {network['setup_calls']:,} calls"),
            ],
        )
    )
    console.print(
        _table(
            f"load ({load['seconds']:.1f} s)",
            [
                (
                    "events sent",
                    f"{load['sent']:,} ({load['unary_events']:,} alone, {load['batch_events']:,} in batches)",
                ),
                ("acknowledged", f"{load['acknowledged']:,}"),
                ("rejected", f"{load['rejected']['total']:,}: {_counts(load['rejected']['by_reason'])}"),
                ("quarantined", f"{load['quarantined']['total']:,}: {_counts(load['quarantined']['by_rule'])}"),
                ("errors (attempts)", f"{load['errors']['attempts']:,}: {_counts(load['errors']['by_code'])}"),
                ("errors (final)", _counts(load["errors"]["final"])),
                ("throttled, waited out", f"{load['errors']['throttled']:,}"),
                ("events per second, sustained", f"{load['events_per_second']:,.1f}"),
                (
                    "latency p50 / p99 / max",
                    f"{latency['p50']:,.1f} / {latency['p99']:,.1f} / {latency['max']:,.1f} ms",
                ),
                ("steps", _counts(load["steps"])),
                ("collection modes", _counts(load["collection_modes"])),
                ("retries: DUPLICATE / sent", f"{load['retries']['duplicate']:,} / {load['retries']['sent']:,}"),
                (
                    "readings: acknowledged / sent",
                    f"{load['readings']['acknowledged']:,} / {load['readings']['sent']:,}",
                ),
            ],
        )
    )
    readings = check.get("readings") or {}
    console.print(
        _table(
            "self-check",
            [
                ("acknowledged events", f"{check['acknowledged']:,}"),
                ("found in the store", f"{check['store']['found']:,} (read {check['store']['scanned']:,})"),
                ("found in the stream", f"{check['stream']['found']:,} (read {check['stream']['scanned']:,})"),
                (
                    "lost (store / stream)",
                    f"{check['lost']:,} ({check['lost_in_store']:,} / {check['lost_in_stream']:,})",
                ),
                ("duplicated", f"{check['duplicated']:,}"),
                ("refused but stored", f"{check['phantom']:,}"),
                (
                    "readings found / acknowledged",
                    f"{readings.get('found', 0):,} / {readings.get('acknowledged', 0):,}",
                ),
            ],
        )
    )
    processes = report["processes"]
    start, end = processes.get("load_start") or {}, processes.get("load_end") or {}
    if start:
        table = Table(title="mesh processes, load start → end", title_justify="left")
        for column in ("process", "RSS MiB", "open fds", "TCP connections", "threads"):
            table.add_column(column, justify="left" if column == "process" else "right")
        for name, before in start.items():
            after = end.get(name, {})
            table.add_row(
                name,
                *(
                    f"{before[key]} → {after.get(key, '?')}"
                    for key in ("rss_mib", "open_fds", "tcp_connections", "threads")
                ),
            )
        console.print(table)
        during = processes.get("during_load") or []
        if during:
            trend = Table(
                title=f"RSS MiB during the load, every {report['options']['sample_every']:g} s", title_justify="left"
            )
            trend.add_column("process")
            trend.add_column("start → samples → end")
            for name, before in start.items():
                values = [before["rss_mib"], *(s["processes"].get(name, {}).get("rss_mib", "?") for s in during)]
                values.append(end.get(name, {}).get("rss_mib", "?"))
                trend.add_row(name, " ".join(str(v) for v in values))
            console.print(trend)
    if check["ok"]:
        console.print(
            "[green]self-check passed: every acknowledged event found once in the store and the stream[/green]"
        )
    else:
        console.print(f"[red]self-check failed: {'; '.join(check['problems'])}[/red]")


def run_loadgen_command(options: Options, console: Console) -> int:
    problems = problems_of(options)
    if problems:
        for problem in problems:
            console.print(f"[red]greenmesh loadgen: {problem}[/red]")
        return 2
    try:
        report = asyncio.run(Run(options, console).run())
    except SetupProblem as problem:
        console.print(f"[red]greenmesh loadgen: {problem}[/red]", soft_wrap=True)
        return 2
    status = 0 if report["check"]["ok"] else 1
    report["exit_status"] = status
    print_report(report, console)
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        console.print(f"report written to {options.json_path}")
    return status
