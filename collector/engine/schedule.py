"""Local time in the configured timezone, and campaign schedules checked against it.

`Calendar` turns epoch seconds into wall-clock facts (day index, hour index, second of day,
weekday) for one timezone. UTC offsets only change on quarter-hour boundaries in every zone in
use, so the offset is looked up once per 15-minute slot and cached; events mostly arrive in time
order, so one cached slot serves nearly every lookup.
"""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from collector.config.schema import Schedule, parse_hours

_SLOT = 900  # seconds; offsets change on quarter-hour boundaries
DAY = 86400
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_END_OF_DAY = time(23, 59, 59, 999999)


class Calendar:
    """Wall-clock facts about epoch times in one timezone."""

    __slots__ = ("_cache", "name", "zone")

    def __init__(self, name: str) -> None:
        self.name = name
        self.zone = ZoneInfo(name)
        self._cache: tuple[int, float] = (-(2**62), 0.0)

    def offset(self, t: float) -> float:
        """UTC offset in seconds at epoch time `t`."""
        slot = int(t // _SLOT)
        cached = self._cache
        if cached[0] == slot:
            return cached[1]
        try:
            delta = datetime.fromtimestamp(slot * _SLOT, self.zone).utcoffset()
        except (OverflowError, OSError, ValueError):
            delta = None
        seconds = delta.total_seconds() if delta is not None else 0.0
        self._cache = (slot, seconds)  # one tuple: readers never see half an update
        return seconds

    def local(self, t: float) -> float:
        """Epoch time shifted to local wall-clock seconds (so `// 86400` is the local day)."""
        return t + self.offset(t)

    def day_index(self, t: float) -> int:
        """Days since 1970-01-01 in local time."""
        return int(self.local(t) // DAY)

    def epoch(self, moment: datetime) -> float:
        """Epoch seconds of a datetime; a naive one is taken as local time."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return moment.timestamp()


class CompiledSchedule:
    """A schedule reduced to numbers: epoch bounds, a weekday bit mask, seconds-of-day range."""

    __slots__ = ("days", "end", "hours", "start")

    def __init__(self, spec: Schedule, calendar: Calendar) -> None:
        self.start = calendar.epoch(spec.start) if spec.start is not None else None
        self.end = calendar.epoch(spec.end) if spec.end is not None else None
        self.days: int | None = None
        if spec.days is not None:
            mask = 0
            for day in spec.days:
                mask |= 1 << WEEKDAYS.index(day)
            self.days = mask
        self.hours: tuple[float, float] | None = None
        if spec.hours is not None:
            first, last = parse_hours(spec.hours)
            low = first.hour * 3600 + first.minute * 60
            high = DAY if last == _END_OF_DAY else last.hour * 3600 + last.minute * 60
            if low != high:  # "09:00-09:00" puts no limit on the hour
                self.hours = (float(low), float(high))

    def key(self) -> tuple[float | None, float | None, int | None, tuple[float, float] | None]:
        """What the schedule decides by: equal keys allow exactly the same times."""
        return (self.start, self.end, self.days, self.hours)

    def allows(self, t: float, weekday: int, second_of_day: float) -> bool:
        """Whether the schedule is open at `t` (start inclusive, end exclusive)."""
        if self.start is not None and t < self.start:
            return False
        if self.end is not None and t >= self.end:
            return False
        if self.days is not None and not (self.days >> weekday) & 1:
            return False
        hours = self.hours
        if hours is None:
            return True
        low, high = hours
        if low < high:
            return low <= second_of_day < high
        return second_of_day >= low or second_of_day < high  # an overnight range, 21:00-03:00
