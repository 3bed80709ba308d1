"""What one evaluation reads: the user's state, the event, the event's local time, and memos.

A `Scope` is made once per event and passed to every compiled variable, condition and template,
which are plain callables taking it. Variable values and segment memberships are computed at
most once per event and kept in the scope's memo dicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from collector.engine.profile import UserState
from collector.engine.schedule import DAY, Calendar
from collector.engine.values import MISSING, Missing, Value
from collector.events import Event


class Scope:
    """One event's view of the world, shared by every compiled rule evaluated for it."""

    __slots__ = (
        "campaign_id",
        "campaign_name",
        "day",
        "delivery_id",
        "event",
        "hour",
        "second_of_day",
        "segments",
        "session_number",
        "state",
        "t",
        "values",
        "variant_id",
        "weekday",
    )

    def __init__(
        self, state: UserState, event: Event, t: float, calendar: Calendar, session_number: int
    ) -> None:
        self.state = state
        self.event = event
        self.t = t
        local = calendar.local(t)
        day = int(local // DAY)
        self.day = day
        self.hour = int(local // 3600)
        self.second_of_day = local - day * DAY
        self.weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        self.session_number = session_number
        self.values: dict[str, Value | Missing] = {}
        self.segments: dict[str, bool] = {}
        # set by the engine just before rendering a campaign's webhook
        self.campaign_id = ""
        self.campaign_name = ""
        self.variant_id: str | None = None
        self.delivery_id = ""


Getter = Callable[[Scope], Value | Missing]
TextGetter = Callable[[Scope], str]  # a placeholder rendered inside a string
Predicate = Callable[[Scope], bool]


def path_getter(path: str) -> Callable[[Value], Value | Missing]:
    """A reader of a dotted path (`page.path`, `items.0.sku`) in nested dicts and lists."""
    parts = tuple(path.split("."))
    if len(parts) == 1:
        key = parts[0]

        def get_one(data: Value) -> Value | Missing:
            return data.get(key, MISSING) if data.__class__ is dict else MISSING

        return get_one

    def get_path(data: Value) -> Value | Missing:
        for part in parts:  # nested dicts, or lists indexed by number
            if data.__class__ is dict:
                data = data.get(part, MISSING)
                if data is MISSING:
                    return MISSING
            elif data.__class__ is list and part.isdigit() and int(part) < len(data):
                data = data[int(part)]
            else:
                return MISSING
        return data

    if len(parts) == 2:
        first, second = parts

        def get_two(data: Value) -> Value | Missing:
            inner = data.get(first) if data.__class__ is dict else None
            if inner.__class__ is dict:
                return inner.get(second, MISSING)
            return get_path(data)

        return get_two
    return get_path


def as_number(value: Value) -> int | float | Missing:
    """A finite int or float, from a number or a numeric string; MISSING otherwise (bools too)."""
    cls = value.__class__
    if cls is int:
        return value  # type: ignore[no-any-return]  # checked by class just above
    if cls is float:
        return value if math.isfinite(value) else MISSING
    if cls is str:
        try:
            number = float(value)
        except ValueError:
            return MISSING
        return number if math.isfinite(number) else MISSING
    return MISSING
