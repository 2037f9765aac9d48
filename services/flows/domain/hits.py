"""Rule hits and decisions, shared by the custody state machine (which records them) and the rules (which
produce them)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from services.flows.domain.identity import BatteryId


class Severity(StrEnum):
    """``flows.proto`` ``Severity``, lowest first."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Decision(StrEnum):
    """What a rule hit does to the event (research note §6.5: "reject … or accept into QUARANTINE")."""

    ACCEPT = "ACCEPT"  # no hit
    QUARANTINE = "QUARANTINE"  # stored; the batteries the hit concerns are quarantined pending review
    REJECT = "REJECT"  # not stored (FAILED_PRECONDITION); the reporter must correct and resubmit


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that an event breaks. ``battery`` is None when the hit concerns the whole event (then it
    concerns every battery of the event)."""

    rule_id: str
    severity: Severity
    decision: Decision
    message: str
    battery: BatteryId | None = None

    def concerns(self, battery: BatteryId) -> bool:
        return self.battery is None or self.battery == battery


def decide(hits: Iterable[RuleHit]) -> Decision:
    """REJECT if any hit rejects, else QUARANTINE if any hit, else ACCEPT."""
    decisions = {hit.decision for hit in hits}
    if Decision.REJECT in decisions:
        return Decision.REJECT
    return Decision.QUARANTINE if decisions else Decision.ACCEPT
