"""The command line as a newcomer uses it: `greenmesh up`, `status`, `traces`, and config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from meshkit.localinfra import free_port

GREENMESH = [sys.executable, "-m", "greenmesh_cli"]


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GREENMESH, *args], env=env, capture_output=True, text=True, timeout=timeout)


def clean_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
    env.update({"GREENMESH_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra})
    return env


@pytest.mark.parametrize(
    ("variable", "value"),
    [("GREENMESH_PROVINCE", "99"), ("GREENMESH_GRPC_PORT", "not-a-port"), ("GREENMESH_LOG_LEVEL", "LOUD")],
)
def test_bad_configuration_stops_with_one_line_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    result = run_cli("serve", "registry", env=clean_env(tmp_path, **{variable: value}), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"greenmesh: configuration error: {variable}: ")


def start_up(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([*GREENMESH, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_mesh(up: subprocess.Popen[str], data_dir: Path, timeout: float = 90) -> dict[str, Any]:
    """The endpoints `greenmesh up` writes once every component serves (its mesh.json)."""
    mesh_file = data_dir / "mesh.json"
    deadline = time.monotonic() + timeout
    while not mesh_file.exists():
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        assert time.monotonic() < deadline, f"mesh did not come up within {timeout:g} s"
        time.sleep(0.2)
    endpoints: dict[str, Any] = json.loads(mesh_file.read_text())
    return endpoints


@pytest.mark.slow
def test_up_brings_the_mesh_up_and_stops_it_cleanly(tmp_path: Path) -> None:
    data_dir = tmp_path / "mesh"
    http_port = free_port()
    env = clean_env(data_dir, GREENMESH_HTTP_PORT=str(http_port))
    # Different gRPC ports from any mesh a developer may be running: `up` must move off taken ports.
    up = start_up(env)
    try:
        endpoints = wait_for_mesh(up, data_dir)
        assert set(endpoints["grpc"]) == {"registry", "flows", "energy", "gateway"}
        assert endpoints["nats_url"].startswith("nats://127.0.0.1:")

        status = run_cli("status", "--probe", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("SERVING") == 4
        assert "received by flows" in status.stdout and "received by energy" in status.stdout

        with urllib.request.urlopen(f"{endpoints['gateway_http']}/v1/mesh/status", timeout=5) as response:
            body = json.loads(response.read())
        assert body["allServing"] is True
        assert {c["component"] for c in body["components"]} == {"gateway", "registry", "flows", "energy"}
        with urllib.request.urlopen(f"{endpoints['gateway_http']}/healthz", timeout=5) as response:
            assert response.status == 200

        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) == 5  # nats-server and four components
        # Every component writes JSON logs with trace ids and its spans as JSON lines.
        time.sleep(1.5)  # let the batch span processors flush
        traces = run_cli("traces", env=env)
        assert traces.returncode == 0 and "EmitProbe" in traces.stdout, traces.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, child
    assert not (data_dir / "mesh.json").exists()
    log_line = (data_dir / "logs" / "registry.log").read_text().splitlines()[0]
    assert json.loads(log_line)["component"] == "registry"


def test_traces_prints_a_tree_from_the_local_span_files(tmp_path: Path) -> None:
    trace_dir = tmp_path / "traces"
    trace_dir.mkdir()
    trace_id = "ab" * 16
    spans = [
        {
            "trace_id": trace_id,
            "span_id": "1" * 16,
            "parent_span_id": None,
            "name": "/greenmesh.x.v1.S/Call",
            "kind": "SERVER",
            "service": "registry",
            "start_ns": 0,
            "end_ns": 5_000_000,
            "status": "UNSET",
            "attributes": {},
            "links": [],
        },
        {
            "trace_id": trace_id,
            "span_id": "2" * 16,
            "parent_span_id": "1" * 16,
            "name": "send greenmesh.32.x",
            "kind": "PRODUCER",
            "service": "registry",
            "start_ns": 1_000_000,
            "end_ns": 2_000_000,
            "status": "UNSET",
            "attributes": {},
            "links": [],
        },
        {
            "trace_id": trace_id,
            "span_id": "3" * 16,
            "parent_span_id": "2" * 16,
            "name": "process greenmesh.32.x",
            "kind": "CONSUMER",
            "service": "flows",
            "start_ns": 3_000_000,
            "end_ns": 9_000_000,
            "status": "ERROR",
            "attributes": {},
            "links": [],
        },
    ]
    (trace_dir / "registry.jsonl").write_text("\n".join(json.dumps(s) for s in spans[:2]) + "\n")
    (trace_dir / "flows.jsonl").write_text(json.dumps(spans[2]) + "\n{truncated")
    env = clean_env(tmp_path)
    listing = run_cli("traces", env=env)
    assert listing.returncode == 0 and trace_id[:12] in listing.stdout
    tree = run_cli("traces", trace_id[:8], env=env)
    assert tree.returncode == 0
    lines = tree.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if needle in line) for needle in ("Call", "send", "process")]
    assert order == sorted(order)
    assert "9.0 ms" in lines[0] and "ERROR" in tree.stdout
