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
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from greenmesh.flows.v1 import flows_pb2 as pb
from services.flows.domain import (
    BatteryId,
    BatteryState,
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
from services.flows.store import BatteryHistory


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
    """The trace of ``battery`` from its history (``store.battery_history``)."""
    result = replay(history.events, directory, judge=trace_judge(history, config), releases=history.releases)
    state = result.state(battery)
    response = pb.GetBatteryTraceResponse(state=state_to_proto(state), reached_compliant_channel=state.reached_recycler)
    for step in result.trail_of(battery):
        stored = history.rows[step.event.event_id]
        hits = [hit_to_proto(hit) for hit in step.hits]
        line = response.steps.add(
            state_before=custody_state_to_proto(step.state_before),
            state_after=custody_state_to_proto(step.state_after),
            county_code=stored.county_code or step.county_code,
            facility_type=stored.facility_type or step.facility_type,
            rule_hits=hits,
            declared_in_error=step.declared_in_error,
        )
        line.event.CopyFrom(stored.message)
        line.event.event_hash = stored.event_hash
        line.event.outcome = pb.EventOutcome.Value(f"EVENT_OUTCOME_{stored.outcome}")
        line.event.county_code = stored.county_code
        line.event.rule_hits.extend(hits)
    return response
