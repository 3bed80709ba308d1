"""`tripwire worker`: delivery processes that may die without losing a webhook."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tests.support.poll import wait_until
from tests.support.redis import RedisServer, run_worker
from tests.support.server import run_tripwire
from tests.support.sink import Reply, Sink

WRITE_KEY = "test-key"


def test_a_killed_worker_loses_no_webhook() -> None:
    with RedisServer(aof=True) as redis, Sink(default=Reply(200, delay=0.002)) as sink:
        cfg: dict[str, Any] = {
            "write_keys": [WRITE_KEY],
            "webhooks": {"allow_private_networks": True, "concurrency_per_endpoint": 4},
            "campaigns": [
                {
                    "id": "every",
                    "status": "published",
                    "trigger": {"event": "Clicked"},
                    "frequency": {"per": "event"},
                    "action": {
                        "webhook": {"url": f"{sink.url}/hook", "body": {"e": "#{event_id}"}}
                    },
                }
            ],
        }
        env = {"TRIPWIRE_DELIVER_IN_PROCESS": "false"}
        with run_tripwire(cfg, args=["--store", redis.url], env=env) as server:
            with run_worker(cfg, redis.url) as first:
                for start in range(0, 1000, 100):
                    batch = [
                        {
                            "type": "track",
                            "event": "Clicked",
                            "anonymousId": f"v{i}",
                            "messageId": f"m{i}",
                        }
                        for i in range(start, start + 100)
                    ]
                    response = server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch})
                    assert response.status_code == 200
                sink.wait_for(150, timeout=30)
                first.kill()
            assert len(sink.requests) < 1000, "the worker finished before it could be killed"
            with run_worker(cfg, redis.url):
                wait_until(
                    lambda: len({r.json()["e"] for r in sink.requests}) == 1000,
                    timeout=60,
                    interval=0.2,
                    message="all 1000 webhooks",
                )
        bodies: dict[str, set[bytes]] = defaultdict(set)
        ids: dict[str, set[str]] = defaultdict(set)
        for received in sink.requests:
            event_id = received.json()["e"]
            ids[event_id].add(received.headers["webhook-id"])
            bodies[event_id].add(received.body)
        assert all(len(found) == 1 for found in ids.values())  # duplicates share the webhook-id
        assert all(len(found) == 1 for found in bodies.values())
