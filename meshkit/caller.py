"""Who is calling: the identity the gateway puts in request metadata, signed with the mesh's key.

The gateway authenticates the API credential and passes the caller's participant id, roles and supervised
region in `x-greenmesh-*` metadata, with `x-greenmesh-caller-signature: v1.<unix seconds>.<base64url HMAC>`:
an HMAC-SHA256, under the mesh's shared key (`signing_key`), of the identity and the moment it was signed.
Every service runs `CallerSignatureInterceptor`, which answers UNAUTHENTICATED, before any handler runs, to a
call whose identity is unsigned, signed with another key, altered, or signed too long ago, so a client that
reaches a service port directly cannot claim an identity it does not have. Services read the verified caller
through `caller_of(context)`. Without identity headers the caller is anonymous.

The key is `GREENMESH_CALLER_KEY` (in Kubernetes from the Secret); without it, `<data_dir>/caller.key`, made
once: every process of a local mesh shares the data directory and so the key, and so does a local operator's
CLI. Pods of a deployment without the setting each make their own, so no identity verifies: it fails closed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from meshkit.config import MIN_CALLER_KEY_LENGTH, MeshSettings
from meshkit.errors import PermissionDenied, Unauthenticated, abort_with

log = logging.getLogger(__name__)

PARTICIPANT_HEADER = "x-greenmesh-participant-id"
ROLES_HEADER = "x-greenmesh-roles"
DIVISION_HEADER = "x-greenmesh-division"
SIGNATURE_HEADER = "x-greenmesh-caller-signature"
IDENTITY_HEADERS = frozenset({PARTICIPANT_HEADER, ROLES_HEADER, DIVISION_HEADER, SIGNATURE_HEADER})

SIGNATURE_VERSION = "v1"
# The canonical string starts with this, so a MAC made for anything else of the mesh never passes as a caller's.
_SIGNATURE_CONTEXT = "greenmesh-caller"
DEFAULT_MAX_AGE_SECONDS = 300.0
CALLER_KEY_FILE = "caller.key"

CALLER_NOT_SIGNED = "CALLER_NOT_SIGNED"
CALLER_SIGNATURE_EXPIRED = "CALLER_SIGNATURE_EXPIRED"

REGULATOR = "REGULATOR"
PLATFORM_OPERATOR = "PLATFORM_OPERATOR"


@dataclass(frozen=True)
class Caller:
    participant_id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    # For regulators: the GB/T 2260 code of the region they supervise (XX0000 province, XXYY00, or a county).
    supervised_division: str = ""

    @property
    def authenticated(self) -> bool:
        return self.participant_id is not None

    @property
    def is_platform_operator(self) -> bool:
        return PLATFORM_OPERATOR in self.roles

    @property
    def is_regulator(self) -> bool:
        return REGULATOR in self.roles

    def region_prefix(self) -> str:
        """The division-code prefix a regulator's region covers: 32 for 320000, 3201 for 320100, …"""
        code = self.supervised_division
        if len(code) != 6:
            return "\0"  # matches nothing
        if code.endswith("0000"):
            return code[:2]
        if code.endswith("00"):
            return code[:4]
        return code

    def supervises(self, division_code: str) -> bool:
        """Platform operators see everything; a regulator sees the divisions inside its region."""
        if self.is_platform_operator:
            return True
        return self.is_regulator and division_code.startswith(self.region_prefix())

    def metadata(self, key: bytes, *, issued_at: int | None = None) -> list[tuple[str, str]]:
        """The metadata that carries this caller, signed with the mesh's `key` (what the gateway sends; tests
        and the CLI too). `issued_at` (unix seconds, default now) is for tests. Anonymous: no metadata."""
        if self.participant_id is None:
            return []
        items = [(PARTICIPANT_HEADER, self.participant_id), (ROLES_HEADER, ",".join(sorted(self.roles)))]
        if self.supervised_division:
            items.append((DIVISION_HEADER, self.supervised_division))
        # Sign the identity as a service will read it, so what is verified is exactly what handlers see.
        signed_as = caller_from_metadata(items)
        moment = int(time.time()) if issued_at is None else issued_at
        items.append((SIGNATURE_HEADER, caller_signature(key, signed_as, moment)))
        return items


ANONYMOUS = Caller()


def caller_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Caller:
    """The identity the headers claim (not verified here: `CallerSignatureInterceptor` does that)."""
    values = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
    participant = values.get(PARTICIPANT_HEADER, "").strip()
    if not participant:
        return ANONYMOUS
    roles = frozenset(role.strip().upper() for role in values.get(ROLES_HEADER, "").split(",") if role.strip())
    return Caller(participant_id=participant, roles=roles, supervised_division=values.get(DIVISION_HEADER, "").strip())


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    return caller_from_metadata(context.invocation_metadata())


def require_authenticated(caller: Caller) -> str:
    if caller.participant_id is None:
        raise Unauthenticated()
    return caller.participant_id


def require_any_role(caller: Caller, roles: Sequence[str], action: str) -> None:
    require_authenticated(caller)
    if not caller.roles.intersection(roles):
        raise PermissionDenied(f"{action} needs one of the roles {', '.join(roles)}")


# ---- signing ----------------------------------------------------------------------------------------------


def canonical_identity(caller: Caller, issued_at: int) -> bytes:
    """What the signature covers: the version, the participant, the sorted roles, the supervised division and
    the moment of signing, as a JSON array (so no field can run into the next whatever it contains)."""
    fields = [
        _SIGNATURE_CONTEXT,
        SIGNATURE_VERSION,
        caller.participant_id or "",
        sorted(caller.roles),
        caller.supervised_division,
        issued_at,
    ]
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _mac(key: bytes, caller: Caller, issued_at: int) -> str:
    digest = hmac.new(key, canonical_identity(caller, issued_at), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def caller_signature(key: bytes, caller: Caller, issued_at: int) -> str:
    """`v1.<unix seconds>.<base64url HMAC-SHA256 without padding>`: the value of `x-greenmesh-caller-signature`."""
    if not key:
        raise ValueError("a caller signature needs a key")
    return f"{SIGNATURE_VERSION}.{issued_at}.{_mac(key, caller, issued_at)}"


class CallerNotVerified(Exception):
    """Why the identity of a call is refused: `reason` is CALLER_NOT_SIGNED or CALLER_SIGNATURE_EXPIRED."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def verify_caller(
    metadata: Iterable[tuple[str, Any]] | None,
    key: bytes,
    *,
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    now: float | None = None,
) -> Caller:
    """The caller of a call's metadata: anonymous without identity headers; otherwise the identity, if the
    signature is `key`'s over exactly this identity and was made within `max_age_seconds` of `now` (either way,
    for clock skew). Raises CallerNotVerified."""
    items = [(name, value) for name, value in (metadata or ()) if name in IDENTITY_HEADERS]
    if not items:
        return ANONYMOUS
    names = [name for name, _ in items]
    if len(names) != len(set(names)) or any(not isinstance(value, str) for _, value in items):
        raise CallerNotVerified(CALLER_NOT_SIGNED, "each caller identity header may appear once, as text")
    caller = caller_from_metadata(items)
    signature = dict(items).get(SIGNATURE_HEADER)
    if caller.participant_id is None or signature is None:
        raise CallerNotVerified(CALLER_NOT_SIGNED, "the caller identity carries no signature")
    version, _, rest = signature.partition(".")
    seconds, _, mac = rest.partition(".")
    if version != SIGNATURE_VERSION or not (seconds.isascii() and seconds.isdigit()) or len(seconds) > 12:
        raise CallerNotVerified(CALLER_NOT_SIGNED, "the caller signature is malformed")
    issued_at = int(seconds)
    expected = _mac(key, caller, issued_at)
    if not hmac.compare_digest(expected.encode("ascii"), mac.encode("utf-8", "replace")):
        raise CallerNotVerified(CALLER_NOT_SIGNED, "the caller signature does not match the identity")
    moment = time.time() if now is None else now
    if abs(moment - issued_at) > max_age_seconds:
        raise CallerNotVerified(
            CALLER_SIGNATURE_EXPIRED,
            f"the caller signature is {abs(moment - issued_at):.0f}s off this service's clock; at most "
            f"{max_age_seconds:g}s is accepted",
        )
    return caller


# ---- the key ------------------------------------------------------------------------------------------------


def signing_key(settings: MeshSettings, *, warn: bool = True) -> bytes:
    """The mesh's key that signs caller identities: `GREENMESH_CALLER_KEY` when set; otherwise the key in
    `<data_dir>/caller.key`, made (random, mode 0600) when missing, which only processes sharing the data
    directory know. `warn` logs that the file is used (what a service should do; the local CLI need not)."""
    if settings.caller_key is not None:
        return settings.caller_key.get_secret_value().encode("utf-8")
    path = settings.data_dir / CALLER_KEY_FILE
    key = read_or_create_key_file(path)
    if warn:
        log.warning(
            "GREENMESH_CALLER_KEY is not set: caller identities are signed and verified with the key in %s, which "
            "only processes sharing this data directory have (right for one machine; set the key for a cluster)",
            path,
        )
    return key


def read_or_create_key_file(path: Path) -> bytes:
    """The key in `path`; when there is none, 32 random bytes in hex are written first. Creation is atomic (a
    complete temporary file hard-linked into place, which fails if another process got there first), so
    processes starting at once all end up with the one key that won."""
    with contextlib.suppress(FileNotFoundError):
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_CALLER_KEY_LENGTH:
        raise RuntimeError(
            f"{path} holds no caller key (at least {MIN_CALLER_KEY_LENGTH} characters); remove it to have one made"
        )
    return key.encode("utf-8")


# ---- verification -------------------------------------------------------------------------------------------


class CallerSignatureInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through when it has no identity headers (anonymous) or a valid, fresh signature of them;
    answers any other UNAUTHENTICATED (ErrorInfo reason CALLER_NOT_SIGNED or CALLER_SIGNATURE_EXPIRED, domain
    greenmesh.io) without running the handler or reading a streamed request."""

    def __init__(self, key: bytes, max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS) -> None:
        if not key:
            raise ValueError("CallerSignatureInterceptor needs the mesh's key")
        self._key = key
        self._max_age_seconds = max_age_seconds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return handler
        metadata = getattr(handler_call_details, "invocation_metadata", None)
        try:
            verify_caller(metadata, self._key, max_age_seconds=self._max_age_seconds)
        except CallerNotVerified as refused:
            log.info(
                "refused the caller identity of %s: %s",
                handler_call_details.method,
                refused.message,
                extra={"method": handler_call_details.method, "reason": refused.reason},
            )
            return _refusing_handler(handler, Unauthenticated(refused.message, reason=refused.reason))
        return handler


def _refusing_handler(handler: Any, error: Unauthenticated) -> Any:
    """A handler of the same kind and (de)serializers that only aborts with `error`."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort_with(context, error)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await abort_with(context, error)
        # Never reached (abort raises); the yield makes this an async generator, which outer interceptors (the
        # OpenTelemetry one) expect of a handler whose answer is a stream.
        yield

    behaviour: Any = refuse
    if handler.unary_unary:
        factory: Any = grpc.unary_unary_rpc_method_handler
    elif handler.stream_unary:
        factory = grpc.stream_unary_rpc_method_handler
    else:
        behaviour = refuse_stream
        factory = (
            grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        )
    return factory(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
