"""The public, credential-free status of a battery (``flows.proto`` ``GetBatteryStatus``).

A citizen or a dealer scans a battery's code and asks whether the platform knows it and whether it reached a
compliant channel. The answer is a coarse view of the custody state (:data:`PUBLIC_STATUS`, one entry per
:class:`CustodyState`), the day of the latest event in China time, and a city-level division
code while the recycling chain holds the battery. It never carries a participant, a facility, an event, a
quantity, a coordinate or a reporter, and it is the same whoever asks.

What is withheld on purpose:

- pre-market states (REGISTERED, IN_DISTRIBUTION, AT_DEALER) and IN_USE are one status, so that scanning a
  producer's serials does not tell its sold batteries from its stock;
- the region is given only once the battery is in the recycling chain (where a producer or a dealer keeps its
  stock is commercial data; where a waste battery went is the point of the lookup), and only to the city
  (``XXYY00``), never the county or the facility.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from services.flows.domain.custody import CustodyState
from services.flows.domain.deadlines import local_date

S = CustodyState


class PublicStatus(StrEnum):
    """``flows.proto`` ``PublicBatteryStatus`` (its UNSPECIFIED is never answered)."""

    UNKNOWN_TO_PLATFORM = "UNKNOWN_TO_PLATFORM"
    IN_USE = "IN_USE"
    IN_COMPLIANT_CHANNEL = "IN_COMPLIANT_CHANNEL"
    RECYCLED = "RECYCLED"
    DESTROYED = "DESTROYED"
    QUARANTINED = "QUARANTINED"


P = PublicStatus

PUBLIC_STATUS: Final[Mapping[CustodyState, PublicStatus]] = MappingProxyType(
    {
        S.UNKNOWN: P.UNKNOWN_TO_PLATFORM,
        S.REGISTERED: P.IN_USE,
        S.IN_DISTRIBUTION: P.IN_USE,
        S.AT_DEALER: P.IN_USE,
        S.IN_USE: P.IN_USE,
        S.COLLECTED: P.IN_COMPLIANT_CHANNEL,
        S.IN_TEMP_STORAGE: P.IN_COMPLIANT_CHANNEL,
        S.IN_TRANSIT_REVERSE: P.IN_COMPLIANT_CHANNEL,
        S.AT_SORTING_CENTER: P.IN_COMPLIANT_CHANNEL,
        S.AT_RECYCLER: P.IN_COMPLIANT_CHANNEL,
        S.DISMANTLED: P.RECYCLED,
        S.RECYCLED: P.RECYCLED,
        S.DESTROYED: P.DESTROYED,
        S.QUARANTINED: P.QUARANTINED,
    }
)
"""The public status of each custody state (the reported state: QUARANTINED while a cause is open). Written out
state by state: tests/flows/test_public_status.py requires every :class:`CustodyState` here, so a new state gets
its public status by decision, not by default."""

RECYCLING_CHAIN_PHASES: Final = frozenset(
    {
        S.COLLECTED,
        S.IN_TEMP_STORAGE,
        S.IN_TRANSIT_REVERSE,
        S.AT_SORTING_CENTER,
        S.AT_RECYCLER,
        S.DISMANTLED,
        S.RECYCLED,
    }
)
"""Phases that are in (or at the end of) the recycling chain whatever came before. DESTROYED is in it only when
the battery had been handed in (see :attr:`StatusFacts.handed_in`): a producer may destroy its own stock."""


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """What the public status is computed from: the battery's stored row and its holder's directory entry."""

    state: CustodyState
    """What the platform reports (QUARANTINED while a cause is open)."""
    phase: CustodyState
    """Where the battery is by its events, also while quarantined."""
    last_event_time: dt.datetime | None = None
    holder_county: str = ""
    """The GB/T 2260 county of the holder's facility ("" without a holder or a directory entry)."""
    collected_county: str = ""
    """The county of its first collection ("" if never collected or not known)."""
    handed_in: bool = False
    """Collected, held by a recycling-network site, or delivered to a listed recycling enterprise."""


@dataclass(frozen=True, slots=True)
class PublicView:
    """The whole public answer (``GetBatteryStatusResponse``)."""

    status: PublicStatus
    known: bool
    in_compliant_channel: bool = False
    last_updated_on: dt.date | None = None
    region_code: str = ""


UNKNOWN_VIEW: Final = PublicView(P.UNKNOWN_TO_PLATFORM, known=False)


def city_code(division_code: str) -> str:
    """The city-level code of a county-level code (``320102`` → ``320100``); "" for anything else."""
    if len(division_code) != 6 or not division_code.isdigit():
        return ""
    return division_code[:4] + "00"


def in_recycling_chain(facts: StatusFacts) -> bool:
    """Whether the battery reached the recycling chain, by its phase (so also while quarantined)."""
    return facts.phase in RECYCLING_CHAIN_PHASES or (facts.phase is S.DESTROYED and facts.handed_in)


def public_view(facts: StatusFacts | None) -> PublicView:
    """The public answer for a battery (``None``: no stored row). No I/O: the caller reads the facts."""
    if facts is None or facts.state is S.UNKNOWN:
        return UNKNOWN_VIEW
    status = PUBLIC_STATUS[facts.state]
    chain = in_recycling_chain(facts)
    return PublicView(
        status=status,
        known=True,
        in_compliant_channel=chain and status is not P.QUARANTINED,
        last_updated_on=local_date(facts.last_event_time) if facts.last_event_time is not None else None,
        region_code=city_code(facts.holder_county or facts.collected_county) if chain else "",
    )
