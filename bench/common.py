"""What every benchmark module shares: the result line, the run context, and small statistics."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from meshkit.caller import Caller

REFERENCE_SELF = "self (reference)"

# The benchmark's service processes and its clients share this key for caller identities (meshkit/caller.py).
# It guards nothing (everything runs on this machine, on throw-away data) and needs no shared data directory.
BENCH_CALLER_KEY = "greenmesh-benchmark-caller-key-guards-nothing"

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """One figure; printed to stdout as one JSON line."""

    bench: str  # "<area>.<name>"
    value: float
    unit: str
    reference: str = REFERENCE_SELF
    ratio: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "bench": self.bench,
            "value": _round(self.value),
            "unit": self.unit,
            "reference": self.reference,
            "ratio": None if self.ratio is None else round(self.ratio, 3),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)


def _round(value: float) -> float:
    # Three decimals for small figures (latencies in ms), one for rates.
    return round(value, 3) if abs(value) < 100 else round(value, 1)


def signed_metadata(caller: Caller) -> tuple[tuple[str, str], ...]:
    """The caller's identity signed now with the benchmark's key. A signature is accepted for five minutes:
    sign for each measurement (outside what it times), not once for a whole run."""
    return tuple(caller.metadata(BENCH_CALLER_KEY.encode()))


def ratio_of(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


@dataclass
class RunContext:
    """What the runner hands each benchmark module."""

    quick: bool
    only: str | None = None
    emit: Callable[[Result], None] = lambda _result: None
    # Facts about the environment worth printing beside the table (database versions, settings).
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def repeats(self) -> int:
        # Rates are the best of the repeats (see `best_of`); five give a fair chance of one sample
        # the rest of the machine left alone, and keep the full run under about three minutes.
        return 1 if self.quick else 5

    # CPUs used by other work during each timed sample (see OtherCpuMeter), for the notes.
    other_cpu: list[float] = field(default_factory=list)
    # Pids of daemonized servers a benchmark started (PostgreSQL): their CPU use is not other work.
    helper_pids: set[int] = field(default_factory=set)

    def selected(self, bench: str) -> bool:
        return self.only is None or bench.startswith(self.only)

    # Every repeat's value per bench name, for the range shown beside the table.
    samples: dict[str, list[float]] = field(default_factory=dict)

    async def best_of(self, bench: str, label: str, measure: Callable[[], Awaitable[float]], unit: str) -> float:
        """`best_of` with this run's repeats, recording the samples and other work's CPU use."""
        recorded: list[float] = []

        async def recording() -> float:
            value = await measure()
            recorded.append(value)
            return value

        best = await best_of(label, self.repeats, recording, unit, other_cpu=self.other_cpu, helpers=self.helper_pids)
        self.samples[bench] = recorded
        return best

    async def measure_repeatedly(
        self, label: str, measure: Callable[[], Awaitable[T]], show: Callable[[T], str]
    ) -> list[T]:
        """`measure_repeatedly` with this run's repeats, recording other work's CPU use."""
        return await measure_repeatedly(
            label, self.repeats, measure, show, other_cpu=self.other_cpu, helpers=self.helper_pids
        )


class BenchModule(Protocol):
    """A module the runner knows: the figures it can produce and how to produce them."""

    BENCHES: tuple[str, ...]

    async def run(self, ctx: RunContext) -> None: ...


def log(message: str) -> None:
    """Human-readable progress: stderr only, so stdout stays pure JSON lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: always one of the measured samples, never an interpolation."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class OtherCpuMeter:
    """CPU used *outside* this process and its children while a measurement runs, in CPUs.

    Client, server subprocess and the work they measure share the machine with whatever else runs on
    it; this tells a slow sample caused by other work from a slow sample of our own. Linux only (reads
    /proc); elsewhere `stop()` returns None. Servers that daemonize (PostgreSQL) are not our children:
    pass their pids as `helpers` so their work counts as ours.
    """

    def __init__(self, helpers: Collection[int] = ()) -> None:
        self._roots = {os.getpid(), *helpers}
        self._start: tuple[int, int, int] | None = None

    def _sample(self) -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as stat:
                ticks = [int(value) for value in stat.readline().split()[1:]]
            return sum(ticks) - ticks[3] - ticks[4], sum(ticks), _tree_ticks(self._roots)
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[1] == self._start[1]:
            return None
        busy, total, ours = (after - before for after, before in zip(end, self._start, strict=True))
        return max(0.0, (busy - ours) / total * len(os.sched_getaffinity(0)))


def _tree_ticks(roots: Collection[int]) -> int:
    """CPU clock ticks of `roots` and all their descendants, from /proc/<pid>/stat.

    Each process counts its own time plus that of its children that exited and were waited for
    (cutime, cstime): those are no longer in /proc, and PostgreSQL's backends exit with their connection.
    """
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8") as stat:
                raw = stat.read()
        except OSError:
            continue  # the process ended while we looked
        # The command name is in parentheses and may hold spaces: parse after the last ")".
        fields = raw[raw.rfind(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    total = 0
    for pid, own in ticks.items():
        ancestor = pid
        while ancestor not in roots and ancestor > 1:
            ancestor = parents.get(ancestor, 0)
        if ancestor in roots:
            total += own
    return total


async def measure_repeatedly(
    label: str,
    repeats: int,
    measure: Callable[[], Awaitable[T]],
    show: Callable[[T], str],
    *,
    other_cpu: list[float] | None = None,
    helpers: Collection[int] = (),
) -> list[T]:
    """Run `measure` `repeats` times and return the samples; log each with other work's CPU use.

    If `other_cpu` is given, each sample's CPU use by other work is appended to it; `helpers` are
    pids of servers the measurement uses that are not our children (see `OtherCpuMeter`).
    """
    samples: list[T] = []
    for attempt in range(1, repeats + 1):
        meter = OtherCpuMeter(helpers)
        meter.start()
        sample = await measure()
        others = meter.stop()
        samples.append(sample)
        note = "" if others is None else f" (other work used {others:.2f} CPUs meanwhile)"
        if others is not None and other_cpu is not None:
            other_cpu.append(others)
        log(f"{label}: run {attempt}/{repeats}: {show(sample)}{note}")
    return samples


async def best_of(
    label: str,
    repeats: int,
    measure: Callable[[], Awaitable[float]],
    unit: str,
    *,
    other_cpu: list[float] | None = None,
    helpers: Collection[int] = (),
) -> float:
    """The highest of `repeats` rate samples; logs every sample and the spread.

    Other work on the machine only ever slows a sample down, so the best sample is the one nearest
    what the machine can do, and the figure that repeats best from run to run.
    """
    samples = await measure_repeatedly(
        label, repeats, measure, lambda rate: f"{rate:,.1f} {unit}", other_cpu=other_cpu, helpers=helpers
    )
    best = max(samples)
    if len(samples) > 1:
        low, middle = min(samples), statistics.median(samples)
        spread = (best - low) / best * 100 if best else 0.0
        log(f"{label}: best {best:,.1f} {unit} (median {middle:,.1f}, min {low:,.1f}, spread {spread:.1f}% of best)")
    return best


def bench_settings(data_dir: Path, nats_url: str, database_url: str) -> Any:
    """A service runtime's settings in a benchmark: the defaults, except a free port, no migration on start (the
    benchmark migrates first) and the benchmark's caller key."""
    from meshkit.config import load_settings

    return load_settings(
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        grpc_port=0,
        migrate_on_start=False,
        caller_key=BENCH_CALLER_KEY,
    )


async def serve_runtime(
    definition: Any,
    database_url: str,
    nats_url: str,
    data_dir: Path,
    *,
    settle: bool = False,
    pid_file: Path | None = None,
) -> None:
    """Run a service's real runtime in this process until SIGTERM/SIGINT, printing `READY <port>` once it
    listens (what `bench.grpc_reference.subprocess_server` waits for). Default settings, except a free port, no
    migration on start (the benchmark migrates first) and the benchmark's caller key. `settle` collects and
    freezes the heap once started, as `ServiceRuntime.run_until_signal` does in a service process; `pid_file`
    receives this process's id, for benchmarks that read its memory from /proc."""
    from meshkit.logs import configure_logging
    from meshkit.server import ServiceRuntime, settle_heap

    configure_logging(definition.component.value, "WARNING", "text")
    runtime = ServiceRuntime(definition, bench_settings(data_dir, nats_url, database_url))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = await runtime.start()
    if settle:
        settle_heap()
    if pid_file is not None:
        # The data directory exists only if something wrote to it (not with OTEL_TRACES_EXPORTER=none).
        await asyncio.to_thread(pid_file.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(pid_file.write_text, str(os.getpid()), encoding="utf-8")
    print(f"READY {port}", flush=True)
    await stop.wait()
    await runtime.stop()
