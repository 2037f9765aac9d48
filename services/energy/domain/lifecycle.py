"""The lifecycle of an installed asset (energy.md §3.3): its states, the allowed transitions, and the check of a
dated transition against the asset's history.

``PLANNED → PROCURED → INSTALLED → IN_SERVICE ↔ STANDBY → DECOMMISSIONED → RETIRED`` is the research note's
chain; :data:`ALLOWED_TRANSITIONS` adds the few side paths real registers need (each commented where it is
defined). STANDBY here is the *lifecycle* standby of a unit kept installed but out of the live load (a cold
spare); the minute-by-minute standby of a running unit is an operating state (:mod:`.readings`).

Transitions are dated by calendar day (procurement and commissioning records carry dates, not instants). A
transition dated before the last one is refused; several on the same day are allowed and keep their recorded
order. :func:`check_transition` returns a :class:`LifecycleReason` (a ``str`` in UPPER_SNAKE, usable as the
ErrorInfo reason) or ``None``; :func:`require_transition` raises :class:`LifecycleError`
(``FAILED_PRECONDITION``: the refusal depends on the asset's current state, not on the request's shape).
Nothing here touches a database, gRPC or NATS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from meshkit.errors import FailedPrecondition


class LifecycleState(StrEnum):
    """Asset lifecycle states (energy.md §3.3 ``lifecycle_state``)."""

    PLANNED = "PLANNED"
    PROCURED = "PROCURED"
    INSTALLED = "INSTALLED"
    IN_SERVICE = "IN_SERVICE"
    STANDBY = "STANDBY"
    DECOMMISSIONED = "DECOMMISSIONED"
    RETIRED = "RETIRED"


L = LifecycleState

ALLOWED_TRANSITIONS: Final[Mapping[LifecycleState, frozenset[LifecycleState]]] = {
    # RETIRED from PLANNED or PROCURED: a purchase cancelled, or a unit returned or scrapped before installation
    L.PLANNED: frozenset({L.PROCURED, L.RETIRED}),
    L.PROCURED: frozenset({L.INSTALLED, L.RETIRED}),
    # STANDBY straight from INSTALLED: a spare commissioned as the cold reserve of its group;
    # DECOMMISSIONED straight from INSTALLED: removed before it ever carried load
    L.INSTALLED: frozenset({L.IN_SERVICE, L.STANDBY, L.DECOMMISSIONED}),
    L.IN_SERVICE: frozenset({L.STANDBY, L.DECOMMISSIONED}),
    L.STANDBY: frozenset({L.IN_SERVICE, L.DECOMMISSIONED}),
    # INSTALLED again: a decommissioned unit redeployed (moved within the site or to another one)
    L.DECOMMISSIONED: frozenset({L.INSTALLED, L.RETIRED}),
    L.RETIRED: frozenset(),
}
"""The states each state may move to. RETIRED is final."""

INITIAL_STATES: Final = frozenset({L.PLANNED, L.PROCURED, L.INSTALLED, L.IN_SERVICE, L.STANDBY})
"""States an asset may be registered in: legacy units enter the register mid-life, never already gone."""

LIVE_STATES: Final = frozenset({L.IN_SERVICE, L.STANDBY})
"""Installed and available to the live network."""


class LifecycleReason(StrEnum):
    """Why a transition is refused; the value is the ErrorInfo reason."""

    ILLEGAL_INITIAL_LIFECYCLE_STATE = "ILLEGAL_INITIAL_LIFECYCLE_STATE"
    LIFECYCLE_STATE_FINAL = "LIFECYCLE_STATE_FINAL"
    LIFECYCLE_STATE_UNCHANGED = "LIFECYCLE_STATE_UNCHANGED"
    ILLEGAL_LIFECYCLE_TRANSITION = "ILLEGAL_LIFECYCLE_TRANSITION"
    LIFECYCLE_TRANSITION_OUT_OF_ORDER = "LIFECYCLE_TRANSITION_OUT_OF_ORDER"
    LIFECYCLE_TRANSITION_IN_FUTURE = "LIFECYCLE_TRANSITION_IN_FUTURE"


R = LifecycleReason

_MESSAGES: Final[Mapping[LifecycleReason, str]] = {
    R.ILLEGAL_INITIAL_LIFECYCLE_STATE: "an asset cannot be registered as {to}",
    R.LIFECYCLE_STATE_FINAL: "the asset is {frm}; no transition may follow",
    R.LIFECYCLE_STATE_UNCHANGED: "the asset is already {to}",
    R.ILLEGAL_LIFECYCLE_TRANSITION: "{frm} cannot move to {to}",
    R.LIFECYCLE_TRANSITION_OUT_OF_ORDER: "dated {on}, before the last transition ({last})",
    R.LIFECYCLE_TRANSITION_IN_FUTURE: "dated {on}, after today ({today})",
}


@dataclass(frozen=True)
class LifecycleTransition:
    """One dated move; ``from_state`` is ``None`` for the registration of the asset."""

    from_state: LifecycleState | None
    to_state: LifecycleState
    effective_date: dt.date
    note: str = ""


def check_transition(
    current: LifecycleState | None,
    last_date: dt.date | None,
    target: LifecycleState,
    effective_date: dt.date,
    *,
    today: dt.date | None = None,
) -> LifecycleReason | None:
    """Why moving from ``current`` (``None``: not registered yet) to ``target`` on ``effective_date`` is
    refused, or ``None`` when it is allowed. ``last_date`` is the date of the asset's last transition;
    ``today``, when given, refuses dates after it."""
    if today is not None and effective_date > today:
        return R.LIFECYCLE_TRANSITION_IN_FUTURE
    if current is None:
        return None if target in INITIAL_STATES else R.ILLEGAL_INITIAL_LIFECYCLE_STATE
    if not ALLOWED_TRANSITIONS[current]:
        return R.LIFECYCLE_STATE_FINAL
    if target is current:
        return R.LIFECYCLE_STATE_UNCHANGED
    if target not in ALLOWED_TRANSITIONS[current]:
        return R.ILLEGAL_LIFECYCLE_TRANSITION
    if last_date is not None and effective_date < last_date:
        return R.LIFECYCLE_TRANSITION_OUT_OF_ORDER
    return None


class LifecycleError(FailedPrecondition):
    """A refused transition: ``FAILED_PRECONDITION`` with the :class:`LifecycleReason` as ErrorInfo reason."""

    def __init__(
        self,
        reason: LifecycleReason,
        current: LifecycleState | None,
        target: LifecycleState,
        effective_date: dt.date,
        *,
        last_date: dt.date | None = None,
        today: dt.date | None = None,
    ) -> None:
        message = _MESSAGES[reason].format(
            frm=current.value if current else "unregistered",
            to=target.value,
            on=effective_date,
            last=last_date,
            today=today,
        )
        metadata = {"to_state": target.value, "effective_date": effective_date.isoformat()}
        if current is not None:
            metadata["from_state"] = current.value
        if last_date is not None:
            metadata["last_transition_date"] = last_date.isoformat()
        super().__init__(message, reason=reason.value, metadata=metadata)
        self.lifecycle_reason = reason


def require_transition(
    current: LifecycleState | None,
    last_date: dt.date | None,
    target: LifecycleState,
    effective_date: dt.date,
    *,
    today: dt.date | None = None,
) -> None:
    """:func:`check_transition`, raising :class:`LifecycleError` on refusal."""
    reason = check_transition(current, last_date, target, effective_date, today=today)
    if reason is not None:
        raise LifecycleError(reason, current, target, effective_date, last_date=last_date, today=today)


@dataclass(frozen=True)
class LifecycleHistory:
    """An asset's accepted transitions, oldest first. Build it with :meth:`apply` or :func:`replay`."""

    transitions: tuple[LifecycleTransition, ...] = ()

    @property
    def state(self) -> LifecycleState | None:
        return self.transitions[-1].to_state if self.transitions else None

    @property
    def last_date(self) -> dt.date | None:
        return self.transitions[-1].effective_date if self.transitions else None

    def apply(
        self, target: LifecycleState, effective_date: dt.date, *, note: str = "", today: dt.date | None = None
    ) -> LifecycleHistory:
        """The history with one more transition; :class:`LifecycleError` when the rules refuse it."""
        require_transition(self.state, self.last_date, target, effective_date, today=today)
        move = LifecycleTransition(self.state, target, effective_date, note)
        return LifecycleHistory((*self.transitions, move))

    def state_on(self, day: dt.date) -> LifecycleState | None:
        """The state at the end of ``day`` (``None`` before registration)."""
        found: LifecycleState | None = None
        for move in self.transitions:
            if move.effective_date > day:
                break
            found = move.to_state
        return found


def replay(moves: Iterable[tuple[LifecycleState, dt.date]], *, today: dt.date | None = None) -> LifecycleHistory:
    """Fold ``(target, date)`` pairs in recorded order into a history; the first refused one raises."""
    history = LifecycleHistory()
    for target, effective_date in moves:
        history = history.apply(target, effective_date, today=today)
    return history
