"""`.greenmesh/mesh.json`: where `greenmesh up` says the running mesh listens, for `greenmesh status`; and the
key with which the CLI signs the identity it calls the services with."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def local_caller_key() -> bytes:
    """The key the local mesh verifies caller identities with, so the CLI can call as this machine's platform
    operator: `GREENMESH_CALLER_KEY` when set, else the key file in the data directory `greenmesh up` and its
    components use (made when missing: the mesh started later then uses it too)."""
    from meshkit.caller import signing_key
    from meshkit.config import load_settings

    return signing_key(load_settings(), warn=False)


async def identity_refusal(channel: Any, metadata: Sequence[tuple[str, str]], timeout: float = 5.0) -> Any | None:
    """Whether the service behind `channel` refuses this signed identity (the AioRpcError), else None.

    Asked with a health check, which every service answers behind the same identity check as its RPCs. A
    client stream refused at its start can reach the client as a bare INTERNAL ("Internal error from Core")
    when the refusal races the client's first writes, so the CLI asks this before it streams."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=tuple(metadata), timeout=timeout
        )
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.UNAUTHENTICATED:
            return error
    return None
