"""What the REST side and the gRPC pass-through share: the plan for one admitted call, and the rejection of one.

Both doors ask the front (`gateway.front.Front.admit`) before calling a backend. The front authenticates the
credential, applies the rate limit, and returns a `CallPlan`: the metadata to send (the caller's signed
identity and the request id), the deadline, and the headers every response carries. A call the front refuses
raises `GatewayRejection`, which each door turns into its own form (an HTTP status with a `google.rpc.Status`
body, or a gRPC status with details).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from google.protobuf.message import Message

REQUEST_ID_HEADER = "x-request-id"
TRACE_ID_HEADER = "x-trace-id"
# Where an HTTP client puts its API key: `Authorization: Bearer <key_id>.<secret>` (or `X-Api-Key`).
API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class CallPlan:
    """How one admitted call goes to its backend."""

    # gRPC metadata for the backend: the signed caller identity and the request id.
    metadata: tuple[tuple[str, str], ...]
    # Seconds: the client's own deadline when it gave one (capped), else the gateway's default.
    timeout: float
    request_id: str
    # Headers (HTTP) or initial metadata (gRPC) every answer to this call carries, errors included.
    response_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class GatewayRejection(Exception):
    """A call the gateway itself refuses (no or bad credential, rate limit, size, unknown route)."""

    code: grpc.StatusCode
    message: str
    # google.rpc detail messages (ErrorInfo, RetryInfo, BadRequest …), packed into the status.
    details: Sequence[Message] = ()
    # Extra HTTP headers: WWW-Authenticate for 401, Retry-After for 429.
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


class Admitter(Protocol):
    """The front as the doors see it (implemented by `gateway.front.Front`)."""

    async def admit(
        self,
        *,
        grpc_path: str,
        api_key: str | None,
        client_timeout: float | None,
        request_id: str | None,
        client_address: str,
    ) -> CallPlan:
        """Authenticate, rate-limit and plan one call to `grpc_path` (`/pkg.Service/Method`).

        `api_key` is the credential as the client sent it (None: anonymous), `client_timeout` the client's own
        deadline in seconds (None: the gateway's default), `request_id` the client's `X-Request-Id` (None: one is
        made). Raises GatewayRejection (UNAUTHENTICATED for a bad key, RESOURCE_EXHAUSTED over the limit)."""
        ...
