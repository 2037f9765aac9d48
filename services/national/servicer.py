"""The national view's gRPC surface: the FlowService reads that make sense over every province, the dispatch
statistics (of the nation, 00, or of any province, prefecture or county) and the alerts. Everything else (reporting,
traces, acknowledging) belongs to a province's flows service and answers UNIMPLEMENTED here."""

from __future__ import annotations

from typing import Any

from greenmesh.flows.v1 import flows_pb2 as pb
from greenmesh.flows.v1 import flows_pb2_grpc
from meshkit.caller import caller_of
from meshkit.server import ServiceRuntime
from services.flows import alerts
from services.flows.servicer import answer_dispatch_statistics, require_oversight

Context = Any


class NationalServicer(flows_pb2_grpc.FlowServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def GetDispatchStatistics(
        self, request: pb.GetDispatchStatisticsRequest, context: Context
    ) -> pb.GetDispatchStatisticsResponse:
        return await answer_dispatch_statistics(self.runtime.database, caller_of(context), request)

    async def ListAlerts(self, request: pb.ListAlertsRequest, context: Context) -> pb.ListAlertsResponse:
        region = require_oversight(caller_of(context), "listing alerts")
        async with self.runtime.database.session() as session:
            return await alerts.list_alerts(session, request, region_prefix=region)
