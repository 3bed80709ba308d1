"""The extension points, declared once: condition operators and variable statistics.

The schema checks values by `Operator.value`, the config checker matches operators to the
type of what they compare (`Operator.fits`, `Stat.result`), the engine reads what a missing
operand means (`Operator.when_missing`) and which statistics are times, and the config
reference describes each from `summary`. `tests/config/test_registry.py` checks that the
schema's literal types, the engine's implementations and the reference agree with these.

Adding an operator: a row in OPERATORS, its name in `schema.ValueOperator`, its test in
`engine/conditions.py` and its line in the reference.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

# The shape of the value an operator takes: `any` plain value; `scalar` a number or string;
# `text` a string (numbers are read as text); `pair` [low, high]; `list`; `pattern` an RE2
# regular expression; `flag` true or false; `duration` like 30m, 2h, 7d.
Shape = Literal["any", "scalar", "text", "pair", "list", "pattern", "flag", "duration"]
# What an operand holds: a number, text, a time (epoch seconds or ISO-8601), or anything.
Kind = Literal["number", "text", "time", "any"]


class Operator(NamedTuple):
    """One condition operator."""

    value: Shape
    fits: frozenset[Kind]  # the kinds of operand it compares meaningfully
    when_missing: bool  # its outcome when the operand is absent or null
    summary: str


_ALL: frozenset[Kind] = frozenset({"number", "text", "time", "any"})
_ORDERED: frozenset[Kind] = frozenset({"number", "text", "time", "any"})
_TEXT: frozenset[Kind] = frozenset({"text", "any"})
_TIME: frozenset[Kind] = frozenset({"time", "any"})

OPERATORS: dict[str, Operator] = {
    "eq": Operator("any", _ALL, False, "equal to the value (booleans equal only booleans)"),
    "ne": Operator("any", _ALL, True, "not equal to the value; true when missing"),
    "gt": Operator("scalar", _ORDERED, False, "greater than a number, or after a text"),
    "gte": Operator("scalar", _ORDERED, False, "greater than or equal to"),
    "lt": Operator("scalar", _ORDERED, False, "less than"),
    "lte": Operator("scalar", _ORDERED, False, "less than or equal to"),
    "between": Operator("pair", _ORDERED, False, "within [low, high], both ends included"),
    "in": Operator("list", _ALL, False, "equal to one of the values"),
    "not_in": Operator("list", _ALL, True, "equal to none of the values; true when missing"),
    "contains": Operator("text", _TEXT, False, "text containing it, or a list holding it"),
    "not_contains": Operator("text", _TEXT, True, "does not contain it; true when missing"),
    "starts_with": Operator("text", _TEXT, False, "text starting with it"),
    "ends_with": Operator("text", _TEXT, False, "text ending with it"),
    "regex": Operator("pattern", _TEXT, False, "text matching the RE2 pattern anywhere"),
    "exists": Operator("flag", _ALL, False, "present and not null (or, with false, missing)"),
    "within": Operator("duration", _TIME, False, "a time at most this long before the event"),
    "older_than": Operator("duration", _TIME, False, "a time more than this long before it"),
}

MISSING_IS_TRUE = frozenset(name for name, op in OPERATORS.items() if op.when_missing)
TEXT_OPERATORS = frozenset(name for name, op in OPERATORS.items() if op.fits == _TEXT)
TIME_OPERATORS = frozenset(name for name, op in OPERATORS.items() if op.value == "duration")


class Stat(NamedTuple):
    """One variable statistic."""

    result: Kind  # what the variable holds
    needs_field: bool  # reads a field of the event (`count`, `first_at`, `last_at` need none)
    sized: bool  # takes a `size` (how many values it keeps)
    summary: str


STATS: dict[str, Stat] = {
    "count": Stat("number", False, False, "how many matching events"),
    "sum": Stat("number", True, False, "the field's total"),
    "avg": Stat("number", True, False, "the field's mean"),
    "min": Stat("number", True, False, "the field's smallest value"),
    "max": Stat("number", True, False, "the field's largest value"),
    "latest": Stat("any", True, False, "the field's value on the latest event"),
    "previous": Stat("any", True, False, "the field's value on the event before the latest"),
    "first": Stat("any", True, False, "the field's value on the first event"),
    "distinct_count": Stat("number", True, False, "how many different values the field took"),
    "first_at": Stat("time", False, False, "when the first matching event happened"),
    "last_at": Stat("time", False, False, "when the latest matching event happened"),
    "top": Stat("any", True, True, "the `size` most frequent values, most frequent first"),
    "mode": Stat("any", True, True, "the most frequent value (among the `size` kept)"),
    "last_unique": Stat("any", True, True, "the `size` latest distinct values, newest first"),
}

NUMERIC_STATS = frozenset(name for name, s in STATS.items() if s.result in ("number", "time"))
TIME_STATS = frozenset(name for name, s in STATS.items() if s.result == "time")
