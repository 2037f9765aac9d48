"""gRPC pass-through: an enterprise's gRPC client calls the gateway's port and reaches the service that owns
the method, with the same authentication, limits and deadlines as REST.

Messages are forwarded as bytes (never decoded), so the gateway costs one extra hop and no re-encoding.
Only what the front planned goes to the backend: the client's own `x-greenmesh-*` metadata is dropped, so
an identity can only come from a verified API key. The backend's status, message and rich details
(`grpc-status-details-bin`) come back to the client unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from gateway.calls import API_KEY_HEADER, REQUEST_ID_HEADER, TRACE_ID_HEADER, Admitter, CallPlan, GatewayRejection
from gateway.front import request_id_from
from gateway.mesh_status import ServiceChannels
from meshkit.config import Component

Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_value(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


def _trace_id() -> str:
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def rejection_status(rejection: GatewayRejection) -> status_pb2.Status:
    details = []
    for detail in rejection.details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        details.append(holder)
    return status_pb2.Status(code=rejection.code.value[0], message=rejection.message, details=details)


class PassThrough(grpc.GenericRpcHandler):
    """Answers every method of the front services that the gateway does not serve itself."""

    def __init__(
        self,
        methods: Mapping[str, tuple[MethodDescriptor, Component]],
        channels: ServiceChannels,
        admitter: Admitter,
    ) -> None:
        self.methods = {path: entry for path, entry in methods.items() if entry[1] is not Component.GATEWAY}
        self.channels = channels
        self.admitter = admitter

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        path = handler_call_details.method
        entry = self.methods.get(path)
        if entry is None:
            return None
        method, component = entry
        channel = self.channels.channel(component)
        if method.client_streaming and method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(self._reply_stream(path, channel.stream_stream(path)))
        if method.client_streaming:
            return grpc.stream_unary_rpc_method_handler(self._one_reply(path, channel.stream_unary(path)))
        if method.server_streaming:
            return grpc.unary_stream_rpc_method_handler(self._reply_stream(path, channel.unary_stream(path)))
        return grpc.unary_unary_rpc_method_handler(self._one_reply(path, channel.unary_unary(path)))

    async def _admit(self, path: str, context: Context) -> CallPlan:
        """The front's plan, with the request and trace ids sent to the client first; a refusal ends the call."""
        try:
            plan = await self.admitter.admit(
                grpc_path=path,
                api_key=_metadata_value(context, "authorization") or _metadata_value(context, API_KEY_HEADER),
                client_timeout=context.time_remaining(),
                request_id=_metadata_value(context, REQUEST_ID_HEADER),
                client_address=context.peer() or "",
            )
        except GatewayRejection as rejection:
            request_id = rejection.headers.get(REQUEST_ID_HEADER) or request_id_from(None)
            await context.send_initial_metadata(((REQUEST_ID_HEADER, request_id), (TRACE_ID_HEADER, _trace_id())))
            status = rpc_status.to_status(rejection_status(rejection))
            extra = tuple((key, value) for key, value in rejection.headers.items() if key != REQUEST_ID_HEADER)
            await context.abort(status.code, status.details, (*status.trailing_metadata, *extra))
            raise AssertionError("unreachable: abort raises") from None
        await context.send_initial_metadata(
            (*plan.response_headers.items(), (TRACE_ID_HEADER, _trace_id())),
        )
        return plan

    @staticmethod
    async def _relay_error(context: Context, error: grpc.aio.AioRpcError) -> None:
        trailing = tuple((key, value) for key, value in (error.trailing_metadata() or ()))
        await context.abort(error.code(), error.details() or "", trailing)

    def _one_reply(self, path: str, call_backend: Any) -> Any:
        """Unary and client-streaming methods: the request (bytes, or the client's stream of them) goes on as it
        is, and the one reply comes back."""

        async def forward(request: Any, context: Context) -> bytes:
            plan = await self._admit(path, context)
            try:
                reply: bytes = await call_backend(request, metadata=plan.metadata, timeout=plan.timeout)
            except grpc.aio.AioRpcError as error:
                await self._relay_error(context, error)
                raise
            return reply

        return forward

    def _reply_stream(self, path: str, call_backend: Any) -> Any:
        """Server-streaming and bidirectional methods: replies are relayed as they come; a client that goes away
        cancels the backend call."""

        async def forward(request: Any, context: Context) -> AsyncIterator[bytes]:
            plan = await self._admit(path, context)
            call = call_backend(request, metadata=plan.metadata, timeout=plan.timeout)
            try:
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as error:
                await self._relay_error(context, error)
                raise
            finally:
                call.cancel()

        return forward


def front_service_names(methods: Mapping[str, tuple[MethodDescriptor, Component]]) -> Sequence[str]:
    """The full names of the services reachable through the gateway (for its reflection)."""
    return sorted({method.containing_service.full_name for method, _ in methods.values()})
