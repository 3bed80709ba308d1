"""One attempt at a group of events, without I/O: identity resolution and the engine.

Given what a store loaded for the events (`Loaded`: the identities' index entries, the profiles,
which messageIds were seen, the stop tallies), `run_events` resolves each event to its profile
(merging the profiles an event shows to be one person, by `identity.resolve`), runs the engine on
every event in order, and returns a `Plan`: per final profile, its new state, the events it owns,
the messageIds to mark seen, recent events, webhooks, decisions, A/B ticks, merges and identity
links. The store then commits the plan. Both stores share this code; neither runs the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import msgspec

from collector.engine.campaigns import Missed
from collector.engine.engine import Engine, new_state
from collector.engine.goals import Tick
from collector.engine.profile import Decision, Tally, UserState
from collector.events import Event
from collector.store import identity
from collector.webhook import WebhookRequest

log = logging.getLogger("tripwire.store")

T = TypeVar("T")

# Merge redirects followed (a round trip each); every chain followed is shortened on commit.
MAX_CHAIN = 64

class Record:
    """A profile as loaded: its state, the version a commit checks, and, in a store that merges
    profiles across shards in steps (Redis Cluster), where a merged-away profile redirects and
    which frozen profiles this one has absorbed already."""

    __slots__ = ("absorbed", "had_timers", "key", "moved_to", "state", "version")

    def __init__(
        self,
        key: str,
        state: UserState | None,
        version: int = 0,
        moved_to: str | None = None,
        absorbed: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.key = key
        self.version = version
        self.state = state
        # as loaded: the engine may change the state in place
        self.had_timers = state is not None and bool(state.timers)
        self.moved_to = moved_to
        self.absorbed = absorbed


class Loaded:
    """What a store loaded for one attempt: index entries, profiles, messageIds already seen, and
    the stop conditions' delivery tallies (None when no campaign has any). A store may subclass
    it to carry what its commit needs."""

    def __init__(
        self,
        index: dict[str, str],
        records: dict[str, Record],
        seen: set[bytes],
        deliveries: dict[str, Tally] | None = None,
    ) -> None:
        self.index = index
        self.records = records
        self.seen = seen
        self.deliveries = deliveries


class Outcome(NamedTuple):
    """What one event did: its position in the group, its webhooks, decisions and the campaigns
    it did not trigger (counted apart, see `collector.engine.campaigns.Missed`)."""

    position: int
    webhooks: list[WebhookRequest]
    decisions: list[Decision]
    missed: Sequence[Missed] = ()


class Plan:
    """The outcome of running a group of events: what to write per profile, and what each event
    did (`outcomes`, in the order the events ran). Per-profile lists are keyed by the profile's
    final key (a profile merged away hands its lists to the one it went into)."""

    __slots__ = (
        "duplicates",
        "failed",
        "links",
        "losers",
        "outcomes",
        "owner_events",
        "pending",
        "recent",
        "seen",
        "stale",
        "states",
        "ticks",
        "webhooks",
    )

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.states: dict[str, UserState | None] = {}
        self.owner_events: dict[str, list[int]] = {}  # final key -> event positions
        self.seen: dict[str, list[bytes]] = {}  # key -> new dedupe keys
        self.recent: dict[str, list[Event]] = {}  # key -> its events, to keep as recent
        self.webhooks: dict[str, list[tuple[int, WebhookRequest]]] = {}
        self.ticks: dict[str, list[Tick]] = {}  # key -> A/B results counted
        self.losers: dict[str, str] = {}  # merged-away key -> key it went into
        self.pending: dict[str, list[str]] = {}  # key -> frozen keys to absorb
        self.stale: dict[str, str] = {}  # frozen key already absorbed -> its target
        self.links: dict[str, str] = {}  # identity -> key
        self.duplicates: set[int] = set()
        self.failed: list[int] = []  # events the engine failed on: the plan must not be written

    def absorb(self, key: str, other: str) -> None:
        """Record that profile `other` was merged into `key`."""
        self.losers[other] = key
        for loser, target in self.losers.items():
            if target == other:
                self.losers[loser] = key
        _hand_over(self.owner_events, key, other)
        _hand_over(self.pending, key, other)
        _hand_over(self.seen, key, other)
        _hand_over(self.recent, key, other)
        _hand_over(self.webhooks, key, other)
        _hand_over(self.ticks, key, other)


def _hand_over(lists: dict[str, list[T]], key: str, other: str) -> None:
    """Move profile `other`'s items to the end of profile `key`'s."""
    theirs = lists.pop(other, None)
    if theirs:
        lists.setdefault(key, []).extend(theirs)


class _Profiles:
    """Who owns what during one run: the index as loaded (plus links made), merge redirects, and
    the profiles' states."""

    __slots__ = ("index", "moved", "states")

    def __init__(
        self, index: dict[str, str], moved: dict[str, str], states: dict[str, UserState | None]
    ) -> None:
        self.index = index
        self.moved = moved
        self.states = states

    def final(self, key: str) -> str:
        """Where a profile's data is now, following merge redirects."""
        moved = self.moved
        if not moved:
            return key
        for _ in range(MAX_CHAIN + len(moved)):
            target = moved.get(key)
            if target is None:
                return key
            key = target
        return key

    def owner(self, id_: str) -> str | None:
        """The profile an identity belongs to, if it has one."""
        key = self.index.get(id_)
        if key is None:
            return None
        key = self.final(key)
        return key if self.states.get(key) is not None else None

    def user_of(self, key: str) -> str | None:
        """The user id of a profile."""
        state = self.states.get(key)
        return state.user_id if state is not None else None


def run_events(
    engine: Engine, events: Sequence[Event], digests: Sequence[bytes], now: float, loaded: Loaded
) -> Plan:
    """Resolve identities and run the engine on every event, in order.

    An event the engine fails on is listed in `plan.failed`; later events of the same profile
    are not run (its state is spoilt), those of other profiles are, to find their failures too.
    """
    plan = Plan()
    states = plan.states
    index, records, seen, deliveries = loaded.index, loaded.records, loaded.seen, loaded.deliveries
    moved = {key: r.moved_to for key, r in records.items() if r.moved_to is not None}
    profiles = _Profiles(index, moved, states)
    final = profiles.final
    for key, record in records.items():
        if record.moved_to is None:
            states[key] = record.state
    if moved:
        _absorb_frozen(engine, plan, records, final)
    owner, user_of = profiles.owner, profiles.user_of
    spoilt: set[str] = set()
    for position, event in enumerate(events):
        if digests[position] in seen:
            plan.duplicates.add(position)
            continue
        resolution = identity.resolve(event, owner, user_of)
        key = final(resolution.key)
        for other in resolution.merge:
            theirs = states.get(other)
            if other == key or theirs is None:
                continue
            states[key] = engine.merge(states.get(key) or new_state(key, now), theirs)
            states[other] = None
            moved[other] = key
            plan.absorb(key, other)
        for id_ in resolution.link:
            if index.get(id_) != key:
                index[id_] = key
                plan.links[id_] = key
        if spoilt and key in spoilt:
            continue
        try:
            outcome = engine.process(
                states.get(key) or new_state(key, now), event, now, deliveries=deliveries
            )
        except Exception:
            log.exception("event %d of a request could not be processed", position)
            plan.failed.append(position)
            spoilt.add(key)
            continue
        states[key] = outcome.state
        owned = plan.owner_events.get(key)
        if owned is None:
            plan.owner_events[key] = [position]
            plan.seen[key] = [digests[position]]
            plan.recent[key] = [event]
        else:
            owned.append(position)
            plan.seen[key].append(digests[position])
            plan.recent[key].append(event)
        plan.outcomes.append(
            Outcome(position, outcome.webhooks, outcome.decisions, outcome.missed)
        )
        if outcome.webhooks:
            plan.webhooks.setdefault(key, []).extend((position, w) for w in outcome.webhooks)
        if outcome.ticks:
            plan.ticks.setdefault(key, []).extend(outcome.ticks)
    return plan


def _absorb_frozen(
    engine: Engine, plan: Plan, records: dict[str, Record], final: Callable[[str], str]
) -> None:
    """Merge in first the frozen profiles that their target has not absorbed yet."""
    states = plan.states
    for key, record in records.items():
        if record.moved_to is None:
            continue
        target = final(key)
        if record.state is None:
            continue
        if any(key in r.absorbed for r in records.values()):
            plan.stale[key] = target  # absorbed already; only its cleanup is left
            continue
        own = states.get(target)
        states[target] = (
            engine.merge(own, record.state)
            if own is not None
            else msgspec.structs.replace(record.state, key=target)
        )
        plan.pending.setdefault(target, []).append(key)
