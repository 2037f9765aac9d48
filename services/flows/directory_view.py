"""The flows service's local copy of the registry directory, kept current by a JetStream KV watch.

The registry writes one compact entry per participant and facility into ``GREENMESH_<province>_DIRECTORY``
(``participant.<id>`` / ``facility.<id>``, serialized ``DirectoryEntry``; README "The directory").
:class:`DirectoryView` holds them in dictionaries so that every lookup the rules make per event is a dict
access: validating a flow event never waits on the registry or on NATS.

Why the watch is supervised here rather than trusted to nats-py: a ``KeyValue.watch()`` is an ordered push
consumer whose iterator never ends and never raises. When the server restarts, the (memory-stored) consumer
is gone, the iterator simply goes quiet, and nats-py only recreates it after two missed idle heartbeats
(about 10-20 s). Errors inside its delivery callback go to the connection's error callback, not to us. So
:meth:`DirectoryView.run` watches the connection's reconnect counter and the stream's last sequence itself,
and re-reads the snapshot whenever the watch may have missed something.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import DecodeError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.bus import Bus
from services.flows.domain.directory import FacilityInfo, ParticipantInfo
from services.registry.events import directory_bucket

log = logging.getLogger(__name__)

PARTICIPANT_PREFIX = "participant."
FACILITY_PREFIX = "facility."


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """What a storing facility may hold; 0 in one field means the registry records no limit for it."""

    max_stock_kg: float
    max_stock_units: int
    max_dwell_days: int


@dataclass(frozen=True, slots=True)
class _FacilityRecord:
    info: FacilityInfo
    limits: StorageLimits | None
    version: int


@dataclass(frozen=True, slots=True)
class _ParticipantRecord:
    info: ParticipantInfo
    supervised_division: str
    version: int


class _WatchLost(Exception):
    """The watch can no longer be trusted to deliver every change; re-establish it."""


def _enum_name(enum: EnumDescriptor, value: int, prefix: str) -> str:
    """``FACILITY_TYPE_RECYCLING_PLANT`` → ``RECYCLING_PLANT``, the spelling the domain compares against.

    A number this build does not know (a newer registry) becomes ``UNKNOWN_<n>``: it then matches no kind,
    role or status, which is the safe reading for a validator.
    """
    known = enum.values_by_number.get(value)
    return known.name.removeprefix(prefix) if known is not None else f"UNKNOWN_{value}"


def _raise_if_cancelling() -> None:
    # Python 3.11's asyncio.wait_for (used inside nats-py's requests) can swallow a cancellation that
    # races with the reply (gh-86296, fixed in 3.12). The request is then still pending on the task, so
    # honour it here instead of looping on as if nothing had happened.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@dataclass(frozen=True, slots=True)
class RemoteFacility:
    """A facility of another province (cross-province transfers, ``services.flows.transfers``)."""

    info: FacilityInfo
    province: str
    version: int


@dataclass(frozen=True, slots=True)
class RemoteParticipant:
    """A participant registered in another province."""

    info: ParticipantInfo
    province: str
    version: int


class DirectoryView:
    """A :class:`~services.flows.domain.directory.Directory` fed by the registry's KV directory.

    Lookups are O(1) and never block. An entry is replaced only by one of the same or a higher version, so a
    late or replayed write never rolls it back; a delete or purge of the key removes it.

    Behind the province's own directory stands the directory of the other provinces (``apply_remote_*``, fed
    through the national hub and kept in the flows database): a facility or participant the local directory does
    not know is looked up there, so that a shipment to another province's facility is judged like a local one.
    The local directory always wins; the remote entries never make a facility "operated" here, nor a regulator.
    """

    def __init__(
        self,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        check_interval: float = 5.0,
        tick: float = 0.5,
    ) -> None:
        self._facilities: dict[str, _FacilityRecord] = {}
        self._participants: dict[str, _ParticipantRecord] = {}
        self._by_credit_code: dict[str, str] = {}
        # operator participant id → ids of the facilities it operates (what an enterprise may read: QueryEvents).
        self._by_operator: dict[str, set[str]] = {}
        self._remote_facilities: dict[str, RemoteFacility] = {}
        self._remote_participants: dict[str, RemoteParticipant] = {}
        self._remote_by_credit_code: dict[str, str] = {}
        # Set once the first snapshot is in; stays set through outages (stale data beats no data).
        self.ready = asyncio.Event()
        # How many times a snapshot was read completely: 1 after start, +1 per re-established watch.
        self.snapshots_loaded = 0
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._check_interval = check_interval
        self._tick = tick

    @classmethod
    def of(
        cls,
        facilities: Iterable[FacilityInfo] = (),
        participants: Iterable[ParticipantInfo] = (),
        *,
        limits: Mapping[str, StorageLimits] | None = None,
        supervised: Mapping[str, str] | None = None,
    ) -> DirectoryView:
        """A ready view with fixed contents, for tests that do not need NATS."""
        view = cls()
        limits = limits or {}
        supervised = supervised or {}
        for facility in facilities:
            view._store_facility(_FacilityRecord(facility, limits.get(facility.facility_id), 0))
        for participant in participants:
            division = supervised.get(participant.participant_id, "")
            view._store_participant(_ParticipantRecord(participant, division, 0))
        view.ready.set()
        return view

    # -- the Directory protocol -----------------------------------------------------------------

    def facility(self, facility_id: str) -> FacilityInfo | None:
        record = self._facilities.get(facility_id)
        if record is not None:
            return record.info
        remote = self._remote_facilities.get(facility_id)
        return remote.info if remote is not None else None

    def participant(self, participant_id: str) -> ParticipantInfo | None:
        record = self._participants.get(participant_id)
        if record is not None:
            return record.info
        remote = self._remote_participants.get(participant_id)
        return remote.info if remote is not None else None

    def participant_by_credit_code(self, credit_code: str) -> ParticipantInfo | None:
        participant_id = self._by_credit_code.get(credit_code)
        if participant_id is not None:
            return self.participant(participant_id)
        remote_id = self._remote_by_credit_code.get(credit_code)
        return self.participant(remote_id) if remote_id is not None else None

    # -- the other provinces' directory ------------------------------------------------------------

    def apply_remote_facility(self, facility: FacilityInfo, province: str, version: int) -> bool:
        """Hold another province's facility; False when an entry of a higher version is held already."""
        held = self._remote_facilities.get(facility.facility_id)
        if held is not None and version < held.version:
            return False
        self._remote_facilities[facility.facility_id] = RemoteFacility(facility, province, version)
        return True

    def apply_remote_participant(self, participant: ParticipantInfo, province: str, version: int) -> bool:
        """Hold a participant of another province; False when an entry of a higher version is held already."""
        held = self._remote_participants.get(participant.participant_id)
        if held is not None and version < held.version:
            return False
        if held is not None and self._remote_by_credit_code.get(held.info.credit_code) == held.info.participant_id:
            del self._remote_by_credit_code[held.info.credit_code]
        self._remote_participants[participant.participant_id] = RemoteParticipant(participant, province, version)
        if participant.credit_code:
            self._remote_by_credit_code[participant.credit_code] = participant.participant_id
        return True

    def remote_facility(self, facility_id: str) -> RemoteFacility | None:
        return self._remote_facilities.get(facility_id)

    def remote_participant(self, participant_id: str) -> RemoteParticipant | None:
        return self._remote_participants.get(participant_id)

    # -- what the monitors need besides -----------------------------------------------------------

    def limits(self, facility_id: str) -> StorageLimits | None:
        """The facility's storage limits; None for an unknown facility or one that declares none at all."""
        record = self._facilities.get(facility_id)
        return record.limits if record else None

    def facilities(self) -> Iterable[FacilityInfo]:
        # A copy: a monitor may await between items while the watch changes the dictionary.
        return [record.info for record in self._facilities.values()]

    def facilities_of(self, operator_id: str) -> frozenset[str]:
        """The ids of the facilities this participant operates (empty for an unknown id or no facility)."""
        return frozenset(self._by_operator.get(operator_id, ()))

    def supervised_division(self, participant_id: str) -> str:
        """The division a regulator supervises (e.g. ``320000``); "" for anyone else or an unknown id."""
        record = self._participants.get(participant_id)
        return record.supervised_division if record else ""

    async def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the first snapshot; True once it is in."""
        if self.ready.is_set():
            return True
        try:
            # asyncio.timeout rather than wait_for: the latter can lose a cancellation on 3.11.
            async with asyncio.timeout(timeout):
                await self.ready.wait()
        except TimeoutError:
            return False
        return True

    # -- applying KV entries --------------------------------------------------------------------

    def apply(self, key: str, value: bytes | None) -> bool:
        """Apply one serialized entry under `key`; False when it was ignored (older, unreadable, unknown)."""
        entry = pb.DirectoryEntry()
        try:
            entry.ParseFromString(value or b"")
        except DecodeError:
            log.warning("directory entry %s is not a DirectoryEntry; ignored", key)
            return False
        kind = entry.WhichOneof("entry")
        if key.startswith(FACILITY_PREFIX) and kind == "facility":
            return self._apply_facility(key.removeprefix(FACILITY_PREFIX), entry.facility, entry.version)
        if key.startswith(PARTICIPANT_PREFIX) and kind == "participant":
            return self._apply_participant(key.removeprefix(PARTICIPANT_PREFIX), entry.participant, entry.version)
        log.warning("directory entry %s holds %s; ignored", key, kind or "nothing")
        return False

    def remove(self, key: str) -> bool:
        """Forget the entry under `key` (the key was deleted or purged); False when it was not held."""
        if key.startswith(FACILITY_PREFIX):
            held = self._facilities.pop(key.removeprefix(FACILITY_PREFIX), None)
            if held is None:
                return False
            self._unindex_facility(held)
            return True
        if key.startswith(PARTICIPANT_PREFIX):
            record = self._participants.pop(key.removeprefix(PARTICIPANT_PREFIX), None)
            if record is None:
                return False
            self._unindex(record)
            return True
        return False

    def _apply_facility(self, facility_id: str, facility: pb.DirectoryFacility, version: int) -> bool:
        held = self._facilities.get(facility_id)
        if held is not None and version < held.version:
            return False
        limits: StorageLimits | None = None
        if facility.HasField("storage_limits"):
            source = facility.storage_limits
            limits = StorageLimits(source.max_stock_kg, source.max_stock_units, source.max_dwell_days)
            if limits == StorageLimits(0.0, 0, 0):
                limits = None  # the registry writes an all-zero message for sites that store nothing
        info = FacilityInfo(
            facility_id=facility_id,
            facility_type=_enum_name(pb.FacilityType.DESCRIPTOR, facility.facility_type, "FACILITY_TYPE_"),
            accreditation=_enum_name(
                pb.AccreditationStatus.DESCRIPTOR, facility.accreditation, "ACCREDITATION_STATUS_"
            ),
            operator_id=facility.operator_id,
            county_code=facility.county_code,
        )
        if held is not None:
            self._unindex_facility(held)  # the operator may have changed
        self._store_facility(_FacilityRecord(info, limits, version))
        return True

    def _apply_participant(self, participant_id: str, participant: pb.DirectoryParticipant, version: int) -> bool:
        held = self._participants.get(participant_id)
        if held is not None and version < held.version:
            return False
        roles = frozenset(
            _enum_name(pb.ParticipantRole.DESCRIPTOR, role, "PARTICIPANT_ROLE_")
            for role in participant.roles
            if role != pb.PARTICIPANT_ROLE_UNSPECIFIED
        )
        info = ParticipantInfo(
            participant_id=participant_id,
            credit_code=participant.credit_code,
            roles=roles,
            status=_enum_name(pb.ParticipantStatus.DESCRIPTOR, participant.status, "PARTICIPANT_STATUS_"),
        )
        if held is not None:
            self._unindex(held)  # the credit code may have changed
        self._store_participant(_ParticipantRecord(info, participant.supervised_division_code, version))
        return True

    def _store_facility(self, record: _FacilityRecord) -> None:
        self._facilities[record.info.facility_id] = record
        if record.info.operator_id:
            self._by_operator.setdefault(record.info.operator_id, set()).add(record.info.facility_id)

    def _unindex_facility(self, record: _FacilityRecord) -> None:
        operated = self._by_operator.get(record.info.operator_id)
        if operated is not None:
            operated.discard(record.info.facility_id)
            if not operated:
                del self._by_operator[record.info.operator_id]

    def _store_participant(self, record: _ParticipantRecord) -> None:
        self._participants[record.info.participant_id] = record
        if record.info.credit_code:
            self._by_credit_code[record.info.credit_code] = record.info.participant_id

    def _unindex(self, record: _ParticipantRecord) -> None:
        # Only drop the index entry if it is still ours: another participant may have taken the code since.
        code = record.info.credit_code
        if code and self._by_credit_code.get(code) == record.info.participant_id:
            del self._by_credit_code[code]

    def _keys(self) -> set[str]:
        return {FACILITY_PREFIX + key for key in self._facilities} | {
            PARTICIPANT_PREFIX + key for key in self._participants
        }

    # -- the watch ------------------------------------------------------------------------------

    async def run(self, bus: Bus, province: str) -> None:
        """Load the directory, then follow it until cancelled; outages are waited out, never fatal."""
        bucket = directory_bucket(province)
        backoff = self._backoff_initial
        failing = False

        def live() -> None:
            nonlocal backoff, failing
            if failing:
                entries = len(self._facilities) + len(self._participants)
                log.info("directory watch on %s re-established (%d entries)", bucket, entries)
            backoff, failing = self._backoff_initial, False

        while True:
            _raise_if_cancelling()
            if not bus.connected:
                # Before the first connect, or while the client reconnects by itself: the bus logs that.
                await asyncio.sleep(self._backoff_initial)
                continue
            try:
                await self._watch(bus, bucket, live)
            except Exception as exc:  # CancelledError is a BaseException and passes through
                if not failing:
                    log.warning("directory watch on %s interrupted (%r); re-establishing", bucket, exc)
                    failing = True
                else:
                    log.debug("directory watch on %s still failing: %r", bucket, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)

    async def _watch(self, bus: Bus, bucket: str, live: Callable[[], None]) -> None:
        """One watch: the snapshot, then updates; raises once it may have missed a change."""
        client = bus.client
        if client is None:
            raise _WatchLost("the bus has no connection")
        reconnects = client.stats["reconnects"]
        kv = await bus.key_value(bucket)
        # Read before the watch's consumer exists, so the snapshot covers at least this much of the stream.
        # Once the snapshot is in, the watch counts as caught up to here even if the newest of these messages
        # has since been purged (it would otherwise look forever "behind" to _check_progress).
        baseline = await self._last_sequence(kv)
        # A short inactive threshold so that the ephemeral consumers of abandoned watches go away soon.
        watcher = await kv.watch(">", inactive_threshold=60.0)
        try:
            snapshot: set[str] | None = set()  # keys seen in the snapshot; None once it is complete
            last_revision = 0
            behind = False
            idle = 0.0
            while True:
                try:
                    # asyncio.timeout around the iterator rather than watcher.updates(timeout), which
                    # uses wait_for and can lose a cancellation on 3.11.
                    async with asyncio.timeout(self._tick):
                        update: KeyValue.Entry | None = await anext(watcher)
                except TimeoutError:
                    _raise_if_cancelling()
                    if bus.client is not client or not client.is_connected or client.stats["reconnects"] != reconnects:
                        # Even a brief reconnect may have been a server restart that took our consumer along.
                        raise _WatchLost("the NATS connection was interrupted") from None
                    idle += self._tick
                    if idle >= self._check_interval:
                        idle = 0.0
                        behind = await self._check_progress(kv, last_revision, behind)
                    continue
                except StopAsyncIteration:
                    raise _WatchLost("the watcher stopped") from None
                idle, behind = 0.0, False
                if update is None:  # nats-py's marker: the initial values are all in
                    if snapshot is not None:
                        self._end_snapshot(snapshot)
                        snapshot = None
                        last_revision = max(last_revision, baseline)
                        live()
                    continue
                last_revision = max(last_revision, update.revision or 0)
                if snapshot is not None:
                    snapshot.add(update.key)
                if update.operation in (KV_DEL, KV_PURGE):
                    self.remove(update.key)
                else:
                    self.apply(update.key, update.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated

    def _end_snapshot(self, seen: set[str]) -> None:
        # A key deleted while we were not watching may have left no marker (purged deletes, a fresh
        # server): whatever the snapshot did not mention is gone.
        for key in self._keys() - seen:
            self.remove(key)
        self.snapshots_loaded += 1
        self.ready.set()

    @staticmethod
    async def _last_sequence(kv: KeyValue) -> int:
        status = await kv.status()
        return int(status.stream_info.state.last_seq or 0)

    @classmethod
    async def _check_progress(cls, kv: KeyValue, last_revision: int, behind: bool) -> bool:
        """Compare the bucket's last sequence with what the watch delivered; raise if the watch is stuck.

        Returns whether the watch is behind now; behind at two checks in a row with nothing delivered in
        between means the consumer is not delivering (deleted, or not recreated after a restart).
        """
        last_seq = await cls._last_sequence(kv)
        if last_seq < last_revision:
            raise _WatchLost("the directory stream was recreated")
        if last_seq > last_revision:
            if behind:
                raise _WatchLost(f"the watch is stuck at revision {last_revision} of {last_seq}")
            return True
        return False
