"""The store contract: memory, single Redis and Redis Cluster behave the same.

Every test in `TestContract` runs against the three; the Redis-only tests below check what only
a shared store can get wrong: concurrent processes, round trips, the outbox commit, outages.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio.connection import Connection

from collector.config.schema import ConfigFile
from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.errors import Unavailable
from collector.events import Event
from collector.memory.store import MemoryStore
from collector.redis.connection import RedisConnection
from collector.redis.outbox import RedisOutbox
from collector.redis.store import RedisStore
from collector.store import identity
from collector.store.base import Store
from collector.store.pipeline import ingest
from tests.support.poll import wait_until_async
from tests.support.redis import RedisClusterServers, RedisServer

HOOK = "http://127.0.0.1:9/hook"

CONFIG: dict[str, Any] = {
    "write_keys": ["k"],
    "state": {"recent_events": 5},
    "variables": {
        "last_step": {"event": "Step", "field": "properties.n", "stat": "latest"},
        "steps": {"event": "Step", "stat": "count"},
    },
    "campaigns": [
        {
            "id": "welcome",
            "status": "published",
            "trigger": {"event": "Signed Up"},
            "frequency": {"per": "user", "max_total": 1},
            "action": {
                "webhook": {
                    "url": HOOK,
                    "body": {"v": "#{visitor_id}", "s": "#{steps}", "l": "#{last_step|none}"},
                }
            },
        }
    ],
}

MakeStore = Callable[[], Awaitable[Store]]


def event(
    name: str = "page",
    *,
    anonymous_id: str | None = None,
    user_id: str | None = None,
    message_id: str | None = None,
    previous_id: str | None = None,
    properties: dict[str, Any] | None = None,
    at: float | None = None,
) -> Event:
    """An accepted event as ingest would hand it to the store."""
    kind = {"page": "page", "identify": "identify", "alias": "alias"}.get(name, "track")
    moment = at if at is not None else time.time()
    return Event(
        type=kind,
        name=name,
        message_id=message_id or uuid.uuid4().hex,
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        properties=properties or {},
        timestamp=moment,
        received_at=moment,
    )


class _Factory:
    """Makes stores of one kind sharing one backend; closes them at the end."""

    def __init__(self, kind: str, url: str | None, config: ConfigFile) -> None:
        self.kind = kind
        self.url = url
        self.engine = Engine(compile_rules(config, updated_at={}))
        self.config = config
        self.connections: list[RedisConnection] = []
        self.memory: MemoryStore | None = None

    async def __call__(self, **options: Any) -> Store:
        if self.url is None:
            if self.memory is None:
                self.memory = MemoryStore(lambda: self.engine, self.config.state, None)
            return self.memory
        connection = RedisConnection(self.url, **options)
        self.connections.append(connection)
        store = RedisStore(connection, lambda: self.engine, self.config.state)
        await store.open()
        return store

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[_Factory]:
    """A factory of stores of each kind; the Redis kinds start with an empty server."""
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    elif request.param == "cluster":
        url = request.getfixturevalue("redis_cluster").url
    factory = _Factory(request.param, url, decode_config(CONFIG))
    yield factory
    await factory.close()


@pytest.fixture(params=["redis", "cluster"])
async def make_redis_store(request: pytest.FixtureRequest) -> AsyncIterator[_Factory]:
    """Like make_store, Redis kinds only."""
    servers = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    factory = _Factory(request.param, servers.url, decode_config(CONFIG))
    yield factory
    await factory.close()


# -- the contract ------------------------------------------------------------------------


async def test_a_new_visitor_gets_a_profile(make_store: _Factory) -> None:
    store = await make_store()
    result = await ingest(store, [event(anonymous_id="anon-1")], time.time())
    assert (result.accepted, result.duplicates) == (1, 0)
    view = await store.lookup("anon-1", time.time())
    assert view is not None
    assert view.key == "a:anon-1"
    assert view.profile["event_counts"] == {"page": 1}
    assert [m["type"] for m in view.recent_events] == ["page"]
    assert await store.lookup("nobody", time.time()) is None


async def test_a_message_id_seen_before_is_ignored(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    repeated = event("Step", anonymous_id="v", message_id="m-1", properties={"n": 1})
    first = await ingest(store, [repeated, repeated, event("Step", anonymous_id="v")], now)
    assert (first.accepted, first.duplicates) == (2, 1)
    again = await ingest(store, [repeated], now)
    assert (again.accepted, again.duplicates) == (0, 1)
    view = await store.lookup("v", now)
    assert view is not None and view.profile["event_counts"] == {"Step": 2}


async def test_events_run_in_order(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    steps = [event("Step", anonymous_id="v", properties={"n": n}, at=now + n) for n in range(7)]
    await ingest(store, steps, now + 10)
    view = await store.lookup("v", now + 10)
    assert view is not None
    assert view.profile["variables"]["last_step"] == 6
    assert view.profile["variables"]["steps"] == 7
    # Recent events are bounded (5 here), newest last.
    assert [m["properties"]["n"] for m in view.recent_events] == [2, 3, 4, 5, 6]


async def test_once_per_user_campaign_fires_once(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    first = await ingest(store, [event("Signed Up", anonymous_id="v")], now)
    second = await ingest(store, [event("Signed Up", anonymous_id="v")] * 1, now)
    both = await ingest(store,
        [event("Signed Up", anonymous_id="w"), event("Signed Up", anonymous_id="w")], now
    )
    assert [w.campaign_id for w in first.webhooks] == ["welcome"]
    assert first.webhooks[0].user_key == "a:v"
    assert first.webhooks[0].url == HOOK
    assert second.webhooks == []
    assert [w.user_key for w in both.webhooks] == ["a:w"]
    assert {d.campaign_id for d in second.decisions} == {"welcome"}


async def test_identify_merges_visitors_of_one_user(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    await ingest(store, [event(anonymous_id="laptop"), event(anonymous_id="laptop")], now)
    await ingest(store, [event(anonymous_id="phone")], now)
    await ingest(store, [event("identify", anonymous_id="laptop", user_id="alice")], now)
    await ingest(store, [event("identify", anonymous_id="phone", user_id="alice")], now)
    views = [await store.lookup(who, now) for who in ("laptop", "phone", "alice")]
    assert all(v is not None for v in views)
    keys = {v.key for v in views if v is not None}
    assert len(keys) == 1
    view = views[2]
    assert view is not None
    assert view.profile["event_counts"] == {"page": 3, "identify": 2}
    assert len(view.recent_events) == 5
    # A later event with only the phone's anonymous id lands on the merged profile.
    await ingest(store, [event("Step", anonymous_id="phone", properties={"n": 1})], now)
    merged = await store.lookup("alice", now)
    assert merged is not None and merged.profile["event_counts"]["Step"] == 1


async def test_two_known_users_never_merge(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    await ingest(store, [event("identify", anonymous_id="shared-pc", user_id="bob")], now)
    await ingest(store, [event("identify", anonymous_id="other", user_id="carol")], now)
    await ingest(store, [event("identify", anonymous_id="other", user_id="bob")], now)
    bob, carol = await store.lookup("bob", now), await store.lookup("carol", now)
    assert bob is not None and carol is not None
    assert bob.key != carol.key


async def test_alias_links_the_previous_id(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    await ingest(store, [event(anonymous_id="before")], now)
    await ingest(store, [event("alias", user_id="dave", previous_id="before")], now)
    await ingest(store, [event(user_id="dave")], now)
    view = await store.lookup("before", now)
    assert view is not None
    assert view == await store.lookup("dave", now)
    assert view.profile["event_counts"]["page"] == 2


async def test_alias_never_merges_two_known_users(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    await ingest(store, [event(user_id="old-account")], now)
    await ingest(store, [event(user_id="new-account")], now)
    await ingest(store, [event("alias", user_id="new-account", previous_id="old-account")], now)
    old = await store.lookup("old-account", now)
    new = await store.lookup("new-account", now)
    assert old is not None and new is not None and old != new
    assert old.profile["user_id"] == "old-account" and new.profile["user_id"] == "new-account"


async def test_a_duplicate_after_a_merge_is_still_a_duplicate(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    early = event(anonymous_id="tablet", message_id="early")
    await ingest(store, [early], now)
    await ingest(store,
        [event(user_id="erin"), event("identify", anonymous_id="tablet", user_id="erin")], now
    )
    again = await ingest(store, [early], now)
    assert (again.accepted, again.duplicates) == (0, 1)


async def test_a_message_id_is_a_duplicate_only_for_the_same_user(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    alices = event("Signed Up", anonymous_id="pc-a", user_id="alice", message_id="m-shared")
    bobs = event("Signed Up", anonymous_id="pc-b", user_id="bob", message_id="m-shared")
    first = await ingest(store, [alices], now)
    second = await ingest(store, [bobs], now)
    assert (second.accepted, second.duplicates) == (1, 0)
    assert [w.user_key for w in second.webhooks] == ["u:bob"]
    assert second.webhooks[0].webhook_id != first.webhooks[0].webhook_id
    retry = await ingest(store, [bobs], now)
    assert (retry.accepted, retry.duplicates) == (0, 1)


async def test_a_long_chain_of_merges_still_resolves(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    # anonymous profiles (alias never merges two known users)
    for n in range(21):
        await ingest(store, [event(anonymous_id=f"link-{n}")], now)
    for n in range(1, 21):
        alias = event("alias", anonymous_id=f"link-{n}", previous_id=f"link-{n - 1}")
        await ingest(store, [alias], now)
    result = await ingest(store,
        [event(anonymous_id="link-0"), event(anonymous_id="link-0")], now
    )
    assert result.accepted == 2
    first, last = await store.lookup("link-0", now), await store.lookup("link-20", now)
    assert first is not None and last is not None and first.key == last.key
    assert first.profile["event_counts"]["page"] == 23


class _FailingEngine(Engine):
    """An engine that fails on events carrying `boom`, after it has changed the state."""

    def process(
        self, state: Any, event: Event, now: float, *, key: str | None = None, **options: Any
    ) -> Any:
        outcome = super().process(state, event, now, key=key, **options)
        if event.properties.get("boom"):
            raise RuntimeError("engine failure")
        return outcome


async def test_an_event_the_engine_fails_on_leaves_no_trace(make_store: _Factory) -> None:
    make_store.engine = _FailingEngine(make_store.engine.rules)
    store = await make_store()
    now = time.time()
    await ingest(store, [event("Step", anonymous_id="v", properties={"n": 1})], now)
    poison = event("Step", anonymous_id="v", message_id="m-poison", properties={"boom": True})
    result = await ingest(store,
        [poison, event("Signed Up", anonymous_id="v"), event("Signed Up", anonymous_id="w")], now
    )
    assert [position for position, _ in result.rejected] == [0]
    assert (result.accepted, result.duplicates) == (2, 0)
    assert sorted(w.user_key for w in result.webhooks) == ["a:v", "a:w"]
    view = await store.lookup("v", now)
    assert view is not None
    assert view.profile["event_counts"] == {"Step": 1, "Signed Up": 1}
    assert view.profile["variables"]["steps"] == 1
    # Not marked seen: the same message, fixed, is accepted.
    fixed = event("Step", anonymous_id="v", message_id="m-poison", properties={"n": 2})
    again = await ingest(store, [fixed], now)
    assert (again.accepted, again.duplicates, again.rejected) == (1, 0, [])


async def test_recent_events_and_traits_are_held_to_byte_budgets(make_store: _Factory) -> None:
    store = await make_store()
    now = time.time()
    big = "x" * 6000  # recent_event_bytes is 4096 and trait_bytes 16384 by default
    for n in range(5):
        traits_event = msgspec.structs.replace(
            event("identify", anonymous_id="v"), traits={f"t{n}": big}
        )
        await ingest(store, [traits_event], now)
    await ingest(store,
        [
            event("Step", anonymous_id="v", properties={"n": 1, "note": big}),
            event("Step", anonymous_id="v", properties={"n": 2}),
        ],
        now,
    )
    view = await store.lookup("v", now)
    assert view is not None
    first, second = view.recent_events[-2:]
    assert first["properties"] == {} and first["context"] == {"truncated": True}
    assert second["properties"] == {"n": 2}
    # Two 6 kB traits fit in 16 kB; the later ones are dropped.
    assert sorted(view.profile["traits"]) == ["t0", "t1"]


# -- Redis only ----------------------------------------------------------------------------


async def test_user_state_finds_the_engine_state(make_store: _Factory) -> None:
    store = await make_store()
    await ingest(store,
        [event(anonymous_id="s1"), event("identify", anonymous_id="s1", user_id="sam")], time.time()
    )
    for who in ("s1", "sam", "u:sam"):
        state = await store.user_state(who)
        assert state is not None and state.key == "a:s1" and state.user_id == "sam"
    assert await store.user_state("nobody") is None


async def test_concurrent_processes_fire_a_once_per_user_campaign_once(
    make_redis_store: _Factory,
) -> None:
    stores = [await make_redis_store(), await make_redis_store()]
    now = time.time()
    results = await asyncio.gather(
        *(ingest(stores[i % 2], [event("Signed Up", anonymous_id="hot")], now) for i in range(300))
    )
    assert sum(r.accepted for r in results) == 300
    assert sum(len(r.webhooks) for r in results) == 1
    view = await stores[0].lookup("hot", now)
    assert view is not None and view.profile["event_counts"]["Signed Up"] == 300


class _Counting(Connection):
    """A connection that counts what it sends: one write per command or pipeline."""

    writes = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).writes += 1
        await super().send_packed_command(command, check_health)


async def test_round_trips_do_not_grow_with_the_batch(redis_server: RedisServer) -> None:
    factory = _Factory("redis", redis_server.url, decode_config(CONFIG))
    store = await factory(connection_class=_Counting)
    now = time.time()
    await ingest(store, [event(anonymous_id="warm-up")], now)  # connects, loads scripts

    async def trips(size: int) -> int:
        before = _Counting.writes
        batch = [event("Signed Up", anonymous_id=f"{size}-{uuid.uuid4().hex}") for _ in range(size)]
        result = await ingest(store, batch, now)
        assert result.accepted == size and len(result.webhooks) == size
        return _Counting.writes - before

    one, hundred = await trips(1), await trips(100)
    assert one == hundred == 2  # identities and own profiles, then the commit
    await factory.close()


async def test_round_trips_in_a_cluster_do_not_grow_with_the_batch(
    redis_cluster: RedisClusterServers,
) -> None:
    factory = _Factory("cluster", redis_cluster.url, decode_config(CONFIG))
    store = await factory()
    assert isinstance(store, RedisStore)
    now = time.time()
    await ingest(store, [event(anonymous_id="warm-up")], now)
    counts = []
    for size in (1, 100):
        before = store.connection.round_trips
        await ingest(store, [event(anonymous_id=uuid.uuid4().hex) for _ in range(size)], now)
        counts.append(store.connection.round_trips - before)
    assert counts == [2, 2]
    await factory.close()


async def test_webhooks_are_queued_with_the_state_change(make_redis_store: _Factory) -> None:
    store = await make_redis_store()
    assert isinstance(store, RedisStore)
    outbox = RedisOutbox(store.connection)
    await outbox.open()
    try:
        result = await ingest(store,
            [event("Signed Up", anonymous_id=f"q{i}") for i in range(20)], time.time()
        )
        assert len(result.webhooks) == 20
        claimed: list[Any] = []

        async def all_claimed() -> bool:
            claimed.extend(await outbox.claim(100, 1.0))
            return len(claimed) >= 20

        await wait_until_async(all_claimed, message="the 20 webhooks claimed from the outbox")
        assert {e.delivery_id for e in claimed} == {w.webhook_id for w in result.webhooks}
        for envelope in claimed:
            await outbox.ack(envelope)
    finally:
        await outbox.close()


async def test_an_unreachable_redis_is_unavailable_not_an_error() -> None:
    with RedisServer() as redis:
        factory = _Factory("redis", redis.url, decode_config(CONFIG))
        store = await factory()
        await ingest(store, [event(anonymous_id="v")], time.time())
        redis.stop()
        assert not await store.ping()
        with pytest.raises(Unavailable) as caught:
            await ingest(store, [event(anonymous_id="v")], time.time())
        assert caught.value.headers["Retry-After"].isdigit()
        redis.start()
        result = await ingest(store, [event(anonymous_id="v2")], time.time())
        assert result.accepted == 1 and await store.ping()
        await factory.close()


async def test_a_frozen_redis_is_unavailable_after_the_timeout_and_recovers() -> None:
    with RedisServer() as redis:
        factory = _Factory("redis", redis.url, decode_config(CONFIG))
        store = await factory(socket_timeout=0.5)
        await ingest(store, [event(anonymous_id="v")], time.time())
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable):
                await ingest(store, [event(anonymous_id="v")], time.time())
        finally:
            redis.process.send_signal(signal.SIGCONT)
        result = await ingest(store, [event(anonymous_id="v2")], time.time())
        assert result.accepted == 1
        view = await store.lookup("v", time.time())
        assert view is not None and view.profile["event_counts"] == {"page": 1}
        await factory.close()


async def test_a_merge_interrupted_after_freezing_completes_later(
    make_redis_store: _Factory,
) -> None:
    from collector.redis.connection import evalsha
    from collector.redis.scripts import FREEZE

    store = await make_redis_store()
    assert isinstance(store, RedisStore)
    now = time.time()
    await ingest(store, [event(anonymous_id="old-device"), event(anonymous_id="old-device")], now)
    await ingest(store, [event("identify", anonymous_id="new-device", user_id="fay")], now)
    # A process froze a:old-device for merging into u:fay, then died before committing.
    keys = await store.connection.names()
    version = int(await store.connection.call("HGET", keys.profile("a:old-device"), "v", what="t"))
    frozen = await store.connection.pipeline(
        [
            evalsha(
                FREEZE,
                [keys.profile("a:old-device"), keys.identity("a:old-device")],
                [version, "u:fay", 3600],
            )
        ],
        "test",
    )
    assert frozen == [1]
    result = await ingest(store, [event(anonymous_id="old-device")], now)
    assert result.accepted == 1
    view = await store.lookup("old-device", now)
    assert view is not None and view.key == "u:fay"
    assert view.profile["event_counts"] == {"page": 3, "identify": 1}
    again = await ingest(store, [event(user_id="fay")], now)
    assert again.accepted == 1
    fay = await store.lookup("fay", now)
    assert fay is not None and fay.profile["event_counts"] == {"page": 4, "identify": 1}


async def test_a_conflict_on_one_profile_leaves_the_others_of_the_commit_written(
    make_redis_store: _Factory,
) -> None:
    from collector.store.plan import run_events

    first, second = await make_redis_store(), await make_redis_store()
    assert isinstance(first, RedisStore)
    now = time.time()
    users = [f"user-{n}" for n in range(8)]  # several of them share a shard in a cluster too
    batch = [event("Signed Up", anonymous_id=user) for user in users]
    digests = [identity.dedupe_key(e) for e in batch]
    loaded = await first.load(batch, digests, now)
    # Another process writes one of the profiles between this one's load and its commit.
    await ingest(second, [event("Step", anonymous_id="user-3")], now)
    plan = run_events(first.engine(), batch, digests, now, loaded)
    assert await first.commit(plan, loaded, now) == {"a:user-3"}
    for user in users:
        view = await first.lookup(user, now)
        assert view is not None
        expected = {"Step": 1} if user == "user-3" else {"Signed Up": 1}
        assert view.profile["event_counts"] == expected
