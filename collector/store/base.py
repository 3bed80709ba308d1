"""The store interface: per-user state, identities, dedupe and recent events, in memory or Redis.

A store loads what a group of events names and commits the plan the pipeline made of them
(`collector.store.pipeline`, which holds the per-event algorithm for every store); it never runs
the engine on an event itself. Both implementations pass `tests/store/test_contract.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from collector.engine.campaigns import Missed
from collector.engine.engine import Engine
from collector.engine.profile import Decision, UserState
from collector.engine.results import Counts
from collector.events import Event
from collector.webhook import WebhookRequest

if TYPE_CHECKING:
    from collector.store.plan import Loaded, Plan


class IngestResult(msgspec.Struct):
    """What a batch of events did: how many were new, how many were duplicates, what fires.

    `rejected` lists events that could not be processed, by position, with why: each left no
    trace (its profile is as it was, its messageId is not marked seen) and the others stand.
    """

    accepted: int
    duplicates: int
    webhooks: list[WebhookRequest]
    decisions: list[Decision]
    rejected: list[tuple[int, str]] = []
    missed: list[Missed] = []  # campaigns the events did not trigger, to count (not decisions)


NOT_PROCESSED = "the collector could not process this message; it was not applied"
DEDUPE_SECONDS = 24 * 3600.0  # how long a messageId is remembered, per sender


def bounded_recent(event: Event, limit: int, encode: Callable[[Event], bytes]) -> bytes:
    """An event encoded for the recent-events list, slimmed when it is bigger than `limit`.

    First its context goes, then its properties and traits; `context.truncated` says so.
    """
    blob = encode(event)
    if len(blob) <= limit:
        return blob
    slim = msgspec.structs.replace(event, context={"truncated": True})
    blob = encode(slim)
    if len(blob) <= limit:
        return blob
    return encode(msgspec.structs.replace(slim, properties={}, traits={}))


class UserView(msgspec.Struct):
    """A user as the admin lookup shows it."""

    key: str
    profile: dict[str, Any]
    recent_events: list[dict[str, Any]]


class Store(Protocol):
    """Per-user state shared by every collector process using the same backend."""

    async def open(self) -> None:
        """Connect and load what a previous run left."""

    async def close(self) -> None:
        """Persist what must survive a restart and disconnect."""

    def engine(self) -> Engine:
        """The engine the plans are made with (the live one: campaigns change while running)."""

    def holding(self, events: Iterable[Event]) -> AbstractAsyncContextManager[None]:
        """Keep other requests of this process naming the same users out until it exits."""

    async def load(self, events: Sequence[Event], digests: Sequence[bytes], now: float) -> Loaded:
        """What the events name: index entries, profiles, which digests were seen, tallies."""

    async def commit(self, plan: Plan, loaded: Loaded, now: float) -> set[str]:
        """Write a plan and queue its webhooks; return the profiles whose write conflicted (their
        events' effects were not written and must be run again)."""

    def discard(self, loaded: Loaded) -> None:
        """Forget an attempt that will not be committed: loaded states are as they were."""

    async def lookup(self, identity: str, now: float) -> UserView | None:
        """Find a user by anonymous id, user id or key."""

    async def ping(self) -> bool:
        """True when the backend answers."""

    async def fire_due(self, now: float) -> IngestResult:
        """Fire the absence timers due by `now` (once across processes), queue their webhooks."""

    async def stopped(self, now: float) -> dict[str, str]:
        """Campaigns that their stop conditions have stopped, with the condition reached."""

    async def results(self, campaign_ids: Sequence[str]) -> dict[str, dict[str, Counts]]:
        """A/B counts (users assigned, converted, goal value) per arm of each campaign named."""

    async def add_hourly(self, counts: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Add (fired, suppressed) decisions per (campaign, hour since the epoch)."""

    async def hourly(
        self, campaign_ids: Sequence[str], since: int
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """(fired, suppressed) per hour from hour `since` on, for each campaign named."""

    async def user_state(self, identity: str) -> UserState | None:
        """The engine state of a user found by anonymous id, user id or key."""

    def sample(
        self, deadline: float, limit: int | None = None
    ) -> AsyncIterator[tuple[UserState, int]]:
        """Profiles, until `time.monotonic()` passes `deadline` or `limit` were given, each with
        the number of profiles the store holds (estimated where it cannot be counted): all of
        them newest first where they are at hand, else a sample."""


def event_as_message(event: Event) -> dict[str, Any]:
    """Render an accepted event back as a Segment-style message (for lookups and streams)."""
    message: dict[str, Any] = {
        "type": event.type,
        "messageId": event.message_id,
        "anonymousId": event.anonymous_id,
        "userId": event.user_id,
        "properties": event.properties,
        "traits": event.traits,
        "context": event.context,
        "timestamp": event.timestamp,
        "receivedAt": event.received_at,
    }
    if event.type == "track":
        message["event"] = event.name
    if event.type in ("page", "screen") and "name" in event.properties:
        message["name"] = event.properties["name"]
    if event.previous_id is not None:
        message["previousId"] = event.previous_id
    return message
