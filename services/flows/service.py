"""The flows service as the shared runtime runs it: its servicer, migrations, the registry directory it reads
and the monitors it runs beside the gRPC server."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from pathlib import Path

import grpc

from greenmesh.flows.v1 import flows_pb2, flows_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime
from services.flows import transfers
from services.flows.directory_view import DirectoryView
from services.flows.domain import RuleConfig
from services.flows.monitors import MonitorConfig, monitor_loop
from services.flows.servicer import FlowServicer

MIGRATIONS = Path(__file__).parent / "migrations" / "versions"


def directory_of(runtime: ServiceRuntime) -> DirectoryView:
    view = runtime.state.get("directory")
    if not isinstance(view, DirectoryView):
        view = DirectoryView()
        runtime.state["directory"] = view
    return view


def monitor_config(runtime: ServiceRuntime) -> MonitorConfig:
    settings = runtime.settings
    return MonitorConfig(
        diversion_days=settings.flows_diversion_days, interval_s=settings.flows_monitor_interval_seconds
    )


async def prepare(runtime: ServiceRuntime) -> None:
    """The other provinces' directory this province has heard of (cross-province transfers), into the view."""
    async with runtime.database.session() as session:
        await transfers.load_remote_directory(session, directory_of(runtime))


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    directory, config = directory_of(runtime), RuleConfig()
    servicer = FlowServicer(runtime, directory, config)
    runtime.state["servicer"] = servicer
    flows_pb2_grpc.add_FlowServiceServicer_to_server(servicer, server)
    if runtime.settings.national_link:
        # Linked to the national hub: other provinces' facilities and the transfers shipped here come in.
        runtime.bus.add_consumer(transfers.inbound_consumer(runtime, directory, servicer.captures, config))
    return [flows_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name]


def background(runtime: ServiceRuntime) -> Sequence[Coroutine[None, None, None]]:
    directory = directory_of(runtime)
    tasks = [
        directory.run(runtime.bus, runtime.settings.province),
        monitor_loop(runtime, directory, monitor_config(runtime)),
    ]
    if runtime.settings.national_link:
        # What the other replicas' inbound consumer wrote of the other provinces' directory.
        tasks.append(transfers.follow_remote_directory(runtime, directory))
    return tasks


DEFINITION = ServiceDefinition(
    component=Component.FLOWS, register=register, migrations=MIGRATIONS, prepare=prepare, background=background
)
