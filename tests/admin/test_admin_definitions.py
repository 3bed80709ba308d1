"""Variables and segments through the admin API; reach; dry runs.

Validated like the config file, versioned (ETag, If-Match), kept across restarts (memory mode)
and shared between processes (Redis mode), refused deletion while something uses them; reach
counts the users matching now; a dry run tells every step and the request, sending nothing.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.poll import wait_until
from tests.support.redis import RedisClusterServers, RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink

KEY = "definitions-key"
API = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG: dict[str, Any] = {"write_keys": [KEY], "webhooks": {"allow_private_networks": True},
                          "test_users": {"trait": "is_test", "eq": True}}
VIEWS = {"event": "page", "stat": "count", "where": {"context": "page.path", "eq": "/pricing"}}
PROS = {"all": [{"trait": "plan", "eq": "pro"}, {"var": "views", "gte": 1}]}


def put(server: Tripwire, path: str, body: Any, **headers: str) -> httpx.Response:
    return server.client.put(path, json=body, headers={**API, **headers})


def send(server: Tripwire, user: str, *messages: dict[str, Any]) -> None:
    batch = [{"userId": user, "messageId": str(uuid.uuid4()), **m} for m in messages]
    server.post("/v1/batch", {"writeKey": KEY, "batch": batch}).raise_for_status()


def campaign(url: str) -> dict[str, Any]:
    return {"status": "published", "trigger": {"event": "Bought"},
            "target": {"segments": ["pros"]}, "frequency": {"per": "event"},
            "action": {"webhook": {"url": url, "body": {"plan": "#{traits.plan}",
                                                        "views": "#{views}"}}}}


def test_variables_and_segments_are_validated_versioned_and_kept(
    tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with Sink() as sink, run_tripwire(CONFIG, data_dir=data) as server:
        bad = put(server, "/admin/api/variables/views", {"event": "page", "stat": "often"})
        assert bad.status_code == 400
        assert any(p.startswith("variables.views.stat:") for p in bad.json()["problems"])
        odd = put(server, "/admin/api/variables/%3Cb%3E", VIEWS)
        assert odd.status_code == 400 and "a name is letters" in odd.text
        created = put(server, "/admin/api/variables/views", VIEWS)
        assert created.status_code == 201
        wrong_type = put(server, "/admin/api/segments/pros", {"var": "views", "gte": "two"})
        assert wrong_type.status_code == 400 and "segments.pros" in wrong_type.text
        segment = put(server, "/admin/api/segments/pros", PROS)
        assert segment.status_code == 201
        etag = segment.headers["etag"]
        stale = put(server, "/admin/api/segments/pros", {"trait": "plan", "eq": "x"},
                    **{"If-Match": '"stale"'})
        assert stale.status_code == 412
        assert put(server, "/admin/api/campaigns/pro-buy", campaign(sink.url + "/buy")).is_success

        send(server, "pro", {"type": "identify", "traits": {"plan": "pro"}},
             {"type": "page", "context": {"page": {"path": "/pricing"}}})
        send(server, "free", {"type": "identify", "traits": {"plan": "free"}},
             {"type": "page", "context": {"page": {"path": "/pricing"}}})
        reach = server.admin_get("/admin/api/segments/pros/reach").json()
        assert (reach["users"], reach["known"], reach["estimate"]) == (1, 2, False)
        draft = server.client.post("/admin/api/reach", headers=API, json={
            "target": {"users": "members", "segments": ["pros"]}, "test_mode": True}).json()
        assert draft["users"] == 0  # nobody is a test user

        dry = server.client.post("/admin/api/campaigns/pro-buy/dry-run", headers=API,
                                 json={"user": "free"}).json()
        assert dry["would_fire"] is False and dry["failed"] == ["segment pros"]
        dry = server.client.post("/admin/api/campaigns/pro-buy/dry-run", headers=API,
                                 json={"user": "pro"}).json()
        assert dry["would_fire"] is True and dry["sent"] is False
        assert dry["request"]["body"] == {"plan": "pro", "views": 1}
        assert [s["step"] for s in dry["steps"]][:4] == [
            "status", "schedule", "target users", "segment pros"]
        assert sink.requests == []  # nothing was sent
        assert server.user("pro")["profile"]["decisions"] == {}  # nor kept

        used = server.client.delete("/admin/api/segments/pros", headers=API)
        assert used.status_code == 409 and "campaign 'pro-buy'" in used.json()["detail"]
        used = server.client.delete("/admin/api/variables/views", headers=API)
        assert used.status_code == 409
        assert "segment 'pros'" in used.json()["detail"]
        assert "campaign 'pro-buy'" in used.json()["detail"]  # its body uses #{views}

        send(server, "pro", {"type": "track", "event": "Bought"})
        sink.wait_until(lambda _: len(sink.requests) == 1)
        assert sink.requests[0].json() == {"plan": "pro", "views": 1}

    with Sink() as sink, run_tripwire(CONFIG, data_dir=data) as again:
        assert again.admin_get("/admin/api/segments/pros").headers["etag"] == etag
        assert again.admin_get("/admin/api/variables").json()["variables"]["views"] == {
            **VIEWS, "window": "all"}
        assert again.admin_get("/admin/api/campaigns/pro-buy").status_code == 200
        assert again.client.delete("/admin/api/campaigns/pro-buy", headers=API).status_code == 204
        deleted = again.client.delete("/admin/api/segments/pros", headers={
            **API, "If-Match": etag})
        assert deleted.status_code == 204
        assert again.admin_get("/admin/api/segments/pros").status_code == 404


def test_a_segment_changed_in_one_process_reaches_the_others_in_redis_mode(
    redis_server: RedisServer
) -> None:
    store = ["--store", redis_server.url]
    with run_tripwire(CONFIG, args=store) as one, run_tripwire(CONFIG, args=store) as two:
        assert put(one, "/admin/api/variables/views", VIEWS).status_code == 201
        assert put(one, "/admin/api/segments/pros", PROS).status_code == 201
        wait_until(lambda: two.admin_get("/admin/api/segments/pros").status_code == 200,
                   message="the segment in the second process")
        send(two, "pro", {"type": "identify", "traits": {"plan": "pro"}},
             {"type": "page", "context": {"page": {"path": "/pricing"}}})
        reach = one.admin_get("/admin/api/segments/pros/reach").json()
        assert reach["users"] == 1 and reach["estimate"] is False
    with run_tripwire(CONFIG, args=store) as later:  # a process started later applies them
        assert later.admin_get("/admin/api/segments/pros").json() == PROS
        exported = subprocess.run(
            [sys.executable, "-m", "collector.cli", "export", "--config",
             str(later.data_dir.parent / "tripwire.json"), *store],
            check=True, capture_output=True, text=True).stdout
    assert yaml.safe_load(exported)["segments"] == {"pros": PROS}


def test_reach_samples_profiles_on_every_node_of_a_cluster(
    redis_cluster: RedisClusterServers
) -> None:
    with run_tripwire(CONFIG, args=["--store", redis_cluster.url]) as server:
        assert put(server, "/admin/api/variables/views", VIEWS).status_code == 201
        assert put(server, "/admin/api/segments/pros", PROS).status_code == 201
        for n in range(12):
            send(server, f"user-{n}", {"type": "identify", "traits": {
                "plan": "pro" if n % 3 == 0 else "free"}},
                {"type": "page", "context": {"page": {"path": "/pricing"}}})
        reach = server.admin_get("/admin/api/segments/pros/reach").json()
        assert (reach["users"], reach["known"], reach["estimate"]) == (4, 12, False)
