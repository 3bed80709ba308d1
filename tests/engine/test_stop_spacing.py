"""Stop conditions (deliveries in total or per day, across every user) and project-wide spacing."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.profile import Tally
from collector.errors import ConfigError
from collector.events import Event
from collector.memory.disk import Disk
from collector.memory.store import MemoryStore
from collector.redis.connection import RedisConnection
from collector.redis.store import RedisStore
from collector.store.base import Store
from collector.store.pipeline import ingest
from tests.engine.test_campaigns import HOOK, T, User, campaign, engine_for, tokyo
from tests.support.poll import wait_until
from tests.support.redis import RedisServer
from tests.support.server import run_tripwire
from tests.support.sink import Sink


def fire(engine: Engine, user: str, deliveries: dict[str, Tally], t: float = T) -> dict[str, str]:
    """One Clicked event of `user`; each campaign's outcome ("fired" or the reason)."""
    event = Event(
        type="track", name="Clicked", message_id=uuid.uuid4().hex, anonymous_id=user,
        timestamp=t, received_at=t,
    )
    outcome = engine.process(None, event, t, deliveries=deliveries)
    return {d.campaign_id: d.reason or "fired" for d in outcome.decisions}


# -- stop conditions in the engine -----------------------------------------------------------


def test_a_campaign_stops_after_its_total_deliveries_across_users() -> None:
    engine = engine_for(campaign(stop={"max_deliveries": 3}))
    deliveries: dict[str, Tally] = {}
    got = [fire(engine, f"u{i}", deliveries)["c"] for i in range(5)]
    assert got == ["fired"] * 3 + ["max_deliveries"] * 2
    assert engine.stopped(deliveries, T) == {"c": "max_deliveries"}


def test_a_daily_stop_resumes_on_the_next_local_day() -> None:
    engine = engine_for(campaign(stop={"max_deliveries_per_day": 2}))  # Asia/Tokyo
    deliveries: dict[str, Tally] = {}
    late = tokyo(2026, 12, 2, 23, 59)
    got = [fire(engine, f"u{i}", deliveries, late)["c"] for i in range(3)]
    assert got == ["fired", "fired", "max_deliveries_per_day"]
    assert engine.stopped(deliveries, late) == {"c": "max_deliveries_per_day"}
    # 00:01 in Tokyo is still the same UTC day, but a new day for the campaign
    next_day = tokyo(2026, 12, 3, 0, 1)
    assert engine.stopped(deliveries, next_day) == {}
    assert fire(engine, "u9", deliveries, next_day)["c"] == "fired"


def test_stop_conditions_are_ored() -> None:
    engine = engine_for(campaign(stop={"max_deliveries": 3, "max_deliveries_per_day": 2}))
    deliveries: dict[str, Tally] = {}
    day1 = [fire(engine, f"a{i}", deliveries)["c"] for i in range(3)]
    day2 = [fire(engine, f"b{i}", deliveries, T + 86400)["c"] for i in range(2)]
    assert day1 == ["fired", "fired", "max_deliveries_per_day"]
    assert day2 == ["fired", "max_deliveries"]


def test_suppressed_deliveries_do_not_count_towards_a_stop() -> None:
    stopping = campaign(stop={"max_deliveries": 2}, frequency={"per": "user", "max_total": 1})
    engine = engine_for(stopping)
    deliveries: dict[str, Tally] = {}
    user = User(engine)
    first = engine.process(user.state, _click(user), T, deliveries=deliveries)
    again = engine.process(first.state, _click(user), T, deliveries=deliveries)
    assert [d.reason for d in again.decisions] == ["frequency"]
    assert deliveries["c"].total == 1
    assert fire(engine, "another", deliveries)["c"] == "fired"
    assert fire(engine, "a third", deliveries)["c"] == "max_deliveries"


def _click(user: User) -> Event:
    user.n += 1
    return Event(
        type="track", name="Clicked", message_id=f"m{user.n}", anonymous_id=user.anonymous_id,
        timestamp=T, received_at=T,
    )


def test_stop_conditions_must_be_positive() -> None:
    with pytest.raises(ConfigError) as caught:
        decode_config({"campaigns": [campaign(stop={"max_deliveries": 0})]})
    assert "campaigns[0].stop.max_deliveries" in str(caught.value)


# -- stop conditions in the stores -----------------------------------------------------------

STOP_CONFIG: dict[str, Any] = {
    "campaigns": [
        {
            "id": "limited",
            "status": "published",
            "trigger": {"event": "Clicked"},
            "stop": {"max_deliveries": 25, "max_deliveries_per_day": 40},
            "action": {"webhook": {"url": "http://127.0.0.1:9/hook"}},
        }
    ]
}


def click(user: str) -> Event:
    now = time.time()
    return Event(
        type="track", name="Clicked", message_id=uuid.uuid4().hex, anonymous_id=user,
        timestamp=now, received_at=now,
    )


async def test_two_redis_stores_share_a_stop_condition_exactly(redis_server: RedisServer) -> None:
    engine = Engine(compile_rules(decode_config(STOP_CONFIG)))
    config = decode_config(STOP_CONFIG)
    connections = [RedisConnection(redis_server.url) for _ in range(2)]
    stores = [RedisStore(c, lambda: engine, config.state) for c in connections]
    try:
        results = await asyncio.gather(
            *(ingest(stores[i % 2], [click(f"user-{i}")], time.time()) for i in range(120))
        )
        fired = sum(len(r.webhooks) for r in results)
        reasons = {d.reason for r in results for d in r.decisions}
        assert fired == 25
        assert reasons == {None, "max_deliveries"}
        for store in stores:
            assert await store.stopped(time.time()) == {"limited": "max_deliveries"}
        view = await stores[1].lookup("user-0", time.time())
        assert view is not None
        assert view.profile["stopped"] == {"limited": "max_deliveries"}
    finally:
        for connection in connections:
            await connection.close()


async def test_a_memory_store_keeps_its_stop_tallies_across_a_restart(tmp_path: Any) -> None:
    config = decode_config(STOP_CONFIG)
    engine = Engine(compile_rules(config))
    disk = Disk(tmp_path)
    disk.open()
    store: Store = MemoryStore(lambda: engine, config.state, disk)
    await store.open()
    for i in range(20):
        await ingest(store, [click(f"m-{i}")], time.time())
        await disk.commit()
    # no close: as if killed
    disk = Disk(tmp_path)
    disk.open()
    store = MemoryStore(lambda: engine, config.state, disk)
    await store.open()
    fired = [len((await ingest(store, [click(f"n-{i}")], time.time())).webhooks) for i in range(10)]
    assert sum(fired) == 5
    assert await store.stopped(time.time()) == {"limited": "max_deliveries"}


def test_two_serve_processes_stop_a_campaign_together() -> None:
    with RedisServer() as redis, Sink() as sink:
        cfg = {
            "write_keys": ["k"],
            "webhooks": {"allow_private_networks": True},
            "campaigns": [
                {
                    "id": "daily",
                    "status": "published",
                    "trigger": {"event": "Clicked"},
                    "stop": {"max_deliveries_per_day": 7},
                    "action": {"webhook": {"url": f"{sink.url}/hook"}},
                }
            ],
        }
        args = ["--store", redis.url]
        with run_tripwire(cfg, args=args) as one, run_tripwire(cfg, args=args) as two:
            for i in range(30):
                server = (one, two)[i % 2]
                message = {
                    "writeKey": "k", "type": "track", "event": "Clicked",
                    "anonymousId": f"visitor-{i}", "messageId": uuid.uuid4().hex,
                }
                assert server.post("/v1/track", message).status_code == 200
            sink.wait_for(7)
            listed = one.admin_get("/admin/api/campaigns").json()["campaigns"]
            assert listed[0]["stopped"] == "max_deliveries_per_day"
            page = two.client.get("/admin/", headers={"Authorization": "Bearer test-admin-token"})
            assert "stopped: max_deliveries_per_day" in page.text
            lookup = two.user("visitor-29")
            assert lookup is not None
            assert lookup["profile"]["stopped"] == {"daily": "max_deliveries_per_day"}
            assert lookup["profile"]["decisions"]["daily"]["reason"] == "max_deliveries_per_day"
            wait_until(lambda: len(sink.requests) >= 7)
            assert len(sink.requests) == 7


# -- spacing -------------------------------------------------------------------------------


def spaced_engine(**spacing: Any) -> Engine:
    return engine_for(
        campaign("a", trigger={"event": "Clicked"}),
        campaign("b", trigger={"event": "Clicked"}),
        campaign("free", trigger={"event": "Clicked"}, spacing=False),
        spacing=spacing,
    )


def test_spacing_lets_one_campaign_fire_per_event_and_period() -> None:
    user = User(spaced_engine(seconds=600))
    assert user.reasons() == {"a": "fired", "b": "spacing", "free": "fired"}
    assert user.reasons(t=T + 599) == {"a": "spacing", "b": "spacing", "free": "fired"}
    assert user.reasons(t=T + 600)["a"] == "fired"


def test_spacing_by_page_views_counts_views_since_the_last_spaced_campaign() -> None:
    user = User(spaced_engine(page_views=2))
    assert user.reasons()["a"] == "fired"
    user.send("page", kind="page")
    assert user.reasons()["a"] == "spacing"
    user.send("page", kind="page")
    assert user.reasons() == {"a": "fired", "b": "spacing", "free": "fired"}


def test_spacing_with_seconds_and_page_views_needs_both() -> None:
    user = User(spaced_engine(seconds=60, page_views=1))
    assert user.reasons()["a"] == "fired"
    assert user.reasons(t=T + 120)["a"] == "spacing"  # no page view yet
    user.send("page", t=T + 121, kind="page")
    assert user.reasons(t=T + 122)["a"] == "fired"
    user.send("page", t=T + 130, kind="page")
    assert user.reasons(t=T + 131)["a"] == "spacing"  # a page view, but too soon


def test_opted_out_campaigns_do_not_restart_spacing() -> None:
    engine = engine_for(
        campaign("free", trigger={"event": "Clicked"}, spacing=False),
        campaign("later", trigger={"event": "Later"}),
        spacing={"seconds": 600},
    )
    user = User(engine)
    assert user.reasons() == {"free": "fired"}
    assert user.reasons("Later") == {"later": "fired"}
    assert user.state is not None
    assert engine.describe(user.state, T)["spacing"]["last_fired_at"] == T


def test_without_spacing_campaigns_are_independent() -> None:
    user = User(spaced_engine())
    assert user.reasons() == {"a": "fired", "b": "fired", "free": "fired"}


async def test_spacing_holds_for_concurrent_requests_of_one_user(
    redis_server: RedisServer,
) -> None:
    raw = {
        "spacing": {"seconds": 3600},
        "campaigns": [
            {"id": f"c{i}", "status": "published", "trigger": {"event": "Clicked"},
             "action": HOOK}
            for i in range(3)
        ],
    }
    config = decode_config(raw)
    engine = Engine(compile_rules(config))
    connections = [RedisConnection(redis_server.url) for _ in range(2)]
    stores = [RedisStore(c, lambda: engine, config.state) for c in connections]
    try:
        results = await asyncio.gather(
            *(ingest(stores[i % 2], [click("one-user")], time.time()) for i in range(60))
        )
        assert sum(len(r.webhooks) for r in results) == 1
    finally:
        for connection in connections:
            await connection.close()
