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
