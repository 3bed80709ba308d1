"""Replaying a dead letter: sent as stored, or re-rendered from the campaign's current action
when the stored request cannot succeed (a fixed URL rescues it), and the answer says which."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from collector.admin.replay import choose
from collector.delivery.outbox import DeadLetter
from collector.webhook import WebhookRequest
from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Received, Sink
from tests.test_demo import CHROMIUM, CHROMIUM_ARGS

WRITE_KEY = "replay-key"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def campaign(campaign_id: str, url: str) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "name": "Order follow-up",
        "status": "published",
        "trigger": {"event": "Order Completed"},
        "frequency": {"per": "event"},
        "action": {"webhook": {"url": url, "body": {
            "user": "#{user_id}", "item": "#{properties.item}", "event": "#{event_id}"}}},
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    # /wrong answers 404, a permanent failure: dead-lettered at once.
    with Sink(handler=lambda request: 404 if request.path.startswith("/wrong") else 200) as sink:
        yield sink


@pytest.fixture(scope="module")
def server(sink: Sink) -> Iterator[Tripwire]:
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "max_attempts": 2},
        "campaigns": [campaign("follow-up", sink.url + "/wrong/follow-up"),
                      campaign("by-button", sink.url + "/wrong/by-button")],
    }
    with run_tripwire(config) as server:
        yield server


def order(server: Tripwire, user: str, item: str) -> str:
    message_id = str(uuid.uuid4())
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [
        {"type": "track", "userId": user, "event": "Order Completed", "messageId": message_id,
         "properties": {"item": item}}]}).raise_for_status()
    return message_id


def dead_letter(server: Tripwire, campaign_id: str, user: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        query = f"/admin/api/deliveries?campaign={campaign_id}&status=failed&limit=20"
        entries = server.admin_get(query).json()["deliveries"]
        return [d for d in entries if d["user_key"].endswith(user)]

    entry: dict[str, Any] = wait_until(found, message=f"{campaign_id}'s dead letter")[0]
    return entry


def received(sink: Sink, path: str, user: str) -> list[Received]:
    return [r for r in sink.requests if r.path == path and r.json().get("user") == user]


def fix_url(server: Tripwire, campaign_id: str, url: str) -> None:
    response = server.client.put(f"/admin/api/campaigns/{campaign_id}",
                                 json=campaign(campaign_id, url), headers=BEARER)
    assert response.status_code == 200, response.text


def test_a_dead_letter_replays_as_stored_then_a_fixed_url_rescues_it(
    server: Tripwire, sink: Sink
) -> None:
    message_id = order(server, "ada", "kettle")
    delivery = dead_letter(server, "follow-up", "ada")
    replay = f"/admin/api/deliveries/{delivery['delivery_id']}/replay"

    # Nothing changed: the stored request goes again, and fails again.
    same = server.client.post(replay, headers=BEARER)
    assert same.status_code == 200, same.text
    assert same.json()["sent"] == "stored"
    assert "renders the same request" in same.json()["reason"]
    wait_until(lambda: len(received(sink, "/wrong/follow-up", "ada")) == 2,
               message="the stored request, sent again")

    # The URL is fixed: the replay renders the current action, for the same user and event.
    fix_url(server, "follow-up", sink.url + "/right/follow-up")
    attempts = f"/admin/api/deliveries?id={delivery['delivery_id']}&status=failed"
    wait_until(lambda: len(server.admin_get(attempts).json()["deliveries"]) == 2,
               message="the second failure, a dead letter again")
    rescued = server.client.post(replay, headers=BEARER)
    assert rescued.status_code == 200, rescued.text
    answer = rescued.json()
    assert answer["sent"] == "rerendered" and answer["count"] == 1
    assert "/right/follow-up" in answer["url"] and "/right/follow-up" in answer["reason"]
    (hook,) = wait_until(lambda: received(sink, "/right/follow-up", "ada"),
                         message="the re-rendered request at the fixed URL")
    # The original event's properties and id, and the delivery's own webhook-id.
    assert hook.json() == {"user": "ada", "item": "kettle", "event": message_id}
    first = received(sink, "/wrong/follow-up", "ada")[0]
    assert hook.headers["webhook-id"] == first.headers["webhook-id"]
    assert server.client.post(replay, headers=BEARER).status_code == 404  # delivered now


def test_the_dashboard_button_says_what_it_replayed(server: Tripwire, sink: Sink) -> None:
    order(server, "grace", "grinder")
    delivery = dead_letter(server, "by-button", "grace")
    fix_url(server, "by-button", sink.url + "/right/by-button")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/admin/login?token={ADMIN_TOKEN}")
            page.goto(f"{server.url}/admin/deliveries?campaign=by-button&status=failed")
            row = page.locator(f"tr[data-delivery='{delivery['delivery_id']}']").first
            row.locator("text=Replay").click()
            notice = page.wait_for_selector(".notice.ok:has-text('Replaying')")
            assert notice is not None
            assert "re-rendered from the campaign's current action" in notice.inner_text()
        finally:
            browser.close()
    wait_until(lambda: received(sink, "/right/by-button", "grace"), message="the rescued hook")


def _letter(status: str, url: str = "https://a.example/x", body: Any = None) -> DeadLetter:
    return DeadLetter(request=_request(url, body), status=status, error="e", attempts=1,
                      dead_at=0.0)


def _request(url: str = "https://a.example/x", body: Any = None) -> WebhookRequest:
    return WebhookRequest(
        webhook_id="msg_1", campaign_id="c", variant_id=None, user_key="u", event_id="m",
        method="POST", url=url, headers={}, body=body or {"a": 1}, created_at=0.0,
    )


def test_which_request_a_replay_sends() -> None:
    # The current action cannot be rendered: the stored request, and why.
    request, sent, reason = choose(_letter("failed"), "campaign 'c' no longer exists")
    assert sent == "stored" and "no longer exists" in reason
    # Another URL: re-rendered, whatever the failure was.
    for status in ("dead", "failed", "refused", "paused"):
        fresh = _request("https://b.example/x")
        assert choose(_letter(status), fresh)[:2] == (fresh, "rerendered")
    # Same endpoint, another body: re-rendered only when the stored request cannot succeed.
    changed = _request(body={"a": 2})
    assert choose(_letter("failed"), changed)[1] == "rerendered"
    assert choose(_letter("refused"), changed)[1] == "rerendered"
    request, sent, reason = choose(_letter("dead"), changed)
    assert sent == "stored" and request.body == {"a": 1} and "another attempt" in reason
