"""A newcomer's first hour, as the README tells it: a known admin token, flags through make,
a clear word when the port is taken, a panel per visitor, and pages that fit a phone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.poll import wait_until
from tests.support.ports import free_port
from tests.support.server import stop_process
from tests.test_demo import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, STARTUP_SECONDS, Demo

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "secret"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`TRIPWIRE_ADMIN_TOKEN=secret tripwire demo --no-browser`, as the README says."""
    data = tmp_path_factory.mktemp("newcomer-data")
    command = [
        sys.executable, "-m", "collector.cli", "demo", "--no-browser",
        "--port", str(free_port()), "--site-port", str(free_port()), "--data-dir", str(data),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        env={**os.environ, "TRIPWIRE_ADMIN_TOKEN": TOKEN},
    )
    demo = Demo(process)
    wait_until(lambda: demo.url("Dashboard"), timeout=STARTUP_SECONDS, message="the demo's URLs")
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


def collector(demo: Demo) -> str:
    login = demo.url("Dashboard")
    assert login
    return login.split("/admin/")[0]


def test_the_demo_takes_the_admin_token_from_the_environment(demo: Demo) -> None:
    assert demo.url("Dashboard") == f"{collector(demo)}/admin/login#token={TOKEN}"
    response = httpx.get(
        f"{collector(demo)}/admin/api/campaigns/welcome-member",
        headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False,
    )
    assert response.status_code == 200
    assert response.json()["id"] == "welcome-member"


def _panel_hooks(page: Page, path: str) -> int:
    return page.locator(f"#webhook-panel li.hook:has(code:text-is('{path}'))").count()


def _others(page: Page) -> str:
    return page.locator("#webhook-panel .others").inner_text()


def _view_cart_twice(page: Page, shop: str) -> None:
    page.goto(shop + "cart")
    page.goto(shop)
    page.goto(shop + "cart")
    page.wait_for_selector("#webhook-panel .dot.live")


def test_each_visitor_sees_only_their_own_webhooks_in_the_panel(
    demo: Demo, browser: Browser
) -> None:
    shop = demo.url("Demo shop")
    assert shop
    first = browser.new_context()
    second = browser.new_context()  # another visitor: its own storage, its own visitor id
    try:
        one, two = first.new_page(), second.new_page()
        _view_cart_twice(one, shop)
        wait_until(lambda: _panel_hooks(one, "cart-twice") == 1, message="the first visitor's")
        _view_cart_twice(two, shop)
        wait_until(lambda: _panel_hooks(two, "cart-twice") == 1, message="the second visitor's")
        # Each panel has seen the other's webhook (live for the first, in the backlog for the
        # second, which arrived first) and shows only its own.
        for page in (one, two):
            wait_until(
                lambda page=page: "1 more for other visitors" in _others(page),
                message="the other visitor's webhook, counted apart",
            )
            assert _panel_hooks(page, "cart-twice") == 1
            own = page.evaluate("localStorage.getItem('tw_aid')")
            shown = page.locator("#webhook-panel li.hook pre").inner_text()
            assert f'"visitor_id": "{own}"' in shown
    finally:
        first.close()
        second.close()


SHOP_PAGES = ["", "products/grinder", "cart", "signup", "app/wishlist"]
ADMIN_PAGES = ["", "campaigns/cart-twice", "new", "events", "deliveries", "users", "segments",
               "segments/browsers", "variables", "variables/cart_value"]


def test_the_shop_and_the_dashboard_fit_a_phone(demo: Demo, browser: Browser) -> None:
    shop = demo.url("Demo shop")
    login = demo.url("Dashboard")
    assert shop and login
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page = context.new_page()
        too_wide: dict[str, int] = {}
        for path in SHOP_PAGES:
            response = page.goto(shop + path)
            assert response is not None and response.ok, path
            page.wait_for_selector("#webhook-panel")
            too_wide |= _overflow(page, "shop/" + path)
        page.screenshot(path=str(ARTIFACTS / "phone-shop.png"), full_page=True)
        page.goto(login)
        page.wait_for_url("**/admin/")  # the login page logs in with the token after the `#`
        for path in ADMIN_PAGES:
            response = page.goto(f"{collector(demo)}/admin/{path}")
            assert response is not None and response.ok, path
            assert "/admin/login" not in page.url
            too_wide |= _overflow(page, "admin/" + path)
        page.goto(f"{collector(demo)}/admin/")
        page.screenshot(path=str(ARTIFACTS / "phone-dashboard.png"), full_page=True)
        assert too_wide == {}, f"wider than a 390 px phone: {too_wide}"
    finally:
        context.close()


def _overflow(page: Page, name: str) -> dict[str, int]:
    width = int(page.evaluate("document.documentElement.scrollWidth"))
    return {name: width} if width > PHONE["width"] else {}


def _without_make_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}


def test_make_passes_flags_to_the_demo_and_to_serve() -> None:
    for target, expected in (
        ("demo", "tripwire demo --no-browser --port 9001"),
        ("serve", "tripwire serve --config examples/tripwire.yaml --port 9001"),
    ):
        result = subprocess.run(
            ["make", "--no-print-directory", "-n", target, "ARGS=--no-browser --port 9001"
             if target == "demo" else "ARGS=--port 9001"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
            env=_without_make_variables(),  # as typed in a shell, also when `make test` runs us
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout.splitlines()[-1]


def test_serve_on_a_port_in_use_says_so_in_one_line() -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = subprocess.run(
            [sys.executable, "-m", "collector.cli", "serve", "--port", str(port),
             "--config", str(ROOT / "examples" / "tripwire.yaml")],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr


def test_make_serve_keeps_its_state_apart_from_the_demo() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "serve"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, env=_without_make_variables(),
    )
    assert result.returncode == 0, result.stderr
    assert "TRIPWIRE_DATA_DIR=" in result.stdout and ".tripwire-serve" in result.stdout
