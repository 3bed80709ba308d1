"""The embedded store: every user's state in this process, saved to the data directory on close.

All work for a batch happens without awaiting, so within one event loop each user's update is
atomic. Inactive profiles are evicted by TTL and by a size bound, least recently seen first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from collector.engine import Engine, new_state
from collector.events import Event
from collector.profile import Decision, UserState
from collector.schema import StateSettings
from collector.store import identity
from collector.store.base import IngestResult, UserView, event_as_message
from collector.webhook import WebhookRequest

log = logging.getLogger("tripwire.store")

DEDUPE_SECONDS = 24 * 3600.0
MAX_REMEMBERED_MESSAGES = 5_000_000
STATE_FILE = "state.msgpack"


class _Snapshot(msgspec.Struct):
    """What survives a restart of a memory-mode process."""

    users: dict[str, UserState]
    index: dict[str, str]
    seen: list[tuple[str, float]]
    recent: dict[str, list[Event]]


class MemoryStore:
    """Per-user state held in this process (the default, zero set-up mode)."""

    def __init__(
        self, engine: Callable[[], Engine], limits: StateSettings, data_dir: str | None
    ) -> None:
        self._engine = engine
        self._limits = limits
        self._file = Path(data_dir) / STATE_FILE if data_dir else None
        self._users: OrderedDict[str, UserState] = OrderedDict()  # least recently seen first
        self._index: dict[str, str] = {}  # namespaced id -> profile key
        self._ids: dict[str, list[str]] = {}  # profile key -> its namespaced ids
        self._seen: OrderedDict[str, float] = OrderedDict()  # messageId -> time first seen
        self._recent: dict[str, deque[Event]] = {}

    async def open(self) -> None:
        """Load the state a previous run saved, if any."""
        if self._file is None or not self._file.exists():
            return
        snapshot = msgspec.msgpack.decode(self._file.read_bytes(), type=_Snapshot)
        self._users = OrderedDict(snapshot.users)
        self._index = dict(snapshot.index)
        for id_, key in self._index.items():
            self._ids.setdefault(key, []).append(id_)
        self._seen = OrderedDict(snapshot.seen)
        size = self._limits.recent_events
        self._recent = {k: deque(v, maxlen=size) for k, v in snapshot.recent.items()}
        log.info("loaded %d profiles from %s", len(self._users), self._file)

    async def close(self) -> None:
        """Save every profile to the data directory."""
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        snapshot = _Snapshot(
            users=dict(self._users),
            index=self._index,
            seen=list(self._seen.items()),
            recent={k: list(v) for k, v in self._recent.items()},
        )
        temporary = self._file.with_suffix(".tmp")
        temporary.write_bytes(msgspec.msgpack.encode(snapshot))
        temporary.replace(self._file)

    async def ping(self) -> bool:
        """Always reachable: it lives in this process."""
        return True

    async def ingest(self, events: Sequence[Event], now: float) -> IngestResult:
        """Dedupe and process each event against its user's state, in order."""
        engine = self._engine()
        webhooks: list[WebhookRequest] = []
        decisions: list[Decision] = []
        accepted = duplicates = 0
        self._expire(now)
        for event in events:
            if event.message_id in self._seen:
                duplicates += 1
                continue
            self._seen[event.message_id] = now
            accepted += 1
            key = self._resolve(event, engine, now)
            state = self._users.get(key) or new_state(key, now)
            outcome = engine.process(state, event, now)
            self._users[key] = outcome.state
            self._users.move_to_end(key)
            self._remember(key, event)
            webhooks.extend(outcome.webhooks)
            decisions.extend(outcome.decisions)
        return IngestResult(accepted, duplicates, webhooks, decisions)

    async def user_state(self, identity_: str) -> UserState | None:
        """The engine state of a user found by any of its ids or its key."""
        key = self._find(identity_)
        return None if key is None else self._users[key]

    async def lookup(self, identity_: str, now: float) -> UserView | None:
        """Find a profile by any of its ids or its key."""
        key = self._find(identity_)
        if key is None:
            return None
        state = self._users[key]
        recent = [event_as_message(e) for e in self._recent.get(key, ())]
        return UserView(key, self._engine().describe(state, now), recent)

    def _find(self, identity_: str) -> str | None:
        ids = identity.lookup_ids(identity_)
        key = next((self._index[i] for i in ids if i in self._index), identity_)
        return key if key in self._users else None

    def __len__(self) -> int:
        return len(self._users)

    def _resolve(self, event: Event, engine: Engine, now: float) -> str:
        """The key of the event's profile, merging profiles the event shows to be one person."""
        resolution = identity.resolve(event, self._owner, self._user_of)
        key = resolution.key
        for other in resolution.merge:
            state = self._users.get(key) or new_state(key, now)
            self._users[key] = engine.merge(state, self._users.pop(other))
            self._recent_merge(key, other)
            for id_ in self._ids.pop(other, []):
                self._link(id_, key)
        for id_ in resolution.link:
            self._link(id_, key)
        return key

    def _owner(self, id_: str) -> str | None:
        key = self._index.get(id_)
        return key if key in self._users else None

    def _user_of(self, key: str) -> str | None:
        return self._users[key].user_id

    def _link(self, id_: str, key: str) -> None:
        previous = self._index.get(id_)
        if previous == key:
            return
        if previous is not None and previous in self._ids:
            self._ids[previous] = [i for i in self._ids[previous] if i != id_]
        self._index[id_] = key
        self._ids.setdefault(key, []).append(id_)

    def _remember(self, key: str, event: Event) -> None:
        if self._limits.recent_events == 0:
            return
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque(maxlen=self._limits.recent_events)
        recent.append(event)

    def _recent_merge(self, key: str, other: str) -> None:
        merged = sorted(
            [*self._recent.pop(other, ()), *self._recent.get(key, ())], key=lambda e: e.timestamp
        )
        self._recent[key] = deque(merged, maxlen=self._limits.recent_events)

    def _expire(self, now: float) -> None:
        """Forget old messageIds and evict profiles unseen for the TTL or beyond the size bound."""
        seen = self._seen
        while seen and (
            len(seen) > MAX_REMEMBERED_MESSAGES or next(iter(seen.values())) < now - DEDUPE_SECONDS
        ):
            seen.popitem(last=False)
        users = self._users
        ttl = self._limits.user_ttl
        while users:
            key, state = next(iter(users.items()))
            if len(users) <= self._limits.max_users and state.last_seen >= now - ttl:
                break
            users.popitem(last=False)
            self._recent.pop(key, None)
            for id_ in self._ids.pop(key, []):
                if self._index.get(id_) == key:
                    del self._index[id_]
