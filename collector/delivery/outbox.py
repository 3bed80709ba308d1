"""The outbox: webhooks waiting to be sent, scheduled retries, and dead letters.

The `Outbox` protocol is what the dispatcher needs. Memory mode's `MemoryOutbox`
(`collector.memory.outbox`) implements it in-process and keeps every change in the data
directory; Redis mode's (`collector.redis.outbox`) maps it to Redis Streams: `put` = XADD;
`claim` = XAUTOCLAIM of stale entries + XREADGROUP + due members of a retry sorted set; `ack` =
XACK; `retry_at` = ZADD + XACK; `dead_letter` = XADD to a dead-letter stream + XACK; `add_usage`
= INCRBY.

    outbox = MemoryOutbox(disk)                 # or MemoryOutbox() to keep nothing
    await outbox.open()
    await outbox.put([request, ...])            # cheap: no network, idempotent per webhook_id
    batch = await outbox.claim(limit=100, wait=1.0)
    await outbox.ack(batch[0])                  # or retry_at(env, due) / dead_letter(env, ...)
    await outbox.close()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import msgspec

from collector.webhook import WebhookRequest

logger = logging.getLogger("tripwire.delivery")


class OutboxClosed(RuntimeError):
    """Work was offered to an outbox that is closed (shutting down)."""


class Envelope(msgspec.Struct, kw_only=True):
    """A webhook in the outbox, with its delivery state."""

    request: WebhookRequest
    enqueued_at: float  # start of the max_age window (first put, or the replay)
    due_at: float  # when the next attempt may start
    attempts: int = 0  # attempts made so far
    counted: bool = False  # already counted against the monthly quota
    last_error: str | None = None
    receipt: str | None = None  # backend's handle for ack (a Redis stream entry id)

    @property
    def delivery_id(self) -> str:
        """The delivery's id: its webhook-id, stable across retries and replays."""
        return self.request.webhook_id


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery that ended without success; replayable."""

    request: WebhookRequest
    status: str  # dead | failed | refused | paused
    error: str | None
    attempts: int
    dead_at: float

    @property
    def delivery_id(self) -> str:
        """The delivery's id (its webhook-id)."""
        return self.request.webhook_id


class Outbox(Protocol):
    """Storage for pending deliveries; one implementation per store mode."""

    async def open(self) -> None:
        """Prepare for use (load what a previous run left)."""

    async def close(self) -> None:
        """Stop taking work and keep what is left for the next start."""

    async def put(self, requests: Iterable[WebhookRequest]) -> None:
        """Enqueue new webhooks, due now; a webhook_id already pending is ignored."""

    async def claim(self, limit: int, wait: float) -> list[Envelope]:
        """Take up to `limit` due envelopes, waiting up to `wait` seconds for one."""

    async def ack(self, envelope: Envelope) -> None:
        """Forget a claimed envelope: it was delivered or suppressed."""

    async def retry_at(self, envelope: Envelope, due: float) -> None:
        """Put a claimed envelope back, to be claimed again at `due`."""

    async def dead_letter(self, envelope: Envelope, status: str, error: str | None) -> None:
        """Move a claimed envelope to the dead letters."""

    async def dead_letters(
        self,
        *,
        campaign: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """List dead letters, oldest first, by campaign and time of death."""

    async def revive(
        self, delivery_ids: Sequence[str], replacements: Mapping[str, WebhookRequest] | None = None
    ) -> list[str]:
        """Move dead letters back to pending as fresh deliveries; return the ids moved.
        A replacement (same webhook_id) is sent instead of the stored request."""

    async def add_usage(self, period: str, amount: int) -> int:
        """Add to a period's delivery count and return the new total."""

    def depth(self) -> int:
        """Envelopes pending or claimed and not yet settled."""
