"""Frequency against a running server, in each store: once per user, once per session, every
event with a total cap, even when one visitor's events arrive concurrently."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.redis_mode.test_redis_mode import config, post_concurrently
from tests.support.poll import wait_until
from tests.support.redis import RedisServer
from tests.support.server import run_tripwire
from tests.support.sink import Sink


def hook(sink: Sink, id_: str, frequency: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": id_,
        "status": "published",
        "trigger": {"event": "Viewed"},
        "action": {"webhook": {"url": f"{sink.url}/{id_}"}},
    }
    if frequency is not None:
        spec["frequency"] = frequency
    return spec


def viewed(visitor: str, at: float) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Viewed",
        "anonymousId": visitor,
        "messageId": uuid.uuid4().hex,
        "timestamp": at,
    }


@pytest.mark.parametrize("mode", ["memory", "redis"])
def test_frequency_holds_under_concurrent_events(mode: str, request: pytest.FixtureRequest) -> None:
    args: list[str] = []
    if mode == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        args = ["--store", redis.url]
    with Sink() as sink:
        cfg = config(
            sink,
            hook(sink, "once-per-user", {"per": "user"}),
            hook(sink, "once-per-session", {"per": "session"}),
            hook(sink, "default", None),
            hook(sink, "every-event-3-in-all", {"per": "event", "max_total": 3}),
        )
        visitor = f"visitor-{mode}"
        with run_tripwire(cfg, args=args) as server:
            now = time.time()
            first_session = [viewed(visitor, now - 7200 + i * 0.001) for i in range(40)]
            codes = asyncio.run(post_concurrently([server.url], first_session, parallel=20))
            assert codes == [200] * 40

            def counts() -> dict[str, int]:
                found: dict[str, int] = {}
                for received in sink.requests:
                    found[received.path.strip("/")] = found.get(received.path.strip("/"), 0) + 1
                return found

            expected = {
                "once-per-user": 1,
                "once-per-session": 1,
                "default": 1,
                "every-event-3-in-all": 3,
            }
            wait_until(lambda: counts() == expected, timeout=20, message=f"{expected}")
            # Two hours later: a new session.
            second_session = [viewed(visitor, now + i * 0.001) for i in range(10)]
            codes = asyncio.run(post_concurrently([server.url], second_session, parallel=10))
            assert codes == [200] * 10
            expected = {**expected, "once-per-session": 2, "default": 2}
            wait_until(lambda: counts() == expected, timeout=20, message=f"{expected}")
            user = server.user(visitor)
            assert user is not None
            history = user["profile"]["decision_history"]["once-per-user"]
            assert [d["reason"] for d in history] == ["frequency", None]  # newest first
            assert user["profile"]["caps"]["every-event-3-in-all"]["total"] == 3
            # Nothing more arrives late.
            assert counts() == expected
