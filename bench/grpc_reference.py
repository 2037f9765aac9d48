"""Reference: bare grpc.aio throughput and latency on this machine, with no GreenMesh code in the path.

The server runs in its own process (`python -m bench.grpc_reference --serve PORT`) so that client and
server do not share one event loop or one GIL: that is how the real services are deployed, and a shared
loop would roughly halve the figures. Handlers are generic and carry raw bytes (identity serializers),
so no generated protos are needed and protobuf cost is not part of the reference.

Reusable by later benchmarks:
  - `reference_server()` / `subprocess_server(argv)`: start a gRPC server process, yield its target;
  - `unary_throughput`, `unary_latencies`, `client_stream_throughput`: the client loops; pass another
    `method` (a real service's full method name) and pre-serialized request bytes to measure a real
    service through exactly the same loop.
"""

from __future__ import annotations

# grpcio ships no type information and types-grpcio is not a project dependency; with the stubs
# installed this line is a no-op, without it every `import grpc` is an error.
# mypy: disable-error-code="import-untyped"
import argparse
import asyncio
import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from bench.common import Result, RunContext, log, percentile, ratio_of
from meshkit.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS

SERVICE = "greenmesh.bench.v1.Reference"
UNARY_METHOD = f"/{SERVICE}/Unary"
CLIENT_STREAM_METHOD = f"/{SERVICE}/ClientStream"

# About the size of one serialized flow event.
PAYLOAD_BYTES = 300
# The unary reply: a few bytes, like a small acknowledgement message.
ACK = b"\x08\x01\x12\x08accepted"

READY_PREFIX = "READY "
REPO_ROOT = Path(__file__).resolve().parent.parent

BENCHES: tuple[str, ...] = (
    "grpc.unary_calls_per_s",
    "grpc.unary_latency_p50_ms",
    "grpc.unary_latency_p99_ms",
    "grpc.client_stream_msgs_per_s",
)

# Either one request for every call, or a sequence used round-robin (call i sends payloads[i % len]):
# real services deduplicate by event id, so benchmarks of them pass distinct pre-serialized requests.
Payloads = bytes | Sequence[bytes]


def reference_payload(size: int = PAYLOAD_BYTES) -> bytes:
    # No compression is configured, so the content does not matter; only the size does.
    return bytes(i % 251 for i in range(size))


# --- server -------------------------------------------------------------------------------------------


async def _unary(_request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return ACK


async def _client_stream(requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    count = 0
    async for _request in requests:
        count += 1
    # The count lets the client check that every message arrived.
    return count.to_bytes(8, "big")


def _handler() -> grpc.GenericRpcHandler:
    # No (de)serializers: requests and responses are the raw bytes on the wire.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        },
    )


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve the reference service until SIGTERM/SIGINT; print `READY <port>` once listening."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"{READY_PREFIX}{bound}", flush=True)
    await stop.wait()
    await server.stop(grace=1.0)


@contextlib.contextmanager
def subprocess_server(
    argv: Sequence[str], *, host: str = "127.0.0.1", timeout: float = 20.0, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run `argv` (a server that prints `READY <port>` on stdout once listening); yield `host:port`.

    The server picks its own port (port 0), so there is no race for a free port. Its stderr is
    inherited, so a crash shows up in the benchmark's output.
    """
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    process = subprocess.Popen(list(argv), stdout=subprocess.PIPE, cwd=REPO_ROOT, env=environment, text=True)
    try:
        port = _await_ready(process, timeout)
        yield f"{host}:{port}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _await_ready(process: subprocess.Popen[str], timeout: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited (status {process.wait()}) before it was ready")
            if line.startswith(READY_PREFIX):
                return int(line[len(READY_PREFIX) :])
    raise TimeoutError(f"server not ready after {timeout:.0f}s")


@contextlib.contextmanager
def reference_server(*, host: str = "127.0.0.1") -> Iterator[str]:
    """The bare reference server in its own process; yields its target, e.g. `127.0.0.1:41234`."""
    argv = [sys.executable, "-m", "bench.grpc_reference", "--serve", "0", "--host", host]
    with subprocess_server(argv, host=host) as target:
        yield target


# --- client -------------------------------------------------------------------------------------------


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


def _pick(payloads: Payloads, index: int) -> bytes:
    if isinstance(payloads, bytes):
        return payloads
    return payloads[index % len(payloads)]


class _Counter:
    """Hands out call indices to the workers; one event loop, so no lock is needed."""

    def __init__(self, start: int, stop: int) -> None:
        self.next = start
        self.stop = stop

    def take(self) -> int | None:
        if self.next >= self.stop:
            return None
        index = self.next
        self.next += 1
        return index


async def _unary_calls(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes], payloads: Payloads, start: int, count: int, concurrency: int
) -> None:
    # `concurrency` workers each keep one call in flight until `count` calls are done: a closed loop,
    # so the figure is what the server sustains, not how fast the client can queue.
    counter = _Counter(start, start + count)

    async def worker() -> None:
        while (index := counter.take()) is not None:
            await call(_pick(payloads, index))

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, count)):
            group.create_task(worker())


async def unary_throughput(
    target: str,
    payload: Payloads,
    total: int,
    concurrency: int,
    *,
    method: str = UNARY_METHOD,
    warmup: int = 500,
) -> float:
    """Unary calls per second over one channel with `concurrency` calls in flight.

    `warmup` calls (not timed) come first: they open the connection, grow the HTTP/2 windows and warm
    the server's code paths. With a payload sequence, warm-up uses indices [0, warmup) and the timed
    calls [warmup, warmup + total), so pass `warmup + total` payloads for all-distinct requests.
    """
    async with _channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await channel.channel_ready()
        await _unary_calls(call, payload, 0, warmup, concurrency)
        started = time.perf_counter()
        await _unary_calls(call, payload, warmup, total, concurrency)
        elapsed = time.perf_counter() - started
    return total / elapsed


async def unary_latencies(
    target: str, payload: Payloads, total: int, *, method: str = UNARY_METHOD, warmup: int = 200
) -> list[float]:
    """Seconds per call, one call in flight at a time (so no queueing in the figure)."""
    latencies: list[float] = []
    async with _channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        await channel.channel_ready()
        await _unary_calls(call, payload, 0, warmup, 1)
        for index in range(warmup, warmup + total):
            request = _pick(payload, index)
            started = time.perf_counter()
            await call(request)
            latencies.append(time.perf_counter() - started)
    return latencies


async def _one_stream(
    call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes], payloads: Payloads, start: int, count: int
) -> bytes:
    # A plain generator of ready-made requests: grpc.aio feeds it to the stream in its own task, and
    # picking a request costs one index lookup.
    requests = (_pick(payloads, index) for index in range(start, start + count))
    reply: bytes = await call(requests)
    return reply


async def client_stream_throughput(
    target: str,
    payload: Payloads,
    messages_per_stream: int,
    streams: int = 1,
    *,
    method: str = CLIENT_STREAM_METHOD,
    warmup_messages: int = 2_000,
) -> float:
    """Client-streaming messages per second: `streams` streams one after another over one channel.

    One warm-up stream of `warmup_messages` (not timed) comes first; payload indices as for
    `unary_throughput`.
    """
    async with _channel(target) as channel:
        call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(method)
        await channel.channel_ready()
        reply = await _one_stream(call, payload, 0, warmup_messages)
        if method == CLIENT_STREAM_METHOD and int.from_bytes(reply, "big") != warmup_messages:
            raise RuntimeError(f"reference server counted {int.from_bytes(reply, 'big')} of {warmup_messages}")
        start = warmup_messages
        started = time.perf_counter()
        for _ in range(streams):
            await _one_stream(call, payload, start, messages_per_stream)
            start += messages_per_stream
        elapsed = time.perf_counter() - started
    return streams * messages_per_stream / elapsed


# --- the reference figures -----------------------------------------------------------------------------

UNARY_CONCURRENCY = 32


def _show_latency(latencies: Sequence[float]) -> str:
    return f"p50 {percentile(latencies, 50) * 1000:.3f} ms, p99 {percentile(latencies, 99) * 1000:.3f} ms"


async def run(ctx: RunContext) -> None:
    want_stream = ctx.selected("grpc.client_stream_msgs_per_s")
    # Client streaming is reported against unary, so unary is measured whenever streaming is.
    want_unary = ctx.selected("grpc.unary_calls_per_s") or want_stream
    want_latency = ctx.selected("grpc.unary_latency_p50_ms") or ctx.selected("grpc.unary_latency_p99_ms")
    unary_total = 2_000 if ctx.quick else 20_000
    latency_total = 500 if ctx.quick else 3_000
    per_stream, streams = (2_000, 1) if ctx.quick else (10_000, 4)
    payload = reference_payload()
    ctx.facts["gRPC"] = f"grpcio {grpc.__version__}, bare generic handlers, {len(payload)}-byte payload"

    with reference_server() as target:
        log(f"grpc reference server at {target} (separate process)")
        unary = 0.0
        if want_unary:
            unary = await ctx.best_of(
                "grpc.unary_calls_per_s",
                f"grpc unary x{unary_total} @{UNARY_CONCURRENCY} in flight",
                lambda: unary_throughput(target, payload, unary_total, UNARY_CONCURRENCY),
                "calls/s",
            )
            ctx.emit(Result("grpc.unary_calls_per_s", unary, "calls/s"))
        if want_latency:
            # Best of the repeats by p50; p50 and p99 are reported from that same run.
            runs = await ctx.measure_repeatedly(
                f"grpc unary latency, {latency_total} calls one at a time",
                lambda: unary_latencies(target, payload, latency_total),
                _show_latency,
            )
            best = min(runs, key=lambda latencies: percentile(latencies, 50))
            for name, pct in (("grpc.unary_latency_p50_ms", 50), ("grpc.unary_latency_p99_ms", 99)):
                ctx.samples[name] = [percentile(latencies, pct) * 1000 for latencies in runs]
            ctx.emit(Result("grpc.unary_latency_p50_ms", percentile(best, 50) * 1000, "ms"))
            ctx.emit(Result("grpc.unary_latency_p99_ms", percentile(best, 99) * 1000, "ms"))
        if want_stream:
            stream = await ctx.best_of(
                "grpc.client_stream_msgs_per_s",
                f"grpc client stream {streams}x{per_stream} msgs",
                lambda: client_stream_throughput(target, payload, per_stream, streams),
                "msgs/s",
            )
            ctx.emit(
                Result(
                    "grpc.client_stream_msgs_per_s",
                    stream,
                    "msgs/s",
                    reference=f"grpc.unary_calls_per_s ({UNARY_CONCURRENCY} in flight, same run)",
                    ratio=ratio_of(stream, unary),
                )
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The bare grpc.aio reference server.")
    parser.add_argument("--serve", type=int, metavar="PORT", required=True, help="port to listen on; 0 picks one")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.serve, args.host))


if __name__ == "__main__":
    main()
