"""What one collector process runs: the engine, the store, the outbox and delivery, wired.

The app's lifespan calls `start` and `stop`; ingest calls `accept` for every request's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import operator
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import CollectorRegistry

from collector.config.changes import CampaignChange, decode_change, encode_change
from collector.config.schema import CampaignSpec
from collector.config.settings import Settings
from collector.delivery.dispatcher import Dispatcher
from collector.delivery.log import DeliveryLog
from collector.delivery.outbox import MemoryOutbox, Outbox
from collector.disk import Disk
from collector.engine.engine import Engine, compile_rules
from collector.engine.results import evaluate, report
from collector.errors import Unavailable
from collector.events import Event
from collector.feed import EventFeed
from collector.metrics import IngestMetrics
from collector.redis.counts import RedisCounts
from collector.redis.mode import RedisMode, is_redis_url
from collector.store.base import Store
from collector.store.memory import MemoryStore
from collector.store.sessions import MemorySessions, Sessions

log = logging.getLogger("tripwire")
_DECISION_LABELS = operator.attrgetter("campaign_id", "outcome", "reason")

_encode_counts = msgspec.msgpack.Encoder().encode
_decode_counts = msgspec.msgpack.Decoder(list[tuple[str, str, str | None, int]]).decode

COUNTS_SECONDS = 1.0  # how often the campaigns' decision counts are written (memory mode)

# Beyond this many undelivered webhooks, ingest sheds load (503) rather than grow without bound.
MAX_PENDING_WEBHOOKS = 200_000
HOUR_SAMPLE = 10.0  # seconds between countings of decisions into hours
TIMER_TICK = 0.2  # seconds between looks for due absence timers: they fire within this of due


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
        self.redis: RedisMode | None = None  # store, outbox, log and campaigns in Redis mode
        # memory mode's data directory; opened now so that an unusable one stops the start
        self.disk: Disk | None = None
        if settings.store == "memory" and settings.data_dir is not None:
            self.disk = Disk(settings.data_dir)
            with _loading():
                self.disk.open()
        self.outbox: Outbox = MemoryOutbox(self.disk)  # Redis mode swaps in its own
        self.store: Store = self._make_store()
        self.delivery_log = self.redis.log if self.redis else DeliveryLog(disk=self.disk)
        # Redis mode: every process's decision counts, kept in Redis (memory mode: on disk)
        self.shared_counts = (
            RedisCounts(self.redis.connection, metrics.decisions) if self.redis else None
        )
        self.campaign_changes: dict[str, CampaignChange] = {}  # made while running, kept
        self._campaign_rows = (
            self.disk.table("campaigns", self._campaign_record) if self.disk else None
        )
        self._count_rows = self.disk.table("counters", self._counts_record) if self.disk else None
        self._counts_task: asyncio.Task[None] | None = None
        self.stop_error: str | None = None  # set when stopping could not save everything
        self.dispatcher = Dispatcher(
            self.outbox,
            settings.config.webhooks,
            self.delivery_log,
            registry,
            timezone=ZoneInfo(settings.config.timezone),
        )
        # accepted events, for the admin live streams (at most server.max_streams of them)
        self.events = EventFeed(max_subscribers=settings.config.server.max_streams)
        # dashboard logins: in Redis when shared, so every process knows them
        self.sessions: Sessions = self.redis.sessions if self.redis else MemorySessions()
        self._timers: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._sampled: dict[str, tuple[int, int]] = {}  # decisions counted into hours so far
        self._sampling = asyncio.Lock()

    def _make_store(self) -> Store:
        config = self.settings.config
        if self.settings.store == "memory":
            store = MemoryStore(lambda: self.engine, config.state, self.disk, self.outbox)
            self.metrics.gauge(
                "tripwire_profiles", "Profiles held in memory", lambda: float(len(store))
            )
            return store
        if is_redis_url(self.settings.store):
            self.redis = RedisMode(
                self.settings.store,
                engine=lambda: self.engine,
                limits=config.state,
                apply_put=self._apply_put,
                apply_remove=self._apply_remove,
            )
            self.outbox = self.redis.outbox
            return self.redis.store
        raise ValueError(f"unsupported store {self.settings.store!r}")

    async def start(self) -> None:
        """Open the store and start delivery."""
        if self.disk is not None:
            with _loading():
                self._load_disk()
                await self.store.open()
            self.disk.start()
            self._counts_task = asyncio.create_task(self._save_counts(), name="save-counts")
        else:
            await self.store.open()
        if self.redis is not None:
            await self.redis.campaigns.start()
        if self.shared_counts is not None:
            await self.shared_counts.start()
        if self.settings.deliver_in_process:
            await self.dispatcher.start()
        else:
            await self.outbox.open()
        self._timers = asyncio.create_task(self._fire_timers(), name="tripwire-timers")
        self._sampled = self._decision_totals()  # counts read back from the data directory
        self._sampler = asyncio.create_task(self._sample_hours(), name="tripwire-hours")

    async def _fire_timers(self) -> None:
        """The clock of absence triggers: fire the timers that are due, every TIMER_TICK."""
        while True:
            await asyncio.sleep(TIMER_TICK)
            try:
                result = await self.store.fire_due(time.time())
            except Unavailable:
                await asyncio.sleep(1.0)
                continue
            except Exception:  # a bug must not stop every later timer
                log.exception("firing due timers failed")
                await asyncio.sleep(1.0)
                continue
            if result.decisions:
                self.metrics.decisions.update(map(_DECISION_LABELS, result.decisions))
                if self.disk is not None:  # memory mode: the fired waits are kept now
                    with contextlib.suppress(Unavailable):  # kept by a later commit
                        await self.disk.commit()

    async def stopped(self) -> dict[str, str]:
        """Campaigns stopped by their stop conditions, with the condition reached."""
        try:
            return await self.store.stopped(time.time())
        except Unavailable:
            return {}

    async def results(self, spec: CampaignSpec) -> dict[str, Any]:
        """A campaign's A/B results: every arm against control (see `engine.results`)."""
        counts = await self.store.results([spec.id])
        return report(spec, counts[spec.id])

    async def refresh_results(self) -> None:
        """Read every campaign's A/B results for the metrics (called before each scrape)."""
        specs = [spec for spec in self.config.campaigns if spec.goal is not None]
        try:
            counts = await self.store.results([spec.id for spec in specs]) if specs else {}
        except Unavailable:
            return  # the last figures stay
        self.metrics.results = {cid: evaluate(arms.items()) for cid, arms in counts.items()}

    async def _sample_hours(self) -> None:
        """Count decisions into hours every HOUR_SAMPLE seconds (for the dashboard's charts)."""
        while True:
            await asyncio.sleep(HOUR_SAMPLE)
            try:
                await self.sample_hours()
            except Unavailable:
                continue  # counted with the next sample
            except Exception:
                log.exception("counting decisions per hour failed")

    async def sample_hours(self) -> None:
        """Add the decisions made since the last sample to the current hour's counts.

        Nothing on the ingest path: the decision counters the metrics keep are read here, and
        their growth since the last sample goes to the hour it is read in (so a decision may be
        counted up to HOUR_SAMPLE seconds late, in the next hour at worst).
        """
        async with self._sampling:
            totals = self._decision_totals()
            hour = int(time.time() // 3600)
            changes: dict[tuple[str, int], tuple[int, int]] = {}
            for campaign, (fired, suppressed) in totals.items():
                before = self._sampled.get(campaign, (0, 0))
                if (fired, suppressed) != before:
                    changes[campaign, hour] = (fired - before[0], suppressed - before[1])
            if changes:
                await self.store.add_hourly(changes)
            self._sampled = totals

    def _decision_totals(self) -> dict[str, tuple[int, int]]:
        """(fired, suppressed) decisions per campaign, as the metrics count them."""
        totals: dict[str, tuple[int, int]] = {}
        for (campaign, outcome, _reason), count in self.metrics.decisions.items():
            fired, suppressed = totals.get(campaign, (0, 0))
            if outcome == "fired":
                totals[campaign] = (fired + count, suppressed)
            else:
                totals[campaign] = (fired, suppressed + count)
        return totals

    async def hourly(self, campaign_id: str, hours: int = 24) -> list[tuple[int, int, int]]:
        """(hour since the epoch, fired, suppressed) for the last `hours` hours, oldest first."""
        with contextlib.suppress(Unavailable):
            await self.sample_hours()
        now = int(time.time() // 3600)
        since = now - hours + 1
        found = (await self.store.hourly([campaign_id], since)).get(campaign_id, {})
        return [(h, *found.get(h, (0, 0))) for h in range(since, now + 1)]

    async def stop(self) -> None:
        """Stop delivery and save what must survive a restart."""
        task, self._timers = self._timers, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        try:
            await self.sample_hours()  # the last decisions' hour, before the store closes
        except Exception:
            log.exception("counting the last decisions per hour failed")
        if self.settings.deliver_in_process:
            await self.dispatcher.stop(grace=5.0)
        else:
            await self.outbox.close()
        await self.store.close()
        if self.shared_counts is not None:
            await self.shared_counts.stop()
        if self.redis is not None:
            await self.redis.close()
        if self.disk is not None:
            if self._counts_task is not None:
                self._counts_task.cancel()
                await asyncio.gather(self._counts_task, return_exceptions=True)
            if self._count_rows is not None:
                self._count_rows.mark("decisions")
            try:
                await self.disk.close()
            except OSError as exc:  # the command exits non-zero with this
                self.stop_error = f"the last changes could not be saved: {exc.strerror or exc}"
                log.error("%s", self.stop_error)

    def _load_disk(self) -> None:
        """Apply what the data directory holds besides profiles: campaign changes, counters."""
        assert self._campaign_rows is not None and self._count_rows is not None
        for campaign_id, value in sorted(self._campaign_rows.rows()):
            try:
                change = decode_change(value)
                if change.spec is None:
                    self._apply_remove(campaign_id)
                else:
                    self._apply_put(change.spec, change.updated_at)
            except Exception:  # written by another version; the file's campaign stays
                log.exception("cannot apply the saved change of campaign %s", campaign_id)
        for _, value in self._count_rows.rows():
            for campaign, outcome, reason, count in _decode_counts(value):
                self.metrics.decisions[(campaign, outcome, reason)] += count

    async def _save_counts(self) -> None:
        """Write the campaigns' decision counts once a second when they moved (a kill loses at
        most the last second of counts; the caps that decide firing are kept per request)."""
        assert self._count_rows is not None
        saved = -1
        while True:
            await asyncio.sleep(COUNTS_SECONDS)
            total = self.metrics.messages["accepted"]
            if total != saved:
                saved = total
                self._count_rows.mark("decisions")

    def _campaign_record(self, campaign_id: str) -> bytes | None:
        change = self.campaign_changes.get(campaign_id)
        return None if change is None else encode_change(change)

    def _counts_record(self, _: str) -> bytes | None:
        return _encode_counts([(*labels, n) for labels, n in self.metrics.decisions.items()])

    def campaign_counts(self) -> Counter[tuple[str, str, str | None]]:
        """Decisions by (campaign, outcome, reason), kept across restarts (every process's in
        Redis mode)."""
        if self.shared_counts is not None:
            return self.shared_counts.current()
        return self.metrics.decisions

    async def ready(self) -> bool:
        """True when the store answers and the data directory takes writes."""
        return await self.unready_reason() is None

    async def unready_reason(self) -> str | None:
        """Why this process cannot take events now, or None when it can."""
        if self.disk is not None and self.disk.failure is not None:
            return f"cannot save to the data directory: {self.disk.failure}"
        if not await self.store.ping():
            return "the store does not answer"
        return None

    async def accept(self, events: Sequence[Event], now: float) -> list[tuple[int, str]]:
        """Run accepted events through the store and engine and queue their webhooks.

        Returns the events the store could not apply (by position, with why): they left no trace.
        """
        if self.outbox.depth() > MAX_PENDING_WEBHOOKS:
            raise Unavailable("too many webhooks waiting to be sent; retry shortly", retry_after=5)
        disk = self.disk
        if disk is not None and disk.failure is not None:
            raise Unavailable(f"cannot save to the data directory: {disk.failure}", retry_after=5)
        result = await self.store.ingest(events, now)
        if result.rejected:
            failed = {position for position, _ in result.rejected}
            events = [e for position, e in enumerate(events) if position not in failed]
        self.events.publish(events)
        self.metrics.messages["accepted"] += result.accepted
        if result.duplicates:
            self.metrics.messages["duplicate"] += result.duplicates
        # map + attrgetter + Counter.update keep this per-decision loop in C.
        self.metrics.decisions.update(map(_DECISION_LABELS, result.decisions))
        if disk is not None:
            await disk.commit()  # the answer waits until all of it is written
        return result.rejected

    async def put_campaign(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> bool:
        """Add or replace a campaign everywhere it runs; True when it is new. `if_unchanged`:
        Redis mode checks, where it writes, that nobody changed it since this process saw it."""
        new = all(c.id != spec.id for c in self.config.campaigns)
        if self.redis is not None:
            self.engine.rules.with_campaign(spec, 0.0)  # ConfigError before anything is stored
            await self.redis.campaigns.put(spec, if_unchanged=if_unchanged)  # here first
        else:
            updated_at = time.time()
            self._apply_put(spec, updated_at)
            await self._keep_change(spec.id, CampaignChange(spec=spec, updated_at=updated_at))
        return new

    def _apply_put(self, spec: CampaignSpec, updated_at: float) -> None:
        """Add or replace a campaign in this process."""
        campaigns = list(self.config.campaigns)
        index = next((i for i, c in enumerate(campaigns) if c.id == spec.id), None)
        if index is None:
            campaigns.append(spec)
        else:
            campaigns[index] = spec
        self.config = msgspec.structs.replace(self.config, campaigns=campaigns)
        self.engine.replace_campaign(spec, updated_at)
        self.campaign_changes[spec.id] = CampaignChange(spec=spec, updated_at=updated_at)

    async def remove_campaign(self, campaign_id: str, *, if_unchanged: bool = False) -> bool:
        """Delete a campaign everywhere it runs; False when there was none."""
        if all(c.id != campaign_id for c in self.config.campaigns):
            return False
        if self.redis is not None:
            await self.redis.campaigns.remove(campaign_id, if_unchanged=if_unchanged)
        else:
            self._apply_remove(campaign_id)
            change = CampaignChange(spec=None, updated_at=time.time())
            await self._keep_change(campaign_id, change)
        return True

    def _apply_remove(self, campaign_id: str) -> None:
        """Delete a campaign in this process."""
        self.config = msgspec.structs.replace(
            self.config, campaigns=[c for c in self.config.campaigns if c.id != campaign_id]
        )
        self.engine.remove_campaign(campaign_id)
        self.campaign_changes[campaign_id] = CampaignChange(spec=None, updated_at=time.time())

    async def _keep_change(self, campaign_id: str, change: CampaignChange) -> None:
        """Write a campaign change to the data directory before the caller answers."""
        self.campaign_changes[campaign_id] = change
        if self.disk is not None and self._campaign_rows is not None:
            self._campaign_rows.mark(campaign_id)
            await self.disk.commit()

    def begin_shutdown(self) -> None:
        """End the live event streams so the server can stop without waiting for them."""
        self.events.close()
