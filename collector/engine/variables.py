"""User variables (ユーザー情報変数): a statistic of an event field over a window, per user.

Windows are bucketed. Every window maps the event's time to a bucket index, and a read covers
a range of indexes:

- `all`: one bucket (index 0);
- `session` / `previous_session`: the bucket is the session number; a read covers the current
  session, or the one before it;
- `today`: the bucket is the local day (configured timezone) and a read covers today only;
- `Nd` / `Nh`: local days / hours, grouped so that at most 64 buckets exist; a read covers the
  current bucket and the ones before it up to N units (so `7d` is today and the 6 days before).

A variable's state is a tuple of buckets `(index, ...payload)`, oldest first, trimmed to the
window; when only one bucket is ever kept ("flat"), the state is that bucket itself. The payload
depends on the statistic (see each `Stat`). `latest`, `previous` and `last_at` need only the
newest bucket; `distinct_count` keeps `(newest index, map)`, the map holding at most
`DISTINCT_LIMIT` values with the last two bucket indexes each was seen in. `top`, `mode` and
`last_unique` (values counted or remembered, bounded by the variable's `size`) live in
`collector.engine.ranked`.

Why tuples: a profile's state lives for days and millions of profiles may be held at once. A
state made of tuples of plain values is one the cyclic garbage collector stops tracking after
its first pass over it, where lists would be walked by every full collection for the profile's
whole life; folding a value in makes a new tuple (`Stat.folded`). A state decoded from msgpack
holds lists where buckets nest (`Any` arrays decode as lists); every stat only indexes buckets,
so both read the same.

A variable's `where` sees other variables as they were before the event being recorded.

Values: a missing or null field skips the event (`count` without a field counts every matching
event). `sum avg min max` take numbers, or strings holding a finite number; other values skip
the event. `count` and `distinct_count` read as 0 without data; the other stats read as missing,
and then the variable's `default` (if any) stands in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from operator import attrgetter
from typing import Literal, cast

import msgspec

from collector.config.registry import TIME_STATS
from collector.config.schema import window_seconds
from collector.engine.buckets import Bucket, Stat
from collector.engine.profile import State
from collector.engine.ranked import Frequent, LastUnique
from collector.engine.scope import Predicate, Scope, as_number, path_getter
from collector.engine.values import MISSING, Missing, Value
from collector.events import Event

MAX_BUCKETS = 64
DISTINCT_LIMIT = 100
_DISTINCT_KEY_LENGTH = 64

WindowKind = Literal["all", "session", "previous_session", "today", "days", "hours"]


class Window:
    """Maps the event's time to a bucket index and says which buckets a read covers."""

    __slots__ = ("index", "keep", "kind", "offset", "span", "width")

    def __init__(self, window: str) -> None:
        self.kind: WindowKind = _KINDS.get(window, "days")
        self.width = 1
        self.span = 1  # buckets a read covers
        self.offset = 0  # how far the covered range ends before the current bucket
        seconds = window_seconds(window)
        if window == "previous_session":
            self.offset = 1
        elif seconds is not None:
            units = int(window[:-1])
            self.kind = "hours" if window.endswith("h") else "days"
            self.width = -(-units // MAX_BUCKETS)
            self.span = -(-units // self.width)
        self.keep = self.span + self.offset  # buckets worth keeping
        self.index = _index(self.kind, self.width)  # the bucket the current time falls in


_KINDS: dict[str, WindowKind] = {
    "all": "all", "session": "session", "previous_session": "previous_session", "today": "today",
}


def _index(kind: WindowKind, width: int) -> Callable[[Scope], int]:
    """A window's bucket index for a scope, chosen once (attrgetter runs in C)."""
    if kind == "all":
        return _all_time
    if kind in ("days", "hours"):
        unit = "day" if kind == "days" else "hour"
        if width == 1:
            return attrgetter(unit)
        read = attrgetter(unit)
        return lambda scope: read(scope) // width
    return attrgetter("day" if kind == "today" else "session_number")


def _all_time(scope: Scope) -> int:
    return 0


class Count(Stat):
    """(idx, n)"""

    empty: int | Missing = 0

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, 1)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], bucket[1] + 1)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        total = 0
        for bucket in reversed(buckets):
            idx = bucket[0]
            if idx < low:
                break
            if idx <= high:
                total += bucket[1]
        return total

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], a[1] + b[1])


def add(a: Value, b: Value) -> Value:
    """a + b, as a float once an integer sum leaves signed 64 bits (which state stores keep)."""
    total = a + b
    if total.__class__ is int and not -_INT64 <= total < _INT64:
        return float(total)
    return total


_INT64 = 2**63


class Sum(Count):
    """(idx, total)"""

    numeric = True
    empty = MISSING

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, value)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], add(bucket[1], value))

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        total: Value | Missing = MISSING
        for bucket in reversed(buckets):
            idx = bucket[0]
            if idx < low:
                break
            if idx <= high:
                total = bucket[1] if total is MISSING else add(total, bucket[1])
        return total

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], add(a[1], b[1]))


class Average(Stat):
    """(idx, total, n)"""

    numeric = True

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, value, 1)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], add(bucket[1], value), bucket[2] + 1)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        total, n = 0.0, 0
        for bucket in reversed(buckets):
            idx = bucket[0]
            if idx < low:
                break
            if idx <= high:
                total += bucket[1]
                n += bucket[2]
        return total / n if n else MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], add(a[1], b[1]), a[2] + b[2])


class Minimum(Stat):
    """(idx, lowest)"""

    numeric = True

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, value)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], value) if value < bucket[1] else tuple(bucket)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        found = [bucket[1] for bucket in buckets if low <= bucket[0] <= high]
        return min(found) if found else MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], min(a[1], b[1]))


class Maximum(Minimum):
    """(idx, highest)"""

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], value) if value > bucket[1] else tuple(bucket)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        found = [bucket[1] for bucket in buckets if low <= bucket[0] <= high]
        return max(found) if found else MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return (a[0], max(a[1], b[1]))


def _newest_until(buckets: Sequence[Bucket], high: int) -> Bucket | None:
    for bucket in reversed(buckets):
        if bucket[0] <= high:
            return bucket
    return None


class Latest(Stat):
    """(idx, value, t) — only the newest bucket is kept (two for previous_session)."""

    single = True

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, value, t)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], value, t) if t >= bucket[2] else tuple(bucket)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        bucket = _newest_until(buckets, high)
        return bucket[1] if bucket is not None and bucket[0] >= low else MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return tuple(a) if a[2] >= b[2] else tuple(b)


class Previous(Stat):
    """(idx, value, t, previous value, its t, its bucket index or None) — newest bucket only."""

    single = True

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        if before is None:
            return (idx, value, t, None, 0.0, None)
        return (idx, value, t, before[1], before[2], before[0])

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        idx = bucket[0]
        if t >= bucket[2]:
            return (idx, value, t, bucket[1], bucket[2], idx)
        if bucket[5] is None or t >= bucket[4]:
            return (idx, bucket[1], bucket[2], value, t, idx)
        return tuple(bucket)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        bucket = _newest_until(buckets, high)
        if bucket is None or bucket[5] is None or bucket[0] < low or not low <= bucket[5] <= high:
            return MISSING
        return bucket[3]

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        seen = [(a[0], a[2], a[1]), (b[0], b[2], b[1])]
        seen += [(x[5], x[4], x[3]) for x in (a, b) if x[5] is not None]
        seen.sort(key=lambda item: (item[0], item[1]), reverse=True)
        (idx, t, value), (before_idx, before_t, before) = seen[0], seen[1]
        return (idx, value, t, before, before_t, before_idx)


class First(Stat):
    """(idx, value, t) — the earliest value in each bucket."""

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        return (idx, value, t)

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        return (bucket[0], value, t) if t < bucket[2] else tuple(bucket)

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        for bucket in buckets:
            if low <= bucket[0] <= high:
                return bucket[1]
        return MISSING

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        return tuple(a) if a[2] <= b[2] else tuple(b)


class Distinct(Stat):
    """(newest idx, {value key: [last idx, idx before that]}), at most DISTINCT_LIMIT values."""

    empty = 0

    def record_distinct(self, state: State, idx: int, keep: int, value: Value) -> State:
        """The state with a value seen at bucket `idx` (its map is updated in place)."""
        if not state:
            state = (idx, {})
        seen: dict[str, list[int]] = state[1]
        key = value if value.__class__ is str else "\x00" + msgspec.json.encode(value).decode()
        if len(key) > _DISTINCT_KEY_LENGTH:  # a long value is remembered by its digest
            key = "\x01" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        entry = seen.get(key)
        if entry is None:
            seen[key] = [idx]
        elif entry[0] < idx:
            seen[key] = [idx, entry[0]]
        elif entry[0] > idx and (len(entry) == 1 or entry[1] < idx):
            seen[key] = [entry[0], idx]
        if idx > state[0]:
            state = (idx, seen)
            stale = [k for k, e in seen.items() if e[0] <= idx - keep]
            for k in stale:
                del seen[k]
        if len(seen) > DISTINCT_LIMIT:
            del seen[min(seen, key=lambda k: seen[k][0])]
        return state

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        count = 0
        seen = cast("dict[str, list[int]]", buckets[1])  # the state is (newest index, map)
        for entry in seen.values():
            last = entry[0]
            if low <= last <= high or (last > high and len(entry) == 2 and low <= entry[1] <= high):
                count += 1
        return count

    def merge_distinct(self, a: Bucket, b: Bucket, keep: int) -> tuple[Value, ...]:
        """Two states of one distinct count, as one."""
        newest = max(a[0], b[0])
        seen: dict[str, list[int]] = {k: list(v) for k, v in a[1].items()}
        for key, entry in b[1].items():
            indexes = sorted(set(seen.get(key, [])) | set(entry), reverse=True)[:2]
            seen[key] = indexes
        kept = sorted(
            ((k, e) for k, e in seen.items() if e[0] > newest - keep), key=lambda item: -item[1][0]
        )
        return (newest, dict(kept[:DISTINCT_LIMIT]))


STATS: dict[str, Stat] = {
    "count": Count(),
    "sum": Sum(),
    "avg": Average(),
    "min": Minimum(),
    "max": Maximum(),
    "latest": Latest(),
    "previous": Previous(),
    "first": First(),
    "distinct_count": Distinct(),
    "first_at": First(),
    "last_at": Latest(),
}


def _sized(stat: str, size: int) -> Stat | None:
    """A statistic configured with a size (`top`, `mode`, `last_unique`), else None."""
    if stat in ("top", "mode"):
        return Frequent(size, mode=stat == "mode")
    if stat == "last_unique":
        return LastUnique(size)
    return None


_EVENT_ATTRIBUTES = {
    "event": "name",
    "name": "name",
    "type": "type",
    "message_id": "message_id",
    "messageId": "message_id",
    "user_id": "user_id",
    "userId": "user_id",
    "anonymous_id": "anonymous_id",
    "anonymousId": "anonymous_id",
    "timestamp": "timestamp",
}
_EVENT_DICTS = ("properties", "context", "traits")


@cache
def event_field(path: str) -> Callable[[Event], Value | Missing] | None:
    """A reader of a dotted path into an event (`properties.revenue`), or None if not one.

    One reader per path, so that variables reading the same field can share one read per event
    (`Recording`)."""
    root, _, rest = path.partition(".")
    if root in _EVENT_DICTS and rest:
        inner = path_getter(rest)
        if root == "properties":
            return lambda event: inner(event.properties)
        if root == "context":
            return lambda event: inner(event.context)
        return lambda event: inner(event.traits)
    attribute = _EVENT_ATTRIBUTES.get(path)
    if attribute is not None:
        return lambda event: getattr(event, attribute)
    return None


Recorder = Callable[[dict[str, State], Value, Scope], None]
"""Folds the value an event brings into one variable's state, in a user's variables."""


class Variable:
    """A compiled variable: which events feed it, how, and how to read its value."""

    __slots__ = (
        "default", "distinct", "events", "extract", "field", "flat", "index", "keep", "name",
        "record_value", "stat", "time_value", "where", "window",
    )

    def __init__(
        self,
        name: str,
        events: tuple[str, ...],
        stat: str,
        window: str,
        field: Callable[[Event], Value | Missing] | None = None,
        default: Value = None,
        size: int = 5,
    ) -> None:
        self.name = name
        self.events = events
        self.stat = _sized(stat, size) or STATS[stat]
        self.time_value = stat in TIME_STATS
        self.window = Window(window)
        self.index = self.window.index
        self.keep = 1 + self.window.offset if self.stat.single else self.window.keep
        self.distinct = self.stat if isinstance(self.stat, Distinct) else None
        self.flat = self.keep == 1 and self.distinct is None  # the state is the one bucket
        self.field = field
        self.where: Predicate | None = None  # set once conditions are compiled
        self.default = MISSING if default is None else default
        # what `record` runs, chosen once for the statistic, window and field
        self.extract = self._extractor()
        self.record_value = _recorder(self)

    def _extractor(self) -> Callable[[Scope], Value | Missing]:
        """The value an event brings, or MISSING when it brings none (the event is skipped)."""
        if self.time_value:
            return attrgetter("t")
        field = self.field
        if field is None:
            return _no_value
        if self.stat.numeric:
            return lambda scope: (
                MISSING if (value := field(scope.event)) is MISSING or value is None
                else as_number(value)
            )
        return lambda scope: MISSING if (value := field(scope.event)) is None else value

    def record(self, scope: Scope) -> None:
        """Fold the current event into the user's state (the caller has checked `where`)."""
        value = self.extract(scope)
        if value is not MISSING:
            self.record_value(scope.state.variables, value, scope)

    def read(self, scope: Scope) -> Value | Missing:
        """The variable's current value: the statistic, else the default, else MISSING."""
        state = scope.state.variables.get(self.name)
        value = self.stat.empty
        if state:
            window = self.window
            high = self.index(scope) - window.offset
            low = high - window.span + 1
            value = self.stat.read((state,) if self.flat else state, low, high)
        return self.default if value is MISSING else value

    def merge(self, a: State, b: State, a_is_newer: bool) -> State:
        """Merge two profiles' states; session windows keep the newer profile's sessions."""
        if self.window.kind in ("session", "previous_session"):
            return a if a_is_newer else b
        if self.distinct is not None:
            return self.distinct.merge_distinct(a, b, self.keep)
        if self.flat:
            return tuple(self.stat.merge((a,), (b,), 1)[0])
        return self.stat.merge(a, b, self.keep)


def _no_value(scope: Scope) -> None:
    return None  # `count` without a field counts the event itself


class Recording:
    """The variables an event feeds unconditionally, recorded together.

    A field several of them read is read from the event once (and made a number once for those
    taking numbers); each variable then costs one call of its `Recorder`.
    """

    __slots__ = ("counting", "fields", "timing")

    def __init__(self, variables: Iterable[Variable]) -> None:
        counting: list[Recorder] = []  # `count` without a field: every event counts
        timing: list[Recorder] = []  # `first_at`, `last_at`: the event's time
        fields: dict[tuple[Callable[[Event], Value | Missing], bool], list[Recorder]] = {}
        for variable in variables:
            if variable.time_value:
                timing.append(variable.record_value)
            elif variable.field is None:
                counting.append(variable.record_value)
            else:
                key = (variable.field, variable.stat.numeric)
                fields.setdefault(key, []).append(variable.record_value)
        self.counting = tuple(counting)
        self.timing = tuple(timing)
        self.fields = tuple(
            (read, numeric, tuple(found))
            for (read, numeric), found in fields.items()
        )

    def record(self, scope: Scope) -> None:
        """Fold the current event into the state of every variable it feeds."""
        variables = scope.state.variables
        for record in self.counting:
            record(variables, None, scope)
        t = scope.t
        for record in self.timing:
            record(variables, t, scope)
        event = scope.event
        for read, numeric, recorders in self.fields:
            value = read(event)
            if value is MISSING or value is None:
                continue
            if numeric:
                value = as_number(value)
                if value is MISSING:
                    continue
            for record in recorders:
                record(variables, value, scope)


def _recorder(variable: Variable) -> Recorder:
    """How a value is folded into the variable's state, chosen once for statistic and window.

    The common cases of `count`, `latest`/`last_at` and `first`/`first_at` are written out (one
    call per event, no bucket tuples built only to be taken apart); every other case is the
    statistic's own fold, so what is stored is the same either way.
    """
    name, stat, keep = variable.name, variable.stat, variable.keep
    index = None if variable.window.kind == "all" else variable.index  # None: always bucket 0
    at = index or _all_time
    if variable.distinct is not None:
        return _distinct(name, at, keep, variable.distinct)
    fold = _flat(name, at, stat) if variable.flat else _buckets(name, at, keep, stat)
    kind = stat.__class__
    if kind is Count:
        return _count_flat(name, index) if variable.flat else _count_buckets(name, index, fold)
    if kind is Latest and variable.flat:
        return _latest_flat(name, index, fold)
    if kind is First and variable.flat:
        return _first_flat(name, index, fold)
    return fold


def _flat(name: str, index: Callable[[Scope], int], stat: Stat) -> Recorder:
    record_one = stat.record_one

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name, ())
        changed = record_one(state, index(scope), value, scope.t)
        if changed is not state:
            variables[name] = changed

    return record


def _buckets(name: str, index: Callable[[Scope], int], keep: int, stat: Stat) -> Recorder:
    record_many = stat.record

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name, ())
        changed = record_many(state, index(scope), keep, value, scope.t)
        if changed is not state:
            variables[name] = changed

    return record


def _distinct(name: str, index: Callable[[Scope], int], keep: int, stat: Distinct) -> Recorder:
    """(newest idx, map): a value already seen in the newest bucket changes nothing."""
    record_distinct = stat.record_distinct

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name, ())
        idx = index(scope)
        if state and state[0] == idx and value.__class__ is str:
            seen = state[1]
            entry = seen.get(value) if len(value) <= _DISTINCT_KEY_LENGTH else None
            if entry is not None and entry[0] == idx and len(seen) <= DISTINCT_LIMIT:
                return
        changed = record_distinct(state, idx, keep, value)
        if changed is not state:
            variables[name] = changed

    return record


def _count_flat(name: str, index: Callable[[Scope], int] | None) -> Recorder:
    """(idx, n): a new bucket, or one more in the current one."""

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name)
        idx = 0 if index is None else index(scope)
        if not state or state[0] < idx:
            variables[name] = (idx, 1)
        elif state[0] == idx:
            variables[name] = (idx, state[1] + 1)
        # a late event for a bucket no longer kept changes nothing

    return record


def _count_buckets(name: str, index: Callable[[Scope], int] | None, fold: Recorder) -> Recorder:
    """((idx, n), ...): one more in the newest bucket, else the statistic's own fold."""

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        buckets = variables.get(name)
        idx = 0 if index is None else index(scope)
        if buckets and buckets[-1][0] == idx:
            variables[name] = (*buckets[:-1], (idx, buckets[-1][1] + 1))
        else:
            fold(variables, value, scope)

    return record


def _latest_flat(name: str, index: Callable[[Scope], int] | None, fold: Recorder) -> Recorder:
    """(idx, value, t): the value unless an event seen earlier was newer."""

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name)
        idx = 0 if index is None else index(scope)
        t = scope.t
        if not state or state[0] < idx or (state[0] == idx and t >= state[2]):
            variables[name] = (idx, value, t)
        else:
            fold(variables, value, scope)

    return record


def _first_flat(name: str, index: Callable[[Scope], int] | None, fold: Recorder) -> Recorder:
    """(idx, value, t): unchanged by a later event in the same bucket."""

    def record(variables: dict[str, State], value: Value, scope: Scope) -> None:
        state = variables.get(name)
        idx = 0 if index is None else index(scope)
        if not state or state[0] < idx:
            variables[name] = (idx, value, scope.t)
        elif state.__class__ is not tuple or state[0] != idx or scope.t < state[2]:
            fold(variables, value, scope)

    return record
