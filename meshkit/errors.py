"""Domain errors and their mapping to `google.rpc.Status` with details (through grpcio-status).

Services raise these; the server interceptor turns them into a status with `BadRequest` field
violations, `ErrorInfo` with a stable reason, or `ResourceInfo`. A database that cannot be used right now
(connection lost or refused, server restarting, SQLite's write lock held too long) becomes UNAVAILABLE, which
a client may retry (`database_unavailable`). Anything else becomes INTERNAL with a generic message and is
logged with the trace id, so no internals leak to callers.
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from sqlalchemy import exc as sa_exc

from meshkit.bounded_status import bounded

log = logging.getLogger(__name__)

ERROR_DOMAIN = "greenmesh.io"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a service raises on purpose; carries the gRPC code and details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[Any]:
        if self.reason is None:
            return []
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)]

    def to_status(self) -> status_pb2.Status:
        packed = []
        for detail in self.details():
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[FieldViolation], message: str | None = None):
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")

    def details(self) -> list[Any]:
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in self.violations
            ]
        )
        return [request]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None):
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or f"{resource_type} {resource_name!r} not found")

    def details(self) -> list[Any]:
        return [error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.resource_name)]


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, resource_type: str, resource_name: str, message: str | None = None):
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or f"{resource_type} {resource_name!r} already exists", reason="ALREADY_EXISTS")

    def details(self) -> list[Any]:
        return [
            *super().details(),
            error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.resource_name),
        ]


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None):
        super().__init__(message, reason=reason, metadata=metadata)


class Aborted(DomainError):
    """A concurrent change won (e.g. a stale version); the client may re-read and retry."""

    code = grpc.StatusCode.ABORTED

    def __init__(
        self, message: str, *, reason: str = "CONCURRENT_MODIFICATION", metadata: Mapping[str, str] | None = None
    ):
        super().__init__(message, reason=reason, metadata=metadata)


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, message: str, *, reason: str = "PERMISSION_DENIED", metadata: Mapping[str, str] | None = None):
        super().__init__(message, reason=reason, metadata=metadata)


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, message: str = "a valid credential is required", *, reason: str = "UNAUTHENTICATED"):
        super().__init__(message, reason=reason)


class ResourceExhausted(DomainError):
    """The service protects itself (a backlog past its limit): nothing was done; retry after the delay given."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, reason: str, retry_after_seconds: float) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[Any]:
        delay = duration_pb2.Duration(seconds=max(1, round(self.retry_after_seconds)))
        return [*super().details(), error_details_pb2.RetryInfo(retry_delay=delay)]


class Unavailable(DomainError):
    """A dependency (the database, NATS) is unreachable; the call is safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, reason: str = "DEPENDENCY_UNAVAILABLE"):
        super().__init__(message, reason=reason)


# PostgreSQL SQLSTATEs that say "not now" rather than "wrong": the class 08 (connection exception) and these.
_PG_UNAVAILABLE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: pg_terminate_backend, or a fast shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up or shutting down
        "53300",  # too_many_connections
    }
)
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes: another connection holds the lock past busy_timeout
_DATABASE_DRIVERS = ("asyncpg", "aiosqlite", "sqlalchemy")
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
DATABASE_BUSY = "DATABASE_BUSY"


def _raised_in_driver(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        if str(traceback.tb_frame.f_globals.get("__name__", "")).startswith(_DATABASE_DRIVERS):
            return True
        traceback = traceback.tb_next
    return False


def database_unavailable(error: BaseException) -> Unavailable | None:
    """The UNAVAILABLE answer for an error that means the database cannot be used right now, or None.

    The failed transaction was rolled back, unless the connection broke during its COMMIT, when it may have
    committed: a retry of an idempotent call (a report carries its event ids) then answers DUPLICATE; as gRPC
    says of UNAVAILABLE, other calls are retried with care. Failures to connect reach us unwrapped by SQLAlchemy
    (asyncpg's errors, an OSError from the socket), so the chain of causes is searched; an OSError counts only
    when a database driver raised it.
    """
    seen: set[int] = set()
    chain: list[BaseException] = [error]
    while chain:
        current = chain.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return Unavailable("the connection to the database was lost; retry shortly", reason=DATABASE_UNAVAILABLE)
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith("08") or sqlstate in _PG_UNAVAILABLE_SQLSTATES):
            return Unavailable(
                f"the database is unavailable (SQLSTATE {sqlstate}); retry shortly", reason=DATABASE_UNAVAILABLE
            )
        sqlite_code = getattr(current, "sqlite_errorcode", 0) if isinstance(current, sqlite3.Error) else 0
        if (sqlite_code & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return Unavailable("the database is busy with another writer; retry shortly", reason=DATABASE_BUSY)
        if isinstance(current, OSError) and _raised_in_driver(current):
            return Unavailable("the database cannot be reached; retry shortly", reason=DATABASE_UNAVAILABLE)
        if isinstance(current, sa_exc.DBAPIError) and isinstance(current.orig, BaseException):
            chain.append(current.orig)
        chain.extend(cause for cause in (current.__cause__, current.__context__) if cause is not None)
    return None


def _trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else "-"


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: DomainError) -> None:
    # Cut to fit the trailers: an error quoting a huge value must still reach the client as itself.
    status = rpc_status.to_status(bounded(error.to_status()))
    await context.abort(status.code, status.details, status.trailing_metadata)


async def abort_internal(context: grpc.aio.ServicerContext[Any, Any], method: str, error: BaseException) -> None:
    trace_id = _trace_id()
    log.error("unexpected error in %s", method, exc_info=error, extra={"method": method})
    internal = status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (trace id {trace_id})")
    status = rpc_status.to_status(internal)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _is_abort(error: BaseException) -> bool:
    # grpc.aio raises AbortError out of context.abort(); it must pass through untouched.
    return isinstance(error, grpc.aio.AbortError)


@asynccontextmanager
async def mapped_errors(context: grpc.aio.ServicerContext[Any, Any], method: str) -> AsyncIterator[None]:
    """DomainError -> its rich status; the database unavailable -> UNAVAILABLE; any other exception ->
    INTERNAL with only the trace id."""
    try:
        yield
    except DomainError as error:
        await abort_with(context, error)
    except NotImplementedError:
        # A generated servicer base's method that this component does not serve (the national view serves a
        # part of FlowService): UNIMPLEMENTED, as for a method no server has, not an internal error.
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served here")
    except Exception as error:
        if _is_abort(error):
            raise
        unavailable = database_unavailable(error)
        if unavailable is None:
            await abort_internal(context, method, error)
        else:
            first_line = next(iter(str(error).splitlines()), "")[:200]
            log.warning("%s: %s (%s: %s)", method, unavailable.message, type(error).__name__, first_line)
            await abort_with(context, unavailable)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns DomainError into rich statuses and any other exception into a non-leaking INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        behaviour: Any
        if handler.unary_unary or handler.stream_unary:
            inner = handler.unary_unary or handler.stream_unary

            async def call_once(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async with mapped_errors(context, method):
                    return await inner(request, context)

            behaviour = call_once
            factory = (
                grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
            )
        else:
            inner = handler.unary_stream or handler.stream_stream
            factory = (
                grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
            )
            if inspect.isasyncgenfunction(inner) or inspect.isasyncgenfunction(getattr(inner, "__func__", None)):

                async def call_generator(
                    request: Any, context: grpc.aio.ServicerContext[Any, Any]
                ) -> AsyncIterator[Any]:
                    async with mapped_errors(context, method):
                        async for item in inner(request, context):
                            yield item

                behaviour = call_generator
            else:
                # A streaming handler written as a coroutine that calls context.write() (e.g. health Watch).
                async def call_writer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                    async with mapped_errors(context, method):
                        await inner(request, context)

                behaviour = call_writer
        return factory(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def status_from_error(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """Client side: the rich status a GreenMesh service attached to an error, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def field_violations(error: grpc.aio.AioRpcError) -> list[FieldViolation]:
    status = status_from_error(error)
    found: list[FieldViolation] = []
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            found.extend(FieldViolation(v.field, v.description) for v in request.field_violations)
    return found


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    status = status_from_error(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None
