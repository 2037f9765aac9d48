"""The flows service as the shared runtime runs it: its servicer, migrations, the registry directory it reads
and the monitors it runs beside the gRPC server."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from pathlib import Path

import grpc

from greenmesh.flows.v1 import flows_pb2, flows_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime
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


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    servicer = FlowServicer(runtime, directory_of(runtime), RuleConfig())
    runtime.state["servicer"] = servicer
    flows_pb2_grpc.add_FlowServiceServicer_to_server(servicer, server)
    return [flows_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name]


def background(runtime: ServiceRuntime) -> Sequence[Coroutine[None, None, None]]:
    directory = directory_of(runtime)
    return [
        directory.run(runtime.bus, runtime.settings.province),
        monitor_loop(runtime, directory, monitor_config(runtime)),
    ]


DEFINITION = ServiceDefinition(
    component=Component.FLOWS, register=register, migrations=MIGRATIONS, background=background
)
