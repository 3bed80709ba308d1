"""Accepted events, fanned out to live subscribers (the admin's live events stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator, Sequence

from collector.events import Event


class EventFeed:
    """Accepted events, fanned out to live subscribers; the last few kept for a new subscriber."""

    def __init__(self, keep: int = 50, queue_size: int = 1000, max_subscribers: int = 100) -> None:
        self.recent: deque[Event] = deque(maxlen=keep)
        self.closed = False
        self.max_subscribers = max_subscribers
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event | None]] = set()

    @property
    def full(self) -> bool:
        """True when max_subscribers streams are open already."""
        return len(self._subscribers) >= self.max_subscribers

    def publish(self, events: Sequence[Event]) -> None:
        """Hand accepted events to every subscriber; a slow one loses events, never blocks."""
        self.recent.extend(events)
        for queue in self._subscribers:
            for event in events:
                if not queue.full():
                    queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[Event | None]]:
        """A queue receiving each event published from now on (None when the feed closes)."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    def close(self) -> None:
        """End every live stream (the server is shutting down)."""
        self.closed = True
        for queue in self._subscribers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
