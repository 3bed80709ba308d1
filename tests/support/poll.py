"""Waiting on a condition: the one poll-until of the test suite, for plain and async tests.

Tests never sleep a fixed time; they wait until what they expect is true, and fail with a
message naming it after `timeout` seconds (generous: the suite runs on busy 2-core machines).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Message = str | Callable[[], str]


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: Message = "",
    *,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """Poll `condition()` until it returns something truthy and return that; fail after
    `timeout` seconds, or at once when `give_up()` says it never will (a process died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        _check(deadline, timeout, message or repr(condition), give_up)
        time.sleep(interval)


async def wait_until_async(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: Message = "",
) -> T:
    """Like `wait_until`, without blocking the event loop; `condition` may be a coroutine."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # awaited above when it was awaitable
        _check(deadline, timeout, message or repr(condition), None)
        await asyncio.sleep(interval)


def _check(
    deadline: float, timeout: float, message: Message, give_up: Callable[[], bool] | None
) -> None:
    stop = give_up is not None and give_up()
    if stop or time.monotonic() > deadline:
        text = message() if callable(message) else message
        reason = "gave up" if stop else f"timed out after {timeout}s"
        raise AssertionError(f"{reason} waiting for {text}")
