"""API keys: verified by the registry once, then cached; registry events evict an entry at once.

An API key is `<key_id>.<secret>` (the registry shows it once and stores only a hash). The gateway asks the
registry's VerifyCredential on a miss and keeps the answer for a while, keyed by a hash of the whole key so
the secret is not kept. Registry events evict entries as soon as they are published: CredentialRevoked (that
key), ParticipantChanged (every key of that participant: its status or roles may have changed). The time to
live bounds what a missed event could cost (the gateway also forgets everything when it loses NATS), and
concurrent misses for one key share a single registry call.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.caller import Caller
from meshkit.errors import error_reason

# The registry's own answer for a bad key; anything else from it (UNAVAILABLE, DEADLINE_EXCEEDED) is not the
# client's fault and must not be reported as "your key is wrong".
VERIFY_TIMEOUT_SECONDS = 3.0


def caller_of_participant(participant: pb.Participant) -> Caller:
    """The identity a participant's credential carries into the mesh."""
    roles = frozenset(pb.ParticipantRole.Name(role).removeprefix("PARTICIPANT_ROLE_") for role in participant.roles)
    return Caller(
        participant_id=participant.participant_id,
        roles=roles,
        supervised_division=participant.supervised_division_code,
    )


@dataclass(frozen=True)
class Verified:
    key_id: str
    caller: Caller


class InvalidCredential(Exception):
    """The registry says the key is unknown, revoked, malformed, or its participant is not active."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class VerifierUnavailable(Exception):
    """The registry could not be asked (down, slow): the caller should retry, the key may well be good."""


Verify = Callable[[str], Awaitable[pb.VerifyCredentialResponse]]


@dataclass
class _Entry:
    verified: Verified | None
    invalid: InvalidCredential | None
    expires_at: float


@dataclass
class CredentialCache:
    verify: Verify
    ttl_seconds: float = 300.0
    # A rejected key is remembered briefly, so a client retrying a bad key does not load the registry.
    negative_ttl_seconds: float = 5.0
    max_entries: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _by_key_id: dict[str, str] = field(default_factory=dict)
    _by_participant: dict[str, set[str]] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[_Entry]] = field(default_factory=dict)
    # Bumped by every eviction: an answer fetched before an eviction is not cached after it.
    _generation: int = 0
    lookups: int = 0
    registry_calls: int = 0

    async def authenticate(self, api_key: str) -> Verified:
        """The caller behind `api_key`; InvalidCredential or VerifierUnavailable otherwise."""
        self.lookups += 1
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        entry = self._entries.get(digest)
        if entry is None or entry.expires_at <= self.clock():
            pending = self._pending.get(digest)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._pending[digest] = pending
                try:
                    entry = await self._fetch(digest, api_key)
                    pending.set_result(entry)
                except BaseException as error:
                    pending.set_exception(error)
                    pending.exception()  # retrieved here, so an unshared failure is not logged as unhandled
                    raise
                finally:
                    del self._pending[digest]
            else:
                entry = await asyncio.shield(pending)
        if entry.invalid is not None:
            raise entry.invalid
        assert entry.verified is not None
        return entry.verified

    async def _fetch(self, digest: str, api_key: str) -> _Entry:
        generation = self._generation
        self.registry_calls += 1
        try:
            reply = await self.verify(api_key)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise VerifierUnavailable(f"the registry could not verify the key: {error.code().name}") from error
            invalid = InvalidCredential(error_reason(error) or "INVALID_API_KEY", error.details() or "invalid API key")
            entry = _Entry(None, invalid, self.clock() + self.negative_ttl_seconds)
            self._store(digest, entry, key_id="", participant_id="", generation=generation)
            return entry
        verified = Verified(key_id=reply.credential.key_id, caller=caller_of_participant(reply.participant))
        entry = _Entry(verified, None, self.clock() + self.ttl_seconds)
        self._store(
            digest,
            entry,
            key_id=verified.key_id,
            participant_id=reply.participant.participant_id,
            generation=generation,
        )
        return entry

    def _store(self, digest: str, entry: _Entry, *, key_id: str, participant_id: str, generation: int) -> None:
        if generation != self._generation:
            return  # an eviction happened while we asked: the answer may already be stale
        if len(self._entries) >= self.max_entries:
            self.clear()
        self._entries[digest] = entry
        if key_id:
            self._by_key_id[key_id] = digest
        if participant_id:
            self._by_participant.setdefault(participant_id, set()).add(digest)

    def evict_key(self, key_id: str) -> None:
        self._generation += 1
        digest = self._by_key_id.pop(key_id, None)
        if digest is not None:
            self._entries.pop(digest, None)

    def evict_participant(self, participant_id: str) -> None:
        self._generation += 1
        for digest in self._by_participant.pop(participant_id, set()):
            self._entries.pop(digest, None)

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_key_id.clear()
        self._by_participant.clear()

    def __len__(self) -> int:
        return len(self._entries)
