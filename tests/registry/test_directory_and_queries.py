"""The KV directory follows changes within a second; coverage and nearest outlets are right."""

from __future__ import annotations

import random
import time

import grpc
import nats
import pytest
import shapely

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.ids import new_id
from meshkit.tables import utcnow
from services.registry.domain.divisions import COVERAGE_LEVELS, load_division_table
from services.registry.domain.geo import GeoPoint, haversine_m
from services.registry.events import directory_bucket
from services.registry.tables import FacilityRow
from tests.registry.conftest import ANONYMOUS, JIANGSU_REGULATOR, XUANWU, Registry


async def directory_entry(nats_url: str, key: str) -> pb.DirectoryEntry | None:
    client = await nats.connect(nats_url)
    try:
        kv = await client.jetstream().key_value(directory_bucket("32"))
        return pb.DirectoryEntry.FromString((await kv.get(key)).value or b"")
    except Exception:
        return None
    finally:
        await client.close()


async def wait_entry(nats_url: str, key: str, version: int, timeout: float = 1.0) -> pb.DirectoryEntry:
    """The directory must show `version` of the entry within `timeout` seconds of the change."""
    deadline = time.monotonic() + timeout
    while True:
        entry = await directory_entry(nats_url, key)
        if entry is not None and entry.version >= version:
            return entry
        assert time.monotonic() < deadline, f"{key} not at version {version} within {timeout}s: {entry}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_directory_reflects_changes_within_a_second(registry: Registry) -> None:
    nats_url = registry.runtime.settings.nats_url
    operator = await registry.participant("RECYCLING_OUTLET_OPERATOR")
    entry = await wait_entry(nats_url, f"participant.{operator.participant_id}", operator.version)
    assert entry.participant.status == pb.PARTICIPANT_STATUS_ACTIVE
    assert list(entry.participant.roles) == [pb.PARTICIPANT_ROLE_RECYCLING_OUTLET_OPERATOR]

    facility = await registry.facility(operator)
    entry = await wait_entry(nats_url, f"facility.{facility.facility_id}", 1)
    assert entry.facility.accreditation == pb.ACCREDITATION_STATUS_DRAFT
    listed = await registry.list_facility(facility)
    entry = await wait_entry(nats_url, f"facility.{facility.facility_id}", listed.version)
    assert entry.facility.accreditation == pb.ACCREDITATION_STATUS_LISTED
    assert entry.facility.county_code == "320102" and entry.facility.operator_id == operator.participant_id
    assert entry.facility.storage_limits.max_dwell_days == 30


async def seed_facilities(registry: Registry, count: int, province: str, seed: int) -> list[FacilityRow]:
    """Listed and draft facilities inside real counties, written straight to the store (fast)."""
    table = load_division_table()
    counties = [c for c in table.counties_in_province(province, COVERAGE_LEVELS)]
    rng = random.Random(seed)
    chosen = rng.sample(counties, k=len(counties) // 2)
    made: list[FacilityRow] = []
    now = utcnow()
    for i in range(count):
        county = chosen[i % len(chosen)]
        point = shapely.get_coordinates(table.geometries[county.code].representative_point())[0]
        kind = rng.choice(["RECYCLING_OUTLET", "TEMP_STORAGE_POINT", "COOP_STATION", "RECYCLING_PLANT"])
        status = "LISTED" if i % 3 else "DRAFT"
        made.append(
            FacilityRow(
                facility_id=new_id(), operator_id=new_id(), operator_facility_code=f"F{i}", name=f"site {i}",
                facility_type=kind, county_code=county.code,
                latitude=float(point[1]) + rng.uniform(-0.002, 0.002),
                longitude=float(point[0]) + rng.uniform(-0.002, 0.002),
                recycling_modes="DROP_OFF,TRADE_IN" if i % 2 else "DOOR_TO_DOOR",
                accreditation_status=status, accreditation_changed_at=now, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    async with registry.runtime.database.transaction() as session:
        session.add_all(made)
    return made


async def test_county_coverage_against_the_real_table(registry: Registry) -> None:
    made = await seed_facilities(registry, 400, "32", seed=7)
    table = load_division_table()
    jiangsu = table.counties_in_province("32", COVERAGE_LEVELS)
    expected_covered = {
        f.county_code for f in made
        if f.accreditation_status == "LISTED" and f.facility_type in ("RECYCLING_OUTLET", "TEMP_STORAGE_POINT")
    }  # fmt: skip
    reply = await registry.call("GetCountyCoverage", pb.GetCountyCoverageRequest(province_code="32"), ANONYMOUS)
    assert reply.county_count == len(jiangsu) == 95
    assert reply.covered_count == len(expected_covered)
    assert reply.ratio == pytest.approx(len(expected_covered) / len(jiangsu))
    assert [c.county_code for c in reply.uncovered] == sorted(c.code for c in jiangsu if c.code not in expected_covered)
    national = await registry.call("GetCountyCoverage", pb.GetCountyCoverageRequest(), ANONYMOUS)
    assert national.county_count == len(table.all_counties(COVERAGE_LEVELS))
    assert national.covered_count == len(expected_covered)
    by_province = {p.province_code: p for p in national.provinces}
    assert by_province["32"].covered_count == len(expected_covered) and by_province["44"].covered_count == 0
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call("GetCountyCoverage", pb.GetCountyCoverageRequest(province_code="99"), ANONYMOUS)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_nearest_outlets_match_a_brute_force_search(registry: Registry) -> None:
    made = await seed_facilities(registry, 600, "32", seed=11)
    eligible = [f for f in made if f.accreditation_status == "LISTED" and f.facility_type != "RECYCLING_PLANT"]
    rng = random.Random(3)
    for _ in range(25):
        anchor = rng.choice(made)
        lat, lon = anchor.latitude + rng.uniform(-0.3, 0.3), anchor.longitude + rng.uniform(-0.3, 0.3)
        reply = await registry.call(
            "FindNearestOutlets",
            pb.FindNearestOutletsRequest(
                location=pb.GeoPoint(latitude=lat, longitude=lon), limit=5, max_distance_km=80
            ),
            ANONYMOUS,
        )
        center = GeoPoint(lon=lon, lat=lat)
        brute = sorted(
            (haversine_m(center, GeoPoint(lon=f.longitude, lat=f.latitude)), f.facility_id) for f in eligible
        )
        brute = [item for item in brute if item[0] <= 80_000][:5]
        assert [o.facility_id for o in reply.outlets] == [fid for _d, fid in brute]
        assert [o.distance_m for o in reply.outlets] == pytest.approx([d for d, _ in brute], abs=0.1)
    # With a recycling mode, only the sites offering it.
    reply = await registry.call(
        "FindNearestOutlets",
        pb.FindNearestOutletsRequest(
            location=pb.GeoPoint(latitude=XUANWU[1], longitude=XUANWU[2]), limit=50, max_distance_km=200,
            recycling_mode=pb.RECYCLING_MODE_DOOR_TO_DOOR,
        ),
        ANONYMOUS,
    )  # fmt: skip
    assert reply.outlets and all(list(o.recycling_modes) == [pb.RECYCLING_MODE_DOOR_TO_DOOR] for o in reply.outlets)


async def test_nearest_outlets_rejects_bad_points(registry: Registry) -> None:
    for request in (
        pb.FindNearestOutletsRequest(),
        pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=95, longitude=118)),
        pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=32, longitude=118), limit=1000),
        pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=32, longitude=118), max_distance_km=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await registry.call("FindNearestOutlets", request, JIANGSU_REGULATOR)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
