"""The requests of one turn of the event loop go through the pipeline together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from collector.errors import Unavailable
from collector.events import Event
from collector.store.together import GROUP_EVENTS, Rejected, Together


def page(message_id: str) -> Event:
    now = time.time()
    return Event(
        type="page", name="page", message_id=message_id, anonymous_id="a",
        timestamp=now, received_at=now,
    )


class Pipeline:
    """Records each pass it is given; refuses the events whose messageId starts with "bad"."""

    def __init__(self) -> None:
        self.passes: list[list[str]] = []

    async def run(self, events: Sequence[Event], now: float) -> Rejected:
        self.passes.append([event.message_id for event in events])
        await asyncio.sleep(0)  # as a store would, while its write is kept
        return [(i, "refused") for i, e in enumerate(events) if e.message_id.startswith("bad")]


async def test_a_turns_requests_share_one_pass_and_get_their_own_rejections() -> None:
    pipeline = Pipeline()
    together = Together(pipeline.run)
    requests = [
        [page("r0-a")],
        [page("r1-a"), page("bad-r1-b"), page("r1-c")],
        [page("bad-r2-a")],
        [page("r3-a"), page("bad-r3-b")],
    ]
    answers = await asyncio.gather(*(together.run(r, time.time()) for r in requests))
    assert answers == [[], [(1, "refused")], [(0, "refused")], [(1, "refused")]]
    assert pipeline.passes == [[e.message_id for r in requests for e in r]]  # one pass, in order


async def test_a_full_group_goes_and_the_next_requests_make_another() -> None:
    pipeline = Pipeline()
    together = Together(pipeline.run)
    requests = [[page(f"r{i}")] for i in range(GROUP_EVENTS + 5)]
    answers = await asyncio.gather(*(together.run(r, time.time()) for r in requests))
    assert answers == [[] for _ in requests]
    assert [len(p) for p in pipeline.passes] == [GROUP_EVENTS, 5]


async def test_a_request_that_is_a_batch_already_runs_alone_at_once() -> None:
    pipeline = Pipeline()
    together = Together(pipeline.run)
    big = [page(f"big-{i}") for i in range(GROUP_EVENTS // 2 + 1)]
    small = [page("small")]

    async def request(events: list[Event]) -> Rejected:  # each in a task, as the server runs it
        return await together.run(events, time.time())

    await asyncio.gather(request(small), request(big))
    assert pipeline.passes == [[e.message_id for e in big], ["small"]]


async def test_what_fails_the_group_fails_each_of_its_requests() -> None:
    async def unavailable(events: Sequence[Event], now: float) -> Rejected:
        raise Unavailable("the store is unavailable", retry_after=2)

    together = Together(unavailable)
    outcomes = await asyncio.gather(
        *(together.run([page(f"r{i}")], time.time()) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
    # and the next turn's requests are tried afresh
    with pytest.raises(Unavailable):
        await together.run([page("later")], time.time())
