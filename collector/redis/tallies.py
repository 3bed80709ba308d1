"""Stop conditions' delivery tallies in Redis: loaded with each attempt, checked by COMMIT.

Each shard counts the deliveries of its own users (`Keys.tally`), so that COMMIT can check a
campaign's limit and count its new deliveries in the same script that queues the webhooks:
nothing is counted that was not queued, and no process can queue past the limit. A profile's
commit is refused (-1) when the shard's count, plus the other shards' counts as loaded, plus its
new deliveries would pass a limit; the store then runs its events again on fresh tallies, and
the engine suppresses them (`max_deliveries`, `max_deliveries_per_day`).

On a single server there is one shard and the limit is exact. On a cluster, deliveries
committed in other shards between the load and the commit are not seen by the check, so
concurrent traffic can pass a limit by what those shards queued meanwhile.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from collector.engine.engine import Engine
from collector.engine.profile import Tally
from collector.redis.keys import Keys
from collector.webhook import WebhookRequest

DAY_TTL = 3 * 86400  # a day's counter outlives the day by enough for any timezone


class Tallies:
    """The tallies of every campaign with stop conditions, as loaded for one attempt."""

    def __init__(self, keys: Keys, engine: Engine, now: float) -> None:
        self.keys = keys
        self.campaigns = engine.rules.stopping
        self.day = engine.rules.calendar.day_index(now)
        self.deliveries: dict[str, Tally] = {}  # summed over shards: what the engine reads
        self._own: dict[tuple[str, int], tuple[int, int]] = {}  # (campaign, shard) -> counts
        self._loaded: dict[str, tuple[int, int]] = {}  # as loaded (the engine counts on)

    def commands(self) -> list[tuple[Any, ...]]:
        """GETs of every tally, to send with the attempt's first round trip."""
        commands: list[tuple[Any, ...]] = []
        for campaign in self.campaigns:
            for shard in range(self.keys.shards):
                commands.append(("GET", self.keys.tally(shard, campaign.id)))
                commands.append(("GET", self.keys.tally(shard, campaign.id, self.day)))
        return commands

    def read(self, results: list[Any]) -> None:
        """Take the replies to `commands`, in order."""
        position = 0
        for campaign in self.campaigns:
            total = in_day = 0
            for shard in range(self.keys.shards):
                own_total = int(results[position] or 0)
                own_day = int(results[position + 1] or 0)
                position += 2
                self._own[campaign.id, shard] = (own_total, own_day)
                total += own_total
                in_day += own_day
            self.deliveries[campaign.id] = Tally(total, self.day, in_day)
            self._loaded[campaign.id] = (total, in_day)

    def commit_part(
        self, shard: int, webhooks: list[WebhookRequest]
    ) -> tuple[list[str], list[Any]]:
        """COMMIT's stop keys and values for a profile of `shard` that queues `webhooks`."""
        fired = Counter(w.campaign_id for w in webhooks)
        keys: list[str] = []
        args: list[Any] = []
        for campaign in self.campaigns:
            delta = fired.get(campaign.id, 0)
            if not delta:
                continue
            total, in_day = self._loaded.get(campaign.id, (0, 0))
            own_total, own_day = self._own.get((campaign.id, shard), (0, 0))
            keys.append(self.keys.tally(shard, campaign.id))
            keys.append(self.keys.tally(shard, campaign.id, self.day))
            args += [
                delta,
                -1 if campaign.stop_total is None else campaign.stop_total,
                -1 if campaign.stop_day is None else campaign.stop_day,
                total - own_total,
                in_day - own_day,
                DAY_TTL,
            ]
        return keys, args
