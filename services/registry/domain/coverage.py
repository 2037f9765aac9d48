"""County coverage of the e-bike battery collection network, as a pure computation.

KPI (research note §3.7): the share of county-level divisions with at least one qualifying facility,
by default a LISTED (名录内) recycling service outlet (回收服务网点) or temporary storage point (暂存点).
The facility stream is consumed once and reduced to a set of covered codes, so 50,000 facilities cost
a few milliseconds.

Facility types and accreditation statuses are plain strings so that the service can pass its proto
enum names after stripping the ``FACILITY_TYPE_`` / ``ACCREDITATION_STATUS_`` prefixes; the
:class:`FacilityType` and :class:`AccreditationStatus` members compare equal to those strings.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from services.registry.domain.divisions import COVERAGE_LEVELS, County, DivisionLevel, DivisionTable


class FacilityType(StrEnum):
    """Facility kinds of the data model (research note §6.2)."""

    PRODUCTION_PLANT = "PRODUCTION_PLANT"
    WAREHOUSE = "WAREHOUSE"
    DEALER_STORE = "DEALER_STORE"
    REPAIR_SHOP = "REPAIR_SHOP"
    RECYCLING_OUTLET = "RECYCLING_OUTLET"  # 回收服务网点
    COOP_STATION = "COOP_STATION"  # 供销社回收站点
    TEMP_STORAGE_POINT = "TEMP_STORAGE_POINT"  # 暂存点
    REGIONAL_SORTING_CENTER = "REGIONAL_SORTING_CENTER"  # 区域分拣中心
    HEALTH_ASSESSMENT_POINT = "HEALTH_ASSESSMENT_POINT"
    CASCADE_PLANT = "CASCADE_PLANT"
    RECYCLING_PLANT = "RECYCLING_PLANT"
    MOBILE_COLLECTION_VEHICLE = "MOBILE_COLLECTION_VEHICLE"


class AccreditationStatus(StrEnum):
    """Local 名录管理 status of a facility (research note §6.2)."""

    DRAFT = "DRAFT"
    UNDER_REVIEW = "UNDER_REVIEW"
    LISTED = "LISTED"
    SUSPENDED = "SUSPENDED"
    DELISTED = "DELISTED"


DEFAULT_QUALIFYING_TYPES: Final[frozenset[str]] = frozenset(
    {FacilityType.RECYCLING_OUTLET, FacilityType.TEMP_STORAGE_POINT}
)
DEFAULT_QUALIFYING_ACCREDITATIONS: Final[frozenset[str]] = frozenset({AccreditationStatus.LISTED})

FacilityRecord = tuple[str, str, str]
"""(county_code, facility_type, accreditation) of one facility."""


@dataclass(frozen=True, slots=True)
class UncoveredCounty:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Coverage over a set of units. ``ratio`` is 0.0 when there are no units."""

    total: int
    covered: int
    uncovered: tuple[UncoveredCounty, ...]  # sorted by code

    @property
    def ratio(self) -> float:
        return self.covered / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class NationalCoverage:
    national: CoverageReport
    by_province: dict[str, CoverageReport]  # keyed by six-digit province code, e.g. "320000"


def covered_codes(
    facilities: Iterable[FacilityRecord],
    *,
    qualifying_types: Collection[str] = DEFAULT_QUALIFYING_TYPES,
    qualifying_accreditations: Collection[str] = DEFAULT_QUALIFYING_ACCREDITATIONS,
) -> frozenset[str]:
    """Codes of the divisions holding at least one qualifying facility (codes not checked against a table)."""
    types = frozenset(qualifying_types)
    accreditations = frozenset(qualifying_accreditations)
    return frozenset(code for code, kind, status in facilities if kind in types and status in accreditations)


def compute_coverage(
    counties: DivisionTable | Iterable[County],
    facilities: Iterable[FacilityRecord],
    *,
    qualifying_types: Collection[str] = DEFAULT_QUALIFYING_TYPES,
    qualifying_accreditations: Collection[str] = DEFAULT_QUALIFYING_ACCREDITATIONS,
) -> CoverageReport:
    """Coverage of ``counties`` (e.g. ``table.counties_in_province("32", COVERAGE_LEVELS)``, or a whole
    table, meaning its :data:`COVERAGE_LEVELS` units) by the facilities. Facilities in codes outside
    ``counties`` are ignored, so the whole country's facilities can be passed for a province report."""
    if isinstance(counties, DivisionTable):
        counties = counties.all_counties(COVERAGE_LEVELS)
    covered = covered_codes(
        facilities, qualifying_types=qualifying_types, qualifying_accreditations=qualifying_accreditations
    )
    return _report(counties, covered)


def national_coverage(
    table: DivisionTable,
    facilities: Iterable[FacilityRecord],
    *,
    levels: Collection[DivisionLevel] = COVERAGE_LEVELS,
    qualifying_types: Collection[str] = DEFAULT_QUALIFYING_TYPES,
    qualifying_accreditations: Collection[str] = DEFAULT_QUALIFYING_ACCREDITATIONS,
) -> NationalCoverage:
    """Coverage for the whole country and per province, from one pass over the facilities.

    ``levels`` defaults to the county-level divisions plus the four districtless prefecture cities;
    pass :data:`~services.registry.domain.divisions.COUNTY_LEVELS` for the strict MCA set.
    """
    covered = covered_codes(
        facilities, qualifying_types=qualifying_types, qualifying_accreditations=qualifying_accreditations
    )
    units = table.all_counties(levels)
    per_province: dict[str, list[County]] = {}
    for unit in units:
        per_province.setdefault(unit.province_code, []).append(unit)
    return NationalCoverage(
        national=_report(units, covered),
        by_province={prov: _report(members, covered) for prov, members in sorted(per_province.items())},
    )


def _report(counties: Iterable[County], covered: frozenset[str]) -> CoverageReport:
    units = {c.code: c for c in counties}  # de-duplicates if a caller passes a unit twice
    uncovered = tuple(UncoveredCounty(code, units[code].name) for code in sorted(units.keys() - covered))
    return CoverageReport(total=len(units), covered=len(units) - len(uncovered), uncovered=uncovered)
