"""The admin API against a real `tripwire serve`: auth, campaigns, test-fire, deliveries, users."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Received, Sink

WRITE_KEY = "admin-test-key"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def campaign(campaign_id: str, event: str, url: str, **extra: Any) -> dict[str, Any]:
    """A published campaign firing on `event` to `url`, with the user id in its body."""
    return {
        "id": campaign_id,
        "name": campaign_id.replace("-", " ").title(),
        "status": "published",
        "trigger": {"event": event},
        "frequency": {"per": "event"},
        "action": {"webhook": {"url": url, "body": {"campaign": "#{campaign_id}",
                                                    "user": "#{user_id|}"}}},
        **extra,
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    # /fail answers 404: a permanent failure, dead-lettered at once and replayable; /gone
    # answers 410 Gone, which pauses the campaign's endpoint.
    codes = {"/fail": 404, "/gone": 410}
    with Sink(handler=lambda request: codes.get(request.path, 200)) as sink:
        yield sink


@pytest.fixture(scope="module")
def server(sink: Sink) -> Iterator[Tripwire]:
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "max_attempts": 2},
        "variables": {"pings": {"event": "Ping", "stat": "count"}},
        "segments": {"pingers": {"var": "pings", "gte": 1}},
        "campaigns": [
            campaign("ping", "Ping", sink.url + "/ping"),
            campaign("once", "Once", sink.url + "/once",
                     frequency={"per": "user", "max_total": 1}),
            campaign("nobody", "Ping", sink.url + "/nobody", rate=0),
            campaign("broken", "Break", sink.url + "/fail"),
            campaign("gone", "Gone", sink.url + "/gone"),
        ],
    }
    with run_tripwire(config) as server:
        yield server


def track(server: Tripwire, user: str, *events: str) -> None:
    """Send track events for a user in one batch (processed in order)."""
    batch = [{"type": "track", "userId": user, "event": e, "messageId": str(uuid.uuid4())}
             for e in events]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).raise_for_status()


def hooks_for(sink: Sink, user: str, path: str | None = None) -> list[Received]:
    """The webhooks the sink received about a user (optionally on one path)."""
    return [r for r in sink.requests
            if r.json().get("user") == user and (path is None or r.path == path)]


def test_admin_is_off_without_a_token() -> None:
    with run_tripwire({"write_keys": ["k"]}, env={"TRIPWIRE_ADMIN_TOKEN": ""}) as server:
        api = server.client.get("/admin/api/campaigns", headers={"Authorization": "Bearer x"})
        page = server.client.get("/admin/")
    assert api.status_code == 404
    assert page.status_code == 404


def test_nothing_admin_opens_without_the_admin_token(server: Tripwire) -> None:
    client = server.client
    paths = ["/admin/api/campaigns", "/admin/api/users/someone", "/admin/api/deliveries",
             "/admin/api/campaigns/ping"]
    for path in paths:
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 401
        assert client.get(path, auth=(WRITE_KEY, "")).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.put("/admin/api/campaigns/ping", json={}).status_code == 401
    assert client.post("/admin/api/campaigns/ping/test").status_code == 401
    assert client.post("/admin/api/deliveries/x/replay").status_code == 401
    assert client.post("/admin/api/campaigns/ping/resume").status_code == 401
    assert client.get("/admin/api/paused").status_code == 401
    assert client.get("/admin/api/campaigns", headers=BEARER).status_code == 200
    # the cookie holds a session from logging in, never the token itself
    with httpx.Client(base_url=server.url, cookies={"tripwire_admin": ADMIN_TOKEN},
                      trust_env=False) as token_as_cookie:
        assert token_as_cookie.get("/admin/api/campaigns").status_code == 401
    as_cookie = httpx.Client(base_url=server.url, trust_env=False)
    with as_cookie:
        as_cookie.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert as_cookie.cookies["tripwire_admin"] != ADMIN_TOKEN
        assert as_cookie.get("/admin/api/campaigns").status_code == 200
        # the dashboard's cookie cannot be ridden by a form on another site
        forged = as_cookie.delete("/admin/api/campaigns/ping", headers={"Origin": "http://evil.test"})
        assert forged.status_code == 403


def test_campaigns_are_listed_with_their_config_and_counts(server: Tripwire, sink: Sink) -> None:
    user = "lister"
    track(server, user, "Ping")
    sink.wait_until(lambda _: len(hooks_for(sink, user)) >= 1)
    listed = server.admin_get("/admin/api/campaigns").json()["campaigns"]
    by_id = {c["id"]: c for c in listed}
    assert set(by_id) >= {"ping", "once", "nobody", "broken"}
    assert by_id["ping"]["trigger"]["event"] == "Ping"
    assert by_id["ping"]["stats"]["fired"] >= 1
    assert by_id["nobody"]["stats"]["suppressed"].get("control_group", 0) >= 1
    one = server.admin_get("/admin/api/campaigns/once").json()
    assert one["frequency"] == {"per": "user", "max_total": 1, "max_per_day": None}
    assert server.admin_get("/admin/api/campaigns/missing").status_code == 404


def test_urls_templates_and_value_types_are_checked_in_one_round(server: Tripwire) -> None:
    bad = {
        "status": "published",
        "trigger": {"event": "Ping", "where": {"event_count": "Ping", "gte": "two"}},
        "action": {
            "webhook": {
                "url": "https://#{host}/hook",
                "body": {"n": "#{pings", "who": "#{nobody}"},
            }
        },
        "colour": "red",
    }
    answer = server.client.put("/admin/api/campaigns/bad", json=bad, headers=BEARER)
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert "colour: unknown key" in problems
    assert "trigger.where.gte: event_count 'Ping' is a number; expected a number, got 'two'" in (
        problems
    )
    assert any(p.startswith("action.webhook.url: the host cannot be a template") for p in problems)
    assert "action.webhook.body.n: unclosed placeholder '#{pings' (write #{name})" in problems
    assert "action.webhook.body.who: unknown variable 'nobody'" in problems, problems
    for url in ("notaurl", "file:///etc/passwd"):
        answer = server.client.put(
            "/admin/api/campaigns/bad", headers=BEARER,
            json={"status": "draft", "action": {"webhook": {"url": url}}},
        )
        assert answer.status_code == 400
        assert answer.json()["problems"] == [
            f"action.webhook.url: expected an http:// or https:// URL, got {url!r}"
        ]
    assert server.admin_get("/admin/api/campaigns/bad").status_code == 404


def test_an_invalid_campaign_is_refused_with_every_problem_and_its_path(server: Tripwire) -> None:
    bad = {
        "status": "live",
        "trigger": {"event": "Ping", "where": {"trait": "plan", "equal": "pro"}},
        "frequency": {"per": "week"},
        "action": {"webhook": {"url": "http://127.0.0.1:9/x"}},
    }
    answer = server.client.put("/admin/api/campaigns/bad", json=bad, headers=BEARER)
    assert answer.status_code == 400
    problems = answer.json()["problems"]
    assert any(p.startswith("status:") for p in problems), problems
    assert any(p.startswith("frequency.per:") for p in problems), problems
    assert "trigger.where: unknown operator 'equal'" in problems
    assert any(p.startswith("status: expected one of draft, published") for p in problems)
    mismatched = server.client.put("/admin/api/campaigns/bad", headers=BEARER,
                                   json={**bad, "id": "other"})
    assert mismatched.status_code == 400
    assert server.admin_get("/admin/api/campaigns/bad").status_code == 404


def test_a_saved_campaign_applies_to_the_next_event_and_a_deleted_one_stops(
    server: Tripwire, sink: Sink
) -> None:
    user = "greeted"
    spec = campaign("greet", "Greet", sink.url + "/greet")
    created = server.client.put("/admin/api/campaigns/greet", json=spec, headers=BEARER)
    assert created.status_code == 201
    track(server, user, "Greet")
    sink.wait_until(lambda _: len(hooks_for(sink, user, "/greet")) == 1)

    # YAML works too, and replacing keeps one campaign under the id
    yaml_spec = (
        "status: published\ntrigger: {event: Greet}\nfrequency: {per: event}\naction:\n"
        f"  webhook: {{url: '{sink.url}/greet2', body: {{user: '#{{user_id}}'}}}}\n"
    )
    replaced = server.client.put("/admin/api/campaigns/greet", content=yaml_spec, headers=BEARER)
    assert replaced.status_code == 200
    track(server, user, "Greet")
    sink.wait_until(lambda _: len(hooks_for(sink, user, "/greet2")) == 1)

    assert server.client.delete("/admin/api/campaigns/greet", headers=BEARER).status_code == 204
    assert server.client.delete("/admin/api/campaigns/greet", headers=BEARER).status_code == 404
    track(server, user, "Greet", "Ping")  # the Ping webhook marks that Greet was processed
    sink.wait_until(lambda _: len(hooks_for(sink, user, "/ping")) == 1)
    assert len(hooks_for(sink, user, "/greet2")) == 1
    assert len(hooks_for(sink, user, "/greet")) == 1


def test_test_fire_sends_the_webhook_for_a_sample_or_a_given_user(
    server: Tripwire, sink: Sink
) -> None:
    sample = server.client.post("/admin/api/campaigns/once/test", headers=BEARER)
    assert sample.status_code == 200, sample.text
    assert sample.json()["status"] == "delivered" and sample.json()["status_code"] == 200
    sink.wait_until(lambda _: len(hooks_for(sink, "sample-user", "/once")) == 1)

    track(server, "tester", "Ping")
    wait_until(lambda: server.user("tester"))
    given = server.client.post("/admin/api/campaigns/once/test", json={"user": "tester"},
                               headers=BEARER)
    assert given.json()["status"] == "delivered"
    sent = sink.wait_until(lambda _: len(hooks_for(sink, "tester", "/once")) == 1)[-1]
    assert sent.headers["webhook-id"]
    unknown = server.client.post("/admin/api/campaigns/once/test", json={"user": "nobody-here"},
                                 headers=BEARER)
    assert unknown.status_code == 404


def test_deliveries_filter_and_a_failed_one_replays(server: Tripwire, sink: Sink) -> None:
    user = "breaker"
    track(server, user, "Break")

    def failed() -> list[dict[str, Any]]:
        found = server.admin_get("/admin/api/deliveries?campaign=broken&status=failed&limit=5")
        return [d for d in found.json()["deliveries"] if d["user_key"].endswith(user)]

    first = wait_until(failed, message="a failed delivery")[0]
    assert first["status_code"] == 404 and first["campaign_id"] == "broken"
    assert first["latency_ms"] is not None
    replayed = server.client.post(f"/admin/api/deliveries/{first['delivery_id']}/replay",
                                  headers=BEARER)
    assert replayed.status_code == 200 and replayed.json()["count"] == 1
    wait_until(lambda: len(failed()) == 2, message="the replayed attempt")
    delivered = server.admin_get("/admin/api/deliveries?status=delivered&limit=3").json()
    assert 0 < len(delivered["deliveries"]) <= 3
    assert all(d["status"] == "delivered" for d in delivered["deliveries"])
    assert server.admin_get("/admin/api/deliveries?status=bogus").status_code == 400
    assert server.client.post("/admin/api/deliveries/msg_unknown/replay",
                              headers=BEARER).status_code == 404


def test_an_endpoint_paused_after_410_is_listed_and_resumed(server: Tripwire, sink: Sink) -> None:
    track(server, "leaver", "Gone")

    def paused() -> list[dict[str, Any]]:
        return [p for p in server.admin_get("/admin/api/paused").json()["paused"]
                if p["campaign_id"] == "gone"]

    (entry,) = wait_until(paused, message="the endpoint paused after 410")
    assert entry["endpoint"] == f"http://127.0.0.1:{sink.port}" and "410" in entry["reason"]
    track(server, "leaver", "Gone")  # paused: dead-lettered, not sent
    wait_until(lambda: len(server.admin_get("/admin/api/deliveries?campaign=gone&status=paused")
                           .json()["deliveries"]) == 2, message="the second delivery paused")
    assert len(hooks_for(sink, "leaver", "/gone")) == 1

    resumed = server.client.post("/admin/api/campaigns/gone/resume", headers=BEARER)
    assert resumed.status_code == 200 and resumed.json() == {"resumed": 1}
    assert paused() == []
    again = server.client.post("/admin/api/campaigns/gone/resume", headers=BEARER)
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    track(server, "leaver", "Gone")  # sent again
    sink.wait_until(lambda _: len(hooks_for(sink, "leaver", "/gone")) == 2)


def test_live_events_arrive_over_server_sent_events(server: Tripwire) -> None:
    user = f"live-{uuid.uuid4().hex[:8]}"
    received: list[dict[str, Any]] = []
    opened = threading.Event()

    def listen() -> None:
        url = "/admin/api/events/stream?backlog=0"
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client, \
                client.stream("GET", url, headers=BEARER) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                opened.set()
                if line.startswith("data: "):
                    message = json.loads(line[6:])
                    if message.get("userId") == user:
                        received.append(message)
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    track(server, user, "Checkout Started")
    listener.join(10)
    assert received and received[0]["event"] == "Checkout Started"
    assert received[0]["type"] == "track"


def test_user_lookup_explains_suppressed_decisions(server: Tripwire, sink: Sink) -> None:
    user = "explained"
    track(server, user, "Once", "Once", "Ping")
    sink.wait_until(lambda _: len(hooks_for(sink, user, "/ping")) == 1)
    view = server.user(user)
    assert view is not None
    decisions = view["profile"]["decisions"]
    assert decisions["once"]["outcome"] == "suppressed"
    assert decisions["once"]["reason"] == "frequency"
    assert decisions["nobody"]["reason"] == "control_group"
    assert decisions["ping"]["outcome"] == "fired"
    assert view["profile"]["variables"]["pings"] == 1
    assert "pingers" in view["profile"]["segments"]
    assert [e["event"] for e in view["recent_events"]] == ["Once", "Once", "Ping"]
