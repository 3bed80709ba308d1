"""Webhook delivery: take webhooks from the outbox, send them, retry, dead-letter, log, count.

In the app's lifespan:

    outbox = MemoryOutbox(disk)
    log = DeliveryLog(capacity=10_000)
    dispatcher = Dispatcher(outbox, settings.webhooks, log, registry, timezone=tz)
    await dispatcher.start()                       # opens the outbox, starts delivering
    await outbox.put([request, ...])               # from ingest: cheap, no network
    await dispatcher.stop(grace=5.0)               # finishes in-flight work, closes the outbox

Admin side: `await log.query(campaign=, status=, limit=)`, `await dispatcher.replay(delivery_id)`,
`dispatcher.paused()`, `dispatcher.resume(campaign_id, endpoint)`, and the campaign test-fire
`await dispatcher.send_now(request)`, which sends once, outside the queue, and returns the
logged `DeliveryAttempt`.

How it stays fast and isolated: one pump task claims due webhooks and hands each to its endpoint
(scheme://host:port). An endpoint has its own queue, at most `concurrency_per_endpoint` worker
tasks draining it (one request in flight each) and a circuit breaker, so a slow or dead endpoint
only slows itself. Retries, breaker deferrals and queue overflow go back to the outbox with a
due time (a heap in memory mode), never to a sleeping task.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from collector.config.schema import WebhookSettings
from collector.delivery.breaker import Breaker, BreakerPolicy
from collector.delivery.log import STATUSES, DeliveryAttempt, DeliveryLog, Status, mask_url
from collector.delivery.outbox import DeadLetter, Envelope, Outbox
from collector.delivery.sender import AttemptResult, InvalidRequest, Sender, endpoint_of
from collector.delivery.signing import Signer
from collector.delivery.ssrf import Guard, Policy
from collector.webhook import WebhookRequest

logger = logging.getLogger("tripwire.delivery")

_CLAIM_WAIT = 1.0  # seconds the pump blocks in claim before checking on itself
_CLAIM_BATCH = 512  # envelopes claimed at once
_OVERFLOW_DELAY = 1.0  # seconds an envelope waits when its endpoint's queue is full


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))]."""

    base: float = 1.0
    cap: float = 3600.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after the given (1-based) failed attempt."""
        return rng.uniform(0.0, min(self.cap, self.base * 2.0 ** min(attempt - 1, 62)))


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """Dead letters put back on the outbox."""

    count: int
    delivery_ids: list[str]


class PausedEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A campaign's endpoint that answered 410 Gone; its deliveries are dead-lettered."""

    campaign_id: str
    endpoint: str
    since: float
    reason: str


def _freeze_startup_objects() -> None:
    """Keep the objects built at start-up out of later garbage collections (once per process).

    A full collection stops the event loop, webhooks in flight included, for a time that grows
    with the objects it scans. What start-up built (modules, compiled rules, clients: about
    50,000 objects) lives as long as the process, so scanning it again only lengthens the pause:
    at 500 events/s a full collection over ~125,000 objects took 48 ms, 25 ms with these frozen.
    Reference counting still frees them; only cycles among them are no longer looked for.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


class _Endpoint:
    __slots__ = ("breaker", "key", "queue", "workers")

    def __init__(self, key: str, policy: BreakerPolicy) -> None:
        self.key = key
        self.workers = 0  # worker tasks draining the queue, each with one request in flight
        self.queue: deque[Envelope] = deque()
        self.breaker = Breaker(policy)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        deliveries = Counter(
            "tripwire_webhook_deliveries",
            "Webhook attempts and suppressions, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.outcome = {status: deliveries.labels(status) for status in STATUSES}
        self.latency = Histogram(
            "tripwire_webhook_attempt_seconds",
            "Duration of webhook HTTP attempts.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "tripwire_webhook_queue_depth", "Webhooks pending in the outbox.", registry=registry
        )
        self.breakers_open = Gauge(
            "tripwire_webhook_breakers_open",
            "Endpoints whose circuit breaker is open or half-open.",
            registry=registry,
        )
        self.paused = Gauge(
            "tripwire_webhook_endpoints_paused",
            "Campaign endpoints paused after 410 Gone.",
            registry=registry,
        )


class Dispatcher:
    """Delivers what the outbox holds, with retries, isolation, quota, log and metrics."""

    def __init__(
        self,
        outbox: Outbox,
        settings: WebhookSettings,
        log: DeliveryLog,
        registry: CollectorRegistry | None = None,
        *,
        timezone: tzinfo | None = None,
        clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
        breaker: BreakerPolicy | None = None,
        queue_per_endpoint: int = 10_000,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._log = log
        self._timezone = timezone or UTC
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._breaker_policy = breaker or BreakerPolicy()
        self._queue_per_endpoint = queue_per_endpoint
        self._rng = rng or random.Random()
        self._limit = max(1, settings.concurrency_per_endpoint)
        self._signer = Signer(settings.signing_secrets)
        policy = Policy.from_settings(
            allow_private_networks=settings.allow_private_networks,
            allow_list=settings.allow_list,
        )
        self.guard = Guard(policy)
        self._sender: Sender | None = None
        self._endpoints: dict[str, _Endpoint] = {}
        self._paused: dict[tuple[str, str], PausedEndpoint] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        self._metrics.queue_depth.set_function(lambda: float(outbox.depth()))
        self._metrics.breakers_open.set_function(self._open_breakers)
        self._metrics.paused.set_function(lambda: float(len(self._paused)))

    async def start(self) -> None:
        """Open the outbox (loading what the last run left) and start delivering."""
        if self._pump_task is not None:
            return
        self._stopping = False
        self._connect()
        await self._outbox.open()
        _freeze_startup_objects()
        self._pump_task = asyncio.create_task(self._pump(), name="tripwire-delivery-pump")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming, give in-flight attempts `grace` seconds, keep the rest for next start."""
        self._stopping = True
        if self._pump_task is not None:
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
            self._pump_task = None
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        self._endpoints.clear()
        await self._outbox.close()

    async def send_now(self, request: WebhookRequest) -> DeliveryAttempt:
        """Send one webhook now, once, bypassing queue and quota (works unstarted); log it."""
        result = await self._connect().send(request)
        status: Status = "failed"
        if result.outcome == "delivered" or result.outcome == "refused":
            status = result.outcome
        if status == "refused":
            logger.warning("test webhook %s %s", request.webhook_id, result.error)
        return await self._record(request, 1, status, result)

    async def replay(
        self, delivery_id: str, replacement: WebhookRequest | None = None
    ) -> Replayed:
        """Put one dead letter back on the outbox as a fresh delivery (the replacement, with
        the same webhook_id, instead of the stored request when given)."""
        replacements = {delivery_id: replacement} if replacement is not None else None
        revived = await self._outbox.revive([delivery_id], replacements)
        return Replayed(count=len(revived), delivery_ids=revived)

    async def dead_letter(self, delivery_id: str) -> DeadLetter | None:
        """The dead letter with this id, if there is one."""
        letters = await self._outbox.dead_letters(limit=None)
        return next((letter for letter in letters if letter.delivery_id == delivery_id), None)

    def paused(self) -> list[PausedEndpoint]:
        """Campaign endpoints paused after answering 410 Gone."""
        return list(self._paused.values())

    def resume(self, campaign_id: str, endpoint: str | None = None) -> int:
        """Unpause a campaign's endpoints (all, or one); return how many were resumed."""
        keys = [
            key
            for key in self._paused
            if key[0] == campaign_id and (endpoint is None or key[1] == endpoint)
        ]
        for key in keys:
            del self._paused[key]
        return len(keys)

    def _connect(self) -> Sender:
        if self._sender is None:
            self._sender = Sender(
                signer=self._signer,
                guard=self.guard,
                timeout=self._settings.timeout,
                connections_per_endpoint=self._limit,
            )
        return self._sender

    # The pump: claim due work, apply the quota, hand each envelope to its endpoint.

    async def _pump(self) -> None:
        while True:
            try:
                batch = await self._outbox.claim(_CLAIM_BATCH, _CLAIM_WAIT)
                if not batch:
                    continue
                now = self._clock()
                for envelope in await self._apply_quota(batch, now):
                    await self._route(envelope, now)
            except Exception:
                logger.exception("delivery pump failed; retrying in 1s")
                await asyncio.sleep(1.0)

    async def _apply_quota(self, batch: list[Envelope], now: float) -> list[Envelope]:
        quota = self._settings.monthly_quota
        if quota is None:
            return batch
        fresh = [envelope for envelope in batch if not envelope.counted]
        if not fresh:
            return batch
        period = datetime.fromtimestamp(now, self._timezone).strftime("%Y-%m")
        total = await self._outbox.add_usage(period, len(fresh))
        over = min(len(fresh), max(0, total - quota))
        if over:
            await self._outbox.add_usage(period, -over)
        for envelope in fresh[: len(fresh) - over]:
            envelope.counted = True
        if not over:
            return batch
        suppressed = fresh[len(fresh) - over :]
        error = f"monthly quota of {quota} deliveries reached"
        for envelope in suppressed:
            await self._outbox.ack(envelope)
            await self._record(
                envelope.request, 0, "quota_exceeded", AttemptResult(outcome="failed", error=error)
            )
        return [envelope for envelope in batch if envelope.counted]

    async def _route(self, envelope: Envelope, now: float) -> None:
        request = envelope.request
        try:
            key = endpoint_of(request.url)
        except InvalidRequest as exc:
            await self._bury(envelope, "failed", AttemptResult(outcome="failed", error=str(exc)))
            return
        if now >= envelope.enqueued_at + self._settings.max_age:
            error = envelope.last_error or "max_age reached"
            await self._bury(envelope, "dead", AttemptResult(outcome="retry", error=error))
            return
        pause = self._paused.get((request.campaign_id, key))
        if pause is not None:
            await self._bury(envelope, "paused", AttemptResult(outcome="gone", error=pause.reason))
            return
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _Endpoint(key, self._breaker_policy)
        if len(endpoint.queue) >= self._queue_per_endpoint:
            await self._outbox.retry_at(envelope, now + _OVERFLOW_DELAY * self._rng.uniform(1, 2))
            return
        endpoint.queue.append(envelope)
        if endpoint.workers < self._limit:
            endpoint.workers += 1
            task = asyncio.create_task(self._work(endpoint))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self, endpoint: _Endpoint) -> None:
        """One of an endpoint's at most `concurrency_per_endpoint` workers: drain its queue."""
        queue = endpoint.queue
        try:
            while queue and not self._stopping:
                now = self._clock()
                if not endpoint.breaker.allow(now):
                    await self._defer_queue(endpoint)
                    break
                envelope = queue.popleft()
                if now >= envelope.enqueued_at + self._settings.max_age:
                    endpoint.breaker.released()
                    error = envelope.last_error or "max_age reached while queued"
                    await self._bury(envelope, "dead", AttemptResult(outcome="retry", error=error))
                    continue
                await self._attempt(endpoint, envelope)
        finally:
            endpoint.workers -= 1
            if not endpoint.workers and not queue and endpoint.breaker.is_closed:
                self._endpoints.pop(endpoint.key, None)

    async def _defer_queue(self, endpoint: _Endpoint) -> None:
        """Send an endpoint's queue back to the outbox until its breaker lets requests through."""
        due = endpoint.breaker.retry_time(self._clock())
        while endpoint.queue:
            envelope = endpoint.queue.popleft()
            await self._outbox.retry_at(envelope, due + self._rng.uniform(0.0, 0.5))

    async def _attempt(self, endpoint: _Endpoint, envelope: Envelope) -> None:
        assert self._sender is not None
        settled = False
        try:
            envelope.attempts += 1
            result = await self._sender.send(envelope.request)
            await self._settle(endpoint, envelope, result)
            settled = True
        except Exception:
            # A bug must not lose the delivery: log it and schedule the envelope again.
            logger.exception("delivery attempt of %s failed", envelope.delivery_id)
            due = self._clock() + self._backoff.delay(envelope.attempts, self._rng)
            await self._outbox.retry_at(envelope, due)
        finally:
            if not settled:
                endpoint.breaker.released()

    async def _settle(self, endpoint: _Endpoint, envelope: Envelope, result: AttemptResult) -> None:
        now = self._clock()
        outcome = result.outcome
        request = envelope.request
        breaker = endpoint.breaker
        if outcome == "delivered":
            breaker.succeeded()
            await self._outbox.ack(envelope)
            await self._record(request, envelope.attempts, "delivered", result)
        elif outcome == "retry":
            if result.status_code == 429:
                breaker.succeeded()  # alive, only asking us to slow down
            else:
                breaker.failed(now)
            envelope.last_error = result.error
            delay = result.retry_after
            if delay is None:
                delay = self._backoff.delay(envelope.attempts, self._rng)
            due = now + delay
            deadline = envelope.enqueued_at + self._settings.max_age
            if envelope.attempts >= self._settings.max_attempts or due > deadline:
                await self._bury(envelope, "dead", result, envelope.attempts)
            else:
                await self._outbox.retry_at(envelope, due)
                await self._record(request, envelope.attempts, "retrying", result, next_at=due)
        elif outcome == "gone":
            breaker.succeeded()
            reason = f"{endpoint.key} answered 410 Gone; paused for campaign {request.campaign_id}"
            self._paused[(request.campaign_id, endpoint.key)] = PausedEndpoint(
                campaign_id=request.campaign_id, endpoint=endpoint.key, since=now, reason=reason
            )
            logger.warning("webhook endpoint paused: %s", reason)
            await self._bury(envelope, "paused", result, envelope.attempts)
        else:
            if result.status_code is not None:
                breaker.succeeded()
            else:
                breaker.released()
            status: Status = "refused" if outcome == "refused" else "failed"
            await self._bury(envelope, status, result, envelope.attempts)

    async def _bury(
        self, envelope: Envelope, status: Status, result: AttemptResult, attempt: int = 0
    ) -> None:
        """Dead-letter an envelope and log why."""
        await self._outbox.dead_letter(envelope, status, result.error)
        if status == "refused":
            logger.warning("webhook %s refused: %s", envelope.delivery_id, result.error)
        elif status == "dead":
            logger.warning(
                "webhook %s dead after %d attempts: %s",
                envelope.delivery_id,
                envelope.attempts,
                result.error,
            )
        await self._record(envelope.request, attempt, status, result)

    async def _record(
        self,
        request: WebhookRequest,
        attempt: int,
        status: Status,
        result: AttemptResult,
        next_at: float | None = None,
    ) -> DeliveryAttempt:
        entry = DeliveryAttempt(
            at=self._clock(),
            delivery_id=request.webhook_id,
            attempt=attempt,
            campaign_id=request.campaign_id,
            variant_id=request.variant_id,
            user_key=request.user_key,
            method=request.method,
            url=mask_url(request.url),
            status=status,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            response=result.response,
            next_attempt_at=next_at,
        )
        await self._log.add(entry)
        self._metrics.outcome[status].inc()
        if result.latency_ms is not None:
            self._metrics.latency.observe(result.latency_ms / 1000.0)
        return entry

    def _open_breakers(self) -> float:
        return float(sum(1 for e in self._endpoints.values() if not e.breaker.is_closed))
