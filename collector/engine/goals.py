"""Campaign goals: who was assigned to which arm, and who reached the goal in time. Pure.

A campaign with a `goal` enrols a user the first time it decides about them past the trigger
and test-user steps, that is when the user gets their arm: a variant (or the campaign's single
action) or the control group. Users suppressed after that step (frequency caps, spacing,
exclusivity, a missing template variable) stay enrolled in their arm: the comparison is by
assignment (intent to treat), the same rule for the arms and the control group, so that nothing
after the split can bias it. The enrolment (arm, time, converted) lives in the user's state, so
it is counted once per user however many times the campaign is decided.

A goal event (with its `where`) reached within `within` after the enrolment converts the user
once; every such event adds its `value` field (a number, or a string holding one) to the arm's
value. The goal is checked before the event's campaigns are decided, so the event that enrols a
user never converts them; a later event at the same time (a batch without timestamps) does.

The engine reports each count as a `Tick`; the store adds the ticks to the campaign's
counters in the same step (memory) or the same script (Redis) that stores the user's state.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from collector.engine.profile import Enrolment
from collector.engine.results import SOLE, Counts
from collector.engine.scope import Predicate, Scope, as_number
from collector.engine.values import MISSING, Missing, Value
from collector.events import Event

# suppression reasons given once the user has their arm: they are still enrolled
ASSIGNED_REASONS = frozenset({"control_group", "frequency", "spacing"})


class Tick(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One change to a campaign's results: a user enrolled in an arm, converted, value added."""

    campaign_id: str
    arm: str  # variant id, results.SOLE or results.CONTROL
    assigned: int = 0
    converted: int = 0
    value: float = 0.0


class Goal:
    """A campaign's goal, compiled."""

    __slots__ = ("campaign_id", "event", "value", "where", "within")

    def __init__(
        self,
        campaign_id: str,
        event: str,
        within: float,
        where: Predicate | None,
        value: Callable[[Event], Value | Missing] | None,
    ) -> None:
        self.campaign_id = campaign_id
        self.event = event
        self.within = within
        self.where = where
        self.value = value

    def reach(self, scope: Scope, ticks: list[Tick]) -> None:
        """Count the current event (named like the goal) for the user's enrolment, if in time."""
        goals = scope.state.goals
        enrolment = goals.get(self.campaign_id) if goals is not None else None
        if enrolment is None:
            return
        elapsed = scope.t - enrolment.at
        if elapsed < 0 or elapsed > self.within:  # an event from before the assignment
            return
        if self.where is not None and not self.where(scope):
            return
        value = 0.0
        if self.value is not None:
            found = self.value(scope.event)
            number = as_number(found) if found is not MISSING and found is not None else MISSING
            if number is not MISSING:
                value = float(number)
        converted = 0 if enrolment.converted else 1
        enrolment.converted = True
        if converted or value:
            ticks.append(Tick(self.campaign_id, enrolment.arm, 0, converted, value))


def enrol(scope: Scope, campaign_id: str, arm: str, ticks: list[Tick]) -> None:
    """Enrol the user in a campaign's arm unless they already are (their first arm stays)."""
    state = scope.state
    goals = state.goals
    if goals is None:
        goals = state.goals = {}
    elif campaign_id in goals:
        return
    goals[campaign_id] = Enrolment(arm, scope.t)
    ticks.append(Tick(campaign_id, arm, 1))


def arm_key(variant_id: str | None) -> str:
    """The results key of an arm that fires: its variant id, or SOLE without variants."""
    return SOLE if variant_id is None else variant_id


def add(results: dict[str, dict[str, Counts]], ticks: list[Tick]) -> set[str]:
    """Add ticks to per-campaign, per-arm counters; returns the campaigns changed."""
    changed: set[str] = set()
    for tick in ticks:
        arms = results.get(tick.campaign_id)
        if arms is None:
            arms = results[tick.campaign_id] = {}
        counts = arms.get(tick.arm)
        if counts is None:
            counts = arms[tick.arm] = Counts()
        counts.assigned += tick.assigned
        counts.converted += tick.converted
        counts.value += tick.value
        changed.add(tick.campaign_id)
    return changed


def summed(ticks: list[Tick]) -> dict[tuple[str, str], Counts]:
    """Ticks added up per (campaign, arm)."""
    total: dict[tuple[str, str], Counts] = {}
    for tick in ticks:
        counts = total.get((tick.campaign_id, tick.arm))
        if counts is None:
            counts = total[tick.campaign_id, tick.arm] = Counts()
        counts.assigned += tick.assigned
        counts.converted += tick.converted
        counts.value += tick.value
    return total

