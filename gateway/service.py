"""The gateway as the shared runtime runs it: the front door of one province deployment.

gRPC port: the gateway's MeshStatusService, and every method of the registry, flows and energy services passed
through to the service that owns it (`gateway.passthrough`). HTTP port: REST/JSON transcoded from the
protos' annotations (`gateway.rest`), the OpenAPI document and its docs page, `/healthz`. Both doors admit
calls through one front (`gateway.front`): API keys verified by the registry and cached, evicted by the
registry's events on NATS; a rate limit per key; the caller's identity signed for the services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence

import grpc
import uvicorn
from google.protobuf.message import Message
from nats.aio.msg import Msg

from gateway.credentials import CredentialCache
from gateway.front import Front, FrontPolicy
from gateway.http import EmbeddedServer, build_app, serve_http
from gateway.http_rules import front_methods, load_bindings
from gateway.limits import Rate, RateLimiter
from gateway.mesh_status import MeshStatusServicer, ServiceChannels, StatusSource, mesh_status
from gateway.openapi import greenmesh_openapi, openapi_routes
from gateway.passthrough import PassThrough, front_service_names
from gateway.rest import build_rest_routes
from greenmesh.mesh.v1 import status_pb2, status_pb2_grpc
from greenmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from meshkit.bus import Bus
from meshkit.caller import signing_key
from meshkit.config import Component, MeshSettings
from meshkit.server import ServiceDefinition, ServiceRuntime
from meshkit.subjects import event_subject
from meshkit.telemetry import client_interceptors

log = logging.getLogger(__name__)

# While NATS is away revocations cannot reach the gateway, so verified keys are trusted only this long.
OFFLINE_CREDENTIAL_TTL_SECONDS = 5.0


def policy_from(settings: MeshSettings) -> FrontPolicy:
    return FrontPolicy(
        default_timeout_seconds=settings.gateway_default_timeout_seconds,
        max_timeout_seconds=settings.gateway_max_timeout_seconds,
        stream_timeout_seconds=settings.gateway_stream_timeout_seconds,
        credential_rate=Rate(settings.gateway_rate_per_second, settings.gateway_rate_burst),
        anonymous_rate=Rate(settings.gateway_anonymous_rate_per_second, settings.gateway_anonymous_rate_burst),
    )


def _status_source(runtime: ServiceRuntime, channels: ServiceChannels) -> StatusSource:
    async def status() -> status_pb2.GetMeshStatusResponse:
        endpoint = f"{runtime.settings.grpc_host}:{runtime.port}"
        return await mesh_status(channels, endpoint, runtime.readiness.ready)

    return status


def build_front(runtime: ServiceRuntime, channels: ServiceChannels) -> Front:
    registry = registry_pb2_grpc.RegistryServiceStub(channels.channel(Component.REGISTRY))

    async def verify(api_key: str) -> registry_pb2.VerifyCredentialResponse:
        reply: registry_pb2.VerifyCredentialResponse = await registry.VerifyCredential(
            registry_pb2.VerifyCredentialRequest(api_key=api_key), timeout=3.0
        )
        return reply

    settings = runtime.settings
    credentials = CredentialCache(verify=verify, ttl_seconds=settings.gateway_credential_cache_seconds)
    return Front(
        credentials=credentials,
        limiter=RateLimiter(),
        signing_key=signing_key(settings),
        methods=front_methods(),
        policy=policy_from(settings),
    )


def register(server: grpc.aio.Server, runtime: ServiceRuntime) -> Sequence[str]:
    channels = ServiceChannels(runtime.settings, interceptors=client_interceptors(runtime.telemetry))
    front = build_front(runtime, channels)
    runtime.state["channels"] = channels
    runtime.state["front"] = front
    status_pb2_grpc.add_MeshStatusServiceServicer_to_server(
        MeshStatusServicer(_status_source(runtime, channels)), server
    )
    methods = front_methods()
    server.add_generic_rpc_handlers([PassThrough(methods, channels, front)])
    # Reflection at the gateway lists every service a client can reach through it.
    return front_service_names(methods)


async def _run_http(runtime: ServiceRuntime) -> None:
    channels = runtime.state["channels"]
    front = runtime.state["front"]
    assert isinstance(channels, ServiceChannels) and isinstance(front, Front)
    status = _status_source(runtime, channels)

    async def local_status(_request: Message) -> Message:
        return await status()

    routes = [
        *openapi_routes(greenmesh_openapi()),
        *build_rest_routes(
            load_bindings(),
            channels,
            front,
            {"/greenmesh.mesh.v1.MeshStatusService/GetMeshStatus": local_status},
            runtime.telemetry.tracer("gateway.rest"),
            runtime.settings.gateway_max_request_bytes,
        ),
    ]
    app = build_app(status, routes)
    config = uvicorn.Config(
        app,
        host=runtime.settings.http_host,
        port=runtime.settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = EmbeddedServer(config)
    started = asyncio.Event()
    runtime.state["http_server"] = server
    runtime.state["http_started"] = started
    try:
        await serve_http(server, started)
    finally:
        await channels.close()


async def _watch_registry(runtime: ServiceRuntime) -> None:
    """Evict cached credentials the moment the registry revokes one or changes a participant."""
    front = runtime.state["front"]
    assert isinstance(front, Front)
    cache = front.credentials
    online_ttl = cache.ttl_seconds
    bus = Bus(settings=runtime.settings, component=Component.GATEWAY, tracer=runtime.telemetry.tracer("gateway"))

    def on_connection(up: bool) -> None:
        # Down: events may be missed from now on, so forget everything and trust answers only briefly.
        cache.clear()
        cache.ttl_seconds = online_ttl if up else min(online_ttl, OFFLINE_CREDENTIAL_TTL_SECONDS)

    async def revoked(message: Msg) -> None:
        event = registry_pb2.CredentialRevoked.FromString(message.data)
        cache.evict_key(event.credential.key_id)

    async def participant_changed(message: Msg) -> None:
        event = registry_pb2.ParticipantChanged.FromString(message.data)
        cache.evict_participant(event.participant.participant_id)

    province = runtime.settings.province
    on_connection(False)  # until the watch is in place
    try:
        await bus.connect()
        await bus.watch([event_subject(province, Component.REGISTRY, registry_pb2.CredentialRevoked)], revoked)
        await bus.watch(
            [event_subject(province, Component.REGISTRY, registry_pb2.ParticipantChanged)], participant_changed
        )
        on_connection(True)
        bus.listeners.append(on_connection)
        runtime.state["registry_watch"] = bus
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await bus.close()


def background(runtime: ServiceRuntime) -> Sequence[Coroutine[None, None, None]]:
    return [_run_http(runtime), _watch_registry(runtime)]


DEFINITION = ServiceDefinition(
    component=Component.GATEWAY,
    register=register,
    uses_database=False,
    uses_bus=False,
    # The gateway authenticates API keys and signs identities; it never trusts identity metadata it receives.
    verifies_caller=False,
    background=background,
)
