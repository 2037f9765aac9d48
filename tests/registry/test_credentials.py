"""API credentials: shown once, stored only as a hash, verified, listed and revoked."""

from __future__ import annotations

import grpc
import pytest
from sqlmodel import col, select

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.errors import error_reason
from meshkit.tables import OutboxEvent
from services.registry.tables import CredentialRow
from tests.registry.conftest import GUANGDONG_REGULATOR, JIANGSU_REGULATOR, Registry, as_participant


async def test_issue_verify_list_revoke(registry: Registry) -> None:
    participant = await registry.participant("DEALER")
    issued = await registry.call(
        "IssueCredential", pb.IssueCredentialRequest(participant_id=participant.participant_id, label="ERP"),
        JIANGSU_REGULATOR,
    )  # fmt: skip
    key_id, _, secret = issued.api_key.partition(".")
    assert key_id == issued.credential.key_id and len(secret) >= 40
    async with registry.runtime.database.session() as session:
        stored = await session.get(CredentialRow, key_id)
    assert stored is not None and secret not in stored.secret_hash and stored.secret_hash != secret
    async with registry.runtime.database.session() as session:
        events = (
            await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_type).endswith("CredentialIssued")))
        ).all()
    assert len(events) == 1
    assert secret.encode() not in events[0].payload and stored.secret_hash.encode() not in events[0].payload

    verified = await registry.call("VerifyCredential", pb.VerifyCredentialRequest(api_key=issued.api_key))
    assert verified.participant.participant_id == participant.participant_id

    listed = await registry.call(
        "ListCredentials",
        pb.ListCredentialsRequest(participant_id=participant.participant_id),
        as_participant(participant),
    )
    assert [c.key_id for c in listed.credentials] == [key_id]

    for wrong in (f"{key_id}.{secret[:-1]}x", "gmk_0000000000000000.nothing", "not-a-key", ""):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await registry.call("VerifyCredential", pb.VerifyCredentialRequest(api_key=wrong))
        assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED

    revoked = await registry.call("RevokeCredential", pb.RevokeCredentialRequest(key_id=key_id, reason="leaked"))
    assert revoked.credential.revoked_at.seconds > 0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call("VerifyCredential", pb.VerifyCredentialRequest(api_key=issued.api_key))
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call("RevokeCredential", pb.RevokeCredentialRequest(key_id=key_id))
    assert error_reason(raised.value) == "ALREADY_REVOKED"


async def test_who_may_issue_and_for_whom(registry: Registry) -> None:
    pending = await registry.participant("DEALER", status="PENDING")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call("IssueCredential", pb.IssueCredentialRequest(participant_id=pending.participant_id))
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    active = await registry.participant("DEALER")
    for caller in (GUANGDONG_REGULATOR, as_participant(active)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await registry.call(
                "IssueCredential", pb.IssueCredentialRequest(participant_id=active.participant_id), caller
            )
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    other = await registry.participant("DEALER")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call(
            "ListCredentials", pb.ListCredentialsRequest(participant_id=active.participant_id), as_participant(other)
        )
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
