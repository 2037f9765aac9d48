"""The energy service as the shared runtime runs it: its servicer, migrations, and the registry directory it
validates sites against (the KV bucket the registry publishes, watched into memory beside the gRPC server).

The directory view is the flows service's ``DirectoryView``, imported rather than copied: it is shared code
waiting to move into meshkit.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from pathlib import Path

import grpc

from greenmesh.energy.v1 import energy_pb2, energy_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime
from services.energy.servicer import EnergyServicer
from services.flows.directory_view import DirectoryView

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


def directory_of(runtime: ServiceRuntime) -> DirectoryView:
    view = runtime.state.get("directory")
    if not isinstance(view, DirectoryView):
        view = DirectoryView()
        runtime.state["directory"] = view
    return view


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    servicer = EnergyServicer(runtime, directory_of(runtime))
    runtime.state["servicer"] = servicer
    energy_pb2_grpc.add_EnergyServiceServicer_to_server(servicer, server)
    return [energy_pb2.DESCRIPTOR.services_by_name["EnergyService"].full_name]


def background(runtime: ServiceRuntime) -> Sequence[Coroutine[None, None, None]]:
    return [directory_of(runtime).run(runtime.bus, runtime.settings.province)]


DEFINITION = ServiceDefinition(
    component=Component.ENERGY, register=register, migrations=MIGRATIONS, background=background
)
