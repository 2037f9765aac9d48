"""`greenmesh k8s`: Kubernetes helpers. `overlay <code>` writes the Kustomize overlay of one province.

The overlay sits on `deploy/k8s/base` and sets what differs between provinces: the namespace `greenmesh-<code>`,
the label `greenmesh.io/province` (also on the namespace: the national hub admits leaf connections from the
namespaces that carry it), `GREENMESH_PROVINCE`, the OpenTelemetry resource attribute `greenmesh.province`, the
JetStream domain `p<code>` of the province's NATS (and, if given, the national hub's leaf URL), the names of the
cluster-scoped RBAC objects, and replica and resource sizing. With `--postgres cloudnative-pg` the overlay adds the
Kustomize Component `deploy/k8s/components/cloudnative-pg`: a 3-instance CloudNativePG `Cluster` replaces the
base's one-instance PostgreSQL StatefulSet. The committed example overlays are exactly this command's output
(tests/deploy checks it), so edit this module, not the generated files.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from meshkit.config import Component
from meshkit.national import province_domain
from meshkit.provinces import MAINLAND_PROVINCES, PROVINCES

app = typer.Typer(help="Kubernetes: generate the Kustomize overlay of a province.", no_args_is_help=True)

DEFAULT_OVERLAYS_DIR = Path("deploy/k8s/overlays")


class Postgres(StrEnum):
    """Who runs the province's PostgreSQL."""

    # the base's one-instance StatefulSet `postgres`
    STATEFULSET = "statefulset"
    # a CloudNativePG Cluster `postgres` of 3 instances (the Component deploy/k8s/components/cloudnative-pg; the
    # CloudNativePG operator must be installed in the cluster)
    CLOUDNATIVE_PG = "cloudnative-pg"


# the Kustomize Component each choice adds to the overlay, relative to deploy/k8s/overlays/province-<code>
POSTGRES_COMPONENTS: dict[Postgres, str] = {Postgres.CLOUDNATIVE_PG: "../../components/cloudnative-pg"}


@dataclass(frozen=True)
class Size:
    """Replicas and resources of each component for one tier of province."""

    name: str
    replicas: dict[Component, int]
    hpa_max: dict[Component, int]
    # component -> (cpu request, memory request, cpu limit, memory limit)
    resources: dict[Component, tuple[str, str, str, str]]


SIZES: dict[str, Size] = {
    "small": Size(
        "small",
        replicas={Component.GATEWAY: 2, Component.REGISTRY: 2, Component.FLOWS: 2, Component.ENERGY: 2},
        hpa_max={Component.GATEWAY: 4, Component.FLOWS: 4},
        resources={
            Component.GATEWAY: ("200m", "256Mi", "1", "512Mi"),
            Component.REGISTRY: ("200m", "384Mi", "1", "768Mi"),
            Component.FLOWS: ("250m", "512Mi", "1", "1Gi"),
            Component.ENERGY: ("200m", "512Mi", "1", "1Gi"),
        },
    ),
    "medium": Size(
        "medium",
        replicas={Component.GATEWAY: 2, Component.REGISTRY: 2, Component.FLOWS: 3, Component.ENERGY: 2},
        hpa_max={Component.GATEWAY: 6, Component.FLOWS: 8},
        resources={
            Component.GATEWAY: ("250m", "256Mi", "1", "512Mi"),
            Component.REGISTRY: ("250m", "384Mi", "1", "768Mi"),
            Component.FLOWS: ("500m", "768Mi", "2", "1536Mi"),
            Component.ENERGY: ("250m", "512Mi", "1", "1Gi"),
        },
    ),
    "large": Size(
        "large",
        replicas={Component.GATEWAY: 3, Component.REGISTRY: 2, Component.FLOWS: 4, Component.ENERGY: 3},
        hpa_max={Component.GATEWAY: 10, Component.FLOWS: 12},
        resources={
            Component.GATEWAY: ("500m", "384Mi", "2", "768Mi"),
            Component.REGISTRY: ("500m", "512Mi", "2", "1Gi"),
            Component.FLOWS: ("1", "1Gi", "4", "2Gi"),
            Component.ENERGY: ("500m", "768Mi", "2", "1536Mi"),
        },
    ),
}

# The most populous provinces (the most e-bikes, so the most battery-flow reports) get the large tier; the
# least populous the small one; all others medium. Operators may edit the generated sizing afterwards.
LARGE = frozenset({"32", "33", "37", "41", "44", "51"})
SMALL = frozenset({"46", "54", "63", "64"})


def size_of(code: str) -> Size:
    if code in LARGE:
        return SIZES["large"]
    if code in SMALL:
        return SIZES["small"]
    return SIZES["medium"]


class UnknownProvince(ValueError):
    pass


def check_code(code: str) -> str:
    """A code of one of the 31 mainland provincial-level divisions, which each run a deployment."""
    if code not in MAINLAND_PROVINCES:
        raise UnknownProvince(
            f"{code!r} is not the GB/T 2260 code of one of the 31 mainland provincial-level divisions "
            f"(e.g. 32 Jiangsu, 44 Guangdong, 51 Sichuan); known: {', '.join(MAINLAND_PROVINCES)}"
        )
    return code


def namespace_of(code: str) -> str:
    return f"greenmesh-{code}"


# The schemes nats-server accepts in a leaf-node remote's URL.
LEAF_URL_SCHEMES = frozenset({"nats-leaf", "nats", "tls", "ws", "wss"})


class BadLeafUrl(ValueError):
    pass


def check_leaf_url(url: str) -> str:
    """A URL of the national hub's leaf-node listener, e.g. nats-leaf://hub.example.cn:7422."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in LEAF_URL_SCHEMES or not parts.hostname or port is None or any(c.isspace() for c in url):
        schemes = ", ".join(sorted(LEAF_URL_SCHEMES))
        raise BadLeafUrl(f"{url!r} is not a leaf-node URL <scheme>://<host>:<port> (scheme one of {schemes})")
    return url


def _json_patch(kind: str, name: str, operations: list[tuple[str, str]]) -> list[str]:
    lines = ["  - target:", f"      kind: {kind}", f"      name: {name}", "    patch: |-"]
    for path, value in operations:
        lines += ["      - op: replace", f"        path: {path}", f"        value: {value}"]
    return lines


def render_overlay(
    code: str, national_leaf_url: str | None = None, postgres: Postgres = Postgres.STATEFULSET
) -> dict[str, str]:
    """The overlay's files (name -> text) for the province `code`; `national_leaf_url` replaces the base's URL of
    the national hub (its Service nats-leaf in the namespace greenmesh-national of the same cluster); `postgres`
    chooses who runs PostgreSQL (the base's StatefulSet, or CloudNativePG through its Component)."""
    check_code(code)
    if national_leaf_url is not None:
        check_leaf_url(national_leaf_url)
    postgres = Postgres(postgres)
    size = size_of(code)
    namespace = namespace_of(code)
    command = f"greenmesh k8s overlay {code}"
    if national_leaf_url is not None:
        command += f" --national-leaf-url {national_leaf_url}"
    if postgres is not Postgres.STATEFULSET:
        command += f" --postgres {postgres.value}"
    header = [
        f"# GreenMesh, province {code} ({PROVINCES[code]}), sizing tier {size.name}.",
        f"# Generated by `{command}`: regenerate it instead of editing by hand.",
    ]
    lines = [
        *header,
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        f"namespace: {namespace}",
        "resources:",
        "  - ../../base",
        "  - namespace.yaml",
    ]
    if postgres in POSTGRES_COMPONENTS:
        lines += ["components:", f"  - {POSTGRES_COMPONENTS[postgres]}"]
    lines += [
        "labels:",
        "  - pairs:",
        f'      greenmesh.io/province: "{code}"',
        "    includeSelectors: false",
        "    includeTemplates: true",
        "configMapGenerator:",
        "  - name: greenmesh-config",
        "    behavior: merge",
        "    literals:",
        f"      - GREENMESH_PROVINCE={code}",
        f"      - OTEL_RESOURCE_ATTRIBUTES=greenmesh.province={code},deployment.environment=production",
        # the environment of the province's NATS servers: its JetStream domain (and the hub, if elsewhere)
        "  - name: nats-national",
        "    behavior: merge",
        "    literals:",
        f"      - JS_DOMAIN={province_domain(code)}",
    ]
    if national_leaf_url is not None:
        lines.append(f"      - NATIONAL_LEAF_URL={national_leaf_url}")
    lines += [
        "replicas:",
    ]
    for component, count in size.replicas.items():
        lines += [f"  - name: {component.value}", f"    count: {count}"]
    lines.append("patches:")
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        lines += _json_patch(kind, "greenmesh-otel-collector", [("/metadata/name", f"greenmesh-otel-collector-{code}")])
    for component, maximum in size.hpa_max.items():
        minimum = size.replicas[component]
        lines += _json_patch(
            "HorizontalPodAutoscaler",
            component.value,
            [("/spec/minReplicas", str(minimum)), ("/spec/maxReplicas", str(maximum))],
        )
    for component, (cpu_request, memory_request, cpu_limit, memory_limit) in size.resources.items():
        base = "/spec/template/spec/containers/0/resources"
        lines += _json_patch(
            "Deployment",
            component.value,
            [
                (f"{base}/requests/cpu", f'"{cpu_request}"'),
                (f"{base}/requests/memory", memory_request),
                (f"{base}/limits/cpu", f'"{cpu_limit}"'),
                (f"{base}/limits/memory", memory_limit),
            ],
        )
    namespace_yaml = [
        *header,
        "apiVersion: v1",
        "kind: Namespace",
        "metadata:",
        f"  name: {namespace}",
        "  labels:",
        "    app.kubernetes.io/part-of: greenmesh",
        f'    greenmesh.io/province: "{code}"',
        # the pods run with the restricted profile's settings, so the namespace can enforce it
        "    pod-security.kubernetes.io/enforce: restricted",
        "    pod-security.kubernetes.io/enforce-version: latest",
    ]
    return {"kustomization.yaml": "\n".join(lines) + "\n", "namespace.yaml": "\n".join(namespace_yaml) + "\n"}


def write_overlay(
    code: str, output: Path, national_leaf_url: str | None = None, postgres: Postgres = Postgres.STATEFULSET
) -> Path:
    """Write the overlay into `output/province-<code>` and return that directory."""
    files = render_overlay(code, national_leaf_url, postgres)  # checks the arguments before anything is written
    target = output / f"province-{code}"
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (target / name).write_text(text, encoding="utf-8")
    return target


@app.command()
def overlay(
    code: Annotated[str, typer.Argument(help="GB/T 2260 two-digit province code, e.g. 32 (Jiangsu)")],
    output: Annotated[
        Path, typer.Option(help="directory of overlays; the overlay goes to <output>/province-<code>")
    ] = DEFAULT_OVERLAYS_DIR,
    national_leaf_url: Annotated[
        str | None,
        typer.Option(
            help="the national hub's leaf-node URL, if not the base's "
            "nats-leaf://nats-leaf.greenmesh-national.svc.cluster.local:7422 (the same cluster)"
        ),
    ] = None,
    postgres: Annotated[
        Postgres,
        typer.Option(
            help="who runs PostgreSQL: the base's one-instance StatefulSet, or a 3-instance CloudNativePG Cluster "
            "(adds the component deploy/k8s/components/cloudnative-pg; needs the CloudNativePG operator)"
        ),
    ] = Postgres.STATEFULSET,
) -> None:
    """Write the Kustomize overlay of one province (namespace, labels, settings, NATS domain, sizing)."""
    try:
        target = write_overlay(code, output, national_leaf_url, postgres)
    except (UnknownProvince, BadLeafUrl) as error:
        typer.echo(f"greenmesh: {error}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {target} (province {code} {PROVINCES[code]}, sizing {size_of(code).name}, PostgreSQL {postgres.value})"
    )
    typer.echo(f"render: kubectl kustomize {target}   apply: kubectl apply -k {target}")
