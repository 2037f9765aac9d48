"""Who is calling: the identity the gateway puts in request metadata.

The gateway authenticates the API credential and passes the caller's participant id, roles and supervised
region in `x-greenmesh-*` metadata. Services read the caller only through `caller_of(context)`, the one
place where the gateway's signature will be verified, so a client that talks to a service directly cannot
claim an identity it does not have. Without these headers the caller is anonymous.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from meshkit.errors import PermissionDenied, Unauthenticated

PARTICIPANT_HEADER = "x-greenmesh-participant-id"
ROLES_HEADER = "x-greenmesh-roles"
DIVISION_HEADER = "x-greenmesh-division"

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

    def metadata(self) -> list[tuple[str, str]]:
        """The metadata that carries this caller (what the gateway sends; tests and the CLI too)."""
        if self.participant_id is None:
            return []
        items = [(PARTICIPANT_HEADER, self.participant_id), (ROLES_HEADER, ",".join(sorted(self.roles)))]
        if self.supervised_division:
            items.append((DIVISION_HEADER, self.supervised_division))
        return items


ANONYMOUS = Caller()


def caller_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> Caller:
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
