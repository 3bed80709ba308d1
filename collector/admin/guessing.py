"""Guessing the admin token: failed tries are limited per client address, weak tokens named.

Every wrong token — a bearer header on the admin API or `/metrics`, the dashboard's login
form — costs its client address one try from a bucket of `TRIES` that refills at one try every
`REFILL_SECONDS`. With the bucket empty, that address's token tries are refused (429 with
`Retry-After`) without being checked, right or wrong, so guessing goes at one try per
`REFILL_SECONDS` at best. A right token costs nothing. The per-address state is bounded
(`MAX_CLIENTS`, the least recently failing forgotten first) and kept per process.

    guesses = Guesses()
    wait = guesses.refused(address)      # seconds to wait, or None: may try
    guesses.failed(address)              # a wrong token

`weakness(token)` says why a token is too easy to guess, for a warning at start.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

TRIES: Final = 10
REFILL_SECONDS: Final = 1.0
MAX_CLIENTS: Final = 10_000
MIN_LENGTH: Final = 16
_COMMON: Final = frozenset(
    {
        "secret", "password", "passw0rd", "admin", "administrator", "token", "changeme",
        "letmein", "test", "testing", "tripwire", "qwerty", "default", "root", "demo",
        "123456", "12345678", "1234567890", "abc123", "welcome",
    }
)


class Guesses:
    """Failed token tries per client address (a leaky bucket each)."""

    def __init__(
        self,
        tries: int = TRIES,
        refill_seconds: float = REFILL_SECONDS,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tries = tries
        self._refill = refill_seconds
        self._max_clients = max_clients
        self._clock = clock
        self._spent: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tries spent, when

    def refused(self, client: str) -> float | None:
        """Seconds until `client` may try a token again, or None when it may now."""
        spent = self._left_spent(client)
        if spent + 1 <= self._tries:
            return None
        return (spent + 1 - self._tries) * self._refill

    def failed(self, client: str) -> None:
        """`client` tried a wrong token."""
        spent = self._left_spent(client) + 1
        self._spent[client] = (spent, self._clock())
        self._spent.move_to_end(client)
        while len(self._spent) > self._max_clients:
            self._spent.popitem(last=False)

    def _left_spent(self, client: str) -> float:
        """Tries `client` has spent, after what has refilled since."""
        entry = self._spent.get(client)
        if entry is None:
            return 0.0
        spent, at = entry
        spent = max(0.0, spent - (self._clock() - at) / self._refill)
        if spent == 0.0:
            del self._spent[client]
        return spent


def retry_after(seconds: float) -> str:
    """A Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(seconds)))


def weakness(token: str) -> str | None:
    """Why `token` is easy to guess, or None."""
    if token.strip().lower() in _COMMON:
        return "it is a common word"
    if len(token) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    if len(set(token)) < 6:
        return "it repeats a few characters"
    return None
