"""Delivery decisions in the seed's order: status and schedule, target users and segments,
trigger, test users, sticky rate and variants, frequency caps and exclusivity."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.config.settings import decode_config
from collector.engine.campaigns import sticky_bucket
from collector.engine.engine import Engine, Outcome, compile_rules
from collector.engine.profile import UserState
from collector.events import Event

TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo(*args: int) -> float:
    return datetime(*args, tzinfo=TOKYO).timestamp()


T = tokyo(2026, 12, 2, 12, 0)  # a Wednesday, noon in Tokyo
HOOK = {"webhook": {"url": "https://hooks.example/#{campaign_id}"}}


def campaign(cid: str = "c", **fields: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "status": "published",
        "trigger": {"event": "Clicked"},
        "frequency": {"per": "event"},  # the frequency tests below set their own
        "action": HOOK,
        **fields,
    }


def engine_for(
    *campaigns: dict[str, Any], updated_at: dict[str, float] | None = None, **config: Any
) -> Engine:
    raw = {
        "timezone": "Asia/Tokyo",
        "session_timeout": "30m",
        "segments": {
            "pro": {"trait": "plan", "eq": "pro"},
            "osaka": {"trait": "city", "eq": "Osaka"},
        },
        "test_users": {"trait": "is_test", "eq": True},
        "campaigns": list(campaigns),
        **config,
    }
    return Engine(compile_rules(decode_config(raw), updated_at=updated_at))


class User:
    """One user sending events to an engine."""

    def __init__(
        self, engine: Engine, anonymous_id: str = "anon-1", user_id: str | None = None
    ) -> None:
        self.engine = engine
        self.anonymous_id = anonymous_id
        self.user_id = user_id
        self.state: UserState | None = None
        self.n = 0

    def send(
        self, name: str = "Clicked", t: float = T, kind: str = "track", **fields: Any
    ) -> Outcome:
        self.n += 1
        event = Event(
            type=kind,
            name=name,
            message_id=f"{self.anonymous_id}-{self.n}",
            anonymous_id=self.anonymous_id,
            user_id=self.user_id,
            timestamp=t,
            received_at=t,
            **fields,
        )
        outcome = self.engine.process(self.state, event, t)
        self.state = outcome.state
        return outcome

    def reasons(self, name: str = "Clicked", t: float = T, **fields: Any) -> dict[str, str]:
        outcome = self.send(name, t, **fields)
        fired = {w.campaign_id for w in outcome.webhooks}
        result = {d.campaign_id: d.reason or "fired" for d in outcome.decisions}
        for missed in outcome.missed:  # counted apart from the decisions: never both
            for campaign_id, _, why in missed.counted():
                assert campaign_id not in result
                result[campaign_id] = str(why)
        assert fired == {cid for cid, r in result.items() if r == "fired"}
        return result


def reason(engine: Engine, **fields: Any) -> str:
    (only,) = User(engine).reasons(**fields).values()
    return only


# -- status and schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("published", "fired"),
        ("draft", "status"),
        ("paused", "status"),
        ("archived", "status"),
    ],
)
def test_only_published_campaigns_fire(status: str, expected: str) -> None:
    assert reason(engine_for(campaign(status=status))) == expected


SCHEDULE_TABLE = [
    ({"start": "2026-12-02T12:00:00+09:00"}, T, "fired"),  # start is inclusive
    ({"start": "2026-12-02T12:00:00+09:00"}, T - 1, "schedule"),
    ({"end": "2026-12-02T12:00:00+09:00"}, T, "schedule"),  # end is exclusive
    ({"end": "2026-12-02T12:00:00+09:00"}, T - 1, "fired"),
    ({"start": "2026-12-02T12:00:00"}, T, "fired"),  # naive = configured timezone
    ({"start": "2026-12-02T12:00:01"}, T, "schedule"),
    ({"days": ["wed"]}, T, "fired"),
    ({"days": ["mon", "tue", "thu", "fri", "sat", "sun"]}, T, "schedule"),
    ({"days": ["wed"]}, tokyo(2026, 12, 2, 23, 59, 59), "fired"),
    ({"days": ["wed"]}, tokyo(2026, 12, 3, 0, 0, 0), "schedule"),  # Thursday in Tokyo
    ({"days": ["thu"]}, tokyo(2026, 12, 3, 0, 0, 0), "fired"),  # still Wednesday in UTC
    ({"hours": "09:00-21:00"}, tokyo(2026, 12, 2, 8, 59, 59), "schedule"),
    ({"hours": "09:00-21:00"}, tokyo(2026, 12, 2, 9, 0), "fired"),
    ({"hours": "09:00-21:00"}, tokyo(2026, 12, 2, 20, 59, 59), "fired"),
    ({"hours": "09:00-21:00"}, tokyo(2026, 12, 2, 21, 0), "schedule"),
    ({"hours": "21:00-03:00"}, tokyo(2026, 12, 2, 23, 0), "fired"),
    ({"hours": "21:00-03:00"}, tokyo(2026, 12, 3, 2, 59), "fired"),
    ({"hours": "21:00-03:00"}, tokyo(2026, 12, 3, 3, 0), "schedule"),
    ({"hours": "21:00-03:00"}, T, "schedule"),
    ({"hours": "18:00-24:00"}, tokyo(2026, 12, 2, 23, 59, 59), "fired"),
    ({"hours": "18:00-24:00"}, tokyo(2026, 12, 3, 0, 0), "schedule"),
]


@pytest.mark.parametrize(("schedule", "t", "expected"), SCHEDULE_TABLE)
def test_schedule_edges(schedule: dict[str, Any], t: float, expected: str) -> None:
    engine = engine_for(campaign(schedule=schedule))
    (only,) = User(engine).reasons(t=t).values()
    assert only == expected


# -- target, trigger, test users -------------------------------------------------------------


@pytest.mark.parametrize(
    ("users", "user_id", "expected"),
    [
        ("all", None, "fired"),
        ("all", "u1", "fired"),
        ("members", "u1", "fired"),
        ("members", None, "target"),
        ("visitors", None, "fired"),
        ("visitors", "u1", "target"),
    ],
)
def test_target_users(users: str, user_id: str | None, expected: str) -> None:
    engine = engine_for(campaign(target={"users": users}))
    (only,) = User(engine, user_id=user_id).reasons().values()
    assert only == expected


def test_target_segments_must_all_hold() -> None:
    engine = engine_for(campaign(target={"segments": ["pro", "osaka"]}))
    assert reason(engine, traits={"plan": "pro", "city": "Osaka"}) == "fired"
    assert reason(engine, traits={"plan": "pro", "city": "Kyoto"}) == "not_in_segment"
    assert reason(engine, traits={"plan": "free", "city": "Osaka"}) == "not_in_segment"


def test_trigger_event_and_where() -> None:
    engine = engine_for(
        campaign(trigger={"event": "Clicked", "where": {"prop": "button", "eq": "buy"}})
    )
    assert reason(engine, properties={"button": "buy"}) == "fired"
    assert reason(engine, properties={"button": "help"}) == "trigger"
    assert User(engine).reasons(name="Viewed") == {}  # other events do not consider it at all


def test_no_trigger_means_every_page_view() -> None:
    engine = engine_for(campaign(trigger=None))
    user = User(engine)
    assert user.reasons(name="page", kind="page", context={"page": {"path": "/"}}) == {"c": "fired"}
    assert user.reasons(name="Clicked") == {}


def test_test_mode_fires_only_for_test_users() -> None:
    engine = engine_for(campaign(test_mode=True))
    assert reason(engine, traits={"is_test": True}) == "fired"
    assert reason(engine) == "test_mode"
    no_test_users = engine_for(campaign(test_mode=True), test_users=None)
    assert reason(no_test_users, traits={"is_test": True}) == "test_mode"


# -- rate and variants ------------------------------------------------------------------------


def test_rate_is_sticky_and_close_to_the_rate() -> None:
    engine = engine_for(campaign(rate=30))
    outcomes = Counter()
    for i in range(10_000):
        user = User(engine, anonymous_id=f"visitor-{i}")
        first = user.reasons()["c"]
        if i % 50 == 0:  # the same user always gets the same answer
            assert user.reasons(t=T + 10)["c"] == first
            assert user.reasons(t=T + 86400)["c"] == first
        outcomes[first] += 1
    assert set(outcomes) == {"fired", "control_group"}
    assert 2850 <= outcomes["fired"] <= 3150


def test_assignment_is_a_deterministic_hash_of_campaign_and_user() -> None:
    assert sticky_bucket("c", "visitor-1") == sticky_bucket("c", "visitor-1")
    assert 0 <= sticky_bucket("c", "visitor-1") < 10_000
    buckets = {sticky_bucket(f"campaign-{i}", "visitor-1") for i in range(50)}
    assert len(buckets) > 40  # different campaigns split the same user independently


def test_variants_split_users_and_the_rest_is_the_control_group() -> None:
    variants = [
        {"id": "A", "rate": 20, "action": {"webhook": {"url": "https://hooks.example/a"}}},
        {"id": "B", "rate": 50, "action": {"webhook": {"url": "https://hooks.example/b"}}},
    ]
    engine = engine_for(campaign(action=None, variants=variants))
    seen: Counter[tuple[str | None, str | None]] = Counter()
    for i in range(4000):
        outcome = User(engine, anonymous_id=f"v{i}").send()
        (decision,) = outcome.decisions
        seen[decision.variant_id, decision.reason] += 1
        if decision.reason is None:
            (webhook,) = outcome.webhooks
            assert webhook.variant_id == decision.variant_id
            assert webhook.url == f"https://hooks.example/{decision.variant_id.lower()}"
    assert set(seen) == {("A", None), ("B", None), (None, "control_group")}
    assert 700 <= seen["A", None] <= 900
    assert 1850 <= seen["B", None] <= 2150
    assert 1050 <= seen[None, "control_group"] <= 1350


# -- frequency caps ---------------------------------------------------------------------------


def test_per_user_fires_once_per_user() -> None:
    user = User(engine_for(campaign(frequency={"per": "user"})))
    results = [user.reasons(t=T + i * 7200)["c"] for i in range(3)]  # a new session each time
    assert results == ["fired", "frequency", "frequency"]
    assert User(engine_for(campaign(frequency={"per": "user"})), "anon-2").reasons()["c"] == "fired"


def test_per_session_fires_once_per_session() -> None:
    user = User(engine_for(campaign(frequency={"per": "session"})))
    assert [user.reasons(t=T + i)["c"] for i in range(3)] == ["fired", "frequency", "frequency"]
    assert user.reasons(t=T + 2 + 1801)["c"] == "fired"  # 30 minutes idle: a new session
    assert user.reasons(t=T + 2 + 1802)["c"] == "frequency"


def test_no_frequency_means_once_per_session() -> None:
    spec = campaign()
    del spec["frequency"]
    user = User(engine_for(spec))
    assert [user.reasons(t=T + i)["c"] for i in range(2)] == ["fired", "frequency"]
    assert user.reasons(t=T + 3600)["c"] == "fired"
    only_caps = User(engine_for(campaign(frequency={"max_per_day": 5})))
    assert [only_caps.reasons(t=T + i)["c"] for i in range(2)] == ["fired", "frequency"]


def test_per_event_fires_on_every_event() -> None:
    user = User(engine_for(campaign(frequency={"per": "event"})))
    assert [user.reasons(t=T + i)["c"] for i in range(4)] == ["fired"] * 4


def test_max_total_caps_all_sessions_together() -> None:
    user = User(engine_for(campaign(frequency={"per": "session", "max_total": 2})))
    results = [user.reasons(t=T + i * 7200)["c"] for i in range(4)]  # a new session each time
    assert results == ["fired", "fired", "frequency", "frequency"]
    every = User(engine_for(campaign(frequency={"per": "event", "max_total": 3})))
    assert [every.reasons(t=T + i)["c"] for i in range(5)] == ["fired"] * 3 + ["frequency"] * 2


def test_max_per_day_caps_every_event_per_local_day() -> None:
    daily = User(engine_for(campaign(frequency={"per": "event", "max_per_day": 2})))
    assert [daily.reasons(t=T + i)["c"] for i in range(3)] == ["fired", "fired", "frequency"]
    assert daily.reasons(t=T + 86400)["c"] == "fired"


def test_max_per_day_turns_over_at_local_midnight() -> None:
    user = User(engine_for(campaign(frequency={"per": "event", "max_per_day": 1})))
    assert user.reasons(t=tokyo(2026, 12, 2, 23, 59))["c"] == "fired"
    assert user.reasons(t=tokyo(2026, 12, 2, 23, 59, 59))["c"] == "frequency"
    assert user.reasons(t=tokyo(2026, 12, 3, 0, 0, 1))["c"] == "fired"  # same UTC day
    assert user.reasons(t=tokyo(2026, 12, 3, 8, 0))["c"] == "frequency"


def test_caps_count_only_fired_deliveries() -> None:
    spec = campaign(
        frequency={"max_total": 1},
        action={"webhook": {"url": "https://hooks.example/", "body": {"p": "#{traits.plan}"}}},
    )
    user = User(engine_for(spec))
    assert user.reasons()["c"] == "missing_variable"
    assert user.reasons(t=T + 1, traits={"plan": "pro"})["c"] == "fired"
    assert user.reasons(t=T + 2)["c"] == "frequency"
    assert user.state is not None and user.state.caps["c"].total == 1


# -- exclusivity --------------------------------------------------------------------------------


def test_exclusive_highest_priority_wins_and_others_fire_alongside() -> None:
    engine = engine_for(
        campaign("low", exclusive=True, priority=1),
        campaign("high", exclusive=True, priority=5),
        campaign("shared"),
    )
    assert User(engine).reasons() == {"high": "fired", "low": "exclusive", "shared": "fired"}


@pytest.mark.parametrize(
    ("updated_at", "winner"),
    [
        ({"first": 100.0, "second": 200.0}, "second"),
        ({"first": 300.0, "second": 200.0}, "first"),
        (None, "first"),  # same priority, same update time: the first in the config
    ],
)
def test_exclusivity_ties_go_to_the_most_recently_updated(
    updated_at: dict[str, float] | None, winner: str
) -> None:
    engine = engine_for(
        campaign("first", exclusive=True), campaign("second", exclusive=True), updated_at=updated_at
    )
    result = User(engine).reasons()
    assert result[winner] == "fired"
    assert sorted(result.values()) == ["exclusive", "fired"]


def test_an_exclusive_campaign_that_cannot_fire_leaves_room_for_the_next() -> None:
    broken = {"webhook": {"url": "https://hooks.example/", "body": {"p": "#{traits.plan}"}}}
    engine = engine_for(
        campaign("top", exclusive=True, priority=9, action=broken),
        campaign("capped", exclusive=True, priority=8, frequency={"max_total": 1}),
        campaign("next", exclusive=True, priority=1),
    )
    user = User(engine)
    assert user.reasons() == {"top": "missing_variable", "capped": "fired", "next": "exclusive"}
    assert user.reasons(t=T + 1) == {
        "top": "missing_variable",
        "capped": "frequency",
        "next": "fired",
    }


# -- the order of the steps ----------------------------------------------------------------------

ORDER_TABLE = [
    # each row fails several steps; the earliest step in the seed's order is reported
    ({"status": "paused", "schedule": {"days": ["mon"]}}, {}, "status"),
    ({"schedule": {"days": ["mon"]}, "target": {"users": "members"}}, {}, "schedule"),
    ({"target": {"users": "members", "segments": ["pro"]}}, {}, "target"),
    (
        {
            "target": {"segments": ["pro"]},
            "trigger": {"event": "Clicked", "where": {"prop": "x", "eq": 1}},
        },
        {},
        "not_in_segment",
    ),
    (
        # a trigger requiring one text of the event is looked up before any gate is checked
        {
            "target": {"segments": ["pro"]},
            "trigger": {"event": "Clicked", "where": {"prop": "x", "eq": "a"}},
        },
        {},
        "trigger",
    ),
    (
        {"trigger": {"event": "Clicked", "where": {"prop": "x", "eq": 1}}, "test_mode": True},
        {},
        "trigger",
    ),
    ({"test_mode": True, "rate": 0}, {}, "test_mode"),
    ({"rate": 0, "frequency": {"max_total": 1}}, {"traits": {"is_test": True}}, "control_group"),
]


@pytest.mark.parametrize(("fields", "event", "expected"), ORDER_TABLE)
def test_the_first_failing_step_is_the_reason(
    fields: dict[str, Any], event: dict[str, Any], expected: str
) -> None:
    assert reason(engine_for(campaign(**fields)), **event) == expected


def test_frequency_is_checked_after_rate_and_before_exclusivity() -> None:
    engine = engine_for(
        campaign("a", exclusive=True, priority=2, frequency={"max_total": 1}),
        campaign("b", exclusive=True, priority=1),
    )
    user = User(engine)
    assert user.reasons() == {"a": "fired", "b": "exclusive"}
    assert user.reasons(t=T + 1) == {"a": "frequency", "b": "fired"}


# -- segment_entered ---------------------------------------------------------------------------


def test_segment_entered_fires_when_the_user_newly_enters() -> None:
    engine = engine_for(campaign("welcome-pro", trigger={"segment_entered": "pro"}))
    user = User(engine)
    assert user.reasons(name="Viewed") == {}
    assert user.reasons(name="identify", t=T + 1, kind="identify", traits={"plan": "pro"}) == {
        "welcome-pro": "fired"
    }
    assert user.reasons(name="Viewed", t=T + 2) == {}  # still in: not entered again
    assert user.reasons(name="identify", t=T + 3, kind="identify", traits={"plan": "free"}) == {}
    assert user.reasons(name="Viewed", t=T + 4, traits={"plan": "pro"}) == {"welcome-pro": "fired"}


# -- campaigns looked up by the text their trigger requires --------------------------------------

LOOKED_UP = [
    campaign("a1", trigger={"event": "Clicked", "where": {"prop": "sku", "eq": "A"}},
             exclusive=True, priority=1),
    campaign("a2", trigger={"event": "Clicked", "where": {"prop": "sku", "eq": "A"}},
             exclusive=True, priority=2),
    campaign("b", trigger={"event": "Clicked", "where": {"prop": "sku", "eq": "B"}}),
    campaign("seven", trigger={"event": "Clicked", "where": {"prop": "sku", "eq": "7"}}),
    campaign("path", trigger={"event": "Clicked", "where": {"context": "page.path", "eq": "/x"}}),
    campaign("any", exclusive=True),
    campaign("big", trigger={"event": "Clicked", "where": {"prop": "n", "gte": 2}}),
]


def unindexed(spec: dict[str, Any]) -> dict[str, Any]:
    """The same campaign with its `where` wrapped in `all`, which no lookup indexes."""
    where = spec["trigger"].get("where")
    return spec if where is None else {**spec, "trigger": {**spec["trigger"], "where": {
        "all": [where]}}}


@pytest.mark.parametrize(
    "fields",
    [
        {"properties": {"sku": "A"}},
        {"properties": {"sku": "B", "n": 3}},
        {"properties": {"sku": "C"}, "context": {"page": {"path": "/x"}}},
        {"properties": {"sku": 7}},  # a number is not the text "7"
        {"properties": {"sku": "7"}},
        {"properties": {"sku": ["A"]}},
        {"properties": {}},
    ],
)
def test_a_lookup_decides_as_checking_every_trigger_would(fields: dict[str, Any]) -> None:
    looked_up = User(engine_for(*LOOKED_UP)).reasons(**fields)
    checked = User(engine_for(*map(unindexed, LOOKED_UP))).reasons(**fields)
    assert looked_up == checked
    assert set(looked_up) == {spec["id"] for spec in LOOKED_UP}


def test_an_event_that_misses_every_looked_up_campaign_counts_one_miss() -> None:
    user = User(engine_for(*LOOKED_UP))
    outcome = user.send(properties={"sku": "Z"})
    # one count for the looked-up campaigns together, one for each other campaign missed
    assert [sorted(c for c, _, _ in m.counted()) for m in outcome.missed] == [
        ["a1", "a2", "b", "seven"], ["path"], ["big"]
    ]
    assert user.state is not None and "a1" not in user.state.decisions
