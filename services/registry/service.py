"""The registry service as the shared runtime runs it: its servicer, migrations and subscriptions."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc

from greenmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime, Subscription
from services.registry.domain.divisions import load_division_table
from services.registry.events import DirectoryProjector
from services.registry.servicer import RegistryServicer

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


async def prepare(runtime: ServiceRuntime) -> None:
    # The GB/T 2260 table with boundaries takes a few seconds to load; load it once, off the event loop.
    runtime.state["divisions"] = await asyncio.to_thread(load_division_table)


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    servicer = RegistryServicer(runtime, runtime.state["divisions"])  # type: ignore[arg-type]
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]


def subscriptions(runtime: ServiceRuntime) -> Sequence[Subscription]:
    projector = DirectoryProjector(runtime.bus, runtime.settings.province)
    return [
        Subscription(Component.REGISTRY, registry_pb2.ParticipantChanged, projector.on_participant),
        Subscription(Component.REGISTRY, registry_pb2.FacilityChanged, projector.on_facility),
    ]


DEFINITION = ServiceDefinition(
    component=Component.REGISTRY,
    register=register,
    migrations=MIGRATIONS,
    subscriptions=subscriptions,
    prepare=prepare,
)
