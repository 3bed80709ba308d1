"""Absence triggers: a campaign fires when a wait passes without the `unless` event.

The engine arms and cancels timers in the user's state and decides them when the store's
scheduler says they are due; the stores keep them durable and fire each once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from collector.cli import main as cli_main
from collector.config.settings import decode_config
from collector.engine.engine import Engine, Outcome, compile_rules
from collector.errors import ConfigError
from collector.events import Event
from collector.memory.store import MemoryStore
from collector.redis.connection import RedisConnection, evalsha
from collector.redis.scripts import CLAIM_TIMERS
from collector.redis.store import TIMER_LEASE, RedisStore
from collector.store.base import Store
from collector.store.pipeline import ingest
from tests.engine.test_campaigns import T, User, engine_for
from tests.support.poll import wait_until
from tests.support.redis import RedisClusterServers, RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink

WAIT = 1800.0
BODY = {"product": "#{properties.name}", "plan": "#{traits.plan|free}", "event": "#{event_id}"}


def abandoned(**fields: Any) -> dict[str, Any]:
    """A cart-abandonment campaign: 30 minutes after Added to Cart, unless an order came."""
    return {
        "id": "abandoned",
        "status": "published",
        "trigger": {
            "after": "Added to Cart", "wait": "30m", "unless": {"event": "Order Completed"}
        },
        "action": {"webhook": {"url": "https://hooks.example/abandoned", "body": BODY}},
        **fields,
    }


def due(user: User, now: float) -> Outcome:
    assert user.state is not None
    return user.engine.fire_due(user.state, now)


def test_fires_when_the_wait_passes_without_the_unless_event() -> None:
    user = User(engine_for(abandoned()))
    armed = user.send("Added to Cart", properties={"name": "Grinder"})
    assert armed.webhooks == [] and armed.decisions == []
    assert due(user, T + WAIT - 1).webhooks == []
    fired = due(user, T + WAIT)
    (webhook,) = fired.webhooks
    assert webhook.campaign_id == "abandoned"
    assert webhook.body == {"product": "Grinder", "plan": "free", "event": "anon-1-1"}
    assert [(d.campaign_id, d.reason) for d in fired.decisions] == [("abandoned", None)]
    assert due(user, T + 2 * WAIT).webhooks == []  # once


def test_the_unless_event_cancels_the_wait() -> None:
    user = User(engine_for(abandoned()))
    user.send("Added to Cart", properties={"name": "Grinder"})
    user.send("Order Completed", t=T + 60)
    assert user.state is not None and user.state.timers is None
    assert due(user, T + WAIT).webhooks == []


def test_where_filters_both_the_after_and_the_unless_event() -> None:
    campaign = abandoned(
        trigger={
            "after": "Added to Cart",
            "where": {"prop": "price", "gte": 100},
            "wait": "30m",
            "unless": {"event": "Order Completed", "where": {"prop": "status", "eq": "paid"}},
        }
    )
    user = User(engine_for(campaign))
    user.send("Added to Cart", properties={"price": 20})
    assert user.state is not None and user.state.timers is None
    user.send("Added to Cart", properties={"price": 150, "name": "Grinder"})
    user.send("Order Completed", t=T + 10, properties={"status": "failed"})  # does not cancel
    assert len(due(user, T + WAIT).webhooks) == 1


def test_a_new_after_event_restarts_the_wait() -> None:
    user = User(engine_for(abandoned()))
    user.send("Added to Cart", properties={"name": "Mug"})
    user.send("Added to Cart", t=T + 600, properties={"name": "Grinder"})
    assert due(user, T + WAIT).webhooks == []
    (webhook,) = due(user, T + 600 + WAIT).webhooks
    assert webhook.body["product"] == "Grinder"


def test_the_campaign_is_decided_on_the_state_at_firing_time() -> None:
    engine = engine_for(abandoned(target={"segments": ["pro"]}))
    became_pro = User(engine, "a")
    became_pro.send("Added to Cart", properties={"name": "Grinder"})
    became_pro.send("identify", t=T + 60, kind="identify", traits={"plan": "pro"})
    (webhook,) = due(became_pro, T + WAIT).webhooks
    assert webhook.body["plan"] == "pro"

    left = User(engine, "b")
    left.send("identify", kind="identify", traits={"plan": "pro"})
    left.send("Added to Cart", properties={"name": "Grinder"})
    left.send("identify", t=T + 60, kind="identify", traits={"plan": "free"})
    outcome = due(left, T + WAIT)
    assert outcome.webhooks == []
    assert [d.reason for d in outcome.decisions] == ["not_in_segment"]


def test_timers_are_bounded_per_user_and_shown_in_the_lookup() -> None:
    campaigns = [
        abandoned(id=f"wait-{i}", trigger={"after": "Added to Cart", "wait": f"{i + 1}m"})
        for i in range(3)
    ]
    engine = engine_for(*campaigns, state={"max_timers": 2})
    user = User(engine)
    user.send("Added to Cart")
    assert user.state is not None
    timers = engine.describe(user.state, T)["timers"]
    assert len(timers) == 2
    assert all(t["event_id"] == "anon-1-1" and t["armed_at"] == T for t in timers)
    assert sorted(t["due"] for t in timers) == [T + 60 * n for n in sorted(
        int(t["campaign_id"][-1]) + 1 for t in timers)]


def test_a_wait_keeps_the_after_events_properties_only_within_the_byte_budget() -> None:
    body = {"p": "#{properties.name|?}"}
    fallback = {"webhook": {"url": "https://hooks.example/a", "body": body}}
    engine = engine_for(abandoned(action=fallback), state={"recent_event_bytes": 256})
    user = User(engine)
    user.send("Added to Cart", properties={"name": "Grinder", "notes": "x" * 300})
    (webhook,) = due(user, T + WAIT).webhooks
    assert webhook.body == {"p": "?"}


def test_a_paused_campaign_arms_no_timer() -> None:
    user = User(engine_for(abandoned(status="paused")))
    user.send("Added to Cart")
    assert user.state is not None and user.state.timers is None


@pytest.mark.parametrize(
    ("trigger", "problem"),
    [
        ({"after": "Added to Cart"}, "campaigns[0].trigger.wait: required"),
        ({"event": "x", "wait": "5m"}, "campaigns[0].trigger.wait: only an 'after' trigger"),
        ({"after": "a", "event": "b", "wait": "1m"}, "give exactly one of"),
        ({"after": "a", "wait": "1m", "unless": {"event": "b", "where": {"var": "nope", "eq": 1}}},
         "campaigns[0].trigger.unless.where.var: unknown variable 'nope'"),
    ],
)
def test_absence_triggers_are_checked(trigger: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        decode_config({"campaigns": [abandoned(trigger=trigger)]})
    assert problem in str(caught.value)


# -- the stores: durable, fired once ---------------------------------------------------------

HOOK_URL = "http://127.0.0.1:9/hook"
STORE_CONFIG: dict[str, Any] = {
    "campaigns": [
        {
            "id": "abandoned",
            "status": "published",
            "trigger": {"after": "Added to Cart", "wait": "30s", "unless": {"event": "Bought"}},
            "action": {"webhook": {"url": HOOK_URL, "body": {"v": "#{visitor_id}"}}},
        }
    ]
}


def event(name: str, user: str, at: float) -> Event:
    return Event(
        type="track", name=name, message_id=uuid.uuid4().hex, anonymous_id=user,
        timestamp=at, received_at=at,
    )


class Stores:
    """Stores of one kind sharing one backend (two Redis stores play two processes)."""

    def __init__(self, url: str | None) -> None:
        self.config = decode_config(STORE_CONFIG)
        self.engine = Engine(compile_rules(self.config))
        self.url = url
        self.connections: list[RedisConnection] = []
        self.memory: MemoryStore | None = None

    async def make(self) -> Store:
        if self.url is None:
            if self.memory is None:
                self.memory = MemoryStore(lambda: self.engine, self.config.state, None)
            return self.memory
        connection = RedisConnection(self.url)
        self.connections.append(connection)
        return RedisStore(connection, lambda: self.engine, self.config.state)

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def stores(request: pytest.FixtureRequest) -> Any:
    url = None
    if request.param != "memory":
        name = "redis_server" if request.param == "redis" else "redis_cluster"
        server: RedisServer | RedisClusterServers = request.getfixturevalue(name)
        url = server.url
    made = Stores(url)
    yield made
    await made.close()


async def test_a_store_fires_a_due_timer_once(stores: Stores) -> None:
    one, two = await stores.make(), await stores.make()
    now = time.time()
    users = [f"cart-{i}" for i in range(20)]
    await ingest(one, [event("Added to Cart", u, now - 100) for u in users], now)
    await ingest(one, [event("Bought", "cart-0", now - 90)], now)
    await ingest(one, [event("Added to Cart", "later", now)], now)  # due in 30 s
    view = await two.lookup("later", now)
    assert view is not None and [t["campaign_id"] for t in view.profile["timers"]] == ["abandoned"]
    results = await asyncio.gather(*(s.fire_due(time.time()) for s in (one, two, one, two)))
    fired = sorted(w.body["v"] for r in results for w in r.webhooks)
    assert fired == sorted(users[1:])
    again = await asyncio.gather(one.fire_due(time.time()), two.fire_due(time.time()))
    assert [r.webhooks for r in again] == [[], []]
    gone = await two.lookup("cart-5", time.time())
    assert gone is not None and gone.profile["timers"] == []
    assert gone.profile["decisions"]["abandoned"]["outcome"] == "fired"


async def test_a_claimed_timer_whose_process_died_fires_after_the_lease(
    redis_server: RedisServer,
) -> None:
    made = Stores(redis_server.url)
    try:
        dying, survivor = await made.make(), await made.make()
        now = time.time()
        await ingest(dying, [event("Added to Cart", "u", now - 100)], now)
        # the dying process claims the timer, then never commits
        connection = made.connections[0]
        keys = await connection.names()
        claim = evalsha(CLAIM_TIMERS, [keys.timers(0)], [now, TIMER_LEASE, 10])
        assert await connection.pipeline([claim], "claiming") == [[b"a:u"]]  # its profile key
        assert (await survivor.fire_due(now + 1)).webhooks == []
        result = await survivor.fire_due(now + TIMER_LEASE + 0.1)
        assert [w.body["v"] for w in result.webhooks] == ["u"]
    finally:
        await made.close()


# -- real processes and a real SIGKILL -------------------------------------------------------


def serve_config(sink: Sink, wait: str) -> dict[str, Any]:
    return {
        "write_keys": ["k"],
        "webhooks": {"allow_private_networks": True},
        "campaigns": [
            {
                "id": "abandoned",
                "status": "published",
                "trigger": {"after": "Added to Cart", "wait": wait,
                            "unless": {"event": "Order Completed"}},
                "action": {"webhook": {"url": f"{sink.url}/abandoned",
                                       "body": {"v": "#{visitor_id}"}}},
            }
        ],
    }


def cart(user: str, name: str = "Added to Cart") -> dict[str, Any]:
    return {"writeKey": "k", "type": "track", "event": name, "anonymousId": user,
            "messageId": uuid.uuid4().hex}


def arm_and_kill(server: Tripwire) -> float:
    """Arm a wait for `left-alone` (and one `bought` cancels), then SIGKILL the server."""
    armed_at = time.time()
    for user in ("left-alone", "bought"):
        assert server.post("/v1/track", cart(user)).status_code == 200
    assert server.post("/v1/track", cart("bought", "Order Completed")).status_code == 200
    lookup = server.user("left-alone")
    assert lookup is not None and len(lookup["profile"]["timers"]) == 1
    page = server.client.get(
        "/admin/users?id=left-alone", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert "pending timers" in page.text and "abandoned due" in page.text
    server.process.kill()  # SIGKILL, before the wait is over
    server.process.wait()
    return armed_at


def fired_once_more(server: Tripwire, sink: Sink, fired_at: float) -> None:
    """A later wait fires; the killed one did not fire again (its decision is the stored one).

    (A delivery cut by the kill may be sent again, with the same webhook-id: that is the
    outbox's at-least-once, not a second firing.)
    """
    assert server.post("/v1/track", cart("later")).status_code == 200
    sink.wait_until(lambda requests: any(r.json()["v"] == "later" for r in requests))
    assert {r.json()["v"] for r in sink.requests} == {"later", "left-alone"}
    lookup = server.user("left-alone")
    assert lookup is not None and lookup["profile"]["timers"] == []
    assert lookup["profile"]["decisions"]["abandoned"]["at"] == fired_at


def fired_at(server: Tripwire) -> float:
    """When the `left-alone` wait fired, as its profile says; it has no wait left."""
    lookup = server.user("left-alone")
    assert lookup is not None and lookup["profile"]["timers"] == []
    decision = lookup["profile"]["decisions"]["abandoned"]
    assert decision["outcome"] == "fired"
    return float(decision["at"])


def test_timers_survive_a_kill_9_in_memory_mode(tmp_path: Path) -> None:
    with Sink() as sink:
        cfg = serve_config(sink, "3s")
        data = tmp_path / "data"
        with run_tripwire(cfg, data_dir=data) as first:
            armed_at = arm_and_kill(first)
        sink.set_default(503)  # the wait fires in the next run; its webhook cannot get through
        with run_tripwire(cfg, data_dir=data) as second:
            at = wait_until(lambda: _fired_at_or_none(second), timeout=20, message="the wait")
            second.process.kill()  # fired, its webhook not delivered yet: both must be kept
            second.process.wait()
        sink.set_default(200)
        switched = time.time()
        with run_tripwire(cfg, data_dir=data) as third:
            delivered = sink.wait_until(
                lambda requests: any(r.received_at > switched for r in requests), timeout=20
            )
            assert next(r.json() for r in delivered if r.received_at > switched) == {
                "v": "left-alone"
            }
            assert min(r.received_at for r in delivered) >= armed_at + 3
            fired_once_more(third, sink, at)


def _fired_at_or_none(server: Tripwire) -> float | None:
    lookup = server.user("left-alone")
    decisions = lookup["profile"]["decisions"] if lookup is not None else {}
    return fired_at(server) if "abandoned" in decisions else None


def test_timers_survive_a_kill_9_in_redis_mode() -> None:
    with RedisServer(aof=True) as redis, Sink() as sink:
        cfg = serve_config(sink, "3s")
        args = ["--store", redis.url]
        with run_tripwire(cfg, args=args) as first:
            armed_at = arm_and_kill(first)
        with run_tripwire(cfg, args=args) as second, run_tripwire(cfg, args=args) as third:
            (received,) = sink.wait_for(1, timeout=20)
            assert received.json() == {"v": "left-alone"}
            assert received.received_at >= armed_at + 3
            at = fired_at(second)
            second.process.kill()
            second.process.wait()
            fired_once_more(third, sink, at)


def test_replay_fires_timers_in_event_time(tmp_path: Path, capsys: Any) -> None:
    config = {
        "campaigns": [
            {
                "id": "abandoned",
                "status": "published",
                # the schedule ends between the timer's due time and the next event
                "schedule": {"end": "2026-12-01T00:35:00Z"},
                "trigger": {"after": "Added to Cart", "wait": "30m",
                            "unless": {"event": "Order Completed"}},
                "action": {"webhook": {"url": HOOK_URL}},
            }
        ]
    }
    start = 1796083200.0  # 2026-12-01T00:00:00Z
    lines = [
        {"type": "track", "event": "Added to Cart", "anonymousId": "a", "timestamp": start},
        {"type": "track", "event": "Added to Cart", "anonymousId": "b", "timestamp": start},
        {"type": "track", "event": "Order Completed", "anonymousId": "b",
         "timestamp": start + 60},
        {"type": "track", "event": "Added to Cart", "anonymousId": "c",
         "timestamp": start + 600},  # due at 00:40, after the schedule's end
        {"type": "page", "anonymousId": "d", "timestamp": start + 3600},
        {"type": "track", "event": "Added to Cart", "anonymousId": "e",
         "timestamp": start + 3600},  # never due within the file
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(
        json.dumps({**m, "messageId": f"m{i}"}) + "\n" for i, m in enumerate(lines)))
    config_file = tmp_path / "tripwire.json"
    config_file.write_text(json.dumps(config))
    code = cli_main(["replay", str(events), "--config", str(config_file), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["campaigns"]["abandoned"] == {"fired": 1, "suppressed": {"schedule": 1}}
    assert report["timers_pending"] == 1
