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

from collections.abc import Awaitable, Callable, Sequence

from collector.events import Event
from collector.store.turns import Gathering

Rejected = list[tuple[int, str]]  # (position, why) of the events that left no trace
Run = Callable[[Sequence[Event], float], Awaitable[Rejected]]
Request = tuple[Sequence[Event], float]  # a request's events, and when it came

# A group holds at most this many events (unless one request has more). At 64, 20-message
# requests share a pass two or three at a time: 4 % fewer instructions per message in memory
# mode than at 32, the same in Redis mode (at 128 memory mode gains no more and Redis mode
# loses 3 %: its bigger scripts and replies cost more than the round trips they save).
GROUP_EVENTS = 64


class Together:
    """Runs the requests of each turn of the event loop as one batch of at most GROUP_EVENTS
    events: every request of a group is answered when the whole group is kept, so its size
    bounds how long one waits for the others. A request of more than half as many events runs
    alone, at once: it is a batch already (its fixed costs shared by its own events), and
    waiting a turn for company would only delay it."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self._requests: Gathering[Request, Rejected] = Gathering(
            self._run_group, limit=GROUP_EVENTS, size=lambda request: len(request[0])
        )

    def run(self, events: Sequence[Event], now: float) -> Awaitable[Rejected]:
        """Run a request's events with the others of this turn: to await, its events'
        rejections."""
        if 2 * len(events) > GROUP_EVENTS:  # no room for company: it runs alone, at once
            return self._run(events, now)
        return self._requests.add((events, now))

    async def _run_group(self, group: list[Request]) -> list[Rejected]:
        """One pass for a group's events; each request's rejections, by position in it."""
        if len(group) == 1:
            events = group[0][0]
        else:
            events = [event for request, _ in group for event in request]
        rejected = await self._run(events, max(now for _, now in group))
        found = iter(rejected)  # in position order
        pending = next(found, None)
        each: list[Rejected] = []
        start = 0
        for request, _ in group:
            end = start + len(request)
            own: Rejected = []
            while pending is not None and pending[0] < end:
                own.append((pending[0] - start, pending[1]))
                pending = next(found, None)
            each.append(own)
            start = end
        return each
