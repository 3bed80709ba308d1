"""Which profiles memory mode lets go, how many it may hold, and telling the operator.

A profile goes when it was unseen for `state.user_ttl` ("expired"), or when the store holds
more than it may ("capacity"): `state.max_users`, or fewer when `state.max_memory_mb` is set and
that many profiles would take more. What one profile takes is measured, not guessed: every
ESTIMATE_EVERY events, the newest ESTIMATE_SAMPLE profiles are walked object by object (state,
ids, recent events, and their entries in the store's tables), and the byte budget divided by
their mean size is the bound. Messages' dedupe marks (24 h) are not in the budget.

Evictions are counted by reason (`tripwire_profiles_evicted{reason}`) and logged, at most once a
minute, with how many went since the last line.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec

from collector.config.schema import StateSettings

log = logging.getLogger("tripwire.store")

ESTIMATE_EVERY = 5_000  # events between measurements of what a profile takes
ESTIMATE_SAMPLE = 100  # profiles measured each time
LOG_SECONDS = 60.0
TABLE_ENTRY = 104  # bytes a key takes in the store's dicts (entry, hash slot, share of growth)
SPARE_AT_MOST = 64  # profiles with a pending wait passed over per eviction, at most


class Evictions:
    """The bound on profiles held, and the count and log of those let go."""

    def __init__(self, limits: StateSettings) -> None:
        self.counts: Counter[str] = Counter()  # by reason: "expired", "capacity"
        self._max_users = limits.max_users
        budget = limits.max_memory_mb
        self._budget = None if budget is None else budget * 1024 * 1024
        self.profile_bytes: float | None = None  # the last measurement
        self._events = 0
        self._unlogged: Counter[str] = Counter()
        self._logged_at = 0.0

    def capacity(self) -> int:
        """How many profiles may be held now."""
        if self._budget is None or not self.profile_bytes:
            return self._max_users
        return max(1, min(self._max_users, int(self._budget // self.profile_bytes)))

    def due_for_measuring(self, events: int) -> bool:
        """True when enough events came since the last measurement (only with a budget)."""
        if self._budget is None:
            return False
        self._events += events
        if self._events < ESTIMATE_EVERY and self.profile_bytes is not None:
            return False
        self._events = 0
        return True

    def measure(self, profiles: Iterable[tuple[Any, ...]]) -> None:
        """Take the mean size of some profiles, each given as the objects it holds."""
        seen: set[int] = set()
        total = count = 0
        for parts in profiles:
            ids = parts[1] if len(parts) > 1 else ()
            total += sum(_deep_size(part, seen) for part in parts)
            total += TABLE_ENTRY * (1 + len(ids))  # its entry in the profiles and the index
            count += 1
        if count:
            self.profile_bytes = total / count

    def count(self, reason: str, now: float) -> None:
        """One profile let go; a line in the log at most once a minute."""
        self.counts[reason] += 1
        self._unlogged[reason] += 1
        if now - self._logged_at >= LOG_SECONDS:
            went = ", ".join(f"{n} {why}" for why, n in sorted(self._unlogged.items()))
            log.warning(
                "let profiles go (%s): %d held at most now (state.max_users %d%s)",
                went,
                self.capacity(),
                self._max_users,
                "" if self._budget is None else f", state.max_memory_mb {self._budget >> 20}",
            )
            self._unlogged.clear()
            self._logged_at = now


def _deep_size(value: Any, seen: set[int]) -> int:
    """The bytes an object and everything it holds take, each object counted once."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        size += sum(_deep_size(item, seen) for item in value)
    elif isinstance(value, msgspec.Struct):
        size += sum(_deep_size(item, seen) for item in msgspec.structs.astuple(value))
    return size
