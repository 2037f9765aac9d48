"""The gateway's HTTP side (Starlette on uvicorn, in the same event loop as its gRPC server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from greenmesh.mesh.v1 import status_pb2

StatusSource = Callable[[], Coroutine[Any, Any, status_pb2.GetMeshStatusResponse]]


def build_app(status: StatusSource) -> Starlette:
    async def mesh_status(_request: Request) -> JSONResponse:
        reply = await status()
        return JSONResponse(MessageToDict(reply))

    async def healthz(_request: Request) -> JSONResponse:
        reply = await status()
        body = {
            c.component: status_pb2.ServingState.Name(c.state).removeprefix("SERVING_STATE_") for c in reply.components
        }
        return JSONResponse(
            {"all_serving": reply.all_serving, "components": body}, status_code=200 if reply.all_serving else 503
        )

    return Starlette(routes=[Route("/v1/mesh/status", mesh_status), Route("/healthz", healthz)])


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
