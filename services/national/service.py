"""The national view as the shared runtime runs it (`greenmesh serve national`, in deploy/k8s/national): connected
to the national hub's NATS, a database of its own with the flows schema, one consumer, the national servicer. It
publishes nothing (``publishes=False``): no stream of its own, no outbox relay, no probe."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from greenmesh.flows.v1 import flows_pb2, flows_pb2_grpc
from meshkit.config import Component
from meshkit.server import ServiceDefinition, ServiceRuntime
from services.flows.service import MIGRATIONS as FLOWS_MIGRATIONS
from services.national.consumer import national_consumer
from services.national.servicer import NationalServicer


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    # The stubs declare every FlowService method abstract; the base class answers UNIMPLEMENTED to the others.
    servicer = NationalServicer(runtime)  # type: ignore[abstract]
    flows_pb2_grpc.add_FlowServiceServicer_to_server(servicer, server)
    runtime.bus.add_consumer(national_consumer(runtime))
    return [flows_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name]


DEFINITION = ServiceDefinition(
    component=Component.NATIONAL, register=register, migrations=FLOWS_MIGRATIONS, publishes=False
)
