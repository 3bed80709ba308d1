"""`tripwire demo` as a newcomer runs it: URLs printed, the shop fires webhooks into the panel."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.server import stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-gpu",
    "--disable-component-update", "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
STARTUP_SECONDS = 60


class Demo:
    """A running `tripwire demo` process and the URLs it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        """What the demo printed so far."""
        return "".join(self.lines)

    def url(self, label: str) -> str | None:
        """The URL printed after `label`, once printed."""
        found = re.search(rf"^\s*{label}\s+(http\S+)", self.output(), re.MULTILINE)
        if found is None and self.process.poll() is not None:
            raise AssertionError(f"tripwire demo exited:\n{self.output()}")
        return found.group(1) if found else None


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data = tmp_path_factory.mktemp("demo-data")
    command = [
        sys.executable, "-m", "collector.cli", "demo", "--no-browser",
        "--port", str(free_port()), "--site-port", str(free_port()), "--data-dir", str(data),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    demo = Demo(process)
    try:
        yield demo
    finally:
        stop_process(process)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def panel_hooks(page: Page, path: str) -> int:
    """How many webhooks to `/bin/demo/{path}` the shop's live panel shows."""
    return page.locator(f"#webhook-panel li.hook:has(code:text-is('{path}'))").count()


def test_demo_prints_its_urls_and_the_shop_fires_webhooks_into_the_panel(
    demo: Demo, browser: Browser
) -> None:
    wait_until(lambda: demo.url("Dashboard"), timeout=STARTUP_SECONDS, message="the demo's URLs")
    shop, bin_view = demo.url("Demo shop"), demo.url("Request bin")
    login = demo.url("Dashboard")
    assert shop and bin_view and login
    assert shop.startswith("http://localhost:") and login.startswith("http://127.0.0.1:")
    assert "/admin/login#token=" in login  # after `#`: never sent to the server or a proxy

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    page.goto(shop)
    page.wait_for_selector("#webhook-panel .dot.live")

    # A product, into the cart, then the cart a second time: the cart-twice campaign fires.
    page.click("text=Burr Grinder")
    page.click("#add")
    page.click("text=View your cart")
    wait_until(lambda: page.locator("table.cart tbody tr").count() == 1, message="the cart's row")
    page.click("header >> text=Kettle")
    page.click("header >> text=Cart")
    wait_until(lambda: panel_hooks(page, "cart-twice") == 1, message="the cart-twice webhook")
    cart_hook = page.locator("#webhook-panel li.hook:has(code:text-is('cart-twice')) pre")
    assert '"cart_views": 2' in cart_hook.inner_text()

    # Sign-up: identify + track, and a webhook with the new member's traits.
    page.click("header >> text=Sign up")
    page.fill("#name", "Ada Lovelace")
    page.fill("#email", "ada@example.com")
    page.select_option("#plan", "pro")
    page.click("form.signup button[type=submit]")
    wait_until(lambda: panel_hooks(page, "welcome-member") == 1, message="the sign-up webhook")
    welcome = page.locator("#webhook-panel li.hook:has(code:text-is('welcome-member')) pre")
    assert '"email": "ada@example.com"' in welcome.inner_text()
    assert '"plan": "pro"' in welcome.inner_text()

    # The test-mode campaign fires only for a test user (?tripwire_test=1).
    assert panel_hooks(page, "grinder-preview") == 0
    page.goto(shop + "products/grinder?tripwire_test=1")
    wait_until(lambda: panel_hooks(page, "grinder-preview") == 1, message="the test-mode webhook")

    # The single-page app: tab changes are client-side, the URL follows.
    page.click("header >> text=My account")
    page.click(".tabs >> text=Wishlist")
    assert page.url.endswith("/app/wishlist") and "wishlist" in page.inner_text("#view")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-shop.png"))

    # The bin holds the same webhooks, and the one-click login opens the dashboard.
    feed = httpx.get(bin_view.replace("/view", "/requests"), trust_env=False).json()
    paths = {r["path"] for r in feed["requests"]}
    assert {"/bin/demo/cart-twice", "/bin/demo/welcome-member"} <= paths
    admin = context.new_page()
    admin.goto(login)
    admin.wait_for_url("**/admin/")  # the login page logs in with the token after the `#`
    rows = admin.locator("table#campaigns tr[data-campaign]")
    assert rows.count() == 5
    assert admin.locator("tr[data-campaign=cart-twice] .fired").inner_text() == "1"
    admin.screenshot(path=str(ARTIFACTS / "demo-dashboard.png"), full_page=True)

    # The grinder was left in the cart, never checked out: 20 s after it was added, the
    # absence trigger fires.
    wait_until(
        lambda: panel_hooks(page, "cart-abandoned") == 1, timeout=40,
        message="the abandoned-cart webhook",
    )
    abandoned = page.locator("#webhook-panel li.hook:has(code:text-is('cart-abandoned')) pre")
    assert '"product": "Burr Grinder"' in abandoned.inner_text()

    # Ctrl+C stops it, even with the shop's live panel still connected (a live stream left
    # open would keep the server waiting for it forever).
    demo.process.send_signal(signal.SIGINT)
    demo.process.wait(30)
    assert demo.process.returncode == 0
    context.close()


def test_the_demo_refuses_a_port_in_use() -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "collector.cli", "demo", "--no-browser", "--port", str(port),
             "--site-port", str(free_port())],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stderr
