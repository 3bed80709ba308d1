"""Redis mode end to end: several `tripwire serve` processes and workers sharing one Redis."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
import uuid
from typing import Any

import httpx
import msgspec
import redis

from collector.redis.keys import Keys
from tests.support.poll import wait_until
from tests.support.redis import RedisServer, run_worker
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink

WRITE_KEY = "test-key"


def config(sink: Sink, *campaigns: dict[str, Any]) -> dict[str, Any]:
    """A config whose campaigns post to the sink."""
    return {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "signing_secrets": ["whsec_dGVzdHNlY3JldA=="]},
        "campaigns": list(campaigns),
    }


def campaign(sink: Sink, id_: str, event: str, frequency: dict[str, Any]) -> dict[str, Any]:
    """A published campaign firing a webhook to the sink on a track event."""
    return {
        "id": id_,
        "status": "published",
        "trigger": {"event": event},
        "frequency": frequency,
        "action": {
            "webhook": {
                "url": f"{sink.url}/{id_}",
                "body": {"visitor": "#{visitor_id}", "event": "#{event_id}"},
            }
        },
    }


def track(event: str, anonymous_id: str, **extra: Any) -> dict[str, Any]:
    """One track message."""
    return {
        "type": "track",
        "event": event,
        "anonymousId": anonymous_id,
        "messageId": uuid.uuid4().hex,
        **extra,
    }


async def post_concurrently(
    urls: list[str], messages: list[dict[str, Any]], parallel: int = 100
) -> list[int]:
    """POST each message as its own request, spread over the servers, `parallel` at a time."""
    limit = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:

        async def send(index: int, message: dict[str, Any]) -> int:
            async with limit:
                response = await client.post(
                    f"{urls[index % len(urls)]}/v1/batch",
                    json={"writeKey": WRITE_KEY, "batch": [message]},
                )
                return response.status_code

        return await asyncio.gather(*(send(i, m) for i, m in enumerate(messages)))


def outbox_empty(redis: RedisServer) -> bool:
    """True when no webhook is pending, scheduled or claimed."""
    return redis.cli("HLEN", Keys(1).outbox_live(0)).strip() == "0"


def test_two_servers_and_a_worker_fire_once_per_user(redis_server: RedisServer) -> None:
    with Sink() as sink:
        cfg = config(
            sink,
            campaign(sink, "welcome", "Signed Up", {"per": "user", "max_total": 1}),
            campaign(sink, "nudge", "Viewed", {"per": "event", "max_total": 2}),
        )
        store = ["--store", redis_server.url]
        with (
            run_tripwire(cfg, args=store) as first,
            run_tripwire(cfg, args=store) as second,
            run_worker(cfg, redis_server.url),
        ):
            urls = [first.url, second.url]
            codes = asyncio.run(
                post_concurrently(urls, [track("Signed Up", "visitor-1") for _ in range(500)])
            )
            assert codes == [200] * 500
            codes = asyncio.run(
                post_concurrently(urls, [track("Viewed", "visitor-2") for _ in range(200)])
            )
            assert codes == [200] * 200
            sink.wait_for(3, timeout=20)
            wait_until(lambda: outbox_empty(redis_server), timeout=20, message="outbox drained")
            paths = sorted(r.path for r in sink.requests)
            assert paths == ["/nudge", "/nudge", "/welcome"]
            # Every process reads the one delivery log, whoever delivered.
            for server in (first, second):

                def logged(server: Tripwire = server) -> list[str]:
                    found = server.admin_get("/admin/api/deliveries?limit=100").json()
                    return sorted(d["campaign_id"] for d in found["deliveries"])

                wait_until(lambda: len(logged()) >= 3, timeout=5, message="delivery log")
                assert logged() == ["nudge", "nudge", "welcome"]
            user = first.user("visitor-1")
            assert user is not None
            assert user["profile"]["event_counts"]["Signed Up"] == 500


def test_campaign_changes_reach_every_process(redis_server: RedisServer) -> None:
    with Sink() as sink:
        cfg = config(sink)
        store = ["--store", redis_server.url]
        with run_tripwire(cfg, args=store) as first, run_tripwire(cfg, args=store) as second:
            spec = campaign(sink, "late", "Bought", {"per": "event"})
            response = first.client.put(
                "/admin/api/campaigns/late",
                json=spec,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            assert response.status_code in (200, 201), response.text

            def listed(server: Tripwire) -> bool:
                campaigns = server.admin_get("/admin/api/campaigns").json()
                items = campaigns["campaigns"] if isinstance(campaigns, dict) else campaigns
                return any(c["id"] == "late" for c in items)

            wait_until(lambda: listed(second), message="campaign on the second server")
            second.post("/v1/track", {"writeKey": WRITE_KEY, **track("Bought", "v9")})
            assert sink.wait_for(1)[0].path == "/late"

            deleted = first.client.delete(
                "/admin/api/campaigns/late", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            )
            assert deleted.status_code in (200, 204)
            wait_until(lambda: not listed(second), message="deletion on the second")


def test_redis_outage_answers_503_and_recovers() -> None:
    with RedisServer(aof=True) as redis, Sink() as sink:
        cfg = config(sink, campaign(sink, "every", "Clicked", {"per": "event"}))
        with run_tripwire(cfg, args=["--store", redis.url]) as server:
            client = httpx.Client(base_url=server.url, timeout=10, trust_env=False)
            statuses: list[int] = []
            retry_after: set[str | None] = set()

            def send(anonymous_id: str) -> int:
                message = track("Clicked", anonymous_id)
                response = client.post("/v1/track", json={"writeKey": WRITE_KEY, **message})
                statuses.append(response.status_code)
                if response.status_code != 200:
                    retry_after.add(response.headers.get("retry-after"))
                return response.status_code

            assert send("before") == 200
            sink.wait_for(1)
            redis.stop()
            down_until = time.monotonic() + 5
            while time.monotonic() < down_until:
                send("during")
            assert server.client.get("/readyz").status_code == 503
            redis.start()
            wait_until(lambda: send("after") == 200, timeout=15, message="ingest back")
            wait_until(lambda: server.client.get("/readyz").status_code == 200, timeout=5)
            for _ in range(20):
                assert send("after") == 200
            client.close()
            assert set(statuses) <= {200, 503}, statuses
            assert statuses.count(503) > 0
            assert retry_after and None not in retry_after
            accepted = statuses.count(200)
            sink.wait_for(accepted, timeout=20)
            ids = {r.headers["webhook-id"] for r in sink.requests}
            assert len(ids) == accepted
            assert server.process.poll() is None


def test_serve_killed_after_answering_loses_no_webhook() -> None:
    with RedisServer(aof=True) as redis, Sink() as sink:
        cfg = config(sink, campaign(sink, "every", "Clicked", {"per": "event"}))
        sink.set_default(503)  # nothing gets through while the first server runs
        with run_tripwire(cfg, args=["--store", redis.url]) as server:
            batch = [track("Clicked", f"v{i}") for i in range(50)]
            response = server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch})
            assert response.status_code == 200
            server.process.kill()
            server.process.wait()
        sink.set_default(200)
        switched = time.time()
        with run_worker(cfg, redis.url):
            wanted = {m["messageId"] for m in batch}

            def all_arrived() -> bool:
                got = {r.json()["event"] for r in sink.requests if r.received_at > switched}
                return wanted <= got

            wait_until(all_arrived, timeout=60, interval=0.2, message="every webhook")


def test_serve_starts_without_redis_and_connects_when_it_comes() -> None:
    redis = RedisServer()
    try:
        with Sink() as sink:
            cfg = config(sink, campaign(sink, "every", "Clicked", {"per": "event"}))
            with run_tripwire(cfg, args=["--store", redis.url]) as server:
                assert server.client.get("/healthz").status_code == 200
                assert server.client.get("/readyz").status_code == 503
                message = {"writeKey": WRITE_KEY, **track("Clicked", "early")}
                refused = server.post("/v1/track", message)
                assert refused.status_code == 503
                assert refused.headers["retry-after"].isdigit()
                redis.start()
                wait_until(lambda: server.client.get("/readyz").status_code == 200, timeout=10)
                assert server.post("/v1/track", message).status_code == 200
                assert sink.wait_for(1)[0].json()["event"] == message["messageId"]
                assert server.process.poll() is None
    finally:
        redis.close()


def test_readyz_answers_in_time_while_redis_is_frozen() -> None:
    with RedisServer() as redis, run_tripwire({"write_keys": [WRITE_KEY]},
                                              args=["--store", redis.url]) as server:
        assert server.client.get("/readyz").status_code == 200
        assert redis.process is not None
        redis.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = server.client.get("/readyz")
            took = time.monotonic() - started
        finally:
            redis.process.send_signal(signal.SIGCONT)
        assert answer.status_code == 503 and "did not answer" in answer.json()["reason"]
        assert took < 5.0, f"/readyz took {took:.1f} s"
        wait_until(lambda: server.client.get("/readyz").status_code == 200,
                   message="ready again once Redis answers")


def test_serve_runs_on_a_redis_unix_socket() -> None:
    socket_dir = tempfile.mkdtemp(prefix="tripwire-sock-")
    path = f"{socket_dir}/redis.sock"
    with (
        RedisServer(extra=["--unixsocket", path, "--unixsocketperm", "700"]) as redis,
        Sink() as sink,
    ):
        assert redis.process is not None
        cfg = config(sink, campaign(sink, "welcome", "Signed Up", {"per": "user", "max_total": 1}))
        with run_tripwire(cfg, args=["--store", f"unix://{path}"]) as server:
            answer = server.post("/v1/batch", {"writeKey": WRITE_KEY,
                                               "batch": [track("Signed Up", "by-socket")]})
            assert answer.status_code == 200
            sink.wait_for(1, timeout=15)
            assert [r.path for r in sink.requests] == ["/welcome"]


def test_a_profile_an_earlier_version_wrote_is_read_and_rewritten(
    redis_server: RedisServer,
) -> None:
    # Versions before the array form stored a profile's state as a map of its fields by name.
    keys = Keys(1)
    now = time.time()
    earlier = {
        "key": "a:returning",
        "anonymous_ids": ["returning"],
        "traits": {"plan": "pro"},
        "first_seen": now - 3600,
        "last_seen": now - 60,
        "event_counts": {"Signed Up": 1},
        "caps": {"welcome": [1, 0, 0, 0, 0]},  # welcome fired for them before the upgrade
    }
    client = redis.Redis(port=redis_server.port)
    client.hset(keys.profile("a:returning"), mapping={"v": 1, "s": msgspec.msgpack.encode(earlier)})
    client.set(keys.identity("a:returning"), "a:returning")
    with Sink() as sink:
        cfg = config(sink, campaign(sink, "welcome", "Signed Up", {"per": "user", "max_total": 1}))
        with run_tripwire(cfg, args=["--store", redis_server.url]) as server:
            user = server.user("returning")
            assert user is not None and user["profile"]["traits"] == {"plan": "pro"}
            signed_up = {"writeKey": WRITE_KEY, **track("Signed Up", "returning")}
            assert server.post("/v1/track", signed_up).status_code == 200
            user = server.user("returning")
            assert user is not None and user["profile"]["event_counts"] == {"Signed Up": 2}
            fired = {"campaign": "welcome", "outcome": "fired", "reason": ""}
            assert server.metric("tripwire_campaign_decisions_total", **fired) == 0
        assert sink.requests == []
    stored = client.hget(keys.profile("a:returning"), "s")
    assert isinstance(stored, bytes) and isinstance(msgspec.msgpack.decode(stored), list)
    client.close()
