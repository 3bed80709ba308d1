"""What one collector process runs: the live config, a backend and delivery, wired.

The app's lifespan calls `start` and `stop`; ingest calls `accept` for every request's events.
Where state lives is the backend's business (`collector.backend`): nothing here asks which one
it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from collector.backend import Backend, open_backend
from collector.config.changes import CampaignChange
from collector.config.schema import CampaignSpec, ConfigFile
from collector.config.settings import Settings
from collector.definitions import Definitions
from collector.delivery.dispatcher import Dispatcher
from collector.delivery.log import DeliveryLog
from collector.delivery.outbox import Outbox
from collector.engine.engine import Engine
from collector.engine.results import evaluate, report
from collector.errors import Unavailable
from collector.events import Event
from collector.feed import EventFeed
from collector.live import LiveConfig
from collector.metrics import IngestMetrics
from collector.services import Deliveries, Users
from collector.store.base import Store
from collector.store.pipeline import ingest
from collector.store.sessions import Sessions
from collector.store.together import Together

log = logging.getLogger("tripwire")

# Beyond this many undelivered webhooks, ingest sheds load (503) rather than grow without bound.
MAX_PENDING_WEBHOOKS = 200_000
HOUR_SAMPLE = 10.0  # seconds between countings of decisions into hours
TIMER_TICK = 0.2  # seconds between looks for due absence timers: they fire within this of due


class Runtime:
    """The parts of a running collector and the path an accepted event takes through them."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, metrics: IngestMetrics
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.live = LiveConfig(settings.config)  # the file plus campaign changes made while running
        self.backend: Backend = open_backend(settings, self.live, metrics)
        self.store: Store = self.backend.store
        self.outbox: Outbox = self.backend.outbox
        self.delivery_log: DeliveryLog = self.backend.delivery_log
        self.sessions: Sessions = self.backend.sessions  # dashboard logins
        # live variables and segments: read here, changed through the backend, which keeps them
        self.definitions = Definitions(self.live, self.backend.put_definition)
        self.stop_error: str | None = None  # set when stopping could not save everything
        self.dispatcher = Dispatcher(
            self.outbox,
            settings.config.webhooks,
            self.delivery_log,
            registry,
            timezone=ZoneInfo(settings.config.timezone),
        )
        # what admin uses: user lookups and deliveries, not the store and the dispatcher
        self.users = Users(self.store)
        self.deliveries = Deliveries(self.dispatcher, self.outbox, self.delivery_log)
        # accepted events, for the admin live streams (at most server.max_streams of them)
        self.events = EventFeed(max_subscribers=settings.config.server.max_streams)
        self._together = Together(self._accept_together)  # a turn's requests, one batch
        self._timers: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._sampled: dict[str, tuple[int, int]] = {}  # decisions counted into hours so far
        self._sampling = asyncio.Lock()

    @property
    def config(self) -> ConfigFile:
        """The live config: the file plus the campaign changes made while running."""
        return self.live.config

    @property
    def engine(self) -> Engine:
        """The engine of the live config."""
        return self.live.engine

    @property
    def campaign_changes(self) -> dict[str, CampaignChange]:
        """Campaign changes made while running (kept across restarts), by campaign id."""
        return self.live.changes

    async def start(self) -> None:
        """Open the backend and start delivery."""
        await self.backend.open()
        if self.settings.deliver_in_process:
            await self.dispatcher.start()
        else:
            await self.outbox.open()
        self._timers = asyncio.create_task(self._fire_timers(), name="tripwire-timers")
        self._sampled = self._decision_totals()  # counts read back from what the backend kept
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
                self.metrics.count_decisions(result.decisions, ())
                with contextlib.suppress(Unavailable):  # else kept with a later change
                    await self.backend.keep()

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
        for (campaign, outcome, _reason), count in self.metrics.decision_counts().items():
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
        try:
            await self.backend.close()
        except OSError as exc:  # the command exits non-zero with this
            self.stop_error = f"the last changes could not be saved: {exc.strerror or exc}"
            log.error("%s", self.stop_error)

    def campaign_counts(self) -> Counter[tuple[str, str, str | None]]:
        """Decisions by (campaign, outcome, reason), kept across restarts (every process's in
        Redis mode)."""
        return self.backend.decision_counts()

    async def ready(self) -> bool:
        """True when the store answers and the data directory takes writes."""
        return await self.unready_reason() is None

    async def unready_reason(self) -> str | None:
        """Why this process cannot take events now, or None when it can."""
        failure = self.backend.failure()
        if failure is not None:
            return failure
        if not await self.store.ping():
            return "the store does not answer"
        return None

    def accept(self, events: Sequence[Event], now: float) -> Awaitable[list[tuple[int, str]]]:
        """Run accepted events through the store and engine and queue their webhooks, with the
        other requests of this turn of the event loop (`collector.store.together`).

        Awaited, gives the events the store could not apply (by position, with why): they left
        no trace. Unavailable at once when the outbox is full or the store failing. (A plain
        function handing back what to await, as `Together.run` is: one coroutine fewer per
        request.)
        """
        if self.outbox.depth() > MAX_PENDING_WEBHOOKS:
            raise Unavailable("too many webhooks waiting to be sent; retry shortly", retry_after=5)
        failure = self.backend.failure()
        if failure is not None:
            raise Unavailable(failure, retry_after=5)
        return self._together.run(events, now)

    async def _accept_together(
        self, events: Sequence[Event], now: float
    ) -> list[tuple[int, str]]:
        """One pass of the pipeline for the events of a turn's requests, kept before returning."""
        result = await ingest(self.store, events, now)
        if result.rejected:
            failed = {position for position, _ in result.rejected}
            events = [e for position, e in enumerate(events) if position not in failed]
        self.events.publish(events)
        self.metrics.messages["accepted"] += result.accepted
        if result.duplicates:
            self.metrics.messages["duplicate"] += result.duplicates
        self.metrics.count_decisions(result.decisions, result.missed)
        await self.backend.keep()  # the answers wait until all of it is kept
        return result.rejected

    async def put_campaign(self, spec: CampaignSpec, *, if_unchanged: bool = False) -> bool:
        """Add or replace a campaign everywhere it runs; True when it is new. `if_unchanged`:
        the backend checks, where it writes, that nobody changed it since this process saw it."""
        new = not self.live.has(spec.id)
        await self.backend.put_campaign(spec, if_unchanged=if_unchanged)
        return new

    async def refresh_campaigns(self) -> None:
        """Apply the campaign changes other processes made (Redis mode) before a check."""
        await self.backend.refresh_campaigns()

    async def remove_campaign(self, campaign_id: str, *, if_unchanged: bool = False) -> bool:
        """Delete a campaign everywhere it runs; False when there was none."""
        if not self.live.has(campaign_id):
            return False
        await self.backend.remove_campaign(campaign_id, if_unchanged=if_unchanged)
        return True

    def begin_shutdown(self) -> None:
        """End the live event streams so the server can stop without waiting for them."""
        self.events.close()
