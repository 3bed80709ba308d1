"""The delivery log in Redis: one capped stream shared by every process (`tw:deliveries`).

Attempts are appended in batches (one pipeline for all attempts logged meanwhile) and read
newest first with XREVRANGE. Same interface as `collector.delivery.log.DeliveryLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from collector.delivery.log import DeliveryAttempt, DeliveryLog, matches
from collector.errors import Unavailable
from collector.redis.connection import Command, RedisConnection
from collector.redis.keys import Keys

log = logging.getLogger("tripwire.deliverylog")

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(DeliveryAttempt)
_PAGE = 500  # entries read per XREVRANGE while filtering
_MAX_PENDING = 10_000  # attempts kept in memory while Redis is unreachable


class RedisDeliveryLog(DeliveryLog):
    """The last `capacity` attempts of every process, in a capped Redis stream."""

    def __init__(self, connection: RedisConnection, capacity: int = 10_000) -> None:
        super().__init__(capacity=0)
        self._connection = connection
        self._capacity = capacity
        self._pending: list[DeliveryAttempt] = []
        self._flushing: asyncio.Task[None] | None = None
        self._length = 0

    async def add(self, entry: DeliveryAttempt) -> None:
        """Append one attempt (written with the others logged meanwhile)."""
        if len(self._pending) >= _MAX_PENDING:
            del self._pending[0]
        self._pending.append(entry)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())

    async def flush(self) -> None:
        """Write what is waiting now (for shutdown and tests)."""
        if self._flushing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        if self._pending:
            await self._flush()

    async def _flush(self) -> None:
        key = Keys.delivery_log()
        while self._pending:
            batch, self._pending = self._pending, []
            commands: list[Command] = [
                ("XADD", key, "MAXLEN", "~", self._capacity, "*", "a", _ENCODER.encode(entry))
                for entry in batch
            ]
            commands.append(("XLEN", key))
            try:
                results = await self._connection.pipeline(commands, "logging deliveries")
                self._length = int(results[-1])
            except Unavailable:
                self._pending[:0] = batch[-(_MAX_PENDING - len(self._pending)) :]
                await asyncio.sleep(0.5)

    async def query(
        self,
        *,
        campaign: str | None = None,
        status: str | None = None,
        delivery_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryAttempt]:
        """Return matching attempts, newest first."""
        found: list[DeliveryAttempt] = []
        if limit <= 0:
            return found
        key = Keys.delivery_log()
        end = "+"
        scanned = 0
        while len(found) < limit and scanned < self._capacity * 2:
            page = await self._connection.call(
                "XREVRANGE", key, end, "-", "COUNT", _PAGE, what="reading the delivery log"
            )
            if not page:
                break
            for _entry_id, fields in page:
                attempt = _DECODER.decode(fields[b"a"])
                if matches(attempt, campaign, status, delivery_id):
                    found.append(attempt)
                    if len(found) >= limit:
                        break
            scanned += len(page)
            if len(page) < _PAGE:
                break
            end = "(" + page[-1][0].decode()
        return found

    def __len__(self) -> int:
        return self._length
