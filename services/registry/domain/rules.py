"""Registry rules without I/O: what a valid participant or facility is, which status and accreditation
transitions exist, who may make them, and who may read what. The servicer calls these before anything is
written, and applies the read rules to every record it answers with (lists as filters in SQL, see
`participant_list_filter` and the others, so pages and page tokens stay right)."""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from meshkit.caller import Caller
from meshkit.errors import FailedPrecondition, FieldViolation, InvalidArgument, PermissionDenied, Unauthenticated
from services.registry.domain.credit_code import validate_credit_code
from services.registry.domain.divisions import DivisionTable
from services.registry.domain.geo import check_china_position

# A facility may be this far outside its declared county's (generalised) boundary before it is refused.
COUNTY_BORDER_TOLERANCE_M: Final = 2_000.0

MAX_NAME = 200
MAX_SHORT_TEXT = 100
MAX_ADDRESS = 300
_PHONE = re.compile(r"^\+?[0-9][0-9 \-]{4,24}$")

PARTICIPANT_STATUS_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "PENDING_REVIEW": frozenset({"ACTIVE", "REVOKED"}),
    "ACTIVE": frozenset({"SUSPENDED", "REVOKED"}),
    "SUSPENDED": frozenset({"ACTIVE", "REVOKED"}),
    "REVOKED": frozenset(),  # final: a revoked participant registers again under review
}

ACCREDITATION_TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "DRAFT": frozenset({"UNDER_REVIEW"}),
    "UNDER_REVIEW": frozenset({"LISTED", "DRAFT", "DELISTED"}),  # DRAFT: sent back to the operator
    "LISTED": frozenset({"SUSPENDED", "DELISTED"}),
    "SUSPENDED": frozenset({"LISTED", "DELISTED"}),
    "DELISTED": frozenset({"UNDER_REVIEW"}),  # a delisted site may apply again
}

# Facility types that receive waste batteries and whose storage limits matter.
STORAGE_TYPES: Final = frozenset(
    {"RECYCLING_OUTLET", "COOP_STATION", "TEMP_STORAGE_POINT", "REGIONAL_SORTING_CENTER", "DISMANTLING_BASE"}
)
# Where a consumer hands a battery in: the only sites the public nearest-outlet search shows. Sorting centres,
# plants, dealers' stores, data centres and base stations are the operators' business, not a public map's.
PUBLIC_OUTLET_TYPES: Final = ("RECYCLING_OUTLET", "COOP_STATION", "TEMP_STORAGE_POINT")


# GB 50016 fire hazard classes are short labels (甲/乙/丙…, A to E, "B-1"); the column is VARCHAR(10).
MAX_FIRE_CLASS: Final = 10


def public_outlet_type_violations(field: str, types: Sequence[str]) -> list[FieldViolation]:
    """The public search's facility types: each a hand-in point type (unknown or unspecified ones are "")."""
    if all(t in PUBLIC_OUTLET_TYPES for t in types):
        return []
    return [FieldViolation(field, f"only hand-in points are public: {', '.join(PUBLIC_OUTLET_TYPES)}")]


def text_violations(field: str, value: str, *, required: bool, limit: int) -> list[FieldViolation]:
    if not value.strip():
        return [FieldViolation(field, "required")] if required else []
    if len(value) > limit:
        return [FieldViolation(field, f"at most {limit} characters")]
    if not value.isprintable():
        return [FieldViolation(field, "must not contain control characters")]
    return []


def credit_code_violations(field: str, code: str) -> list[FieldViolation]:
    result = validate_credit_code(code)
    return [FieldViolation(field, f"{v.reason.value}: {v.message}") for v in result.violations]


def phone_violations(field: str, phone: str) -> list[FieldViolation]:
    if phone and not _PHONE.match(phone):
        return [FieldViolation(field, "digits, spaces, dashes and an optional leading +, 5 to 25 characters")]
    return []


@dataclass(frozen=True)
class ParticipantFields:
    credit_code: str
    legal_name: str
    short_name: str
    roles: Sequence[str]
    supervised_division_code: str
    contact_phone: str


def participant_violations(
    fields: ParticipantFields, table: DivisionTable, *, check_credit_code: bool = True
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if check_credit_code:
        found += credit_code_violations("participant.credit_code", fields.credit_code)
    found += text_violations("participant.legal_name", fields.legal_name, required=True, limit=MAX_NAME)
    found += text_violations("participant.short_name", fields.short_name, required=False, limit=MAX_SHORT_TEXT)
    if not fields.roles:
        found.append(FieldViolation("participant.roles", "at least one role"))
    if len(set(fields.roles)) != len(fields.roles):
        found.append(FieldViolation("participant.roles", "each role at most once"))
    division = fields.supervised_division_code
    if "REGULATOR" in fields.roles:
        if not division:
            found.append(FieldViolation("participant.supervised_division_code", "required for a regulator"))
        elif not is_region_code(division, table):
            found.append(
                FieldViolation("participant.supervised_division_code", f"{division!r} is not a GB/T 2260 region")
            )
    elif division:
        found.append(FieldViolation("participant.supervised_division_code", "only regulators supervise a region"))
    found += phone_violations("participant.contact_phone", fields.contact_phone)
    return found


def is_region_code(code: str, table: DivisionTable) -> bool:
    """A province (XX0000), a prefecture (XXYY00) or a county-level code known to the table."""
    if len(code) != 6 or not code.isdigit():
        return False
    if code.endswith("0000"):
        return any(c.code.startswith(code[:2]) for c in table.all_counties())
    if code.endswith("00"):
        return any(c.code.startswith(code[:4]) for c in table.all_counties())
    return table.is_facility_division(code)


@dataclass(frozen=True)
class FacilityFields:
    name: str
    facility_type: str
    operator_facility_code: str
    county_code: str
    latitude: float
    longitude: float
    address: str
    opening_hours: str
    phone: str
    recycling_modes: Sequence[str]
    max_stock_kg: float
    max_stock_units: int
    max_dwell_days: int
    fire_class: str = ""


def facility_violations(fields: FacilityFields, table: DivisionTable, prefix: str = "facility") -> list[FieldViolation]:
    found: list[FieldViolation] = []
    found += text_violations(f"{prefix}.name", fields.name, required=True, limit=MAX_NAME)
    found += text_violations(f"{prefix}.operator_facility_code", fields.operator_facility_code, required=True, limit=64)
    if not fields.facility_type:
        found.append(FieldViolation(f"{prefix}.facility_type", "required"))
    found += text_violations(f"{prefix}.address", fields.address, required=False, limit=MAX_ADDRESS)
    found += text_violations(f"{prefix}.opening_hours", fields.opening_hours, required=False, limit=MAX_SHORT_TEXT)
    found += phone_violations(f"{prefix}.phone", fields.phone)
    found += text_violations(f"{prefix}.safety.fire_class", fields.fire_class, required=False, limit=MAX_FIRE_CLASS)
    if len(set(fields.recycling_modes)) != len(fields.recycling_modes):
        found.append(FieldViolation(f"{prefix}.recycling_modes", "each mode at most once"))
    for name, value in (
        ("max_stock_kg", fields.max_stock_kg),
        ("max_stock_units", fields.max_stock_units),
        ("max_dwell_days", fields.max_dwell_days),
    ):
        if not math.isfinite(value) or value < 0:
            found.append(FieldViolation(f"{prefix}.storage_limits.{name}", "must be a finite number ≥ 0"))
    if fields.facility_type in STORAGE_TYPES and fields.max_dwell_days == 0:
        found.append(
            FieldViolation(f"{prefix}.storage_limits.max_dwell_days", "required for a site that stores waste batteries")
        )
    found += location_violations(fields, table, prefix)
    return found


def location_violations(fields: FacilityFields, table: DivisionTable, prefix: str) -> list[FieldViolation]:
    code = fields.county_code
    if not table.is_facility_division(code):
        return [FieldViolation(f"{prefix}.county_code", f"{code!r} is not a county-level GB/T 2260 division")]
    position = check_china_position(lon=fields.longitude, lat=fields.latitude)
    if position:
        return [FieldViolation(f"{prefix}.location", v.message) for v in position]
    if not table.contains(code, fields.longitude, fields.latitude, tolerance_m=COUNTY_BORDER_TOLERANCE_M):
        county = table.county(code)
        actual = table.locate(fields.longitude, fields.latitude)
        where = f"{actual.code} {actual.name}" if actual else "no county-level division"
        declared = f"{code} {county.name}" if county else code
        return [
            FieldViolation(
                f"{prefix}.location",
                f"({fields.latitude:.6f}, {fields.longitude:.6f}) lies in {where}, not in the declared county "
                f"{declared} (WGS-84 expected; convert GCJ-02/BD-09 map coordinates first)",
            )
        ]
    return []


# ---- transitions and who may make them ----------------------------------------------------------


def check_participant_transition(current: str, target: str) -> None:
    if target not in PARTICIPANT_STATUS_TRANSITIONS.get(current, frozenset()):
        raise FailedPrecondition(
            f"a participant cannot go from {current} to {target}",
            reason="ILLEGAL_STATUS_TRANSITION",
            metadata={"from": current, "to": target},
        )


def check_accreditation_transition(current: str, target: str) -> None:
    if target not in ACCREDITATION_TRANSITIONS.get(current, frozenset()):
        raise FailedPrecondition(
            f"a facility's accreditation cannot go from {current} to {target}",
            reason="ILLEGAL_ACCREDITATION_TRANSITION",
            metadata={"from": current, "to": target},
        )


def authorise_accreditation(caller: Caller, operator_id: str, county_code: str, current: str, target: str) -> None:
    """Submitting a draft for review is the operator's; every other step is a regulator's of that region."""
    if current in ("DRAFT", "DELISTED") and target == "UNDER_REVIEW" and caller.participant_id == operator_id:
        return
    if caller.supervises(county_code):
        return
    raise PermissionDenied(
        f"only a regulator supervising {county_code} may move this facility to {target}",
        reason="NOT_REGULATOR_OF_REGION",
        metadata={"county_code": county_code},
    )


def authorise_participant_admin(caller: Caller, registration_division: str, action: str) -> None:
    """Status changes and credentials: platform operators, or regulators of the registering region."""
    if caller.supervises(registration_division):
        return
    raise PermissionDenied(
        f"{action} is for platform operators and regulators of region {registration_division}",
        reason="NOT_REGULATOR_OF_REGION",
        metadata={"division": registration_division},
    )


def authorise_facility_write(caller: Caller, operator_id: str, county_code: str) -> None:
    """Operators keep their own facilities; regulators of the region and platform operators may too."""
    if caller.participant_id == operator_id or caller.supervises(county_code):
        return
    raise PermissionDenied("a facility is kept by its operator", reason="NOT_FACILITY_OPERATOR")


def roles_from(names: Iterable[str]) -> list[str]:
    return sorted(set(names))


# ---- who may read what ----------------------------------------------------------------------------
#
# Reads are decided where the data is, from the verified caller:
#   - a platform operator reads everything;
#   - a regulator reads what lies in its supervised region (a GB/T 2260 prefix: "32" for 320000, "3201" for
#     320100, the county's code for a county): participants registered there (the registration division of
#     their credit code) and, one at a time, participants operating a facility there; facilities whose county
#     is there; cooperations one of whose parties is registered there. And its own participant record;
#   - any other participant reads only its own record, its own facilities and the cooperations it is a party
#     of.
# Anonymous callers read nothing here (UNAUTHENTICATED); the public calls are FindNearestOutlets (hand-in points
# only, no operator data) and GetCountyCoverage (aggregates).
#
# A denial must not tell more than NOT_FOUND would: NOT_FOUND is answered only when the caller could see the
# record were it there (`may_learn_absence`); otherwise a missing record is PERMISSION_DENIED like a hidden one,
# with the same message and no detail about the record.

READ_DENIED_REASON: Final = "NOT_IN_READ_SCOPE"
REGION_DENIED_REASON: Final = "NOT_REGULATOR_OF_REGION"


@dataclass(frozen=True)
class ReadScope:
    """What a caller may read: everything (platform operators), a regulator's region (a division-code prefix),
    and always its own participant's records."""

    participant_id: str
    everything: bool = False
    region: str = ""  # a regulator's division-code prefix; empty for everyone else

    @property
    def own_only(self) -> bool:
        return not self.everything and not self.region

    def in_region(self, division_code: str) -> bool:
        return bool(self.region) and division_code.startswith(self.region)


def read_scope(caller: Caller) -> ReadScope:
    """The scope of an authenticated caller; UNAUTHENTICATED for an anonymous one. A regulator whose supervised
    division is not a six-digit code supervises nothing and reads like any other participant."""
    if caller.participant_id is None:
        raise Unauthenticated()
    if caller.is_platform_operator:
        return ReadScope(caller.participant_id, everything=True)
    code = caller.supervised_division
    if caller.is_regulator and len(code) == 6 and code.isascii() and code.isdigit():
        return ReadScope(caller.participant_id, region=caller.region_prefix())
    return ReadScope(caller.participant_id)


def read_denied(resource: str) -> PermissionDenied:
    """The one answer for a record the caller may not read or that is not there (see `may_learn_absence`)."""
    return PermissionDenied(
        f"this {resource} is not yours to read, or there is no such {resource}", reason=READ_DENIED_REASON
    )


def may_learn_absence(scope: ReadScope, *, participant_id: str = "", division_code: str = "") -> bool:
    """Whether a missing record may be answered NOT_FOUND: when the caller could see it were it there. That is
    certain for a platform operator, for the caller's own participant id, and for a regulator asking about a
    division (a credit code carries its registration division) inside its region."""
    return (
        scope.everything
        or (bool(participant_id) and participant_id == scope.participant_id)
        or (bool(division_code) and scope.in_region(division_code))
    )


def check_participant_id_readable(scope: ReadScope, participant_id: str) -> None:
    """Before any lookup: a participant that reads only its own record asks about another → PERMISSION_DENIED,
    whether the other exists or not (so nothing is read and nothing told)."""
    if scope.own_only and participant_id != scope.participant_id:
        raise read_denied("participant")


class Visibility(enum.Enum):
    VISIBLE = "visible"
    HIDDEN = "hidden"
    # A regulator may see a participant registered elsewhere that operates a facility in its region; the
    # servicer asks the store (one indexed query on the facility's operator) and decides.
    IF_OPERATING_IN_REGION = "if operating in region"


def participant_visibility(scope: ReadScope, participant_id: str, registration_division: str) -> Visibility:
    if scope.everything or participant_id == scope.participant_id or scope.in_region(registration_division):
        return Visibility.VISIBLE
    if scope.region:
        return Visibility.IF_OPERATING_IN_REGION
    return Visibility.HIDDEN


def may_read_facility(scope: ReadScope, operator_id: str, county_code: str) -> bool:
    """Platform operators; regulators of the facility's county; its operator."""
    return scope.everything or operator_id == scope.participant_id or scope.in_region(county_code)


def authorise_facility_read(scope: ReadScope, operator_id: str, county_code: str) -> None:
    if not may_read_facility(scope, operator_id, county_code):
        raise read_denied("facility")


def check_division_prefix(field: str, prefix: str) -> str:
    """A list's division filter: empty, or 1 to 6 digits (it goes into a LIKE prefix, so nothing else)."""
    prefix = prefix.strip()
    if prefix and (len(prefix) > 6 or not prefix.isascii() or not prefix.isdigit()):
        raise InvalidArgument([FieldViolation(field, "1 to 6 digits")])
    return prefix


def narrow_to_region(requested: str, region: str) -> str:
    """The division prefix a regulator's list runs with: the requested one when it lies inside the region, the
    region when the request is wider (or empty); a request for another region is PERMISSION_DENIED."""
    if requested.startswith(region):
        return requested
    if region.startswith(requested):
        return region
    raise PermissionDenied(
        f"division prefix {requested!r} is outside the region you supervise ({region!r})",
        reason=REGION_DENIED_REASON,
        metadata={"division_prefix": requested, "supervised_prefix": region},
    )


@dataclass(frozen=True)
class ParticipantFilter:
    """What ListParticipants queries: an empty participant_id means any."""

    division_prefix: str
    participant_id: str = ""


def participant_list_filter(scope: ReadScope, division_prefix: str) -> ParticipantFilter:
    """Platform: as asked. Regulator: the prefix narrowed to its region (a registration division there).
    Anyone else: itself, if it passes the other filters."""
    if scope.everything:
        return ParticipantFilter(division_prefix)
    if scope.region:
        return ParticipantFilter(narrow_to_region(division_prefix, scope.region))
    return ParticipantFilter(division_prefix, participant_id=scope.participant_id)


@dataclass(frozen=True)
class FacilityFilter:
    """What ListFacilities queries: an empty value means any."""

    operator_id: str
    division_prefix: str


def facility_list_filter(scope: ReadScope, operator_id: str, division_prefix: str) -> FacilityFilter:
    """Platform: as asked. Regulator: any operator, counties narrowed to its region. Anyone else: its own
    facilities (without operator_id too); naming another operator is PERMISSION_DENIED, as that list is empty
    by definition."""
    if scope.everything:
        return FacilityFilter(operator_id, division_prefix)
    if scope.region:
        return FacilityFilter(operator_id, narrow_to_region(division_prefix, scope.region))
    if operator_id and operator_id != scope.participant_id:
        raise PermissionDenied("only the operator's own facilities are listed for it", reason=READ_DENIED_REASON)
    return FacilityFilter(scope.participant_id, division_prefix)


@dataclass(frozen=True)
class CooperationFilter:
    """What ListCooperations adds to the request's producer/operator: a party that must be the caller, or a
    region one of the parties must be registered in. Empty: no restriction."""

    party_id: str = ""
    party_region: str = ""


def cooperation_list_filter(scope: ReadScope) -> CooperationFilter:
    """Platform: all. Regulator: cooperations with a party registered in its region. Anyone else: those it is
    the producer or the operator of (so asking about a producer it works with lists just those)."""
    if scope.everything:
        return CooperationFilter()
    if scope.region:
        return CooperationFilter(party_region=scope.region)
    return CooperationFilter(party_id=scope.participant_id)


def update_mask_paths(
    paths: Iterable[str], updatable: frozenset[str], identifiers: frozenset[str]
) -> tuple[list[str], list[FieldViolation]]:
    """The paths an update mask asks to change, and the violations of the rest.

    The record's id and its `version` say which record and which revision; they are not changes. A REST PATCH
    carries them in its body, and a mask filled from the body's keys (grpc-gateway's PATCH feature) names
    them, so they are skipped rather than refused. A sub-path (`location.latitude`) changes part of a field
    and is kept as it is; its first segment must be updatable. An empty mask is a violation."""
    kept: list[str] = []
    refused: list[str] = []
    for path in dict.fromkeys(paths):  # in order, once each
        if path in identifiers or path == "version":
            continue
        (kept if path.split(".", 1)[0] in updatable else refused).append(path)
    if refused or not kept:
        named = f"; not updatable: {', '.join(refused)}" if refused else ""
        return [], [FieldViolation("update_mask", f"name one or more of {', '.join(sorted(updatable))}{named}")]
    return kept, []
