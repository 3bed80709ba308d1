"""The embedded store: every user's state in this process, kept in the data directory.

Every profile an ingest request changed (its state, caps and ids, and its recent events) and the
request's dedupe marks are staged for the data directory's database (`collector.memory.disk`),
which the backend commits before the request is answered; a start reads them back.

All work for a batch happens without awaiting, so within one event loop each user's update is
atomic. Inactive profiles are evicted by TTL and by a size bound (a count, or bytes), least recently
seen first, sparing those with a pending absence wait (`collector.memory.eviction`).

Stop conditions' tallies (deliveries per campaign across every user) and A/B results (users
assigned, converted and goal value per campaign arm) live here, beside the profiles, and are kept
with them; results change in the same step as the profile whose event counted them, and are
written in the same commit. Absence timers live in the profiles; a heap of (due, key)
finds the users whose earliest timer is due (stale entries are skipped when popped), so 10,000
pending timers cost ingest only a heap push per armed timer.

Per-visitor memory is what bounds this store, so what it keeps is compact: a profile is held
encoded (msgpack, `kept`) between events and decoded for each attempt (`held`), so a profile
costs a few hundred bytes instead of a tree of Python objects several times that, and the
decoded copy doubles as the rollback: an attempt that is not committed leaves what is held as
it was. A profile's recent events are compressed, all in one bytes object (`recent`), id lists
are tuples, and a profile's key, one of its ids, needs no index entry of its own: an anonymous
visitor has none. Few of these objects are containers the cyclic garbage collector must
walk, which keeps its pauses short as the store grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

import msgspec

from collector.config.schema import StateSettings
from collector.delivery.outbox import Outbox
from collector.engine import goals
from collector.engine.engine import Engine
from collector.engine.profile import (
    Decision,
    Tally,
    Timer,
    UserState,
    decode_json_state,
    decode_state,
)
from collector.engine.results import Counts
from collector.events import Event
from collector.memory.disk import Disk
from collector.memory.eviction import ESTIMATE_SAMPLE, SPARE_AT_MOST, Evictions
from collector.memory.recent import RecentEvents
from collector.memory.records import (
    EarlierState,
    decode_dedupe_keys,
    decode_hours,
    decode_json_profile,
    decode_profile,
    decode_results,
    decode_tally,
    encode_tally,
    load_state,
    pack_plain,
    save_state,
)
from collector.store import identity
from collector.store.base import (
    DEDUPE_SECONDS,
    IngestResult,
    UserView,
    event_as_message,
)
from collector.store.plan import Loaded, Plan, Record
from collector.webhook import WebhookRequest

log = logging.getLogger("tripwire.store")

Kept = bytes | UserState  # a held profile: msgpack, or the state past msgpack's integers

EARLIER_STATE = "state.msgpack"  # what versions before the log saved at a clean stop
MAX_REMEMBERED_MESSAGES = 5_000_000
FORGET_BELOW_MAX = MAX_REMEMBERED_MESSAGES - 50_000
FORGET_EVERY = 60.0  # seconds between looks for expired dedupe marks
SWEEP_EVERY = 60.0  # seconds between looks for profiles unseen for the TTL
# A dedupe mark is MARK_BITS of the message's digest (`identity.dedupe_key`) as an int: an int
# below 2**60 takes 32 bytes, the digest as bytes 64 (48 cut to 15 bytes). With
# MAX_REMEMBERED_MESSAGES marks held, a new message is taken for a duplicate by chance once in
# 2**60 / 5e6, over 10**11, messages.
MARK_BITS = 60
_MARK_MASK = (1 << MARK_BITS) - 1
KEEP_HOURS = 72  # hours of fired/suppressed counts kept per campaign
SLICE = 500  # profiles a sample gives between yields to the event loop
RECENT_DICTIONARY = "recent"  # the dictionaries table's row for recent events' (see `recent`)

class MemoryStore:
    """Per-user state held in this process (the default, zero set-up mode)."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        limits: StateSettings,
        disk: Disk | None,
        outbox: Outbox | None = None,
    ) -> None:
        self._engine = engine
        self._outbox = outbox  # where fired webhooks go; None = only report them (replay)
        self._limits = limits
        self._disk = disk  # None: nothing kept (replay, tests)
        # key -> profile (`kept`), least recently seen first: a profile seen again is taken out
        # and put back last (a plain dict, not an OrderedDict: that costs 55 bytes more a key)
        self._users: dict[str, Kept] = {}
        # A profile's key is one of its ids (the first it was seen with) unless `_index` sends
        # it elsewhere, so only its other ids are indexed: most profiles, an anonymous
        # visitor's, have no entry in either dict.
        self._index: dict[str, str] = {}  # namespaced id -> profile key, for other ids
        self._ids: dict[str, tuple[str, ...]] = {}  # profile key -> its other namespaced ids
        # dedupe mark (`seen_mark`) -> time first seen, oldest first (as inserted)
        self._seen: dict[int, float] = {}
        self._forget_at = 0.0  # when expired dedupe marks are next looked for
        self._recent = RecentEvents(  # key -> recent events, oldest first
            lambda: self._limits.recent_events, lambda: self._limits.recent_event_bytes
        )
        self._deliveries: dict[str, Tally] = {}  # campaign id -> deliveries, for stop conditions
        # campaign id -> arm -> users assigned, converted, value: counted in the same step as
        # the state change that made them (the engine's ticks)
        self._results: dict[str, dict[str, Counts]] = {}
        self._hourly: dict[str, dict[int, tuple[int, int]]] = {}  # for the dashboard's charts
        self._due: list[tuple[float, str]] = []  # heap of (due, key), possibly stale
        self._scheduled: dict[str, float] = {}  # key -> the due time its live heap entry has
        self.evictions = Evictions(limits)
        self._sweep_at = 0.0  # when profiles unseen for the TTL are next looked for
        if disk is not None:
            self._tallies = disk.table("tallies", self._tally_record)
            self._result_rows = disk.table("results", self._results_record)
            self._hour_rows = disk.table("hourly", self._hours_record)
            self._profiles = disk.table("profiles", self._profile_record)
            self._seen_journal = disk.journal("seen", max_age=DEDUPE_SECONDS)
            self._recent_rows = disk.lists("recent", keep=max(limits.recent_events, 1))
            self._dictionaries = disk.table("dictionaries", self._dictionary_record)
            self._recent.trained = lambda _: self._dictionaries.mark(RECENT_DICTIONARY)
        self._mark: Callable[[str], None] = (
            self._profiles.mark if disk is not None else _ignore
        )

    async def open(self) -> None:
        """Load the profiles and dedupe marks the data directory holds."""
        if self._disk is None:
            return
        began = time.perf_counter()
        size = self._limits.recent_events
        loaded: list[tuple[str, UserState]] = []
        for key, value in self._profiles.rows():
            if value[:1] == b"[":
                profile = decode_json_profile(value)
                state = decode_json_state(profile.state)
            else:
                profile = decode_profile(value)
                state = decode_state(profile.state)
            state.key = key  # left out of what is held and written (see `kept`)
            loaded.append((key, state))
            self._index_ids(key, profile.ids)
        for name, value in self._dictionaries.rows():
            if name == RECENT_DICTIONARY:
                self._recent.codec.set_dictionary(value)
        if size:
            stored = self._recent_rows.stored().items()
            keys = {key for key, _ in loaded}
            self._recent.load((key, items) for key, items in stored if key in keys)
        if not loaded:
            loaded = await self._import_earlier(self._disk)
        for key in self._recent.compress_held():  # kept before there was a dictionary
            self._recent_rows.reset(key, self._recent.items(key))
        loaded.sort(key=lambda item: item[1].last_seen)  # least recently seen first
        self._users = {key: kept(state) for key, state in loaded}
        seen = self._seen
        for at, value in self._seen_journal.entries():
            for dedupe in decode_dedupe_keys(value):
                # (marks written by earlier versions are whole digests)
                seen[dedupe if isinstance(dedupe, int) else seen_mark(dedupe)] = at
        self._deliveries = {
            campaign_id: decode_tally(value) for campaign_id, value in self._tallies.rows()
        }
        self._results = {cid: decode_results(value) for cid, value in self._result_rows.rows()}
        self._hourly = {cid: decode_hours(value) for cid, value in self._hour_rows.rows()}
        for key, state in loaded:
            if state.timers:
                self._schedule(key, state.timers)
        log.info(
            "loaded %d profiles and %d dedupe marks from %s in %.2f s",
            len(self._users),
            len(seen),
            self._disk.path,
            time.perf_counter() - began,
        )

    async def _import_earlier(self, disk: Disk) -> list[tuple[str, UserState]]:
        """The profiles an earlier version saved in `state.msgpack`, written to the log (once:
        the file is renamed `state.msgpack.imported` when they are)."""
        earlier = disk.earlier(EARLIER_STATE, EarlierState)
        if earlier is None:
            return []
        users = {key: decode_state(state) for key, state in earlier.users.items()}
        ids: dict[str, list[str]] = {}
        for id_, key in earlier.index.items():
            if key in users:
                ids.setdefault(key, []).append(id_)
        for key, found in ids.items():
            self._index_ids(key, found)
        size = self._limits.recent_events
        for key, packed in earlier.recent.items():
            if size and packed and key in users:
                items = [bytes(p) for p in packed[-size:]]
                self._recent.put(key, items)
                self._recent_rows.reset(key, items)
        self._users = {key: kept(state) for key, state in users.items()}  # for the records below
        for key in users:
            self._profiles.mark(key)
        await disk.commit()
        disk.imported(EARLIER_STATE)
        log.warning(
            "imported %d profiles saved by an earlier version (%s is now %s.imported)",
            len(users),
            EARLIER_STATE,
            EARLIER_STATE,
        )
        return list(users.items())

    def _index_ids(self, key: str, ids: Iterable[str]) -> None:
        """Index a loaded profile's ids (all but its key, which is an id of its own)."""
        others = tuple(id_ for id_ in ids if id_ != key)
        if others:
            self._ids[key] = others
            for id_ in others:
                self._index[id_] = key

    async def close(self) -> None:
        """Nothing to do: every change was written as it was made."""

    def _tally_record(self, campaign_id: str) -> bytes | None:
        tally = self._deliveries.get(campaign_id)
        return None if tally is None else encode_tally(tally)

    def _results_record(self, campaign_id: str) -> bytes | None:
        arms = self._results.get(campaign_id)
        return None if arms is None else pack_plain(arms)

    def _hours_record(self, campaign_id: str) -> bytes | None:
        hours = self._hourly.get(campaign_id)
        return None if hours is None else pack_plain(hours)

    def _dictionary_record(self, name: str) -> bytes | None:
        return self._recent.codec.dictionary if name == RECENT_DICTIONARY else None

    def _profile_record(
        self, key: str
    ) -> tuple[msgspec.Raw | UserState, tuple[str, ...]] | None:
        """A profile as the data directory keeps it (the fields of `Profile`, encoded with the
        rest of its frame): its state and all its ids; None when there is none (deleted)."""
        stored = self._users.get(key)
        if stored is None:
            return None
        state = msgspec.Raw(stored) if isinstance(stored, bytes) else stored
        ids = self._ids.get(key, ())
        return state, (key, *ids) if self._index.get(key, key) == key else ids

    async def ping(self) -> bool:
        """Always reachable: it lives in this process."""
        return True

    def engine(self) -> Engine:
        """The live engine."""
        return self._engine()

    def holding(self, events: Iterable[Event]) -> contextlib.nullcontext[None]:
        """Nothing to hold: a load, its plan and its commit run without giving the event loop
        away until the webhooks are queued, so no other request sees a profile half-done."""
        return _NOT_HELD

    async def load(
        self, events: Sequence[Event], digests: Sequence[bytes], now: float
    ) -> Loaded:
        """The profiles the events name, decoded for this attempt (the plan changes them in
        place; what is held changes only when the plan is committed)."""
        if self.evictions.due_for_measuring(len(events)):
            self._measure_profiles()
        self._expire(now)
        users = self._users
        owners = self._index
        index: dict[str, str] = {}
        records: dict[str, Record] = {}
        for event in events:
            for id_ in identity.ids_of(event):
                key = owners.get(id_, id_)  # an id not indexed elsewhere is its profile's key
                if key in users:
                    index[id_] = key
                    if key not in records:
                        records[key] = Record(key, held(key, users[key]))
        seen = self._seen
        deliveries = self._deliveries  # copied: counted in the live ones only when committed
        return Loaded(
            index,
            records,
            {digest for digest in digests if seen_mark(digest) in seen},
            {cid: msgspec.structs.replace(tally) for cid, tally in deliveries.items()}
            if deliveries
            else {},
        )

    def discard(self, loaded: Loaded) -> None:
        """Nothing to undo: the states were decoded for the attempt; what is held is as it was."""

    async def commit(self, plan: Plan, loaded: Loaded, now: float) -> set[str]:
        """Apply a plan: merges, states, identity links, seen marks, recent events, results and
        stop tallies, then queue its webhooks. Never conflicts; staged for the data directory,
        which the runtime commits before answering."""
        users = self._users
        mark = self._mark
        for loser, target in plan.losers.items():
            if users.pop(loser, None) is not None:
                mark(loser)
            self._recent_merge(target, loser)
            if self._index.get(loser, loser) == loser:  # its key was one of its ids
                self._link(loser, target)
            for id_ in self._ids.pop(loser, ()):
                self._link(id_, target)
        for id_, key in plan.links.items():
            self._link(id_, key)
        keep_recent = self._limits.recent_events > 0
        seen = self._seen
        new_keys: list[int] = []
        for key, positions in plan.owner_events.items():
            state = plan.states.get(key)
            if not positions or state is None:
                continue
            users.pop(key, None)
            users[key] = kept(state)  # in last: the most recently seen
            for digest in plan.seen.get(key, ()):
                remembered = seen_mark(digest)
                seen[remembered] = now
                new_keys.append(remembered)
            ticks = plan.ticks.get(key)
            if ticks:
                self._count(ticks)
            if state.timers is not None:
                self._schedule(key, state.timers)
            if keep_recent:
                for event in plan.recent.get(key, ()):
                    self._remember(key, event)
            mark(key)
        if loaded.deliveries:
            self._deliveries.update(loaded.deliveries)
        webhooks = [w for outcome in plan.outcomes for w in outcome.webhooks]  # in event order
        if webhooks and self._outbox is not None:
            await self._outbox.put(webhooks)
        if self._disk is not None:
            if new_keys:
                self._seen_journal.append(now, pack_plain(new_keys))  # the caller commits
            if webhooks:
                self._mark_tallies(webhooks)
        return set()

    async def fire_due(self, now: float, *, event_time: bool = False) -> IngestResult:
        """Fire the absence timers due by `now` and queue their webhooks.

        With `event_time` (replay), each user's timers are decided at their due time rather than
        at `now`, in due order across users. What it changed is staged for the data directory; the
        runtime commits it.
        """
        heap = self._due
        if not heap or heap[0][0] > now:
            return IngestResult(0, 0, [], [])
        engine = self._engine()
        webhooks: list[WebhookRequest] = []
        decisions: list[Decision] = []
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._scheduled.get(key) != due:
                continue  # superseded by an earlier due time, or the user is gone
            del self._scheduled[key]
            stored = self._users.get(key)
            state = None if stored is None else held(key, stored)
            if state is None or not state.timers:
                continue
            outcome = engine.fire_due(
                state, due if event_time else now, deliveries=self._deliveries
            )
            self._users[key] = kept(state)
            self._mark(key)
            if outcome.ticks:
                self._count(outcome.ticks)
            webhooks.extend(outcome.webhooks)
            decisions.extend(outcome.decisions)
            if state.timers:
                self._schedule(key, state.timers)
        if webhooks and self._outbox is not None:
            await self._outbox.put(webhooks)
        if webhooks and self._disk is not None:
            self._mark_tallies(webhooks)
        return IngestResult(0, 0, webhooks, decisions)

    def _mark_tallies(self, webhooks: list[WebhookRequest]) -> None:
        """Fired webhooks count towards their campaigns' stop conditions: keep the tallies."""
        mark = self._tallies.mark
        for campaign_id in {webhook.campaign_id for webhook in webhooks}:
            if campaign_id in self._deliveries:
                mark(campaign_id)

    def _count(self, ticks: list[goals.Tick]) -> None:
        """Add an event's A/B ticks to the results; they are written with its profile."""
        changed = goals.add(self._results, ticks)
        if self._disk is not None:
            for campaign_id in changed:
                self._result_rows.mark(campaign_id)

    async def results(self, campaign_ids: Sequence[str]) -> dict[str, dict[str, Counts]]:
        """A/B counts per arm of each campaign named (copies)."""
        return {
            cid: {arm: msgspec.structs.replace(c) for arm, c in self._results.get(cid, {}).items()}
            for cid in campaign_ids
        }

    async def add_hourly(self, counts: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Add (fired, suppressed) decisions per (campaign, hour); keeps KEEP_HOURS hours."""
        for (campaign_id, hour), (fired, suppressed) in counts.items():
            hours = self._hourly.setdefault(campaign_id, {})
            before = hours.get(hour, (0, 0))
            hours[hour] = (before[0] + fired, before[1] + suppressed)
            for old in [h for h in hours if h <= hour - KEEP_HOURS]:
                del hours[old]
            if self._disk is not None:
                self._hour_rows.mark(campaign_id)

    async def hourly(
        self, campaign_ids: Sequence[str], since: int
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """(fired, suppressed) per hour from hour `since` on, per campaign."""
        return {
            cid: {h: n for h, n in self._hourly.get(cid, {}).items() if h >= since}
            for cid in campaign_ids
        }

    def pending_timers(self) -> int:
        """How many users have an absence timer pending."""
        return len(self._scheduled)

    async def stopped(self, now: float) -> dict[str, str]:
        """Campaigns stopped by their stop conditions, with the condition reached."""
        return self._engine().stopped(self._deliveries, now)

    def _schedule(self, key: str, timers: list[Timer]) -> None:
        due = timers[0].due  # the engine keeps them in due order
        if self._scheduled.get(key, float("inf")) > due:
            self._scheduled[key] = due
            heapq.heappush(self._due, (due, key))

    async def user_state(self, identity_: str) -> UserState | None:
        """The engine state of a user found by any of its ids or its key."""
        key = self._find(identity_)
        return None if key is None else held(key, self._users[key])

    async def lookup(self, identity_: str, now: float) -> UserView | None:
        """Find a profile by any of its ids or its key."""
        key = self._find(identity_)
        if key is None:
            return None
        state = held(key, self._users[key])
        recent = [event_as_message(event) for event in self._recent.events(key)]
        engine = self._engine()
        stopped = engine.stopped(self._deliveries, now)
        return UserView(key, engine.describe(state, now, stopped), recent)

    def _find(self, identity_: str) -> str | None:
        for id_ in identity.lookup_ids(identity_):
            key = self._index.get(id_, id_)
            if key in self._users:
                return key
        return identity_ if identity_ in self._users else None

    def __len__(self) -> int:
        return len(self._users)

    async def sample(
        self, deadline: float, limit: int | None = None
    ) -> AsyncIterator[tuple[UserState, int]]:
        """Every profile, newest first, yielding to the event loop every SLICE profiles so that
        ingest is not held up, until the deadline or the limit."""
        users = self._users
        keys = list(reversed(users))
        total = len(keys)
        for position, key in enumerate(keys):
            if limit is not None and position >= limit:
                return
            if position % SLICE == SLICE - 1:
                if time.monotonic() > deadline:
                    return
                await asyncio.sleep(0)
            stored = users.get(key)
            if stored is not None:
                yield held(key, stored), total

    def _link(self, id_: str, key: str) -> None:
        """Point an id at profile `key`, taking it from the profile that had it."""
        previous = self._index.get(id_, id_)  # not indexed: its own profile's key, if any
        if previous == key:
            return
        if previous != id_:
            others = tuple(i for i in self._ids.get(previous, ()) if i != id_)
            if others:
                self._ids[previous] = others
            else:
                self._ids.pop(previous, None)
        if previous in self._users:
            self._mark(previous)
        if id_ == key:  # back to the profile it is the key of: nothing to index
            del self._index[id_]
        else:
            self._index[id_] = key
            self._ids[key] = (*self._ids.get(key, ()), id_)
        self._mark(key)

    def _remember(self, key: str, event: Event) -> None:
        item = self._recent.add(key, event)
        if self._disk is not None:
            self._recent_rows.append(key, item)

    def _recent_merge(self, key: str, other: str) -> None:
        if other not in self._recent:
            return
        items = self._recent.merge(key, other)
        if self._disk is not None:
            self._recent_rows.reset(other, None)
            self._recent_rows.reset(key, items or None)

    def _expire(self, now: float) -> None:
        """Forget old messageIds and evict profiles unseen for the TTL or beyond the size bound."""
        if now >= self._forget_at or len(self._seen) > MAX_REMEMBERED_MESSAGES:
            self._forget_seen(now)
        capacity = self.evictions.capacity()
        if len(self._users) > capacity or now >= self._sweep_at:
            self._let_go(now, capacity)

    def _let_go(self, now: float, capacity: int) -> None:
        """Evict the profiles unseen for the TTL and, past `capacity`, the least recently seen
        (a hundredth more, so that the next requests need not look again), sparing at most
        SPARE_AT_MOST of those waiting to fire an absence trigger.

        Like `_forget_seen`, this reads the dict from its front, over the gaps its deleted
        entries leave there until it grows: hence a look every SWEEP_EVERY seconds for the TTL
        rather than on each request, and evictions for capacity in batches.
        """
        users = self._users
        cutoff = now - self._limits.user_ttl
        excess = len(users) - capacity
        if excess > 0:
            excess += capacity // 100
        going: list[tuple[str, bool]] = []  # key, and whether it expired
        spared: list[str] = []
        for key, stored in users.items():
            expired = held(key, stored).last_seen < cutoff
            if not expired and len(going) >= excess:
                break
            if not expired and key in self._scheduled and len(spared) < SPARE_AT_MOST:
                spared.append(key)  # a profile waiting to fire stays; the next oldest goes
                continue
            going.append((key, expired))
        for key in spared:
            users[key] = users.pop(key)
        for key, expired in going:
            self._evict(key)
            self.evictions.count("expired" if expired else "capacity", now)
        self._sweep_at = now + SWEEP_EVERY

    def _forget_seen(self, now: float) -> None:
        """Forget the dedupe marks older than DEDUPE_SECONDS, and the oldest past
        MAX_REMEMBERED_MESSAGES (down to FORGET_BELOW_MAX of them, so that a full store does
        not look again on every request).

        The marks are oldest first, so this reads from the front; but a dict's deleted entries
        stay as gaps at its front until it grows, and every look steps over them: looking every
        FORGET_EVERY seconds, rather than on each request, keeps that cost negligible.
        """
        seen = self._seen
        cutoff = now - DEDUPE_SECONDS
        keep = FORGET_BELOW_MAX if len(seen) > MAX_REMEMBERED_MESSAGES else len(seen)
        forgotten: list[int] = []
        for mark, at in seen.items():
            if at >= cutoff and len(seen) - len(forgotten) <= keep:
                break
            forgotten.append(mark)
        for mark in forgotten:
            del seen[mark]
        self._forget_at = now + FORGET_EVERY

    def _evict(self, key: str) -> None:
        """Let a profile go with everything that was its: ids, recent events, its timer."""
        del self._users[key]
        self._mark(key)
        if self._recent.pop(key) and self._disk is not None:
            self._recent_rows.reset(key, None)
        self._scheduled.pop(key, None)
        if len(self._due) > 2 * len(self._scheduled) + 1024:  # mostly stale entries: rebuild
            self._due = [(due, k) for k, due in self._scheduled.items()]
            heapq.heapify(self._due)
        for id_ in self._ids.pop(key, ()):
            if self._index.get(id_) == key:
                del self._index[id_]

    def _measure_profiles(self) -> None:
        """What the newest profiles take, for a memory budget (see `eviction`)."""
        newest = list(itertools.islice(reversed(self._users), ESTIMATE_SAMPLE))
        self.evictions.measure(
            (self._users[key], self._ids.get(key, ()), self._recent.blob(key))
            for key in newest
        )


_NOT_HELD: contextlib.nullcontext[None] = contextlib.nullcontext()


def kept(state: UserState) -> Kept:
    """A profile as held between events: encoded (a few hundred bytes instead of a tree of
    Python objects several times that), or the state itself when msgpack cannot carry it.

    The encoded form leaves the key out (it is the profile's key in the store and in the data
    directory, so `held` and `open` put it back): a visitor's id, it was a tenth of the bytes.
    """
    key = state.key
    state.key = ""
    try:
        return save_state(state)
    except OverflowError:  # an integer past 64 bits
        return state
    finally:
        state.key = key


def held(key: str, stored: Kept) -> UserState:
    """Profile `key` as held, decoded afresh (a copy the caller may change)."""
    if isinstance(stored, bytes):
        state = load_state(stored)
        state.key = key
        return state
    return stored


def seen_mark(digest: bytes) -> int:
    """What a message's dedupe digest is remembered as: MARK_BITS of it, as an int (masked
    rather than shifted: a shifted int keeps the allocation of the digest's size)."""
    return int.from_bytes(digest) & _MARK_MASK


def _ignore(_: str) -> None:
    """Where changes go when nothing is kept."""
