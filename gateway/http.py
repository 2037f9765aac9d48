"""The gateway's HTTP side (Starlette on uvicorn, in the same event loop as its gRPC server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from gateway.mesh_status import StatusSource
from greenmesh.mesh.v1 import status_pb2


def build_app(status: StatusSource, routes: Sequence[BaseRoute] = ()) -> Starlette:
    """`/healthz` (the whole mesh's health, 503 unless every component serves), then `routes`: the REST API
    transcoded from the protos (which includes `GET /v1/mesh/status`), the OpenAPI document and its docs page."""

    async def healthz(_request: Request) -> JSONResponse:
        reply = await status()
        body = {
            c.component: status_pb2.ServingState.Name(c.state).removeprefix("SERVING_STATE_") for c in reply.components
        }
        return JSONResponse(
            {"all_serving": reply.all_serving, "components": body}, status_code=200 if reply.all_serving else 503
        )

    return Starlette(routes=[Route("/healthz", healthz), *routes])


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM/SIGINT and stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    @property
    def bound_port(self) -> int:
        return int(self.servers[0].sockets[0].getsockname()[1])


async def serve_http(server: EmbeddedServer, started: asyncio.Event) -> None:
    task = asyncio.create_task(server.serve())
    try:
        while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn has no start-up event)
            await asyncio.sleep(0.01)
        started.set()
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await task
        raise
