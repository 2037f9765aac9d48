"""A battery's trace (``GetBatteryTrace``): its custody chain step by step, built from its stored history.

The trace is :func:`~services.flows.domain.custody.replay` over the battery's events, as
:func:`services.flows.capture.recompute` derives the stored state. Which rule hits each step shows depends on
the history:

- **Corrected or reordered** (an event of the battery is declared in error, or its events were captured out of
  ``event_time`` order): the replay re-judges the ``replayable`` rules (``make_judge``), because a correction or
  a late event changes the states later events are judged against. This is what ``recompute`` stored.
- **Otherwise** (the common case): the replay applies the events in capture order, exactly as the capture did,
  so the hits recorded at capture (``hits_json``) are the hits of each step. Re-judging would only repeat the
  capture's work with less to go on (the capture also saw the matched shipment of a receipt by quantity and
  the full states of the event's other batteries), and could then disagree with the event's stored outcome
  and with the battery's stored state, both of which the recorded hits decided.

Releases apply at their times in both cases (rules never read quarantine causes, so they do not change hits).
Each step's event is the stored message (what ``QueryEvents`` returns) with the step's rule hits.

In the common case the capture already did the replay's work, and recorded it: each ``event_battery`` link keeps
the battery's state after the event. When nothing since can have changed what the capture judged (no declaration,
release or import, events captured in the order a replay applies them, the stored state the last step's),
:func:`recorded_trace` builds the same trace from those states, without replaying (``store.read_trace_source``
decides); otherwise :func:`battery_trace` replays as described above.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from greenmesh.flows.v1 import flows_pb2 as pb
from services.flows.domain import (
    BatteryId,
    BatteryState,
    CustodyState,
    Directory,
    FlowEvent,
    Judge,
    RuleConfig,
    RuleHit,
    make_judge,
    replay,
)
from services.flows.domain.custody import effective_order
from services.flows.domain.transfers import sparing_imported
from services.flows.mapping import custody_state_to_proto, hit_to_proto, state_to_proto
from services.flows.store import BatteryHistory, RecordedStep, StoredEvent, state_of
from services.flows.tables import BatteryRow


def needs_rejudging(events: Sequence[FlowEvent]) -> bool:
    """Whether a replay of ``events`` (in capture order) would judge them differently from the capture: some
    event is declared in error, or the replay would apply them in another order than they were captured."""
    if any(event.error_declaration is not None for event in events):
        return True
    return any(index != position for position, (index, _) in enumerate(effective_order(events)))


def recorded_judge(recorded_hits: Mapping[str, Sequence[RuleHit]]) -> Judge:
    """A judge that gives each event the hits recorded at its capture."""

    def judge(
        event: FlowEvent,
        states_before: Mapping[BatteryId, BatteryState],
        directory: Directory,
        latest_event_times: Mapping[BatteryId, dt.datetime],
    ) -> Sequence[RuleHit]:
        return recorded_hits.get(event.event_id, ())

    return judge


def trace_judge(history: BatteryHistory, config: RuleConfig) -> Judge:
    """The judge for a trace of ``history`` (see the module docstring)."""
    if needs_rejudging(history.events):
        # Shipments imported from another province were judged there: spared (services.flows.transfers).
        return sparing_imported(make_judge(config, recorded_hits=history.recorded_hits), history.imported_hits)
    return recorded_judge(history.recorded_hits)


def battery_trace(
    history: BatteryHistory, directory: Directory, config: RuleConfig, battery: BatteryId
) -> pb.GetBatteryTraceResponse:
    """The trace of ``battery`` from its history (``store.battery_history``), replayed."""
    result = replay(history.events, directory, judge=trace_judge(history, config), releases=history.releases)
    state = result.state(battery)
    response = pb.GetBatteryTraceResponse(state=state_to_proto(state), reached_compliant_channel=state.reached_recycler)
    for step in result.trail_of(battery):
        _add_step(
            response,
            history.rows[step.event.event_id],
            step.state_before,
            step.state_after,
            step.hits,
            (step.county_code, step.facility_type),
            declared_in_error=step.declared_in_error,
        )
    return response


def recorded_trace(
    steps: Sequence[RecordedStep], row: BatteryRow, directory: Directory, battery: BatteryId
) -> pb.GetBatteryTraceResponse:
    """The trace of ``battery`` from the steps its capture recorded (``store.read_trace_source`` gives them only
    when a replay would repeat the capture): each step's state after is the link's, its state before the previous
    step's, its hits those of the event that concern the battery, and the state the battery's stored one. The
    same answer as :func:`battery_trace` without turning the events into domain events or replaying them."""
    state = state_of(row, None)  # the open shipment is not part of the reply
    response = pb.GetBatteryTraceResponse(state=state_to_proto(state), reached_compliant_channel=state.reached_recycler)
    before = BatteryState(battery).state
    for step in steps:
        facility = directory.facility(step.stored.message.facility_id)
        found = (facility.county_code, facility.facility_type) if facility else ("", "")
        hits = [hit for hit in step.hits if hit.concerns(battery)]
        _add_step(response, step.stored, before, step.state_after, hits, found, declared_in_error=False)
        before = step.state_after
    return response


def _add_step(
    response: pb.GetBatteryTraceResponse,
    stored: StoredEvent,
    state_before: CustodyState,
    state_after: CustodyState,
    hits: Sequence[RuleHit],
    directory_place: tuple[str, str],
    *,
    declared_in_error: bool,
) -> None:
    """One step: the stored message with its hash, outcome, county and this battery's hits; the place as stored at
    capture, else as the directory has it now (``directory_place``: county code, facility type)."""
    shown = [hit_to_proto(hit) for hit in hits]
    line = response.steps.add(
        state_before=custody_state_to_proto(state_before),
        state_after=custody_state_to_proto(state_after),
        county_code=stored.county_code or directory_place[0],
        facility_type=stored.facility_type or directory_place[1],
        rule_hits=shown,
        declared_in_error=declared_in_error,
    )
    line.event.CopyFrom(stored.message)
    line.event.event_hash = stored.event_hash
    line.event.outcome = pb.EventOutcome.Value(f"EVENT_OUTCOME_{stored.outcome}")
    line.event.county_code = stored.county_code
    line.event.rule_hits.extend(shown)
