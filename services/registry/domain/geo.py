"""Great-circle distance, radius bounding boxes and WGS-84 coordinate checks.

Coordinates are degrees on WGS-84 (EPSG:4326). A :class:`GeoPoint` is (lon, lat) in that order, as
in GeoJSON (RFC 7946 §3.1.1) and shapely; scalar arguments are keyword-only so the order cannot be
mixed up at a call site.

Distances use a sphere of the mean Earth radius R1 = (2a + b) / 3 = 6,371,008.8 m, the value the IUGG
recommends (H. Moritz, "Geodetic Reference System 1980", Bulletin Géodésique 54, 1980; the same R1
for WGS-84). The spherical model is within about 0.5 % of the ellipsoidal (Vincenty) distance, which is
plenty for "outlets near me" queries; do not use it for surveying.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple

EARTH_MEAN_RADIUS_M: Final = 6_371_008.8
"""IUGG mean radius R1 of the Earth (GRS 80 / WGS-84), metres."""


class GeoPoint(NamedTuple):
    """A WGS-84 position in degrees, longitude first (GeoJSON order)."""

    lon: float
    lat: float


def haversine_m(a: GeoPoint, b: GeoPoint) -> float:
    """Great-circle distance in metres between two points (haversine formula, R = 6,371,008.8 m).

    The haversine form stays accurate for small distances where the spherical law of cosines
    loses precision (R. W. Sinnott, "Virtues of the Haversine", Sky & Telescope 68(2), 1984).
    """
    phi1, phi2 = math.radians(a.lat), math.radians(b.lat)
    dphi = phi2 - phi1
    dlmb = math.radians(b.lon - a.lon)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    # min() guards asin against h creeping above 1 by rounding for near-antipodal points.
    return 2 * EARTH_MEAN_RADIUS_M * math.asin(math.sqrt(min(1.0, h)))


def destination(origin: GeoPoint, *, bearing_deg: float, distance_m: float) -> GeoPoint:
    """The point reached from ``origin`` along a great circle with the initial bearing (degrees clockwise
    from north) after ``distance_m`` metres; longitude is normalised to [-180, 180)."""
    delta = distance_m / EARTH_MEAN_RADIUS_M
    theta = math.radians(bearing_deg)
    phi1, lmb1 = math.radians(origin.lat), math.radians(origin.lon)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lmb2 = lmb1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon = (math.degrees(lmb2) + 180.0) % 360.0 - 180.0
    return GeoPoint(lon=lon, lat=math.degrees(phi2))


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """A lat/lon box. ``min_lon > max_lon`` means the box crosses the antimeridian (±180°)."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    @property
    def crosses_antimeridian(self) -> bool:
        return self.min_lon > self.max_lon

    def lon_ranges(self) -> tuple[tuple[float, float], ...]:
        """One (lo, hi) longitude range, or two when the box crosses the antimeridian: a store query
        ORs ``lon BETWEEN lo AND hi`` over them."""
        if self.crosses_antimeridian:
            return ((self.min_lon, 180.0), (-180.0, self.max_lon))
        return ((self.min_lon, self.max_lon),)

    def contains(self, p: GeoPoint) -> bool:
        if not self.min_lat <= p.lat <= self.max_lat:
            return False
        return any(lo <= p.lon <= hi for lo, hi in self.lon_ranges())


# Rounding headroom so a point exactly at the radius is never cut off by the last ulp (~0.1 mm).
_BOX_PAD_DEG: Final = 1e-9


def bounding_box(center: GeoPoint, radius_m: float) -> BoundingBox:
    """The smallest lat/lon box holding every point within ``radius_m`` great-circle metres of ``center``.

    Use it as an index-friendly prefilter (``lat BETWEEN .. AND lon BETWEEN ..``), then sort the
    survivors by :func:`haversine_m` and drop those beyond the radius. Latitude spans ±r/R radians.
    The longitude half-width is ``asin(sin(r/R) / cos(lat))``, the exact extent of a spherical cap
    (J. P. Matuschek, "Finding Points Within a Distance of a Latitude/Longitude Using Bounding
    Coordinates", 2010): it widens as meridians converge towards the poles, and when the cap
    reaches a pole every longitude is included.
    """
    if radius_m < 0 or not math.isfinite(radius_m):
        raise ValueError(f"radius must be a finite non-negative number of metres, got {radius_m}")
    delta = radius_m / EARTH_MEAN_RADIUS_M
    if delta >= math.pi:
        return BoundingBox(-180.0, -90.0, 180.0, 90.0)
    dlat = math.degrees(delta) + _BOX_PAD_DEG
    min_lat, max_lat = center.lat - dlat, center.lat + dlat
    if max_lat >= 90.0 or min_lat <= -90.0:
        # The cap contains a pole: all longitudes qualify.
        return BoundingBox(-180.0, max(min_lat, -90.0), 180.0, min(max_lat, 90.0))
    ratio = math.sin(delta) / math.cos(math.radians(center.lat))
    if ratio >= 1.0:
        return BoundingBox(-180.0, min_lat, 180.0, max_lat)
    dlon = math.degrees(math.asin(ratio)) + _BOX_PAD_DEG
    if dlon >= 180.0:
        return BoundingBox(-180.0, min_lat, 180.0, max_lat)
    min_lon, max_lon = center.lon - dlon, center.lon + dlon
    # Wrap into [-180, 180]; a wrapped edge makes min_lon > max_lon (crossing the antimeridian).
    if min_lon < -180.0:
        min_lon += 360.0
    if max_lon > 180.0:
        max_lon -= 360.0
    return BoundingBox(min_lon, min_lat, max_lon, max_lat)


class CoordinateReason(StrEnum):
    NOT_FINITE = "not_finite"
    OUT_OF_RANGE = "out_of_range"
    OUTSIDE_CHINA = "outside_china"
    LOOKS_SWAPPED = "looks_swapped"


@dataclass(frozen=True, slots=True)
class CoordinateViolation:
    """A failed coordinate check; ``field`` is ``"lat"`` or ``"lon"`` (or ``"lat,lon"`` for the pair)."""

    field: str
    reason: CoordinateReason
    message: str


def validate_wgs84(*, lon: float, lat: float) -> tuple[CoordinateViolation, ...]:
    """Range checks for a WGS-84 position: lat in [-90, 90], lon in [-180, 180], both finite."""
    out: list[CoordinateViolation] = []
    for field, value, limit in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if not math.isfinite(value):
            out.append(CoordinateViolation(field, CoordinateReason.NOT_FINITE, f"{field} must be a finite number"))
        elif not -limit <= value <= limit:
            out.append(
                CoordinateViolation(
                    field, CoordinateReason.OUT_OF_RANGE, f"{field} must be within [-{limit:g}, {limit:g}], got {value}"
                )
            )
    return tuple(out)


CHINA_BBOX: Final = BoundingBox(min_lon=73.4, min_lat=3.4, max_lon=135.2, max_lat=53.7)
"""A generous box around the PRC's extreme points: west 73°29'E (Pamirs, Wuqia county), east
135°05'E (Heilong/Ussuri confluence, Fuyuan), north 53°33'N (Mohe), south about 3°58'N (Zengmu
Ansha / James Shoal), each rounded outwards. A sanity check for typos and swapped axes only: it also
covers parts of neighbouring countries, and the county polygons decide the rest."""


def in_china_bbox(p: GeoPoint) -> bool:
    return CHINA_BBOX.contains(p)


def check_china_position(*, lon: float, lat: float) -> tuple[CoordinateViolation, ...]:
    """WGS-84 range checks, then the China bounding box; flags the common lat/lon swap separately
    because a swapped Chinese position (e.g. lat=118.8, lon=32.1) is out of range, not just far away."""
    basic = validate_wgs84(lon=lon, lat=lat)
    swapped = in_china_bbox(GeoPoint(lon=lat, lat=lon))
    if basic or not in_china_bbox(GeoPoint(lon=lon, lat=lat)):
        if swapped:
            return (
                *basic,
                CoordinateViolation(
                    "lat,lon",
                    CoordinateReason.LOOKS_SWAPPED,
                    f"lat={lat}, lon={lon} looks like a swapped pair: lon={lat}, lat={lon} is in China",
                ),
            )
        if basic:
            return basic
        return (
            CoordinateViolation(
                "lat,lon",
                CoordinateReason.OUTSIDE_CHINA,
                f"lat={lat}, lon={lon} is outside China's bounding box "
                f"(lon {CHINA_BBOX.min_lon}..{CHINA_BBOX.max_lon}, lat {CHINA_BBOX.min_lat}..{CHINA_BBOX.max_lat})",
            ),
        )
    return ()
