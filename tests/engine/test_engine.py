"""The engine as the store and admin API use it: profile upkeep, sessions, identity merge,
describe, campaign changes, indexing, serialisable state and determinism."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from collector.config.settings import decode_campaign, decode_config
from collector.engine.engine import Engine, Outcome, compile_rules
from collector.engine.profile import MAX_ANONYMOUS_IDS, Session, UserState, new_state, session_id
from collector.errors import ConfigError
from collector.events import Event

T = datetime(2026, 3, 10, 3, 0, tzinfo=UTC).timestamp()
VARIABLES = {
    "orders": {"event": "Order", "stat": "count"},
    "spent": {"event": "Order", "field": "properties.revenue", "stat": "sum", "default": 0},
    "smallest": {"event": "Order", "field": "properties.revenue", "stat": "min"},
    "biggest": {"event": "Order", "field": "properties.revenue", "stat": "max"},
    "last_sku": {"event": "Order", "field": "properties.sku", "stat": "latest"},
    "first_sku": {"event": "Order", "field": "properties.sku", "stat": "first"},
    "skus": {"event": "Order", "field": "properties.sku", "stat": "distinct_count"},
    "avg": {"event": "Order", "field": "properties.revenue", "stat": "avg"},
    "in_session": {"event": "Order", "stat": "count", "window": "session"},
}
CONFIG = {
    "timezone": "Asia/Tokyo",
    "variables": VARIABLES,
    "segments": {"buyers": {"var": "orders", "gte": 1}, "big": {"var": "spent", "gte": 100}},
    "campaigns": [
        {
            "id": "thanks",
            "status": "published",
            "trigger": {"event": "Order"},
            "frequency": {"per": "event", "max_total": 5},
            "action": {
                "webhook": {
                    "url": "https://hooks.example/t",
                    "body": {
                        "spent": "#{spent}",
                        "sku": "#{last_sku}",
                        "first": "#{first_sku}",
                        "min": "#{smallest}",
                        "max": "#{biggest}",
                        "n": "#{skus}",
                        "avg": "#{avg}",
                        "s": "#{in_session}",
                    },
                }
            },
        },
        {
            "id": "big-spender",
            "status": "published",
            "trigger": {"segment_entered": "big"},
            "frequency": {"per": "event"},
            "action": {"webhook": {"url": "https://hooks.example/b"}},
        },
    ],
}


def make_engine(**changes: Any) -> Engine:
    return Engine(compile_rules(decode_config({**CONFIG, **changes})))


def event(name: str, t: float, n: int = 0, **fields: Any) -> Event:
    fields.setdefault("anonymous_id", "anon-1")
    kind = fields.pop("type", "track")
    return Event(
        type=kind, name=name, message_id=f"{name}-{t}-{n}", timestamp=t, received_at=t, **fields
    )


def run(
    engine: Engine, events: list[Event], state: UserState | None = None
) -> tuple[UserState, list[Outcome]]:
    outcomes = []
    for item in events:
        outcome = engine.process(state, item, item.timestamp)
        state = outcome.state
        outcomes.append(outcome)
    assert state is not None
    return state, outcomes


def test_a_new_profile_records_identity_traits_counts_and_times() -> None:
    engine = make_engine()
    state, _ = run(
        engine,
        [
            event("page", T, type="page", context={"page": {"path": "/"}}),
            event(
                "identify",
                T + 5,
                type="identify",
                user_id="u-1",
                traits={"plan": "free", "name": "Aki"},
            ),
            event(
                "Order", T + 9, user_id="u-1", traits={"plan": "pro"}, properties={"revenue": 10}
            ),
        ],
    )
    assert state.key == "anon-1"
    assert state.user_id == "u-1"
    assert state.anonymous_ids == ["anon-1"]
    assert state.traits == {"plan": "pro", "name": "Aki"}
    assert state.event_counts == {"page": 1, "identify": 1, "Order": 1}
    assert (state.first_seen, state.last_seen) == (T, T + 9)


def test_anonymous_ids_are_kept_most_recent_first_and_bounded() -> None:
    engine = make_engine()
    events = [
        event("page", T + i, anonymous_id=f"a{i}", type="page")
        for i in range(MAX_ANONYMOUS_IDS + 3)
    ]
    events.append(event("page", T + 100, anonymous_id="a5", type="page"))
    state, _ = run(engine, events)
    assert len(state.anonymous_ids) == MAX_ANONYMOUS_IDS
    assert state.anonymous_ids[-1] == "a5"
    assert "a0" not in state.anonymous_ids


def test_sessions_start_after_the_timeout_of_inactivity() -> None:
    engine = make_engine(session_timeout="30m")
    state, _ = run(engine, [event("page", T, type="page"), event("page", T + 1799, type="page")])
    assert state.session is not None
    first = session_id(state.key, state.session)
    assert first.startswith("s_") and len(first) == 18
    assert (state.session.number, state.session.start, state.session.last) == (1, T, T + 1799)
    state, _ = run(engine, [event("page", T + 1799 + 1801, type="page")], state)
    assert state.session.number == 2
    assert session_id(state.key, state.session) != first
    assert state.session.start == T + 3600


def test_a_session_id_is_the_same_derived_or_kept_by_an_earlier_version() -> None:
    """Profiles no longer hold their session's id (it is derived when read); one written by an
    earlier version, which holds it, reads the id it held."""
    derived = session_id("k1", Session("", 3, T, T))
    assert derived == session_id("k1", Session("", 3, T, T + 60))  # the same all session long
    assert derived not in (session_id("k2", Session("", 3, T, T)),
                           session_id("k1", Session("", 4, T, T)))
    assert session_id("k1", Session("s_kept", 3, T, T)) == "s_kept"


def test_the_engine_clock_is_the_event_time_but_never_after_now() -> None:
    engine = make_engine()
    future = event("Order", T + 3600, properties={"revenue": 1})
    outcome = engine.process(None, future, T)
    assert outcome.state.last_seen == T  # a clock-skewed future timestamp is capped at now
    assert outcome.decisions[0].at == T


def test_decisions_are_kept_per_campaign_for_why_didnt_it_fire() -> None:
    engine = make_engine()
    state, outcomes = run(engine, [event("Order", T, properties={"revenue": 5})])
    assert [d.reason for d in outcomes[0].decisions] == ["missing_variable"]
    assert state.decisions["thanks"].reason == "missing_variable"
    state, _ = run(engine, [event("Order", T + 1, properties={"revenue": 5, "sku": "A"})], state)
    assert state.decisions["thanks"].outcome == "fired"


def test_the_last_few_distinct_decisions_are_kept_newest_first() -> None:
    engine = make_engine(
        segments={"vip": {"trait": "vip", "eq": True}},
        campaigns=[
            {
                "id": "once",
                "status": "published",
                "trigger": {"event": "Order", "where": {"prop": "sku", "eq": "A"}},
                "target": {"segments": ["vip"]},
                "frequency": {"per": "user"},
                "action": {"webhook": {"url": "https://hooks.example/o"}},
            }
        ],
    )

    def order(t: float, sku: str, vip: bool) -> Event:
        return event("Order", t, properties={"sku": sku}, traits={"vip": vip})

    state, _ = run(
        engine, [order(T, "A", False), order(T + 1, "A", False), order(T + 2, "A", True)]
    )
    state, outcomes = run(
        engine, [order(T + 3, "A", True), order(T + 4, "B", True), order(T + 5, "A", True)], state
    )
    # an event the campaign is not about (another sku) is counted apart and kept by nobody
    assert outcomes[1].decisions == [] and [m.labels for m in outcomes[1].missed] == [
        (("once", "suppressed", "trigger"),)
    ]
    history = engine.describe(state, T + 60)["decision_history"]["once"]
    # repeats of one outcome are one entry, stamped with the latest
    assert [(d["reason"], d["at"]) for d in history] == [
        ("frequency", T + 5),
        (None, T + 2),
        ("not_in_segment", T + 1),
    ]
    assert engine.describe(state, T + 60)["decisions"]["once"]["reason"] == "frequency"
    for i in range(10):  # bounded: the newest MAX_DECISIONS
        state, _ = run(engine, [order(T + 10 + i, "A", i % 2 == 1)], state)
    history = engine.describe(state, T + 60)["decision_history"]["once"]
    assert [d["reason"] for d in history] == [
        "frequency", "not_in_segment", "frequency", "not_in_segment", "frequency"
    ]
    assert history[0]["at"] == T + 19


def test_merged_profiles_interleave_their_decision_histories() -> None:
    engine = make_engine()
    a, _ = run(engine, [event("Order", T, properties={"revenue": 5})])  # no sku: missing
    a, _ = run(engine, [event("Order", T + 2, properties={"revenue": 5, "sku": "A"})], a)
    b, _ = run(engine, [event("Order", T + 1, anonymous_id="b", properties={"revenue": 5})])
    merged = engine.merge(a, b)
    history = engine.describe(merged, T + 60)["decision_history"]["thanks"]
    assert [(d["reason"], d["at"]) for d in history] == [
        (None, T + 2), ("missing_variable", T + 1), ("missing_variable", T)
    ]


def test_describe_shows_what_the_admin_user_lookup_needs() -> None:
    engine = make_engine()
    state, _ = run(
        engine,
        [
            event("identify", T, type="identify", user_id="u-1", traits={"plan": "pro"}),
            event("Order", T + 1, user_id="u-1", properties={"revenue": 150, "sku": "A"}),
        ],
    )
    view = engine.describe(state, T + 60)
    assert view["user_id"] == "u-1"
    assert view["traits"] == {"plan": "pro"}
    assert view["variables"]["spent"] == 150
    assert view["variables"]["last_sku"] == "A"
    assert view["variables"]["in_session"] == 1
    assert view["segments"] == ["buyers", "big"]
    assert view["decisions"]["thanks"]["outcome"] == "fired"
    assert view["decisions"]["big-spender"] == {
        "variant_id": None,
        "outcome": "fired",
        "reason": None,
        "at": T + 1,
    }
    assert view["session"]["active"] is True
    assert view["caps"] == {
        "thanks": {
            "total": 1,
            "session": 1,
            "in_session": 1,
            "day": view["caps"]["thanks"]["day"],
            "in_day": 1,
        }
    }
    later = engine.describe(state, T + 7200)
    assert later["session"]["active"] is False
    assert later["variables"]["in_session"] == 0
    assert msgspec.json.decode(msgspec.json.encode(later)) == later  # plain data


def test_state_survives_a_msgpack_round_trip_and_behaves_the_same() -> None:
    engine = make_engine()
    events = [
        event("Order", T + i * 900, i, properties={"revenue": 10 * i, "sku": f"s{i % 3}"})
        for i in range(12)
    ]
    kept, _ = run(engine, events[:6])
    encoded = msgspec.msgpack.encode(kept)
    revived = msgspec.msgpack.decode(encoded, type=UserState)
    assert revived == kept
    _, direct = run(engine, events[6:], kept)
    _, after = run(engine, events[6:], revived)
    assert [o.webhooks for o in direct] == [o.webhooks for o in after]
    assert [o.decisions for o in direct] == [o.decisions for o in after]


def test_the_same_events_give_the_same_webhooks() -> None:
    events = [
        event("Order", T + i * 60, i, properties={"revenue": i, "sku": "x"}) for i in range(5)
    ]
    first = [o.webhooks for o in run(make_engine(), events)[1]]
    second = [o.webhooks for o in run(make_engine(), events)[1]]
    assert first == second
    assert sum(len(w) for w in first) == 5


def test_merge_combines_two_profiles_of_one_person() -> None:
    engine = make_engine()
    device, _ = run(
        engine,
        [
            event(
                "identify",
                T,
                anonymous_id="phone",
                user_id="u-1",
                type="identify",
                traits={"plan": "free", "city": "Osaka"},
            ),
            event(
                "Order",
                T + 10,
                anonymous_id="phone",
                user_id="u-1",
                properties={"revenue": 140, "sku": "A"},
            ),
        ],
    )
    browser, _ = run(
        engine,
        [
            event("Order", T + 20, anonymous_id="laptop", properties={"revenue": 5, "sku": "B"}),
            event(
                "identify", T + 30, anonymous_id="laptop", type="identify", traits={"plan": "pro"}
            ),
            event("Order", T + 40, anonymous_id="laptop", properties={"revenue": 80, "sku": "A"}),
        ],
    )
    merged = engine.merge(device, browser)
    assert merged.key == device.key
    assert merged.user_id == "u-1"
    assert set(merged.anonymous_ids) == {"phone", "laptop"}
    assert merged.traits == {"plan": "pro", "city": "Osaka"}  # the newer profile wins
    assert merged.event_counts == {"identify": 2, "Order": 3}
    assert merged.caps["thanks"].total == 3
    assert merged.caps["thanks"].in_session == 2  # the browser's session is the one kept
    assert (merged.first_seen, merged.last_seen) == (T, T + 40)
    values = engine.describe(merged, T + 50)["variables"]
    assert values == {
        "orders": 3,
        "spent": 225,
        "smallest": 5,
        "biggest": 140,
        "last_sku": "A",
        "first_sku": "A",
        "skus": 2,
        "avg": 75.0,
        "in_session": 2,  # session values come from the newer profile
    }
    assert engine.describe(merged, T + 50)["segments"] == ["buyers", "big"]
    # the phone half was already in "big": the merged profile does not enter it again
    _state, outcomes = run(
        engine,
        [event("Order", T + 60, anonymous_id="laptop", properties={"revenue": 1, "sku": "C"})],
        merged,
    )
    assert [d.campaign_id for d in outcomes[0].decisions] == ["thanks"]


def test_replace_and_remove_campaigns_without_rebuilding_everything() -> None:
    engine = make_engine()
    config = engine.rules.config
    spec = decode_campaign(
        {
            "id": "late",
            "status": "published",
            "trigger": {"event": "Order"},
            "action": {"webhook": {"url": "https://h.example/#{orders}"}},
        },
        config,
    )
    engine.replace_campaign(spec, updated_at=T)
    outcome = engine.process(None, event("Order", T, properties={"revenue": 1, "sku": "s"}), T)
    assert {w.campaign_id: w.url for w in outcome.webhooks} == {
        "thanks": "https://hooks.example/t",
        "late": "https://h.example/1",
    }
    paused = decode_campaign({**msgspec.to_builtins(spec), "status": "paused"}, config)
    engine.replace_campaign(paused, updated_at=T + 1)
    assert engine.rules.campaigns["late"].updated_at == T + 1
    outcome = engine.process(None, event("Order", T, properties={"revenue": 1, "sku": "s"}), T)
    assert {d.campaign_id: d.reason for d in outcome.decisions} == {
        "thanks": None,
        "late": "status",
    }
    engine.remove_campaign("late")
    outcome = engine.process(None, event("Order", T, properties={"revenue": 1, "sku": "s"}), T)
    assert [d.campaign_id for d in outcome.decisions] == ["thanks"]


def test_a_replaced_campaign_can_use_a_variable_nothing_used_before() -> None:
    engine = make_engine(variables={**VARIABLES, "pages": {"event": "page", "stat": "count"}})
    assert "pages" not in engine.rules.variables
    spec = decode_campaign(
        {
            "id": "p",
            "status": "published",
            "trigger": {"event": "Order"},
            "action": {"webhook": {"url": "https://h.example/#{pages}"}},
        },
        engine.rules.config,
    )
    engine.replace_campaign(spec, updated_at=T)
    _state, outcomes = run(
        engine,
        [
            event("page", T, type="page"),
            event("page", T + 1, type="page"),
            event("Order", T + 2, properties={"sku": "s"}),
        ],
    )
    assert [w.url for w in outcomes[-1].webhooks if w.campaign_id == "p"] == ["https://h.example/2"]


def test_an_invalid_replacement_is_rejected_and_the_rules_stay() -> None:
    engine = make_engine()
    before = engine.rules
    spec = decode_campaign(
        {
            "id": "bad",
            "trigger": {"event": "Order"},
            "action": {"webhook": {"url": "https://h.example/#{nope}"}},
        },
        before.config,
    )
    with pytest.raises(ConfigError) as caught:
        engine.replace_campaign(spec, updated_at=T)
    assert caught.value.problems == ["action.webhook.url: unknown variable 'nope'"]
    assert engine.rules is before


def test_events_only_consider_campaigns_indexed_under_their_name() -> None:
    campaigns = [
        {
            "id": f"c{i}",
            "status": "published",
            "trigger": {"event": f"Event {i % 50}"},
            "action": {"webhook": {"url": "https://h.example/"}},
        }
        for i in range(1000)
    ]
    engine = make_engine(campaigns=campaigns)
    outcome = engine.process(None, event("Event 7", T), T)
    assert sorted(d.campaign_id for d in outcome.decisions) == sorted(
        f"c{i}" for i in range(7, 1000, 50)
    )
    assert engine.process(None, event("Unrelated", T), T).decisions == []


def test_compile_rules_reports_every_problem() -> None:
    raw = {
        **CONFIG,
        "campaigns": [
            {"id": "a", "action": {"webhook": {"url": "https://h.example/#{x}"}}},
            {
                "id": "b",
                "action": {"webhook": {"url": "https://h.example/", "body": {"y": "#{y}"}}},
            },
        ],
    }
    with pytest.raises(ConfigError) as caught:
        compile_rules(decode_config(raw))
    assert caught.value.problems == [
        "campaigns[0].action.webhook.url: unknown variable 'x'",
        "campaigns[1].action.webhook.body.y: unknown variable 'y'",
    ]


def test_new_state_is_an_empty_profile() -> None:
    state = new_state("k", T)
    assert (state.key, state.first_seen, state.last_seen, state.traits, state.variables) == (
        "k",
        T,
        T,
        {},
        {},
    )
    outcome = make_engine().process(state, event("page", T + 1, type="page"), T + 1)
    assert outcome.state is state


def test_a_refused_campaign_leaves_no_variable_behind() -> None:
    engine = make_engine()
    before = set(engine.rules.variables)
    spec = decode_campaign(
        {
            "id": "bad",
            "trigger": {"event": "Order", "where": {"event_count": "Refund", "gte": 1}},
            "action": {"webhook": {"url": "https://h.example/#{nope}"}},
        },
        engine.rules.config,
    )
    with pytest.raises(ConfigError):
        engine.replace_campaign(spec, updated_at=T)
    ok = decode_campaign(
        {"id": "ok", "trigger": {"event": "Order"}, "action": {"webhook": {"url": "https://h/"}}},
        engine.rules.config,
    )
    engine.replace_campaign(ok, updated_at=T)
    assert set(engine.rules.variables) == before  # no `Refund` counter from the refused one
    state, _ = run(engine, [event("Refund", T)])
    assert not any("Refund" in name for name in state.variables)


def test_removing_a_campaign_drops_the_variables_only_it_used() -> None:
    engine = make_engine(variables={**VARIABLES, "pages": {"event": "page", "stat": "count"}})
    spec = decode_campaign(
        {
            "id": "p",
            "status": "published",
            "trigger": {"event": "Order", "where": {"event_count": "Refund", "gte": 0}},
            "action": {"webhook": {"url": "https://h.example/#{pages}"}},
        },
        engine.rules.config,
    )
    engine.replace_campaign(spec, updated_at=T)
    assert "pages" in engine.rules.variables
    assert "~count:Refund:all" in engine.rules.variables
    engine.remove_campaign("p")
    assert "pages" not in engine.rules.variables
    assert "~count:Refund:all" not in engine.rules.variables
    assert "orders" in engine.rules.variables  # still used by the file's campaigns
    state, _ = run(engine, [event("page", T, type="page"), event("Refund", T + 1)])
    assert "pages" not in state.variables and "~count:Refund:all" not in state.variables
