"""Variable and segment changes in Redis: written for every process, applied by every process.

A change is one field of the hash `tw:{definitions}` (`variables/NAME` or `segments/NAME`),
and the counter `tw:{definitions}:v` moves with every write; each process polls the counter and,
when it moved, applies the changes it has not applied yet, oldest first (see
`collector.definitions`). `tripwire export` reads the hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from collector.definitions import DefinitionChange, encode_change, in_order, row_key
from collector.errors import Unavailable
from collector.live import LiveConfig
from collector.redis.connection import RedisConnection

log = logging.getLogger("tripwire.definitions")

HASH = "tw:{definitions}"
VERSION = "tw:{definitions}:v"
POLL_SECONDS = 0.25


class RedisDefinitionSync:
    """Writes variable and segment changes to Redis and applies everyone's in this process."""

    def __init__(self, connection: RedisConnection, live: LiveConfig) -> None:
        self._connection = connection
        self._live = live
        self._version: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Apply the stored changes now (if Redis answers) and keep polling for more."""
        with contextlib.suppress(Unavailable):
            await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tripwire-definitions-sync")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def put(self, change: DefinitionChange) -> None:
        """Store a change for every process, and apply it here."""
        await self._connection.pipeline(
            [
                ("HSET", HASH, row_key(change.kind, change.name), encode_change(change)),
                ("INCR", VERSION),
            ],
            "storing a variable or segment",
        )
        await self.refresh()

    async def refresh(self) -> None:
        """Apply every stored change this process has not applied yet."""
        version = await self._connection.call("GET", VERSION, what="reading definitions")
        if version is None or version == self._version:
            return
        stored = await self._connection.call("HGETALL", HASH, what="reading definitions")
        self._live.apply_kept_definitions(in_order(list(stored.values())))
        self._version = version

    async def _poll(self) -> None:
        while self._task is not None:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except Unavailable:
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop every later change
                log.exception("reading variable and segment changes failed")
                await asyncio.sleep(1.0)


async def read_changes(connection: RedisConnection) -> list[DefinitionChange]:
    """The stored changes, oldest first (for `tripwire export`)."""
    stored = await connection.call("HGETALL", HASH, what="reading definitions")
    return in_order(list(stored.values()))
