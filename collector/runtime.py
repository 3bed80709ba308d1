"""What one collector process runs: the engine, the store, the outbox and delivery, wired.

The app's lifespan calls `start` and `stop`; ingest calls `accept` for every request's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import CollectorRegistry
from starlette.routing import BaseRoute

from collector.admin import EventFeed, admin_routes
from collector.config import Settings
from collector.dashboard import dashboard_routes
from collector.delivery import Dispatcher
from collector.deliverylog import DeliveryLog
from collector.engine import Engine, compile_rules
from collector.errors import Unavailable
from collector.events import Event
from collector.metrics import IngestMetrics
from collector.outbox import MemoryOutbox, Outbox
from collector.requestbin import RequestBin, bin_routes
from collector.schema import CampaignSpec
from collector.store.base import Store
from collector.store.memory import MemoryStore

log = logging.getLogger("tripwire")

# Beyond this many undelivered webhooks, ingest sheds load (503) rather than grow without bound.
MAX_PENDING_WEBHOOKS = 200_000


class Runtime:
    """The parts of a running collector and the path an accepted event takes through them."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, metrics: IngestMetrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.config = settings.config  # the live config: the file plus admin campaign changes
        self.engine = Engine(compile_rules(settings.config, updated_at={}))
        self.store: Store = self._make_store()
        self.outbox: Outbox = MemoryOutbox(settings.data_dir)
        self.delivery_log = DeliveryLog()
        self.dispatcher = Dispatcher(
            self.outbox,
            settings.config.webhooks,
            self.delivery_log,
            registry,
            timezone=ZoneInfo(settings.config.timezone),
        )
        self.events = EventFeed()  # accepted events, for the admin live stream
        bin_settings = settings.config.request_bin
        self.request_bin = (
            RequestBin(bin_settings.max_requests)
            if settings.request_bin or bin_settings.enabled
            else None
        )

    def _make_store(self) -> Store:
        config = self.settings.config
        if self.settings.store == "memory":
            store = MemoryStore(lambda: self.engine, config.state, self.settings.data_dir)
            self.metrics.gauge(
                "tripwire_profiles", "Profiles held in memory", lambda: float(len(store))
            )
            return store
        raise ValueError(f"unsupported store {self.settings.store!r}")

    async def start(self) -> None:
        """Open the store and start delivery."""
        await self.store.open()
        if self.settings.deliver_in_process:
            await self.dispatcher.start()
        else:
            await self.outbox.open()

    async def stop(self) -> None:
        """Stop delivery and save what must survive a restart."""
        if self.settings.deliver_in_process:
            await self.dispatcher.stop(grace=5.0)
        else:
            await self.outbox.close()
        await self.store.close()

    async def ready(self) -> bool:
        """True when the store answers."""
        return await self.store.ping()

    async def accept(self, events: Sequence[Event], now: float) -> None:
        """Run accepted events through the store and engine and queue their webhooks."""
        if self.outbox.depth() > MAX_PENDING_WEBHOOKS:
            raise Unavailable("too many webhooks waiting to be sent; retry shortly", retry_after=5)
        result = await self.store.ingest(events, now)
        self.events.publish(events)
        self.metrics.messages["accepted"] += result.accepted
        if result.duplicates:
            self.metrics.messages["duplicate"] += result.duplicates
        if result.webhooks:
            await self.outbox.put(result.webhooks)
        decisions = self.metrics.decisions
        for decision in result.decisions:
            decisions[(decision.campaign_id, decision.outcome, decision.reason or "")] += 1

    async def put_campaign(self, spec: CampaignSpec) -> bool:
        """Add or replace a campaign everywhere it runs; True when it is new."""
        campaigns = list(self.config.campaigns)
        index = next((i for i, c in enumerate(campaigns) if c.id == spec.id), None)
        if index is None:
            campaigns.append(spec)
        else:
            campaigns[index] = spec
        self.config = msgspec.structs.replace(self.config, campaigns=campaigns)
        self.engine.replace_campaign(spec, time.time())
        return index is None

    async def remove_campaign(self, campaign_id: str) -> bool:
        """Delete a campaign everywhere it runs; False when there was none."""
        campaigns = [c for c in self.config.campaigns if c.id != campaign_id]
        if len(campaigns) == len(self.config.campaigns):
            return False
        self.config = msgspec.structs.replace(self.config, campaigns=campaigns)
        self.engine.remove_campaign(campaign_id)
        return True

    def begin_shutdown(self) -> None:
        """End live streams (admin events, request bin) so the server can stop without waiting."""
        self.events.close()
        if self.request_bin is not None:
            self.request_bin.close()

    def extra_routes(self) -> list[BaseRoute]:
        """Routes of the optional parts (admin API, dashboard, request bin)."""
        routes = [*admin_routes(self), *dashboard_routes(self)]
        if self.request_bin is not None:
            routes += bin_routes(self.request_bin)
        return routes
