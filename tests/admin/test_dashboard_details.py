"""Dashboard details a newcomer meets: a login link that keeps the token out of the server's
and proxies' sight, Replay offered for dead letters only, trigger misses shown apart from
suppressions, and an icon instead of a 404 on every page."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Request, sync_playwright

from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink

WRITE_KEY = "details-key"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink(handler=lambda request: 404 if request.path == "/broken" else 200) as running:
        yield running


@pytest.fixture(scope="module")
def server(sink: Sink) -> Iterator[Tripwire]:
    def campaign(campaign_id: str, event: str, path: str) -> dict[str, Any]:
        return {
            "id": campaign_id, "name": campaign_id, "status": "published",
            "trigger": {"event": event, "where": {"prop": "n", "gte": 1}},
            "frequency": {"per": "event"},
            "action": {"webhook": {"url": sink.url + path, "body": {"id": "#{event_id}"}}},
        }

    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "max_attempts": 1},
        "campaigns": [
            campaign("broken", "Break", "/broken"),
            campaign("ok", "Go", "/ok"),
            {**campaign("once", "Once", "/once"), "frequency": {"per": "user"}},
        ],
    }
    with run_tripwire(config) as running:
        yield running


@contextmanager
def admin(server: Tripwire) -> Iterator[httpx.Client]:
    """A client logged in to the dashboard (its session cookie kept)."""
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        assert client.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 303
        yield client


def send(server: Tripwire, *events: str, n: int = 1) -> None:
    batch = [{"type": "track", "userId": f"u-{uuid.uuid4()}", "event": e, "properties": {"n": n}}
             for e in events]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).raise_for_status()


def test_replay_is_offered_for_dead_letters_not_for_a_failed_test_fire(server: Tripwire) -> None:
    tested = server.client.post("/admin/api/campaigns/broken/test", headers=BEARER)
    test_id = tested.json()["delivery_id"]
    send(server, "Break")  # fails at its only attempt: a dead letter

    def logged() -> list[dict[str, Any]]:
        found = server.client.get(
            "/admin/api/deliveries", params={"campaign": "broken"}, headers=BEARER
        ).json()["deliveries"]
        return [d for d in found if d["delivery_id"] != test_id]

    (dead,) = wait_until(logged, message="the dead letter in the delivery log")
    with admin(server) as client:
        page = client.get("/admin/deliveries", params={"campaign": "broken"}).text

    def row(delivery_id: str) -> str:
        return page.split(f'data-delivery="{delivery_id}"', 1)[1].split("</tr>", 1)[0]

    assert "Replay" not in row(test_id)
    assert "Replay" in row(dead["delivery_id"])


def test_trigger_misses_are_shown_apart_from_suppressions(server: Tripwire) -> None:
    send(server, "Go")
    send(server, "Go", "Go", n=0)  # a Go, but not the one the trigger's `where` asks for

    def row() -> str:
        with admin(server) as client:
            page = client.get("/admin/").text
        found = page.split('data-campaign="ok"', 1)[1].split("</tr>", 1)[0]
        return found if "not triggered" in found else ""

    shown = wait_until(row, message="the campaign's counts")
    assert "not triggered: 2 events" in shown
    assert 'badge suppressed" title="the event did not match' not in shown


def test_favicon_is_served() -> None:
    with run_tripwire({"write_keys": [WRITE_KEY]}) as server:
        icon = server.client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"


def test_the_login_link_keeps_the_token_out_of_requests_and_history(server: Tripwire) -> None:
    with sync_playwright() as driver:
        browser: Browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        sent: list[str] = []

        def record(request: Request) -> None:
            sent.append(request.url + " " + (request.post_data or ""))

        page.on("request", record)
        page.goto(f"{server.url}/admin/login#token={ADMIN_TOKEN}")
        page.wait_for_url("**/admin/")
        history = page.evaluate("history.length")
        page.go_back()
        back_url = page.url
        browser.close()

    assert all(ADMIN_TOKEN not in url for url in (s.split(" ")[0] for s in sent))
    assert history >= 1 and "token" not in back_url


def test_the_campaigns_table_fits_a_phone_without_scrolling_sideways(server: Tripwire) -> None:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
        page = context.new_page()
        page.goto(f"{server.url}/admin/login#token={ADMIN_TOKEN}")
        page.wait_for_url("**/admin/")
        overflow = page.evaluate(
            """() => {
                const card = document.querySelector("table#campaigns").closest(".card");
                return card.scrollWidth - card.clientWidth;
            }"""
        )
        rows = page.locator("table#campaigns tr[data-campaign]").count()
        browser.close()

    assert rows == 3
    assert overflow <= 0


def test_the_user_page_shows_caps_in_words_not_json(server: Tripwire) -> None:
    user = f"u-{uuid.uuid4()}"
    batch = [{"type": "track", "userId": user, "event": "Once", "properties": {"n": 1}}]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).raise_for_status()

    with admin(server) as client:
        page = client.get("/admin/users", params={"id": user}).text

    assert "once: 1 in all, 1 in session #1, 1 on the last day it fired" in page
    assert "<dt>event counts</dt><dd>Once 1</dd>" in page
    assert "&quot;" not in page.split('id="decisions"')[1]  # no JSON in the profile
