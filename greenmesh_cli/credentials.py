"""`greenmesh credential bootstrap`: the first API key of a mesh, for its platform operator.

Every call through the gateway needs an API key the registry issued, and issuing one needs a platform
operator: the first key cannot come through the gateway. This command talks to the registry directly as the
machine's own operator (its identity signed with the mesh key, which only this machine's data directory or the
deployment's Secret holds), registers the platform-operator participant when it is missing (matched by
credit code), activates it, and issues a key. The key goes to standard output alone, so
`KEY=$(greenmesh credential bootstrap)` keeps it; everything else goes to standard error.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
from rich.console import Console

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from greenmesh_cli.mesh_file import component_address, local_caller_key
from greenmesh_cli.registry_import import LOCAL_OPERATOR_ID, operator_caller
from meshkit.grpc_options import CHANNEL_OPTIONS

LOCAL_OPERATOR_NAME = "GreenMesh 平台运营方 (本机)"
CALL_TIMEOUT_SECONDS = 10.0


class BootstrapProblem(Exception):
    """The registry could not be reached or refused (exit status 2)."""


@dataclass(frozen=True)
class Bootstrapped:
    api_key: str
    participant_id: str
    created_participant: bool


def local_operator_code(province: str) -> str:
    """A made-up (checksum-valid) credit code for the local demo operator of a province; deterministic, so
    running the command again finds the same participant. A deployment passes its operator's real code."""
    from services.registry.domain.credit_code import make_credit_code

    return make_credit_code(f"{province}0000", seed=f"greenmesh-local-operator-{province}")


async def bootstrap(
    target: str, credit_code: str, legal_name: str, label: str, key: bytes, connect_timeout: float = 5.0
) -> Bootstrapped:
    metadata = tuple(operator_caller(LOCAL_OPERATOR_ID).metadata(key))
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), connect_timeout)
        except TimeoutError:
            raise BootstrapProblem(f"no registry answers at {target} (waited {connect_timeout:g} s)") from None
        registry: Any = registry_pb2_grpc.RegistryServiceStub(channel)  # grpc.aio: the async stub
        try:
            participant, created = await _operator(registry, metadata, credit_code, legal_name)
            issued = await registry.IssueCredential(
                pb.IssueCredentialRequest(participant_id=participant.participant_id, label=label),
                metadata=metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise BootstrapProblem(
                f"the registry at {target} refused ({error.code().name}): {error.details() or ''}"
            ) from None
    return Bootstrapped(str(issued.api_key), participant.participant_id, created)


async def _operator(
    registry: Any, metadata: tuple[tuple[str, str], ...], code: str, name: str
) -> tuple[pb.Participant, bool]:
    """The active platform-operator participant with this credit code, registered and activated if need be."""
    created = False
    try:
        found = await registry.GetParticipant(
            pb.GetParticipantRequest(credit_code=code), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
        )
        participant: pb.Participant = found.participant
    except grpc.aio.AioRpcError as error:
        if error.code() is not grpc.StatusCode.NOT_FOUND:
            raise
        registered = await registry.RegisterParticipant(
            pb.RegisterParticipantRequest(
                participant=pb.Participant(
                    credit_code=code, legal_name=name, roles=[pb.PARTICIPANT_ROLE_PLATFORM_OPERATOR]
                )
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        participant, created = registered.participant, True
    if pb.PARTICIPANT_ROLE_PLATFORM_OPERATOR not in participant.roles:
        raise BootstrapProblem(f"the participant with credit code {code} is not a platform operator")
    if participant.status != pb.PARTICIPANT_STATUS_ACTIVE:
        changed = await registry.ChangeParticipantStatus(
            pb.ChangeParticipantStatusRequest(
                participant_id=participant.participant_id,
                status=pb.PARTICIPANT_STATUS_ACTIVE,
                reason="platform operator bootstrapped by greenmesh credential bootstrap",
                version=participant.version,
            ),
            metadata=metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        participant = changed.participant
    return participant, created


def run_bootstrap_command(
    registry: str | None, credit_code: str | None, legal_name: str, label: str, connect_timeout: float, err: Console
) -> tuple[int, str]:
    """What the command does: (exit status, the key or "")."""
    from meshkit.config import load_settings

    target = registry or component_address("registry")[0]
    code = credit_code or local_operator_code(load_settings().province)
    try:
        result = asyncio.run(bootstrap(target, code, legal_name, label, local_caller_key(), connect_timeout))
    except BootstrapProblem as problem:
        err.print(f"[red]greenmesh credential bootstrap: {problem}[/red]", soft_wrap=True)
        return 2, ""
    what = "registered and activated" if result.created_participant else "found"
    err.print(f"platform operator {result.participant_id} ({code}) {what}; a new API key follows on stdout")
    return 0, result.api_key
