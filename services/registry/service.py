"""The registry service as the shared runtime runs it: its servicers, migrations and subscriptions.

The domain RPCs arrive with their own issue; until then the service serves health, reflection and
the mesh probe, owns its database and its JetStream stream, and consumes the other services' probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc

from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    """Add this service's own servicers; returns the gRPC service names added (none yet)."""
    return []


DEFINITION = ServiceDefinition(component=Component.REGISTRY, register=register, migrations=MIGRATIONS)
