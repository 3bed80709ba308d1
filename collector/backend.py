"""The backend seam: every part of a collector's state, opened as one bundle from the settings.

    backend = open_backend(settings, live, metrics)     # memory mode or Redis mode
    await backend.open()
    await ingest(backend.store, events, now); await backend.keep()
    await backend.close()

A backend holds the per-user store, the webhook outbox, the delivery log, the dashboard
sessions, the campaign, variable and segment changes and the decision counts. Memory mode
(`collector.memory`) keeps them in this process and its data directory; Redis mode
(`collector.redis`) shares them between processes.
Adding a backend is a package with a class of this shape, a line in `open_backend` and one in
`kept_changes`.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from collector.config.checks import is_redis_url
from collector.config.schema import CampaignSpec
from collector.config.settings import Settings
from collector.definitions import DefinitionChange, KeptChanges
from collector.delivery.log import DeliveryLog
from collector.delivery.outbox import Outbox
from collector.live import LiveConfig
from collector.memory import backend as memory
from collector.memory.backend import MemoryBackend
from collector.metrics import IngestMetrics
from collector.redis import backend as redis
from collector.redis.backend import RedisBackend
from collector.store.base import Store
from collector.store.sessions import Sessions

Label = tuple[str, str, str | None]  # campaign id, outcome, reason


class Backend(Protocol):
    """Where a collector's state lives."""

    @property
    def store(self) -> Store:
        """Per-user state: loads and commits what the pipeline makes of events."""

    @property
    def outbox(self) -> Outbox:
        """Webhooks waiting to be sent, retries and dead letters."""

    @property
    def delivery_log(self) -> DeliveryLog:
        """The latest delivery attempts."""

    @property
    def sessions(self) -> Sessions:
        """Live dashboard sessions."""

    async def open(self) -> None:
        """Load or connect to what a previous run kept."""

    async def close(self) -> None:
        """Write what is left and let go; raises OSError when it could not be written."""

    def failure(self) -> str | None:
        """Why accepted events cannot be kept now, or None."""

    async def keep(self) -> None:
        """Return once the changes made so far are kept (before a request is answered)."""

    def decision_counts(self) -> Counter[Label]:
        """Decisions by (campaign, outcome, reason), every process's, across restarts."""

    async def put_campaign(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> None:
        """Add or replace a campaign everywhere it runs, kept across restarts; `if_unchanged`:
        only if nobody changed it since this process saw it (PreconditionFailed otherwise)."""

    async def remove_campaign(self, campaign_id: str, *, if_unchanged: bool = False) -> None:
        """Delete a campaign everywhere it runs, kept across restarts (`if_unchanged` as above)."""

    async def refresh_campaigns(self) -> None:
        """Apply the campaign changes other processes made that this one has not applied yet."""

    async def put_definition(self, change: DefinitionChange) -> None:
        """Set or delete a variable or segment everywhere, kept across restarts (raises
        ConfigError when the config would not hold with it)."""


def open_backend(settings: Settings, live: LiveConfig, metrics: IngestMetrics) -> Backend:
    """The backend `settings.store` names: `memory`, or a Redis URL."""
    if settings.store == "memory":
        return MemoryBackend(settings, live, metrics)
    if is_redis_url(settings.store):
        return RedisBackend(settings.store, settings, live, metrics)
    raise ValueError(f"unsupported store {settings.store!r}")


def kept_changes(settings: Settings) -> KeptChanges:
    """What the backend `settings.store` names keeps of the changes made while running, read
    without opening it (`tripwire export`, also while a server runs): campaigns by id, and the
    variable and segment changes oldest first."""
    if settings.store == "memory":
        return memory.kept_changes(settings)
    if is_redis_url(settings.store):
        return redis.kept_changes(settings)
    raise ValueError(f"unsupported store {settings.store!r}")
