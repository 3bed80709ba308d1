"""Redis mode's parts, one bundle sharing one connection: store, outbox, delivery log, sessions,
the campaign, variable and segment changes and the decision counts, shared by every process
using the same Redis.

    backend = RedisBackend(settings.store, settings, live, metrics)
    await backend.open()       # connects if Redis answers, applies everyone's campaign changes
    await backend.close()
"""

from __future__ import annotations

import asyncio
from collections import Counter

from collector.config.schema import CampaignSpec
from collector.config.settings import Settings
from collector.definitions import DefinitionChange, KeptChanges
from collector.live import LiveConfig
from collector.metrics import IngestMetrics
from collector.redis.campaignsync import RedisCampaignSync
from collector.redis.campaignsync import read_changes as read_campaign_changes
from collector.redis.connection import RedisConnection
from collector.redis.counts import Label, RedisCounts
from collector.redis.definitionsync import RedisDefinitionSync
from collector.redis.definitionsync import read_changes as read_definition_changes
from collector.redis.deliverylog import RedisDeliveryLog
from collector.redis.outbox import RedisOutbox
from collector.redis.sessions import RedisSessions
from collector.redis.store import RedisStore


class RedisBackend:
    """Store, outbox, delivery log, sessions, campaign sync and counts on one Redis (or Cluster)."""

    def __init__(
        self, url: str, settings: Settings, live: LiveConfig, metrics: IngestMetrics
    ) -> None:
        self._live = live
        self.connection = RedisConnection(url)
        self.store = RedisStore(self.connection, lambda: live.engine, settings.config.state)
        self.outbox = RedisOutbox(self.connection)
        self.delivery_log = RedisDeliveryLog(self.connection)
        self.sessions = RedisSessions(self.connection)
        self.definitions = RedisDefinitionSync(self.connection, live)
        self.campaigns = RedisCampaignSync(self.connection, live.put, live.remove)
        self.counts = RedisCounts(self.connection, metrics.decision_counts)

    async def open(self) -> None:
        """Connect if Redis answers (else on first use); apply and follow campaign changes."""
        await self.store.open()
        await self.definitions.start()  # before the campaigns, which may use them
        await self.campaigns.start()
        await self.counts.start()

    async def close(self) -> None:
        """Add the last counts, write the delivery log's last entries and disconnect."""
        await self.store.close()
        await self.counts.stop()
        await self.campaigns.stop()
        await self.definitions.stop()
        try:
            await self.delivery_log.flush()
        finally:
            await self.connection.close()

    def failure(self) -> str | None:
        """Nothing local can stop events being kept (Redis answering is `store.ping`)."""
        return None

    async def keep(self) -> None:
        """Nothing to wait for: every change was written to Redis as it was made."""

    def decision_counts(self) -> Counter[Label]:
        """Every process's decisions by (campaign, outcome, reason)."""
        return self.counts.current()

    async def put_campaign(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> None:
        """Add or replace a campaign in every process, this one first; `if_unchanged` is
        checked in Redis, where it is written."""
        self._live.engine.rules.with_campaign(spec, 0.0)  # ConfigError before anything is stored
        await self.campaigns.put(spec, if_unchanged=if_unchanged)

    async def remove_campaign(self, campaign_id: str, *, if_unchanged: bool = False) -> None:
        """Delete a campaign in every process."""
        await self.campaigns.remove(campaign_id, if_unchanged=if_unchanged)

    async def refresh_campaigns(self) -> None:
        """Apply the campaign changes other processes stored since the last poll."""
        await self.campaigns.refresh()

    async def put_definition(self, change: DefinitionChange) -> None:
        """Set or delete a variable or segment in every process, this one first."""
        await self.definitions.put(change)


def kept_changes(settings: Settings) -> KeptChanges:
    """The campaign, variable and segment changes stored in Redis (for `tripwire export`)."""
    return asyncio.run(_kept_changes(settings.store))


async def _kept_changes(url: str) -> KeptChanges:
    connection = RedisConnection(url)
    try:
        return await read_campaign_changes(connection), await read_definition_changes(connection)
    finally:
        await connection.close()
