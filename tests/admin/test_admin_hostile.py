"""The admin API and dashboard under hostile or unusual input: a 4xx naming what was wrong, never
a 500; sessions that logging out revokes; security headers on every page."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.poll import wait_until
from tests.support.redis import RedisServer
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CONFIG: dict[str, Any] = {
    "write_keys": ["k"],
    "server": {"max_streams": 2},
    "campaigns": [
        {
            "id": "evenings",
            "status": "published",
            "schedule": {"hours": "18:00-24:00", "days": ["mon", "fri"]},
            "trigger": {"event": "Viewed"},
            "action": {"webhook": {"url": "https://hooks.example/e", "body": {"u": "#{user_id}"}}},
        }
    ],
}


@pytest.fixture(scope="module")
def server() -> Iterator[Tripwire]:
    with run_tripwire(CONFIG) as running:
        yield running


@contextlib.contextmanager
def logged_in(server: Tripwire) -> Iterator[httpx.Client]:
    """A browser-like client holding a dashboard session."""
    with httpx.Client(
        base_url=server.url, trust_env=False, headers={"Origin": server.url}, follow_redirects=True
    ) as client:
        assert client.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 200
        yield client


def test_a_campaign_with_schedule_hours_lists_edits_and_pauses(server: Tripwire) -> None:
    assert server.admin_get("/admin/api/campaigns").status_code == 200
    got = server.admin_get("/admin/api/campaigns/evenings")
    assert got.status_code == 200 and got.json()["schedule"]["hours"] == "18:00-24:00"
    with logged_in(server) as browser:
        assert "evenings" in browser.get("/admin/").text
        assert browser.get("/admin/campaigns/evenings").status_code == 200
        paused = browser.post("/admin/campaigns/evenings/status", data={"status": "paused"})
        assert paused.status_code == 200
    assert server.admin_get("/admin/api/campaigns/evenings").json()["status"] == "paused"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("a: " + "[" * 5000 + "]" * 5000, "nested deeper than"),
        ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nested deeper than"),
        ("priority: " + "9" * 5000, "more than 4,300 digits"),
        ('{"priority": ' + "9" * 30 + "}", "$.priority: integer out of range"),
    ],
    ids=["deep yaml", "deep json", "5,000-digit integer", "integer past 64 bits"],
)
def test_a_campaign_body_that_cannot_be_read_is_a_400(
    server: Tripwire, body: str, detail: str
) -> None:
    response = server.client.put("/admin/api/campaigns/odd", content=body, headers=BEARER)
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]


@pytest.mark.parametrize("options", [{"user": 5}, {"user": {"a": 1}}, {"user": ["x"]}])
def test_test_fire_with_a_user_that_is_not_text_is_a_400(
    server: Tripwire, options: dict[str, Any]
) -> None:
    response = server.client.post(
        "/admin/api/campaigns/evenings/test", json=options, headers=BEARER
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("$.user")


def test_a_non_ascii_token_is_refused_not_an_error(server: Tripwire) -> None:
    token = "tökén-✓".encode()
    assert server.client.get(
        "/admin/api/campaigns", headers={"Authorization": b"Bearer " + token}
    ).status_code == 401
    assert server.client.get(
        "/admin/api/campaigns", headers={"Cookie": b"tripwire_admin=" + token}
    ).status_code == 401
    refused = server.client.post("/admin/login", data={"token": "tökén-✓"})
    assert refused.status_code == 401


def test_pages_carry_security_headers(server: Tripwire) -> None:
    with logged_in(server) as browser:
        for path in ("/admin/", "/admin/login", "/admin/api/campaigns"):
            headers = browser.get(path).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert "script-src 'self'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"


def test_live_event_streams_are_capped(server: Tripwire) -> None:
    path = "/admin/api/events/stream"
    readers = []  # held: dropping a reader closes its stream
    with contextlib.ExitStack() as streams:
        for _ in range(2):
            opened = streams.enter_context(server.client.stream("GET", path, headers=BEARER))
            assert opened.status_code == 200
            readers.append(opened.iter_bytes())
            next(readers[-1])
        wait_until(lambda: _status(server, path) == 429, message="a third stream refused")
    wait_until(
        lambda: _status(server, path) == 200,
        message="a stream opens again once the others closed",
    )


def _status(server: Tripwire, path: str) -> int:
    """The status a new stream is answered with (the stream is closed at once)."""
    with server.client.stream("GET", path, headers=BEARER) as response:
        return response.status_code


def check_logout_revokes_a_copied_cookie(server: Tripwire) -> None:
    with logged_in(server) as browser:
        session = browser.cookies["tripwire_admin"]
        assert session != ADMIN_TOKEN
        with httpx.Client(
            base_url=server.url, trust_env=False, cookies={"tripwire_admin": session}
        ) as copy:
            assert copy.get("/admin/api/campaigns").status_code == 200
            assert browser.post("/admin/logout").status_code == 200
            assert copy.get("/admin/api/campaigns").status_code == 401
            assert copy.get("/admin/", follow_redirects=False).status_code in (302, 303, 307)


def test_logging_out_revokes_the_session_everywhere(server: Tripwire) -> None:
    check_logout_revokes_a_copied_cookie(server)


def test_logging_out_revokes_the_session_in_redis_mode(redis_server: RedisServer) -> None:
    with run_tripwire(CONFIG, args=["--store", redis_server.url]) as running:
        check_logout_revokes_a_copied_cookie(running)
