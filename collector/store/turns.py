"""What is handed in during one turn of the event loop, done together at its end.

    gathering = Gathering(do, limit=32, size=len)
    result = await gathering.add(item)  # done with the other items of this turn

`do(items)` does a whole batch and returns one result per item, in order; each `add` gets its
item's. What `do` raises, every item of its batch raises, as each would have alone. With a
`limit`, a batch holds items of at most that total `size` (unless one item is bigger): a full
batch takes no more, and the items after it make the next, done at the same turn's end. Used
for the requests of a turn through the pipeline (`collector.store.together`) and for Redis
mode's pipelines of a turn in one write (`collector.redis.connection`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Batch(Generic[Item, Result]):
    """The items gathered for one go, their results to come, and their total size."""

    __slots__ = ("items", "loop", "results", "size")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # asked once a batch: asking costs a getpid(2) each time on Python 3.11
        self.items: list[Item] = []
        self.results: list[asyncio.Future[Result]] = []
        self.size = 0


class Gathering(Generic[Item, Result]):
    """Items handed in during a turn of the event loop, done as one batch at its end."""

    def __init__(
        self,
        do: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        limit: int | None = None,
        size: Callable[[Item], int] = lambda _: 1,
    ) -> None:
        self._do = do
        self._limit = limit
        self._size = size
        self._batch: _Batch[Item, Result] | None = None  # gathering in this turn
        self._running: set[asyncio.Task[None]] = set()  # batches under way

    def add(self, item: Item) -> asyncio.Future[Result]:
        """Do `item` with the others of this turn: a future of its result, to await.

        A plain function handing back the future, not a coroutine awaiting it: the request's
        own task waits on the future directly, one coroutine fewer per request."""
        size = self._size(item)
        batch = self._batch
        if batch is None or (self._limit is not None and batch.size + size > self._limit):
            # none yet, or full (it takes no more): this item starts the next
            batch = self._batch = _Batch(asyncio.get_running_loop())
            # its first step runs after everything already due in this turn: the items handed
            # in meanwhile join it
            task = batch.loop.create_task(self._done(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        result: asyncio.Future[Result] = batch.loop.create_future()
        batch.items.append(item)
        batch.results.append(result)
        batch.size += size
        return result

    async def _done(self, batch: _Batch[Item, Result]) -> None:
        if self._batch is batch:  # it takes no more items: later ones start another
            self._batch = None
        try:
            results = await self._do(batch.items)
        except BaseException as exc:  # each item fails as it would have alone
            for future in batch.results:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for future, result in zip(batch.results, results, strict=True):
            if not future.done():  # else whoever waited for it gave up meanwhile
                future.set_result(result)
