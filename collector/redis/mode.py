"""The parts a process uses in Redis mode, sharing one connection: store, outbox, log, campaigns.

parts = RedisMode(settings.store, engine=lambda: runtime.engine, limits=config.state,
                  apply_put=..., apply_remove=...)
parts.store, parts.outbox, parts.log, parts.campaigns, parts.connection
"""

from __future__ import annotations

from collections.abc import Callable

from collector.config.schema import StateSettings
from collector.engine.engine import Engine
from collector.redis.campaignsync import ApplyPut, ApplyRemove, RedisCampaignSync
from collector.redis.connection import RedisConnection
from collector.redis.deliverylog import RedisDeliveryLog
from collector.redis.outbox import RedisOutbox
from collector.redis.sessions import RedisSessions
from collector.redis.store import RedisStore


def is_redis_url(store: str) -> bool:
    """True when a `--store` value names a Redis server."""
    return store.startswith(("redis://", "rediss://", "unix://"))


class RedisMode:
    """Store, outbox, delivery log and campaign sync on one Redis (or Redis Cluster)."""

    def __init__(
        self,
        url: str,
        *,
        engine: Callable[[], Engine],
        limits: StateSettings,
        apply_put: ApplyPut,
        apply_remove: ApplyRemove,
    ) -> None:
        self.connection = RedisConnection(url)
        self.store = RedisStore(self.connection, engine, limits)
        self.outbox = RedisOutbox(self.connection)
        self.log = RedisDeliveryLog(self.connection)
        self.campaigns = RedisCampaignSync(self.connection, apply_put, apply_remove)
        self.sessions = RedisSessions(self.connection)

    async def close(self) -> None:
        """Write the delivery log's last entries and disconnect."""
        await self.campaigns.stop()
        try:
            await self.log.flush()
        finally:
            await self.connection.close()
