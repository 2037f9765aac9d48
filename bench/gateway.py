"""The gateway's cost: REST/JSON and gRPC pass-through against calling the service directly.

One RPC throughout: the registry's `GetParticipant` of one participant (a primary-key read that returns a
participant with its status history), so what differs is only the path a call takes:
- direct: gRPC to the registry with a signed identity (what the gateway itself sends);
- pass-through: gRPC to the gateway with an API key, forwarded by method path as bytes;
- REST: `GET /v1/participants/{id}` with the key, transcoded to gRPC and the answer to JSON.
Throughput with 32 calls in flight (32 keep-alive HTTP/1.1 connections for REST; one HTTP/2 channel for gRPC),
latency one call at a time. The registry and the gateway run in their own processes with default settings,
except the gateway's rate limit, raised so that it does not throttle the benchmark; the load comes from this
process. The HTTP client is a minimal keep-alive client on asyncio streams, so that the client's own cost is
about that of grpc.aio's and the comparison is of the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc

from bench.common import (
    BENCH_CALLER_KEY,
    Result,
    RunContext,
    log,
    percentile,
    ratio_of,
    serve_runtime,
    signed_metadata,
)
from bench.grpc_reference import subprocess_server
from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.caller import Caller
from meshkit.localinfra import NatsServer, free_port

BENCHES: tuple[str, ...] = (
    "gateway.rest_calls_per_s_c32",
    "gateway.passthrough_calls_per_s_c32",
    "gateway.rest_cpu_ms_per_call",
    "gateway.passthrough_cpu_ms_per_call",
    "gateway.rest_p50_ms",
    "gateway.passthrough_p50_ms",
    "gateway.rest_p99_ms",
)
METHOD = "/greenmesh.registry.v1.RegistryService/GetParticipant"
CONCURRENCY = 32
PLATFORM = Caller(participant_id="00000000-0000-7000-8000-000000000001", roles=frozenset({"PLATFORM_OPERATOR"}))


def calls_of(ctx: RunContext) -> tuple[int, int]:
    """(calls per throughput sample, calls per latency sample)."""
    return (1_000, 300) if ctx.quick else (6_000, 2_000)


# ---- the servers -------------------------------------------------------------------------------------------


async def serve(component: str, database_url: str, nats_url: str, data_dir: Path) -> None:
    if component == "registry":
        from services.registry.service import DEFINITION
    else:
        from gateway.service import DEFINITION
    await serve_runtime(
        DEFINITION, database_url, nats_url, data_dir, settle=True, pid_file=data_dir / f"{component}.pid"
    )


class ProcessCpu:
    """CPU seconds (user + system) a server process has used, read from /proc through psutil."""

    def __init__(self, pid_file: Path) -> None:
        import psutil

        self.process = psutil.Process(int(pid_file.read_text(encoding="utf-8")))

    def seconds(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)


@contextlib.contextmanager
def component_server(component: str, root: Path, nats_url: str, env: dict[str, str]) -> Iterator[str]:
    argv = [
        sys.executable, "-m", "bench.gateway", "--serve", component, "--database-url",
        f"sqlite+aiosqlite:///{root / f'{component}.db'}", "--nats-url", nats_url, "--data-dir", str(root / "data"),
    ]  # fmt: skip
    with subprocess_server(argv, timeout=60, env=env) as target:
        yield target


# ---- the clients -------------------------------------------------------------------------------------------


async def grpc_throughput(target: str, request: bytes, metadata: tuple[tuple[str, str], ...], total: int) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        await channel.channel_ready()

        async def worker(count: int) -> None:
            for _ in range(count):
                await call(request, metadata=metadata, timeout=30)

        await asyncio.gather(*(worker(50) for _ in range(CONCURRENCY)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(total // CONCURRENCY) for _ in range(CONCURRENCY)))
        return (total // CONCURRENCY * CONCURRENCY) / (time.perf_counter() - started)


async def grpc_latencies(target: str, request: bytes, metadata: tuple[tuple[str, str], ...], total: int) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        await channel.channel_ready()
        for _ in range(100):
            await call(request, metadata=metadata, timeout=30)
        latencies = []
        for _ in range(total):
            started = time.perf_counter()
            await call(request, metadata=metadata, timeout=30)
            latencies.append(time.perf_counter() - started)
        return latencies


class HttpConnection:
    """One keep-alive HTTP/1.1 connection sending the same GET, reading each answer by its Content-Length."""

    def __init__(self, host: str, port: int, path: str, api_key: str) -> None:
        self.address = (host, port)
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(*self.address)

    async def get(self) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        status = await self.reader.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the gateway answered {status!r}")
        length = 0
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


async def rest_throughput(host: str, port: int, path: str, api_key: str, total: int) -> float:
    connections = [HttpConnection(host, port, path, api_key) for _ in range(CONCURRENCY)]
    await asyncio.gather(*(c.open() for c in connections))
    try:

        async def worker(connection: HttpConnection, count: int) -> None:
            for _ in range(count):
                await connection.get()

        await asyncio.gather(*(worker(c, 50) for c in connections))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, total // CONCURRENCY) for c in connections))
        return (total // CONCURRENCY * CONCURRENCY) / (time.perf_counter() - started)
    finally:
        await asyncio.gather(*(c.close() for c in connections))


async def rest_latencies(host: str, port: int, path: str, api_key: str, total: int) -> list[float]:
    connection = HttpConnection(host, port, path, api_key)
    await connection.open()
    try:
        for _ in range(100):
            await connection.get()
        latencies = []
        for _ in range(total):
            started = time.perf_counter()
            await connection.get()
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        await connection.close()


# ---- the run -----------------------------------------------------------------------------------------------


async def wait_serving(target: str, timeout: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout:g} s")


async def platform_key(registry: str) -> tuple[str, str]:
    """(the participant id, an API key) of a platform operator, made as `greenmesh credential bootstrap` does."""
    from greenmesh_cli.credentials import bootstrap
    from services.registry.domain.credit_code import make_credit_code

    made = await bootstrap(
        registry,
        make_credit_code("320102", seed="bench-gateway"),
        "基准测试平台运营方",
        "bench",
        BENCH_CALLER_KEY.encode(),
    )
    return made.participant_id, made.api_key


async def run(ctx: RunContext) -> None:
    if not any(ctx.selected(name) for name in BENCHES):
        return
    throughput_calls, latency_calls = calls_of(ctx)
    ctx.facts["Gateway"] = (
        f"registry GetParticipant (one participant, SQLite) called directly, through the gateway's gRPC port and "
        f"as GET /v1/participants/{{id}}; {CONCURRENCY} in flight for rates, one at a time for latencies; registry "
        "and gateway each in its own process, default settings but the gateway's rate limit (raised)"
    )
    with tempfile.TemporaryDirectory(prefix="greenmesh-bench-gateway-") as directory:
        root = Path(directory)
        from meshkit.db import Database
        from meshkit.migrate import migrate
        from services.registry.service import DEFINITION as REGISTRY

        database = Database(f"sqlite+aiosqlite:///{root / 'registry.db'}")
        await migrate(database, REGISTRY.migrations)
        await database.dispose()
        http_port = free_port()
        with NatsServer(store_dir=root / "nats") as nats, component_server("registry", root, nats.url, {}) as registry:
            await wait_serving(registry)
            participant_id, api_key = await platform_key(registry)
            gateway_env = {
                "GREENMESH_REGISTRY_ADDR": registry,
                "GREENMESH_HTTP_PORT": str(http_port),
                "GREENMESH_GATEWAY_RATE_PER_SECOND": "1000000",
                "GREENMESH_GATEWAY_RATE_BURST": "1000000",
            }
            with component_server("gateway", root, nats.url, gateway_env) as gateway:
                await wait_serving(gateway)
                request = pb.GetParticipantRequest(participant_id=participant_id).SerializeToString()
                key_metadata = (("authorization", f"Bearer {api_key}"),)
                path = f"/v1/participants/{participant_id}"
                await _measure(ctx, root / "data", registry, gateway, http_port, path, api_key, request,
                               key_metadata, throughput_calls, latency_calls)  # fmt: skip


async def _measure(
    ctx: RunContext,
    pids: Path,
    registry: str,
    gateway: str,
    http_port: int,
    path: str,
    api_key: str,
    request: bytes,
    key_metadata: tuple[tuple[str, str], ...],
    throughput_calls: int,
    latency_calls: int,
) -> None:
    def direct_rate() -> Awaitable[float]:
        return grpc_throughput(registry, request, signed_metadata(PLATFORM), throughput_calls)

    gateway_cpu, registry_cpu = ProcessCpu(pids / "gateway.pid"), ProcessCpu(pids / "registry.pid")
    # CPU milliseconds per call of each process, per sample: the gateway's cost beside the registry's own.
    cpu_per_call: dict[str, list[tuple[float, float]]] = {"rest": [], "passthrough": []}

    async def counted(door: str, measure: Awaitable[float]) -> float:
        gateway_before, registry_before = gateway_cpu.seconds(), registry_cpu.seconds()
        rate = await measure
        calls = throughput_calls // CONCURRENCY * CONCURRENCY + 50 * CONCURRENCY  # the warm-up is counted too
        cpu_per_call[door].append(
            (
                (gateway_cpu.seconds() - gateway_before) / calls * 1000,
                (registry_cpu.seconds() - registry_before) / calls * 1000,
            )
        )
        return rate

    def passthrough_rate() -> Awaitable[float]:
        return counted("passthrough", grpc_throughput(gateway, request, key_metadata, throughput_calls))

    def rest_rate() -> Awaitable[float]:
        return counted("rest", rest_throughput("127.0.0.1", http_port, path, api_key, throughput_calls))

    direct = await ctx.best_of("gateway.direct", "direct gRPC c32", direct_rate, "calls/s")
    reference = f"direct gRPC to the registry, same RPC, {CONCURRENCY} in flight, same run ({direct:,.0f} calls/s)"
    if ctx.selected("gateway.rest_calls_per_s_c32"):
        rest = await ctx.best_of("gateway.rest_calls_per_s_c32", "REST c32", rest_rate, "calls/s")
        ctx.emit(Result("gateway.rest_calls_per_s_c32", rest, "calls/s", reference, ratio_of(rest, direct)))
    if ctx.selected("gateway.passthrough_calls_per_s_c32"):
        through = await ctx.best_of(
            "gateway.passthrough_calls_per_s_c32", "pass-through c32", passthrough_rate, "calls/s"
        )
        ctx.emit(
            Result("gateway.passthrough_calls_per_s_c32", through, "calls/s", reference, ratio_of(through, direct))
        )
    for door, name in (
        ("rest", "gateway.rest_cpu_ms_per_call"),
        ("passthrough", "gateway.passthrough_cpu_ms_per_call"),
    ):
        if ctx.selected(name) and cpu_per_call[door]:
            gateway_ms, registry_ms = min(cpu_per_call[door])
            ctx.emit(
                Result(
                    name,
                    gateway_ms,
                    "ms CPU",
                    f"the registry's CPU per call of the same RPC, same samples ({registry_ms:.2f} ms)",
                    ratio_of(gateway_ms, registry_ms),
                )
            )

    async def p50_of(label: str, measure: Callable[[], Awaitable[list[float]]]) -> list[float]:
        samples = await ctx.measure_repeatedly(label, measure, lambda s: f"p50 {percentile(s, 50) * 1000:.2f} ms")
        return min(samples, key=lambda s: percentile(s, 50))

    direct_lat = await p50_of(
        "direct gRPC latency", lambda: grpc_latencies(registry, request, signed_metadata(PLATFORM), latency_calls)
    )
    direct_p50 = percentile(direct_lat, 50) * 1000
    ref_p50 = f"direct gRPC to the registry, one call at a time, same run (p50 {direct_p50:.2f} ms)"
    if ctx.selected("gateway.passthrough_p50_ms"):
        through_lat = await p50_of(
            "pass-through latency", lambda: grpc_latencies(gateway, request, key_metadata, latency_calls)
        )
        value = percentile(through_lat, 50) * 1000
        ctx.emit(Result("gateway.passthrough_p50_ms", value, "ms", ref_p50, ratio_of(value, direct_p50)))
    if ctx.selected("gateway.rest_p50_ms") or ctx.selected("gateway.rest_p99_ms"):
        rest_lat = await p50_of(
            "REST latency", lambda: rest_latencies("127.0.0.1", http_port, path, api_key, latency_calls)
        )
        p50 = percentile(rest_lat, 50) * 1000
        ctx.emit(Result("gateway.rest_p50_ms", p50, "ms", ref_p50, ratio_of(p50, direct_p50)))
        direct_p99 = percentile(direct_lat, 99) * 1000
        p99 = percentile(rest_lat, 99) * 1000
        ctx.emit(
            Result(
                "gateway.rest_p99_ms",
                p99,
                "ms",
                f"direct gRPC p99, same run ({direct_p99:.2f} ms)",
                ratio_of(p99, direct_p99),
            )
        )
    log(f"gateway: direct {direct:,.0f} calls/s, p50 {direct_p50:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--serve", choices=["registry", "gateway"], required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.serve, args.database_url, args.nats_url, args.data_dir))


if __name__ == "__main__":
    main()
