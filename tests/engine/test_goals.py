"""Campaign goals and A/B results: who is enrolled in which arm, who converts, counted once per
user in the engine, in both stores, across restarts and across processes; shown by the admin
API, Prometheus and replay."""

from __future__ import annotations

import json
import random
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.goals import Tick
from collector.engine.profile import UserState
from collector.engine.results import CONTROL, report
from collector.errors import ConfigError
from collector.events import Event
from collector.memory.store import MemoryStore
from collector.redis.connection import RedisConnection
from collector.redis.store import RedisStore
from collector.store.base import Store
from collector.store.pipeline import ingest
from collector.tools.replay import run_replay
from tests.support.poll import wait_until
from tests.support.redis import RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire

T = 1_780_000_000.0
HOOK = "http://127.0.0.1:9/hook"


def ab_campaign(**extra: Any) -> dict[str, Any]:
    campaign: dict[str, Any] = {
        "id": "offer",
        "status": "published",
        "trigger": {"event": "Added to Cart"},
        "frequency": {"per": "user", "max_total": 1},
        "variants": [
            {"id": "coupon", "rate": 40, "action": {"webhook": {"url": HOOK}}},
            {"id": "banner", "rate": 40, "action": {"webhook": {"url": HOOK}}},
        ],
        "goal": {
            "event": "Order Completed",
            "within": "1d",
            "value": "properties.revenue",
            "where": {"prop": "status", "ne": "test"},
        },
    }
    campaign.update(extra)
    return campaign


def config_with(*campaigns: dict[str, Any]) -> dict[str, Any]:
    return {"write_keys": ["test-key"], "campaigns": list(campaigns)}


def track(name: str, user: str, at: float, **properties: Any) -> Event:
    return Event(
        type="track", name=name, message_id=uuid.uuid4().hex, anonymous_id=user,
        properties=properties, timestamp=at, received_at=at,
    )


class Person:
    """One user's events through an engine, with the ticks they produced."""

    def __init__(self, engine: Engine, user: str) -> None:
        self.engine = engine
        self.user = user
        self.state: UserState | None = None
        self.ticks: list[Tick] = []

    def send(self, name: str, at: float, **properties: Any) -> None:
        outcome = self.engine.process(self.state, track(name, self.user, at, **properties), at)
        self.state = outcome.state
        self.ticks.extend(outcome.ticks)


def test_a_user_is_enrolled_once_and_converts_once_in_the_window() -> None:
    engine = Engine(compile_rules(decode_config(config_with(ab_campaign()))))
    person = Person(engine, "shopper")
    person.send("Order Completed", T, revenue=99)  # before any assignment: not counted
    person.send("Added to Cart", T + 10)
    person.send("Added to Cart", T + 20)  # capped (max_total 1), still the same enrolment
    person.send("Order Completed", T + 30, revenue=30, status="test")  # the goal's where says no
    person.send("Order Completed", T + 40, revenue=25)
    person.send("Order Completed", T + 50, revenue="15.5")  # value adds up, converts no more
    person.send("Order Completed", T + 10 + 86400 + 1, revenue=1000)  # past the 1-day window
    assert person.state is not None and person.state.goals is not None
    arm = person.state.goals["offer"].arm
    assert [(t.arm, t.assigned, t.converted, t.value) for t in person.ticks] == [
        (arm, 1, 0, 0.0),
        (arm, 0, 1, 25.0),
        (arm, 0, 0, 15.5),
    ]
    view = engine.describe(person.state, T + 60)
    assert view["goals"]["offer"]["converted"] is True
    assert view["goals"]["offer"]["assigned_at"] == T + 10


def test_the_control_group_and_capped_users_are_enrolled_but_the_untriggered_are_not() -> None:
    campaign = ab_campaign(
        trigger={"event": "Added to Cart", "where": {"prop": "price", "gt": 10}}
    )
    engine = Engine(compile_rules(decode_config(config_with(campaign))))
    arms: dict[str, int] = {}
    for n in range(400):
        person = Person(engine, f"u{n}")
        person.send("Added to Cart", T, price=5)  # the trigger's where is false: no arm yet
        assert person.ticks == []
        person.send("Added to Cart", T + 1, price=50)
        person.send("Added to Cart", T + 2, price=50)
        assert [t.assigned for t in person.ticks] == [1]
        arms[person.ticks[0].arm] = arms.get(person.ticks[0].arm, 0) + 1
    assert set(arms) == {"coupon", "banner", CONTROL}
    assert 40 < arms[CONTROL] < 120  # about 20 % of 400


def test_an_enrolment_and_a_goal_on_the_same_event_do_not_count_as_a_conversion() -> None:
    campaign = ab_campaign(trigger={"event": "Order Completed"})
    engine = Engine(compile_rules(decode_config(config_with(campaign))))
    person = Person(engine, "fast")
    person.send("Order Completed", T, revenue=10)
    person.send("Order Completed", T + 5, revenue=20)
    assert [(t.assigned, t.converted, t.value) for t in person.ticks] == [
        (1, 0, 0.0),
        (0, 1, 20.0),
    ]


def test_a_bad_goal_is_a_load_error_with_its_path() -> None:
    campaign = ab_campaign(goal={"event": "Order Completed", "value": "revenue"})
    with pytest.raises(ConfigError) as caught:
        compile_rules(decode_config(config_with(campaign)))
    assert "campaigns[0].goal.value: unknown field 'revenue'" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        decode_config(config_with(ab_campaign(goal={"event": "X", "within": "soon"})))
    assert "campaigns[0].goal.within" in str(caught.value)


async def test_a_simulated_experiment_through_the_store_gives_the_known_answer() -> None:
    """2,000 visitors; the coupon arm truly converts at 30 %, the banner and control at 10 %."""
    config = decode_config(config_with(ab_campaign()))
    engine = Engine(compile_rules(config))
    store = MemoryStore(lambda: engine, config.state, None)
    rng = random.Random(14)
    true_rate = {"coupon": 0.30, "banner": 0.10, CONTROL: 0.10}
    for n in range(2000):
        user = f"visitor-{n}"
        await ingest(store, [track("Added to Cart", user, T + n)], T + n)
        state = await store.user_state(user)
        assert state is not None and state.goals is not None
        if rng.random() < true_rate[state.goals["offer"].arm]:
            order = track("Order Completed", user, T + n + 60, revenue=50)
            await ingest(store, [order], T + n + 60)
    counts = (await store.results(["offer"]))["offer"]
    assert sum(c.assigned for c in counts.values()) == 2000
    shown = {arm["arm"]: arm for arm in report(config.campaigns[0], counts)["arms"]}
    assert [shown[a]["label"] for a in ("coupon", "banner", "control")] == [
        "win", "no_difference", None,
    ]
    assert shown["coupon"]["value_per_user"] == pytest.approx(
        50 * shown["coupon"]["converted"] / shown["coupon"]["assigned"]
    )


# -- real servers ------------------------------------------------------------------------


def send(server: Tripwire, *events: dict[str, Any]) -> None:
    response = server.post("/v1/batch", {"writeKey": "test-key", "batch": list(events)})
    assert response.status_code == 200, response.text


def message(name: str, user: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "track", "event": name, "anonymousId": user, "messageId": uuid.uuid4().hex,
        "properties": properties,
    }


def results(server: Tripwire, campaign: str = "offer") -> dict[str, Any]:
    response = server.admin_get(f"/admin/api/campaigns/{campaign}/results")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def totals(found: dict[str, Any]) -> tuple[int, int, float]:
    arms = found["arms"]
    return (
        sum(a["assigned"] for a in arms),
        sum(a["converted"] for a in arms),
        sum(a["value"] for a in arms),
    )


def test_memory_mode_counts_once_across_a_kill_and_restart(tmp_path: Path) -> None:
    config = config_with(ab_campaign())
    data = tmp_path / "data"
    order = message("Order Completed", "returning", revenue=40)
    with run_tripwire(config, data_dir=data) as server:
        send(server, message("Added to Cart", "returning"), message("Added to Cart", "other"))
        send(server, order)
        assert totals(results(server)) == (2, 1, 40.0)
        server.process.kill()  # kill -9: what was answered 200 is on disk already
        server.process.wait()
    with run_tripwire(config, data_dir=data) as server:
        assert totals(results(server)) == (2, 1, 40.0)
        send(server, order)  # the same message again: a duplicate, ignored
        send(server, message("Added to Cart", "returning"))  # enrolled already
        send(server, message("Order Completed", "returning", revenue=2))  # value, no conversion
        found = results(server)
        assert totals(found) == (2, 1, 42.0)
        user = server.user("returning")
        assert user is not None
        assert user["profile"]["goals"]["offer"]["converted"] is True
        assert found["goal"]["event"] == "Order Completed"
        assert found["minimum_sample"] == 100
        assert [a["arm"] for a in found["arms"]] == ["coupon", "banner", "control"]
        arm = user["profile"]["goals"]["offer"]["arm"]
        mine = next(a for a in found["arms"] if a["arm"] == arm)
        assert (mine["assigned"], mine["converted"]) >= (1, 1)
        assert mine["label"] in ("collecting", None)


def test_two_redis_processes_count_each_user_once(redis_server: RedisServer) -> None:
    """Two `tripwire serve` processes share a Redis; each user's events hit both at once."""
    config = config_with(ab_campaign(frequency={"per": "event"}))
    args = ["--store", redis_server.url]
    users = [f"shopper-{n}" for n in range(40)]
    with run_tripwire(config, args=args) as first, run_tripwire(config, args=args) as second:
        servers = (first, second)

        def storm(server: Tripwire) -> None:
            # every user: carts and orders (each sent to both processes, concurrently)
            for user in users:
                send(server, message("Added to Cart", user))
                send(server, message("Order Completed", user, revenue=10))
                send(
                    server,
                    message("Order Completed", user, revenue=10),
                    message("Added to Cart", user),
                )

        threads = [threading.Thread(target=storm, args=(s,)) for s in servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        found = [results(server) for server in servers]
        assert found[0] == found[1]
        assigned, converted, value = totals(found[0])
        assert assigned == len(users)
        # a user converts once, whichever process saw the order first; every order's value adds
        converted_users = 0
        for user in users:
            profile = first.user(user)
            assert profile is not None
            enrolment = profile["profile"]["goals"]["offer"]
            converted_users += enrolment["converted"]
        assert converted == converted_users
        # orders that came after the user's enrolment count their value (at most 4 per user)
        assert 0 < value <= 40 * len(users)
        assert value % 10 == 0
        # the hourly chart adds both processes' decisions up (each adds its own every 10 s),
        # as the campaign's statistics do (every process's, shared through Redis)
        def agreed() -> bool:
            fired = [s.admin_get("/admin/api/campaigns/offer").json()["stats"]["fired"]
                     for s in servers]
            return fired[0] == fired[1] == charted_fired(first) == charted_fired(second) > 0

        wait_until(agreed, timeout=30, message="the hourly chart and the statistics to agree")
        # Prometheus, with a label per variant
        by_arm = {a["arm"]: a for a in found[0]["arms"]}
        for arm, shown in by_arm.items():
            assert first.metric(
                "tripwire_campaign_assigned_users", campaign="offer", variant=arm
            ) == shown["assigned"]
            assert second.metric(
                "tripwire_campaign_converted_users", campaign="offer", variant=arm
            ) == shown["converted"]


def charted_fired(server: Tripwire) -> int:
    """Fired decisions of `offer` in the last 24 hours, as its dashboard chart shows them."""
    with httpx.Client(base_url=server.url, trust_env=False) as browser:
        browser.get("/admin/login", params={"token": ADMIN_TOKEN}, follow_redirects=True)
        page = browser.get("/admin/campaigns/offer").text
    chart = page[page.index('<svg class="chart hourly"') :]
    return sum(int(n) for n in re.findall(r'data-fired="(\d+)"', chart[: chart.index("</svg>")]))


def test_replay_reports_the_results_of_a_backtest(tmp_path: Path) -> None:
    config_file = tmp_path / "tripwire.json"
    config_file.write_text(json.dumps(config_with(ab_campaign())))
    rng = random.Random(3)
    lines = []
    for n in range(300):
        at = T + n * 10
        lines.append(dict(message("Added to Cart", f"v{n}"), timestamp=at))
        if rng.random() < 0.5:
            lines.append(dict(message("Order Completed", f"v{n}", revenue=20), timestamp=at + 5))
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = _Capture()
    assert run_replay(str(events), decode_config(json.loads(config_file.read_text())),
                      as_json=True, out=out) == 0
    found = json.loads(out.text)["results"]["offer"]
    assert sum(a["assigned"] for a in found["arms"]) == 300
    assert sum(a["value"] for a in found["arms"]) == 20 * sum(a["converted"] for a in found["arms"])
    table = _Capture()
    run_replay(str(events), decode_config(json.loads(config_file.read_text())), as_json=False,
               out=table)
    assert "results of offer (goal: Order Completed within 1d)" in table.text
    assert "control" in table.text and "95% interval" in table.text


class _Capture:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)


def test_results_of_an_unknown_campaign_are_404_and_without_goal_empty(tmp_path: Path) -> None:
    plain = {"id": "plain", "status": "published", "action": {"webhook": {"url": HOOK}}}
    with run_tripwire(config_with(ab_campaign(), plain), data_dir=tmp_path / "d") as server:
        assert server.admin_get("/admin/api/campaigns/nope/results").status_code == 404
        found = results(server, "plain")
        assert found["goal"] is None
        assert [(a["arm"], a["assigned"]) for a in found["arms"]] == [
            ("treatment", 0), ("control", 0),
        ]


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
async def test_every_store_counts_the_same_results(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The same events give the same counts in memory, on one Redis and on a Redis Cluster
    (where each shard counts its own users and the reads add the shards up)."""
    config = decode_config(config_with(ab_campaign()))
    engine = Engine(compile_rules(config))
    connection: RedisConnection | None = None
    store: Store
    if kind == "memory":
        store = MemoryStore(lambda: engine, config.state, None)
    else:
        servers = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
        connection = RedisConnection(servers.url)
        store = RedisStore(connection, lambda: engine, config.state)
    try:
        for n in range(60):
            user = f"u{n}"
            events = [track("Added to Cart", user, T + n)]
            if n % 3 == 0:
                events.append(track("Order Completed", user, T + n + 1, revenue=n))
            await ingest(store, events, T + n + 1)
        counts = (await store.results(["offer"]))["offer"]
        assert sum(c.assigned for c in counts.values()) == 60
        assert sum(c.converted for c in counts.values()) == 20
        assert sum(c.value for c in counts.values()) == sum(range(0, 60, 3))
        per_arm: dict[str, int] = {}
        for n in range(60):
            state = await store.user_state(f"u{n}")
            assert state is not None and state.goals is not None
            arm = state.goals["offer"].arm
            per_arm[arm] = per_arm.get(arm, 0) + 1
        assert {arm: c.assigned for arm, c in counts.items()} == per_arm
    finally:
        if connection is not None:
            await connection.close()
