"""The campaign builder in headless Chromium, used as a marketer would: no YAML typed.

From an empty dashboard: a variable and a segment ("plan is pro and viewed /pricing at least
twice in 7 days"), then a campaign on `Checkout Started` with `cart_total >= 100` for that
segment, test users only, a POST body with user traits; its reach, a dry run for a test user,
publishing it, and the webhook arriving at a real sink with the right body. The same config
comes back from the admin API, and `tripwire export` writes a file `tripwire check` passes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.support.paths import ARTIFACTS, ROOT
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Received, Sink

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-background-networking", "--disable-gpu",
    "--disable-component-update", "--no-first-run",
]
WRITE_KEY = "builder-key"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


CONFIG = {
    "write_keys": [WRITE_KEY],
    "webhooks": {"allow_private_networks": True, "max_attempts": 1},
    "test_users": {"trait": "is_test", "eq": True},
}


@pytest.fixture(scope="module")
def server() -> Iterator[Tripwire]:
    with run_tripwire(CONFIG) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    yield context
    context.close()


def login(context: BrowserContext, server: Tripwire) -> Page:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text)  # a 400 page is an answer, not a bug
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.goto(f"{server.url}/admin/login?token={ADMIN_TOKEN}")
    page.wait_for_selector("table#campaigns")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"builder-{name}.png"), full_page=True)


def no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], f"the page is {width} px wide"  # type: ignore[index]


def send(server: Tripwire, user: str, *messages: dict[str, Any]) -> None:
    batch = [{"userId": user, "messageId": str(uuid.uuid4()), **m} for m in messages]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": batch}).raise_for_status()


def pricing_views(server: Tripwire, user: str, times: int) -> None:
    page = {"type": "page", "context": {"page": {"path": "/pricing"}}}
    send(server, user, *([page] * times))


def checkout(server: Tripwire, user: str, total: float) -> None:
    send(server, user, {"type": "track", "event": "Checkout Started",
                        "properties": {"cart_total": total}})


def condition_row(page: Page, holder: str, index: int) -> Any:
    return page.locator(f"{holder} .leaf").nth(index)


def add_condition(page: Page, holder: str, kind: str, name: str, op: str, value: str) -> None:
    """Add one condition with the builder's controls (labels, not selectors of the DOM)."""
    page.locator(holder).get_by_role("button", name="Add a condition").last.click()
    row = page.locator(f"{holder} .leaf").last
    row.get_by_label("Compare").select_option(label=kind)
    if kind == "In segment":
        row.get_by_label("Segment").select_option(name)
        return
    row.get_by_label("Name").fill(name)
    row.get_by_label("Name").press("Tab")  # leaves the field (and its list of suggestions)
    row.get_by_label("Operator").select_option(label=op)
    row.get_by_label("Value").fill(value)


def without_nulls(value: Any) -> Any:
    """A document without its unset (null) keys, as a config file would write it."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def export(server: Tripwire, out: Path) -> Path:
    """`tripwire export` of a running server's config and data directory, into `out`."""
    config_file = server.data_dir.parent / "tripwire.json"
    subprocess.run([sys.executable, "-m", "collector.cli", "export", "--config", str(config_file),
                    "--data-dir", str(server.data_dir), "-o", str(out)], check=True)
    return out


def hooks(sink: Sink, path: str) -> list[Received]:
    return [r for r in sink.requests if r.path == path]


def test_a_marketer_builds_a_segment_and_a_campaign_without_yaml(
    context: BrowserContext, server: Tripwire, sink: Sink, tmp_path: Path
) -> None:
    tester, other, free = "pro-tester", "pro-buyer", "free-buyer"
    send(server, tester, {"type": "identify", "traits": {
        "plan": "pro", "is_test": True, "email": "tester@example.com"}})
    send(server, other, {"type": "identify", "traits": {"plan": "pro", "email": "o@example.com"}})
    send(server, free, {"type": "identify", "traits": {"plan": "free"}})
    checkout(server, free, 20)  # the event and its property are seen: the pickers offer them

    page = login(context, server)
    assert "No campaigns yet." in page.inner_text("#campaigns")

    # a variable: page views of /pricing in the last 7 days
    page.get_by_role("link", name="Variables").click()
    page.get_by_role("link", name="New variable").click()
    page.get_by_label("Name", exact=True).fill("pricing_views_7d")
    page.get_by_label("Counted from the event").fill("page")
    page.get_by_label("Statistic").select_option("count")
    page.get_by_label("Over the window").fill("7d")
    add_condition(page, "#def-where", "Page or context", "page.path", "is", "/pricing")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved variable pricing_views_7d.")

    # a segment: plan is pro and viewed /pricing at least twice in 7 days
    page.get_by_role("link", name="Segments").click()
    page.get_by_role("link", name="New segment").click()
    page.get_by_label("Name", exact=True).fill("pro_pricing")
    add_condition(page, "#def-condition", "Trait", "plan", "is", "pro")
    add_condition(page, "#def-condition", "Variable", "pricing_views_7d", "≥", "2")
    page.get_by_role("button", name="Count reach").click()
    # the variable counts from the first event after a segment uses it: nobody yet
    expect(page.locator("#def-reach")).to_have_text("0 of 3 known users match now")
    shot(page, "segment")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved segment pro_pricing.")
    for user in (tester, other, free):
        pricing_views(server, user, 2)
    row = page.locator("#segments tr[data-name=pro_pricing]")
    row.get_by_role("button", name="Reach").click()
    expect(row.locator("output")).to_have_text("2 of 3 known users match now")

    # the campaign
    page.get_by_role("link", name="Campaigns").click()
    page.get_by_role("link", name="New campaign").click()
    page.get_by_label("Id").fill("pro-checkout")
    page.get_by_label("Campaign name").fill("Pro checkout")
    page.get_by_label("Fires").select_option("event")
    page.get_by_label("Event", exact=True).fill("Checkout Started")
    page.get_by_label("Event", exact=True).press("Tab")
    add_condition(page, "#f-trigger-where", "Event property", "cart_total", "≥", "100")
    page.get_by_label("pro_pricing").check()
    page.get_by_label("Test users only").check()
    expect(page.get_by_label("Delivery rate (%)")).to_have_value("100")
    page.get_by_label("URL").fill(f"{sink.url}/pro")
    page.get_by_label("Method").select_option("POST")
    for field, placeholder in (("email", "traits.email"), ("plan", "traits.plan"),
                               ("cart", "properties.cart_total")):
        page.get_by_role("button", name="Add a body field").click()
        page.locator("#f-action .pair").last.get_by_label("Field", exact=True).fill(field)
        page.locator("#f-action .pair").last.get_by_label("Value", exact=True).focus()
        page.get_by_label("Placeholder").select_option(placeholder)
        page.get_by_role("button", name="Insert placeholder").click()
    page.get_by_role("button", name="Count reach").click()
    expect(page.locator("#f-reach-out")).to_have_text("1 of 3 known users match now")

    page.get_by_label("User", exact=True).fill(tester)
    page.get_by_label("Event properties (JSON, optional)").fill('{"cart_total": 150}')
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#dry-out .notice")).to_contain_text("would fire once published")
    assert "tester@example.com" in page.inner_text("#dry-request")
    assert page.locator("#dry-out tr[data-step=trigger]").inner_text().count("pass") == 1
    shot(page, "campaign-form")
    assert sink.requests == [] or not hooks(sink, "/pro")  # a dry run sends nothing

    page.get_by_label("Status").select_option("published")
    page.locator("#f-save").click()
    expect(page.locator(".notice.ok")).to_have_text("Saved pro-checkout.")
    assert page.errors == []  # type: ignore[attr-defined]

    checkout(server, other, 150)  # not a test user
    checkout(server, tester, 50)  # below 100
    checkout(server, tester, 120)
    sink.wait_until(lambda _: len(hooks(sink, "/pro")) >= 1)
    (hook,) = hooks(sink, "/pro")
    assert hook.method == "POST"
    assert hook.json() == {"email": "tester@example.com", "plan": "pro", "cart": 120}

    # what the form built is the config an admin API user would write
    campaign = without_nulls(server.admin_get("/admin/api/campaigns/pro-checkout").json())
    assert campaign["trigger"] == {"event": "Checkout Started",
                                   "where": {"prop": "cart_total", "gte": 100}}
    assert campaign["target"]["segments"] == ["pro_pricing"] and campaign["test_mode"] is True
    assert campaign["rate"] == 100 and campaign["status"] == "published"
    assert campaign["action"]["webhook"]["body"] == {
        "email": "#{traits.email}", "plan": "#{traits.plan}", "cart": "#{properties.cart_total}"}
    segment = server.admin_get("/admin/api/segments/pro_pricing").json()
    assert segment == {"all": [{"trait": "plan", "eq": "pro"},
                               {"var": "pricing_views_7d", "gte": 2}]}
    variable = server.admin_get("/admin/api/variables/pricing_views_7d").json()
    assert variable["where"] == {"context": "page.path", "eq": "/pricing"}
    assert (variable["event"], variable["stat"], variable["window"]) == ("page", "count", "7d")

    exported = export(server, tmp_path / "exported.yaml")
    written = yaml.safe_load(exported.read_text())
    assert written["segments"]["pro_pricing"] == segment
    assert written["variables"]["pricing_views_7d"]["where"] == variable["where"]
    assert [c["id"] for c in written["campaigns"]] == ["pro-checkout"]
    check = subprocess.run([sys.executable, "-m", "collector.cli", "check", str(exported)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # the same edits through the admin API give the same config
    with run_tripwire(CONFIG) as twin:
        api = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        body = campaign["action"]["webhook"]["body"]
        webhook = {"url": f"{sink.url}/pro", "method": "POST", "body": body}
        for path, document in (
            ("variables/pricing_views_7d", {
                "event": "page", "stat": "count", "window": "7d",
                "where": {"context": "page.path", "eq": "/pricing"}}),
            ("segments/pro_pricing", segment),
            ("campaigns/pro-checkout", {
                "name": "Pro checkout", "status": "published", "trigger": campaign["trigger"],
                "test_mode": True, "target": {"segments": ["pro_pricing"]},
                "frequency": {"per": "session"}, "action": {"webhook": webhook}}),
        ):
            twin.client.put(f"/admin/api/{path}", headers=api, json=document).raise_for_status()
        by_api = yaml.safe_load(export(twin, tmp_path / "by-api.yaml").read_text())
    assert by_api == written


UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !e.closest('[hidden]') && !e.closest('details:not([open])'))
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !e.getAttribute('aria-labelledby'))
  .map(e => e.outerHTML)"""


def tab_to(page: Page, name: str, limit: int = 60) -> None:
    """Press Tab until the focused element is the one called `name` (keyboard only)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return (e.labels && e.labels[0] ? e.labels[0].innerText : '')"
            " || e.getAttribute('aria-label') || e.innerText || ''; }"
        )
        if focused.strip() == name:
            return
    raise AssertionError(f"Tab never reached {name!r}")


def test_the_builders_work_by_keyboard_label_every_field_and_fit_a_phone(
    browser: Browser, server: Tripwire, sink: Sink
) -> None:
    api = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    server.client.put("/admin/api/variables/cart_views", headers=api, json={
        "event": "page", "stat": "count", "where": {"context": "page.path", "eq": "/cart"}})
    server.client.put("/admin/api/segments/carters", headers=api,
                      json={"var": "cart_views", "gte": 1}).raise_for_status()
    server.client.put("/admin/api/campaigns/phone-check", headers=api, json={
        "name": "Phone check", "status": "draft", "trigger": {"event": "Checkout Started"},
        "target": {"segments": ["carters"]},
        "action": {"webhook": {"url": f"{sink.url}/phone", "body": {"who": "#{user_id}"}}},
    }).raise_for_status()

    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(10_000)
    try:
        page = login(context, server)
        # keyboard only: a segment with one condition, saved
        page.goto(server.url + "/admin/segments/new")
        page.get_by_label("Name", exact=True).focus()
        page.keyboard.type("keyboard_pros")
        tab_to(page, "Add a condition")
        page.keyboard.press("Enter")  # the new condition's first control has the focus
        page.keyboard.press("Tab")
        page.keyboard.type("plan")
        tab_to(page, "Value")
        page.keyboard.type("pro")
        tab_to(page, "Save")
        page.keyboard.press("Enter")
        expect(page.locator(".notice.ok")).to_have_text("Saved segment keyboard_pros.")
        saved = server.admin_get("/admin/api/segments/keyboard_pros").json()
        assert saved == {"trait": "plan", "eq": "pro"}

        # a value of the wrong type: the problem is shown next to the condition, kept
        page.goto(server.url + "/admin/segments/new")
        page.get_by_label("Name", exact=True).fill("typo")
        add_condition(page, "#def-condition", "Variable", "cart_views", "≥", "two")
        page.get_by_role("button", name="Save").click()
        note = page.locator("#def-condition .leaf .field-error")
        expect(note).to_contain_text("is a number")
        value = page.locator("#def-condition .leaf").get_by_label("Value")
        assert value.input_value() == "two" and value.get_attribute("aria-invalid") == "true"
        expect(value).to_be_focused()
        no_sideways_scroll(page)
        shot(page, "phone-segment-error")

        for path in ("/admin/", "/admin/segments", "/admin/variables", "/admin/variables/new",
                     "/admin/segments/carters", "/admin/new", "/admin/campaigns/phone-check"):
            page.goto(server.url + path)
            no_sideways_scroll(page)
            assert page.evaluate(UNLABELLED) == [], path
        page.get_by_role("tab", name="Edit").click()
        no_sideways_scroll(page)
        assert page.evaluate(UNLABELLED) == []
        shot(page, "phone-campaign-form")

        # an error is shown next to the field it is about, the text kept
        page.get_by_label("URL").fill("ftp://example.com/hook")
        page.locator("#f-save").click()
        error = page.locator("#f-action .field-error")
        expect(error).to_contain_text("http")
        assert page.get_by_label("URL").get_attribute("aria-invalid") == "true"
        assert page.get_by_label("URL").input_value() == "ftp://example.com/hook"
        no_sideways_scroll(page)
        shot(page, "phone-campaign-error")

        # the form and the YAML carry each other's changes over
        page.get_by_label("Campaign name").fill("Phone check, renamed")
        page.get_by_role("tab", name="Advanced: YAML").click()
        expect(page.locator("#source")).to_have_value(re.compile("Phone check, renamed"))
        page.locator("#source").fill(page.locator("#source").input_value().replace(
            "ftp://example.com/hook", f"{sink.url}/phone2"))
        page.get_by_role("tab", name="Edit").click()
        expect(page.get_by_label("URL")).to_have_value(f"{sink.url}/phone2")
        page.locator("#f-save").click()
        expect(page.locator(".notice.ok")).to_have_text("Saved phone-check.")
        campaign = server.admin_get("/admin/api/campaigns/phone-check").json()
        assert campaign["name"] == "Phone check, renamed"
        assert campaign["action"]["webhook"]["url"] == f"{sink.url}/phone2"
        assert campaign["target"]["segments"] == ["carters"]

        # a segment a campaign uses cannot be deleted: the refusal names the campaign
        page.goto(server.url + "/admin/segments/carters")
        page.on("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Delete this segment").click()
        expect(page.locator(".notice.error")).to_contain_text("campaign 'phone-check'")
        answer = server.client.delete("/admin/api/segments/carters", headers=api)
        assert answer.status_code == 409 and "phone-check" in answer.json()["detail"]
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        context.close()


EVERY_KEY = {
    "id": "every-key", "name": "Every key", "status": "paused",
    "schedule": {"start": "2026-12-01T09:00:00+09:00", "end": "2027-01-31T18:30:00",
                 "days": ["mon", "fri"], "hours": "09:00-24:00"},
    "target": {"users": "visitors", "segments": ["browsers"]},
    "trigger": {"after": "Product Added", "wait": "2h",
                "where": {"any": [{"prop": "price", "between": [10, 20]},
                                  {"not": {"prop": "name", "in": ["a", "b"]}}]},
                "unless": {"event": "Order Completed", "where": {"prop": "revenue", "gt": 0}}},
    "frequency": {"per": "user", "max_total": 3, "max_per_day": 1},
    "stop": {"max_deliveries": 100, "max_deliveries_per_day": 10},
    "spacing": False, "exclusive": True, "priority": 5, "test_mode": True, "rate": 12.5,
    "action": {"webhook": {"url": "https://example.com/x?c=#{campaign_id}", "method": "PUT",
                           "headers": {"X-Key": "k"},
                           "body": {"nested": {"a": ["#{user_id}", 1]}, "n": 2}}},
    "goal": {"event": "Order Completed", "within": "1d", "value": "properties.revenue",
             "where": {"prop": "revenue", "gte": 1}},
}


def test_the_form_saves_every_campaign_as_it_was(browser: Browser) -> None:
    """Opening a campaign in the form and saving it changes nothing, whatever keys it uses;
    the YAML tab and the form carry each other's edits."""
    config = yaml.safe_load((ROOT / "demo_site/tripwire.yaml").read_text())
    config["campaigns"].append(EVERY_KEY)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    with run_tripwire(config) as server:
        try:
            page = login(context, server)
            for spec in config["campaigns"]:
                path = f"/admin/api/campaigns/{spec['id']}"
                before = server.admin_get(path).json()
                page.goto(f"{server.url}/admin/campaigns/{spec['id']}")
                page.get_by_role("tab", name="Edit").click()
                page.locator("#f-save").click()
                expect(page.locator(".notice.ok")).to_have_text(f"Saved {spec['id']}.")
                after = server.admin_get(path).json()
                assert {**after, "stats": None} == {**before, "stats": None}, spec["id"]

            page.goto(f"{server.url}/admin/campaigns/every-key")
            page.get_by_role("tab", name="Advanced: YAML").click()
            page.locator("#source").fill(
                page.locator("#source").input_value().replace("Every key", "Every key, again"))
            page.get_by_role("tab", name="Edit").click()
            expect(page.get_by_label("Campaign name")).to_have_value("Every key, again")
            page.get_by_label("Priority").fill("6")
            page.get_by_role("tab", name="Advanced: YAML").click()
            expect(page.locator("#source")).to_have_value(re.compile("priority: 6"))
            page.locator("#editor button[type=submit]").click()
            expect(page.locator(".notice.ok")).to_have_text("Saved every-key.")
            saved = server.admin_get("/admin/api/campaigns/every-key").json()
            assert (saved["name"], saved["priority"]) == ("Every key, again", 6)
            assert saved["trigger"]["unless"]["where"] == {"prop": "revenue", "gt": 0}
            assert page.errors == []  # type: ignore[attr-defined]
        finally:
            context.close()
