"""The JS tag in Chromium against a real collector, with the pages served from another origin.

Pages under tests/tag_pages/ carry the snippet as a site owner pastes it; the page server fills
in the collector's URL and the write key. What arrived is read back from the collector's admin API.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Request,
    Route,
    sync_playwright,
)

from tests.support.paths import ROOT, TESTS
from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Sink

PAGES = TESTS / "tag_pages"
TAG_DIR = ROOT / "tag"
DIST = TAG_DIR / "dist" / "tripwire.min.js"
PACKAGED = TAG_DIR.parent / "collector" / "ingest" / "static" / "tripwire.min.js"
BUDGET = 2048  # bytes, gzip -9
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
WRITE_KEY = "tag-test-write-key"
CONFIG: dict[str, Any] = {"write_keys": [WRITE_KEY]}
CART_EVENT = "Added to Cart"  # only the first test sends it: it fires the campaign below
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
VERSION = json.loads((TAG_DIR / "package.json").read_text())["version"]

Event = dict[str, Any]


# -- the page server: another origin than the collector's -------------------------------------


class _PageHandler(http.server.BaseHTTPRequestHandler):
    server: _PageServer

    def do_GET(self) -> None:
        name = self.path.split("?", 1)[0].lstrip("/") or "index.html"
        page = PAGES / name
        if not (name.endswith(".html") and page.is_file()):
            page = PAGES / "index.html"  # client-side routes fall back to the app shell
        body = (
            page.read_text()
            .replace("{{COLLECTOR}}", self.server.collector_url)
            .replace("{{WRITE_KEY}}", self.server.write_key)
            .encode()
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, collector_url: str, write_key: str) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.collector_url = collector_url
        self.write_key = write_key


@contextmanager
def serve_pages(collector_url: str, write_key: str = WRITE_KEY) -> Iterator[str]:
    """Serve tests/tag_pages on 127.0.0.1, pointing at the collector by its `localhost` name."""
    server = _PageServer(collector_url.replace("127.0.0.1", "localhost"), write_key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Subdomains of shop.test resolve to loopback, for pages that share a registrable domain.
    resolver = "--host-resolver-rules=MAP *.shop.test 127.0.0.1"
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, resolver])
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as receiver:
        yield receiver


def with_cart_campaign(sink: Sink) -> dict[str, Any]:
    """The test config plus a campaign that posts to the sink when something is added to a cart."""
    campaign = {
        "id": "cart-hook",
        "name": "Cart hook",
        "status": "published",
        "trigger": {"event": CART_EVENT},
        "action": {
            "webhook": {
                "url": f"{sink.url}/hook?campaign=#{{campaign_id}}",
                "method": "POST",
                "body": {
                    "visitor": "#{visitor_id}",
                    "user": "#{user_id|guest}",
                    "sku": "#{properties.sku}",
                    "price": "#{properties.price}",
                    "path": "#{page.path}",
                },
            }
        },
    }
    return {**CONFIG, "webhooks": {"allow_private_networks": True}, "campaigns": [campaign]}


@pytest.fixture(scope="module")
def collector(sink: Sink) -> Iterator[Tripwire]:
    with run_tripwire(with_cart_campaign(sink)) as server:
        yield server


@pytest.fixture(scope="module")
def site(collector: Tripwire) -> Iterator[str]:
    with serve_pages(collector.url) as url:
        yield url


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(locale="ja-JP", timezone_id="Asia/Tokyo")
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def page_errors(page: Page) -> list[str]:
    """Uncaught errors on the page: the tag must never throw into it."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def events_of(collector: Tripwire, user: str) -> list[Event]:
    """The events the collector accepted for a visitor or user, oldest first."""
    found = collector.user(user)
    return list(found["recent_events"]) if found else []


def wait_for_events(
    collector: Tripwire, user: str, count: int, timeout: float = 10.0
) -> list[Event]:
    """Wait until the collector holds at least `count` events for `user`."""
    events: list[Event] = wait_until(
        lambda: (events := events_of(collector, user)) and len(events) >= count and events,
        timeout=timeout,
        message=f"{count} events for {user}",
    )
    return events


def anonymous_id(context: BrowserContext) -> str:
    """The visitor id the tag keeps in its first-party cookie."""
    visitor: str = wait_until(
        lambda: next((c["value"] for c in context.cookies() if c["name"] == "tw_aid"), None),
        message="the tw_aid cookie",
    )
    return visitor


def stored_queue(page: Page) -> list[Event]:
    """The unsent messages the tag keeps in localStorage."""
    queue: list[Event] = json.loads(page.evaluate("localStorage.getItem('tw_q') || '[]'"))
    return queue


def record_batches(page: Page) -> list[tuple[str, dict[str, Any]]]:
    """Record the (content type, body) of every batch the page sends, as they go out.

    Playwright's sync API delivers these events during later calls on the page.
    """
    sent: list[tuple[str, dict[str, Any]]] = []

    def on_request(request: Request) -> None:
        if request.url.endswith("/v1/batch"):
            sent.append((request.headers["content-type"], json.loads(request.post_data or "{}")))

    page.on("request", on_request)
    return sent


def summary(events: list[Event]) -> list[tuple[str, str | None]]:
    return [
        (
            e["type"],
            e.get("event") or (e["context"]["page"]["path"] if e["type"] == "page" else None),
        )
        for e in events
    ]


# -- behaviour --------------------------------------------------------------------------------


def test_page_track_identify_and_navigation_arrive_in_order_and_fire_a_webhook(
    collector: Tripwire,
    sink: Sink,
    site: str,
    context: BrowserContext,
    page: Page,
    page_errors: list[str],
) -> None:
    utm = "utm_source=news&utm_medium=email&utm_campaign=spring&utm_term=shoes&utm_content=banner"
    batches = record_batches(page)
    page.goto(f"{site}/index.html?{utm}", referer="https://search.example/?q=shop")
    visitor = anonymous_id(context)
    wait_for_events(collector, visitor, 1)
    page.evaluate(f"tripwire('track', '{CART_EVENT}', {{sku: 'A-1', price: 9.5}})")
    page.evaluate("tripwire('identify', 'user-42', {plan: 'pro', email: 'a@example.com'})")
    page.click("text=Pricing")  # client-side navigation: pushState
    page.evaluate("history.replaceState({}, '', location.href)")  # same URL: no page view
    page.go_back()  # popstate back to the first URL
    page.evaluate("location.hash = 'reviews'")  # an in-page anchor: no page view
    page.click("text=Cart")
    events = wait_for_events(collector, visitor, 6)

    assert summary(events) == [
        ("page", "/index.html"),
        ("track", CART_EVENT),
        ("identify", None),
        ("page", "/pricing"),
        ("page", "/index.html"),
        ("page", "/cart"),
    ]
    first, track, identify, pricing, back, cart = events
    assert len({e["messageId"] for e in events}) == 6
    for event in events:
        assert UUID.match(event["messageId"])
        assert event["anonymousId"] == visitor
        context_ = event["context"]
        assert context_["library"] == {"name": "tripwire.js", "version": VERSION}
        assert context_["locale"] == "ja-JP"
        assert context_["timezone"] == "Asia/Tokyo"
        assert "HeadlessChrome" in context_["userAgent"]
    assert [e.get("userId") for e in events] == [None, None] + ["user-42"] * 4

    assert first["name"] == "Shop home"
    assert first["context"]["page"] == {
        "path": "/index.html",
        "url": f"{site}/index.html?{utm}",
        "title": "Shop home",
        "referrer": "https://search.example/?q=shop",
        "search": f"?{utm}",
    }
    assert first["context"]["campaign"] == {
        "source": "news",
        "medium": "email",
        "name": "spring",
        "term": "shoes",
        "content": "banner",
    }
    assert track["properties"] == {"sku": "A-1", "price": 9.5}
    assert identify["traits"] == {"plan": "pro", "email": "a@example.com"}
    assert pricing["context"]["page"]["url"] == f"{site}/pricing"
    assert pricing["context"]["page"]["title"] == "Pricing"
    assert pricing["context"]["page"]["referrer"] == f"{site}/index.html?{utm}"
    assert "campaign" not in pricing["context"]
    assert back["context"]["page"]["referrer"] == f"{site}/pricing"
    assert cart["context"]["page"]["path"] == "/cart"
    assert cart["context"]["page"]["referrer"] == f"{site}/index.html?{utm}"  # no fragment

    # On the wire: text/plain (no CORS preflight), the write key, sentAt set when each batch
    # goes out, and messages with ISO timestamps and no userId until one is known.
    wait_until(lambda: stored_queue(page) == [], message="the stored queue to empty")
    assert batches and all(content_type.startswith("text/plain") for content_type, _ in batches)
    sent = []
    for _, body in batches:
        assert body["writeKey"] == WRITE_KEY
        assert ISO_TIME.match(body["sentAt"])
        assert 1 <= len(body["batch"]) <= 20
        for message in body["batch"]:
            assert ISO_TIME.match(message["timestamp"]) and message["timestamp"] <= body["sentAt"]
            sent.append(message)
    assert [m["messageId"] for m in sent] == [e["messageId"] for e in events]
    assert "userId" not in sent[0] and "userId" not in sent[1]
    assert sent[0]["name"] == "Shop home" and sent[0]["properties"] == {}
    assert page_errors == []

    # The track fired the campaign: its webhook reached the sink with the visitor's data.
    (hook,) = sink.wait_for(1)
    assert hook.method == "POST" and hook.path == "/hook"
    assert hook.params["campaign"] == ["cart-hook"]
    assert hook.json() == {
        "visitor": visitor,
        "user": "guest",
        "sku": "A-1",
        "price": 9.5,
        "path": "/index.html",
    }


def test_calls_made_before_the_tag_loads_are_sent_in_order_under_a_renamed_global(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    page.goto(f"{site}/renamed.html")
    visitor = anonymous_id(context)
    events = wait_for_events(collector, visitor, 5)
    assert summary(events) == [
        ("page", "/renamed.html"),
        ("track", "Early Bird"),
        ("identify", None),
        ("track", "Early Bird"),
        ("page", "/renamed.html"),
    ]
    assert [e["properties"] for e in events if e["type"] == "track"] == [{"rank": 1}, {"rank": 2}]
    assert events[2]["userId"] == "early-user" and events[2]["traits"] == {"plan": "free"}
    assert events[4]["properties"]["section"] == "intro" and events[4]["userId"] == "early-user"
    # The stub's queue is gone, the renamed global is the tag, and the default name is unused.
    assert page.evaluate("typeof tw === 'function' && !tw.q && typeof tripwire === 'undefined'")


def test_closing_the_tab_right_after_a_track_still_delivers_it(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    page.goto(f"{site}/index.html")
    visitor = anonymous_id(context)
    wait_for_events(collector, visitor, 1)
    page.evaluate("tripwire('track', 'Left Quickly', {step: 3})")
    page.close()  # well within the one-second batching window
    events = wait_for_events(collector, visitor, 2)
    assert summary(events) == [("page", "/index.html"), ("track", "Left Quickly")]
    assert events[1]["properties"] == {"step": 3}


def test_many_events_go_in_batches_of_at_most_twenty_in_order(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    batches = record_batches(page)
    page.goto(f"{site}/index.html")
    visitor = anonymous_id(context)
    page.evaluate("for (var i = 0; i < 30; i++) tripwire('track', 'Scrolled', {n: i})")
    events = wait_for_events(collector, visitor, 31)
    assert [e["properties"]["n"] for e in events if e["type"] == "track"] == list(range(30))
    wait_until(lambda: stored_queue(page) == [], message="the stored queue to empty")
    sizes = [len(body["batch"]) for _, body in batches]  # request events are seen by now
    assert max(sizes) == 20 and sum(sizes) >= 31


def test_opt_out_sends_nothing_and_is_remembered(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    page.goto(f"{site}/index.html")
    visitor = anonymous_id(context)
    wait_for_events(collector, visitor, 1)
    page.evaluate("tripwire('optOut'); tripwire('track', 'Hidden')")
    assert stored_queue(page) == []
    page.reload()  # no page view: the opt-out is stored
    page.evaluate("tripwire('track', 'Hidden')")
    page.click("text=Pricing")
    assert stored_queue(page) == []
    page.evaluate("tripwire('optIn'); tripwire('track', 'Visible')")
    events = wait_for_events(collector, visitor, 2)
    assert summary(events) == [("page", "/index.html"), ("track", "Visible")]


def test_global_privacy_control_is_honoured_when_configured(
    collector: Tripwire, site: str, browser: Browser
) -> None:
    signalled = browser.new_context()
    signalled.add_init_script(
        "Object.defineProperty(navigator, 'globalPrivacyControl', {value: true})"
    )
    try:
        page = signalled.new_page()
        page.goto(f"{site}/gpc.html")
        page.evaluate("tripwire('track', 'Hidden')")
        visitor = anonymous_id(signalled)
        assert stored_queue(page) == []
        page.goto(f"{site}/index.html")  # this page's init does not ask for GPC
        events = wait_for_events(collector, visitor, 1)
        assert summary(events) == [("page", "/index.html")]
    finally:
        signalled.close()


def test_visitor_id_survives_a_reload_and_reset_makes_a_new_one(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    page.goto(f"{site}/index.html")
    visitor = anonymous_id(context)
    cookie = next(c for c in context.cookies() if c["name"] == "tw_aid")
    assert cookie["sameSite"] == "Lax" and cookie["path"] == "/"
    assert 395 * 86400 < cookie["expires"] - time.time() < 405 * 86400
    assert page.evaluate("localStorage.getItem('tw_aid')") == visitor

    page.evaluate("tripwire('identify', 'user-7')")
    page.reload()
    assert anonymous_id(context) == visitor
    events = wait_for_events(collector, visitor, 3)
    assert [(e["type"], e["anonymousId"], e.get("userId")) for e in events] == [
        ("page", visitor, None),
        ("identify", visitor, "user-7"),
        ("page", visitor, "user-7"),  # the user id is kept across the reload
    ]

    page.evaluate("tripwire('reset'); tripwire('track', 'After Reset')")
    fresh = wait_until(
        lambda: (value := anonymous_id(context)) != visitor and value, message="a new visitor id"
    )
    assert UUID.match(fresh)
    after = wait_for_events(collector, fresh, 1)
    assert summary(after) == [("track", "After Reset")]
    assert after[0].get("userId") is None
    page.reload()
    assert anonymous_id(context) == fresh


def test_visitor_cookie_on_the_configured_domain_is_shared_by_subdomains(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    port = site.rsplit(":", 1)[1]
    page.goto(f"http://www.shop.test:{port}/shared_cookie.html")
    visitor = anonymous_id(context)
    (cookie,) = [c for c in context.cookies() if c["name"] == "tw_aid"]
    assert cookie["domain"] == ".shop.test"
    page.goto(f"http://app.shop.test:{port}/shared_cookie.html")
    events = wait_for_events(collector, visitor, 2)
    assert [e["context"]["page"]["url"] for e in events] == [
        f"http://www.shop.test:{port}/shared_cookie.html",
        f"http://app.shop.test:{port}/shared_cookie.html",
    ]
    assert {e["anonymousId"] for e in events} == {visitor}


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_collector_gets_the_batch_again_later(
    status: int, collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    answered: list[int] = []

    def busy_once(route: Route) -> None:
        if answered:
            route.continue_()
        else:
            answered.append(status)
            route.fulfill(status=status, headers={"Access-Control-Allow-Origin": "*"})

    page.route("**/v1/batch", busy_once)
    with page.expect_response(lambda r: r.url.endswith("/v1/batch") and r.status == status):
        page.goto(f"{site}/index.html")
    assert [m["type"] for m in stored_queue(page)] == ["page"]
    with page.expect_response(lambda r: r.url.endswith("/v1/batch")) as retry:
        pass  # the backoff's jittered first delay is under a second
    assert retry.value.status == 200
    events = wait_for_events(collector, anonymous_id(context), 1)
    assert summary(events) == [("page", "/index.html")]
    wait_until(lambda: stored_queue(page) == [], message="the stored queue to empty")


def test_storage_and_cookies_blocked_the_tag_still_sends_and_never_throws(
    collector: Tripwire, site: str, browser: Browser
) -> None:
    blocked = browser.new_context()
    blocked.add_init_script(
        """
        (function () {
          function refuse() { throw new DOMException('blocked', 'SecurityError'); }
          Object.defineProperty(window, 'localStorage', {get: refuse});
          Object.defineProperty(Document.prototype, 'cookie', {get: refuse, set: refuse});
        })();
        """
    )
    try:
        page = blocked.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{site}/index.html")
        page.evaluate("tripwire('identify', 'blocked-user'); tripwire('track', 'Still Counted')")
        page.click("text=Pricing")
        events = wait_for_events(collector, "blocked-user", 4)
        assert summary(events) == [
            ("page", "/index.html"),  # anonymous, then merged into the identified user
            ("identify", None),
            ("track", "Still Counted"),
            ("page", "/pricing"),
        ]
        # Properties that cannot be serialised lose that one call, not the tag.
        page.evaluate(
            "var loop = {}; loop.self = loop;"
            "tripwire('track', 'Cyclic', loop); tripwire('track', 'After Cyclic')"
        )
        events = wait_for_events(collector, "blocked-user", 5)
        assert summary(events)[4:] == [("track", "After Cyclic")]
        page.evaluate("tripwire('optOut'); tripwire('track', 'Hidden'); tripwire('optIn')")
        page.evaluate("tripwire('reset'); tripwire('track', 'After Reset')")
        page.reload()
        assert errors == []
    finally:
        blocked.close()


def test_unknown_write_key_drops_the_batch_instead_of_retrying(
    collector: Tripwire, context: BrowserContext, page: Page
) -> None:
    with serve_pages(collector.url, write_key="not-a-key") as site:
        with page.expect_response(lambda r: r.url.endswith("/v1/batch")) as answer:
            page.goto(f"{site}/index.html")
        assert answer.value.status == 401
        wait_until(lambda: stored_queue(page) == [], message="the rejected batch to be dropped")


def test_events_wait_in_local_storage_while_the_collector_is_down(
    context: BrowserContext, page: Page
) -> None:
    port = free_port()
    with serve_pages(f"http://127.0.0.1:{port}") as site:
        with run_tripwire(CONFIG, port=port) as collector:
            page.goto(f"{site}/index.html")
            visitor = anonymous_id(context)
            wait_for_events(collector, visitor, 1)
            wait_until(lambda: stored_queue(page) == [], message="the page view to be settled")
        # The collector is down from here on.
        with page.expect_event("requestfailed", lambda r: r.url.endswith("/v1/batch")):
            page.evaluate("tripwire('track', 'Offline Click', {n: 1})")
        assert [m.get("event") for m in stored_queue(page)] == ["Offline Click"]
        page.reload()  # the tag comes from the browser cache; the queue from localStorage
        page.evaluate("tripwire('track', 'Offline Click', {n: 2})")
        assert [m.get("event") for m in stored_queue(page)] == [
            "Offline Click",
            None,  # the page view of the reload
            "Offline Click",
        ]
        with run_tripwire(CONFIG, port=port) as collector:
            wait_until(
                lambda: (
                    summary(events := events_of(collector, visitor))[-3:]
                    == [
                        ("track", "Offline Click"),
                        ("page", "/index.html"),
                        ("track", "Offline Click"),
                    ]
                    and events
                ),
                timeout=20,
                message="the stored events to arrive",
            )
            events = events_of(collector, visitor)
            assert [e["properties"].get("n") for e in events[-3:]] == [1, None, 2]
            wait_until(lambda: stored_queue(page) == [], message="the stored queue to empty")


# -- the build --------------------------------------------------------------------------------


def build_into(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run the tag's build with its locked esbuild, installing it first when needed."""
    node = shutil.which("node")
    assert node, "Node.js is needed to check the tag build"
    if not (TAG_DIR / "node_modules" / "esbuild").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=TAG_DIR, check=True, capture_output=True
        )
    return subprocess.run(
        [node, "build.mjs", "--out", str(out), *extra],
        cwd=TAG_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_committed_build_is_fresh(tmp_path: Path) -> None:
    fresh = tmp_path / "tripwire.min.js"
    result = build_into(fresh)
    assert result.returncode == 0, result.stderr
    assert fresh.read_bytes() == DIST.read_bytes(), (
        "tag/dist/tripwire.min.js is stale against tag/src: run `npm run build` in tag/"
    )
    assert fresh.read_bytes() == PACKAGED.read_bytes(), (
        "the collector's copy of the tag is stale: run `npm run build` in tag/"
    )


def test_check_names_a_stale_packaged_copy(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node
    build_into(tmp_path / "warm.js")  # installs esbuild when missing
    tag = tmp_path / "tag"  # a copy of the checkout's layout, so the real files stay untouched
    shutil.copytree(TAG_DIR, tag, ignore=shutil.ignore_patterns("node_modules"))
    (tag / "node_modules").symlink_to(TAG_DIR / "node_modules")
    stale = tmp_path / "collector" / "ingest" / "static" / "tripwire.min.js"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PACKAGED.read_bytes() + b"\n")
    result = subprocess.run(
        [node, "build.mjs", "--check"], cwd=tag, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "collector/ingest/static/tripwire.min.js is stale" in result.stderr


def test_committed_build_is_within_the_size_budget() -> None:
    gzipped = subprocess.run(
        ["gzip", "-9"], input=DIST.read_bytes(), capture_output=True, check=True
    )
    size = len(gzipped.stdout)
    assert size <= BUDGET, f"tag is {size} bytes gzipped; the budget is {BUDGET}"


def test_build_fails_over_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "tripwire.min.js"
    result = build_into(out, "--budget", "1000")
    assert result.returncode != 0
    assert "over budget" in result.stderr
    assert not out.exists()


def test_the_sites_signature_of_the_user_id_goes_with_every_message_until_reset(
    collector: Tripwire, site: str, context: BrowserContext, page: Page
) -> None:
    sent = record_batches(page)
    page.goto(f"{site}/index.html")
    visitor = anonymous_id(context)
    page.evaluate("tripwire('identify', 'user-8', {plan: 'pro'}, 'signed-by-the-site')")
    wait_for_events(collector, visitor, 2)
    page.reload()
    wait_for_events(collector, visitor, 3)

    def signed() -> list[tuple[str, str | None, str | None]]:
        page.evaluate("0")  # lets Playwright deliver the requests recorded meanwhile
        messages = [m for _, body in sent for m in body["batch"]]
        return [(m["type"], m.get("userId"), m["context"].get("userHash")) for m in messages]

    assert wait_until(lambda: len(signed()) >= 3 and signed(), message=lambda: f"{signed()}") == [
        ("page", None, None),
        ("identify", "user-8", "signed-by-the-site"),
        ("page", "user-8", "signed-by-the-site"),  # kept across the reload
    ]
    # the collector drops the signature once read: it is a credential, never kept or shown
    assert all("userHash" not in e["context"] for e in events_of(collector, "user-8"))
    page.evaluate("tripwire('reset'); tripwire('track', 'After Reset')")
    fresh = wait_until(
        lambda: (value := anonymous_id(context)) != visitor and value, message="a new visitor id"
    )
    wait_for_events(collector, fresh, 1)
    assert wait_until(lambda: len(signed()) >= 4 and signed())[3] == ("track", None, None)
