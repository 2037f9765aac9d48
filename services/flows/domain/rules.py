"""Compliance rules on flow events (research note §6.5 "Illegal or flagged transitions"), as data and pure
functions.

Each :class:`Rule` has a stable id, a severity, a decision and a check. ``REJECT`` is for what the reporter
must have got wrong and can fix at once (a typo in a facility id, a date, an unregistered namespace), or for
what must never be recorded as compliant (waste going back to the market, a battery rising from its final
state); the service answers FAILED_PRECONDITION and stores nothing, and it should still raise an alert for a
CRITICAL rejection so that the attempt is not lost. ``QUARANTINE`` is for reports of something that has
physically happened and may be a diversion (custody conflicts, orphan or double receipts, mismatches, unlisted
sites): rejecting would only lose the trace, so the event is stored and the batteries concerned are quarantined
for review.

How the service uses this module at capture time::

    violations = event_violations(event, now=now)                       # field problems → REJECTED
    states = {b: projection(b) for b in event.batteries}                # or replay(...) per battery
    context = RuleContext(now=now, shipment=match_shipment(event, candidates), prior_receipts=...)
    hits = evaluate_all(event, states, directory, context)
    if decide(hits) is not Decision.REJECT:
        store(event, hits); new_states = {b: advance(states[b], event, directory, hits) for b in states}

and after an error declaration (or an event earlier than a battery's latest, :func:`needs_replay`)::

    replay(stream_of(battery), directory, judge=make_judge(recorded_hits=stored_hits))

A replay re-evaluates the rules that depend only on the event stream (``replayable``); the rules that read
the directory or the clock keep the hits recorded at capture, because the directory holds only current
entries and "now" has moved: re-judging them would rewrite history with today's listings.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from services.flows.domain.custody import (
    FINAL_STATES,
    IN_TRANSIT,
    BatteryState,
    CustodyState,
    Judge,
    is_legal,
)
from services.flows.domain.directory import (
    MARKET_FACILITIES,
    PRODUCER_ROLES,
    REVERSE_CHAIN_FACILITIES,
    TREATMENT_FACILITIES,
    Directory,
    FacilityInfo,
    FacilityKind,
    Role,
)
from services.flows.domain.events import (
    DEFAULT_CLOCK_SKEW,
    BizStep,
    CollectionMode,
    Disposition,
    FlowEvent,
    Unit,
    is_future,
)
from services.flows.domain.hits import Decision, RuleHit, Severity
from services.flows.domain.identity import BatteryId, IdentifierScheme

# ---- configuration and context --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """Tolerances. A weight difference is tolerated up to ``max(weight_tolerance_kg, weight_tolerance_pct % of
    the shipped weight)``; counts of pieces and battery lists must match exactly."""

    clock_skew: dt.timedelta = DEFAULT_CLOCK_SKEW
    out_of_order_tolerance: dt.timedelta = dt.timedelta(hours=1)
    weight_tolerance_pct: float = 2.0
    weight_tolerance_kg: float = 0.5


DEFAULT_CONFIG: Final = RuleConfig()


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What the rules need beyond the event, the batteries' states and the directory.

    - ``now``: the server's clock (the event's record time);
    - ``shipment``: for a receipt, the shipping event it answers when the service matched one by business
      transaction (:func:`match_shipment`); needed for receipts by quantity, which have no battery state.
      Receipts of identified batteries also use the open shipments in the batteries' states;
    - ``prior_receipts``: receipts already recorded against ``shipment`` (double receipt by quantity);
    - ``latest_event_times``: per battery, the latest ``event_time`` among its events recorded before this one
      (replay passes it; by default the state's ``last_event_time``);
    - ``corrective``: the event is named as corrective by an error declaration already stored, so it is late
      by nature and not checked for order (FLOW-011).
    """

    now: dt.datetime
    config: RuleConfig = DEFAULT_CONFIG
    shipment: FlowEvent | None = None
    prior_receipts: tuple[FlowEvent, ...] = ()
    latest_event_times: Mapping[BatteryId, dt.datetime] = field(default_factory=dict)
    corrective: bool = False


Finding = tuple[str, BatteryId | None]
Check = Callable[[FlowEvent, Mapping[BatteryId, BatteryState], Directory, RuleContext], list[Finding]]


@dataclass(frozen=True, slots=True)
class Rule:
    """A compliance rule. ``replayable`` rules read only the event and the batteries' states (see the module
    docstring); the others read the directory or the clock."""

    rule_id: str
    title: str
    severity: Severity
    decision: Decision
    rationale: str
    check: Check
    replayable: bool

    def evaluate(
        self,
        event: FlowEvent,
        states_before: Mapping[BatteryId, BatteryState],
        directory: Directory,
        context: RuleContext,
    ) -> list[RuleHit]:
        return [
            RuleHit(self.rule_id, self.severity, self.decision, message, battery)
            for message, battery in self.check(event, states_before, directory, context)
        ]


# ---- site vocabularies per step -------------------------------------------------------------------

WASTE_DESTINATIONS: Final = frozenset(
    {
        FacilityKind.TEMP_STORAGE_POINT,
        FacilityKind.REGIONAL_SORTING_CENTER,
        FacilityKind.DISMANTLING_BASE,
        FacilityKind.RECYCLING_PLANT,
    }
)
"""Where waste may be shipped to and received (note §6.5 rule 2, plus the registry's DISMANTLING_BASE)."""

COLLECTION_SITES: Final = frozenset(
    {FacilityKind.RECYCLING_OUTLET, FacilityKind.COOP_STATION, FacilityKind.TEMP_STORAGE_POINT}
)
"""Where a consumer may hand a battery in, in any mode (note §6.5: outlets and co-op stations; storage points
are listed hand-in points too, see the registry's FindNearestOutlets)."""

BULK_COLLECTION_MODES: Final = frozenset(
    {CollectionMode.DOOR_TO_DOOR, CollectionMode.INTERNET, CollectionMode.FLEET_RETURN}
)
"""Modes in which the collector travels or a fleet returns in bulk, so the battery may go straight to a sorting
centre or a recycler ("also DOOR_TO_DOOR by a recycler", note §6.5)."""

SITES_BY_STEP: Final[Mapping[BizStep, frozenset[str]]] = {
    BizStep.RECEIVING: WASTE_DESTINATIONS,
    BizStep.STORING: REVERSE_CHAIN_FACILITIES,
    BizStep.SORTING: REVERSE_CHAIN_FACILITIES,
    BizStep.DISCHARGING: REVERSE_CHAIN_FACILITIES,
    BizStep.DISMANTLING: TREATMENT_FACILITIES,
    BizStep.RECYCLING: TREATMENT_FACILITIES,
}
"""Facility types allowed to hold waste at each step (COLLECTING: :func:`collection_sites`)."""

CUSTODIAN_STEPS: Final = frozenset({BizStep.SHIPPING, BizStep.STORING, BizStep.DISMANTLING, BizStep.RECYCLING})
"""Steps only the current holder may take (note §6.5 rule 4; RECYCLING added: it ends the battery)."""

MARKET_STEPS: Final = frozenset({BizStep.RETAIL_SELLING, BizStep.INSTALLING})


def collection_sites(mode: CollectionMode | None) -> frozenset[str]:
    if mode in BULK_COLLECTION_MODES:
        return COLLECTION_SITES | {FacilityKind.REGIONAL_SORTING_CENTER} | TREATMENT_FACILITIES
    return COLLECTION_SITES


# ---- helpers --------------------------------------------------------------------------------------


def _state(states: Mapping[BatteryId, BatteryState], battery: BatteryId) -> BatteryState:
    return states.get(battery) or BatteryState(battery)


def _batteries(event: FlowEvent) -> list[BatteryId]:
    return sorted(set(event.batteries), key=lambda b: b.urn)


def _type_of(directory: Directory, facility_id: str) -> str:
    facility = directory.facility(facility_id) if facility_id else None
    return facility.facility_type if facility else ""


def _is_recycling_enterprise(directory: Directory, facility: FacilityInfo) -> bool:
    operator = directory.participant(facility.operator_id)
    return operator is not None and Role.RECYCLING_ENTERPRISE in operator.roles


def _carries_waste(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> bool:
    """Whether the event moves or handles waste: a waste battery, a WASTE disposition, a step that only waste
    takes, or (for batteries by quantity, which have no state) a shipment from a recycling-network site."""
    if any(_state(states, b).waste for b in event.batteries) or event.disposition is Disposition.WASTE:
        return True
    if event.biz_step in (BizStep.COLLECTING, BizStep.DISMANTLING, BizStep.RECYCLING):
        return True
    if not event.quantities:
        return False
    origin = event.facility_id if event.biz_step is BizStep.SHIPPING else event.source_facility_id
    if not origin and context.shipment is not None:
        origin = context.shipment.facility_id
    return _type_of(directory, origin) in REVERSE_CHAIN_FACILITIES


def _shipments(event: FlowEvent, states: Mapping[BatteryId, BatteryState], context: RuleContext) -> list[FlowEvent]:
    """The open shipments addressed to this receiving facility that the receipt answers."""
    found: dict[str, FlowEvent] = {}
    if context.shipment is not None:
        found[context.shipment.event_id] = context.shipment
    for battery in _batteries(event):
        shipment = _state(states, battery).open_shipment
        if shipment is not None and shipment.effective_destination_facility_id == event.facility_id:
            found.setdefault(shipment.event_id, shipment)
    return [found[key] for key in sorted(found)]


def _site_problem(facility: FacilityInfo, allowed: frozenset[str], directory: Directory) -> str:
    if facility.facility_type not in allowed:
        return f"a {facility.facility_type or 'facility of unknown type'} may not take waste here"
    if not facility.listed:
        return f"not a listed facility (accreditation {facility.accreditation or 'none'})"
    if facility.facility_type in TREATMENT_FACILITIES and not _is_recycling_enterprise(directory, facility):
        return "its operator is not a registered recycling enterprise"
    return ""


# ---- the checks -----------------------------------------------------------------------------------


def _refurbishment(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    step = event.biz_step
    if step is BizStep.SHIPPING:
        to_market = _type_of(directory, event.destination_facility_id) in MARKET_FACILITIES
    elif step is BizStep.RECEIVING:
        to_market = _type_of(directory, event.facility_id) in MARKET_FACILITIES
    else:
        to_market = step in MARKET_STEPS
    if not to_market:
        return []
    found: list[Finding] = [
        (f"waste battery {step.value.lower()} back to the market (翻新 / 非法二次利用)", b)
        for b in _batteries(event)
        if _state(states, b).waste
    ]
    if (
        event.quantities
        and step in (BizStep.SHIPPING, BizStep.RECEIVING)
        and _carries_waste(event, {}, directory, context)
    ):
        found.append(("waste batteries by quantity going to a dealer or producer", None))
    return found


def _destination_not_allowed(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.SHIPPING:
        return []
    destination = directory.facility(event.destination_facility_id)
    if destination is None:
        return [(f"destination facility {event.destination_facility_id!r} is not in the registry", None)]
    if destination.facility_type in MARKET_FACILITIES:
        return []  # waste to the market is FLOW-001; goods to the market are fine
    waste = _carries_waste(event, states, directory, context) or destination.facility_type in REVERSE_CHAIN_FACILITIES
    if not waste:
        return []
    problem = _site_problem(destination, WASTE_DESTINATIONS, directory)
    return [(f"waste shipped to {destination.facility_id}: {problem}", None)] if problem else []


def _site_not_listed(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    step = event.biz_step
    facility = directory.facility(event.facility_id)
    if facility is None or (facility.facility_type in MARKET_FACILITIES and step is BizStep.RECEIVING):
        return []  # an unknown facility is FLOW-015; waste received by a dealer is FLOW-001
    if step is BizStep.COLLECTING:
        allowed = collection_sites(event.collection_mode)
    elif step in SITES_BY_STEP:
        waste = _carries_waste(event, states, directory, context) or facility.facility_type in REVERSE_CHAIN_FACILITIES
        if not waste:
            return []
        allowed = SITES_BY_STEP[step]
    else:
        return []
    problem = _site_problem(facility, allowed, directory)
    return [(f"{step.value.lower()} waste at {facility.facility_id}: {problem}", None)] if problem else []


def _custody_conflict(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step not in CUSTODIAN_STEPS:
        return []
    found: list[Finding] = []
    for b in _batteries(event):
        state = _state(states, b)
        if state.phase in FINAL_STATES or state.holder_id == event.reporter_id:
            continue
        if state.holder_id:
            why = f"held by {state.holder_id} at {state.holder_facility_id or 'an unknown facility'}"
        else:
            why = f"no holder on record in state {state.phase.value} (report its intake first)"
        found.append((f"{event.reporter_id} is not the custodian: {why}", b))
    return found


def _orphan_receipt(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.RECEIVING:
        return []
    found: list[Finding] = []
    answered = False
    for b in _batteries(event):
        state = _state(states, b)
        if state.phase in IN_TRANSIT:
            if state.in_transit_to == event.facility_id:
                answered = True
            else:
                found.append((f"in transit to {state.in_transit_to}, received by {event.facility_id}", b))
        elif state.phase not in FINAL_STATES and not state.received_via:
            found.append((f"no open shipment to this receiver (state {state.phase.value})", b))
    if event.quantities and not answered:
        shipment = context.shipment
        if shipment is None:
            found.append(("no matching shipment for the quantities received", None))
        elif shipment.effective_destination_facility_id != event.facility_id:
            found.append((f"the matched shipment goes to {shipment.effective_destination_facility_id}", None))
    return found


def _double_receipt(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.RECEIVING:
        return []
    found: list[Finding] = [
        (f"already received at {state.holder_facility_id} and not shipped on since", b)
        for b in _batteries(event)
        if (state := _state(states, b)).phase not in IN_TRANSIT | FINAL_STATES and state.received_via
    ]
    if event.quantities and context.shipment is not None and context.prior_receipts:
        ids = ", ".join(sorted(r.event_id for r in context.prior_receipts))
        found.append((f"shipment {context.shipment.event_id} was already received ({ids})", None))
    return found


def _mismatch(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.RECEIVING:
        return []
    shipments = _shipments(event, states, context)
    received = set(event.batteries)
    found: list[Finding] = []
    for shipment in shipments:
        missing = sorted(b.urn for b in set(shipment.batteries) - received)
        if missing:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            found.append(
                (
                    f"{len(missing)} of {len(set(shipment.batteries))} batteries of shipment {shipment.event_id} "
                    f"not received: {shown}",
                    None,
                )
            )
    if len(shipments) == 1 and (shipments[0].quantities or event.quantities):
        found += _quantity_mismatch(shipments[0], event, context.config)
    return found


def _totals(event: FlowEvent) -> dict[tuple[str, Unit], float]:
    totals: dict[tuple[str, Unit], float] = defaultdict(float)
    for q in event.quantities:
        totals[(q.product_class, q.unit)] += q.amount
    return totals


def _quantity_mismatch(shipment: FlowEvent, receipt: FlowEvent, config: RuleConfig) -> list[Finding]:
    shipped, received = _totals(shipment), _totals(receipt)
    found: list[Finding] = []
    for key in sorted(set(shipped) | set(received)):
        product_class, unit = key
        sent, got = shipped.get(key, 0.0), received.get(key, 0.0)
        if unit is Unit.KILOGRAMS:
            tolerance = max(config.weight_tolerance_kg, sent * config.weight_tolerance_pct / 100)
        else:
            tolerance = 0.0
        if abs(got - sent) > tolerance + 1e-9 or not math.isfinite(got - sent):
            found.append(
                (
                    f"{product_class}: shipped {sent:g} {unit.value}, received {got:g} {unit.value} "
                    f"(tolerance {tolerance:g})",
                    None,
                )
            )
    return found


def _after_final(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    return [
        (f"{event.biz_step.value.lower()} after the battery was {state.phase.value.lower()}", b)
        for b in _batteries(event)
        if (state := _state(states, b)).phase in FINAL_STATES
        and not (state.phase is CustodyState.DISMANTLED and event.biz_step is BizStep.RECYCLING)
    ]


def _future(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if is_future(event.event_time, context.now, context.config.clock_skew):
        return [(f"event time {event.event_time.isoformat()} is after now ({context.now.isoformat()})", None)]
    return []


def _before_production(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    day = event.local_event_time.date()
    if event.production_date is not None and day < event.production_date:
        return [(f"commissioned on {day}, before its production date {event.production_date}", None)]
    return [
        (f"event on {day}, before the production date {state.production_date}", b)
        for b in _batteries(event)
        if (state := _state(states, b)).production_date is not None and day < state.production_date
    ]


def _out_of_order(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if context.corrective:
        return []
    found: list[Finding] = []
    for b in _batteries(event):
        latest = context.latest_event_times.get(b) or _state(states, b).last_event_time
        if latest is not None and event.event_time + context.config.out_of_order_tolerance < latest:
            found.append(
                (f"event time {event.event_time.isoformat()} is before its latest event ({latest.isoformat()})", b)
            )
    return found


def _duplicate_commissioning(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.COMMISSIONING:
        return []
    return [
        (f"code already in use (state {state.phase.value}, last event {state.last_event_id})", b)
        for b in _batteries(event)
        if (state := _state(states, b)).event_count > 0
    ]


def _unregistered_namespace(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    found: list[Finding] = []
    for b in _batteries(event):
        if b.scheme is not IdentifierScheme.MANUFACTURER_SERIAL:
            continue
        owner = directory.participant_by_credit_code(b.namespace)
        if owner is None:
            found.append((f"namespace {b.namespace} is not a registered participant (issue a platform code)", b))
        elif not owner.has_any_role(PRODUCER_ROLES):
            found.append((f"namespace {b.namespace} belongs to {owner.participant_id}, not a producer", b))
    return found


def _commissioning_not_producer(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    if event.biz_step is not BizStep.COMMISSIONING:
        return []
    reporter = directory.participant(event.reporter_id)
    if reporter is None or not reporter.has_any_role(PRODUCER_ROLES):
        return [(f"{event.reporter_id} is not a registered battery or e-bike producer or importer", None)]
    if Role.EBIKE_PRODUCER in reporter.roles:
        return []  # an e-bike producer commissions the packs it fits, under their makers' namespaces
    return [
        (f"serial in the namespace of {b.namespace}, not of the reporter ({reporter.credit_code})", b)
        for b in _batteries(event)
        if b.scheme is IdentifierScheme.MANUFACTURER_SERIAL and b.namespace != reporter.credit_code
    ]


def _facility_not_operated(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    facility = directory.facility(event.facility_id)
    if facility is None:
        return [(f"facility {event.facility_id!r} is not in the registry", None)]
    if facility.operator_id != event.reporter_id:
        return [(f"facility {facility.facility_id} is operated by {facility.operator_id}, not the reporter", None)]
    return []


def _illegal_transition(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory, context: RuleContext
) -> list[Finding]:
    step = event.biz_step
    if step in (BizStep.RECEIVING, BizStep.COMMISSIONING):
        return []  # FLOW-005/006 and FLOW-012 say what is wrong with these
    found: list[Finding] = []
    for b in _batteries(event):
        state = _state(states, b)
        if is_legal(state.phase, step) or state.phase in FINAL_STATES:
            continue  # FINAL_STATES: FLOW-008
        if state.waste and step in MARKET_STEPS:
            continue  # FLOW-001
        if step in CUSTODIAN_STEPS and state.holder_id != event.reporter_id:
            continue  # FLOW-004
        found.append((f"{step.value.lower()} is not allowed in state {state.phase.value}", b))
    return found


# ---- the rule book --------------------------------------------------------------------------------

RULES: Final[tuple[Rule, ...]] = (
    Rule(
        rule_id="FLOW-001-REFURBISHMENT",
        title="Waste battery back to the market",
        severity=Severity.CRITICAL,
        decision=Decision.REJECT,
        check=_refurbishment,
        replayable=False,
        rationale="Shipped to or received by a dealer or producer, sold or installed after it became waste: the "
        "refurbishing and illegal second life the policy exists to stop (note §5.3.3, §6.5 rule 1). Never "
        "recorded as a normal flow; the service alerts the regulator.",
    ),
    Rule(
        rule_id="FLOW-002-DESTINATION-NOT-ALLOWED",
        title="Destination not a listed facility allowed to receive waste",
        severity=Severity.HIGH,
        decision=Decision.REJECT,
        check=_destination_not_allowed,
        replayable=False,
        rationale="Waste may only be shipped to a LISTED temporary storage point, sorting centre, dismantling "
        "base or recycling plant (the last two run by a recycling enterprise); any shipment needs a registered "
        "destination. Refused before the hand-over is on record: usually a wrong facility id, otherwise a "
        "hand-over the sender must not make (note §6.5 rule 2).",
    ),
    Rule(
        rule_id="FLOW-003-SITE-NOT-LISTED",
        title="Waste collected, received, stored or treated at a site not allowed for it",
        severity=Severity.HIGH,
        decision=Decision.QUARANTINE,
        check=_site_not_listed,
        replayable=False,
        rationale="The battery is physically there already, so rejecting would only lose the trace: quarantined "
        "for the regulator (collection at an unlisted outlet, treatment outside a listed recycler).",
    ),
    Rule(
        rule_id="FLOW-004-CUSTODY-CONFLICT",
        title="Shipping, storing, dismantling or recycling by someone not the holder",
        severity=Severity.HIGH,
        decision=Decision.QUARANTINE,
        check=_custody_conflict,
        replayable=True,
        rationale="Either an earlier hand-over was not reported or the battery was diverted; both parties must "
        "be asked (note §6.5 rule 4: quarantine and notify both).",
    ),
    Rule(
        rule_id="FLOW-005-ORPHAN-RECEIPT",
        title="Receipt without an open shipment to this receiver",
        severity=Severity.MEDIUM,
        decision=Decision.QUARANTINE,
        check=_orphan_receipt,
        replayable=True,
        rationale="Often a sender that has not reported yet, sometimes a diversion: kept and flagged, never "
        "dropped (note §6.5 rule 5, RECEIVED_UNANNOUNCED).",
    ),
    Rule(
        rule_id="FLOW-006-DOUBLE-RECEIPT",
        title="Battery received again without having been shipped on",
        severity=Severity.HIGH,
        decision=Decision.QUARANTINE,
        check=_double_receipt,
        replayable=True,
        rationale="One battery in two places means a cloned code or a diversion (note §6.5 rule 5).",
    ),
    Rule(
        rule_id="FLOW-007-QUANTITY-MISMATCH",
        title="Receipt differs from its shipment beyond tolerance",
        severity=Severity.HIGH,
        decision=Decision.QUARANTINE,
        check=_mismatch,
        replayable=True,
        rationale="Missing batteries or weight: material lost on the way is the diversion the platform watches "
        "for; an exception case, never silently fixed (note §0.4, §5.3.5).",
    ),
    Rule(
        rule_id="FLOW-008-AFTER-FINAL-STATE",
        title="Event after the battery was dismantled, recycled or destroyed",
        severity=Severity.CRITICAL,
        decision=Decision.REJECT,
        check=_after_final,
        replayable=True,
        rationale="A battery that no longer exists cannot move: its code is being reused (note §6.5 rule 6). "
        "Only recycling may follow dismantling.",
    ),
    Rule(
        rule_id="FLOW-009-FUTURE-EVENT",
        title="Event time in the future",
        severity=Severity.LOW,
        decision=Decision.REJECT,
        check=_future,
        replayable=False,
        rationale="A clock or typing error (beyond the clock-skew tolerance) that the reporter fixes at once.",
    ),
    Rule(
        rule_id="FLOW-010-BEFORE-PRODUCTION",
        title="Event before the battery's production date",
        severity=Severity.MEDIUM,
        decision=Decision.REJECT,
        check=_before_production,
        replayable=True,
        rationale="A wrong date or a code on the wrong battery; the reporter corrects it (note §6.5 rule 7).",
    ),
    Rule(
        rule_id="FLOW-011-OUT-OF-ORDER",
        title="Event earlier than the battery's latest recorded event",
        severity=Severity.LOW,
        decision=Decision.QUARANTINE,
        check=_out_of_order,
        replayable=True,
        rationale="Late reports are placed by event time, but back-dating can hide a diversion: reviewed when "
        "beyond the tolerance (note §6.5 rule 7).",
    ),
    Rule(
        rule_id="FLOW-012-DUPLICATE-COMMISSIONING",
        title="Code commissioned again",
        severity=Severity.HIGH,
        decision=Decision.QUARANTINE,
        check=_duplicate_commissioning,
        replayable=True,
        rationale="Never a second live record, but not lost either: a candidate for review (note §5.3.5, "
        "dyabn TD-Q-001; §6.5 rule 8).",
    ),
    Rule(
        rule_id="FLOW-013-UNREGISTERED-NAMESPACE",
        title="Manufacturer namespace not a registered producer",
        severity=Severity.MEDIUM,
        decision=Decision.REJECT,
        check=_unregistered_namespace,
        replayable=False,
        rationale="A serial under a credit code that is no registered producer identifies nothing; the reporter "
        "uses a platform code instead (note §6.5 rule 8).",
    ),
    Rule(
        rule_id="FLOW-014-COMMISSIONING-NOT-PRODUCER",
        title="Commissioning by a non-producer or in another producer's namespace",
        severity=Severity.MEDIUM,
        decision=Decision.REJECT,
        check=_commissioning_not_producer,
        replayable=False,
        rationale="Only producers and importers put batteries on the market, each under its own namespace "
        "(e-bike producers may commission the packs they fit); note §6.5 table, COMMISSIONING row.",
    ),
    Rule(
        rule_id="FLOW-015-FACILITY-NOT-OPERATED",
        title="Event at a facility the reporter does not operate",
        severity=Severity.MEDIUM,
        decision=Decision.REJECT,
        check=_facility_not_operated,
        replayable=False,
        rationale="The reporting facility must be a registered facility of the reporter (flows.proto "
        "FlowEvent.facility_id): a wrong id or a report for someone else's site.",
    ),
    Rule(
        rule_id="FLOW-016-ILLEGAL-TRANSITION",
        title="Step not allowed in the battery's custody state",
        severity=Severity.MEDIUM,
        decision=Decision.QUARANTINE,
        check=_illegal_transition,
        replayable=True,
        rationale="Any other transition outside the table (collected twice, shipped while in transit, "
        "dismantled before arriving at a recycler): the record disagrees with the custody chain.",
    ),
)
"""The rule book, in evaluation (and hit) order."""

RULES_BY_ID: Final[Mapping[str, Rule]] = {rule.rule_id: rule for rule in RULES}
_ORDER: Final = {rule.rule_id: i for i, rule in enumerate(RULES)}


def _hit_key(hit: RuleHit) -> tuple[int, str]:
    return (_ORDER.get(hit.rule_id, len(_ORDER)), hit.battery.urn if hit.battery else "")


def evaluate_all(
    event: FlowEvent,
    states_before: Mapping[BatteryId, BatteryState],
    directory: Directory,
    context: RuleContext,
    *,
    rules: Iterable[Rule] = RULES,
) -> list[RuleHit]:
    """Every hit of ``rules`` on ``event``, in rule order, then by battery (event-level hits first).

    ``states_before`` holds the state of each battery of the event before it (a missing battery is UNKNOWN).
    """
    hits = [hit for rule in rules for hit in rule.evaluate(event, states_before, directory, context)]
    return sorted(hits, key=_hit_key)


def make_judge(
    config: RuleConfig = DEFAULT_CONFIG,
    *,
    recorded_hits: Mapping[str, Sequence[RuleHit]] | None = None,
    reevaluate_all: bool = False,
) -> Judge:
    """A :data:`~services.flows.domain.custody.Judge` for :func:`~services.flows.domain.custody.replay`.

    By default it re-evaluates the ``replayable`` rules and takes the other rules' hits from ``recorded_hits``
    (event id → hits stored at capture). ``reevaluate_all`` re-judges everything against the current directory,
    with each event's record time as "now".
    """
    chosen = RULES if reevaluate_all else tuple(rule for rule in RULES if rule.replayable)
    recorded = recorded_hits or {}

    def judge(
        event: FlowEvent,
        states_before: Mapping[BatteryId, BatteryState],
        directory: Directory,
        latest_event_times: Mapping[BatteryId, dt.datetime],
    ) -> list[RuleHit]:
        now = event.record_time or event.event_time
        context = RuleContext(now=now, config=config, latest_event_times=latest_event_times)
        hits = evaluate_all(event, states_before, directory, context, rules=chosen)
        if not reevaluate_all:
            hits += [
                hit
                for hit in recorded.get(event.event_id, ())
                if hit.rule_id in RULES_BY_ID and not RULES_BY_ID[hit.rule_id].replayable
            ]
        return sorted(hits, key=_hit_key)

    return judge


def match_shipment(receipt: FlowEvent, candidates: Iterable[FlowEvent]) -> FlowEvent | None:
    """The shipping event a receipt answers, among ``candidates`` (the service's open shipments to the
    receiving facility): addressed to it, not later than the receipt, and sharing a business transaction with
    it (or, when the receipt names none, coming from the receipt's source facility). The latest one wins.
    """
    keys = receipt.transaction_keys()
    matches = [
        c
        for c in candidates
        if c.biz_step is BizStep.SHIPPING
        and c.error_declaration is None
        and c.effective_destination_facility_id == receipt.facility_id
        and c.event_time <= receipt.event_time
        and (
            (keys and not keys.isdisjoint(c.transaction_keys()))
            or (not keys and receipt.source_facility_id and c.facility_id == receipt.source_facility_id)
        )
    ]
    return max(matches, key=lambda c: (c.event_time, c.event_id), default=None)
