"""The registry's public queries and its facility registration, over gRPC, against 50,000 facilities.

Set-up (not timed): a fresh SQLite database is migrated, then 50,000 facilities and 300 operators are
inserted directly with SQLAlchemy Core (the benchmark measures queries, not loading). The facilities lie
in the real counties of four provinces (Jiangsu 32, Zhejiang 33, Guangdong 44, Sichuan 51), five times
denser in city districts than elsewhere, clustered around each county's centre, and about one county in
seven outside the districts has none (so coverage is not trivially 100 %). Most are LISTED recycling
outlets, co-op stations and temporary storage points. Then the real registry runtime
(`meshkit.server.ServiceRuntime` with `services.registry.service.DEFINITION`, default settings, spans to
local JSON lines) starts on that database with a real nats-server, in its own process
(`python -m bench.registry --serve ...`), as the bare reference server does, so that client and server do
not share one event loop.

Figures (references measured in the same run, against the bare server of `bench.grpc_reference`):
  - `registry.nearest_p50_ms`, `registry.nearest_p99_ms`: FindNearestOutlets at 1,000 random points near
    the facilities, one call in flight, through the same loop as the bare unary latency;
  - `registry.coverage_ms_province`, `registry.coverage_ms_national`: GetCountyCoverage for Jiangsu and
    for the whole country, the median of 20 calls;
  - `registry.register_facilities_per_s_seq`, `registry.register_facilities_per_s_c16`: RegisterFacility
    calls/s with 1 and with 16 calls in flight (each a new facility, written with its event).
"""

from __future__ import annotations

# grpcio ships no type information of its own (see bench/grpc_reference.py).
# mypy: disable-error-code="import-untyped"
import argparse
import asyncio
import contextlib
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from sqlalchemy import insert

from bench.common import (
    Result,
    RunContext,
    best_of,
    log,
    measure_repeatedly,
    percentile,
    ratio_of,
    serve_runtime,
    signed_metadata,
)
from bench.grpc_reference import reference_payload, reference_server, subprocess_server, unary_latencies
from bench.grpc_reference import unary_throughput as bare_unary_throughput
from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from greenmesh_cli.health import wait_serving
from meshkit.caller import Caller
from meshkit.db import Database
from meshkit.grpc_options import CHANNEL_OPTIONS
from meshkit.ids import new_id
from meshkit.localinfra import NatsServer
from meshkit.migrate import migrate
from services.registry.domain.coverage import compute_coverage
from services.registry.domain.credit_code import make_credit_code
from services.registry.domain.divisions import COVERAGE_LEVELS, County, DivisionLevel, DivisionTable
from services.registry.domain.divisions import load_division_table as _load_division_table
from services.registry.tables import FacilityRow, ParticipantRow

BENCHES: tuple[str, ...] = (
    "registry.nearest_p50_ms",
    "registry.nearest_p99_ms",
    "registry.coverage_ms_province",
    "registry.coverage_ms_national",
    "registry.register_facilities_per_s_seq",
    "registry.register_facilities_per_s_c16",
)

SERVICE = "/greenmesh.registry.v1.RegistryService"
NEAREST_METHOD = f"{SERVICE}/FindNearestOutlets"
COVERAGE_METHOD = f"{SERVICE}/GetCountyCoverage"
REGISTER_METHOD = f"{SERVICE}/RegisterFacility"

PROVINCES = ("32", "33", "44", "51")
COVERAGE_PROVINCE = "32"
OPERATORS = 300
CONCURRENCY = 16
REGISTRY_REPEATS = 3
PUBLIC_TYPES = ("RECYCLING_OUTLET", "COOP_STATION", "TEMP_STORAGE_POINT")
COVERAGE_TYPES = ("RECYCLING_OUTLET", "TEMP_STORAGE_POINT")
# (type, weight): mostly the public collection points, a few other sites.
TYPE_WEIGHTS = (
    ("RECYCLING_OUTLET", 60),
    ("TEMP_STORAGE_POINT", 15),
    ("COOP_STATION", 12),
    ("DEALER_STORE", 8),
    ("REGIONAL_SORTING_CENTER", 5),
)
LISTED_SHARE = 0.85
OTHER_ACCREDITATIONS = ("DRAFT", "UNDER_REVIEW", "SUSPENDED", "DELISTED")
DISTRICT_WEIGHT = 5.0  # city districts (市辖区) get five times the facilities of other counties
EMPTY_COUNTY_SHARE = 0.15  # of the non-district counties, this share has no facility at all
EARTH_RADIUS_M = 6_371_008.8


@dataclass(frozen=True)
class Sizes:
    facilities: int
    nearest_queries: int
    nearest_warmup: int
    coverage_calls: int
    register_seq: int
    register_c16: int
    reference_calls_seq: int
    reference_calls_c16: int


FULL = Sizes(50_000, 1_000, 100, 20, 200, 400, 2_000, 5_000)
QUICK = Sizes(5_000, 200, 20, 5, 50, 160, 500, 1_000)


# ---- the data set --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSet:
    facilities: list[dict[str, Any]]
    operators: list[dict[str, Any]]
    public_points: np.ndarray  # (n, 2) lat, lon of LISTED public outlets
    counties: int  # counties holding at least one facility


def load_division_table() -> DivisionTable:
    return _load_division_table()


def _points_in(table: DivisionTable, county: County, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` (lat, lon) points inside the county, clustered around its representative point."""
    import shapely

    geometry = table.geometries[county.code]
    anchor = geometry.representative_point()
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    sigma = max(0.01, 0.2 * min(max_lon - min_lon, max_lat - min_lat))
    found: list[np.ndarray] = []
    have = 0
    for _ in range(50):
        lons = anchor.x + rng.normal(0.0, sigma, 2 * count)
        lats = anchor.y + rng.normal(0.0, sigma, 2 * count)
        inside = shapely.contains_xy(geometry, lons, lats)
        if inside.any():
            found.append(np.column_stack([lats[inside], lons[inside]]))
            have += int(inside.sum())
        if have >= count:
            break
    if have < count:  # a thin or odd shape: top up with its representative point
        found.append(np.tile([anchor.y, anchor.x], (count - have, 1)))
    return np.round(np.concatenate(found)[:count], 6)


def build_data(table: DivisionTable, total: int, seed: int = 2_025) -> DataSet:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    counties: list[County] = []
    weights: list[float] = []
    for province in PROVINCES:
        for county in table.counties_in_province(province, COVERAGE_LEVELS):
            district = county.level is DivisionLevel.DISTRICT
            if not district and rng.random() < EMPTY_COUNTY_SHARE:
                continue
            counties.append(county)
            weights.append(DISTRICT_WEIGHT if district else 1.0)
    scale = total / sum(weights)
    counts = [max(1, round(w * scale)) for w in weights]
    counts[0] += total - sum(counts)

    now = datetime.now(UTC)
    operators: list[dict[str, Any]] = []
    codes: set[str] = set()
    while len(operators) < OPERATORS:
        division = rng.choice(counties).code
        code = make_credit_code(division, rng=rng)
        if code in codes:
            continue
        codes.add(code)
        operators.append(
            {
                "participant_id": new_id(),
                "credit_code": code,
                "legal_name": f"回收企业 {len(operators)}",
                "short_name": "",
                "roles": "RECYCLING_OUTLET_OPERATOR",
                "supervised_division_code": "",
                "status": "ACTIVE",
                "registration_division_code": division,
                "qualifications_json": "[]",
                "contact_phone": "",
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
        )

    kinds = [kind for kind, _ in TYPE_WEIGHTS]
    kind_weights = [weight for _, weight in TYPE_WEIGHTS]
    facilities: list[dict[str, Any]] = []
    public: list[tuple[float, float]] = []
    for county, count in zip(counties, counts, strict=True):
        for lat, lon in _points_in(table, county, count, nrng):
            kind = rng.choices(kinds, kind_weights)[0]
            status = "LISTED" if rng.random() < LISTED_SHARE else rng.choice(OTHER_ACCREDITATIONS)
            operator = rng.choice(operators)
            index = len(facilities)
            if status == "LISTED" and kind in PUBLIC_TYPES:
                public.append((float(lat), float(lon)))
            facilities.append(
                {
                    "facility_id": new_id(),
                    "operator_id": operator["participant_id"],
                    "operator_facility_code": f"B-{index:06d}",
                    "name": f"回收服务网点 {index}",
                    "facility_type": kind,
                    "county_code": county.code,
                    "latitude": float(lat),
                    "longitude": float(lon),
                    "address": f"{county.name} 测试路 {index % 999 + 1} 号",
                    "opening_hours": "09:00-18:00",
                    "phone": f"0{rng.randrange(10, 99)}-{rng.randrange(10**7, 10**8)}",
                    "recycling_modes": rng.choice(("DROP_OFF,TRADE_IN", "TRADE_IN", "DOOR_TO_DOOR,DROP_OFF", "")),
                    "max_stock_kg": 500.0,
                    "max_stock_units": 60,
                    "max_dwell_days": 30,
                    "fire_class": "B",
                    "has_discharge_equipment": rng.random() < 0.5,
                    "has_monitoring": rng.random() < 0.7,
                    "accreditation_status": status,
                    "accreditation_changed_by": "",
                    "accreditation_reason": "benchmark data",
                    "accreditation_changed_at": now,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
    return DataSet(facilities, operators, np.array(public), len(counties))


async def load_database(url: str, data: DataSet) -> None:
    """Migrate a fresh database and insert the data set (SQLAlchemy Core executemany, 5,000 per batch)."""
    from services.registry.service import MIGRATIONS

    database = Database(url)
    try:
        await migrate(database, MIGRATIONS)
        async with database.engine.begin() as connection:
            await connection.execute(insert(ParticipantRow.metadata.tables["participant"]), data.operators)
        for start in range(0, len(data.facilities), 5_000):
            async with database.engine.begin() as connection:
                await connection.execute(
                    insert(FacilityRow.metadata.tables["facility"]), data.facilities[start : start + 5_000]
                )
    finally:
        await database.dispose()


# ---- the registry in its own process ---------------------------------------------------------------------


async def serve(database_url: str, nats_url: str, data_dir: Path) -> None:
    """Run the real registry runtime until SIGTERM/SIGINT; print `READY <port>` once it listens."""
    from services.registry.service import DEFINITION

    await serve_runtime(DEFINITION, database_url, nats_url, data_dir)


@contextlib.contextmanager
def registry_server(database_url: str, nats_url: str, data_dir: Path) -> Iterator[str]:
    argv = [
        sys.executable, "-m", "bench.registry", "--serve", "--database-url", database_url, "--nats-url", nats_url,
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    with subprocess_server(argv, timeout=60) as target:
        yield target


# ---- requests and checks ---------------------------------------------------------------------------------


def haversine_m(lat: float, lon: float, points: np.ndarray) -> np.ndarray:
    phi1, phi2 = math.radians(lat), np.radians(points[:, 0])
    dphi = phi2 - phi1
    dlmb = np.radians(points[:, 1] - lon)
    h = np.sin(dphi / 2) ** 2 + math.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    result: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(1.0, h)))
    return result


def nearest_requests(data: DataSet, count: int, seed: int = 7) -> list[pb.FindNearestOutletsRequest]:
    """Points near the facilities: a listed outlet's position moved by a few kilometres."""
    rng = np.random.default_rng(seed)
    picks = data.public_points[rng.integers(0, len(data.public_points), count)]
    moved = picks + rng.normal(0.0, 0.02, picks.shape)  # about 2 km
    return [
        pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=float(lat), longitude=float(lon)))
        for lat, lon in moved
    ]


async def check_nearest(target: str, data: DataSet, requests: Sequence[pb.FindNearestOutletsRequest]) -> None:
    """The answers are the brute-force nearest listed outlets (so the figure is of correct answers)."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        for request in requests:
            reply = await stub.FindNearestOutlets(request, timeout=10)
            lat, lon = request.location.latitude, request.location.longitude
            distances = np.sort(haversine_m(lat, lon, data.public_points))
            expected = [d for d in distances[:10] if d <= 50_000]
            got = [outlet.distance_m for outlet in reply.outlets]
            if len(got) != len(expected) or any(abs(a - b) > 1.0 for a, b in zip(got, expected, strict=True)):
                raise RuntimeError(f"FindNearestOutlets at ({lat}, {lon}): {got[:3]}… expected {expected[:3]}…")


async def check_coverage(target: str, table: DivisionTable, data: DataSet) -> None:
    covered = [
        (f["county_code"], f["facility_type"], f["accreditation_status"])
        for f in data.facilities
        if f["facility_type"] in COVERAGE_TYPES
    ]
    expected = compute_coverage(table.counties_in_province(COVERAGE_PROVINCE, COVERAGE_LEVELS), covered)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        reply = await stub.GetCountyCoverage(pb.GetCountyCoverageRequest(province_code=COVERAGE_PROVINCE), timeout=10)
    if (reply.county_count, reply.covered_count) != (expected.total, expected.covered):
        raise RuntimeError(f"coverage {reply.covered_count}/{reply.county_count}, expected {expected}")
    log(f"registry: Jiangsu coverage {reply.covered_count}/{reply.county_count} counties, as expected")


def register_requests(data: DataSet, table: DivisionTable, count: int, seed: int) -> list[tuple[bytes, Caller]]:
    """`count` new facilities (serialized requests) with their operator (signed just before the measurement)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    by_code = {f["county_code"] for f in data.facilities}
    counties = [table.counties[code] for code in sorted(by_code)]
    requests = []
    for index in range(count):
        operator = rng.choice(data.operators)
        county = rng.choice(counties)
        (lat, lon), *_ = _points_in(table, county, 1, nrng)
        facility = pb.Facility(
            operator_id=operator["participant_id"],
            operator_facility_code=f"R-{seed}-{index:06d}",
            name=f"新建回收网点 {index}",
            facility_type=pb.FACILITY_TYPE_RECYCLING_OUTLET,
            county_code=county.code,
            location=pb.GeoPoint(latitude=float(lat), longitude=float(lon)),
            address="测试路 1 号",
            opening_hours="09:00-18:00",
            phone="025-8888 0000",
            recycling_modes=[pb.RECYCLING_MODE_TRADE_IN, pb.RECYCLING_MODE_DROP_OFF],
            storage_limits=pb.StorageLimits(max_stock_kg=500, max_stock_units=60, max_dwell_days=30),
            safety=pb.SafetyAttributes(fire_class="B", has_discharge_equipment=True, has_monitoring=True),
        )
        caller = Caller(participant_id=operator["participant_id"], roles=frozenset({"RECYCLING_OUTLET_OPERATOR"}))
        requests.append((pb.RegisterFacilityRequest(facility=facility).SerializeToString(), caller))
    return requests


async def register_throughput(
    target: str, requests: Sequence[tuple[bytes, Any]], warmup: int, concurrency: int
) -> float:
    """RegisterFacility calls/s: the closed loop of `bench.grpc_reference.unary_throughput`, with each
    call's identity in its metadata (the bare loop sends none). The first `warmup` requests are not timed."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REGISTER_METHOD)
        await channel.channel_ready()

        async def calls(chunk: Sequence[tuple[bytes, Any]]) -> None:
            pending = iter(chunk)

            async def worker() -> None:
                for payload, metadata in pending:  # one shared iterator: each request is sent once
                    await call(payload, metadata=metadata)

            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(chunk))):
                    group.create_task(worker())

        await calls(requests[:warmup])
        started = time.perf_counter()
        await calls(requests[warmup:])
        elapsed = time.perf_counter() - started
    return (len(requests) - warmup) / elapsed


def _show_latency(latencies: Sequence[float]) -> str:
    return f"p50 {percentile(latencies, 50) * 1000:.3f} ms, p99 {percentile(latencies, 99) * 1000:.3f} ms"


# ---- the run -----------------------------------------------------------------------------------------------


async def run(ctx: RunContext) -> None:
    sizes = QUICK if ctx.quick else FULL
    want_nearest = ctx.selected("registry.nearest_p50_ms") or ctx.selected("registry.nearest_p99_ms")
    want_coverage = ctx.selected("registry.coverage_ms")
    want_seq = ctx.selected("registry.register_facilities_per_s_seq")
    want_c16 = ctx.selected("registry.register_facilities_per_s_c16")

    started = time.perf_counter()
    table = await asyncio.to_thread(load_division_table)
    data = await asyncio.to_thread(build_data, table, sizes.facilities)
    listed = sum(1 for f in data.facilities if f["accreditation_status"] == "LISTED")
    log(
        f"registry: {len(data.facilities):,} facilities ({listed:,} LISTED, {len(data.public_points):,} of them "
        f"public outlets) in {data.counties:,} counties of provinces {', '.join(PROVINCES)}, "
        f"{len(data.operators)} operators, built in {time.perf_counter() - started:.1f}s"
    )
    ctx.facts["Registry"] = (
        f"{len(data.facilities):,} facilities ({len(data.public_points):,} LISTED outlets, co-op stations and "
        f"storage points) in {data.counties:,} counties of provinces {', '.join(PROVINCES)}; SQLite; the registry "
        "runtime in its own process with its default settings (spans to local JSON lines, outbox relay and "
        "directory consumer running)"
    )
    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-registry-") as directory:
        root = Path(directory)
        url = f"sqlite+aiosqlite:///{root / 'registry.db'}"
        started = time.perf_counter()
        await load_database(url, data)
        log(f"registry: database migrated and loaded in {time.perf_counter() - started:.1f}s")
        with NatsServer(store_dir=root / "nats") as nats, reference_server() as bare:
            started = time.perf_counter()
            with registry_server(url, nats.url, root / "data") as target:
                if not await wait_serving(target, timeout=60):
                    raise RuntimeError(f"the registry at {target} is not SERVING")
                log(f"registry: SERVING at {target} after {time.perf_counter() - started:.1f}s (separate process)")
                if want_nearest or want_coverage:
                    await _queries(ctx, sizes, table, data, bare, target, want_nearest, want_coverage)
                if want_seq or want_c16:
                    await _registrations(ctx, sizes, table, data, bare, target, want_seq, want_c16)


def repeats_of(ctx: RunContext) -> int:
    """The registry's figures take up to ~30 s a repeat at full size: best of 3 (not 5) keeps the module
    under two minutes. `--quick` runs once, as everywhere."""
    return min(ctx.repeats, REGISTRY_REPEATS)


async def _latencies(ctx: RunContext, label: str, measure: Callable[[], Awaitable[list[float]]]) -> list[list[float]]:
    return await measure_repeatedly(
        label, repeats_of(ctx), measure, _show_latency, other_cpu=ctx.other_cpu, helpers=ctx.helper_pids
    )


async def _queries(
    ctx: RunContext,
    sizes: Sizes,
    table: DivisionTable,
    data: DataSet,
    bare: str,
    target: str,
    want_nearest: bool,
    want_coverage: bool,
) -> None:
    # The reference: bare unary latency, one call in flight, the repeat with the lowest p50.
    def bare_latencies() -> Awaitable[list[float]]:
        return unary_latencies(bare, reference_payload(), sizes.nearest_queries)

    runs = await _latencies(
        ctx, f"registry reference: bare unary latency, {sizes.nearest_queries} calls one at a time", bare_latencies
    )
    best = min(runs, key=lambda latencies: percentile(latencies, 50))
    bare_p50, bare_p99 = percentile(best, 50) * 1000, percentile(best, 99) * 1000
    ctx.facts["Registry reference"] = (
        f"bare grpc.aio unary latency in the same run: p50 {bare_p50:.3f} ms, p99 {bare_p99:.3f} ms"
    )
    reference = "grpc.unary_latency_{}_ms (bare grpc.aio, 1 in flight, same run)"

    if want_nearest:
        requests = nearest_requests(data, sizes.nearest_warmup + sizes.nearest_queries)
        await check_nearest(target, data, requests[:20])
        log("registry: FindNearestOutlets agrees with brute force on 20 points")
        payloads = [request.SerializeToString() for request in requests]

        def nearest_latencies() -> Awaitable[list[float]]:
            return unary_latencies(
                target, payloads, sizes.nearest_queries, method=NEAREST_METHOD, warmup=sizes.nearest_warmup
            )

        runs = await _latencies(
            ctx, f"registry FindNearestOutlets, {sizes.nearest_queries} points one at a time", nearest_latencies
        )
        best = min(runs, key=lambda latencies: percentile(latencies, 50))
        for name, pct, bare_value in (
            ("registry.nearest_p50_ms", 50, bare_p50),
            ("registry.nearest_p99_ms", 99, bare_p99),
        ):
            ctx.samples[name] = [percentile(latencies, pct) * 1000 for latencies in runs]
            value = percentile(best, pct) * 1000
            ctx.emit(Result(name, value, "ms", reference.format(f"p{pct}"), ratio_of(value, bare_value)))

    if want_coverage:
        await check_coverage(target, table, data)
        for name, province in (
            ("registry.coverage_ms_province", COVERAGE_PROVINCE),
            ("registry.coverage_ms_national", ""),
        ):
            payload = pb.GetCountyCoverageRequest(province_code=province).SerializeToString()
            scope = f"province {province}" if province else "the whole country"
            medians = await measure_repeatedly(
                f"registry GetCountyCoverage for {scope}, median of {sizes.coverage_calls} calls",
                repeats_of(ctx),
                _median_ms(target, payload, sizes.coverage_calls),
                lambda median: f"median {median:.3f} ms",
                other_cpu=ctx.other_cpu,
                helpers=ctx.helper_pids,
            )
            ctx.samples[name] = medians
            value = min(medians)
            ctx.emit(Result(name, value, "ms", reference.format("p50"), ratio_of(value, bare_p50)))


def _median_ms(target: str, payload: bytes, calls: int) -> Callable[[], Awaitable[float]]:
    async def measure() -> float:
        latencies = await unary_latencies(target, payload, calls, method=COVERAGE_METHOD, warmup=3)
        return statistics.median(latencies) * 1000

    return measure


async def _registrations(
    ctx: RunContext,
    sizes: Sizes,
    table: DivisionTable,
    data: DataSet,
    bare: str,
    target: str,
    want_seq: bool,
    want_c16: bool,
) -> None:
    plans: list[tuple[str, int, int, int]] = []
    if want_seq:
        plans.append(("registry.register_facilities_per_s_seq", 1, sizes.register_seq, sizes.reference_calls_seq))
    if want_c16:
        plans.append(
            ("registry.register_facilities_per_s_c16", CONCURRENCY, sizes.register_c16, sizes.reference_calls_c16)
        )
    repeats = repeats_of(ctx)
    for name, concurrency, total, reference_total in plans:
        bare_rate = await best_of(
            f"registry reference: bare unary x{reference_total} @{concurrency} in flight",
            repeats,
            _bare_rate(bare, reference_total, concurrency),
            "calls/s",
            other_cpu=ctx.other_cpu,
            helpers=ctx.helper_pids,
        )
        warmup = max(concurrency * 2, total // 10)
        # Every repeat registers new facilities (an operator's code may be used once).
        batches = [register_requests(data, table, warmup + total, seed=concurrency * 100 + r) for r in range(repeats)]
        samples: list[float] = []
        rate = await best_of(
            f"registry RegisterFacility x{total} @{concurrency} in flight",
            repeats,
            _register_rate(target, batches, warmup, concurrency, samples),
            "calls/s",
            other_cpu=ctx.other_cpu,
            helpers=ctx.helper_pids,
        )
        ctx.samples[name] = samples
        ctx.emit(
            Result(
                name,
                rate,
                "calls/s",
                reference=f"grpc.unary_calls_per_s ({concurrency} in flight, bare grpc.aio, same run)",
                ratio=ratio_of(rate, bare_rate),
            )
        )


def _bare_rate(target: str, total: int, concurrency: int) -> Callable[[], Awaitable[float]]:
    def measure() -> Awaitable[float]:
        return bare_unary_throughput(target, reference_payload(), total, concurrency, warmup=200)

    return measure


def _register_rate(
    target: str,
    batches: Sequence[Sequence[tuple[bytes, Caller]]],
    warmup: int,
    concurrency: int,
    samples: list[float],
) -> Callable[[], Awaitable[float]]:
    remaining = iter(batches)

    async def measure() -> float:
        # Signed now, outside the timed loop: a signature is accepted for five minutes, not for every repeat.
        signed = [(payload, signed_metadata(caller)) for payload, caller in next(remaining)]
        rate = await register_throughput(target, signed, warmup, concurrency)
        samples.append(rate)
        return rate

    return measure


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The registry runtime for the benchmark (prints READY <port>).")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.database_url, args.nats_url, args.data_dir))


if __name__ == "__main__":
    main()
