"""Memory mode remembers each message for 24 hours to drop resends, and no longer, and at most
MAX_REMEMBERED_MESSAGES of them."""

from __future__ import annotations

import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.events import Event
from collector.memory import store as store_module
from collector.memory.store import FORGET_EVERY, MemoryStore
from collector.store.base import DEDUPE_SECONDS
from collector.store.pipeline import ingest

T = 1_700_000_000.0


def new_store() -> MemoryStore:
    config = decode_config({"write_keys": ["k"]})
    engine = Engine(compile_rules(config))
    return MemoryStore(lambda: engine, config.state, None)


def page(message_id: str, visitor: str = "v-1") -> Event:
    return Event(
        type="page", name="page", message_id=message_id, anonymous_id=visitor,
        timestamp=T, received_at=T,
    )


async def duplicates(store: MemoryStore, events: list[Event], now: float) -> int:
    return (await ingest(store, events, now)).duplicates


async def test_a_resend_is_dropped_for_24_hours_and_then_taken() -> None:
    store = new_store()
    assert await duplicates(store, [page("m-1")], T) == 0
    assert await duplicates(store, [page("m-1"), page("m-2")], T + 3600) == 1
    assert await duplicates(store, [page("m-1")], T + DEDUPE_SECONDS - 1) == 1
    later = T + DEDUPE_SECONDS + FORGET_EVERY + 1  # looked for at most FORGET_EVERY late
    assert await duplicates(store, [page("m-1"), page("m-2")], later) == 1  # m-2 is younger
    assert await duplicates(store, [page("m-1", "v-2")], later) == 0  # another sender's


async def test_past_the_bound_the_oldest_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_REMEMBERED_MESSAGES", 10)
    monkeypatch.setattr(store_module, "FORGET_BELOW_MAX", 8)
    store = new_store()
    for n in range(11):
        assert await duplicates(store, [page(f"m-{n}")], T + n) == 0
    # the 11th went past the bound: the next request forgets the three oldest
    assert await duplicates(store, [page("m-10")], T + 20) == 1
    assert await duplicates(store, [page(f"m-{n}") for n in range(3, 10)], T + 21) == 7
    assert await duplicates(store, [page(f"m-{n}") for n in range(3)], T + 22) == 0
