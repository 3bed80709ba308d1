"""Committing a plan to Redis: one COMMIT script call per shard, after the reads a merge needs.

The call carries every profile of its shard; for each it writes the new state, the messageIds,
recent events, identity links and its webhooks (XADD to the shard's outbox stream) only if the
profile's version is unchanged, and counts its stop tallies and A/B results in the same step.
A merge first reads the merged-away profiles' recent events and messageIds and, across cluster
shards, freezes them (FREEZE) so that stale writers conflict; once committed they are cleaned
(CLEAN).
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Any

import msgspec

from collector.config.schema import StateSettings
from collector.delivery.outbox import Envelope
from collector.engine import goals
from collector.engine.engine import new_state
from collector.engine.profile import next_due
from collector.events import Event
from collector.redis.connection import Command, RedisConnection, evalsha, raise_errors
from collector.redis.keys import Keys
from collector.redis.scripts import CLEAN, COMMIT, FREEZE, REDIRECT
from collector.redis.tallies import Tallies
from collector.store.base import DEDUPE_SECONDS, bounded_recent
from collector.store.plan import MAX_CHAIN, Plan, Record

MAX_SEEN_PER_USER = 10_000  # messageIds remembered per profile (within the 24 h)

_ENCODER = msgspec.msgpack.Encoder()
_EVENT_DECODER = msgspec.msgpack.Decoder(Event)


@lru_cache(maxsize=1)
def _as_text(now: float) -> tuple[str, str]:
    """`now` and the dedupe horizon as COMMIT's text (the bytes hiredis would send for the
    floats: their repr), made once for all the profiles of a commit: hiredis took about 1.4 µs
    to pack each float, two thirds of what a profile's other values took together, and every
    messageId's mark carried one."""
    return repr(now), repr(now - DEDUPE_SECONDS)


class Committer:
    """Writes plans for one connection."""

    def __init__(self, connection: RedisConnection, limits: StateSettings) -> None:
        self.connection = connection
        self._limits = limits
        self._ttl = max(1, int(limits.user_ttl))

    async def commit(
        self, plan: Plan, records: dict[str, Record], now: float, tallies: Tallies
    ) -> set[str]:
        keys = await self.connection.names()
        conflicts: set[str] = set()
        changed = [k for k in plan.owner_events if plan.seen.get(k) or plan.pending.get(k)]
        merged: dict[str, list[str]] = defaultdict(list)  # key -> profiles merged into it now
        for loser, target in plan.losers.items():
            merged[target].append(loser)
        # A merge needs the merged-away profiles' recent events and messageIds; one in another
        # shard is frozen first, so that writers still holding its old version conflict.
        reads: list[tuple[str, str]] = []
        commands: list[Command] = []
        for target in changed:
            absorbed = [*merged.get(target, []), *plan.pending.get(target, [])]
            if not absorbed:
                continue
            reads.append((target, "recent"))
            commands.append(("LRANGE", keys.recent(target), 0, -1))
            for other in absorbed:
                if other in plan.losers and keys.shard(other) != keys.shard(target):
                    args = [records[other].version, target, self._ttl]
                    commands.append(
                        evalsha(FREEZE, [keys.profile(other), keys.identity(other)], args)
                    )
                    reads.append((other, "freeze"))
                commands.append(("LRANGE", keys.recent(other), 0, -1))
                reads.append((other, "recent"))
                commands.append(("ZRANGE", keys.seen(other), 0, -1, "WITHSCORES"))
                reads.append((other, "seen"))
        recent_of: dict[str, list[bytes]] = {}
        seen_of: dict[str, list[Any]] = {}
        results = await self.connection.pipeline(commands, "merging profiles")
        raise_errors(results)
        for (key, kind), result in zip(reads, results, strict=True):
            if kind == "freeze":
                if result != 1:
                    conflicts.add(plan.losers[key])
            elif kind == "recent":
                recent_of[key] = list(result)
            else:
                seen_of[key] = list(result)
        batch = CommitBatch()
        for target in changed:
            if target not in conflicts:
                self.add(
                    batch, plan, records, target, merged.get(target, []), recent_of, seen_of, now,
                    tallies,
                )
        commands = batch.commands()
        for key, target in plan.stale.items():
            commands.append(
                evalsha(CLEAN, [keys.profile(key), keys.recent(key), keys.seen(key)], [target])
            )
        commands += _shortcuts(records, keys)
        results = await self.connection.pipeline(commands, "storing profiles")
        raise_errors(results)
        conflicts.update(batch.refused(results))
        cleanups: list[Command] = []
        for target in batch.profiles():
            if target in conflicts:
                continue
            for other in [*merged.get(target, []), *plan.pending.get(target, [])]:
                if keys.shard(other) != keys.shard(target):
                    cleanup_keys = [keys.profile(other), keys.recent(other), keys.seen(other)]
                    cleanups.append(evalsha(CLEAN, cleanup_keys, [target]))
        if cleanups:
            raise_errors(await self.connection.pipeline(cleanups, "cleaning merged profiles"))
        return conflicts

    def add(
        self,
        batch: CommitBatch,
        plan: Plan,
        records: dict[str, Record],
        key: str,
        losers: list[str],
        recent_of: dict[str, list[bytes]],
        seen_of: dict[str, list[Any]],
        now: float,
        tallies: Tallies,
    ) -> None:
        """Add one profile's part of its shard's COMMIT call to `batch`, and the SETs linking
        identities of other shards."""
        keys = self.connection.keys  # connected: called after loading
        shard = keys.shard(key)
        record = records.get(key)
        same = [o for o in losers if keys.shard(o) == shard]
        folded = [*losers, *plan.pending.get(key, [])]  # every profile merged into this one
        absorbed = [o for o in folded if o not in same]
        links = [i for i, k in plan.links.items() if k == key]
        local_links = [i for i in links if keys.shard(i) == shard]
        at, forget_before = _as_text(now)
        pairs: list[Any] = []
        for mid in plan.seen.get(key, []):
            pairs.extend((at, mid))
        events = list(plan.recent.get(key, []))
        if folded:
            old = [blob for k in (key, *folded) for blob in recent_of.get(k, [])]
            events = sorted([*map(_EVENT_DECODER.decode, old), *events], key=lambda e: e.timestamp)
            for other in folded:
                for member, score in seen_of.get(other, []):
                    pairs.extend((score, member))
        cap = self._limits.recent_events
        size = self._limits.recent_event_bytes
        recent = [bounded_recent(e, size, _ENCODER.encode) for e in events[-cap:]] if cap else []
        hooks: list[Any] = []
        for _, webhook in plan.webhooks.get(key, []):
            envelope = Envelope(request=webhook, enqueued_at=now, due_at=now)
            hooks.extend((webhook.webhook_id, _ENCODER.encode(envelope)))
        script_keys = [
            keys.profile(key),
            keys.recent(key),
            keys.seen(key),
            keys.outbox(shard),
            keys.outbox_live(shard),
            *(keys.identity(i) for i in local_links),
        ]
        for other in same:
            script_keys += [
                keys.profile(other),
                keys.recent(other),
                keys.seen(other),
                keys.identity(other),
            ]
        state = plan.states.get(key) or new_state(key, now)
        webhooks = [webhook for _, webhook in plan.webhooks.get(key, [])]
        stop_keys, stop_args = tallies.commit_part(shard, webhooks) if webhooks else ([], [])
        counted: list[Any] = []
        ticks = plan.ticks.get(key)
        if ticks:
            hashes: dict[str, int] = {}
            for (campaign_id, arm), counts in goals.summed(ticks).items():
                index = hashes.get(campaign_id)
                if index is None:
                    script_keys.append(keys.results(shard, campaign_id))
                    index = hashes[campaign_id] = len(script_keys)  # Lua's KEYS are 1-based
                value = repr(counts.value) if counts.value else "0"
                counted += [index, arm, counts.assigned, counts.converted, value]
        script_keys += [keys.timers(shard), *stop_keys]
        due = next_due(state)
        if due is not None:
            timer = repr(due)
        else:
            timer = "-" if (record is not None and record.had_timers) or folded else ""
        args: list[Any] = [
            record.version if record is not None else 0,
            _ENCODER.encode(state),
            self._ttl,
            forget_before,
            cap,
            MAX_SEEN_PER_USER,
            key,
            1 if folded else 0,
            len(local_links),
            len(same),
            *(records[o].version for o in same),
            len(pairs) // 2,
            *pairs,
            len(recent),
            *recent,
            len(hooks) // 2,
            *hooks,
            len(absorbed),
            *absorbed,
            len(counted) // 5,
            *counted,
            *stop_args,
            timer,
            len(stop_args) // 6,
        ]
        batch.add(shard, key, script_keys, args)
        batch.extra += [
            ("SET", keys.identity(i), key, "EX", self._ttl) for i in links if i not in local_links
        ]


class CommitBatch:
    """The COMMIT calls of one round trip: one per shard, carrying every profile of the shard
    (a call per profile cost the process as much as the work it carried), then `extra`
    commands (identity links across shards)."""

    __slots__ = ("_shards", "extra")

    def __init__(self) -> None:
        # shard -> (its profiles, its COMMIT keys, its COMMIT values after the profile count)
        self._shards: dict[int, tuple[list[str], list[str], list[Any]]] = {}
        self.extra: list[Command] = []

    def add(self, shard: int, key: str, keys: list[str], args: list[Any]) -> None:
        """Add a profile's keys and values to its shard's call."""
        part = self._shards.get(shard)
        if part is None:
            part = self._shards[shard] = ([], [], [])
        profiles, all_keys, all_args = part
        profiles.append(key)
        all_keys += keys
        all_args += (len(keys), len(args), *args)

    def profiles(self) -> list[str]:
        """Every profile committed, shard by shard."""
        return [key for profiles, _, _ in self._shards.values() for key in profiles]

    def commands(self) -> list[Command]:
        """The COMMIT calls, first in the round trip, then the extra commands."""
        return [
            evalsha(COMMIT, keys, [len(profiles), *args])
            for profiles, keys, args in self._shards.values()
        ] + self.extra

    def refused(self, results: list[Any]) -> list[str]:
        """The profiles whose commit was refused (0: a version moved; -1: a stop condition would
        be passed): their events run again. `results` start with the COMMIT calls' replies."""
        return [
            key
            for (profiles, _, _), versions in zip(self._shards.values(), results, strict=False)
            for key, version in zip(profiles, versions, strict=True)
            if version in (0, -1)
        ]


def _shortcuts(records: dict[str, Record], keys: Keys) -> list[Command]:
    """REDIRECT calls pointing pure redirects met on a chain of two or more at its end."""
    commands: list[Command] = []
    for key, record in records.items():
        hop = record.moved_to
        if hop is None or record.state is not None or hop not in records:
            continue
        end = hop
        for _ in range(MAX_CHAIN):
            following = records.get(end)
            if following is None or following.moved_to is None:
                break
            end = following.moved_to
        if end != hop and end != key:
            commands.append(evalsha(REDIRECT, [keys.profile(key)], [hop, end]))
    return commands
