"""User variables `top`, `mode` and `last_unique`: values, windows, bounds, merges, both stores,
and their use in conditions and templates."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.profile import UserState
from collector.errors import ConfigError
from collector.events import Event
from collector.memory.store import MemoryStore
from collector.redis.connection import RedisConnection
from collector.redis.store import RedisStore
from collector.store.base import Store
from collector.store.pipeline import ingest
from tests.engine.test_variables import Feed, T, engine_for, tokyo
from tests.store.test_contract import event
from tests.support.redis import RedisServer

CATEGORIES = ["shoes", "bags", "shoes", "hats", None, "bags", "shoes", 42, "hats", "hats"]


def viewed(stat: str, **extra: Any) -> dict[str, Any]:
    return {"event": "View", "field": "properties.category", "stat": stat, **extra}


def fed(variables: dict[str, Any], categories: list[Any], **config: Any) -> Feed:
    feed = Feed(engine_for(variables, **config))
    for i, category in enumerate(categories):
        feed.send(T + i, name="View", properties={"category": category})
    return feed


def test_top_mode_and_last_unique_over_all_time() -> None:
    feed = fed(
        {
            "top2": viewed("top", size=2),
            "top_all": viewed("top"),
            "favourite": viewed("mode"),
            "recent3": viewed("last_unique", size=3),
        },
        CATEGORIES,
    )
    values = feed.values(T + 20)
    # shoes 3, hats 3 (seen last at T+9, so it ranks first of the tie), bags 2, 42 once
    assert values["top2"] == {"hats": 3, "shoes": 3}
    assert list(values["top2"]) == ["hats", "shoes"]
    assert values["top_all"] == {"hats": 3, "shoes": 3, "bags": 2, "42": 1}
    assert values["favourite"] == "hats"
    # newest first, each value once; the number keeps its type
    assert values["recent3"] == ["hats", 42, "shoes"]


def test_without_data_they_read_as_missing_or_their_default() -> None:
    feed = fed(
        {
            "top": viewed("top"),
            "mode": viewed("mode", default="none"),
            "last": viewed("last_unique"),
        },
        [],
    )
    feed.send(T, name="Other")
    assert feed.values(T + 1) == {"top": None, "mode": "none", "last": None}


def test_day_windows_forget_old_values() -> None:
    feed = Feed(
        engine_for(
            {
                "top_week": viewed("top", window="7d"),
                "last_week": viewed("last_unique", window="7d"),
            },
            timezone="Asia/Tokyo",
        )
    )
    for day, hour, category in [
        (1, 10, "old"), (1, 11, "old"), (5, 10, "shoes"), (6, 10, "bags"), (6, 11, "shoes")
    ]:
        feed.send(tokyo(2026, 3, day, hour), name="View", properties={"category": category})
    on_7th = feed.values(tokyo(2026, 3, 7, 12))
    assert on_7th["top_week"] == {"old": 2, "shoes": 2, "bags": 1}
    assert on_7th["last_week"] == ["shoes", "bags", "old"]
    on_8th = feed.values(tokyo(2026, 3, 8, 12))  # day 1 has left the 7-day window
    assert on_8th["top_week"] == {"shoes": 2, "bags": 1}
    assert on_8th["last_week"] == ["shoes", "bags"]


def test_state_stays_bounded_and_frequent_values_are_still_found() -> None:
    stream: list[Any] = []
    for i in range(3000):
        stream.append("popular" if i % 3 == 0 else f"rare-{i}")
    feed = fed({"top": viewed("top", size=3), "last": viewed("last_unique", size=4)}, stream)
    state = feed.state
    assert state is not None
    counted = state.variables["top"][1]
    assert len(counted) <= 20  # `tracked`: max(20, 4 x size)
    assert len(state.variables["last"][1]) == 4
    values = feed.values(T + 5000)
    assert next(iter(values["top"])) == "popular"
    assert values["top"]["popular"] == 1000  # a value always present is counted exactly
    assert values["last"] == ["rare-2999", "rare-2998", "popular", "rare-2996"]
    # the packed state is small whatever the stream's length
    assert len(msgspec.msgpack.encode(state.variables)) < 1500


def test_long_strings_are_kept_cut() -> None:
    feed = fed({"mode": viewed("mode"), "last": viewed("last_unique")}, ["x" * 5000, "x" * 6000])
    values = feed.values(T + 5)
    assert values["mode"] == "x" * 200
    assert values["last"] == ["x" * 200]


def test_merged_profiles_add_their_counts() -> None:
    engine = engine_for({"top": viewed("top"), "last": viewed("last_unique")})
    laptop = Feed(engine)
    phone = Feed(engine)
    for i, category in enumerate(["shoes", "shoes", "bags"]):
        laptop.send(T + i, name="View", properties={"category": category})
    for i, category in enumerate(["bags", "bags", "hats"]):
        phone.send(T + 10 + i, name="View", properties={"category": category})
    assert laptop.state is not None and phone.state is not None
    merged = engine.merge(laptop.state, phone.state)
    view = engine.describe(merged, T + 20)["variables"]
    assert view["top"] == {"bags": 3, "shoes": 2, "hats": 1}
    assert view["last"] == ["hats", "bags", "shoes"]


def test_a_state_decoded_from_msgpack_keeps_counting() -> None:
    """The Redis store hands the engine states decoded from msgpack (lists, not tuples)."""
    feed = fed({"top": viewed("top"), "last": viewed("last_unique")}, ["shoes", "bags"])
    assert feed.state is not None
    feed.state = msgspec.msgpack.decode(msgspec.msgpack.encode(feed.state), type=UserState)
    feed.send(T + 10, name="View", properties={"category": "bags"})
    values = feed.values(T + 11)
    assert values["top"] == {"bags": 2, "shoes": 1}
    assert values["last"] == ["bags", "shoes"]


CAMPAIGN_CONFIG: dict[str, Any] = {
    "variables": {
        "favourite": viewed("mode"),
        "top_categories": viewed("top", size=2),
        "recent": viewed("last_unique", size=2),
    },
    "campaigns": [
        {
            "id": "shoe-fans",
            "status": "published",
            "trigger": {"event": "View", "where": {"var": "top_categories", "contains": "shoes"}},
            "frequency": {"per": "event"},
            "action": {
                "webhook": {
                    "url": "http://127.0.0.1:9/hook",
                    "body": {
                        "favourite": "#{favourite}",
                        "top": "#{top_categories}",
                        "recent": "#{recent}",
                        "text": "likes #{favourite}",
                    },
                }
            },
        }
    ],
}


def test_usable_in_conditions_and_templates() -> None:
    engine = Engine(compile_rules(decode_config(CAMPAIGN_CONFIG)))
    state: UserState | None = None
    bodies: list[Any] = []
    for i, category in enumerate(["bags", "hats", "bags", "shoes"]):
        event = Event(
            type="track", name="View", message_id=f"m{i}", anonymous_id="anon-1",
            properties={"category": category}, timestamp=T + i, received_at=T + i,
        )
        outcome = engine.process(state, event, T + i)
        state = outcome.state
        bodies.append([w.body for w in outcome.webhooks])
    # "shoes" enters the top 2 (bags 2, then the most recent of the ties) with the 4th view only
    assert bodies[:3] == [[], [], []]
    assert bodies[3] == [
        {
            "favourite": "bags",
            "top": {"bags": 2, "shoes": 1},
            "recent": ["shoes", "bags"],
            "text": "likes bags",
        }
    ]


def test_size_is_checked_when_loading() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_rules(decode_config({"variables": {"t": viewed("top", size=0)}}))
    assert "variables.t.size" in str(caught.value)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_both_stores_keep_them(kind: str, request: pytest.FixtureRequest) -> None:
    config = decode_config(CAMPAIGN_CONFIG)
    engine = Engine(compile_rules(config))
    connection: RedisConnection | None = None
    store: Store
    if kind == "memory":
        store = MemoryStore(lambda: engine, config.state, None)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        connection = RedisConnection(server.url)
        store = RedisStore(connection, lambda: engine, config.state)
    now = time.time()
    try:
        for i, category in enumerate(["bags", "shoes", "bags", "hats"]):
            await ingest(store,
                [event("View", anonymous_id="v", properties={"category": category}, at=now + i)],
                now + i,
            )
        view = await store.lookup("v", now + 10)
        assert view is not None
        assert view.profile["variables"] == {
            "favourite": "bags",
            "top_categories": {"bags": 2, "hats": 1},
            "recent": ["hats", "bags"],
        }
    finally:
        if connection is not None:
            await connection.close()


def test_last_unique_keeps_the_latest_received_between_equal_times() -> None:
    feed = Feed(engine_for({"recent2": viewed("last_unique", size=2)}))
    for category in ["shoes", "bags", "hats", "socks"]:  # one batch, one timestamp
        feed.send(T, name="View", properties={"category": category})
    feed.send(T, name="View", properties={"category": "hats"})  # seen again, at the same time

    assert feed.values(T + 1)["recent2"] == ["hats", "socks"]
