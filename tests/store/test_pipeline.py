"""The pipeline's own rules, in process: conflicts go round again, and give up in time.

The contract tests (`test_contract.py`) run the pipeline over every store; these make a real
memory store's commit conflict, as a Redis commit does when another process wrote a profile
between the load and the commit, to show what the pipeline then does.
"""

from __future__ import annotations

from typing import Any

import pytest

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.errors import Unavailable
from collector.memory.store import MemoryStore
from collector.store.pipeline import MAX_ATTEMPTS, ingest
from collector.store.plan import Loaded, Plan
from tests.store.test_contract import CONFIG, event

NOW = 1_700_000_000.0


class Conflicting(MemoryStore):
    """A memory store whose first `conflicts` commits are refused for every profile, as a
    Redis commit is when another process got there first; nothing of a refused one is kept."""

    def __init__(self, conflicts: int) -> None:
        config = decode_config(CONFIG)
        engine = Engine(compile_rules(config, updated_at={}))
        super().__init__(lambda: engine, config.state, None)
        self.conflicts = conflicts
        self.attempts = 0

    async def commit(self, plan: Plan, loaded: Loaded, now: float) -> set[str]:
        self.attempts += 1
        if self.attempts <= self.conflicts:
            self.discard(loaded)
            return set(plan.owner_events)
        return await super().commit(plan, loaded, now)


def steps(visitor: str, count: int) -> list[Any]:
    return [event("Step", anonymous_id=visitor, properties={"n": n}) for n in range(count)]


async def test_events_whose_commit_conflicted_run_again_and_count_once() -> None:
    store = Conflicting(conflicts=2)
    signed_up = event("Signed Up", anonymous_id="v")
    result = await ingest(store, [*steps("v", 3), signed_up], NOW)
    assert store.attempts == 3
    assert (result.accepted, result.duplicates, result.rejected) == (4, 0, [])
    assert [w.campaign_id for w in result.webhooks] == ["welcome"]  # once, not three times
    assert result.webhooks[0].body["s"] == 3  # the steps counted once each
    view = await store.lookup("v", NOW)
    assert view is not None and view.profile["event_counts"]["Step"] == 3


async def test_a_request_that_keeps_conflicting_is_unavailable_and_leaves_nothing() -> None:
    store = Conflicting(conflicts=MAX_ATTEMPTS)
    with pytest.raises(Unavailable):
        await ingest(store, steps("w", 2), NOW)
    assert store.attempts == MAX_ATTEMPTS
    assert await store.lookup("w", NOW) is None
    again = await ingest(store, steps("w", 2), NOW)  # its messageIds were not marked seen
    assert again.accepted == 2


async def test_a_message_repeated_within_a_request_is_run_once() -> None:
    store = Conflicting(conflicts=0)
    repeated = event("Step", anonymous_id="x", message_id="same")
    result = await ingest(store, [repeated, repeated, *steps("x", 1), repeated], NOW)
    assert (result.accepted, result.duplicates) == (2, 2)
    view = await store.lookup("x", NOW)
    assert view is not None and view.profile["event_counts"]["Step"] == 2
