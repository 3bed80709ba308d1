"""An anonymous flood past memory mode's bounds: who goes, who stays, and the operator is told."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.events import Event
from collector.memory.store import SWEEP_EVERY, MemoryStore
from collector.metrics import IngestMetrics
from collector.store.pipeline import ingest

T = 1_700_000_000.0
WAIT = 1800.0


def store_for(**state: Any) -> MemoryStore:
    config = decode_config(
        {
            "write_keys": ["k"],
            "state": {"recent_events": 5, **state},
            "campaigns": [
                {
                    "id": "abandoned",
                    "status": "published",
                    "trigger": {
                        "after": "Added to Cart",
                        "wait": "30m",
                        "unless": {"event": "Order Completed"},
                    },
                    "frequency": {"per": "user", "max_total": 1},
                    "action": {"webhook": {"url": "https://hooks.example/abandoned"}},
                }
            ],
        }
    )
    engine = Engine(compile_rules(config))
    return MemoryStore(lambda: engine, config.state, None)


def track(name: str, visitor: str, at: float) -> Event:
    kind = "page" if name == "page" else "track"
    return Event(
        type=kind, name=name, message_id=uuid.uuid4().hex, anonymous_id=visitor,
        context={"page": {"path": "/", "url": "https://shop.example/"}},
        timestamp=at, received_at=at,
    )


async def test_a_flood_past_max_users_spares_the_waiting_and_is_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = store_for(max_users=60)
    shoppers = [f"shopper-{n}" for n in range(50)]
    for n, shopper in enumerate(shoppers):
        await ingest(store, [track("Added to Cart", shopper, T + n)], T + n)
    with caplog.at_level(logging.WARNING, logger="tripwire.store"):
        for n in range(400):  # a flood of anonymous page views
            await ingest(store, [track("page", f"flood-{n}", T + 100 + n)], T + 100 + n)
    assert len(store) <= 60 + 1  # the bound is kept before each request adds its own
    assert store.evictions.counts == {"capacity": 450 - len(store)}  # every one counted
    assert any("let profiles go" in r.getMessage() for r in caplog.records)
    for shopper in shoppers:  # every shopper's wait survived the flood
        assert await store.user_state(shopper) is not None
    fired = await store.fire_due(T + WAIT + 100)
    assert sorted(w.user_key for w in fired.webhooks) == sorted(f"a:{s}" for s in shoppers)
    # and their once-per-user cap is still there: a second cart does not fire again
    await ingest(store, [track("Added to Cart", "shopper-0", T + WAIT + 200)], T + WAIT + 200)
    again = await store.fire_due(T + 2 * WAIT + 300)
    assert again.webhooks == []


async def test_the_timers_of_evicted_profiles_go_with_them() -> None:
    store = store_for(max_users=10)
    for n in range(3000):  # every one of them arms a wait, and most are evicted
        await ingest(store, [track("Added to Cart", f"v-{n}", T + n)], T + n)
    assert len(store) <= 10 + 64  # the bound, plus the waiting it spared at most once
    assert store.pending_timers() == len(store)
    assert len(store._due) <= 2 * store.pending_timers() + 1024  # no pile of stale entries


async def test_profiles_unseen_for_the_ttl_go_and_those_seen_again_stay() -> None:
    store = store_for(user_ttl="1h")
    for n in range(5):
        await ingest(store, [track("page", f"v-{n}", T + n)], T + n)
    await ingest(store, [track("page", "v-0", T + 1800)], T + 1800)  # v-0 came back
    later = T + 3600 + SWEEP_EVERY + 10  # looked for at most SWEEP_EVERY late
    await ingest(store, [track("page", "v-new", later)], later)
    assert [await store.user_state(f"v-{n}") is not None for n in range(5)] == [
        True, False, False, False, False
    ]
    assert store.evictions.counts == {"expired": 4}


async def test_a_memory_budget_bounds_the_profiles_held() -> None:
    store = store_for(max_memory_mb=1)
    for n in range(12_000):
        await ingest(store, [track("page", f"v-{n}", T + n)], T + n)
    measured = store.evictions.profile_bytes
    assert measured is not None and 300 < measured < 20_000
    assert len(store) * measured <= 1024 * 1024 * 1.05
    assert store.evictions.counts["capacity"] > 0


def test_evictions_are_a_metric() -> None:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    counts = store_for(max_users=1).evictions.counts
    metrics.counter("tripwire_profiles_evicted", "Profiles let go", "reason", counts)
    counts["capacity"] += 3
    text = generate_latest(registry).decode()
    assert 'tripwire_profiles_evicted_total{reason="capacity"} 3.0' in text
