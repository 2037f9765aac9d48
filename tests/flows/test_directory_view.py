"""The flows service's DirectoryView against a real registry and a real nats-server: it loads the snapshot,
follows changes, keeps the newest version, forgets deleted keys, survives a NATS restart and stops at once
when cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.js.kv import KeyValue
from opentelemetry import trace

from greenmesh.registry.v1 import registry_pb2 as pb
from greenmesh.registry.v1 import registry_pb2_grpc
from meshkit.bus import Bus
from meshkit.config import Component, MeshSettings
from meshkit.localinfra import NatsServer
from services.flows.directory_view import DirectoryView, StorageLimits
from services.flows.domain.directory import LISTED, FacilityInfo, FacilityKind, ParticipantInfo, Role
from services.registry.events import directory_bucket, facility_entry, participant_entry
from services.registry.service import DEFINITION as REGISTRY
from tests.conftest import RuntimeFactory, eventually
from tests.foundation.test_health_readiness import SERVING, wait_health
from tests.registry.conftest import QINHUAI, Registry

PROVINCE = "32"
ViewStarter = Callable[..., Awaitable[tuple[DirectoryView, "asyncio.Task[None]"]]]


@pytest.fixture
async def registry(nats_server: NatsServer, make_runtime: RuntimeFactory, tmp_path: Path) -> AsyncIterator[Registry]:
    """The real registry on SQLite (the directory does not depend on the database kind)."""
    runtime = await make_runtime(
        REGISTRY, nats_url=nats_server.url, database_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    )
    await wait_health(runtime, SERVING)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield Registry(runtime, registry_pb2_grpc.RegistryServiceStub(channel))


def flows_bus(nats_server: NatsServer, tmp_path: Path) -> Bus:
    options: dict[str, Any] = {"nats_url": nats_server.url, "nats_reconnect_wait_seconds": 0.2}
    settings = MeshSettings(data_dir=tmp_path / "data", **options)
    return Bus(settings=settings, component=Component.FLOWS, tracer=trace.get_tracer("tests"))


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    """The flows service's connection, as its runtime would hold it."""
    connection = flows_bus(nats_server, tmp_path)
    await connection.connect()
    yield connection
    await connection.close()


@pytest.fixture
async def kv(bus: Bus) -> KeyValue:
    return await bus.key_value(directory_bucket(PROVINCE))


@pytest.fixture
async def start_view(bus: Bus) -> AsyncIterator[ViewStarter]:
    """Start DirectoryView.run as a background task (as ServiceDefinition.background would); cancelled at the end."""
    tasks: list[asyncio.Task[None]] = []

    async def start(on: Bus | None = None, **options: float) -> tuple[DirectoryView, asyncio.Task[None]]:
        view = DirectoryView(backoff_initial=0.05, backoff_max=0.5, tick=0.05, **options)
        task = asyncio.create_task(view.run(on or bus, PROVINCE))
        tasks.append(task)
        return view, task

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def listed_site(registry: Registry) -> tuple[pb.Participant, pb.Facility]:
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR", "TEMP_STORAGE_OPERATOR")
    facility = await registry.list_facility(await registry.facility(operator, QINHUAI))
    return operator, facility


async def in_directory(kv: KeyValue, key: str, version: int) -> None:
    """Wait until the registry's projector has written `version` of the entry."""

    async def written() -> bool:
        try:
            return pb.DirectoryEntry.FromString((await kv.get(key)).value or b"").version >= version
        except Exception:
            return False

    await eventually(written)


async def put_entry(kv: KeyValue, key: str, entry: pb.DirectoryEntry) -> None:
    await kv.put(key, entry.SerializeToString())


async def fence(kv: KeyValue, view: DirectoryView, name: str) -> None:
    """Write a marker entry and wait for it: the watch is ordered, so everything written before was applied."""
    marker = pb.DirectoryEntry(facility=pb.DirectoryFacility(facility_id=name), version=1)
    await put_entry(kv, f"facility.{name}", marker)

    async def arrived() -> bool:
        return view.facility(name) is not None

    await eventually(arrived)


# ---- loading and following ----------------------------------------------------------------------


async def test_a_view_started_later_loads_the_existing_entries(
    registry: Registry, kv: KeyValue, start_view: ViewStarter
) -> None:
    operator, facility = await listed_site(registry)
    regulator = await registry.participant("REGULATOR", supervised="320100")
    await in_directory(kv, f"facility.{facility.facility_id}", facility.version)
    await in_directory(kv, f"participant.{regulator.participant_id}", regulator.version)

    view, _task = await start_view()
    assert await view.wait_ready(10)
    assert view.snapshots_loaded == 1

    info = view.facility(facility.facility_id)
    assert info == FacilityInfo(
        facility_id=facility.facility_id,
        facility_type="RECYCLING_OUTLET",
        accreditation="LISTED",
        operator_id=operator.participant_id,
        county_code=QINHUAI[0],
    )
    assert info.facility_type == FacilityKind.RECYCLING_OUTLET and info.listed
    assert view.limits(facility.facility_id) == StorageLimits(max_stock_kg=500.0, max_stock_units=60, max_dwell_days=30)
    assert [f.facility_id for f in view.facilities()] == [facility.facility_id]

    participant = view.participant(operator.participant_id)
    assert participant is not None and participant.status == "ACTIVE"
    assert participant.roles == {Role.RECYCLING_OUTLET_OPERATOR, Role.TEMP_STORAGE_OPERATOR}
    assert view.supervised_division(regulator.participant_id) == "320100"
    assert view.supervised_division(operator.participant_id) == ""
    assert view.facility("no-such-facility") is None and view.limits("no-such-facility") is None
    assert view.participant("nobody") is None and view.participant_by_credit_code("nothing") is None


async def test_an_empty_bucket_is_ready_even_when_run_starts_before_nats_is_connected(
    nats_server: NatsServer, tmp_path: Path, start_view: ViewStarter
) -> None:
    # As under ServiceDefinition.background: the task starts while the runtime still connects the bus.
    unconnected = flows_bus(nats_server, tmp_path)
    view, _task = await start_view(on=unconnected)
    assert not await view.wait_ready(0.3)
    await unconnected.connect()
    try:
        assert await view.wait_ready(10)  # the bucket did not exist: run created it
        assert list(view.facilities()) == []
    finally:
        await unconnected.close()


async def test_a_facility_listed_after_start_appears_as_listed(registry: Registry, start_view: ViewStarter) -> None:
    view, _task = await start_view()
    assert await view.wait_ready(10)
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    draft = await registry.facility(operator, QINHUAI)

    async def drafted() -> bool:
        info = view.facility(draft.facility_id)
        return info is not None and info.accreditation == "DRAFT"

    await eventually(drafted)
    await registry.list_facility(draft)

    async def listed() -> bool:
        info = view.facility(draft.facility_id)
        return info is not None and info.accreditation == LISTED and info.listed

    await eventually(listed)


async def test_participants_are_found_by_credit_code_and_the_index_follows_changes(
    registry: Registry, kv: KeyValue, start_view: ViewStarter
) -> None:
    view, _task = await start_view()
    assert await view.wait_ready(10)
    recycler = await registry.participant("RECYCLING_ENTERPRISE", "LOGISTICS_PROVIDER")

    async def found() -> bool:
        # Registered (PENDING_REVIEW) and activated are two entries; wait for the second.
        info = view.participant_by_credit_code(recycler.credit_code)
        return info is not None and info.status == "ACTIVE"

    await eventually(found)
    info = view.participant_by_credit_code(recycler.credit_code)
    assert info is not None and info.participant_id == recycler.participant_id
    assert info.roles == {Role.RECYCLING_ENTERPRISE, Role.LOGISTICS_PROVIDER}
    assert info.has_any_role({Role.RECYCLING_ENTERPRISE})

    # A newer entry with another credit code moves the index: the old code no longer answers.
    changed = participant_entry(recycler)
    changed.participant.credit_code = "91320102MA1XXXXXX0"
    changed.version = recycler.version + 1
    await put_entry(kv, f"participant.{recycler.participant_id}", changed)

    async def moved() -> bool:
        return view.participant_by_credit_code("91320102MA1XXXXXX0") is not None

    await eventually(moved)
    assert view.participant_by_credit_code(recycler.credit_code) is None


async def test_an_older_version_never_replaces_a_newer_one(
    registry: Registry, kv: KeyValue, start_view: ViewStarter
) -> None:
    view, _task = await start_view()
    _operator, facility = await listed_site(registry)
    key = f"facility.{facility.facility_id}"
    await in_directory(kv, key, facility.version)

    async def listed() -> bool:
        info = view.facility(facility.facility_id)
        return info is not None and info.listed

    await eventually(listed)

    stale = facility_entry(facility)
    stale.facility.accreditation = pb.ACCREDITATION_STATUS_DRAFT
    stale.version = facility.version - 1
    await put_entry(kv, key, stale)
    await fence(kv, view, "fence-1")
    info = view.facility(facility.facility_id)
    assert info is not None and info.accreditation == LISTED

    newer = facility_entry(facility)
    newer.facility.accreditation = pb.ACCREDITATION_STATUS_SUSPENDED
    newer.version = facility.version + 1
    await put_entry(kv, key, newer)
    await fence(kv, view, "fence-2")
    info = view.facility(facility.facility_id)
    assert info is not None and info.accreditation == "SUSPENDED" and not info.listed


async def test_deleted_and_purged_keys_disappear(registry: Registry, kv: KeyValue, start_view: ViewStarter) -> None:
    view, _task = await start_view()
    operator, facility = await listed_site(registry)
    await in_directory(kv, f"facility.{facility.facility_id}", facility.version)

    async def present() -> bool:
        return view.facility(facility.facility_id) is not None and view.participant(operator.participant_id) is not None

    await eventually(present)

    await kv.delete(f"facility.{facility.facility_id}")
    await kv.purge(f"participant.{operator.participant_id}")

    async def gone() -> bool:
        return view.facility(facility.facility_id) is None and view.participant(operator.participant_id) is None

    await eventually(gone)
    assert view.participant_by_credit_code(operator.credit_code) is None
    assert view.limits(facility.facility_id) is None and list(view.facilities()) == []


# ---- outages and cancellation -------------------------------------------------------------------


async def test_the_view_survives_a_nats_restart(
    registry: Registry, bus: Bus, nats_server: NatsServer, start_view: ViewStarter
) -> None:
    view, task = await start_view()
    _operator, before = await listed_site(registry)

    def has(facility_id: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return view.facility(facility_id) is not None

        return check

    await eventually(has(before.facility_id))
    assert view.snapshots_loaded == 1

    # Same port and store directory: NatsServer is made to be restarted (localinfra).
    await asyncio.to_thread(nats_server.stop)

    async def disconnected() -> bool:
        return not bus.connected

    await eventually(disconnected)
    await asyncio.sleep(0.3)  # the view notices and waits; it must not end
    assert not task.done()
    await asyncio.to_thread(nats_server.start)

    operator = await registry.participant("COOP_STATION_OPERATOR")
    after = await registry.facility(operator, QINHUAI, facility_type=pb.FACILITY_TYPE_COOP_STATION)
    await eventually(has(after.facility_id), timeout=30)
    info = view.facility(after.facility_id)
    assert info is not None and info.facility_type == FacilityKind.COOP_STATION
    assert view.facility(before.facility_id) is not None
    # Re-established by the view itself (a second snapshot), not by waiting for nats-py's heartbeat reset.
    assert view.snapshots_loaded >= 2
    assert not task.done()


async def test_a_stuck_watch_is_noticed_and_re_established(bus: Bus, kv: KeyValue, start_view: ViewStarter) -> None:
    view, _task = await start_view(check_interval=0.2)
    assert await view.wait_ready(10)
    # Delete the watch's consumer behind its back: nats-py's iterator just goes quiet.
    stream = f"KV_{directory_bucket(PROVINCE)}"
    for consumer in await bus.js.consumers_info(stream):
        await bus.js.delete_consumer(stream, consumer.name)
    await fence(kv, view, "after-the-consumer-was-deleted")
    assert view.snapshots_loaded >= 2


async def test_the_view_forgets_what_a_recreated_bucket_no_longer_holds(
    bus: Bus, kv: KeyValue, start_view: ViewStarter
) -> None:
    view, _task = await start_view(check_interval=0.2)
    await put_entry(kv, "facility.f-1", pb.DirectoryEntry(facility=pb.DirectoryFacility(facility_id="f-1"), version=3))

    async def loaded() -> bool:
        return view.facility("f-1") is not None

    await eventually(loaded)
    # A NATS server that lost its store: the bucket comes back empty, and so must the view.
    await bus.js.delete_key_value(directory_bucket(PROVINCE))

    async def forgotten() -> bool:
        return view.facility("f-1") is None and view.snapshots_loaded >= 2

    await eventually(forgotten)


@pytest.mark.parametrize("state", ["watching", "nats down", "never connected"])
async def test_cancelling_run_ends_it_promptly(
    state: str, nats_server: NatsServer, bus: Bus, tmp_path: Path, start_view: ViewStarter
) -> None:
    on = flows_bus(nats_server, tmp_path) if state == "never connected" else bus
    view, task = await start_view(on=on)
    if state != "never connected":
        assert await view.wait_ready(10)
    if state == "nats down":
        await asyncio.to_thread(nats_server.stop)

        async def disconnected() -> bool:
            return not bus.connected

        await eventually(disconnected)
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.1)
    assert not task.done()

    task.cancel()
    done, _pending = await asyncio.wait({task}, timeout=1.0)
    assert task in done and task.cancelled()


# ---- without NATS -------------------------------------------------------------------------------


def entry_bytes(entry: pb.DirectoryEntry) -> bytes:
    return entry.SerializeToString()


def test_apply_maps_enum_names_keeps_versions_and_reindexes_without_nats() -> None:
    view = DirectoryView.of(
        [FacilityInfo("f-0", "DEALER_STORE", "LISTED", "p-0")],
        [ParticipantInfo("p-0", credit_code="C0", roles=frozenset({"DEALER"}))],
        limits={"f-0": StorageLimits(10.0, 2, 3)},
        supervised={"p-0": ""},
    )
    assert view.ready.is_set() and view.participant_by_credit_code("C0") is not None
    assert view.limits("f-0") == StorageLimits(10.0, 2, 3)

    plant = pb.DirectoryEntry(
        facility=pb.DirectoryFacility(
            facility_id="f-1",
            operator_id="p-1",
            facility_type=pb.FACILITY_TYPE_RECYCLING_PLANT,
            accreditation=pb.ACCREDITATION_STATUS_LISTED,
            county_code="320102",
            storage_limits=pb.StorageLimits(),
        ),
        version=5,
    )
    assert view.apply("facility.f-1", entry_bytes(plant))
    info = view.facility("f-1")
    assert info is not None and info.facility_type == FacilityKind.RECYCLING_PLANT and info.listed
    assert view.limits("f-1") is None  # all zero: no limits declared

    older = pb.DirectoryEntry()
    older.CopyFrom(plant)
    older.version = 4
    older.facility.accreditation = pb.ACCREDITATION_STATUS_DELISTED
    assert not view.apply("facility.f-1", entry_bytes(older))
    assert view.facility("f-1") == info

    recycler = pb.DirectoryEntry(
        participant=pb.DirectoryParticipant(
            participant_id="p-1",
            credit_code="C1",
            roles=[
                pb.PARTICIPANT_ROLE_RECYCLING_ENTERPRISE,
                pb.ParticipantRole.ValueType(99),
            ],  # 99: a role this build does not know
            status=pb.PARTICIPANT_STATUS_SUSPENDED,
            supervised_division_code="",
        ),
        version=2,
    )
    assert view.apply("participant.p-1", entry_bytes(recycler))
    found = view.participant_by_credit_code("C1")
    assert found is not None and found.roles == {"RECYCLING_ENTERPRISE", "UNKNOWN_99"}
    assert found.status == "SUSPENDED"

    # Another participant takes over code C1 later, then p-1 goes away: C1 must still find p-2.
    taker = pb.DirectoryEntry(participant=pb.DirectoryParticipant(participant_id="p-2", credit_code="C1"), version=1)
    assert view.apply("participant.p-2", entry_bytes(taker))
    assert view.remove("participant.p-1")
    again = view.participant_by_credit_code("C1")
    assert again is not None and again.participant_id == "p-2"

    # Entries that do not fit their key are ignored rather than misfiled.
    assert not view.apply("facility.f-9", entry_bytes(taker))
    assert not view.apply("facility.f-9", b"\xff\xff not a protobuf")
    assert not view.apply("other.x", entry_bytes(plant))
    assert not view.remove("facility.f-9")


def test_the_operator_index_follows_applies_and_removals() -> None:
    view = DirectoryView.of(
        [
            FacilityInfo("f-1", "RECYCLING_OUTLET", LISTED, "p-1"),
            FacilityInfo("f-2", "TEMP_STORAGE_POINT", LISTED, "p-1"),
            FacilityInfo("f-3", "RECYCLING_OUTLET", LISTED, "p-2"),
        ]
    )
    assert view.facilities_of("p-1") == {"f-1", "f-2"} and view.facilities_of("p-2") == {"f-3"}
    assert view.facilities_of("nobody") == frozenset()

    def site(facility_id: str, operator_id: str, version: int) -> bytes:
        facility = pb.DirectoryFacility(facility_id=facility_id, operator_id=operator_id)
        return entry_bytes(pb.DirectoryEntry(facility=facility, version=version))

    # A newer entry moves f-2 to p-2; an older one moving it back changes nothing.
    assert view.apply("facility.f-2", site("f-2", "p-2", 2))
    assert not view.apply("facility.f-2", site("f-2", "p-1", 1))
    assert view.facilities_of("p-1") == {"f-1"} and view.facilities_of("p-2") == {"f-2", "f-3"}
    assert view.facilities_of("p-3") == frozenset()
    # A new facility joins its operator's set; one without an operator belongs to no one (not even "").
    assert view.apply("facility.f-4", site("f-4", "p-3", 1))
    assert view.apply("facility.f-5", site("f-5", "", 1))
    assert view.facilities_of("p-3") == {"f-4"} and view.facilities_of("") == frozenset()
    # Deleted keys leave the index, and so do facilities a completed snapshot no longer mentions.
    assert view.remove("facility.f-1")
    assert view.facilities_of("p-1") == frozenset()
    view._end_snapshot({"facility.f-2", "facility.f-4", "facility.f-5"})
    assert view.facilities_of("p-2") == {"f-2"} and view.facilities_of("p-3") == {"f-4"}
    # The answer is a copy: changes to the view do not show through it.
    held = view.facilities_of("p-2")
    assert view.remove("facility.f-2") and held == {"f-2"} and view.facilities_of("p-2") == frozenset()
