"""The dashboard in headless Chromium: login, pause/publish, editor, events, deliveries, users."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.support.paths import ARTIFACTS
from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Received, Sink

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-gpu",
    "--disable-component-update", "--no-first-run",
]
WRITE_KEY = "dashboard-key"


def campaign(campaign_id: str, event: str, url: str, **extra: Any) -> dict[str, Any]:
    """A published campaign firing on `event` to `url`, with the user id in its body."""
    return {
        "id": campaign_id,
        "name": campaign_id.replace("-", " ").title(),
        "status": "published",
        "trigger": {"event": event},
        "frequency": {"per": "event"},
        "action": {"webhook": {"url": url, "body": {"campaign": "#{campaign_id}",
                                                    "user": "#{user_id}"}}},
        **extra,
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    codes = {"/fail": 404, "/gone": 410}  # 410 Gone pauses the campaign's endpoint
    with Sink(handler=lambda request: codes.get(request.path, 200)) as sink:
        yield sink


@pytest.fixture(scope="module")
def server(sink: Sink) -> Iterator[Tripwire]:
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True, "max_attempts": 1},
        "variables": {"pings": {"event": "Ping", "stat": "count"}},
        "segments": {"pingers": {"var": "pings", "gte": 1}},
        "campaigns": [
            campaign("pinger", "Ping", sink.url + "/pinger"),
            campaign("marker", "Mark", sink.url + "/marker"),
            campaign("welcome", "Signed Up", sink.url + "/welcome",
                     frequency={"per": "user", "max_total": 1}),
            campaign("holdout", "Signed Up", sink.url + "/holdout", rate=0),
            campaign("broken", "Break", sink.url + "/fail"),
            campaign("gone", "Gone", sink.url + "/gone"),
        ],
    }
    with run_tripwire(config) as server:
        yield server


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def admin(context: BrowserContext, server: Tripwire) -> Page:
    """A page logged in to the dashboard through its login form."""
    page = context.new_page()
    page.goto(server.url + "/admin/")
    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("table#campaigns")
    return page


def shot(page: Page, name: str) -> None:
    """Save a screenshot of the page in tests/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def track(server: Tripwire, user: str, *events: str, traits: dict[str, Any] | None = None) -> None:
    """Send track events for a user in one batch (processed in order)."""
    batch: list[dict[str, Any]] = []
    if traits:
        batch.append({"type": "identify", "userId": user, "traits": traits,
                      "messageId": str(uuid.uuid4())})
    batch += [{"type": "track", "userId": user, "event": e, "messageId": str(uuid.uuid4())}
              for e in events]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).raise_for_status()


def hooks(sink: Sink, user: str, path: str) -> list[Received]:
    """Webhooks received about a user on one path."""
    return [r for r in sink.requests if r.path == path and r.json().get("user") == user]


def test_without_the_token_the_dashboard_shows_the_login_page(
    context: BrowserContext, server: Tripwire
) -> None:
    page = context.new_page()
    for path in ("/admin/", "/admin/deliveries", "/admin/users?id=x", "/admin/events"):
        page.goto(server.url + path)
        assert page.url == server.url + "/admin/login"
        assert page.is_visible("input#token")
    page.fill("#token", WRITE_KEY)  # a write key is not the admin token
    page.click("button[type=submit]")
    assert page.is_visible("text=That is not the admin token.")
    page.goto(server.url + f"/admin/login?token={WRITE_KEY}")
    assert page.is_visible("input#token")
    shot(page, "login")
    assert context.cookies() == []


def test_the_login_sets_an_http_only_strict_cookie_and_logout_clears_it(
    admin: Page, context: BrowserContext, server: Tripwire
) -> None:
    (cookie,) = context.cookies()
    assert cookie["name"] == "tripwire_admin"
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert admin.evaluate("document.cookie") == ""
    admin.click("text=Log out")
    admin.wait_for_url(server.url + "/admin/login")
    admin.goto(server.url + "/admin/")
    assert admin.url == server.url + "/admin/login"


def test_one_click_login_link(context: BrowserContext, server: Tripwire) -> None:
    page = context.new_page()
    page.goto(server.url + f"/admin/login?token={ADMIN_TOKEN}")
    assert page.url == server.url + "/admin/"
    assert page.is_visible("table#campaigns")


def test_pausing_stops_webhooks_from_the_next_event_and_publishing_resumes_them(
    admin: Page, server: Tripwire, sink: Sink
) -> None:
    user = "paused-user"
    track(server, user, "Ping")
    sink.wait_until(lambda _: len(hooks(sink, user, "/pinger")) == 1)

    row = admin.locator("tr[data-campaign=pinger]")
    row.locator("button.toggle").click()
    admin.wait_for_selector("text=Paused pinger.")
    # The next event is suppressed ("marker" shows it was processed).
    track(server, user, "Ping", "Mark")
    sink.wait_until(lambda _: len(hooks(sink, user, "/marker")) == 1)
    decision = wait_until(lambda: server.user(user))["profile"]["decisions"]["pinger"]
    assert decision["outcome"] == "suppressed" and decision["reason"] == "status"
    assert len(hooks(sink, user, "/pinger")) == 1
    assert row.locator(".badge.status").inner_text() == "paused"
    assert row.locator("button.toggle").inner_text() == "Publish"
    shot(admin, "campaigns-paused")

    row.locator("button.toggle").click()
    admin.wait_for_selector("text=Published pinger.")
    track(server, user, "Ping")
    sink.wait_until(lambda _: len(hooks(sink, user, "/pinger")) == 2, timeout=5)
    admin.reload()
    assert admin.locator("tr[data-campaign=pinger] .badge.status").inner_text() == "published"
    assert "status 1" in admin.locator("tr[data-campaign=pinger] .reasons").inner_text()


def test_the_editor_shows_every_problem_inline_and_saves_a_valid_campaign(
    admin: Page, server: Tripwire, sink: Sink
) -> None:
    admin.click("text=New campaign")
    admin.get_by_role("tab", name="Advanced: YAML").click()  # the form is the other tab
    source = admin.locator("textarea#source")
    source.fill(
        "id: from-editor\nstatus: sometimes\n"
        "trigger: {event: Edited, where: {trait: plan, equal: pro}}\n"
        f"action: {{webhook: {{url: '{sink.url}/edited', body: {{user: '#{{user_id}}'}}}}}}\n"
    )
    admin.click("#editor button[type=submit]")
    problems = admin.locator("#problems li").all_inner_texts()
    assert any(p.startswith("status:") for p in problems), problems
    assert "trigger.where: unknown operator 'equal'" in problems
    assert "equal: pro" in source.input_value()  # the text is kept for fixing
    shot(admin, "editor-problems")

    source.fill(source.input_value().replace("sometimes", "published").replace("equal", "eq"))
    admin.click("#editor button[type=submit]")
    admin.wait_for_selector("text=Saved from-editor.")
    track(server, "editor-user", "Edited", traits={"plan": "pro"})
    sink.wait_until(lambda _: len(hooks(sink, "editor-user", "/edited")) == 1)

    admin.click("tr[data-campaign=from-editor] >> text=Edit")
    assert "id: from-editor" in admin.locator("textarea#source").input_value()
    admin.click("text=Send test")  # for a sample user
    admin.wait_for_selector(".notice.ok:has-text('Test webhook delivered')")
    sink.wait_until(lambda _: len(hooks(sink, "sample-user", "/edited")) == 1)
    admin.on("dialog", lambda dialog: dialog.accept())
    admin.click("text=Delete this campaign")
    admin.wait_for_selector("text=Deleted from-editor.")
    assert admin.locator("tr[data-campaign=from-editor]").count() == 0


def test_live_events_appear_as_they_are_accepted(admin: Page, server: Tripwire) -> None:
    admin.click("nav >> text=Live events")
    admin.wait_for_selector("#live-status:text('live')")
    track(server, "live-viewer", "Checkout Started")
    admin.wait_for_selector("#events tbody tr:has-text('Checkout Started')")
    row = admin.locator("#events tbody tr:has-text('Checkout Started')").first
    assert "live-viewer" in row.inner_text()
    shot(admin, "events")


def test_deliveries_show_status_latency_and_response_and_replay(
    admin: Page, server: Tripwire, sink: Sink
) -> None:
    track(server, "delivery-user", "Break", "Mark")
    sink.wait_until(lambda _: len(hooks(sink, "delivery-user", "/marker")) == 1)

    def failed_rows() -> int:
        admin.goto(server.url + "/admin/deliveries?campaign=broken&status=failed")
        return admin.locator("#deliveries tbody tr[data-delivery]").count()

    before = wait_until(failed_rows, message="a failed delivery in the table")
    row = admin.locator("#deliveries tbody tr[data-delivery]").first
    assert "HTTP 404" in row.inner_text() and " ms" in row.inner_text()
    row.locator("text=Replay").click()
    admin.wait_for_selector(".notice.ok:has-text('Replaying')")
    wait_until(lambda: failed_rows() == before + 1, message="the replayed attempt")

    admin.goto(server.url + "/admin/deliveries?status=delivered")
    delivered = admin.locator("#deliveries tbody tr[data-delivery]").first
    assert "delivered" in delivered.inner_text() and "HTTP 200" in delivered.inner_text()
    shot(admin, "deliveries")


def test_an_endpoint_paused_after_410_is_resumed_from_the_campaign_page(
    admin: Page, server: Tripwire, sink: Sink
) -> None:
    track(server, "leaver", "Gone")

    def paused_items() -> int:
        admin.goto(server.url + "/admin/campaigns/gone")
        return admin.locator("#paused li[data-endpoint]").count()

    wait_until(paused_items, message="the paused endpoint on the campaign page")
    assert "410 Gone" in admin.locator("#paused").inner_text()
    admin.locator("#paused button:has-text('Resume')").click()
    admin.wait_for_selector(".notice.ok:has-text('Resumed 1 endpoint of gone')")
    assert admin.locator("#paused").count() == 0
    track(server, "leaver", "Gone")  # delivered to again, and paused again by its 410
    sink.wait_until(lambda _: len(hooks(sink, "leaver", "/gone")) == 2)


def test_user_lookup_explains_why_a_campaign_did_not_fire(
    admin: Page, server: Tripwire, sink: Sink
) -> None:
    user = "lookup-user"
    track(server, user, "Signed Up", traits={"plan": "pro", "email": "l@example.com"})
    sink.wait_until(lambda _: len(hooks(sink, user, "/welcome")) == 1)
    track(server, user, "Ping", "Signed Up")  # the welcome is capped now
    capped = server.user(user)["profile"]["decisions"]["welcome"]
    assert capped["reason"] == "frequency"

    admin.click("nav >> text=User lookup")
    admin.click(f".reasons a:text-is('{user}')")  # recently seen users link to their lookup
    welcome = admin.locator("#decisions tr[data-campaign=welcome]")
    assert "frequency" in welcome.inner_text()
    assert "frequency cap was reached" in welcome.locator(".why").inner_text()
    earlier = admin.locator("#decisions tr[data-earlier=welcome]")  # what happened before it
    assert earlier.count() == 1 and "fired" in earlier.inner_text()
    holdout = admin.locator("#decisions tr[data-campaign=holdout]")
    assert "control_group" in holdout.inner_text()
    assert "control group" in holdout.locator(".why").inner_text()
    assert "fired" in admin.locator("#decisions tr[data-campaign=pinger]").inner_text()
    page_text = admin.inner_text("main")
    assert "l@example.com" in page_text and "pings" in page_text and "pingers" in page_text
    assert admin.locator("#recent-events tbody tr").count() == 4
    shot(admin, "user-lookup")
