"""Statistics of which values a user brings most often or last: `top`, `mode`, `last_unique`.

Values are told apart by a key: a string is its own key (its first KEY_CHARS characters); any
other value is keyed by its JSON text. Each bucket keeps the value as first seen (a long string
cut to KEY_CHARS) to show it back.

- `top` reads as an object `{value: count}` of the `size` most frequent values, most frequent
  first (ties: the most recently seen first); a value that is not a string is named by its JSON
  text (`"42"`). Conditions can ask `contains: shoes` (is it among the top values?).
- `mode` reads as the single most frequent value (ties: the most recently seen).
- `last_unique` reads as a list of the `size` most recently seen distinct values, newest first.

Bounded state: `top` and `mode` count at most `tracked` values per bucket with the Space-Saving
rule (a new value past the bound replaces the least counted one and inherits its count plus
one), so the reported counts of rare values are upper bounds while frequent values are found
and counted exactly as long as fewer than `tracked` distinct values compete; `last_unique`
keeps `size` values per bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from collector.engine.buckets import Bucket, Stat
from collector.engine.values import MISSING, Missing, Value

KEY_CHARS = 200
_json = msgspec.json.Encoder()


def _keyed(value: Value) -> tuple[str, Value]:
    """(key, value to show) for a value."""
    if value.__class__ is str:
        if len(value) > KEY_CHARS:
            value = value[:KEY_CHARS]
        return value, value
    return "\x00" + _json.encode(value).decode()[:KEY_CHARS], value


def _name(key: str) -> str:
    """A key as an object member name: the string itself, or the value's JSON text."""
    return key[1:] if key[:1] == "\x00" else key


class Frequent(Stat):
    """(idx, {key: [count, last seen t, value]}) — `top` (as an object) or `mode`."""

    def __init__(self, size: int, mode: bool) -> None:
        self.size = 1 if mode else size
        self.mode = mode
        self.tracked = max(20, 4 * self.size)

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        key, shown = _keyed(value)
        return (idx, {key: [1, t, shown]})

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        counts: dict[str, list[Any]] = bucket[1]  # updated in place, like distinct_count's map
        key, shown = _keyed(value)
        entry = counts.get(key)
        if entry is not None:
            entry[0] += 1
            if t > entry[1]:
                entry[1] = t
        elif len(counts) < self.tracked:
            counts[key] = [1, t, shown]
        else:
            least = min(counts, key=lambda k: (counts[k][0], counts[k][1]))
            inherited = counts.pop(least)[0]
            counts[key] = [inherited + 1, t, shown]
        return (bucket[0], counts)

    def _summed(self, buckets: Sequence[Bucket], low: int, high: int) -> dict[str, list[Any]]:
        total: dict[str, list[Any]] = {}
        for bucket in buckets:
            if not low <= bucket[0] <= high:
                continue
            for key, (count, t, shown) in bucket[1].items():
                mine = total.get(key)
                if mine is None:
                    total[key] = [count, t, shown]
                else:
                    mine[0] += count
                    if t > mine[1]:
                        mine[1] = t
        return total

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        total = self._summed(buckets, low, high)
        if not total:
            return MISSING
        ranked = sorted(total.items(), key=lambda item: (-item[1][0], -item[1][1]))
        if self.mode:
            return ranked[0][1][2]
        return {_name(key): entry[0] for key, entry in ranked[: self.size]}

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        total = self._summed((a, b), a[0], a[0])
        kept = sorted(total.items(), key=lambda item: (-item[1][0], -item[1][1]))
        return (a[0], dict(kept[: self.tracked]))


class LastUnique(Stat):
    """(idx, [[key, t, value], ...]) — the `size` latest distinct values, newest first."""

    def __init__(self, size: int) -> None:
        self.size = size

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        key, shown = _keyed(value)
        return (idx, [[key, t, shown]])

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        key, shown = _keyed(value)
        entries = bucket[1]
        if any(e[0] == key and e[1] > t for e in entries):
            return tuple(bucket)  # seen again later already
        # Between equal times, the order received decides: the value folded in last is newer.
        kept = [[key, t, shown], *(e for e in entries if e[0] != key)]
        kept.sort(key=lambda e: -e[1])  # stable: the new entry stays first among its equals
        return (bucket[0], kept[: self.size])

    def _latest(self, buckets: Sequence[Bucket], low: int, high: int) -> list[list[Any]]:
        found = [e for b in reversed(buckets) if low <= b[0] <= high for e in b[1]]
        found.sort(key=lambda e: -e[1])
        seen: set[str] = set()
        latest: list[list[Any]] = []
        for entry in found:
            if entry[0] not in seen:
                seen.add(entry[0])
                latest.append(entry)
                if len(latest) == self.size:
                    break
        return latest

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        latest = self._latest(buckets, low, high)
        return [entry[2] for entry in latest] if latest else MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], self._latest((a, b), a[0], a[0]))
