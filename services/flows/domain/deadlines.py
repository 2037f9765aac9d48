"""Reporting deadlines in Chinese working days, and whether a report came late (pure, no I/O).

An event must reach the platform within N working days (工作日) after the day it happened: the deadline is
the N-th working day after the event's local date (the event's own day does not count, and counting starts
at the next working day however many weekend or holiday days come first). A report recorded on or before
that day is on time; one recorded on a later local date is late. A late report is still stored, with the
``late`` flag (research note §6.5 item 7, line 714: "reporting later than the deadline rule (working days)
→ accept with a late flag").

Working days follow the official State Council calendar with its holidays and make-up working days (调休:
a Saturday or Sunday that is worked), from the ``chinesecalendar`` package (import ``chinese_calendar``).
The package knows the years it has the State Council's notice for (2004 to 2026 in 1.11) and raises for
others; for those years the calendar falls back to Monday to Friday (:func:`calendar_covers` says which).
The notice for a year appears in November or December of the year before: upgrade the package then.

The deadlines (research note ``../shared/research/battery.md`` §3.1, lines 257-263 "Upload deadlines
(working days after the physical event)", from 《新能源汽车动力蓄电池回收利用溯源管理暂行规定》 2018, arts.
10-19 quoted at https://www.jdcsww.com/zcfgdetail/201807031517396_2 (line 254). The note's §9 (line 823)
says the 2026 e-bike notice's own deadlines were not found, so the traction-battery rules are the precedent
(§0 item 7, line 61; §5.3 item 1, line 499: "Deadlines in working days per segment (7/15/30 WD)"):

- COMMISSIONING (赋码/生产下线): 7 working days. "car maker: 7 WD after issuing the vehicle certificate
  (draft; some summaries say 15)" (line 258): the producer's upload when the battery comes into existence.
- INSTALLING (fitted in a repair or swap): 30. "maintenance or replacement: 30 WD (Art. 10)" (line 259).
- COLLECTING, RECEIVING, STORING, SORTING, SHIPPING at the reverse-chain sites (outlets, co-op stations,
  temporary storage points, regional sorting centres) and dealer stores (which take batteries back in a
  trade-in): 30. "outlets report to the car maker,
  which uploads within 30 WD of warehouse-in or hand-over-out (Art. 11)" (line 260).
- At a DISMANTLING_BASE (拆解基地), RECEIVING, SHIPPING and DISMANTLING: 15. "scrap-vehicle dismantlers:
  15 WD after receipt and after battery hand-over-out (Art. 13)" (line 261); the dismantling base is the
  e-bike chain's dismantler (a recycling plant that dismantles falls under its own 30). Cascade
  utilisation, also 15 WD (Art. 14, line 262), has no business step here (e-bike batteries may not be
  cascade-used).
- At a RECYCLING_PLANT (再生利用), RECEIVING (waste in-bound) and RECYCLING (final treatment) anywhere: 30.
  "recyclers: 30 WD after waste battery in-bound and 30 WD after final treatment (Art. 15)" (line 263).
- Everything else (RETAIL_SELLING, HEALTH_ASSESSING, DISCHARGING, DESTROYING, and a step at a site type the
  rules above do not name) takes DEFAULT_WORKING_DAYS = 30, our choice, not the note's: 30 is the longest
  deadline of the 2018 rules, so a step that no rule covers is never called late where a segment that does
  have a rule would still accept it. Regulators get fewer, surer late flags.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import lru_cache
from typing import Final

import chinese_calendar  # type: ignore[import-untyped]

from services.flows.domain.directory import FacilityKind
from services.flows.domain.events import BizStep

CHINA_TIME: Final = dt.timezone(dt.timedelta(hours=8), "+08:00")
"""Beijing time (Asia/Shanghai has kept +08:00 without daylight saving since 1991): the calendar's dates."""

ANY_FACILITY: Final = "*"
"""The facility type of a rule that applies wherever the step happens."""

COMMISSIONING_WORKING_DAYS: Final = 7  # note line 258 (a draft; some summaries say 15)
DISMANTLER_WORKING_DAYS: Final = 15  # note line 261 (Art. 13)
RECYCLER_WORKING_DAYS: Final = 30  # note line 263 (Art. 15)
OUTLET_WORKING_DAYS: Final = 30  # note line 260 (Art. 11)
REPAIR_WORKING_DAYS: Final = 30  # note line 259 (Art. 10)
DEFAULT_WORKING_DAYS: Final = 30  # our choice for steps no rule covers (see the module docstring)

_OUTLET_SITES: Final = (
    FacilityKind.RECYCLING_OUTLET,
    FacilityKind.COOP_STATION,
    FacilityKind.TEMP_STORAGE_POINT,
    FacilityKind.REGIONAL_SORTING_CENTER,
    FacilityKind.DEALER_STORE,
)
_OUTLET_STEPS: Final = (BizStep.COLLECTING, BizStep.RECEIVING, BizStep.STORING, BizStep.SORTING, BizStep.SHIPPING)


def _rules() -> dict[tuple[str, str], int]:
    rules: dict[tuple[str, str], int] = {
        (BizStep.COMMISSIONING, ANY_FACILITY): COMMISSIONING_WORKING_DAYS,
        (BizStep.INSTALLING, ANY_FACILITY): REPAIR_WORKING_DAYS,
        (BizStep.RECYCLING, ANY_FACILITY): RECYCLER_WORKING_DAYS,
        (BizStep.RECEIVING, FacilityKind.RECYCLING_PLANT): RECYCLER_WORKING_DAYS,
    }
    for site in _OUTLET_SITES:
        for step in _OUTLET_STEPS:
            rules[(step, site)] = OUTLET_WORKING_DAYS
    for step in (BizStep.RECEIVING, BizStep.SHIPPING, BizStep.DISMANTLING):
        rules[(step, FacilityKind.DISMANTLING_BASE)] = DISMANTLER_WORKING_DAYS
    return {(str(step), str(site)): days for (step, site), days in rules.items()}


DEADLINE_RULES: Final[Mapping[tuple[str, str], int]] = _rules()
"""(business step, facility type or ANY_FACILITY) → working days; a (step, type) rule wins over (step, *)."""


def working_days_for(biz_step: str, facility_type: str) -> int:
    """How many working days after the event a report of this step at this type of site may take."""
    found = DEADLINE_RULES.get((biz_step, facility_type))
    if found is None:
        found = DEADLINE_RULES.get((biz_step, ANY_FACILITY), DEFAULT_WORKING_DAYS)
    return found


def calendar_covers(year: int) -> bool:
    """Whether the official holiday calendar of `year` is known (else Monday to Friday are working days)."""
    try:
        chinese_calendar.is_workday(dt.date(year, 1, 1))
    except NotImplementedError:
        return False
    return True


def is_working_day(day: dt.date) -> bool:
    """A working day of the official calendar: holidays are off, make-up days (调休) on a weekend are worked."""
    try:
        return bool(chinese_calendar.is_workday(day))
    except NotImplementedError:  # a year the package has no notice for
        return day.weekday() < 5


def add_working_days(start: dt.date, count: int) -> dt.date:
    """The `count`-th working day after `start` (`start` itself never counts; `count` ≥ 1)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    day = start
    remaining = count
    while remaining:
        day += dt.timedelta(days=1)
        if is_working_day(day):
            remaining -= 1
    return day


def local_date(moment: dt.datetime) -> dt.date:
    """The date in China of an aware moment (a naive one is taken as UTC, as the tables store it)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
    return aware.astimezone(CHINA_TIME).date()


@lru_cache(maxsize=16_384)
def deadline(biz_step: str, facility_type: str, event_date: dt.date) -> dt.date:
    """The last local date on which a report of this event is on time."""
    return add_working_days(event_date, working_days_for(biz_step, facility_type))


def is_late(biz_step: str, facility_type: str, event_time_local: dt.date, record_time_local: dt.date) -> bool:
    """Whether the report was recorded after its deadline. Both dates are local (China, +08:00) calendar
    dates: the event's as the reporter stated it, the record's as the platform took it."""
    if record_time_local <= event_time_local:
        return False
    return record_time_local > deadline(biz_step, facility_type, event_time_local)
