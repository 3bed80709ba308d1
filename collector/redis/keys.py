"""Every Redis key name Tripwire uses, in one place.

Keys are grouped in shards. A shard's keys share the hash tag `{N}`, so in Redis Cluster they
live in one slot and one Lua script may touch all of them atomically. A profile, everything
about it (state and version, recent events, seen messageIds) and its own identity entry live in
the shard of its key; so does the outbox stream that its webhooks are written to, which lets a
single script commit a user's new state, the dedupe marks and the webhooks together.

A single server uses one shard (`{0}`): every key is local and one stream carries the outbox.
A cluster uses `CLUSTER_SHARDS` shards, spread over the masters by the slots of their tags;
delivery workers read every shard's stream.

    tw:{N}:p:<profile>   hash   v (version), s (UserState msgpack), to (merged into), a:<key>
    tw:{N}:r:<profile>   list   recent events (msgpack), newest last, capped
    tw:{N}:d:<profile>   zset   messageIds seen in the last 24 h, scored by time
    tw:{N}:i:<id>        string the profile key an identity (`a:…`, `u:…`) belongs to
    tw:{N}:t             zset   profile keys scored by their earliest absence timer's due time
    tw:{N}:k:<campaign>  string deliveries of a campaign with stop conditions, by this shard
    tw:{N}:k:<campaign>:<day>  string the same on one local day (expires after a few days)
    tw:{N}:x:<campaign>  hash   A/B results of a campaign's users of this shard: <arm>:a users
                                assigned, <arm>:c converted, <arm>:v goal value
    tw:{N}:o             stream pending webhooks (consumer group `tripwire`)
    tw:{N}:ol            hash   delivery id -> stream entry id, or "r" while scheduled for retry
    tw:{N}:or            zset   envelopes (msgpack) scheduled for retry, scored by due time
    tw:{N}:ox            hash   delivery id -> dead letter (msgpack)
    tw:{N}:oxt           zset   delivery id scored by time of death (order, capacity)
    tw:usage:<period>    string deliveries counted against the monthly quota
    tw:hourly:<campaign> hash   decisions per hour: <hour>:f fired, <hour>:s suppressed
    tw:{campaigns}       hash   campaign id -> campaign JSON (or a deletion marker)
    tw:{campaigns}:v     string version counter, bumped with every change (same slot)
    tw:deliveries        stream the delivery log, capped
"""

from __future__ import annotations

import zlib
from typing import Final

PREFIX: Final = "tw"
CLUSTER_SHARDS: Final = 16
GROUP: Final = "tripwire"  # the outbox streams' consumer group


class Keys:
    """Key names for one deployment: 1 shard on a single server, CLUSTER_SHARDS on a cluster."""

    __slots__ = ("_tags", "shards")

    def __init__(self, shards: int = 1) -> None:
        self.shards = shards
        self._tags = [f"{PREFIX}:{{{n}}}" for n in range(shards)]

    def shard(self, name: str) -> int:
        """The shard of a profile key or identity."""
        if self.shards == 1:
            return 0
        return zlib.crc32(name.encode()) % self.shards

    def profile(self, key: str) -> str:
        """Hash with a profile's version and state."""
        return f"{self._tags[self.shard(key)]}:p:{key}"

    def recent(self, key: str) -> str:
        """List of a profile's recent events."""
        return f"{self._tags[self.shard(key)]}:r:{key}"

    def seen(self, key: str) -> str:
        """Sorted set of the messageIds a profile's events carried in the last 24 h."""
        return f"{self._tags[self.shard(key)]}:d:{key}"

    def identity(self, id_: str) -> str:
        """The entry pointing a namespaced id at its profile key."""
        return f"{self._tags[self.shard(id_)]}:i:{id_}"

    def profiles(self, shard: int) -> str:
        """What the names of a shard's profile hashes start with."""
        return f"{self._tags[shard]}:p:"

    def timers(self, shard: int) -> str:
        """Sorted set of a shard's profiles with absence timers, by earliest due time."""
        return f"{self._tags[shard]}:t"

    def tally(self, shard: int, campaign_id: str, day: int | None = None) -> str:
        """Counter of a campaign's deliveries by a shard's users: in total, or on a local day."""
        suffix = "" if day is None else f":{day}"
        return f"{self._tags[shard]}:k:{campaign_id}{suffix}"

    def results(self, shard: int, campaign_id: str) -> str:
        """Hash of a campaign's A/B counters (users assigned, converted, value) by a shard."""
        return f"{self._tags[shard]}:x:{campaign_id}"

    def outbox(self, shard: int) -> str:
        """Stream of a shard's pending webhooks."""
        return f"{self._tags[shard]}:o"

    def outbox_live(self, shard: int) -> str:
        """Hash of a shard's undelivered delivery ids."""
        return f"{self._tags[shard]}:ol"

    def outbox_retries(self, shard: int) -> str:
        """Sorted set of a shard's envelopes waiting for their next attempt."""
        return f"{self._tags[shard]}:or"

    def dead(self, shard: int) -> str:
        """Hash of a shard's dead letters."""
        return f"{self._tags[shard]}:ox"

    def dead_order(self, shard: int) -> str:
        """Sorted set of a shard's dead letters by time of death."""
        return f"{self._tags[shard]}:oxt"

    def outbox_keys(self, shard: int) -> list[str]:
        """The keys every outbox script of a shard is given, in a fixed order."""
        return [
            self.outbox(shard),
            self.outbox_live(shard),
            self.outbox_retries(shard),
            self.dead(shard),
            self.dead_order(shard),
        ]

    @staticmethod
    def usage(period: str) -> str:
        """Counter of deliveries in a quota period (e.g. 2026-12)."""
        return f"{PREFIX}:usage:{period}"

    @staticmethod
    def hourly(campaign_id: str) -> str:
        """Hash of a campaign's fired and suppressed decisions per hour (every process adds)."""
        return f"{PREFIX}:hourly:{campaign_id}"

    @staticmethod
    def session(digest: str) -> str:
        """A live dashboard session, by the digest of its id."""
        return f"{PREFIX}:session:{digest}"

    @staticmethod
    def campaigns() -> str:
        """Hash of campaigns changed through the admin API."""
        return f"{PREFIX}:{{campaigns}}"

    @staticmethod
    def campaigns_version() -> str:
        """Counter bumped on every campaign change."""
        return f"{PREFIX}:{{campaigns}}:v"

    @staticmethod
    def delivery_log() -> str:
        """Capped stream of delivery attempts."""
        return f"{PREFIX}:deliveries"
