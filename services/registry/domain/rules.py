"""Registry rules without I/O: what a valid participant or facility is, which status and accreditation
transitions exist, and who may make them. The servicer calls these before anything is written."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from meshkit.caller import Caller
from meshkit.errors import FailedPrecondition, FieldViolation, PermissionDenied
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
PUBLIC_OUTLET_TYPES: Final = ("RECYCLING_OUTLET", "COOP_STATION", "TEMP_STORAGE_POINT")


# GB 50016 fire hazard classes are short labels (甲/乙/丙…, A to E, "B-1"); the column is VARCHAR(10).
MAX_FIRE_CLASS: Final = 10


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
