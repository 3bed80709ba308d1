"""Memory mode's parts, one bundle: store, outbox, delivery log, sessions, the campaign, variable
and segment changes and the decision counts, all in this process and kept in the data directory
(`collector.memory.disk`).

    backend = MemoryBackend(settings, live, metrics)    # opens the data directory (or fails)
    await backend.open()                                # loads what it keeps, starts writing
    ... await backend.keep()                            # after each change, before answering
    await backend.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter
from collections.abc import Iterator

import msgspec

from collector.config.changes import CampaignChange, decode_change, encode_change
from collector.config.schema import CampaignSpec
from collector.config.settings import Settings
from collector.definitions import DefinitionChange, KeptChanges, in_order, row_key
from collector.definitions import encode_change as encode_definition
from collector.delivery.log import DeliveryLog
from collector.live import LiveConfig
from collector.memory.disk import Disk, read_table
from collector.memory.outbox import MemoryOutbox
from collector.memory.store import MemoryStore
from collector.metrics import IngestMetrics
from collector.store.sessions import MemorySessions

log = logging.getLogger("tripwire")

Label = tuple[str, str, str | None]  # campaign id, outcome, reason
COUNTS_SECONDS = 1.0  # how often the campaigns' decision counts are written
DELIVERY_LOG_SIZE = 10_000

_encode_counts = msgspec.msgpack.Encoder().encode
_decode_counts = msgspec.msgpack.Decoder(list[tuple[str, str, str | None, int]]).decode


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """Load without the cyclic garbage collector, then set what was loaded aside from it.

    Reading 100,000 profiles creates millions of objects; collections triggered meanwhile would
    scan them again and again. Frozen afterwards, they are never scanned by later collections
    either (they are freed by reference counting like any other object), which keeps the
    pauses of a big store short.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


class MemoryBackend:
    """Every part of memory mode, sharing one data directory (or none: nothing kept)."""

    def __init__(self, settings: Settings, live: LiveConfig, metrics: IngestMetrics) -> None:
        self._live = live
        self._decisions = metrics.decision_counts  # settled as they are read
        # opened now, so that an unusable data directory stops the start
        self.disk = Disk(settings.data_dir) if settings.data_dir is not None else None
        if self.disk is not None:
            with _loading():
                self.disk.open()
        disk = self.disk
        self.outbox = MemoryOutbox(disk)
        self.store = MemoryStore(lambda: live.engine, settings.config.state, disk, self.outbox)
        journal = disk.journal("deliveries", keep=DELIVERY_LOG_SIZE) if disk else None
        self.delivery_log = DeliveryLog(DELIVERY_LOG_SIZE, journal=journal)
        self.sessions = MemorySessions()
        self._campaign_rows = disk.table("campaigns", self._campaign_record) if disk else None
        self._definition_rows = disk.table("definitions", self._definition_record) if disk else None
        self._count_rows = disk.table("counters", self._counts_record) if disk else None
        self._counts_task: asyncio.Task[None] | None = None
        store = self.store
        metrics.gauge("tripwire_profiles", "Profiles held in memory", lambda: float(len(store)))
        metrics.counter(
            "tripwire_profiles_evicted",
            "Profiles let go, by reason (expired: unseen for state.user_ttl; capacity: past "
            "state.max_users or state.max_memory_mb)",
            "reason",
            store.evictions.counts,
        )

    async def open(self) -> None:
        """Apply the kept campaign changes and counts, load the profiles, start writing."""
        if self.disk is None:
            await self.store.open()
            return
        with _loading():
            self._load_changes_and_counts()
            await self.store.open()
        self.disk.start()
        self._counts_task = asyncio.create_task(self._save_counts(), name="save-counts")

    async def close(self) -> None:
        """Write the last changes; raises OSError when they could not be written."""
        await self.store.close()
        if self.disk is None:
            return
        if self._counts_task is not None:
            self._counts_task.cancel()
            await asyncio.gather(self._counts_task, return_exceptions=True)
        if self._count_rows is not None:
            self._count_rows.mark("decisions")
        await self.disk.close()

    def failure(self) -> str | None:
        """Why accepted events cannot be kept now, or None."""
        if self.disk is not None and self.disk.failure is not None:
            return f"cannot save to the data directory: {self.disk.failure}"
        return None

    async def keep(self) -> None:
        """Write what the last changes staged; returns once it is on disk."""
        if self.disk is not None:
            await self.disk.commit()

    def decision_counts(self) -> Counter[Label]:
        """Decisions by (campaign, outcome, reason), kept across restarts."""
        return self._decisions()

    async def put_campaign(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> None:
        """Add or replace a campaign and keep the change before returning (one process holds
        the campaigns: a change checked against them is unchanged when written)."""
        self._live.put(spec, time.time())
        await self._keep_change(spec.id)

    async def remove_campaign(self, campaign_id: str, *, if_unchanged: bool = False) -> None:
        """Delete a campaign and keep the change before returning."""
        self._live.remove(campaign_id)
        await self._keep_change(campaign_id)

    async def put_definition(self, change: DefinitionChange) -> None:
        """Set or delete a variable or segment and keep the change before returning."""
        self._live.apply_definition(change)
        if self._definition_rows is not None:
            self._definition_rows.mark(row_key(change.kind, change.name))
            await self.keep()

    async def refresh_campaigns(self) -> None:
        """Nothing to do: no other process changes this one's campaigns."""

    async def _keep_change(self, campaign_id: str) -> None:
        if self._campaign_rows is not None:
            self._campaign_rows.mark(campaign_id)
            await self.keep()

    def _load_changes_and_counts(self) -> None:
        """Apply the variable, segment and campaign changes (in that order: campaigns may use
        the others) and add the decision counts the data directory holds."""
        assert self._campaign_rows is not None and self._count_rows is not None
        assert self._definition_rows is not None
        self._live.apply_kept_definitions(in_order([v for _, v in self._definition_rows.rows()]))
        for campaign_id, value in sorted(self._campaign_rows.rows()):
            try:
                change = decode_change(value)
                if change.spec is None:
                    self._live.remove(campaign_id)
                else:
                    self._live.put(change.spec, change.updated_at)
            except Exception:  # written by another version; the file's campaign stays
                log.exception("cannot apply the saved change of campaign %s", campaign_id)
        counts = self._decisions()
        for _, value in self._count_rows.rows():
            for campaign, outcome, reason, count in _decode_counts(value):
                counts[(campaign, outcome, reason)] += count

    async def _save_counts(self) -> None:
        """Write the campaigns' decision counts once a second when they moved (a kill loses at
        most the last second of counts; the caps that decide firing are kept per request)."""
        assert self._count_rows is not None
        saved: Counter[Label] | None = None
        while True:
            await asyncio.sleep(COUNTS_SECONDS)
            counts = self._decisions()
            if saved != counts:
                saved = Counter(counts)
                self._count_rows.mark("decisions")

    def _campaign_record(self, campaign_id: str) -> bytes | None:
        change: CampaignChange | None = self._live.changes.get(campaign_id)
        return None if change is None else encode_change(change)

    def _definition_record(self, key: str) -> bytes | None:
        change = self._live.definitions.get(key)
        return None if change is None else encode_definition(change)

    def _counts_record(self, _: str) -> bytes | None:
        return _encode_counts([(*labels, n) for labels, n in self._decisions().items()])


def kept_changes(settings: Settings) -> KeptChanges:
    """The campaign, variable and segment changes a data directory keeps (for `tripwire export`;
    it reads the files, so it works while a server runs)."""
    if settings.data_dir is None:
        return {}, []
    campaigns = read_table(settings.data_dir, "campaigns")
    definitions = read_table(settings.data_dir, "definitions")
    return (
        {campaign_id: decode_change(value) for campaign_id, value in campaigns.items()},
        in_order(list(definitions.values())),
    )
