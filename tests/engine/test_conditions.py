"""Conditions: every operator, operand and combinator, the missing-value rule, and agreement of
compiled predicates with a plain reference interpreter on random conditions and profiles."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.profile import new_state
from collector.engine.rules import Rules
from collector.engine.scope import Scope
from collector.errors import ConfigError
from collector.events import Event

T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
ABSENT = object()


def build(condition: Any, **config: Any) -> Rules:
    segments = {**config.pop("segments", {}), "probe": condition}
    return compile_rules(decode_config({"segments": segments, **config}))


def holds(
    rules: Rules,
    *,
    traits: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    t: float = T,
) -> bool:
    state = new_state("user-1", t)
    state.traits.update(traits or {})
    event = Event(
        type="track",
        name="Probe",
        message_id="m1",
        anonymous_id="anon-1",
        properties=properties or {},
        context=context or {},
        timestamp=t,
        received_at=t,
    )
    return bool(rules.segments["probe"](Scope(state, event, t, rules.calendar, 1)))


def trait_holds(op: str, expected: Any, actual: Any, **config: Any) -> bool:
    rules = build({"trait": "x", op: expected}, **config)
    return holds(rules, traits={} if actual is ABSENT else {"x": actual})


OPERATOR_TABLE = [
    ("eq", "pro", "pro", True),
    ("eq", "pro", "free", False),
    ("eq", 1, 1.0, True),
    ("eq", True, True, True),
    ("eq", True, 1, False),
    ("eq", 1, True, False),
    ("eq", 5, "5", False),
    ("eq", [1, 2], [1, 2], True),
    ("ne", "pro", "free", True),
    ("ne", "pro", "pro", False),
    ("ne", 1, True, True),
    ("gt", 3, 4, True),
    ("gt", 3, 3, False),
    ("gt", 3, "4.5", True),
    ("gt", 3, "abc", False),
    ("gt", 0, True, False),
    ("gt", "2026-01-01", "2026-02-01", True),
    ("gt", "b", 5, False),
    ("gte", 3, 3, True),
    ("gte", 3, 2.9, False),
    ("lt", 3, 2, True),
    ("lt", 3, 3, False),
    ("lt", "b", "a", True),
    ("lte", 3, 3, True),
    ("lte", 3, 3.1, False),
    ("between", [1, 5], 1, True),
    ("between", [1, 5], 5, True),
    ("between", [1, 5], 5.01, False),
    ("between", [1, 5], "3", True),
    ("between", [1, 5], "x", False),
    ("between", ["a", "c"], "b", True),
    ("between", ["a", "c"], "d", False),
    ("in", ["a", "b"], "a", True),
    ("in", ["a", "b"], "c", False),
    ("in", [1, 2], 2.0, True),
    ("in", [1, 2], True, False),
    ("in", [True], True, True),
    ("in", ["x", "y"], ["z", "y"], True),
    ("in", ["x", "y"], ["z"], False),
    ("not_in", ["a", "b"], "c", True),
    ("not_in", ["a", "b"], "a", False),
    ("not_in", ["x"], ["y", "x"], False),
    ("contains", "ell", "hello", True),
    ("contains", "ELL", "hello", False),
    ("contains", "tag", ["tag", "b"], True),
    ("contains", 3, [1, 3], True),
    ("contains", "k", {"k": 1}, True),
    ("contains", "5", 5, False),
    ("not_contains", "ell", "hello", False),
    ("not_contains", "z", "hello", True),
    ("not_contains", "z", 12, True),
    ("starts_with", "/cart", "/cart/12", True),
    ("starts_with", "/cart", "/shop/cart", False),
    ("starts_with", "1", 12, False),
    ("ends_with", ".pdf", "a/b.pdf", True),
    ("ends_with", ".pdf", "a/b.pdf?x", False),
    ("regex", r"^/cart/\d+$", "/cart/12", True),
    ("regex", r"^/cart/\d+$", "/cart/x", False),
    ("regex", r"cart", "/my/cart/x", True),
    ("regex", r"\d", 5, False),
    # A pattern that backtracks catastrophically elsewhere: here it answers on long text.
    ("regex", r"^(a+)+$", "a" * 5000 + "b", False),
    ("regex", r"^(a|aa)+$", "a" * 5000, True),
    ("exists", True, "x", True),
    ("exists", True, 0, True),
    ("exists", True, False, True),
    ("exists", False, "x", False),
]


@pytest.mark.parametrize(("op", "expected", "actual", "result"), OPERATOR_TABLE)
def test_operator(op: str, expected: Any, actual: Any, result: bool) -> None:
    assert trait_holds(op, expected, actual) is result


MISSING_TABLE = [
    ("eq", "a", False),
    ("ne", "a", True),
    ("gt", 1, False),
    ("gte", 1, False),
    ("lt", 1, False),
    ("lte", 1, False),
    ("between", [0, 9], False),
    ("in", ["a"], False),
    ("not_in", ["a"], True),
    ("contains", "a", False),
    ("not_contains", "a", True),
    ("starts_with", "a", False),
    ("ends_with", "a", False),
    ("regex", "a", False),
    ("exists", True, False),
    ("exists", False, True),
    ("within", "1h", False),
    ("older_than", "1h", False),
]


@pytest.mark.parametrize(("op", "expected", "result"), MISSING_TABLE)
@pytest.mark.parametrize("actual", [ABSENT, None], ids=["absent", "null"])
def test_missing_values_fail_every_comparison_but_the_negative_ones(
    op: str, expected: Any, result: bool, actual: Any
) -> None:
    assert trait_holds(op, expected, actual) is result


TIME_TABLE = [
    ("within", "1h", T - 1800, True),
    ("within", "1h", T - 3600, True),
    ("within", "1h", T - 3601, False),
    ("within", "1h", T + 600, True),
    ("within", "1h", (T - 60) * 1000, True),  # epoch milliseconds
    ("within", "1h", "2026-03-10T11:30:00Z", True),
    ("within", "1h", "2026-03-10T10:30:00+00:00", False),
    ("within", "1h", "yesterday", False),
    ("within", "1h", True, False),
    ("older_than", "7d", T - 8 * 86400, True),
    ("older_than", "7d", T - 6 * 86400, False),
    ("older_than", "7d", "2026-03-01T00:00:00Z", True),
    ("older_than", "7d", [1, 2], False),
]


@pytest.mark.parametrize(("op", "duration", "actual", "result"), TIME_TABLE)
def test_time_comparisons(op: str, duration: str, actual: Any, result: bool) -> None:
    assert trait_holds(op, duration, actual) is result


def test_naive_iso_times_are_in_the_configured_timezone() -> None:
    # 20:30 in Tokyo is 11:30 UTC: half an hour before T
    assert trait_holds("within", "1h", "2026-03-10T20:30:00", timezone="Asia/Tokyo") is True
    assert trait_holds("within", "1h", "2026-03-10T20:30:00", timezone="UTC") is True  # future
    assert trait_holds("older_than", "1h", "2026-03-10T09:30:00", timezone="Asia/Tokyo") is True


def test_operands_read_traits_properties_and_context_by_dotted_path() -> None:
    rules = build(
        {
            "all": [
                {"trait": "address.city", "eq": "Osaka"},
                {"prop": "items.0.sku", "eq": "A-1"},
                {"context": "page.path", "starts_with": "/cart"},
            ]
        }
    )
    assert holds(
        rules,
        traits={"address": {"city": "Osaka"}},
        properties={"items": [{"sku": "A-1"}]},
        context={"page": {"path": "/cart/3"}},
    )
    assert not holds(
        rules,
        traits={"address": {"city": "Kyoto"}},
        properties={"items": [{"sku": "A-1"}]},
        context={"page": {"path": "/cart/3"}},
    )
    assert not holds(
        rules,
        traits={"address": "Osaka"},
        properties={"items": []},
        context={"page": {"path": "/cart/3"}},
    )


def test_combinators_nest() -> None:
    rules = build(
        {
            "any": [
                {
                    "all": [
                        {"trait": "plan", "eq": "pro"},
                        {"not": {"trait": "churned", "eq": True}},
                    ]
                },
                {"trait": "vip", "eq": True},
            ]
        }
    )
    assert holds(rules, traits={"plan": "pro"})
    assert not holds(rules, traits={"plan": "pro", "churned": True})
    assert holds(rules, traits={"plan": "free", "vip": True})
    assert not holds(rules, traits={})
    three = build(
        {"all": [{"trait": "a", "eq": 1}, {"trait": "b", "eq": 2}, {"trait": "c", "eq": 3}]}
    )
    assert holds(three, traits={"a": 1, "b": 2, "c": 3})
    assert not holds(three, traits={"a": 1, "b": 2, "c": 4})
    some = build(
        {"any": [{"trait": "a", "eq": 1}, {"trait": "b", "eq": 2}, {"trait": "c", "eq": 3}]}
    )
    assert holds(some, traits={"c": 3})
    assert not holds(some, traits={"c": 4})


def test_segments_reference_segments_and_compare_as_booleans() -> None:
    segments = {
        "pro": {"trait": "plan", "eq": "pro"},
        "pro_in_osaka": {"all": [{"segment": "pro"}, {"trait": "city", "eq": "Osaka"}]},
    }
    rules = build({"segment": "pro_in_osaka"}, segments=segments)
    assert holds(rules, traits={"plan": "pro", "city": "Osaka"})
    assert not holds(rules, traits={"plan": "free", "city": "Osaka"})
    outside = build({"segment": "pro", "eq": False}, segments=segments)
    assert holds(outside, traits={"plan": "free"})
    assert not holds(outside, traits={"plan": "pro"})


def _page(t: float, path: str, n: int) -> Event:
    return Event(
        type="page",
        name="page",
        message_id=f"p{n}",
        anonymous_id="anon-1",
        context={"page": {"path": path}},
        timestamp=t,
        received_at=t,
    )


def test_var_and_event_count_operands_read_the_users_history() -> None:
    config = decode_config(
        {
            "variables": {
                "cart_views": {
                    "event": "page",
                    "stat": "count",
                    "window": "7d",
                    "where": {"context": "page.path", "starts_with": "/cart"},
                }
            },
            "segments": {
                "keen": {
                    "all": [
                        {"var": "cart_views", "gte": 2},
                        {"not": {"event_count": "Order Completed", "window": "7d", "gt": 0}},
                    ]
                },
            },
        }
    )
    engine = Engine(compile_rules(config))
    state = None
    for n, path in enumerate(["/cart", "/home", "/cart"]):
        state = engine.process(state, _page(T + n, path, n), T + n).state
    assert state is not None
    assert engine.describe(state, T + 5)["segments"] == ["keen"]
    order = Event(
        type="track",
        name="Order Completed",
        message_id="o1",
        anonymous_id="anon-1",
        timestamp=T + 10,
        received_at=T + 10,
    )
    state = engine.process(state, order, T + 10).state
    assert engine.describe(state, T + 11)["segments"] == []
    # eight days later the order has left the 7-day window, and so have the cart views
    assert engine.describe(state, T + 8 * 86400)["segments"] == []


def test_a_missing_variable_uses_its_default() -> None:
    rules = build(
        {"var": "spent", "gte": 0},
        variables={
            "spent": {"event": "Order", "field": "properties.revenue", "stat": "sum", "default": 0}
        },
    )
    assert holds(rules)
    bare = build(
        {"var": "spent", "gte": 0},
        variables={"spent": {"event": "Order", "field": "properties.revenue", "stat": "sum"}},
    )
    assert not holds(bare)


def test_between_with_mixed_bounds_is_a_load_error_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        build({"all": [{"trait": "a", "eq": 1}, {"trait": "x", "between": [1, "z"]}]})
    assert caught.value.problems == [
        "segments.probe.all[1].between: expected two numbers or two strings"
    ]


# -- property-based: compiled predicates agree with a plain interpreter ------------------------

NAMES = ["a", "b", "c.d"]
SCALARS = st.one_of(
    st.sampled_from([0, 1, 2, -1, 1.5, "a", "b", "ab", "1", "2.5", "", True, False]),
    st.integers(-3, 3),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.just({"a": 1}), st.just(None))


def _leaf_strategy() -> st.SearchStrategy[dict[str, Any]]:
    operand = st.sampled_from(["trait", "prop", "context"])
    name = st.sampled_from(NAMES)
    op_value = st.one_of(
        st.tuples(st.sampled_from(["eq", "ne"]), SCALARS),
        st.tuples(
            st.sampled_from(["gt", "gte", "lt", "lte"]),
            st.sampled_from([0, 1, 2, 1.5, -1, "a", "b", "1"]),
        ),
        st.tuples(st.just("between"), st.sampled_from([[0, 2], [1, 1.5], ["a", "b"], [-1, 0]])),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(SCALARS, max_size=3)),
        st.tuples(
            st.sampled_from(["contains", "not_contains", "starts_with", "ends_with"]),
            st.sampled_from(["a", "b", "", "1", 1]),
        ),
        st.tuples(st.just("regex"), st.sampled_from(["^a", "b$", r"\d", "a|b"])),
        st.tuples(st.just("exists"), st.booleans()),
        st.tuples(st.sampled_from(["within", "older_than"]), st.sampled_from([60, 3600, 86400])),
    )
    return st.builds(lambda kind, n, ov: {kind: n, ov[0]: ov[1]}, operand, name, op_value)


CONDITIONS = st.recursive(
    _leaf_strategy(),
    lambda inner: st.one_of(
        st.builds(lambda items: {"all": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda items: {"any": items}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, inner),
    ),
    max_leaves=6,
)
TIMES = st.sampled_from([T - 30, T - 3599, T - 7200, T - 90000, T + 5])
PROFILE = st.fixed_dictionaries(
    {},
    optional={
        "a": st.one_of(VALUES, TIMES),
        "b": VALUES,
        "c": st.one_of(st.fixed_dictionaries({}, optional={"d": VALUES}), SCALARS),
    },
)


def ref_lookup(data: dict[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return ABSENT
        value = value[part]
    return ABSENT if value is None else value


def ref_is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def ref_number(value: Any) -> float | None:
    if ref_is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def ref_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(ref_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def ref_compare(op: str, actual: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        if not isinstance(actual, str):
            return False
        left, right = actual, expected
    else:
        number = ref_number(actual)
        if number is None:
            return False
        left, right = number, expected
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]


def ref_evaluate(condition: dict[str, Any], profile: dict[str, Any], now: float) -> bool:
    if "all" in condition:
        return all(ref_evaluate(c, profile, now) for c in condition["all"])
    if "any" in condition:
        return any(ref_evaluate(c, profile, now) for c in condition["any"])
    if "not" in condition:
        return not ref_evaluate(condition["not"], profile, now)
    kind = next(k for k in ("trait", "prop", "context") if k in condition)
    op = next(k for k in condition if k != kind)
    expected = condition[op]
    actual = ref_lookup(profile, condition[kind])
    if op == "exists":
        return (actual is not ABSENT) == expected
    if actual is ABSENT:
        return op in ("ne", "not_in", "not_contains")
    if op in ("eq", "ne"):
        return ref_equal(actual, expected) == (op == "eq")
    if op in ("gt", "gte", "lt", "lte"):
        return ref_compare(op, actual, expected)
    if op == "between":
        return ref_compare("gte", actual, expected[0]) and ref_compare("lte", actual, expected[1])
    if op in ("in", "not_in"):
        items = actual if isinstance(actual, list) else [actual]
        found = any(ref_equal(item, option) for item in items for option in expected)
        return found == (op == "in")
    if op in ("contains", "not_contains"):
        if isinstance(actual, str):
            found = str(expected) in actual
        elif isinstance(actual, list):
            found = any(ref_equal(item, expected) for item in actual)
        elif isinstance(actual, dict):
            found = str(expected) in actual
        else:
            found = False
        return found == (op == "contains")
    if op in ("starts_with", "ends_with", "regex"):
        if not isinstance(actual, str):
            return False
        if op == "starts_with":
            return actual.startswith(str(expected))
        if op == "ends_with":
            return actual.endswith(str(expected))
        return re.search(expected, actual) is not None
    if op in ("within", "older_than"):
        if not ref_is_number(actual):
            return False
        age = now - actual
        return age <= expected if op == "within" else age > expected
    raise AssertionError(op)


@settings(max_examples=300, deadline=None)
@given(condition=CONDITIONS, profile=PROFILE)
def test_compiled_conditions_agree_with_the_reference_interpreter(
    condition: dict[str, Any], profile: dict[str, Any]
) -> None:
    rules = build(condition)
    compiled = holds(rules, traits=profile, properties=profile, context=profile)
    assert compiled is ref_evaluate(condition, profile, T)
