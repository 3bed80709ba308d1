"""The requests of one turn of the event loop, run through the pipeline together.

    together = Together(run)  # run(events, now) -> rejected (position, why), for a whole group
    rejected = await together.run(events, now)

Under load, many requests arrive in one turn of the event loop, most of them carrying a single
message. Run one by one, each pays the fixed costs of a pass through the pipeline — a load, a
plan, a commit, a write kept, the counting — that a batch of twenty pays once. Gathered, the
requests of a turn go through the pipeline as one batch at its end, their events in the order
the requests came, and each request gets back what concerns it: its own events' rejections,
by their positions in it. What fails the whole group (the store unavailable, the data directory
not writable) fails each of its requests alike, as it would have failed each alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from collector.events import Event

Rejected = list[tuple[int, str]]  # (position, why) of the events that left no trace
Run = Callable[[Sequence[Event], float], Awaitable[Rejected]]

GROUP_EVENTS = 32  # a group holds at most this many events (unless one request has more)


class _Waiting(NamedTuple):
    events: Sequence[Event]
    now: float
    rejected: asyncio.Future[Rejected]


class _Group:
    """The requests gathered for one pass, and their events' count."""

    __slots__ = ("events", "started", "waiting")

    def __init__(self) -> None:
        self.waiting: list[_Waiting] = []
        self.events = 0
        self.started = False


class Together:
    """Runs the requests of each turn of the event loop as one batch of at most GROUP_EVENTS
    events: every request of a group is answered when the whole group is kept, so its size
    bounds how long one waits for the others. A request of more than half as many events runs
    alone, at once: it is a batch already (its fixed costs shared by its own events), and
    waiting a turn for company would only delay it."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._group: _Group | None = None  # gathering in this turn
        self._running: set[asyncio.Task[None]] = set()  # groups under way

    async def run(self, events: Sequence[Event], now: float) -> Rejected:
        """Run a request's events with the others of this turn; its events' rejections."""
        if 2 * len(events) > GROUP_EVENTS:  # no room for company: it runs alone, at once
            return await self._run(events, now)
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None or group.events + len(events) > GROUP_EVENTS:
            if group is not None:
                self._start(group)  # full: it goes now, the next requests make another
            group = self._group = _Group()
            loop.call_soon(self._start, group)
        waiting = _Waiting(events, now, loop.create_future())
        group.waiting.append(waiting)
        group.events += len(events)
        return await waiting.rejected

    def _start(self, group: _Group) -> None:
        if group.started:
            return
        group.started = True
        if self._group is group:
            self._group = None
        task = asyncio.get_running_loop().create_task(self._run_group(group.waiting))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_group(self, group: list[_Waiting]) -> None:
        if len(group) == 1:
            events = group[0].events
        else:
            events = [event for waiting in group for event in waiting.events]
        try:
            rejected = await self._run(events, max(waiting.now for waiting in group))
        except BaseException as exc:  # each request fails as it would have alone
            for waiting in group:
                if not waiting.rejected.done():
                    waiting.rejected.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        found = iter(rejected)  # in position order
        pending = next(found, None)
        for waiting in group:
            end = start + len(waiting.events)
            own: Rejected = []
            while pending is not None and pending[0] < end:
                own.append((pending[0] - start, pending[1]))
                pending = next(found, None)
            if not waiting.rejected.done():  # else its request was given up meanwhile
                waiting.rejected.set_result(own)
            start = end
