"""The front: what every call through the gateway goes through, REST or gRPC, before it reaches a service.

1. Authenticate: no key is an anonymous call (the services decide what anonymous callers may do: the public
   lookups); a key is verified through the credential cache; a bad key is UNAUTHENTICATED (401).
2. Rate-limit: a token bucket per credential (per client address when anonymous); RESOURCE_EXHAUSTED (429)
   with the time to wait.
3. Plan the backend call: the caller's identity signed with the mesh key (services accept identities only
   when signed, so a client that bypasses the gateway cannot claim one), the request id, and the deadline:
   the client's own when it set one (capped), else the default (a longer one for streams).

Authorisation is not decided here: it is enforced where the data is, by each service, on this identity.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2

from gateway.calls import REQUEST_ID_HEADER, CallPlan, GatewayRejection
from gateway.credentials import CredentialCache, InvalidCredential, VerifierUnavailable
from gateway.limits import Rate, RateLimiter
from meshkit.config import Component
from meshkit.errors import ERROR_DOMAIN

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
WWW_AUTHENTICATE = 'Bearer realm="greenmesh"'


CREDENTIAL_RATE = Rate(per_second=50.0, burst=100.0)
ANONYMOUS_RATE = Rate(per_second=10.0, burst=20.0)


@dataclass(frozen=True)
class FrontPolicy:
    default_timeout_seconds: float = 10.0
    max_timeout_seconds: float = 60.0
    # Server-streaming calls (the event subscription) live long; a client can still set its own deadline.
    stream_timeout_seconds: float = 3600.0
    credential_rate: Rate = CREDENTIAL_RATE
    anonymous_rate: Rate = ANONYMOUS_RATE


def parse_api_key(value: str | None) -> str | None:
    """`Bearer <key>` or the bare key; None for a missing or blank value."""
    if value is None:
        return None
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if scheme.lower() == "bearer":
        text = rest.strip()
    return text or None


def request_id_from(value: str | None) -> str:
    """The client's request id when it is a sane token, else a new one."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


@dataclass
class Front:
    credentials: CredentialCache
    limiter: RateLimiter
    signing_key: bytes
    # Every RPC the gateway fronts, by gRPC path (from http_rules.front_methods).
    methods: Mapping[str, tuple[MethodDescriptor, Component]]
    policy: FrontPolicy = FrontPolicy()

    async def admit(
        self,
        *,
        grpc_path: str,
        api_key: str | None,
        client_timeout: float | None,
        request_id: str | None,
        client_address: str,
    ) -> CallPlan:
        request_id = request_id_from(request_id)
        headers = {REQUEST_ID_HEADER: request_id}
        key = parse_api_key(api_key)
        metadata: list[tuple[str, str]] = [(REQUEST_ID_HEADER, request_id)]
        if key is None:
            bucket, rate = f"addr:{_address_only(client_address)}", self.policy.anonymous_rate
        else:
            try:
                verified = await self.credentials.authenticate(key)
            except InvalidCredential as invalid:
                raise GatewayRejection(
                    grpc.StatusCode.UNAUTHENTICATED,
                    invalid.message,
                    details=[error_details_pb2.ErrorInfo(reason=invalid.reason, domain=ERROR_DOMAIN)],
                    headers={**headers, "www-authenticate": f'{WWW_AUTHENTICATE}, error="invalid_token"'},
                ) from None
            except VerifierUnavailable as unavailable:
                raise GatewayRejection(
                    grpc.StatusCode.UNAVAILABLE,
                    str(unavailable),
                    details=[error_details_pb2.ErrorInfo(reason="CREDENTIAL_CHECK_UNAVAILABLE", domain=ERROR_DOMAIN)],
                    headers=headers,
                ) from None
            bucket, rate = f"key:{verified.key_id}", self.policy.credential_rate
            metadata.extend(verified.caller.metadata(self.signing_key))
        wait = self.limiter.take(bucket, rate)
        if wait > 0:
            retry = Duration()
            retry.FromNanoseconds(int(wait * 1e9))
            raise GatewayRejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {rate.per_second:g} calls per second (bursts of {rate.burst:g}) exceeded",
                details=[
                    error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain=ERROR_DOMAIN),
                    error_details_pb2.RetryInfo(retry_delay=retry),
                ],
                headers={**headers, "retry-after": str(max(1, math.ceil(wait)))},
            )
        return CallPlan(
            metadata=tuple(metadata),
            timeout=self._timeout(grpc_path, client_timeout),
            request_id=request_id,
            response_headers=headers,
        )

    def _timeout(self, grpc_path: str, client_timeout: float | None) -> float:
        method = self.methods.get(grpc_path)
        streaming = method is not None and method[0].server_streaming
        longest = self.policy.stream_timeout_seconds if streaming else self.policy.max_timeout_seconds
        if client_timeout is not None and client_timeout > 0:
            return min(client_timeout, longest)
        return self.policy.stream_timeout_seconds if streaming else self.policy.default_timeout_seconds


def _address_only(peer: str) -> str:
    """`ipv4:1.2.3.4:5678` / `ipv6:[::1]:5678` (gRPC) or `1.2.3.4` (HTTP) → the address without the port."""
    text = peer.removeprefix("ipv4:").removeprefix("ipv6:")
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:
        return text.rsplit(":", 1)[0]
    return text
