"""The shared store: per-user state in Redis or Redis Cluster, for any number of processes.

The pipeline (`collector.store.pipeline`) handles a request's events in a fixed number of round
trips, whatever the batch size:

1. `load` resolves every identity the events name (RESOLVE: GETEX, refreshing their TTL) and,
   in the same round trip, loads the profiles under the events' own keys (LOAD: version, state,
   and which of the events' messageIds each has seen); a second round trip loads the profiles
   the index pointed to that were not among them (none for anonymous visitors);
2. the pipeline runs every event in order, in this process, on the loaded states;
3. `commit`: one COMMIT script per shard writes each profile's new state, the messageIds, recent
   events, identity links and the webhooks (XADD to its shard's outbox stream), each profile
   only if its version is unchanged. So a webhook is queued exactly when the state change that
   fired it is stored, and an event answered 200 cannot lose its webhooks.

A profile whose version moved meanwhile (another process committed first) is a conflict: its
events are resolved, loaded and run again. Within one process, requests naming the same
identity wait for each other, so conflicts only arise between processes.

Identity merges (an event naming two existing profiles of one person) cost extra round trips,
as conflicts do: the merged-away profile is read in full and, when it lives in another cluster
shard, first frozen (FREEZE: it redirects to the survivor, and stale writers conflict), then
absorbed by the survivor's COMMIT, then cleaned (CLEAN). A process dying between those steps
leaves a frozen profile that the next event reaching it absorbs.

Absence timers: COMMIT keeps each profile's earliest due time in its shard's timer set. Every
process polls `fire_due`: CLAIM_TIMERS moves the due entries a lease ahead (so one process
takes them), the profiles are loaded, the engine fires their timers, and the same COMMIT (with
its version check) stores the state and queues the webhooks: a timer fires once however many
processes poll. A process killed between claim and commit leaves the entries to be claimed again
when the lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import msgspec

from collector.config.schema import StateSettings
from collector.engine.engine import Engine, Outcome
from collector.engine.profile import Decision, UserState, decode_state
from collector.engine.results import Counts
from collector.errors import Unavailable
from collector.events import Event
from collector.redis.commit import CommitBatch, Committer
from collector.redis.connection import (
    Command,
    RedisConnection,
    evalsha,
    raise_errors,
)
from collector.redis.keys import Keys
from collector.redis.scripts import CLAIM_TIMERS, DROP_TIMER, LOAD, RESOLVE, SAMPLE_PROFILES
from collector.redis.tallies import Tallies
from collector.store import identity
from collector.store.base import IngestResult, UserView, event_as_message
from collector.store.plan import MAX_CHAIN, Loaded, Plan, Record
from collector.webhook import WebhookRequest

log = logging.getLogger("tripwire.store")

MAX_SEEN_PER_USER = 10_000  # messageIds remembered per profile (within the 24 h)
TIMER_LEASE = 5.0  # seconds a claimed timer is left to its process before others may take it
TIMER_BATCH = 500  # due profiles claimed per shard and poll
SAMPLE_PROFILES_AT_MOST = 5_000  # profiles a sample reads by default
SCAN_KEYS = 2_000  # keys one call of the sampling script examines at most
HOURLY_TTL = 3 * 86400  # decisions per hour are kept this long after the last addition

_ENCODER = msgspec.msgpack.Encoder()
_EVENT_DECODER = msgspec.msgpack.Decoder(Event)


class RedisStore:
    """Per-user state in Redis, atomic per user across every process sharing it."""

    def __init__(
        self, connection: RedisConnection, engine: Callable[[], Engine], limits: StateSettings
    ) -> None:
        self.connection = connection
        self._engine = engine
        self._limits = limits
        self._ttl = max(1, int(limits.user_ttl))
        self._committer = Committer(connection, limits)
        self._locks: dict[str, asyncio.Lock] = {}
        self._users_of_lock: dict[str, int] = {}

    async def open(self) -> None:
        """Connect now if Redis answers; otherwise on first use."""
        with contextlib.suppress(Unavailable):
            await self.connection.client()

    async def close(self) -> None:
        """Nothing to save: Redis holds everything."""

    async def ping(self) -> bool:
        """True when Redis answers."""
        return await self.connection.ping()

    def engine(self) -> Engine:
        """The live engine."""
        return self._engine()

    def discard(self, loaded: Loaded) -> None:
        """Nothing to undo: the states were decoded for this attempt alone."""

    async def lookup(self, identity_: str, now: float) -> UserView | None:
        """Find a profile by any of its ids or its key."""
        found = await self._find(identity_)
        if found is None or found[0].state is None:
            return None
        record, recent = found
        assert record.state is not None
        messages = [event_as_message(_EVENT_DECODER.decode(blob)) for blob in recent]
        stopped = await self.stopped(now)
        profile = self._engine().describe(record.state, now, stopped)
        return UserView(record.key, profile, messages)

    async def stopped(self, now: float) -> dict[str, str]:
        """Campaigns stopped by their stop conditions (every process's deliveries counted)."""
        engine = self._engine()
        if not engine.rules.stopping:
            return {}
        tallies = Tallies(await self.connection.names(), engine, now)
        results = await self.connection.pipeline(tallies.commands(), "reading stop tallies")
        raise_errors(results)
        tallies.read(results)
        return engine.stopped(tallies.deliveries, now)

    async def fire_due(self, now: float) -> IngestResult:
        """Claim the absence timers due by `now` and fire them; each fires in one process only."""
        keys = await self.connection.names()
        claims = [
            evalsha(CLAIM_TIMERS, [keys.timers(shard)], [now, TIMER_LEASE, TIMER_BATCH])
            for shard in range(keys.shards)
        ]
        results = await self.connection.pipeline(claims, "claiming timers")
        raise_errors(results)
        claimed = sorted({key.decode() for found in results for key in found})
        webhooks: list[WebhookRequest] = []
        decisions: list[Decision] = []
        for _attempt in range(5):  # conflicts left after these wait for the lease to end
            if not claimed:
                break
            claimed = await self._fire_claimed(claimed, now, webhooks, decisions)
        return IngestResult(0, 0, webhooks, decisions)

    async def _fire_claimed(
        self,
        claimed: list[str],
        now: float,
        webhooks: list[WebhookRequest],
        decisions: list[Decision],
    ) -> list[str]:
        """Fire the claimed profiles' due timers; return the keys whose commit conflicted."""
        keys = await self.connection.names()
        engine = self._engine()
        tallies = Tallies(keys, engine, now)
        loads: list[Command] = [("HMGET", keys.profile(key), "v", "s", "to") for key in claimed]
        loaded = await self.connection.pipeline([*loads, *tallies.commands()], "loading timers")
        raise_errors(loaded)
        tallies.read(loaded[len(claimed) :])
        plan = Plan()
        records: dict[str, Record] = {}
        batch = CommitBatch()
        drops: list[Command] = []
        fired: dict[str, Outcome] = {}  # key -> what firing its timers did
        for key, fields in zip(claimed, loaded, strict=False):
            record = records[key] = _record(key, fields)
            if record.state is None or record.moved_to is not None:
                shard = keys.shard(key)
                drops.append(evalsha(DROP_TIMER, [keys.timers(shard), keys.profile(key)], [key]))
                continue
            outcome = engine.fire_due(record.state, now, deliveries=tallies.deliveries)
            plan.states[key] = outcome.state
            plan.webhooks[key] = [(0, w) for w in outcome.webhooks]
            plan.ticks[key] = outcome.ticks
            fired[key] = outcome
            self._committer.add(batch, plan, records, key, [], {}, {}, now, tallies)
        results = await self.connection.pipeline([*batch.commands(), *drops], "firing timers")
        raise_errors(results)
        conflicts = batch.refused(results)
        for key, outcome in fired.items():
            if key not in conflicts:
                webhooks.extend(outcome.webhooks)
                decisions.extend(outcome.decisions)
        return conflicts

    async def results(self, campaign_ids: Sequence[str]) -> dict[str, dict[str, Counts]]:
        """A/B counts per arm of each campaign named, summed over every shard."""
        keys = await self.connection.names()
        commands: list[Command] = [
            ("HGETALL", keys.results(shard, cid))
            for cid in campaign_ids
            for shard in range(keys.shards)
        ]
        replies = await self.connection.pipeline(commands, "reading results")
        raise_errors(replies)
        found: dict[str, dict[str, Counts]] = {cid: {} for cid in campaign_ids}
        position = 0
        for cid in campaign_ids:
            arms = found[cid]
            for _shard in range(keys.shards):
                reply = replies[position]
                position += 1
                for field, number in _pairs(reply):
                    arm, _, kind = _text(field).rpartition(":")
                    counts = arms.get(arm)
                    if counts is None:
                        counts = arms[arm] = Counts()
                    if kind == "a":
                        counts.assigned += int(number)
                    elif kind == "c":
                        counts.converted += int(number)
                    elif kind == "v":
                        counts.value += float(number)
        return found

    async def add_hourly(self, counts: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Add this process's decisions per (campaign, hour) to the shared counts."""
        keys = await self.connection.names()
        commands: list[Command] = []
        for (campaign_id, hour), (fired, suppressed) in counts.items():
            name = keys.hourly(campaign_id)
            if fired:
                commands.append(("HINCRBY", name, f"{hour}:f", fired))
            if suppressed:
                commands.append(("HINCRBY", name, f"{hour}:s", suppressed))
            commands.append(("EXPIRE", name, HOURLY_TTL))
        if commands:
            raise_errors(await self.connection.pipeline(commands, "counting decisions"))

    async def hourly(
        self, campaign_ids: Sequence[str], since: int
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """(fired, suppressed) per hour from hour `since` on, per campaign, every process's."""
        keys = await self.connection.names()
        replies = await self.connection.pipeline(
            [("HGETALL", keys.hourly(cid)) for cid in campaign_ids], "reading decisions"
        )
        raise_errors(replies)
        found: dict[str, dict[int, tuple[int, int]]] = {}
        for cid, reply in zip(campaign_ids, replies, strict=True):
            hours: dict[int, tuple[int, int]] = {}
            for field, number in _pairs(reply):
                hour_text, _, kind = _text(field).partition(":")
                hour = int(hour_text)
                if hour < since:
                    continue
                fired, suppressed = hours.get(hour, (0, 0))
                if kind == "f":
                    fired += int(number)
                else:
                    suppressed += int(number)
                hours[hour] = (fired, suppressed)
            found[cid] = hours
        return found

    async def user_state(self, identity_: str) -> UserState | None:
        """The engine state of a user found by anonymous id, user id or key."""
        found = await self._find(identity_)
        return None if found is None else found[0].state

    # -- one attempt: resolve, load, run, commit ------------------------------------------

    async def load(
        self, events: Sequence[Event], digests: Sequence[bytes], now: float
    ) -> RedisLoaded:
        """Resolve the events' identities and load their profiles and seen messageIds, with the
        stop tallies: one round trip, a second where the index points elsewhere than the
        events' own keys, more only to follow merge redirects."""
        keys = await self.connection.names()
        engine = self._engine()
        by_shard: dict[int, list[str]] = defaultdict(list)
        for id_ in sorted({i for event in events for i in identity.ids_of(event)}):
            by_shard[keys.shard(id_)].append(id_)
        tallies = Tallies(keys, engine, now)
        resolves = [
            evalsha(RESOLVE, [keys.identity(i) for i in ids], [self._ttl])
            for ids in by_shard.values()
        ]
        # Each event's own key is loaded whatever the index says (a new visitor's profile is
        # made under it), so it goes with the identities: for anonymous visitors, all there is.
        own: dict[str, set[bytes]] = defaultdict(set)
        for event, digest in zip(events, digests, strict=True):
            own[identity.new_key(event)].add(digest)
        loads = _Loads(keys, {key: (mids, set()) for key, mids in own.items()}, {})
        results = await self.connection.pipeline(
            [*resolves, *loads.commands, *tallies.commands()], "resolving identities"
        )
        raise_errors(results)
        tallies.read(results[len(resolves) + len(loads.commands) :])
        index = {
            i: found.decode()
            for ids, profiles in zip(by_shard.values(), results, strict=False)
            for i, found in zip(ids, profiles, strict=True)
            if found
        }
        wanted: dict[str, set[bytes]] = defaultdict(set)  # key -> dedupe keys to check it for
        for event, digest in zip(events, digests, strict=True):
            for key in {
                identity.new_key(event),
                *(index[i] for i in identity.ids_of(event) if i in index),
            }:
                wanted[key].add(digest)
        replies = results[len(resolves) : len(resolves) + len(loads.commands)]
        records, seen = await self._load(wanted, loads, replies)
        return RedisLoaded(index, records, seen, tallies)

    async def commit(self, plan: Plan, loaded: Loaded, now: float) -> set[str]:
        """Write every changed profile (one COMMIT call per shard); return the keys that
        conflicted."""
        assert isinstance(loaded, RedisLoaded)
        return await self._committer.commit(plan, loaded.records, now, loaded.tallies)

    async def _load(
        self, wanted: dict[str, set[bytes]], loads: _Loads, replies: list[Any]
    ) -> tuple[dict[str, Record], set[bytes]]:
        """Take the profiles `loads` asked for (their `replies`), then load the rest of `wanted`
        and follow merge redirects; return the profiles and the dedupe keys seen."""
        keys = await self.connection.names()
        records: dict[str, Record] = {}
        seen: set[bytes] = set()
        checked: dict[str, set[bytes]] = defaultdict(set)  # key -> dedupe keys checked against it
        for _depth in range(MAX_CHAIN):
            following = loads.take(replies, wanted, records, seen, checked)
            todo: dict[str, tuple[set[bytes], set[str]]] = {
                key: (mids, set()) for key, mids in wanted.items() if mids - checked[key]
            }
            for target, (mids, sources) in following.items():
                known = records.get(target)
                sources = {q for q in sources if known is None or q not in known.absorbed}
                if known is None or mids - checked[target] or sources:
                    more, markers = todo.setdefault(target, (set(), set()))
                    more |= mids
                    markers |= sources
            if not todo:
                break
            loads = _Loads(keys, todo, checked)
            replies = await self.connection.pipeline(loads.commands, "loading profiles")
            raise_errors(replies)
        return records, seen

    async def sample(
        self, deadline: float, limit: int | None = None
    ) -> AsyncIterator[tuple[UserState, int]]:
        """A sample of profiles (at most `limit`, SAMPLE_PROFILES_AT_MOST by default), shard by
        shard; the total is exact when every shard was read to its end, else scaled from the
        share of keys examined (see `scripts.SAMPLE_PROFILES`)."""
        connection = self.connection
        keys = await connection.names()
        per_shard = max(1, (limit or SAMPLE_PROFILES_AT_MOST) // keys.shards)
        states: list[UserState] = []
        total = 0.0
        for shard in range(keys.shards):
            prefix = keys.profiles(shard)
            cursor, found, examined, size = "0", 0, 0, 0
            while time.monotonic() < deadline and found < per_shard:
                args = [prefix, per_shard - found, SCAN_KEYS, cursor]
                replies = await connection.pipeline(
                    [evalsha(SAMPLE_PROFILES, [keys.timers(shard)], args)], "sampling profiles"
                )
                raise_errors(replies)
                cursor, seen, size, blobs = replies[0]
                cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
                examined += int(seen)
                found += len(blobs)
                states += [decode_state(blob) for blob in blobs]
                if cursor == "0":
                    break
            finished = cursor == "0"
            total += found if finished or not examined else found * max(int(size), 1) / examined
        known = max(round(total), len(states))
        for state in states:
            yield state, known

    # -- lookups and locks ---------------------------------------------------------------

    async def _find(self, identity_: str) -> tuple[Record, list[bytes]] | None:
        """Load the profile an identity (or a key) names, with its recent events."""
        keys = await self.connection.names()
        names = identity.lookup_ids(identity_)
        results = await self.connection.pipeline(
            [("GET", keys.identity(i)) for i in names], "looking up a user"
        )
        raise_errors(results)
        key = next((r.decode() for r in results if r), identity_)
        for _ in range(MAX_CHAIN):
            found = await self.connection.pipeline(
                [("HMGET", keys.profile(key), "v", "s", "to"), ("LRANGE", keys.recent(key), 0, -1)],
                "looking up a user",
            )
            raise_errors(found)
            record = _record(key, found[0])
            if record.moved_to is None:
                return (record, list(found[1])) if record.state is not None else None
            key = record.moved_to
        return None

    @contextlib.asynccontextmanager
    async def holding(self, events: Iterable[Event]) -> AsyncIterator[None]:
        """Serialise, within this process, requests that name the same identities (so that
        conflicts only arise between processes)."""
        held: list[asyncio.Lock] = []
        counted = sorted({i for event in events for i in identity.ids_of(event)})
        for name in counted:
            self._users_of_lock[name] = self._users_of_lock.get(name, 0) + 1
        try:
            for name in counted:
                lock = self._locks.get(name)
                if lock is None:
                    lock = self._locks[name] = asyncio.Lock()
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
            for name in counted:
                left = self._users_of_lock[name] - 1
                if left:
                    self._users_of_lock[name] = left
                else:
                    del self._users_of_lock[name]
                    self._locks.pop(name, None)


class _Loads:
    """LOAD calls, one per shard, for profiles each with the messageIds to check against it
    and the merge markers to read; `take` reads their replies."""

    __slots__ = ("_asked", "commands")

    def __init__(
        self,
        keys: Keys,
        todo: dict[str, tuple[set[bytes], set[str]]],
        checked: dict[str, set[bytes]],
    ) -> None:
        shards: dict[int, tuple[list[tuple[str, list[bytes], list[str]]], list[str], list[Any]]]
        shards = defaultdict(lambda: ([], [], []))
        for key, (mids, sources) in todo.items():
            fresh = sorted(mids - checked.get(key, set()))
            markers = sorted(sources)
            asked, load_keys, args = shards[keys.shard(key)]
            asked.append((key, fresh, markers))
            load_keys += (keys.profile(key), keys.seen(key))
            args += (len(markers), *markers, len(fresh), *fresh)
        self.commands = [evalsha(LOAD, load_keys, args) for _, load_keys, args in shards.values()]
        # per call: (key, messageIds checked, markers read) in order
        self._asked = [asked for asked, _, _ in shards.values()]

    def take(
        self,
        replies: list[Any],
        wanted: dict[str, set[bytes]],
        records: dict[str, Record],
        seen: set[bytes],
        checked: dict[str, set[bytes]],
    ) -> dict[str, tuple[set[bytes], set[str]]]:
        """Add the profiles loaded to `records`, the messageIds found to `seen` and those
        checked to `checked`; return the merge redirects to follow: where to, with which
        messageIds to check there and which frozen profiles to look for."""
        following: dict[str, tuple[set[bytes], set[str]]] = {}
        for asked, loaded in zip(self._asked, replies, strict=True):
            for (key, fresh, markers), fields, scores in zip(
                asked, loaded[::2], loaded[1::2], strict=True
            ):
                record = _record(key, fields, markers)
                if fresh:
                    seen.update(
                        m for m, score in zip(fresh, scores, strict=True) if score is not None
                    )
                    checked[key].update(fresh)
                records[key] = record
                if record.moved_to is None:
                    continue
                # Messages reaching a merged profile are checked against where it went, and a
                # frozen profile still holding data is absorbed unless a hop on its way has it.
                mids, sources = following.setdefault(record.moved_to, (set(), set()))
                mids |= wanted.get(key, set()) | checked[key]
                sources |= {q for q in markers if q not in record.absorbed}
                if record.state is not None:
                    sources.add(key)
        return following


class RedisLoaded(Loaded):
    """What one attempt loaded, with the stop tallies its commit checks."""

    def __init__(
        self,
        index: dict[str, str],
        records: dict[str, Record],
        seen: set[bytes],
        tallies: Tallies,
    ) -> None:
        super().__init__(index, records, seen, tallies.deliveries)
        self.tallies = tallies


def _record(key: str, fields: Sequence[bytes | None], checks: Sequence[str] = ()) -> Record:
    """A profile from its hash fields `v`, `s`, `to` and then one `a:` marker per check."""
    version, state, moved_to = fields[0], fields[1], fields[2]
    return Record(
        key,
        decode_state(state) if state else None,
        int(version) if version else 0,
        moved_to.decode() if moved_to else None,
        {q for q, flag in zip(checks, fields[3:], strict=True) if flag},
    )


def _pairs(reply: Any) -> Iterable[tuple[Any, Any]]:
    """A HGETALL reply's (field, value) pairs, whether the client gave a dict or a flat list."""
    if isinstance(reply, dict):
        return list(reply.items())
    return list(zip(reply[::2], reply[1::2], strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
