"""Who may read what in the registry, enforced where the data is.

Over gRPC against a real registry: a table of callers (the platform, the Jiangsu and Guangdong regulators, two
enterprises, an anonymous caller) by reads, each cell either what is returned or the exact status code, lists
paged one record at a time. Then what a denial may tell (no more than NOT_FOUND), how a regulator's division
filter is narrowed, and that the public search shows nothing of the operators. At the end, the pure rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest

from greenmesh.registry.v1 import registry_pb2 as pb
from meshkit.caller import Caller
from meshkit.errors import FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated, error_reason
from services.registry.domain import rules
from services.registry.domain.rules import (
    CooperationFilter,
    FacilityFilter,
    ParticipantFilter,
    ReadScope,
    Visibility,
)
from tests.registry.conftest import (
    ANONYMOUS,
    GUANGDONG_REGULATOR,
    JIANGSU_REGULATOR,
    NANSHAN,
    PLATFORM,
    QINHUAI,
    XUANWU,
    Registry,
    as_participant,
    credit_code,
)

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
MISSING_ID = "0190a1b2-0000-7000-8000-00000000dead"


@dataclass
class World:
    """A: a Nanjing outlet operator, its listed outlet in 玄武区. B: a Shenzhen e-bike producer with a plant in
    南山区, that entrusts outlets to A and to C. C: a Shenzhen recycler running a (draft) outlet in 秦淮区, Nanjing."""

    a: pb.Participant
    b: pb.Participant
    c: pb.Participant
    fa: pb.Facility
    fb: pb.Facility
    fc: pb.Facility
    ab: pb.Cooperation
    bc: pb.Cooperation

    def callers(self) -> dict[str, Caller]:
        return {
            "platform": PLATFORM,
            "Jiangsu regulator": JIANGSU_REGULATOR,
            "Guangdong regulator": GUANGDONG_REGULATOR,
            "enterprise A": as_participant(self.a),
            "enterprise B": as_participant(self.b),
            "anonymous": ANONYMOUS,
        }

    def ids(self, *names: str) -> list[str]:
        records = self.records()
        return [records[name] for name in names]

    def name_of(self, record_id: str) -> str:
        return next((name for name, known in self.records().items() if known == record_id), record_id)

    def records(self) -> dict[str, str]:
        return {
            "a": self.a.participant_id,
            "b": self.b.participant_id,
            "c": self.c.participant_id,
            "fa": self.fa.facility_id,
            "fb": self.fb.facility_id,
            "fc": self.fc.facility_id,
            "ab": self.ab.cooperation_id,
            "bc": self.bc.cooperation_id,
        }


async def link(registry: Registry, producer: pb.Participant, operator: pb.Participant) -> pb.Cooperation:
    reply = await registry.call(
        "LinkCooperation",
        pb.LinkCooperationRequest(
            cooperation=pb.Cooperation(
                producer_id=producer.participant_id,
                operator_id=operator.participant_id,
                kind=pb.COOPERATION_KIND_ENTRUSTED,
            )
        ),
        as_participant(producer),
    )
    return reply.cooperation  # type: ignore[no-any-return]


async def build_world(registry: Registry) -> World:
    a = await registry.participant("RECYCLING_OUTLET_OPERATOR", division="320102")
    b = await registry.participant("EBIKE_PRODUCER", division="440305")
    c = await registry.participant("RECYCLING_OUTLET_OPERATOR", division="440305")
    fa = await registry.list_facility(await registry.facility(a, XUANWU))
    fb = await registry.facility(b, NANSHAN, pb.FACILITY_TYPE_PRODUCTION_PLANT)
    fc = await registry.facility(c, QINHUAI)
    ab = await link(registry, b, a)
    bc = await link(registry, b, c)
    return World(a, b, c, fa, fb, fc, ab, bc)


# ---- the reads of the table: each returns the ids it was answered with ----------------------------------


async def page_through(
    registry: Registry,
    method: str,
    request: pb.ListParticipantsRequest | pb.ListFacilitiesRequest,
    caller: Caller,
    items: str,
    key: str,
) -> list[str]:
    """Every page of a list at one record a page; each page but the last has a token, the last none."""
    seen: list[str] = []
    pages = 0
    while True:
        reply = await registry.call(method, request, caller)
        pages += 1
        got = [getattr(item, key) for item in getattr(reply, items)]
        assert len(got) <= 1
        seen += got
        if not reply.next_page_token:
            break
        assert got, "a page with a token must not be empty"
        request.page_token = reply.next_page_token
    assert pages == max(1, len(seen)), f"{pages} pages for {len(seen)} records"
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    return seen


async def get_participant_a(registry: Registry, world: World, caller: Caller) -> list[str]:
    reply = await registry.call(
        "GetParticipant", pb.GetParticipantRequest(participant_id=world.a.participant_id), caller
    )
    assert reply.participant.credit_code == world.a.credit_code
    return [reply.participant.participant_id]


async def list_participants(registry: Registry, world: World, caller: Caller) -> list[str]:
    request = pb.ListParticipantsRequest(page_size=1)
    return await page_through(registry, "ListParticipants", request, caller, "participants", "participant_id")


async def get_facility_of_a(registry: Registry, world: World, caller: Caller) -> list[str]:
    reply = await registry.call("GetFacility", pb.GetFacilityRequest(facility_id=world.fa.facility_id), caller)
    assert reply.facility.operator_id == world.a.participant_id
    return [reply.facility.facility_id]


async def list_facilities(registry: Registry, world: World, caller: Caller) -> list[str]:
    request = pb.ListFacilitiesRequest(page_size=1)
    return await page_through(registry, "ListFacilities", request, caller, "facilities", "facility_id")


async def list_cooperations_of_b(registry: Registry, world: World, caller: Caller) -> list[str]:
    request = pb.ListCooperationsRequest(producer_id=world.b.participant_id)
    reply = await registry.call("ListCooperations", request, caller)
    return [c.cooperation_id for c in reply.cooperations]


async def nearest_outlets(registry: Registry, world: World, caller: Caller) -> list[str]:
    _, lat, lon = XUANWU
    request = pb.FindNearestOutletsRequest(location=pb.GeoPoint(latitude=lat, longitude=lon), limit=5)
    reply = await registry.call("FindNearestOutlets", request, caller)
    for outlet in reply.outlets:
        assert_public(outlet, world)
    return [outlet.facility_id for outlet in reply.outlets]


READS: dict[str, Callable[[Registry, World, Caller], Awaitable[list[str]]]] = {
    "get participant A": get_participant_a,
    "list participants": list_participants,
    "get facility of A": get_facility_of_a,
    "list facilities": list_facilities,
    "list cooperations of B": list_cooperations_of_b,
    "nearest outlets": nearest_outlets,
}

# Names of the records returned (in the order returned: lists by id, cooperations by creation), or a status code.
Cell = tuple[str, ...] | grpc.StatusCode
TABLE: dict[str, dict[str, Cell]] = {
    "platform": {
        "get participant A": ("a",),
        "list participants": ("a", "b", "c"),
        "get facility of A": ("fa",),
        "list facilities": ("fa", "fb", "fc"),
        "list cooperations of B": ("ab", "bc"),
        "nearest outlets": ("fa",),
    },
    "Jiangsu regulator": {  # A is registered in Jiangsu; C runs fc in Nanjing but is registered in Guangdong
        "get participant A": ("a",),
        "list participants": ("a",),
        "get facility of A": ("fa",),
        "list facilities": ("fa", "fc"),
        "list cooperations of B": ("ab",),
        "nearest outlets": ("fa",),
    },
    "Guangdong regulator": {  # B and C are registered in Guangdong; only fb lies there
        "get participant A": DENIED,
        "list participants": ("b", "c"),
        "get facility of A": DENIED,
        "list facilities": ("fb",),
        "list cooperations of B": ("ab", "bc"),
        "nearest outlets": ("fa",),
    },
    "enterprise A": {
        "get participant A": ("a",),
        "list participants": ("a",),
        "get facility of A": ("fa",),
        "list facilities": ("fa",),
        "list cooperations of B": ("ab",),  # only those A is a party of
        "nearest outlets": ("fa",),
    },
    "enterprise B": {  # B entrusts outlets to A, and still sees neither A's record nor A's facility
        "get participant A": DENIED,
        "list participants": ("b",),
        "get facility of A": DENIED,
        "list facilities": ("fb",),
        "list cooperations of B": ("ab", "bc"),
        "nearest outlets": ("fa",),
    },
    "anonymous": {
        "get participant A": UNAUTHENTICATED,
        "list participants": UNAUTHENTICATED,
        "get facility of A": UNAUTHENTICATED,
        "list facilities": UNAUTHENTICATED,
        "list cooperations of B": UNAUTHENTICATED,
        "nearest outlets": ("fa",),
    },
}


async def test_who_reads_what(registry: Registry) -> None:
    world = await build_world(registry)
    wrong: list[str] = []
    for who, caller in world.callers().items():
        for read, expected in TABLE[who].items():
            try:
                got: Cell = tuple(await READS[read](registry, world, caller))
            except grpc.aio.AioRpcError as error:
                got = error.code()
            want = expected if isinstance(expected, grpc.StatusCode) else tuple(world.ids(*expected))
            if got != want:
                named = got if isinstance(got, grpc.StatusCode) else tuple(world.name_of(i) for i in got)
                wrong.append(f"{who} / {read}: expected {expected}, got {named}")
    assert not wrong, "\n".join(wrong)


# ---- the public search -----------------------------------------------------------------------------------

# Everything a NearbyOutlet carries: the site, never its operator. A new field must be added here on purpose.
PUBLIC_OUTLET_FIELDS = {
    "facility_id",
    "name",
    "facility_type",
    "county_code",
    "address",
    "location",
    "distance_m",
    "opening_hours",
    "phone",
    "recycling_modes",
}


def assert_public(outlet: pb.NearbyOutlet, world: World) -> None:
    assert {field.name for field in outlet.DESCRIPTOR.fields} == PUBLIC_OUTLET_FIELDS
    text = str(outlet)
    for participant in (world.a, world.b, world.c):
        assert participant.participant_id not in text and participant.credit_code not in text
    assert world.fa.operator_facility_code not in text


async def test_the_public_search_shows_hand_in_points_only_and_nothing_of_the_operator(registry: Registry) -> None:
    world = await build_world(registry)
    _, lat, lon = NANSHAN
    here = pb.GeoPoint(latitude=lat, longitude=lon)
    await registry.list_facility(world.fb, GUANGDONG_REGULATOR)  # a listed production plant is still not public
    reply = await registry.call("FindNearestOutlets", pb.FindNearestOutletsRequest(location=here), ANONYMOUS)
    assert list(reply.outlets) == []
    for kind in (pb.FACILITY_TYPE_PRODUCTION_PLANT, pb.FACILITY_TYPE_DATA_CENTER, pb.FACILITY_TYPE_BASE_STATION):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.call(
                "FindNearestOutlets", pb.FindNearestOutletsRequest(location=here, facility_types=[kind]), ANONYMOUS
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, lat, lon = XUANWU
    request = pb.FindNearestOutletsRequest(
        location=pb.GeoPoint(latitude=lat, longitude=lon), facility_types=[pb.FACILITY_TYPE_RECYCLING_OUTLET]
    )
    (outlet,) = (await registry.call("FindNearestOutlets", request, ANONYMOUS)).outlets
    assert_public(outlet, world)
    assert outlet.facility_id == world.fa.facility_id and outlet.phone == world.fa.phone
    coverage = await registry.call("GetCountyCoverage", pb.GetCountyCoverageRequest(province_code="32"), ANONYMOUS)
    assert coverage.covered_count == 1


# ---- what a denial tells -----------------------------------------------------------------------------------


async def status_of(registry: Registry, method: str, request: object, caller: Caller) -> tuple[grpc.StatusCode, str]:
    """The code and, for a denial, the reason and message (which must not depend on whether the record exists)."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await registry.call(method, request, caller)
    error = raised.value
    return error.code(), f"{error_reason(error)}: {error.details()}"


async def test_a_denial_tells_no_more_than_not_found(registry: Registry) -> None:
    world = await build_world(registry)
    a, b = as_participant(world.a), as_participant(world.b)
    nobody_in_jiangsu, nobody_in_guangdong = credit_code("320102"), credit_code("440305")

    def by_id(participant_id: str) -> pb.GetParticipantRequest:
        return pb.GetParticipantRequest(participant_id=participant_id)

    def by_code(code: str) -> pb.GetParticipantRequest:
        return pb.GetParticipantRequest(credit_code=code)

    # An enterprise asking about anyone else: the same denial whether the other exists or not.
    denied = await status_of(registry, "GetParticipant", by_id(world.a.participant_id), b)
    assert denied[0] is DENIED and denied[1].startswith(rules.READ_DENIED_REASON)
    assert await status_of(registry, "GetParticipant", by_id(MISSING_ID), b) == denied
    assert await status_of(registry, "GetParticipant", by_code(world.a.credit_code), b) == denied
    assert await status_of(registry, "GetParticipant", by_code(nobody_in_jiangsu), b) == denied
    own = await registry.call("GetParticipant", by_code(world.b.credit_code.lower()), b)
    assert own.participant.participant_id == world.b.participant_id

    # A regulator: NOT_FOUND only where it would see the participant (a credit code carries its registration
    # division); an id it cannot place is denied like a participant elsewhere.
    missing = await status_of(registry, "GetParticipant", by_code(nobody_in_jiangsu), JIANGSU_REGULATOR)
    assert missing[0] is grpc.StatusCode.NOT_FOUND
    assert await status_of(registry, "GetParticipant", by_code(nobody_in_guangdong), JIANGSU_REGULATOR) == denied
    assert await status_of(registry, "GetParticipant", by_code(world.b.credit_code), JIANGSU_REGULATOR) == denied
    assert await status_of(registry, "GetParticipant", by_id(MISSING_ID), JIANGSU_REGULATOR) == denied

    # The platform sees everything, so it is told what is missing.
    for request in (by_id(MISSING_ID), by_code(nobody_in_guangdong)):
        code, _ = await status_of(registry, "GetParticipant", request, PLATFORM)
        assert code is grpc.StatusCode.NOT_FOUND

    # Facilities: only the platform learns that an id is unknown.
    facility_denied = await status_of(
        registry, "GetFacility", pb.GetFacilityRequest(facility_id=world.fa.facility_id), b
    )
    assert facility_denied[0] is DENIED
    for caller in (a, b, JIANGSU_REGULATOR):
        got = await status_of(registry, "GetFacility", pb.GetFacilityRequest(facility_id=MISSING_ID), caller)
        assert got == facility_denied
    code, _ = await status_of(registry, "GetFacility", pb.GetFacilityRequest(facility_id=MISSING_ID), PLATFORM)
    assert code is grpc.StatusCode.NOT_FOUND


async def test_a_regulator_reads_a_participant_operating_in_its_region(registry: Registry) -> None:
    world = await build_world(registry)
    # C is registered in Guangdong and runs fc in Nanjing: Jiangsu's regulator may read it, one at a time.
    for request in (
        pb.GetParticipantRequest(participant_id=world.c.participant_id),
        pb.GetParticipantRequest(credit_code=world.c.credit_code),
    ):
        reply = await registry.call("GetParticipant", request, JIANGSU_REGULATOR)
        assert reply.participant.participant_id == world.c.participant_id
    # B runs nothing in Jiangsu; A runs nothing in Guangdong.
    for participant, regulator in ((world.b, JIANGSU_REGULATOR), (world.a, GUANGDONG_REGULATOR)):
        code, _ = await status_of(
            registry, "GetParticipant", pb.GetParticipantRequest(participant_id=participant.participant_id), regulator
        )
        assert code is DENIED
    # A regulator reads its own record wherever it is registered.
    bureau = await registry.participant("REGULATOR", division="440305", supervised="320100")
    reply = await registry.call(
        "GetParticipant", pb.GetParticipantRequest(participant_id=bureau.participant_id), as_participant(bureau)
    )
    assert reply.participant.supervised_division_code == "320100"


# ---- filters of the lists ------------------------------------------------------------------------------------


async def test_a_regulators_division_filter_is_narrowed_to_its_region(registry: Registry) -> None:
    world = await build_world(registry)
    nanjing = Caller(participant_id=JIANGSU_REGULATOR.participant_id, roles=JIANGSU_REGULATOR.roles,
                     supervised_division="320100")  # fmt: skip
    for caller, prefix, participants, facilities in (
        (JIANGSU_REGULATOR, "", ["a"], ["fa", "fc"]),
        (JIANGSU_REGULATOR, "3", ["a"], ["fa", "fc"]),  # wider than the region: the region
        (JIANGSU_REGULATOR, "3201", ["a"], ["fa", "fc"]),
        (JIANGSU_REGULATOR, "320104", [], ["fc"]),  # narrower: as asked
        (nanjing, "", ["a"], ["fa", "fc"]),
        (nanjing, "32", ["a"], ["fa", "fc"]),
        (GUANGDONG_REGULATOR, "4403", ["b", "c"], ["fb"]),
    ):
        got = await page_through(
            registry, "ListParticipants", pb.ListParticipantsRequest(page_size=1, division_prefix=prefix), caller,
            "participants", "participant_id",
        )  # fmt: skip
        assert got == world.ids(*participants), (caller.supervised_division, prefix)
        got = await page_through(
            registry, "ListFacilities", pb.ListFacilitiesRequest(page_size=1, division_prefix=prefix), caller,
            "facilities", "facility_id",
        )  # fmt: skip
        assert got == world.ids(*facilities), (caller.supervised_division, prefix)
    for caller, prefix in ((JIANGSU_REGULATOR, "44"), (nanjing, "3202"), (GUANGDONG_REGULATOR, "320102")):
        for method, request in (
            ("ListParticipants", pb.ListParticipantsRequest(division_prefix=prefix)),
            ("ListFacilities", pb.ListFacilitiesRequest(division_prefix=prefix)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await registry.call(method, request, caller)
            assert refused.value.code() is DENIED, (method, prefix)
            assert error_reason(refused.value) == rules.REGION_DENIED_REASON
    # A regulator lists any operator's facilities, within its region only.
    by_c = await registry.call("ListFacilities", pb.ListFacilitiesRequest(operator_id=world.c.participant_id),
                               GUANGDONG_REGULATOR)  # fmt: skip
    assert list(by_c.facilities) == []


async def test_an_enterprise_lists_its_own_only_and_its_filters_still_apply(registry: Registry) -> None:
    world = await build_world(registry)
    a = as_participant(world.a)
    for by_participants, expected in (
        (pb.ListParticipantsRequest(), ["a"]),
        (pb.ListParticipantsRequest(division_prefix="32"), ["a"]),
        (pb.ListParticipantsRequest(division_prefix="44"), []),
        (pb.ListParticipantsRequest(role=pb.PARTICIPANT_ROLE_RECYCLING_OUTLET_OPERATOR), ["a"]),
        (pb.ListParticipantsRequest(role=pb.PARTICIPANT_ROLE_EBIKE_PRODUCER), []),
        (pb.ListParticipantsRequest(status=pb.PARTICIPANT_STATUS_SUSPENDED), []),
    ):
        reply = await registry.call("ListParticipants", by_participants, a)
        assert [p.participant_id for p in reply.participants] == world.ids(*expected), by_participants
        assert reply.next_page_token == ""
    for by_facilities, expected in (
        (pb.ListFacilitiesRequest(), ["fa"]),
        (pb.ListFacilitiesRequest(operator_id=world.a.participant_id), ["fa"]),
        (pb.ListFacilitiesRequest(accreditation_status=pb.ACCREDITATION_STATUS_DRAFT), []),
        (pb.ListFacilitiesRequest(division_prefix="44"), []),
    ):
        reply = await registry.call("ListFacilities", by_facilities, a)
        assert [f.facility_id for f in reply.facilities] == world.ids(*expected), by_facilities
    for operator in (world.b.participant_id, world.c.participant_id, MISSING_ID):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry.call("ListFacilities", pb.ListFacilitiesRequest(operator_id=operator), a)
        assert refused.value.code() is DENIED
        assert error_reason(refused.value) == rules.READ_DENIED_REASON
    # Cooperations: those A is a party of, whichever side it is asked by.
    for by_cooperations, expected in (
        (pb.ListCooperationsRequest(operator_id=world.a.participant_id), ["ab"]),
        (pb.ListCooperationsRequest(operator_id=world.c.participant_id), []),
        (pb.ListCooperationsRequest(producer_id=world.b.participant_id, operator_id=world.a.participant_id), ["ab"]),
    ):
        reply = await registry.call("ListCooperations", by_cooperations, a)
        assert [c.cooperation_id for c in reply.cooperations] == world.ids(*expected), by_cooperations


async def test_a_page_token_holds_for_the_scope_it_was_issued_in(registry: Registry) -> None:
    await build_world(registry)
    first = await registry.call("ListParticipants", pb.ListParticipantsRequest(page_size=1), PLATFORM)
    assert first.next_page_token
    for caller in (JIANGSU_REGULATOR, GUANGDONG_REGULATOR):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            request = pb.ListParticipantsRequest(page_size=1, page_token=first.next_page_token)
            await registry.call("ListParticipants", request, caller)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# ---- the pure rules ---------------------------------------------------------------------------------------------

ME = "00000000-0000-7000-8000-00000000000a"
OTHER = "00000000-0000-7000-8000-00000000000b"
EVERYTHING = ReadScope(PLATFORM.participant_id or "", everything=True)
JIANGSU = ReadScope(JIANGSU_REGULATOR.participant_id or "", region="32")
NANJING = ReadScope(JIANGSU_REGULATOR.participant_id or "", region="3201")
OWN = ReadScope(ME)


def regulator(division: str) -> Caller:
    return Caller(participant_id="r", roles=frozenset({"REGULATOR"}), supervised_division=division)


@pytest.mark.parametrize(
    ("caller", "scope"),
    [
        (PLATFORM, EVERYTHING),
        (Caller(participant_id="p", roles=frozenset({"PLATFORM_OPERATOR", "REGULATOR"})), ReadScope("p", True)),
        (JIANGSU_REGULATOR, JIANGSU),
        (regulator("320100"), ReadScope("r", region="3201")),
        (regulator("320102"), ReadScope("r", region="320102")),
        # A regulator without a valid region supervises nothing: it reads like any participant.
        (regulator(""), ReadScope("r")),
        (regulator("32"), ReadScope("r")),
        (regulator("32%%%%"), ReadScope("r")),
        # A region without the role grants nothing.
        (Caller(participant_id=ME, roles=frozenset({"DEALER"}), supervised_division="320000"), OWN),
        (Caller(participant_id=ME), OWN),
    ],
)  # fmt: skip
def test_read_scope_of_callers(caller: Caller, scope: ReadScope) -> None:
    assert rules.read_scope(caller) == scope


def test_an_anonymous_caller_has_no_read_scope() -> None:
    with pytest.raises(Unauthenticated):
        rules.read_scope(ANONYMOUS)


@pytest.mark.parametrize(
    ("scope", "participant_id", "division", "visibility"),
    [
        (EVERYTHING, OTHER, "440305", Visibility.VISIBLE),
        (JIANGSU, OTHER, "320102", Visibility.VISIBLE),
        (JIANGSU, OTHER, "440305", Visibility.IF_OPERATING_IN_REGION),
        (JIANGSU, JIANGSU.participant_id, "110101", Visibility.VISIBLE),  # itself
        (NANJING, OTHER, "320102", Visibility.VISIBLE),
        (NANJING, OTHER, "320205", Visibility.IF_OPERATING_IN_REGION),
        (OWN, ME, "440305", Visibility.VISIBLE),
        (OWN, OTHER, "440305", Visibility.HIDDEN),
        (OWN, OTHER, "", Visibility.HIDDEN),
    ],
)
def test_participant_visibility(scope: ReadScope, participant_id: str, division: str, visibility: Visibility) -> None:
    assert rules.participant_visibility(scope, participant_id, division) is visibility


def test_an_enterprise_is_denied_another_id_before_anything_is_read() -> None:
    rules.check_participant_id_readable(OWN, ME)
    rules.check_participant_id_readable(JIANGSU, OTHER)  # a regulator's answer needs the record
    rules.check_participant_id_readable(EVERYTHING, OTHER)
    with pytest.raises(PermissionDenied) as denied:
        rules.check_participant_id_readable(OWN, OTHER)
    assert denied.value.reason == rules.READ_DENIED_REASON and denied.value.metadata == {}


@pytest.mark.parametrize(
    ("scope", "participant_id", "division", "told"),
    [
        (EVERYTHING, "", "", True),
        (OWN, ME, "", True),
        (OWN, OTHER, "", False),
        (OWN, "", "440305", False),
        (JIANGSU, "", "320102", True),
        (JIANGSU, "", "440305", False),
        (JIANGSU, OTHER, "", False),
        (NANJING, "", "320205", False),
    ],
)
def test_who_learns_that_a_record_is_missing(scope: ReadScope, participant_id: str, division: str, told: bool) -> None:
    assert rules.may_learn_absence(scope, participant_id=participant_id, division_code=division) is told


@pytest.mark.parametrize(
    ("scope", "operator_id", "county", "allowed"),
    [
        (EVERYTHING, OTHER, "440305", True),
        (JIANGSU, OTHER, "320102", True),
        (JIANGSU, OTHER, "440305", False),
        (NANJING, OTHER, "320205", False),
        (OWN, ME, "440305", True),
        (OWN, OTHER, "320102", False),
    ],
)
def test_facility_reads(scope: ReadScope, operator_id: str, county: str, allowed: bool) -> None:
    assert rules.may_read_facility(scope, operator_id, county) is allowed
    if allowed:
        rules.authorise_facility_read(scope, operator_id, county)
    else:
        with pytest.raises(PermissionDenied):
            rules.authorise_facility_read(scope, operator_id, county)


@pytest.mark.parametrize(
    ("requested", "region", "narrowed"),
    [("", "32", "32"), ("3", "32", "32"), ("32", "32", "32"), ("3201", "32", "3201"), ("320102", "3201", "320102"),
     ("32", "3201", "3201"), ("", "320102", "320102"), ("3201", "320102", "320102")],
)  # fmt: skip
def test_a_division_prefix_is_narrowed_to_the_region(requested: str, region: str, narrowed: str) -> None:
    assert rules.narrow_to_region(requested, region) == narrowed


@pytest.mark.parametrize(("requested", "region"), [("44", "32"), ("3202", "3201"), ("320104", "320102"), ("4", "32")])
def test_a_division_prefix_outside_the_region_is_denied(requested: str, region: str) -> None:
    with pytest.raises(PermissionDenied) as denied:
        rules.narrow_to_region(requested, region)
    assert denied.value.reason == rules.REGION_DENIED_REASON


@pytest.mark.parametrize("prefix", ["32%", "3_", "1234567", "\uff13\uff12", " 3 2", "'"])
def test_a_division_prefix_is_digits_only(prefix: str) -> None:
    with pytest.raises(InvalidArgument) as invalid:
        rules.check_division_prefix("division_prefix", prefix)
    assert invalid.value.violations == [FieldViolation("division_prefix", "1 to 6 digits")]
    assert rules.check_division_prefix("division_prefix", " 3201 ") == "3201"


def test_list_filters() -> None:
    assert rules.participant_list_filter(EVERYTHING, "44") == ParticipantFilter("44")
    assert rules.participant_list_filter(JIANGSU, "") == ParticipantFilter("32")
    assert rules.participant_list_filter(OWN, "44") == ParticipantFilter("44", participant_id=ME)
    with pytest.raises(PermissionDenied):
        rules.participant_list_filter(JIANGSU, "44")

    assert rules.facility_list_filter(EVERYTHING, OTHER, "") == FacilityFilter(OTHER, "")
    assert rules.facility_list_filter(JIANGSU, OTHER, "3201") == FacilityFilter(OTHER, "3201")
    assert rules.facility_list_filter(NANJING, "", "") == FacilityFilter("", "3201")
    assert rules.facility_list_filter(OWN, "", "44") == FacilityFilter(ME, "44")
    assert rules.facility_list_filter(OWN, ME, "") == FacilityFilter(ME, "")
    with pytest.raises(PermissionDenied) as denied:
        rules.facility_list_filter(OWN, OTHER, "")
    assert denied.value.reason == rules.READ_DENIED_REASON

    assert rules.cooperation_list_filter(EVERYTHING) == CooperationFilter()
    assert rules.cooperation_list_filter(NANJING) == CooperationFilter(party_region="3201")
    assert rules.cooperation_list_filter(OWN) == CooperationFilter(party_id=ME)


def test_the_public_search_covers_hand_in_points_only() -> None:
    assert rules.public_outlet_type_violations("facility_types", []) == []
    assert rules.public_outlet_type_violations("facility_types", list(rules.PUBLIC_OUTLET_TYPES)) == []
    for kind in ("REGIONAL_SORTING_CENTER", "PRODUCTION_PLANT", "DATA_CENTER", "BASE_STATION", ""):
        (violation,) = rules.public_outlet_type_violations("facility_types", ["RECYCLING_OUTLET", kind])
        assert violation.field == "facility_types"
