"""`.greenmesh/mesh.json`: where `greenmesh up` says the running mesh listens, for `greenmesh status`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

MESH_FILE = "mesh.json"


@dataclass
class MeshEndpoints:
    province: str
    nats_url: str
    grpc: dict[str, str]  # component -> host:port
    gateway_http: str
    pid: int

    def save(self, data_dir: Path) -> Path:
        path = data_dir / MESH_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, data_dir: Path) -> MeshEndpoints | None:
        path = data_dir / MESH_FILE
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def component_address(component: str) -> tuple[str, str]:
    """(host:port of a component's gRPC server, where it came from): the running mesh's mesh.json (what
    `greenmesh up` wrote), else the `GREENMESH_<COMPONENT>_ADDR` setting."""
    from meshkit.config import load_settings

    settings = load_settings()
    try:
        endpoints = MeshEndpoints.load(settings.data_dir)
    except (OSError, ValueError, TypeError):
        endpoints = None
    if endpoints is not None and component in endpoints.grpc:
        return endpoints.grpc[component], str(settings.data_dir / MESH_FILE)
    return str(getattr(settings, f"{component}_addr")), f"GREENMESH_{component.upper()}_ADDR"
