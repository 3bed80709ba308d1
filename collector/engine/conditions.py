"""Conditions compiled once into predicates: plain functions of a `Scope` returning a bool.

Operands: `trait` (the user's traits, after this event's traits merged in), `prop` and
`context` (the current event), `var` (a user variable), `event_count` (how many times an event
happened in a window), `segment` (membership). Names are dotted paths into nested values.

The rules, which the reference interpreter in the tests restates:

- **Missing values.** An operand that is absent or null is *missing*. Every operator is then
  false, except `ne`, `not_in` and `not_contains` (true: a missing value is not equal to, not in
  and does not contain anything) and `exists: false` (true). `event_count` is never missing (0),
  nor is `segment` (false when not a member).
- **Equality** (`eq ne in not_in`, and list membership in `contains`) is Python equality, except
  that booleans only equal booleans (`true` is not `1`). For `in`/`not_in`, a list operand
  matches when any of its items is in the given list.
- **Order** (`gt gte lt lte between`): against a number, the operand must be a number or a
  string holding one (`"42"`); against a string, the operand must be a string (compared as
  text, which orders ISO-8601 dates correctly). Anything else is false.
- **Text** (`starts_with ends_with regex`, and `contains` on a string): the operand must be a
  string; the value is used as text. `contains` also looks in lists (an equal item) and dicts
  (a key). `regex` searches anywhere in the text (anchor it with ^ and $ to match whole).
- **Time** (`within: 1h`, `older_than: 7d`): the operand is a timestamp — epoch seconds (or
  milliseconds, when above 1e11) or an ISO-8601 string (naive means the configured timezone).
  `within D` holds when it is at most D before the event's time (future times count as within);
  `older_than D` when it is more than D before. Anything not a timestamp is false.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from collector.config.patterns import compile_pattern
from collector.config.registry import MISSING_IS_TRUE
from collector.config.schema import All, Condition, Leaf, Not
from collector.engine.schedule import Calendar
from collector.engine.scope import Getter, Predicate, Scope, as_number, path_getter
from collector.engine.values import MISSING, Missing, Value

Test = Callable[[Value, Scope], bool]


def same(a: Value, b: Value) -> bool:
    """Equality where booleans only equal booleans."""
    if a.__class__ is bool or b.__class__ is bool:
        return a is b
    return bool(a == b)


def as_epoch(value: Value, calendar: Calendar) -> float | None:
    """Epoch seconds from a number (seconds, or milliseconds above 1e11) or an ISO-8601 string."""
    cls = value.__class__
    if cls is int or cls is float:
        if not -1e18 < value < 1e18:  # no time; also keeps huge integers out of float()
            return None
        return value / 1000.0 if value > 1e11 else float(value)
    if cls is str:
        try:
            return calendar.epoch(datetime.fromisoformat(value))
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _text(value: Value) -> str:
    return value if value.__class__ is str else str(value)


class ConditionCompiler:
    """Turns condition trees into predicates; operands that need state come from resolvers."""

    def __init__(
        self,
        *,
        variable: Callable[[str], Getter],
        segment: Callable[[str], Predicate],
        event_count: Callable[[str, str], Getter],
        calendar: Calendar,
    ) -> None:
        self._variable = variable
        self._segment = segment
        self._event_count = event_count
        self._calendar = calendar

    def compile(self, node: Condition, path: str, problems: list[str]) -> Predicate:
        """A predicate for `node`; problems found are appended as `path: message`."""
        if isinstance(node, Leaf):
            return self._leaf(node, path, problems)
        if isinstance(node, Not):
            inner = self.compile(node.item, f"{path}.not", problems)
            return lambda scope: not inner(scope)
        key = "all" if isinstance(node, All) else "any"
        parts = tuple(
            self.compile(item, f"{path}.{key}[{i}]", problems) for i, item in enumerate(node.items)
        )
        return _all(parts) if isinstance(node, All) else _any(parts)

    def operand(self, leaf: Leaf) -> Getter:
        """A reader of the leaf's operand."""
        kind, name = leaf.kind, leaf.name
        if kind == "var":
            return self._variable(name)
        if kind == "segment":
            return self._segment(name)
        if kind == "event_count":
            return self._event_count(name, leaf.window)
        if "." not in name:
            if kind == "trait":
                return lambda scope: scope.state.traits.get(name, MISSING)
            if kind == "prop":
                return lambda scope: scope.event.properties.get(name, MISSING)
            return lambda scope: scope.event.context.get(name, MISSING)
        parts = name.split(".")
        if len(parts) == 2 and not parts[1].isdigit():
            return _two_part_operand(kind, parts[0], parts[1])
        get = path_getter(name)
        if kind == "trait":
            return lambda scope: get(scope.state.traits)
        if kind == "prop":
            return lambda scope: get(scope.event.properties)
        return lambda scope: get(scope.event.context)

    def _leaf(self, leaf: Leaf, path: str, problems: list[str]) -> Predicate:
        if leaf.op == "member":  # a bare `segment: NAME`
            return self._segment(leaf.name)
        get = self.operand(leaf)
        if leaf.op == "exists":
            if leaf.value:
                return lambda scope: (value := get(scope)) is not MISSING and value is not None
            return lambda scope: (value := get(scope)) is MISSING or value is None
        fused = _fused(leaf.op, leaf.value, get)
        if fused is not None:
            return fused
        test = self._test(leaf.op, leaf.value, f"{path}.{leaf.op}", problems)
        on_missing = leaf.op in MISSING_IS_TRUE

        def predicate(scope: Scope) -> bool:
            value = get(scope)
            if value is MISSING or value is None:
                return on_missing
            return test(value, scope)

        return predicate

    def _test(self, op: str, expected: Value, path: str, problems: list[str]) -> Test:
        if op in ("eq", "ne"):
            equal = _equals(expected)
            if op == "eq":
                return equal
            return lambda value, scope: not equal(value, scope)
        if op in ("gt", "gte", "lt", "lte"):
            return _order(op, expected)
        if op == "between":
            low, high = expected
            numbers = as_number(low) is not MISSING and as_number(high) is not MISSING
            if not numbers and not (isinstance(low, str) and isinstance(high, str)):
                problems.append(f"{path}: expected two numbers or two strings")
            if numbers and not isinstance(low, str) and not isinstance(high, str):
                return lambda value, scope: (
                    (number := as_number(value)) is not MISSING and low <= number <= high
                )
            return lambda value, scope: value.__class__ is str and low <= value <= high
        if op in ("in", "not_in"):
            member = _membership(expected)
            if op == "in":
                return member
            return lambda value, scope: not member(value, scope)
        if op in ("contains", "not_contains"):
            contains = _contains(expected)
            if op == "contains":
                return contains
            return lambda value, scope: not contains(value, scope)
        if op in ("starts_with", "ends_with"):
            text = _text(expected)
            if op == "starts_with":
                return lambda value, scope: value.__class__ is str and value.startswith(text)
            return lambda value, scope: value.__class__ is str and value.endswith(text)
        if op == "regex":
            search = compile_pattern(expected)  # RE2: linear time; checked when loaded
            return lambda value, scope: value.__class__ is str and search(value) is not None
        if op in ("within", "older_than"):
            seconds = float(expected)
            calendar = self._calendar
            if op == "within":
                return lambda value, scope: (
                    (at := as_epoch(value, calendar)) is not None and scope.t - at <= seconds
                )
            return lambda value, scope: (
                (at := as_epoch(value, calendar)) is not None and scope.t - at > seconds
            )
        problems.append(f"{path}: unknown operator '{op}'")
        return lambda value, scope: False


def _two_part_operand(kind: str, first: str, second: str) -> Getter:
    """`page.path`-style operands in one call (the most common shape)."""
    if kind == "trait":

        def trait(scope: Scope) -> Value | Missing:
            inner = scope.state.traits.get(first)
            return inner.get(second, MISSING) if inner.__class__ is dict else MISSING

        return trait
    if kind == "prop":

        def prop(scope: Scope) -> Value | Missing:
            inner = scope.event.properties.get(first)
            return inner.get(second, MISSING) if inner.__class__ is dict else MISSING

        return prop

    def context(scope: Scope) -> Value | Missing:
        inner = scope.event.context.get(first)
        return inner.get(second, MISSING) if inner.__class__ is dict else MISSING

    return context


def _fused(op: str, expected: Value, get: Getter) -> Predicate | None:
    """One closure for the commonest leaves, whose tests are false on missing values anyway."""
    cls = expected.__class__
    if op == "eq":
        if cls is str:
            return lambda scope: bool(get(scope) == expected)
        if cls is bool:
            return lambda scope: get(scope) is expected
        if cls is int or cls is float:
            return lambda scope: (value := get(scope)).__class__ is not bool and value == expected
    if op in ("starts_with", "ends_with"):
        text = _text(expected)
        if op == "starts_with":
            return lambda scope: (value := get(scope)).__class__ is str and value.startswith(text)
        return lambda scope: (value := get(scope)).__class__ is str and value.endswith(text)
    if op in ("gt", "gte", "lt", "lte") and cls in (int, float):
        # as_number gives MISSING for absent and null values, so these are false then
        if op == "gt":
            return lambda scope: (n := as_number(get(scope))) is not MISSING and n > expected
        if op == "gte":
            return lambda scope: (n := as_number(get(scope))) is not MISSING and n >= expected
        if op == "lt":
            return lambda scope: (n := as_number(get(scope))) is not MISSING and n < expected
        return lambda scope: (n := as_number(get(scope))) is not MISSING and n <= expected
    return None


def _equals(expected: Value) -> Test:
    if expected.__class__ is bool:
        return lambda value, scope: value is expected
    if expected.__class__ is str:
        return lambda value, scope: value == expected
    if expected.__class__ in (int, float):
        return lambda value, scope: value.__class__ is not bool and value == expected
    return lambda value, scope: same(value, expected)


def _order(op: str, expected: Value) -> Test:
    if expected.__class__ is str:
        if op == "gt":
            return lambda value, scope: value.__class__ is str and value > expected
        if op == "gte":
            return lambda value, scope: value.__class__ is str and value >= expected
        if op == "lt":
            return lambda value, scope: value.__class__ is str and value < expected
        return lambda value, scope: value.__class__ is str and value <= expected
    if op == "gt":
        return lambda value, scope: (n := as_number(value)) is not MISSING and n > expected
    if op == "gte":
        return lambda value, scope: (n := as_number(value)) is not MISSING and n >= expected
    if op == "lt":
        return lambda value, scope: (n := as_number(value)) is not MISSING and n < expected
    return lambda value, scope: (n := as_number(value)) is not MISSING and n <= expected


def _membership(options: list[Value]) -> Test:
    texts = frozenset(o for o in options if o.__class__ is str)
    numbers = frozenset(o for o in options if o.__class__ in (int, float))
    others = tuple(o for o in options if o.__class__ not in (str, int, float))

    def one(value: Value) -> bool:
        cls = value.__class__
        if cls is str:
            return value in texts
        if cls is int or cls is float:
            return value in numbers
        return any(same(value, other) for other in others)

    def member(value: Value, scope: Scope) -> bool:
        if value.__class__ is list:
            return any(one(item) for item in value)
        return one(value)

    return member


def _contains(expected: Value) -> Test:
    text = _text(expected)

    def contains(value: Value, scope: Scope) -> bool:
        cls = value.__class__
        if cls is str:
            return text in value
        if cls is list:
            return any(same(item, expected) for item in value)
        if cls is dict:
            return text in value
        return False

    return contains


def _all(parts: tuple[Predicate, ...]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda scope: first(scope) and second(scope)

    def every(scope: Scope) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop is cheaper than all() on a generator
            if not part(scope):
                return False
        return True

    return every


def _any(parts: tuple[Predicate, ...]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda scope: first(scope) or second(scope)

    def some(scope: Scope) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop is cheaper than any() on a generator
            if part(scope):
                return True
        return False

    return some
