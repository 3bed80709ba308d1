"""How a user variable's statistic folds values into buckets (see `collector.engine.variables`)."""

from __future__ import annotations

from collections.abc import Sequence

from collector.engine.profile import State
from collector.engine.values import MISSING, Missing, Value

Bucket = Sequence[Value]  # (index, *payload), a tuple (a list once decoded from msgpack)
Buckets = tuple[Bucket, ...]  # a multi-bucket state


class Stat:
    """How a statistic folds values into bucket payloads and reads a value back."""

    single = False  # only the newest bucket in the covered range is read
    numeric = False
    empty: int | Missing = MISSING

    def new(self, idx: int, value: Value, t: float, before: Bucket | None) -> tuple[Value, ...]:
        """A bucket holding one value (`before`: the newest bucket so far, if any)."""
        raise NotImplementedError

    def folded(self, bucket: Bucket, value: Value, t: float) -> tuple[Value, ...]:
        """The bucket with a value folded in, as a new tuple."""
        raise NotImplementedError

    def read(self, buckets: Sequence[Bucket], low: int, high: int) -> Value | Missing:
        """The statistic over the buckets with low <= index <= high."""
        raise NotImplementedError

    def combine(self, a: Bucket, b: Bucket) -> tuple[Value, ...]:
        """Two buckets with the same index, as one (for merging profiles)."""
        raise NotImplementedError

    def record(self, buckets: Buckets, idx: int, keep: int, value: Value, t: float) -> Buckets:
        """A multi-bucket state with a value added at bucket `idx`, trimmed to `keep` buckets."""
        if not buckets:
            return (self.new(idx, value, t, None),)
        last = buckets[-1]
        newest = last[0]
        if newest == idx:
            return (*buckets[:-1], self.folded(last, value, t))
        if newest < idx:
            if buckets[0][0] <= idx - keep:
                buckets = tuple(b for b in buckets if b[0] > idx - keep)
            return (*buckets, self.new(idx, value, t, last))
        if not self.single and idx > newest - keep:  # a late event, still inside the window
            for pos in range(len(buckets) - 1, -1, -1):
                bucket = buckets[pos]
                if bucket[0] == idx:
                    return (*buckets[:pos], self.folded(bucket, value, t), *buckets[pos + 1 :])
                if bucket[0] < idx:
                    return (*buckets[: pos + 1], self.new(idx, value, t, None), *buckets[pos + 1 :])
            return (self.new(idx, value, t, None), *buckets)
        return buckets

    def record_one(self, bucket: State, idx: int, value: Value, t: float) -> State:
        """A flat state (only the newest bucket is kept) with a value added at bucket `idx`."""
        if not bucket:
            return self.new(idx, value, t, None)
        newest = bucket[0]
        if newest == idx:
            return self.folded(bucket, value, t)
        if newest < idx:
            return self.new(idx, value, t, bucket)
        return bucket  # a late event for a bucket no longer kept

    def merge(self, a: Sequence[Bucket], b: Sequence[Bucket], keep: int) -> Buckets:
        """Two multi-bucket states of one variable, as one."""
        by_index: dict[int, Bucket] = {bucket[0]: bucket for bucket in a}
        for bucket in b:
            mine = by_index.get(bucket[0])
            by_index[bucket[0]] = bucket if mine is None else self.combine(mine, bucket)
        merged = [tuple(by_index[idx]) for idx in sorted(by_index)]
        newest = merged[-1][0] if merged else 0
        return tuple(bucket for bucket in merged if bucket[0] > newest - keep)
