"""Delivery log: one entry per webhook attempt, kept in a bounded ring, queried by the admin API.

    log = DeliveryLog(capacity=10_000)
    await log.add(entry)
    await log.query(campaign="cart-followup", status="dead", limit=50)   # newest first

Methods are async so that a shared (Redis) log can satisfy the same interface. Given a journal
(memory mode's data directory), the log is kept there too, newest `capacity` entries.
"""

from __future__ import annotations

import functools
from collections import deque
from typing import Final, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec

Status = Literal["delivered", "retrying", "failed", "dead", "refused", "quota_exceeded", "paused"]
STATUSES: Final[tuple[Status, ...]] = (
    "delivered",  # 2xx
    "retrying",  # transient failure, another attempt is scheduled
    "failed",  # permanent failure (4xx, 3xx, invalid request); dead-lettered
    "dead",  # transient failures until max_attempts or max_age; dead-lettered
    "refused",  # the SSRF guard refused the target; dead-lettered, never sent
    "quota_exceeded",  # the monthly quota was used up; suppressed, never sent
    "paused",  # 410 Gone, or the endpoint was already paused for this campaign; dead-lettered
)
_MASK: Final = "***"


class DeliveryAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """What happened on one attempt to deliver one webhook."""

    at: float  # epoch seconds when the attempt ended
    delivery_id: str  # the webhook-id: the same for every attempt of one delivery
    attempt: int  # 1 for the first attempt; 0 when no request was sent (quota, pause)
    campaign_id: str
    variant_id: str | None
    user_key: str
    method: str
    url: str  # with query values and userinfo masked
    status: Status
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    response: str | None = None  # first 4 KB of the response body
    next_attempt_at: float | None = None


_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(DeliveryAttempt).decode


@functools.lru_cache(maxsize=1024)  # campaigns reuse a few URLs
def mask_url(url: str) -> str:
    """Hide what may be secret in a URL: userinfo and every query value."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = _MASK + "@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(
            f"{pair.partition('=')[0]}={_MASK}" if "=" in pair else pair
            for pair in query.split("&")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def matches(
    entry: DeliveryAttempt, campaign: str | None, status: str | None, delivery_id: str | None
) -> bool:
    """Whether an attempt passes a log query's filters (None = any)."""
    return (
        (campaign is None or entry.campaign_id == campaign)
        and (status is None or entry.status == status)
        and (delivery_id is None or entry.delivery_id == delivery_id)
    )


class Journal(Protocol):
    """Where a log's entries are kept (memory mode: a journal of the data directory)."""

    def append(self, at: float, value: bytes) -> None:
        """Keep one entry, written with the next commit."""

    def entries(self) -> list[tuple[float, bytes]]:
        """What was kept, oldest first."""


class DeliveryLog:
    """The last `capacity` attempts, in memory (and in `journal` when given one)."""

    def __init__(self, capacity: int = 10_000, *, journal: Journal | None = None) -> None:
        self._entries: deque[DeliveryAttempt] = deque(maxlen=capacity)
        self._journal = journal
        if journal is not None:
            self._entries.extend(_DECODE(value) for _, value in journal.entries())

    async def add(self, entry: DeliveryAttempt) -> None:
        """Append one attempt, evicting the oldest past capacity."""
        self._entries.append(entry)
        if self._journal is not None:
            self._journal.append(entry.at, _ENCODE(entry))  # written with the next commit

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
        for entry in reversed(self._entries):
            if not matches(entry, campaign, status, delivery_id):
                continue
            found.append(entry)
            if len(found) >= limit:
                break
        return found

    def __len__(self) -> int:
        return len(self._entries)
