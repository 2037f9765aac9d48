"""Requests that are not the protobuf message their method takes: INVALID_ARGUMENT, never UNKNOWN or INTERNAL.

grpc.aio decodes a request before the handler runs. When the bytes are not a valid message (corrupt wire
format, a truncated message, another message's bytes with a field of the wrong wire type), the decoder's
exception escapes every interceptor: grpc answers a unary call UNKNOWN with the exception's text
(`Unexpected <class 'google.protobuf.message.DecodeError'>: …`), and in a client stream the handler's
`async for` raises it, which the error mapping turns into INTERNAL and logs with a traceback. Both blame the
server for a client's bytes. (grpc-go and grpc-java answer INTERNAL here; the mesh keeps INTERNAL for its own
faults, so that it always means a bug and never a client's input.)

`DecodingInterceptor` gives each handler a decoder that returns an `Undecodable` marker instead of raising,
and raises `MalformedRequest` (INVALID_ARGUMENT, `ErrorInfo` reason MALFORMED_REQUEST) where the handler would
have received it: before a unary handler runs, or at that message of a client stream (the messages before it
have been handled; a stream's handler decides, as for any error in its stream, what that means for them).
It runs innermost, inside the error mapping, which turns the error into its status. Handlers without a
decoder (the gateway's pass-through forwards bytes) are left as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from meshkit.errors import DomainError

MALFORMED_REQUEST = "MALFORMED_REQUEST"
Context = grpc.aio.ServicerContext[Any, Any]


class MalformedRequest(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, detail: str) -> None:
        super().__init__(f"the request could not be decoded: {detail}", reason=MALFORMED_REQUEST)


@dataclass(frozen=True)
class Undecodable:
    """What the tolerant decoder returns for bytes that are not a message."""

    error: MalformedRequest


def tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as error:  # DecodeError, and whatever else a decoder raises on bytes it cannot read
            return Undecodable(MalformedRequest(str(error).splitlines()[0] if str(error) else type(error).__name__))

    return decode_or_mark


def checked(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise request.error
    return request


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield checked(request)


class DecodingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        behaviour: Any
        if handler.unary_unary:
            inner = handler.unary_unary
            factory: Any = grpc.unary_unary_rpc_method_handler

            async def unary(request: Any, context: Context) -> Any:
                return await inner(checked(request), context)

            behaviour = unary
        elif handler.stream_unary:
            inner = handler.stream_unary
            factory = grpc.stream_unary_rpc_method_handler

            async def client_stream(requests: AsyncIterator[Any], context: Context) -> Any:
                return await inner(checked_stream(requests), context)

            behaviour = client_stream
        else:
            streaming_in = handler.stream_stream is not None
            inner = handler.stream_stream if streaming_in else handler.unary_stream
            factory = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler

            def argument(request: Any) -> Any:
                return checked_stream(request) if streaming_in else checked(request)

            if inspect.isasyncgenfunction(inner) or inspect.isasyncgenfunction(getattr(inner, "__func__", None)):

                async def replies(request: Any, context: Context) -> AsyncIterator[Any]:
                    async for reply in inner(argument(request), context):
                        yield reply

                behaviour = replies
            else:  # a streaming handler written as a coroutine that calls context.write() (e.g. health Watch)

                async def writer(request: Any, context: Context) -> Any:
                    return await inner(argument(request), context)

                behaviour = writer
        return factory(
            behaviour,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
