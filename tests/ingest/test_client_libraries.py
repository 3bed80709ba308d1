"""Segment's and RudderStack's client libraries, unchanged, each drive a campaign.

Browser libraries, in Chromium: the npm packages `@segment/analytics-next` and
`@rudderstack/analytics-js`, installed from tests/clients/package-lock.json (`make test` runs
`npm ci` there) and served by a local page server in place of their CDNs. Each is pointed at
the collector by its host alone, in each transport it offers: analytics.js one request per call
(`/v1/t`, `/v1/i`, ...) and batched (`/v1/b`); RudderStack's XHR and beacon
(`/beacon/v1/batch?writeKey=`). Every request the browser makes is checked: one to anything but
loopback is refused and fails the test.

Server libraries: `segment-analytics-python` (PyPI) and `@segment/analytics-node` (npm, run by
Node.js), with their host pointed at the collector.
"""

from __future__ import annotations

import http.server
import ipaddress
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Route,
    sync_playwright,
)
from segment.analytics.client import Client

from tests.support.paths import TESTS
from tests.support.poll import wait_until
from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Received, Sink

PAGES = TESTS / "client_pages"
CLIENTS = TESTS / "clients"
MODULES = CLIENTS / "node_modules"
SEGMENT_DIST = MODULES / "@segment" / "analytics-next" / "dist" / "umd"
RUDDERSTACK_DIST = MODULES / "@rudderstack" / "analytics-js" / "dist" / "npm" / "modern"
LIBRARIES = {
    # the path the page loads a library from -> the built file in the npm package
    "/lib/segment/": SEGMENT_DIST,
    "/analytics-next/bundles/": SEGMENT_DIST,  # analytics.js loads its chunks from its CDN here
    "/lib/rudderstack/": RUDDERSTACK_DIST / "bundled" / "umd",
}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--no-first-run",
]
WRITE_KEY = "client-library-write-key"
CART = "Added to Cart"



@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    """The packages must be there: `make test` installs them from the lockfile."""
    if not SEGMENT_DIST.is_dir() or not RUDDERSTACK_DIST.is_dir():
        pytest.fail("client libraries missing: run `npm ci` in tests/clients (make test does)")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _SiteServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        for prefix, directory in LIBRARIES.items():
            if path.startswith(prefix):
                found = directory / path.removeprefix(prefix)
                if found.resolve().parent == directory.resolve() and found.is_file():
                    self._answer(found.read_bytes(), "text/javascript")
                    return
        page = PAGES / path.lstrip("/")
        if path.endswith(".html") and page.is_file():
            text = (
                page.read_text()
                .replace("{{COLLECTOR_HOST}}", self.server.collector_host)
                .replace("{{COLLECTOR}}", f"http://{self.server.collector_host}")
                .replace("{{WRITE_KEY}}", WRITE_KEY)
            )
            self._answer(text.encode(), "text/html; charset=utf-8")
            return
        self.send_error(404)

    def _answer(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _SiteServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, collector_host: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.collector_host = collector_host


@contextmanager
def serve_site(collector_url: str) -> Iterator[str]:
    """Serve the pages and the libraries on 127.0.0.1; pages reach the collector as `localhost`."""
    server = _SiteServer(urlsplit(collector_url).netloc.replace("127.0.0.1", "localhost"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def collector(sink: Sink) -> Iterator[Tripwire]:
    campaign = {
        "id": "cart",
        "name": "Cart",
        "status": "published",
        "trigger": {"event": CART},
        "frequency": {"per": "event"},
        "action": {
            "webhook": {
                "url": f"{sink.url}/cart",
                "body": {
                    "user": "#{user_id}",
                    "visitor": "#{visitor_id|}",
                    "plan": "#{traits.plan}",
                    "sku": "#{properties.sku}",
                    "library": "#{context.library.name}",
                },
            }
        },
    }
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True},
        "campaigns": [campaign],
    }
    with run_tripwire(config) as server:
        yield server


@pytest.fixture(scope="module")
def site(collector: Tripwire) -> Iterator[str]:
    with serve_site(collector.url) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    driver: Playwright
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Traffic:
    """Every request a browser context made: loopback ones go on, any other is refused."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.refused: list[str] = []

    def route(self, route: Route) -> None:
        url = route.request.url
        self.urls.append(url)
        if _loopback(url):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort()

    def paths(self, collector: Tripwire) -> set[str]:
        """The paths (with query) of the requests that went to the collector."""
        port = urlsplit(collector.url).port
        found = set()
        for url in self.urls:
            parts = urlsplit(url)
            if parts.port == port:
                found.add(parts.path + (f"?{parts.query}" if parts.query else ""))
        return found


@pytest.fixture
def traffic(browser: Browser) -> Iterator[tuple[BrowserContext, Traffic]]:
    context = browser.new_context()
    seen = Traffic()
    context.route("**/*", seen.route)
    yield context, seen
    context.close()


def cart_webhook(sink: Sink, user: str, page: Page) -> Received:
    """The campaign's webhook about this user, once it arrived.

    Each poll asks the page something: Playwright's sync API lets the browser's requests
    through the route above only while it is being called.
    """

    def arrived() -> list[Received]:
        page.title()
        return [r for r in sink.requests if r.path == "/cart" and r.json()["user"] == user]

    (webhook,) = wait_until(arrived, message=f"the cart webhook for {user}")
    return webhook


@pytest.mark.parametrize(
    ("mode", "expected_paths"),
    [("standard", {"/v1/i", "/v1/t"}), ("batching", {"/v1/b"})],
)
def test_segment_analytics_next_drives_a_campaign(
    collector: Tripwire,
    sink: Sink,
    site: str,
    traffic: tuple[BrowserContext, Traffic],
    mode: str,
    expected_paths: set[str],
) -> None:
    context, seen = traffic
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    user = f"seg-{mode}-{uuid.uuid4()}"

    page.goto(f"{site}/segment.html?mode={mode}")
    page.evaluate(
        """async ([user, cart]) => {
            await window.analytics.identify(user, {plan: "pro"});
            await window.analytics.track(cart, {sku: "A-1"});
        }""",
        [user, CART],
    )

    body = cart_webhook(sink, user, page).json()
    assert body["plan"] == "pro" and body["sku"] == "A-1"
    assert body["library"] == "analytics.js"
    assert expected_paths <= seen.paths(collector)
    assert seen.refused == [] and errors == []


@pytest.mark.parametrize(
    ("transport", "expected_path"),
    [("xhr", "/v1/track"), ("beacon", f"/beacon/v1/batch?writeKey={WRITE_KEY}")],
)
def test_rudderstack_analytics_js_drives_a_campaign(
    collector: Tripwire,
    sink: Sink,
    site: str,
    traffic: tuple[BrowserContext, Traffic],
    transport: str,
    expected_path: str,
) -> None:
    context, seen = traffic
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    user = f"rs-{transport}-{uuid.uuid4()}"

    page.goto(f"{site}/rudderstack.html?transport={transport}")
    page.evaluate(
        """([user, cart]) => {
            window.rudder.identify(user, {plan: "pro"});
            window.rudder.track(cart, {sku: "A-1"});
        }""",
        [user, CART],
    )

    body = cart_webhook(sink, user, page).json()
    assert body["plan"] == "pro" and body["sku"] == "A-1"
    assert body["visitor"]  # the SDK's anonymous id came along
    assert expected_path in seen.paths(collector)
    assert seen.refused == [] and errors == []


def test_segment_analytics_python_drives_a_campaign(collector: Tripwire, sink: Sink) -> None:
    user = f"py-{uuid.uuid4()}"
    client = Client(WRITE_KEY, host=collector.url, sync_mode=True, max_retries=0)

    client.identify(user_id=user, traits={"plan": "pro"})
    client.track(user_id=user, event=CART, properties={"sku": "A-1"})

    body = server_webhook(sink, user)
    assert body["plan"] == "pro" and body["sku"] == "A-1"
    assert body["library"] == "analytics-python"


def test_segment_analytics_node_drives_a_campaign(collector: Tripwire, sink: Sink) -> None:
    user = f"node-{uuid.uuid4()}"

    ran = subprocess.run(
        ["node", str(CLIENTS / "analytics-node.cjs"), collector.url, WRITE_KEY, user],
        capture_output=True, text=True, timeout=60, cwd=CLIENTS,
    )

    assert ran.returncode == 0, ran.stderr
    body = server_webhook(sink, user)
    assert body["plan"] == "pro" and body["sku"] == "A-1"
    assert body["library"] == "@segment/analytics-node"


def server_webhook(sink: Sink, user: str) -> dict[str, Any]:
    """The cart webhook about a user of a server library (no visitor id: the fallback's)."""

    def arrived() -> list[Received]:
        return [r for r in sink.requests if r.path == "/cart" and r.json()["user"] == user]

    (webhook,) = wait_until(arrived, message=f"the cart webhook for {user}")
    body: dict[str, Any] = webhook.json()
    assert body["visitor"] == ""
    return body
