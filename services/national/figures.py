"""What the national view keeps of each battery, the pure part: from the battery's effective events as the
provinces reported them, its first collection (the compliant-channel rate's denominator) and whether it has
reached a listed recycling enterprise (the numerator), wherever in the country each event happened.

The provinces judged every event with their own directories; the national view has none and takes their word:
an event's ``at_listed_recycler`` says whether its facility was a listed recycling enterprise's dismantling base
or recycling plant when it was captured (services.flows.capture). A battery that has an effective event there
has reached the compliant channel (what the province's custody state machine records as ``reached_recycler``).
Computed from all the battery's effective events, the figures do not depend on the order in which the hub's
stream interleaves the provinces, and an error declaration is undone by computing them again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from services.flows.domain.events import BizStep


@dataclass(frozen=True)
class EventFacts:
    """One effective (not declared) event of a battery, as the national view stored it."""

    battery_key: str
    biz_step: str
    event_time: dt.datetime
    county_code: str
    collection_mode: str
    at_listed_recycler: bool


@dataclass(frozen=True)
class BatteryFigures:
    """A battery's figures: its first collection (time, county, mode; None when never collected), whether it
    reached a listed recycler, and its latest event time."""

    collected_at: dt.datetime | None = None
    collected_county: str = ""
    collected_mode: str = ""
    reached_recycler: bool = False
    last_event_time: dt.datetime | None = None


def battery_figures(facts: Iterable[EventFacts]) -> dict[str, BatteryFigures]:
    """Each battery's figures from its effective events (any order). The first collection is the earliest
    COLLECTING event (by time, then county code, so that a tie never depends on arrival order)."""
    by_battery: dict[str, list[EventFacts]] = {}
    for fact in facts:
        by_battery.setdefault(fact.battery_key, []).append(fact)
    figures: dict[str, BatteryFigures] = {}
    for key, events in by_battery.items():
        collections = [e for e in events if e.biz_step == BizStep.COLLECTING]
        first = min(collections, key=lambda e: (e.event_time, e.county_code)) if collections else None
        figures[key] = BatteryFigures(
            collected_at=first.event_time if first else None,
            collected_county=first.county_code if first else "",
            collected_mode=first.collection_mode if first else "",
            reached_recycler=any(e.at_listed_recycler for e in events),
            last_event_time=max(e.event_time for e in events),
        )
    return figures
