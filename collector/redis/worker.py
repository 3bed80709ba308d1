"""`tripwire worker`: a process that only delivers webhooks, from the outbox in Redis.

Any number of workers (and `serve` processes, which deliver too unless told not to) share the
outbox's consumer group: each entry goes to one of them, and entries held by a worker that
died are taken over by the others after `reclaim_after` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from zoneinfo import ZoneInfo

import msgspec
from prometheus_client import CollectorRegistry

from collector.config.settings import Settings
from collector.delivery.dispatcher import Dispatcher
from collector.redis.connection import RedisConnection
from collector.redis.deliverylog import RedisDeliveryLog
from collector.redis.outbox import RedisOutbox

log = logging.getLogger("tripwire.worker")


async def run_worker(settings: Settings, concurrency: int | None = None) -> None:
    """Deliver webhooks from the Redis outbox until SIGTERM or SIGINT."""
    webhooks = settings.config.webhooks
    if concurrency is not None:
        webhooks = msgspec.structs.replace(webhooks, concurrency_per_endpoint=concurrency)
    connection = RedisConnection(settings.store)
    outbox = RedisOutbox(connection)
    delivery_log = RedisDeliveryLog(connection)
    dispatcher = Dispatcher(
        outbox,
        webhooks,
        delivery_log,
        CollectorRegistry(),
        timezone=ZoneInfo(settings.config.timezone),
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await dispatcher.start()
    log.info(
        "delivering from %s as %s (%d per endpoint)",
        settings.store,
        outbox.consumer,
        webhooks.concurrency_per_endpoint,
    )
    try:
        await stopping.wait()
    finally:
        log.info("stopping: finishing deliveries in flight")
        await dispatcher.stop(grace=5.0)
        with contextlib.suppress(Exception):
            await delivery_log.flush()
        await connection.close()
