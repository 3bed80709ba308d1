"""User variables: every stat, every window (midnight in the configured timezone, sessions,
rolling day and hour buckets), where filters, defaults, bounds, and which variables are kept."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.profile import UserState, new_state
from collector.engine.scope import Scope
from collector.engine.values import MISSING
from collector.engine.variables import DISTINCT_LIMIT, MAX_BUCKETS, Variable, event_field
from collector.events import Event

TOKYO = ZoneInfo("Asia/Tokyo")
T = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()


def engine_for(variables: dict[str, Any], **config: Any) -> Engine:
    uses = {"any": [{"var": name, "exists": True} for name in variables]}
    raw = {"variables": variables, "segments": {"uses": uses}, **config}
    return Engine(compile_rules(decode_config(raw)))


class Feed:
    """A user's stream of events through an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.state: UserState | None = None
        self.n = 0

    def send(self, t: float, name: str = "Order", kind: str = "track", **fields: Any) -> None:
        self.n += 1
        event = Event(
            type=kind,
            name=name,
            message_id=f"m{self.n}",
            anonymous_id="anon-1",
            timestamp=t,
            received_at=t,
            **fields,
        )
        self.state = self.engine.process(self.state, event, t).state

    def values(self, now: float) -> dict[str, Any]:
        assert self.state is not None
        variables: dict[str, Any] = self.engine.describe(self.state, now)["variables"]
        return variables


def stat(name: str, field: str | None = "properties.revenue", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"event": "Order", "stat": name, **extra}
    if field is not None:
        spec["field"] = field
    return spec


STAT_TABLE = [
    ("count", stat("count", None), 7),
    ("count_of_field", stat("count"), 5),
    ("sum", stat("sum"), 42.0),
    ("avg", stat("avg"), 10.5),
    ("min", stat("min"), 5),
    ("max", stat("max"), 20),
    ("latest", stat("latest"), 20),
    ("previous", stat("previous"), "n/a"),
    ("first", stat("first"), 10),
    ("distinct_count", stat("distinct_count"), 5),
    ("first_at", stat("first_at", None), T),
    ("last_at", stat("last_at", None), T + 6),
]


@pytest.mark.parametrize(("label", "spec", "expected"), STAT_TABLE)
def test_every_stat_over_all_time(label: str, spec: dict[str, Any], expected: Any) -> None:
    feed = Feed(engine_for({label: spec}))
    # absent and null values are skipped everywhere; "n/a" is skipped only by numeric stats
    revenues: list[Any] = [10, 5, "7", None, "n/a", 20, None]
    for i, revenue in enumerate(revenues):
        properties = {} if i == 6 else {"revenue": revenue}
        feed.send(T + i, properties=properties)
    assert feed.values(T + 10)[label] == expected


NO_DATA_TABLE = [
    ("count", stat("count", None), 0),
    ("distinct_count", stat("distinct_count"), 0),
    ("sum", stat("sum"), None),
    ("sum_with_default", stat("sum", default=0), 0),
    ("latest_with_default", stat("latest", default="none"), "none"),
    ("previous_after_one", stat("previous"), None),
]


@pytest.mark.parametrize(("label", "spec", "expected"), NO_DATA_TABLE)
def test_values_without_data(label: str, spec: dict[str, Any], expected: Any) -> None:
    feed = Feed(engine_for({label: spec}))
    feed.send(T, name="Other")
    if label == "previous_after_one":
        feed.send(T + 1, properties={"revenue": 3})
    assert feed.values(T + 2)[label] == expected


def tokyo(*args: int) -> float:
    return datetime(*args, tzinfo=TOKYO).timestamp()


def test_today_turns_over_at_midnight_in_the_configured_timezone() -> None:
    variables = {"today": stat("count", None, window="today")}
    feed = Feed(engine_for(variables, timezone="Asia/Tokyo"))
    feed.send(tokyo(2026, 3, 10, 23, 58))
    feed.send(tokyo(2026, 3, 10, 23, 59, 59))
    assert feed.values(tokyo(2026, 3, 10, 23, 59, 59))["today"] == 2
    assert feed.values(tokyo(2026, 3, 11, 0, 0, 0))["today"] == 0
    feed.send(tokyo(2026, 3, 11, 0, 0, 1))
    assert feed.values(tokyo(2026, 3, 11, 9, 0))["today"] == 1
    # the same instants in UTC are all on 2026-03-10 (UTC 14:58 - 15:00), so UTC sees 3 today
    utc = Feed(engine_for(variables))
    for t in (
        tokyo(2026, 3, 10, 23, 58),
        tokyo(2026, 3, 10, 23, 59, 59),
        tokyo(2026, 3, 11, 0, 0, 1),
    ):
        utc.send(t)
    assert utc.values(tokyo(2026, 3, 11, 0, 0, 2))["today"] == 3


def test_day_windows_cover_today_and_the_days_before() -> None:
    feed = Feed(
        engine_for(
            {"week": stat("count", None, window="7d"), "spent_week": stat("sum", window="7d")},
            timezone="Asia/Tokyo",
        )
    )
    feed.send(tokyo(2026, 3, 1, 23, 0), properties={"revenue": 1})
    feed.send(tokyo(2026, 3, 4, 12, 0), properties={"revenue": 10})
    assert feed.values(tokyo(2026, 3, 7, 23, 59)) == {"week": 2, "spent_week": 11}
    # from 8 March (local) the 1 March event is more than 7 local days back
    assert feed.values(tokyo(2026, 3, 8, 0, 1)) == {"week": 1, "spent_week": 10}
    feed.send(tokyo(2026, 3, 8, 0, 2), properties={"revenue": 100})
    assert feed.values(tokyo(2026, 3, 10, 0, 0)) == {"week": 2, "spent_week": 110}
    assert feed.values(tokyo(2026, 3, 20, 0, 0)) == {"week": 0, "spent_week": None}


def test_hour_windows_roll_by_the_hour() -> None:
    feed = Feed(engine_for({"recent": stat("count", None, window="3h")}))
    base = datetime(2026, 3, 10, 10, 10, tzinfo=UTC).timestamp()
    feed.send(base)  # 10:10
    feed.send(base + 100 * 60)  # 11:50
    assert feed.values(base + 110 * 60)["recent"] == 2  # at 12:00 hours 10-12 count
    feed.send(base + 175 * 60)  # 13:05
    assert feed.values(base + 180 * 60)["recent"] == 2  # at 13:10 hours 11-13 count
    assert feed.values(base + 6 * 3600)["recent"] == 0


def test_long_windows_keep_a_bounded_number_of_buckets() -> None:
    feed = Feed(engine_for({"year": stat("count", None, window="365d")}))
    start = T - 400 * 86400
    for day in range(400):
        feed.send(start + day * 86400)
    assert feed.state is not None
    assert len(feed.state.variables["year"]) <= MAX_BUCKETS
    counted = feed.values(T)["year"]
    assert 360 <= counted <= 372  # 365 days, to the width of a bucket (6 days)


def test_session_and_previous_session_windows() -> None:
    variables = {
        "this_session": stat("count", None, window="session"),
        "last_session": stat("count", None, window="previous_session"),
        "last_latest": stat("latest", window="previous_session"),
    }
    feed = Feed(engine_for(variables, session_timeout="30m"))
    for i in range(3):
        feed.send(T + i * 60, properties={"revenue": i})
    assert feed.values(T + 150) == {"this_session": 3, "last_session": 0, "last_latest": None}
    later = T + 120 + 30 * 60 + 1  # just over 30 minutes of inactivity: a new session
    feed.send(later, properties={"revenue": 9})
    feed.send(later + 60)
    assert feed.values(later + 61) == {"this_session": 2, "last_session": 3, "last_latest": 2}
    # once that session is over too, "previous" is the session just ended
    assert feed.values(later + 3 * 3600) == {"this_session": 0, "last_session": 2, "last_latest": 9}


def test_exactly_the_session_timeout_keeps_the_session() -> None:
    feed = Feed(engine_for({"s": stat("count", None, window="session")}, session_timeout="30m"))
    feed.send(T)
    feed.send(T + 1800)
    assert feed.values(T + 1801)["s"] == 2
    feed.send(T + 3601)
    assert feed.values(T + 3602)["s"] == 1


def test_where_filters_and_event_lists_and_dotted_fields() -> None:
    variables = {
        "cart_views": {
            "event": "page",
            "stat": "count",
            "window": "7d",
            "where": {"context": "page.path", "starts_with": "/cart"},
        },
        "last_path": {"event": "page", "field": "context.page.path", "stat": "latest"},
        "actions": {"event": ["Signed Up", "Order"], "stat": "count"},
        "plan": {"event": "identify", "field": "traits.plan", "stat": "latest"},
    }
    feed = Feed(engine_for(variables))
    for i, path in enumerate(["/cart", "/home", "/cart/2"]):
        feed.send(T + i, name="page", kind="page", context={"page": {"path": path}})
    feed.send(T + 5, name="Signed Up")
    feed.send(T + 6, name="Order")
    feed.send(T + 7, name="Other")
    feed.send(T + 8, name="identify", kind="identify", traits={"plan": "pro"})
    assert feed.values(T + 9) == {
        "cart_views": 2,
        "last_path": "/cart/2",
        "actions": 2,
        "plan": "pro",
    }


def test_distinct_count_keeps_a_bounded_set() -> None:
    feed = Feed(engine_for({"skus": stat("distinct_count", field="properties.sku")}))
    for i in range(DISTINCT_LIMIT + 50):
        feed.send(T + i, properties={"sku": f"sku-{i}"})
    feed.send(T + 500, properties={"sku": "sku-1"})
    assert feed.values(T + 600)["skus"] == DISTINCT_LIMIT
    assert feed.state is not None
    assert len(feed.state.variables["skus"][1]) == DISTINCT_LIMIT


def test_distinct_count_over_sessions_and_days() -> None:
    variables = {
        "today": stat("distinct_count", field="properties.sku", window="today"),
        "before": stat("distinct_count", field="properties.sku", window="previous_session"),
    }
    feed = Feed(engine_for(variables))
    day = datetime(2026, 3, 10, 1, 0, tzinfo=UTC).timestamp()
    for sku in ("a", "b", "a"):
        feed.send(day, properties={"sku": sku})
    feed.send(day + 7200, properties={"sku": "a"})  # a new session, same day
    assert feed.values(day + 7201) == {"today": 2, "before": 2}
    feed.send(day + 86400, properties={"sku": "c"})
    assert feed.values(day + 86401) == {"today": 1, "before": 1}


def test_a_late_event_lands_in_its_own_bucket() -> None:
    engine = engine_for({"week": stat("count", None, window="7d"), "last": stat("latest")})
    feed = Feed(engine)
    feed.send(T, properties={"revenue": 2})
    event = Event(
        type="track",
        name="Order",
        message_id="late",
        anonymous_id="anon-1",
        properties={"revenue": 1},
        timestamp=T - 3 * 86400,
        received_at=T,
    )
    feed.state = engine.process(feed.state, event, T).state
    assert feed.values(T + 1) == {"week": 2, "last": 2}
    # four days on, the late event (six days back) still counts, then leaves the window
    assert feed.values(T + 3 * 86400)["week"] == 2
    assert feed.values(T + 4 * 86400 + 1)["week"] == 1


def test_only_variables_that_something_uses_are_kept() -> None:
    raw = {
        "variables": {
            "used_by_segment": stat("count", None),
            "used_by_other": stat("sum"),
            "used_in_where": stat("count", None, where={"var": "used_by_other", "gt": 5}),
            "unused": stat("max"),
        },
        "segments": {
            "s": {"var": "used_in_where", "gte": 0},
            "t": {"var": "used_by_segment", "gt": 1},
        },
    }
    feed = Feed(Engine(compile_rules(decode_config(raw))))
    feed.send(T, properties={"revenue": 10})
    feed.send(T + 1, properties={"revenue": 10})
    assert feed.state is not None
    assert set(feed.state.variables) == {"used_by_segment", "used_by_other", "used_in_where"}
    # a variable's `where` sees the other variables as they were before the event
    assert feed.values(T + 2) == {"used_by_segment": 2, "used_by_other": 20, "used_in_where": 1}


def test_a_bad_field_path_is_a_load_error_with_its_path() -> None:
    from collector.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        engine_for({"v": stat("sum", field="revenue")})
    assert caught.value.problems[0].startswith("variables.v.field: unknown field 'revenue'")


NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC).timestamp()
HISTORY = [40 * 86400, 20 * 86400, 6 * 86400, 30 * 3600, 3 * 3600, 50 * 60, 10 * 60, 60]
WINDOW_TABLE = [
    ("all", 8),
    ("28d", 7),
    ("7d", 6),  # today and the 6 days before: 6 days ago, yesterday, 4 today
    ("2d", 5),  # today and yesterday
    ("today", 4),
    ("24h", 4),  # 13:00 yesterday onwards
    ("2h", 3),  # 11:00 onwards
    ("1h", 2),  # this hour, from 12:00
    ("session", 2),  # 10 and 1 minutes ago; 50 minutes ago was 40 minutes before: a session apart
    ("previous_session", 1),
]


@pytest.mark.parametrize(("window", "expected"), WINDOW_TABLE)
def test_every_window(window: str, expected: int) -> None:
    feed = Feed(engine_for({"n": stat("count", None, window=window)}, session_timeout="30m"))
    for ago in HISTORY:
        feed.send(NOW - ago)
    assert feed.values(NOW)["n"] == expected


@pytest.mark.parametrize("stat_name", ["count", "latest", "first", "last_at", "distinct_count"])
@pytest.mark.parametrize("window", ["all", "session", "today", "7d", "28d"])
def test_written_out_folds_store_what_the_statistics_fold_stores(
    stat_name: str, window: str
) -> None:
    """The common cases are folded without the statistic's own `record`; the states (tuples, or
    lists once a profile is loaded) must come out the same, for late and repeated events too."""
    rng = random.Random(f"{stat_name}:{window}")
    field = None if stat_name in ("count", "last_at") else event_field("properties.page")
    variable = Variable("v", ("Order",), stat_name, window, field)
    calendar = compile_rules(decode_config({"timezone": "Asia/Tokyo"})).calendar
    fast, slow = new_state("a"), new_state("a")
    t = T
    for n in range(400):
        t += rng.choice([5.0, 600.0, 30_000.0, 90_000.0])
        at = t - rng.choice([0.0, 0.0, 0.0, 40.0, 200_000.0])  # some late, some very late
        page = rng.choice(["/a", "/b", "/c", "/" + "x" * 80, 5])
        event = Event(
            type="track", name="Order", message_id=f"m{n}", anonymous_id="a", timestamp=at,
            received_at=at, properties={"page": page},
        )
        session = 1 + int(at // 7200)
        variable.record(Scope(fast, event, at, calendar, session))
        value = variable.extract(Scope(slow, event, at, calendar, session))
        if value is not MISSING:
            before = slow.variables.get("v", ())
            idx = variable.index(Scope(slow, event, at, calendar, session))
            if variable.distinct is not None:
                after = variable.distinct.record_distinct(before, idx, variable.keep, value)
            elif variable.flat:
                after = variable.stat.record_one(before, idx, value, at)
            else:
                after = variable.stat.record(before, idx, variable.keep, value, at)
            if after is not before:
                slow.variables["v"] = after
        assert msgspec.msgpack.encode(fast.variables) == msgspec.msgpack.encode(slow.variables)
        if rng.random() < 0.1:  # loaded from a store: buckets are lists now
            fast.variables = msgspec.msgpack.decode(msgspec.msgpack.encode(fast.variables))
            slow.variables = msgspec.msgpack.decode(msgspec.msgpack.encode(slow.variables))
