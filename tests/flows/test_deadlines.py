"""Reporting deadlines in working days on the official calendar: real dates around National Day 2025 (1-8
October off, Sunday 28 September and Saturday 11 October worked) and Spring Festival 2026 (15-23 February
off, Saturdays 14 and 28 February worked). Every expected date below was counted by hand on that calendar."""

from __future__ import annotations

import datetime as dt

import pytest

from services.flows.domain.deadlines import (
    DEADLINE_RULES,
    DEFAULT_WORKING_DAYS,
    add_working_days,
    calendar_covers,
    deadline,
    is_late,
    is_working_day,
    local_date,
    working_days_for,
)
from services.flows.domain.directory import FacilityKind
from services.flows.domain.events import BizStep

D = dt.date


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (D(2025, 9, 27), False),  # an ordinary Saturday
        (D(2025, 9, 28), True),  # Sunday, a make-up working day (调休) for National Day
        (D(2025, 10, 1), False),  # National Day
        (D(2025, 10, 6), False),  # a Monday inside the holiday (Mid-Autumn)
        (D(2025, 10, 11), True),  # Saturday, a make-up working day
        (D(2025, 10, 12), False),  # the Sunday after it
        (D(2026, 2, 14), True),  # Saturday, make-up day before Spring Festival
        (D(2026, 2, 16), False),  # 除夕 eve week: a Monday off
        (D(2026, 2, 23), False),  # the last day off, a Monday
        (D(2026, 2, 24), True),
        (D(2026, 2, 28), True),  # Saturday, make-up day after Spring Festival
        (D(2026, 3, 1), False),
    ],
)
def test_the_official_calendar_with_holidays_and_make_up_days(day: dt.date, working: bool) -> None:
    assert is_working_day(day) is working


def test_outlet_collection_over_national_day_2025_takes_a_week_longer_than_monday_to_friday() -> None:
    # Collected on Tuesday 30 September 2025: 30 working days. Counting: 9, 10, 11 (Sat, 调休) October = 3,
    # 13-17 = 8, 20-24 = 13, 27-31 = 18, 3-7 November = 23, 10-14 = 28, 17 = 29, 18 = 30.
    event = D(2025, 9, 30)
    assert deadline("COLLECTING", "RECYCLING_OUTLET", event) == D(2025, 11, 18)
    assert not is_late("COLLECTING", "RECYCLING_OUTLET", event, D(2025, 11, 18))
    assert is_late("COLLECTING", "RECYCLING_OUTLET", event, D(2025, 11, 19))
    # Monday to Friday alone would have ended on 11 November: a report then is on time, not late.
    assert not is_late("COLLECTING", "RECYCLING_OUTLET", event, D(2025, 11, 12))


def test_commissioning_counts_the_sunday_and_saturday_make_up_days() -> None:
    # Friday 26 September 2025, 7 working days: 28 (Sun, 调休), 29, 30 September, 9, 10, 11 (Sat, 调休), 13 October.
    assert deadline("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 9, 26)) == D(2025, 10, 13)
    assert not is_late("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 9, 26), D(2025, 10, 13))
    assert is_late("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 9, 26), D(2025, 10, 14))


def test_an_event_on_a_holiday_counts_from_the_next_working_day() -> None:
    # Friday 3 October 2025 (National Day), 7 working days: 9, 10, 11 (Sat), 13, 14, 15, 16 October.
    assert deadline("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 10, 3)) == D(2025, 10, 16)
    # An event on the make-up Saturday itself: that day does not count, the count starts on Monday 13.
    assert deadline("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 10, 11)) == D(2025, 10, 21)


def test_dismantling_base_receipt_across_spring_festival_2026() -> None:
    # Friday 13 February 2026, 15 working days: 14 (Sat, 调休) = 1, 24-27 = 5, 28 (Sat, 调休) = 6,
    # 2-6 March = 11, 9-12 = 15.
    event = D(2026, 2, 13)
    assert deadline("RECEIVING", "DISMANTLING_BASE", event) == D(2026, 3, 12)
    assert not is_late("RECEIVING", "DISMANTLING_BASE", event, D(2026, 3, 12))
    assert is_late("RECEIVING", "DISMANTLING_BASE", event, D(2026, 3, 13))
    # The same receipt at a recycling plant has 30: ... 9-13 March = 16, 16-20 = 21, 23-27 = 26, 30-31 = 28,
    # 1-2 April = 30.
    assert deadline("RECEIVING", "RECYCLING_PLANT", event) == D(2026, 4, 2)


def test_recycling_is_30_working_days_wherever_it_is_reported() -> None:
    # Tuesday 24 February 2026 (first day back), 30 working days: 25-27 = 3, 28 (Sat) = 4, 2-6 March = 9,
    # 9-13 = 14, 16-20 = 19, 23-27 = 24, 30-31 = 26, 1-3 April = 29, then Qingming (Saturday 4 to Monday
    # 6 April 2026) is off: 7 April = 30.
    assert not is_working_day(D(2026, 4, 6))
    assert deadline("RECYCLING", "RECYCLING_PLANT", D(2026, 2, 24)) == D(2026, 4, 7)
    assert deadline("RECYCLING", "DISMANTLING_BASE", D(2026, 2, 24)) == D(2026, 4, 7)


def test_working_days_per_step_and_site() -> None:
    assert working_days_for("COMMISSIONING", "PRODUCTION_PLANT") == 7
    assert working_days_for("COMMISSIONING", "") == 7
    assert working_days_for("INSTALLING", "DEALER_STORE") == 30
    for step in ("RECEIVING", "SHIPPING", "DISMANTLING"):
        assert working_days_for(step, "DISMANTLING_BASE") == 15
    for step in ("RECEIVING", "RECYCLING"):
        assert working_days_for(step, "RECYCLING_PLANT") == 30
    for site in ("RECYCLING_OUTLET", "COOP_STATION", "TEMP_STORAGE_POINT", "REGIONAL_SORTING_CENTER"):
        for step in ("COLLECTING", "RECEIVING", "STORING", "SHIPPING"):
            assert working_days_for(step, site) == 30
    # Steps no rule covers take the default.
    assert working_days_for("HEALTH_ASSESSING", "RECYCLING_OUTLET") == DEFAULT_WORKING_DAYS
    assert working_days_for("DESTROYING", "TEMP_STORAGE_POINT") == DEFAULT_WORKING_DAYS
    assert working_days_for("SOMETHING_NEW", "") == DEFAULT_WORKING_DAYS
    # Every step at every site has a deadline of 7, 15 or 30 working days, and the rules only name real ones.
    for step in BizStep:
        for kind in FacilityKind:
            assert working_days_for(step, kind) in (7, 15, 30)
    assert {step for step, _ in DEADLINE_RULES} <= set(BizStep)
    assert {site for _, site in DEADLINE_RULES} <= {*FacilityKind, "*"}


def test_never_late_on_or_before_the_event_day() -> None:
    assert not is_late("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 10, 3), D(2025, 10, 3))
    assert not is_late("COMMISSIONING", "PRODUCTION_PLANT", D(2025, 10, 3), D(2025, 9, 1))


def test_years_the_package_does_not_know_fall_back_to_monday_to_friday() -> None:
    assert calendar_covers(2025) and calendar_covers(2026)
    assert not calendar_covers(2099)
    # Thursday 1 January 2099 is not known as a holiday: Monday to Friday count. 7 working days:
    # 2 (Fri), 5-9 (Mon-Fri) = 6, 12 = 7.
    assert is_working_day(D(2099, 1, 1)) and not is_working_day(D(2099, 1, 3))
    assert deadline("COMMISSIONING", "PRODUCTION_PLANT", D(2099, 1, 1)) == D(2099, 1, 12)


def test_add_working_days_needs_a_positive_count() -> None:
    assert add_working_days(D(2025, 9, 30), 1) == D(2025, 10, 9)
    with pytest.raises(ValueError, match="at least 1"):
        add_working_days(D(2025, 9, 30), 0)


def test_local_dates_are_beijing_dates() -> None:
    # 17:30 UTC on 30 September is already 1 October in China.
    assert local_date(dt.datetime(2025, 9, 30, 17, 30, tzinfo=dt.UTC)) == D(2025, 10, 1)
    assert local_date(dt.datetime(2025, 9, 30, 15, 59)) == D(2025, 9, 30)  # naive: taken as UTC
    eight = dt.timezone(dt.timedelta(hours=8))
    assert local_date(dt.datetime(2025, 10, 1, 0, 0, tzinfo=eight)) == D(2025, 10, 1)
