"""The dashboard's results charts, read by headless Chromium: conversion per arm with its
interval, and fired/suppressed decisions per hour, agreeing with the admin API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.admin.test_dashboard import CHROMIUM, CHROMIUM_ARGS
from tests.support.paths import ARTIFACTS
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire

WRITE_KEY = "results-key"
HOOK = "http://127.0.0.1:9/hook"


def config() -> dict[str, Any]:
    return {
        "write_keys": [WRITE_KEY],
        "campaigns": [
            {
                "id": "offer",
                "status": "published",
                "trigger": {"event": "Added to Cart"},
                "frequency": {"per": "user", "max_total": 1},
                "variants": [
                    {"id": "coupon", "rate": 50, "action": {"webhook": {"url": HOOK}}},
                    {"id": "banner", "rate": 25, "action": {"webhook": {"url": HOOK}}},
                ],
                "goal": {"event": "Order Completed", "within": "7d"},
            },
        ],
    }


def message(name: str, user: str) -> dict[str, Any]:
    return {"type": "track", "event": name, "anonymousId": user, "messageId": uuid.uuid4().hex}


@pytest.fixture(scope="module")
def server() -> Iterator[Tripwire]:
    with run_tripwire(config()) as server:
        batch = []
        for n in range(160):
            user = f"v{n}"
            batch.append(message("Added to Cart", user))
            batch.append(message("Added to Cart", user))  # capped: a suppressed decision
            if n % 4 == 0:
                batch.append(message("Order Completed", user))
        for start in range(0, len(batch), 100):
            chunk = batch[start : start + 100]
            server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": chunk}).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def logged_in(browser: Browser, server: Tripwire, path: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(10_000)
    page.goto(server.url + f"/admin/login?token={ADMIN_TOKEN}")
    page.goto(server.url + path)
    return page


def read_arms(page: Page) -> dict[str, dict[str, Any]]:
    rows = page.locator("svg.chart.conversion g.arm")
    found: dict[str, dict[str, Any]] = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        name = row.get_attribute("data-arm") or ""
        found[name] = {
            "assigned": int(row.get_attribute("data-assigned") or -1),
            "converted": int(row.get_attribute("data-converted") or -1),
            "low": float(row.get_attribute("data-low") or "nan"),
            "high": float(row.get_attribute("data-high") or "nan"),
            "label": row.get_attribute("data-label"),
            "text": row.text_content() or "",
        }
    return found


@pytest.mark.parametrize("path", ["/admin/", "/admin/campaigns/offer"])
def test_the_results_chart_shows_every_arm_as_the_api_does(
    browser: Browser, server: Tripwire, path: str
) -> None:
    page = logged_in(browser, server, path)
    chart = page.locator("svg.chart.conversion[data-campaign=offer]")
    chart.wait_for()
    api = server.admin_get("/admin/api/campaigns/offer/results").json()
    shown = read_arms(page)
    assert list(shown) == [a["arm"] for a in api["arms"]] == ["coupon", "banner", "control"]
    for arm in api["arms"]:
        mine = shown[arm["arm"]]
        assert (mine["assigned"], mine["converted"]) == (arm["assigned"], arm["converted"])
        assert (mine["low"], mine["high"]) == pytest.approx(tuple(arm["interval"]))
        assert f"({arm['converted']}/{arm['assigned']})" in mine["text"]
    assert sum(a["assigned"] for a in api["arms"]) == 160
    assert sum(a["converted"] for a in api["arms"]) == 40
    # the banner arm and the control group each hold about 40 users: still collecting
    assert shown["banner"]["label"] == "collecting" and "collecting data" in shown["banner"]["text"]
    label = chart.get_attribute("aria-label") or ""
    assert label.startswith("Conversion per arm of offer: coupon")
    # each bar's whisker spans its interval: Chromium lays it out inside the chart
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"results-{path.strip('/').replace('/', '-')}.png"))
    page.close()


def test_the_hourly_chart_counts_fired_and_suppressed_decisions(
    browser: Browser, server: Tripwire
) -> None:
    page = logged_in(browser, server, "/admin/campaigns/offer")
    chart = page.locator("svg.chart.hourly[data-campaign=offer]")
    chart.wait_for()
    hours = chart.locator("g.hour")
    assert hours.count() == 24
    fired = sum(int(hours.nth(i).get_attribute("data-fired") or 0) for i in range(24))
    suppressed = sum(int(hours.nth(i).get_attribute("data-suppressed") or 0) for i in range(24))
    stats = server.admin_get("/admin/api/campaigns/offer").json()["stats"]
    assert fired == stats["fired"] > 0
    assert suppressed == sum(stats["suppressed"].values()) > 0
    assert f"{fired} fired" in (chart.get_attribute("aria-label") or "")
    page.close()
