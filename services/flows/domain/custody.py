"""The per-battery custody state machine (research note §6.5), derived from the effective event stream.

A battery's state is never set directly: it is a fold of its events. :func:`advance` applies one event to one
battery at face value (what the event says happened) and records the rule hits the event earned;
:func:`replay` folds a whole stream, honouring error declarations (note §1.2, §6.5 "Corrections"):

- the **effective** stream is every reported event whose ``event_id`` has no error declaration; a declared
  event stays in the trail, marked ``declared_in_error`` and not applied; corrective events are ordinary
  events and apply where their ``event_time`` puts them, whether reported before or after the declaration;
- events apply in ``event_time`` order, then ``record_time``, then capture order (the input order);
- an optional *judge* (:func:`services.flows.domain.rules.make_judge`) re-evaluates the rules at each step, so a
  transition that a correction made illegal quarantines the battery instead of rewriting history.

States (``flows.proto`` ``CustodyState``; the note's list without LOST and RECALLED, which no business step
reaches yet), plus UNKNOWN for a battery without effective events:

=====================  ==========================================================================
 phase                  state
=====================  ==========================================================================
 pre-market             REGISTERED → IN_DISTRIBUTION → AT_DEALER
 use                    IN_USE (with a consumer or fleet: no holder)
 reverse logistics      COLLECTED → IN_TEMP_STORAGE → IN_TRANSIT_REVERSE → AT_SORTING_CENTER → AT_RECYCLER
 terminal               DISMANTLED (only RECYCLING may follow), RECYCLED, DESTROYED
 side                   QUARANTINED (reported while any quarantine cause is open; see :class:`BatteryState`)
=====================  ==========================================================================

Transitions are the table :data:`ALLOWED_FROM` (from-states per step) and :func:`target_phase`; see
:data:`TRANSITION_TABLE` for the readable form. An event outside the table still applies at face value (the
battery *is* where the report says), and the rules decide whether that is rejected or quarantined.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from services.flows.domain.directory import (
    MARKET_FACILITIES,
    REVERSE_CHAIN_FACILITIES,
    TREATMENT_FACILITIES,
    Directory,
    FacilityInfo,
    FacilityKind,
    Role,
)
from services.flows.domain.events import BizStep, Disposition, ErrorDeclaration, FlowEvent, HealthVerdict
from services.flows.domain.hits import RuleHit
from services.flows.domain.identity import BatteryId


class CustodyState(StrEnum):
    """Custody states (note §6.5; ``flows.proto`` ``CustodyState``, UNKNOWN = UNSPECIFIED)."""

    UNKNOWN = "UNKNOWN"
    REGISTERED = "REGISTERED"
    IN_DISTRIBUTION = "IN_DISTRIBUTION"
    AT_DEALER = "AT_DEALER"
    IN_USE = "IN_USE"
    COLLECTED = "COLLECTED"
    IN_TEMP_STORAGE = "IN_TEMP_STORAGE"
    IN_TRANSIT_REVERSE = "IN_TRANSIT_REVERSE"
    AT_SORTING_CENTER = "AT_SORTING_CENTER"
    AT_RECYCLER = "AT_RECYCLER"
    DISMANTLED = "DISMANTLED"
    RECYCLED = "RECYCLED"
    DESTROYED = "DESTROYED"
    QUARANTINED = "QUARANTINED"


S = CustodyState

FINAL_STATES: Final = frozenset({S.DISMANTLED, S.RECYCLED, S.DESTROYED})
"""No event may follow these (rule FLOW-008), except RECYCLING after DISMANTLED."""
IN_TRANSIT: Final = frozenset({S.IN_DISTRIBUTION, S.IN_TRANSIT_REVERSE})
HELD_IN_REVERSE_CHAIN: Final = frozenset({S.COLLECTED, S.IN_TEMP_STORAGE, S.AT_SORTING_CENTER, S.AT_RECYCLER})
_ALIVE: Final = frozenset(S) - FINAL_STATES - {S.QUARANTINED}

ALLOWED_FROM: Final[Mapping[BizStep, frozenset[CustodyState]]] = {
    BizStep.COMMISSIONING: frozenset({S.UNKNOWN}),
    BizStep.SHIPPING: frozenset({S.REGISTERED, S.AT_DEALER} | HELD_IN_REVERSE_CHAIN),
    BizStep.RECEIVING: IN_TRANSIT,
    BizStep.RETAIL_SELLING: frozenset({S.REGISTERED, S.AT_DEALER}),
    BizStep.INSTALLING: frozenset({S.REGISTERED, S.AT_DEALER, S.IN_USE}),
    # UNKNOWN: a battery without history (most of today's stock) enters the platform at intake
    BizStep.COLLECTING: frozenset({S.UNKNOWN, S.REGISTERED, S.AT_DEALER, S.IN_USE}),
    BizStep.STORING: frozenset({S.REGISTERED, S.AT_DEALER} | HELD_IN_REVERSE_CHAIN),
    BizStep.HEALTH_ASSESSING: frozenset({S.UNKNOWN, S.REGISTERED, S.AT_DEALER, S.IN_USE} | HELD_IN_REVERSE_CHAIN),
    BizStep.SORTING: HELD_IN_REVERSE_CHAIN,
    BizStep.DISCHARGING: HELD_IN_REVERSE_CHAIN,
    BizStep.DISMANTLING: frozenset({S.AT_RECYCLER}),
    BizStep.RECYCLING: frozenset({S.AT_RECYCLER, S.DISMANTLED}),
    BizStep.DESTROYING: _ALIVE,
}
"""The states each step may start from (note §6.5 "Allowed transitions")."""

TRANSITION_TABLE: Final[tuple[tuple[str, BizStep, str], ...]] = (
    ("UNKNOWN", BizStep.COMMISSIONING, "REGISTERED (holder: the producer)"),
    (
        "REGISTERED, AT_DEALER",
        BizStep.SHIPPING,
        "IN_DISTRIBUTION, or IN_TRANSIT_REVERSE when the battery is waste or the destination a recycling-network "
        "site (the holder stays the sender until receipt)",
    ),
    ("COLLECTED, IN_TEMP_STORAGE, AT_SORTING_CENTER, AT_RECYCLER", BizStep.SHIPPING, "IN_TRANSIT_REVERSE"),
    ("IN_DISTRIBUTION", BizStep.RECEIVING, "AT_DEALER (holder: the receiver)"),
    (
        "IN_TRANSIT_REVERSE",
        BizStep.RECEIVING,
        "by the receiving facility's type: TEMP_STORAGE_POINT → IN_TEMP_STORAGE, REGIONAL_SORTING_CENTER → "
        "AT_SORTING_CENTER, DISMANTLING_BASE / RECYCLING_PLANT → AT_RECYCLER, RECYCLING_OUTLET / COOP_STATION → "
        "COLLECTED, DEALER_STORE / PRODUCTION_PLANT → AT_DEALER",
    ),
    ("REGISTERED, AT_DEALER", BizStep.RETAIL_SELLING, "IN_USE (no holder)"),
    ("REGISTERED, AT_DEALER, IN_USE", BizStep.INSTALLING, "IN_USE (no holder)"),
    ("UNKNOWN, REGISTERED, AT_DEALER, IN_USE", BizStep.COLLECTING, "COLLECTED, waste (holder: the collector)"),
    ("COLLECTED, IN_TEMP_STORAGE, AT_SORTING_CENTER, AT_RECYCLER", BizStep.STORING, "by the facility's type"),
    ("REGISTERED, AT_DEALER", BizStep.STORING, "unchanged (stock keeping)"),
    (
        "UNKNOWN, REGISTERED, AT_DEALER, IN_USE + held in reverse chain",
        BizStep.HEALTH_ASSESSING,
        "unchanged (UNKNOWN → IN_USE); RECOMMEND_SCRAP sets scrap_recommended",
    ),
    ("COLLECTED, IN_TEMP_STORAGE, AT_SORTING_CENTER, AT_RECYCLER", BizStep.SORTING, "unchanged, sorted"),
    ("COLLECTED, IN_TEMP_STORAGE, AT_SORTING_CENTER, AT_RECYCLER", BizStep.DISCHARGING, "unchanged, discharged"),
    ("AT_RECYCLER", BizStep.DISMANTLING, "DISMANTLED"),
    ("AT_RECYCLER, DISMANTLED", BizStep.RECYCLING, "RECYCLED"),
    ("any state but DISMANTLED, RECYCLED, DESTROYED", BizStep.DESTROYING, "DESTROYED"),
)
""":data:`ALLOWED_FROM` and :func:`target_phase` in words (for documentation and the lead's README)."""

_LOCATION: Final[Mapping[str, CustodyState]] = {
    FacilityKind.RECYCLING_OUTLET: S.COLLECTED,
    FacilityKind.COOP_STATION: S.COLLECTED,
    FacilityKind.TEMP_STORAGE_POINT: S.IN_TEMP_STORAGE,
    FacilityKind.REGIONAL_SORTING_CENTER: S.AT_SORTING_CENTER,
    FacilityKind.DISMANTLING_BASE: S.AT_RECYCLER,
    FacilityKind.RECYCLING_PLANT: S.AT_RECYCLER,
}

HOLDING_STEPS: Final = frozenset(
    {
        BizStep.COMMISSIONING,
        BizStep.RECEIVING,
        BizStep.COLLECTING,
        BizStep.STORING,
        BizStep.DISMANTLING,
        BizStep.RECYCLING,
    }
)
"""Steps after which the reporter holds the battery (possessing party) at the event's facility."""


def location_state(facility: FacilityInfo | None, waste: bool) -> CustodyState:
    """Where a battery is once it arrives at ``facility``: reverse-chain sites by type, market sites AT_DEALER;
    an unknown facility gives COLLECTED for waste and AT_DEALER otherwise."""
    if facility is not None and facility.facility_type in _LOCATION:
        return _LOCATION[facility.facility_type]
    if facility is not None and facility.facility_type in MARKET_FACILITIES:
        return S.AT_DEALER
    return S.COLLECTED if waste else S.AT_DEALER


@dataclass(frozen=True, slots=True)
class QuarantineCause:
    """An open quarantine: the rule hit and the event that caused it."""

    rule_id: str
    event_id: str
    message: str


@dataclass(frozen=True, slots=True)
class BatteryState:
    """One battery's projection. ``phase`` is where the battery is by its events; :attr:`state` is what the
    platform reports (QUARANTINED while a cause is open). Rules read ``phase``, so a quarantined battery's
    physical chain is still checked."""

    battery: BatteryId
    phase: CustodyState = S.UNKNOWN
    holder_id: str = ""
    holder_facility_id: str = ""
    waste: bool = False
    scrap_recommended: bool = False
    discharged: bool = False
    sorted: bool = False
    reached_recycler: bool = False
    model_id: str = ""
    producer_id: str = ""
    production_date: dt.date | None = None
    open_shipment: FlowEvent | None = None
    received_via: str = ""
    last_event_id: str = ""
    last_event_time: dt.datetime | None = None
    event_count: int = 0
    quarantine: tuple[QuarantineCause, ...] = ()

    @property
    def state(self) -> CustodyState:
        return S.QUARANTINED if self.quarantine else self.phase

    @property
    def quarantined(self) -> bool:
        return bool(self.quarantine)

    @property
    def in_transit_to(self) -> str:
        return self.open_shipment.effective_destination_facility_id if self.open_shipment else ""


def is_legal(phase: CustodyState, step: BizStep) -> bool:
    """Whether the transition is in the table (:data:`ALLOWED_FROM`)."""
    return phase in ALLOWED_FROM[step]


def _waste_after(state: BatteryState, event: FlowEvent, directory: Directory) -> bool:
    """A battery becomes waste when collected, marked WASTE, or sent into or taken in by the recycling network."""
    if state.waste or event.disposition is Disposition.WASTE or event.biz_step is BizStep.COLLECTING:
        return True
    if event.biz_step in (BizStep.RECEIVING, BizStep.STORING, BizStep.DISMANTLING, BizStep.RECYCLING):
        facility = directory.facility(event.facility_id)
        return facility is not None and facility.facility_type in REVERSE_CHAIN_FACILITIES
    if event.biz_step is BizStep.SHIPPING:
        destination = directory.facility(event.destination_facility_id)
        return destination is not None and destination.facility_type in REVERSE_CHAIN_FACILITIES
    return False


def target_phase(state: BatteryState, event: FlowEvent, directory: Directory, *, waste: bool) -> CustodyState:
    """The phase after ``event`` taken at face value. RECYCLED and DESTROYED never change, and DISMANTLED only
    to RECYCLED: a final state is not reopened by a later report (that report breaks FLOW-008 instead)."""
    phase, step = state.phase, event.biz_step
    if phase in (S.RECYCLED, S.DESTROYED) or (phase is S.DISMANTLED and step is not BizStep.RECYCLING):
        return phase
    facility = directory.facility(event.facility_id)
    match step:
        case BizStep.COMMISSIONING:
            return S.REGISTERED
        case BizStep.SHIPPING:
            return S.IN_TRANSIT_REVERSE if waste else S.IN_DISTRIBUTION
        case BizStep.RECEIVING:
            return location_state(facility, waste)
        case BizStep.RETAIL_SELLING | BizStep.INSTALLING:
            return S.IN_USE
        case BizStep.COLLECTING:
            return S.COLLECTED
        case BizStep.STORING:
            return location_state(facility, waste) if waste else phase
        case BizStep.HEALTH_ASSESSING:
            return S.IN_USE if phase is S.UNKNOWN else phase
        case BizStep.DISMANTLING:
            return S.DISMANTLED
        case BizStep.RECYCLING:
            return S.RECYCLED
        case BizStep.DESTROYING:
            return S.DESTROYED
    return phase  # SORTING, DISCHARGING


def is_listed_treatment(facility: FacilityInfo | None, directory: Directory) -> bool:
    """A listed (accredited) dismantling base or recycling plant of a recycling enterprise: the compliant channel."""
    if facility is None or not facility.listed or facility.facility_type not in TREATMENT_FACILITIES:
        return False
    operator = directory.participant(facility.operator_id)
    return operator is not None and Role.RECYCLING_ENTERPRISE in operator.roles


def advance(state: BatteryState, event: FlowEvent, directory: Directory, hits: Iterable[RuleHit] = ()) -> BatteryState:
    """``state`` after ``event`` (at face value), with a quarantine cause for each hit concerning this battery.

    The service calls it at capture time with the event's hits (after deciding not to reject). It is exact
    only when ``event`` is the battery's latest event; otherwise re-run :func:`replay` (see :func:`needs_replay`).
    """
    waste = _waste_after(state, event, directory)
    phase = target_phase(state, event, directory, waste=waste)
    causes = tuple(
        QuarantineCause(hit.rule_id, event.event_id, hit.message) for hit in hits if hit.concerns(state.battery)
    )
    changes: dict[str, Any] = {
        "phase": phase,
        "waste": waste,
        "last_event_id": event.event_id,
        "last_event_time": max(filter(None, (state.last_event_time, event.event_time))),
        "event_count": state.event_count + 1,
        "quarantine": state.quarantine + causes,
    }
    if not (phase is state.phase and phase in FINAL_STATES):  # a final state is not reopened: holder and flags stay
        changes.update(_custody_changes(state, phase, event, directory))
    # one replace for all the changes: a replace (19 fields, frozen) costs more than the rest of the step
    return dataclasses.replace(state, **changes)


def _custody_changes(
    before: BatteryState, phase: CustodyState, event: FlowEvent, directory: Directory
) -> dict[str, Any]:
    """Holder, shipment and flags after ``event`` (``phase`` is the new phase), as changes to ``before``."""
    changes: dict[str, Any] = {}
    step = event.biz_step
    if step in HOLDING_STEPS:
        changes.update(holder_id=event.reporter_id, holder_facility_id=event.facility_id, open_shipment=None)
    if step is BizStep.COMMISSIONING:
        changes.update(producer_id=event.reporter_id, model_id=event.model_id, production_date=event.production_date)
    elif step is BizStep.SHIPPING:
        changes.update(open_shipment=event, received_via="")
    elif step is BizStep.RECEIVING:
        # the shipment this receipt closes, or the receipt itself when it answers none (an orphan)
        shipment = before.open_shipment
        changes.update(received_via=shipment.event_id if shipment else event.event_id)
    elif step is BizStep.COLLECTING:
        changes.update(received_via="")
    elif step in (BizStep.RETAIL_SELLING, BizStep.INSTALLING):
        changes.update(holder_id="", holder_facility_id="", open_shipment=None, received_via="")
    elif step is BizStep.HEALTH_ASSESSING and event.health_assessment is not None:
        scrap = event.health_assessment.verdict is HealthVerdict.RECOMMEND_SCRAP
        changes.update(scrap_recommended=before.scrap_recommended or scrap)
    elif step is BizStep.SORTING:
        changes.update(sorted=True)
    elif step is BizStep.DISCHARGING:
        changes.update(discharged=True)
    if phase is S.AT_RECYCLER and is_listed_treatment(directory.facility(event.facility_id), directory):
        changes.update(reached_recycler=True)
    return changes


def needs_replay(state: BatteryState, event: FlowEvent) -> bool:
    """True when ``event`` is earlier than the battery's latest event, so :func:`advance` would apply it out of
    order and the service must re-run :func:`replay` over the battery's stream instead."""
    return state.last_event_time is not None and event.event_time < state.last_event_time


def release(state: BatteryState) -> BatteryState:
    """Close every quarantine cause (a reviewer's release; see :class:`QuarantineRelease`)."""
    return dataclasses.replace(state, quarantine=())


# ---- replay ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuarantineRelease:
    """A reviewer (regulator or platform operator) released a battery from quarantine at ``released_at``."""

    battery: BatteryId
    released_at: dt.datetime
    released_by: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class TrailStep:
    """One event as it touched one battery: the trace line (``flows.proto`` ``TraceStep``)."""

    event: FlowEvent
    battery: BatteryId
    before: BatteryState
    after: BatteryState
    legal: bool
    applied: bool
    declared_in_error: bool
    hits: tuple[RuleHit, ...]
    facility_type: str
    county_code: str

    @property
    def state_before(self) -> CustodyState:
        return self.before.state

    @property
    def state_after(self) -> CustodyState:
        return self.after.state


Judge = Callable[
    [FlowEvent, Mapping[BatteryId, BatteryState], Directory, Mapping[BatteryId, dt.datetime]], Sequence[RuleHit]
]
"""Rule evaluation during a replay: (event, states before, directory, latest event time per battery among the
events recorded before this one) → hits. :func:`services.flows.domain.rules.make_judge` builds one."""


@dataclass(frozen=True)
class Replay:
    """The result of :func:`replay`: every battery's state, the trail, and the correction bookkeeping."""

    states: Mapping[BatteryId, BatteryState]
    trail: tuple[TrailStep, ...]
    declared: Mapping[str, ErrorDeclaration]
    missing_corrective_event_ids: frozenset[str]

    def state(self, battery: BatteryId) -> BatteryState:
        return self.states.get(battery) or BatteryState(battery)

    def trail_of(self, battery: BatteryId) -> tuple[TrailStep, ...]:
        return tuple(step for step in self.trail if step.battery == battery)


_LATEST: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def effective_order(events: Sequence[FlowEvent]) -> list[tuple[int, FlowEvent]]:
    """(capture index, event) of the reported events (error declarations left out, the first report of an
    id kept), in application order: ``event_time``, then ``record_time``, then capture order."""
    first: dict[str, tuple[int, FlowEvent]] = {}
    for index, event in enumerate(events):
        if event.error_declaration is None and event.event_id not in first:
            first[event.event_id] = (index, event)
    return sorted(first.values(), key=lambda item: (item[1].event_time, item[1].record_time or _LATEST, item[0]))


def replay(
    events: Sequence[FlowEvent],
    directory: Directory,
    *,
    judge: Judge | None = None,
    releases: Iterable[QuarantineRelease] = (),
) -> Replay:
    """Derive every battery's state from ``events`` (in capture order: the store's sequence).

    ``events`` holds reported events and error declarations (:func:`services.flows.domain.events.declare_error`)
    alike. A battery's state is exact when the stream holds all of that battery's events; other batteries of
    the same events may appear with partial histories. Without a ``judge`` no rule is evaluated, so nothing is
    quarantined. ``releases`` clear a battery's quarantine at their time in ``event_time`` order.
    """
    declared: dict[str, ErrorDeclaration] = {}
    for event in events:
        if event.error_declaration is not None:
            declared[event.event_id] = event.error_declaration
    ordered = effective_order(events)
    present = {event.event_id for _, event in ordered}
    named = {i for declaration in declared.values() for i in declaration.corrective_event_ids}

    recorded: dict[BatteryId, list[tuple[int, dt.datetime]]] = defaultdict(list)
    for index, event in ordered:
        if event.event_id not in declared:
            for battery in event.batteries:
                recorded[battery].append((index, event.event_time))

    pending = sorted(releases, key=lambda r: r.released_at)
    states: dict[BatteryId, BatteryState] = {}
    trail: list[TrailStep] = []
    for index, event in ordered:
        while pending and pending[0].released_at <= event.event_time:
            _release(states, pending.pop(0))
        batteries = sorted(set(event.batteries), key=lambda b: b.urn)
        if not batteries:
            continue
        before = {b: states.get(b) or BatteryState(b) for b in batteries}
        facility = directory.facility(event.facility_id)
        kind, county = (facility.facility_type, facility.county_code) if facility else ("", "")
        if event.event_id in declared:
            trail += [
                TrailStep(
                    event=event,
                    battery=b,
                    before=before[b],
                    after=before[b],
                    legal=is_legal(before[b].phase, event.biz_step),
                    applied=False,
                    declared_in_error=True,
                    hits=(),
                    facility_type=kind,
                    county_code=county,
                )
                for b in batteries
            ]
            continue
        hits: tuple[RuleHit, ...] = ()
        if judge is not None:
            # a corrective event is late by nature: it is placed by its event time, not flagged out of order
            latest = {
                b: max(t for i, t in recorded[b] if i < index)
                for b in batteries
                if event.event_id not in named and any(i < index for i, _ in recorded[b])
            }
            hits = tuple(judge(event, before, directory, latest))
        for b in batteries:
            mine = tuple(hit for hit in hits if hit.concerns(b))
            after = advance(before[b], event, directory, mine)
            states[b] = after
            trail.append(
                TrailStep(
                    event=event,
                    battery=b,
                    before=before[b],
                    after=after,
                    legal=is_legal(before[b].phase, event.biz_step),
                    applied=True,
                    declared_in_error=False,
                    hits=mine,
                    facility_type=kind,
                    county_code=county,
                )
            )
    for leftover in pending:
        _release(states, leftover)
    return Replay(states, tuple(trail), declared, frozenset(named - present))


def _release(states: dict[BatteryId, BatteryState], released: QuarantineRelease) -> None:
    if released.battery in states:
        states[released.battery] = release(states[released.battery])
