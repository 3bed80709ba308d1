"""The campaigns' decision counts in Redis: every process's, kept across restarts.

Each process counts its decisions in memory (they are its Prometheus metrics too) and adds what
it counted since the last time to the hash `tw:{counts}` once a second, in one pipeline of
HINCRBY; it then reads the whole hash back, so the dashboard shows every process's counts. A
kill loses at most the last second of one process's counts; the caps that decide whether a
campaign fires are kept per event, in the profiles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from collector.errors import Unavailable
from collector.redis.connection import Command, RedisConnection
from collector.redis.keys import PREFIX

log = logging.getLogger("tripwire.counts")

Label = tuple[str, str, str | None]  # campaign id, outcome, reason
KEY = f"{PREFIX}:{{counts}}"
SEPARATOR = "\x1f"


def _field(label: Label) -> str:
    campaign, outcome, reason = label
    return SEPARATOR.join((campaign, outcome, reason or ""))


def _label(field: bytes) -> Label:
    campaign, outcome, reason = field.decode().split(SEPARATOR)
    return campaign, outcome, reason or None


class RedisCounts:
    """Adds this process's decision counts to Redis and reads everyone's."""

    def __init__(
        self,
        connection: RedisConnection,
        local: Callable[[], Counter[Label]],
        interval: float = 1.0,
    ):
        self._connection = connection
        self._local = local  # this process's counts since it started, as they are read
        self._sent: Counter[Label] = Counter()  # the part of them already added to Redis
        self._interval = interval
        self.totals: Counter[Label] = Counter()  # every process's, as last read
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the totals now (if Redis answers) and keep them in step every second."""
        with contextlib.suppress(Unavailable):
            await self.sync()
        self._task = asyncio.create_task(self._run(), name="tripwire-counts")

    async def stop(self) -> None:
        """Add what is left to Redis and stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Unavailable):
            await self.sync()

    def current(self) -> Counter[Label]:
        """Every process's counts: the totals last read plus what this process has not sent."""
        unsent = self._local() - self._sent
        return self.totals + unsent if unsent else self.totals

    async def sync(self) -> None:
        """Add this process's new counts to Redis and read the totals back."""
        delta = self._local() - self._sent
        commands: list[Command] = [
            ("HINCRBY", KEY, _field(label), count) for label, count in delta.items()
        ]
        commands.append(("HGETALL", KEY))
        replies = await self._connection.pipeline(commands, "counting decisions")
        self._sent.update(delta)
        self.totals = Counter({_label(field): int(n) for field, n in replies[-1].items()})

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.sync()
            except Unavailable:
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop the counting
                log.exception("counting decisions in Redis failed")
