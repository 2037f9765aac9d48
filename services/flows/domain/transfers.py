"""Cross-province transfers, the pure part: which shipments leave the province, and how the destination province
takes in the shipment it imports (issue 7; the service side is :mod:`services.flows.transfers`).

A facility's province is the first two digits of its GB/T 2260 county code. A shipment whose destination facility
lies in another province is a *transfer*: the origin judges it as always (FLOW-002 with the destination's type,
accreditation and operator from the other province's directory), stores it and sends it to the destination
province, which stores the same shipping event marked with its origin and advances the batteries with it, at face
value and without judging it again, so that the receipt there answers it (no FLOW-005).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from services.flows.domain.custody import BatteryState, Judge, advance
from services.flows.domain.directory import Directory
from services.flows.domain.events import BizStep, FlowEvent
from services.flows.domain.hits import RuleHit
from services.flows.domain.identity import BatteryId


def province_of(county_code: str) -> str:
    """``440305`` → ``44``; "" for a code too short to tell."""
    return county_code[:2] if len(county_code) >= 2 and county_code[:2].isdigit() else ""


def transfer_destination(event: FlowEvent, directory: Directory, province: str) -> str:
    """The province a shipment goes to when it is not ``province`` (a cross-province transfer), else ""."""
    if event.biz_step is not BizStep.SHIPPING or not event.destination_facility_id:
        return ""
    destination = directory.facility(event.destination_facility_id)
    other = province_of(destination.county_code) if destination is not None else ""
    return other if other and other != province else ""


def import_states(
    event: FlowEvent, states: Mapping[BatteryId, BatteryState], directory: Directory
) -> dict[BatteryId, BatteryState]:
    """The batteries' states once an imported ``event`` applies: a shipment from another province puts them in
    transit to the facility here; the receipt, in another province, of a shipment from here puts them there. The
    province that captured the event judged it, so it brings no rule hit here (a battery unknown here starts
    UNKNOWN)."""
    return {
        battery: advance(states.get(battery) or BatteryState(battery), event, directory)
        for battery in sorted(set(event.batteries), key=lambda b: b.urn)
    }


def sparing_imported(judge: Judge, imported: Mapping[str, Sequence[RuleHit]]) -> Judge:
    """``judge``, except that the imported events (event id → the hits recorded here, none) are not judged again
    in a replay: the custody rules would see a shipment by a party that never held the battery here."""
    if not imported:
        return judge

    def spare(
        event: FlowEvent,
        states_before: Mapping[BatteryId, BatteryState],
        directory: Directory,
        latest_event_times: Mapping[BatteryId, dt.datetime],
    ) -> Sequence[RuleHit]:
        if event.event_id in imported:
            return imported[event.event_id]
        return judge(event, states_before, directory, latest_event_times)

    return spare
