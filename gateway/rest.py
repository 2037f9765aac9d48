"""The gateway's REST/JSON side: HTTP requests transcoded to the mesh's gRPC calls (grpc-gateway v2 / Envoy).

`build_rest_routes(...)` returns one Starlette route that claims every path under the API's prefixes (`/v1`)
and dispatches it over the `google.api.http` bindings (`gateway.http_rules`); the conversions are in
`gateway.transcode`. Put it after the app's own routes (`/healthz`, the OpenAPI document), since it answers
every `/v1/...` path, known or not, with a `google.rpc.Status` body.

Per request:

1. Route: the first binding whose template matches the raw (still percent-encoded) path and whose method is
   the request's. No template matches: 404 `{"code": 5, "message": "Not Found"}`; a template matches with
   another method: 405 `{"code": 12, "message": "Method Not Allowed"}` and an `Allow` header (grpc-gateway's
   routing errors).
2. Headers: `Grpc-Timeout` (`5S`, `300m`: the client's deadline, capped by the front), the credential
   (`Authorization: Bearer <key>` or `X-Api-Key: <key>`), `X-Request-Id`. A body method checks the content
   type (JSON or none, else 415 with INVALID_ARGUMENT) and the size (`Content-Length`, and again while reading:
   over `max_body_bytes` is 413 with RESOURCE_EXHAUSTED).
3. Admission: `admitter.admit(...)` authenticates, rate-limits and plans the call; a `GatewayRejection` is
   the HTTP status of its code with its headers and a Status body with its details.
4. The call: `local` implementations (the gateway's own MeshStatusService) in process, everything else over
   the component's channel with the plan's metadata and deadline. A unary answer is the JSON of the response;
   a server stream is newline-delimited JSON (`application/x-ndjson`), one `{"result": …}` per message and,
   when the stream fails after its first message, a last `{"error": <Status>}` line (grpc-gateway's form);
   a failure before the first message is an ordinary HTTP error. A client that goes away cancels the call.
5. Errors: grpc-gateway's code → HTTP status table, the `google.rpc.Status` JSON body with the backend's
   details; 401 carries `WWW-Authenticate: Bearer realm="greenmesh"`, a status with `RetryInfo` a
   `Retry-After`.

Every response, errors and 404s included, carries `X-Request-Id` (the plan's; before admission the client's
own when it is a sane token, else a new one) and `X-Trace-Id` (the trace of the request's SERVER span), plus
the plan's response headers. The SERVER span (`"<METHOD> <template>"`) continues a W3C `traceparent` the
client sent and is current while the backend is called, so the gRPC client interceptor makes its CLIENT span
a child and injects `traceparent` into the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from gateway import transcode
from gateway.calls import API_KEY_HEADER, REQUEST_ID_HEADER, TRACE_ID_HEADER, Admitter, CallPlan, GatewayRejection
from gateway.http_rules import Binding
from gateway.mesh_status import ServiceChannels
from meshkit.errors import DomainError

log = logging.getLogger(__name__)

LocalMethod = Callable[[Message], Awaitable[Message]]
T = TypeVar("T")

JSON_CONTENT_TYPE = "application/json"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
WWW_AUTHENTICATE = 'Bearer realm="greenmesh"'
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Characters kept as they are when a raw path with non-ASCII bytes is percent-encoded for matching.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_MAX_QUERY_FIELDS = 1000


def build_rest_routes(
    bindings: Sequence[Binding],
    channels: ServiceChannels,
    admitter: Admitter,
    local: Mapping[str, LocalMethod],
    tracer: Tracer,
    max_body_bytes: int,
) -> list[BaseRoute]:
    """The REST routes to add to the gateway's Starlette app (after its own routes)."""
    return [
        TranscodingRoute(
            RestTranscoder(
                bindings=tuple(bindings),
                channels=channels,
                admitter=admitter,
                local=dict(local),
                tracer=tracer,
                max_body_bytes=max_body_bytes,
            )
        )
    ]


class TranscodingRoute(BaseRoute):
    """A Starlette route that claims the transcoder's paths and hands them to it (an ASGI app)."""

    def __init__(self, app: RestTranscoder) -> None:
        self.app = app

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and self.app.claims(scope):
            return Match.FULL, {}
        return Match.NONE, {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _ClientGone(Exception):
    """The client disconnected; the call was cancelled and nothing more is sent."""


class _Failed(Exception):
    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


class _TooLarge(Exception):
    pass


@dataclass(eq=False)
class RestTranscoder:
    """The ASGI app behind `TranscodingRoute` (usable on its own too)."""

    bindings: Sequence[Binding]
    channels: ServiceChannels
    admitter: Admitter
    local: Mapping[str, LocalMethod]
    tracer: Tracer
    max_body_bytes: int
    propagator: TraceContextTextMapPropagator = field(default_factory=TraceContextTextMapPropagator)
    prefixes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        firsts = {
            binding.template.segments[0]
            for binding in self.bindings
            if binding.template.segments and isinstance(binding.template.segments[0], str)
        }
        self.prefixes = tuple(sorted(f"/{segment}" for segment in firsts if segment not in ("*", "**")))

    # -- routing ---------------------------------------------------------------------------------------------

    def claims(self, scope: Scope) -> bool:
        path = raw_path_of(scope)
        if any(path == prefix or path.startswith((prefix + "/", prefix + ":")) for prefix in self.prefixes):
            return True
        return any(binding.template.match(path) is not None for binding in self.bindings)

    def route(self, method: str, raw_path: str) -> tuple[Binding | None, dict[str, str], list[str]]:
        """The binding (with its path variables) for this method and path, else the methods the path allows."""
        allowed: list[str] = []
        for binding in self.bindings:
            values = binding.template.match(raw_path)
            if values is None:
                continue
            if binding.http_method == method:
                return binding, values, []
            if binding.http_method not in allowed:
                allowed.append(binding.http_method)
        return None, {}, allowed

    # -- one request -----------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = headers_of(scope)
        raw_path = raw_path_of(scope)
        method = str(scope["method"]).upper()
        binding, path_values, allowed = self.route(method, raw_path)
        attributes: dict[str, str] = {
            "http.request.method": method,
            "url.path": raw_path,
            "url.scheme": str(scope.get("scheme") or "http"),
        }
        if binding is not None:
            service = binding.method.containing_service.full_name
            attributes.update(
                {
                    "http.route": binding.template.source,
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": binding.method.name,
                }
            )
        name = f"{method} {binding.template.source}" if binding is not None else method
        parent = self.propagator.extract(headers)
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, record_exception=False
        ) as span:
            exchange = _Exchange(scope, receive, send, span, request_id_or_new(headers.get(REQUEST_ID_HEADER)))
            try:
                await self._serve(exchange, binding, path_values, allowed, headers)
            except _ClientGone:
                span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
                span.set_attribute("error.type", "client_disconnected")
            except Exception as error:
                log.exception("REST request %s %s failed", method, raw_path)
                span.record_exception(error)
                if not exchange.started:
                    trace_id = exchange.trace_id or "-"
                    failure = transcode.make_status(grpc.StatusCode.INTERNAL, f"internal error (trace id {trace_id})")
                    await exchange.send_status(failure)
            finally:
                await exchange.close()

    async def _serve(
        self,
        exchange: _Exchange,
        binding: Binding | None,
        path_values: dict[str, str],
        allowed: list[str],
        headers: Mapping[str, str],
    ) -> None:
        if binding is None:
            if allowed:
                status = transcode.make_status(grpc.StatusCode.UNIMPLEMENTED, "Method Not Allowed")
                await exchange.send_status(status, http_status=405, headers={"allow": ", ".join(allowed)})
            else:
                await exchange.send_status(transcode.make_status(grpc.StatusCode.NOT_FOUND, "Not Found"))
            return

        client_timeout: float | None = None
        if "grpc-timeout" in headers:
            try:
                client_timeout = transcode.parse_grpc_timeout(headers["grpc-timeout"])
            except ValueError as error:
                await exchange.send_status(transcode.make_status(grpc.StatusCode.INVALID_ARGUMENT, str(error)))
                return
        if binding.body:
            refusal = self._check_body_headers(headers)
            if refusal is not None:
                await exchange.send_status(refusal[1], http_status=refusal[0])
                return

        try:
            plan = await self.admitter.admit(
                grpc_path=binding.grpc_path,
                api_key=credential_of(headers),
                client_timeout=client_timeout,
                request_id=headers.get(REQUEST_ID_HEADER),
                client_address=client_address_of(exchange.scope),
            )
        except GatewayRejection as rejection:
            status = transcode.make_status(rejection.code, rejection.message, rejection.details)
            await exchange.send_status(status, headers=rejection.headers)
            return
        exchange.adopt(plan)

        body = b""
        if binding.body:
            try:
                body = await exchange.read_body(self.max_body_bytes)
            except _TooLarge:
                await exchange.send_status(self._too_large(), http_status=413)
                return
        try:
            query = parse_qsl(
                bytes(exchange.scope.get("query_string", b"")).decode("utf-8", "replace"),
                keep_blank_values=True,
                max_num_fields=_MAX_QUERY_FIELDS,
            )
            request = transcode.build_request(binding, path_values=path_values, query=query, body=body)
        except transcode.TranscodeError as error:
            await exchange.send_status(error.to_status())
            return
        except ValueError as error:  # more query parameters than max_num_fields
            await exchange.send_status(transcode.make_status(grpc.StatusCode.INVALID_ARGUMENT, str(error)))
            return

        if binding.server_streaming:
            await self._stream(exchange, binding, request, plan)
        else:
            await self._unary(exchange, binding, request, plan)

    def _check_body_headers(self, headers: Mapping[str, str]) -> tuple[int, status_pb2.Status] | None:
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, transcode.make_status(grpc.StatusCode.INVALID_ARGUMENT, "malformed Content-Length")
            if int(length) > self.max_body_bytes:
                return 413, self._too_large()
        content_type = headers.get("content-type")
        if content_type is not None and content_type.strip() and not is_json_content_type(content_type):
            message = f"unsupported content type {content_type!r}: the request body must be JSON (application/json)"
            return 415, transcode.make_status(grpc.StatusCode.INVALID_ARGUMENT, message)
        return None

    def _too_large(self) -> status_pb2.Status:
        return transcode.make_status(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"the request body is larger than {self.max_body_bytes} bytes"
        )

    # -- calls -----------------------------------------------------------------------------------------------

    async def _unary(self, exchange: _Exchange, binding: Binding, request: Message, plan: CallPlan) -> None:
        try:
            reply = await exchange.race(self._call_unary(binding, request, plan))
        except _Failed as failed:
            exchange.grpc_code(failed.status.code)
            await exchange.send_status(failed.status)
            return
        exchange.grpc_code(0)
        await exchange.send_json(200, transcode.response_to_json(binding, reply))

    async def _call_unary(self, binding: Binding, request: Message, plan: CallPlan) -> Message:
        implementation = self.local.get(binding.grpc_path)
        if implementation is not None:
            try:
                return await asyncio.wait_for(implementation(request), plan.timeout)
            except TimeoutError:
                raise _Failed(transcode.make_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")) from None
            except DomainError as error:
                raise _Failed(error.to_status()) from None
            except grpc.aio.AioRpcError as error:
                raise _Failed(transcode.status_from_rpc_error(error)) from None
        output = transcode.message_class(binding.method.output_type)
        call = self.channels.channel(binding.component).unary_unary(
            binding.grpc_path, request_serializer=_serialize, response_deserializer=output.FromString
        )(request, metadata=plan.metadata, timeout=plan.timeout)
        try:
            reply: Message = await call
            return reply
        except grpc.aio.AioRpcError as error:
            raise _Failed(transcode.status_from_rpc_error(error)) from None
        except asyncio.CancelledError:
            call.cancel()
            raise

    async def _stream(self, exchange: _Exchange, binding: Binding, request: Message, plan: CallPlan) -> None:
        output = transcode.message_class(binding.method.output_type)
        call = self.channels.channel(binding.component).unary_stream(
            binding.grpc_path, request_serializer=_serialize, response_deserializer=output.FromString
        )(request, metadata=plan.metadata, timeout=plan.timeout)
        try:
            try:
                first = await exchange.race(call.read())
            except grpc.aio.AioRpcError as error:
                status = transcode.status_from_rpc_error(error)
                exchange.grpc_code(status.code)
                await exchange.send_status(status)
                return
            await exchange.start(200, NDJSON_CONTENT_TYPE)
            item: Any = first
            while item is not grpc.aio.EOF:
                line = {"result": transcode.response_to_json(binding, item)}
                await exchange.send_body(transcode.dumps(line) + b"\n")
                try:
                    item = await exchange.race(call.read())
                except grpc.aio.AioRpcError as error:
                    status = transcode.status_from_rpc_error(error)
                    exchange.grpc_code(status.code)
                    await exchange.send_body(transcode.dumps({"error": transcode.status_to_json(status)}) + b"\n")
                    break
            else:
                exchange.grpc_code(0)
            await exchange.send_body(b"", more=False)
        finally:
            if not call.done():
                call.cancel()


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class _Exchange:
    """One HTTP exchange: reading the body, watching for the client going away, and every response header."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, span: trace.Span, request_id: str) -> None:
        self.scope = scope
        self.receive = receive
        self._send = send
        self.span = span
        self.request_id = request_id
        self.response_headers: dict[str, str] = {}
        self.started = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def trace_id(self) -> str | None:
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def adopt(self, plan: CallPlan) -> None:
        self.request_id = plan.request_id
        self.response_headers.update({key.lower(): value for key, value in plan.response_headers.items()})

    def grpc_code(self, code: int) -> None:
        self.span.set_attribute("rpc.grpc.status_code", code)

    # -- the request body and the client -------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return

    async def race(self, work: Awaitable[T]) -> T:
        """Await `work` unless the client disconnects first (then it is cancelled and _ClientGone raised)."""
        task = asyncio.ensure_future(work)
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait({task, self._watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _ClientGone()

    async def close(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    # -- the response ----------------------------------------------------------------------------------------

    def _headers(self, content_type: str, extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
        merged: dict[str, str] = {"content-type": content_type}
        merged.update(self.response_headers)
        merged.update({key.lower(): value for key, value in extra.items()})
        merged.setdefault(REQUEST_ID_HEADER, self.request_id)
        trace_id = self.trace_id
        if trace_id is not None:
            merged[TRACE_ID_HEADER] = trace_id
        return [(key.encode("latin-1"), value.encode("latin-1")) for key, value in merged.items()]

    async def start(
        self, status: int, content_type: str, extra: Mapping[str, str] | None = None, length: int | None = None
    ) -> None:
        headers = self._headers(content_type, {**(extra or {})})
        if length is not None:
            headers.append((b"content-length", str(length).encode("ascii")))
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
            self.span.set_attribute("error.type", str(status))
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def send_body(self, body: bytes, more: bool = True) -> None:
        message: AsgiMessage = {"type": "http.response.body", "body": body, "more_body": more}
        try:
            await self._send(message)
        except OSError:
            raise _ClientGone() from None

    async def send_json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        # A final newline, as in the streams: harmless to JSON parsers, and a terminal's prompt starts on its line.
        body = transcode.dumps(payload) + b"\n"
        await self.start(status, JSON_CONTENT_TYPE, headers, length=len(body))
        await self.send_body(body, more=False)

    async def send_status(
        self, status: status_pb2.Status, *, http_status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        code = http_status if http_status is not None else transcode.http_status(status.code)
        extra = {key.lower(): value for key, value in (headers or {}).items()}
        if code == 401:
            extra.setdefault("www-authenticate", WWW_AUTHENTICATE)
        retry = transcode.detail_messages(status, error_details_pb2.RetryInfo)
        if retry and "retry-after" not in extra:
            assert isinstance(retry[0], error_details_pb2.RetryInfo)
            delay = retry[0].retry_delay.ToTimedelta().total_seconds()
            extra["retry-after"] = str(max(1, math.ceil(delay)))
        if REQUEST_ID_HEADER in extra:  # the front's id for a call it refused
            self.request_id = extra[REQUEST_ID_HEADER]
        await self.send_json(code, transcode.status_to_json(status), extra)


# -- request helpers -----------------------------------------------------------------------------------------


def raw_path_of(scope: Scope) -> str:
    """The path as the client sent it (percent-encoded; non-ASCII bytes encoded too), without the query."""
    raw = scope.get("raw_path")
    if not raw:
        return quote(str(scope.get("path", "/")), safe=_PATH_SAFE)
    data = bytes(raw).split(b"?", 1)[0]
    return quote(data, safe=_PATH_SAFE)


def headers_of(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name (the first of repeated ones)."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = bytes(key).decode("latin-1").lower()
        found.setdefault(name, bytes(value).decode("latin-1"))
    return found


def credential_of(headers: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <key>` (another scheme is passed on as it is, for the front to refuse), else
    `X-Api-Key: <key>`; None when the client sent neither."""
    authorization = headers.get("authorization", "").strip()
    if authorization:
        scheme, _, rest = authorization.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest.strip() else authorization
    key = headers.get(API_KEY_HEADER, "").strip()
    return key or None


def client_address_of(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def request_id_or_new(value: str | None) -> str:
    """The client's `X-Request-Id` when it is a sane token (as the front keeps it), else a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def is_json_content_type(content_type: str) -> bool:
    """`application/json` or `application/<x>+json`, in UTF-8 (the only charset JSON has)."""
    media, _, parameters = content_type.partition(";")
    media = media.strip().lower()
    if media != JSON_CONTENT_TYPE and not (media.startswith("application/") and media.endswith("+json")):
        return False
    for parameter in parameters.split(";"):
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True
