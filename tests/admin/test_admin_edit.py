"""Editing campaigns through the admin API: GET → edit → PUT round trips, PATCH (JSON merge
patch) touches only what it names, ETag/If-Match stop two editors overwriting each other, and
the OpenAPI document lists every admin route."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from starlette.routing import Mount, Route

from collector.app import ADMIN_API_ROUTES
from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire
from tests.support.sink import Sink
from tests.test_demo import CHROMIUM, CHROMIUM_ARGS

WRITE_KEY = "edit-key"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MERGE_PATCH = {**BEARER, "Content-Type": "application/merge-patch+json"}


def welcome(url: str) -> dict[str, Any]:
    return {
        "id": "welcome",
        "name": "Welcome a new member",
        "status": "published",
        "trigger": {"event": "Signed Up"},
        "frequency": {"per": "user"},
        "action": {"webhook": {"url": url, "body": {"user": "#{user_id}"}}},
    }


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    with Sink() as sink:
        yield sink


@pytest.fixture(scope="module")
def server(sink: Sink) -> Iterator[Tripwire]:
    config = {
        "write_keys": [WRITE_KEY],
        "webhooks": {"allow_private_networks": True},
        "campaigns": [welcome(sink.url + "/welcome")],
    }
    with run_tripwire(config) as server:
        yield server


def sign_up(server: Tripwire, user: str) -> None:
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [
        {"type": "track", "userId": user, "event": "Signed Up",
         "messageId": str(uuid.uuid4())}]}).raise_for_status()


def get(server: Tripwire, campaign_id: str = "welcome") -> tuple[dict[str, Any], str]:
    response = server.client.get(f"/admin/api/campaigns/{campaign_id}", headers=BEARER)
    assert response.status_code == 200, response.text
    return response.json(), response.headers["etag"]


def test_what_get_returns_can_be_put_back(server: Tripwire, sink: Sink) -> None:
    sign_up(server, "ada")
    sink.wait_until(lambda received: any(r.path == "/welcome" for r in received))
    wait_until(lambda: get(server)[0]["stats"]["fired"] == 1, message="the stats")
    campaign, etag = get(server)
    assert "stats" in campaign and "stopped" in campaign
    campaign["name"] = "Welcome, new member"
    put = server.client.put("/admin/api/campaigns/welcome", json=campaign,
                            headers={**BEARER, "If-Match": etag})
    assert put.status_code == 200, put.text
    after, new_etag = get(server)
    assert after["name"] == "Welcome, new member" and new_etag != etag
    assert after["frequency"] == campaign["frequency"]  # nothing else changed
    assert after["frequency"]["per"] == "user"
    assert after["stats"]["fired"] == 1


def test_patch_pauses_without_touching_anything_else(server: Tripwire, sink: Sink) -> None:
    before, etag = get(server)
    patch = server.client.patch("/admin/api/campaigns/welcome", content=b'{"status": "paused"}',
                                headers={**MERGE_PATCH, "If-Match": etag})
    assert patch.status_code == 200, patch.text
    assert patch.headers["etag"] != etag
    after, _ = get(server)
    expected = {**before, "status": "paused"}
    assert {k: v for k, v in after.items() if k != "stats"} == {
        k: v for k, v in expected.items() if k != "stats"}
    # A nested change (the URL) keeps the body, method and headers; null removes a key.
    url = sink.url + "/welcome-2"
    changed = server.client.patch(
        "/admin/api/campaigns/welcome",
        content=json.dumps({"status": "published", "name": None,
                            "action": {"webhook": {"url": url}}}),
        headers=MERGE_PATCH)
    assert changed.status_code == 200, changed.text
    now, _ = get(server)
    assert now["action"]["webhook"]["url"] == url
    assert now["action"]["webhook"]["body"] == {"user": "#{user_id}"}
    assert now["frequency"] == before["frequency"] and now["name"] == ""
    # Still once per user: the user who got it does not get it again.
    sign_up(server, "ada")
    sign_up(server, "grace")
    sink.wait_until(lambda received: any(r.path == "/welcome-2" for r in received))
    assert [r.json()["user"] for r in sink.requests if r.path.startswith("/welcome")] == [
        "ada", "grace"]


def test_patch_is_validated_and_named_by_path(server: Tripwire) -> None:
    bad = server.client.patch("/admin/api/campaigns/welcome",
                              content=b'{"frequency": {"per": "fortnight"}}', headers=MERGE_PATCH)
    assert bad.status_code == 400
    assert any("frequency.per" in p for p in bad.json()["problems"]), bad.text
    not_object = server.client.patch("/admin/api/campaigns/welcome", content=b"[1]",
                                     headers=MERGE_PATCH)
    assert not_object.status_code == 400
    unknown = server.client.patch("/admin/api/campaigns/nope", content=b"{}", headers=MERGE_PATCH)
    assert unknown.status_code == 404
    wrong_type = server.client.patch("/admin/api/campaigns/welcome", content=b"status: paused",
                                     headers={**BEARER, "Content-Type": "text/yaml"})
    assert wrong_type.status_code == 415
    deep = server.client.patch("/admin/api/campaigns/welcome",
                               content=b'{"a": ' * 900 + b"1" + b"}" * 900, headers=MERGE_PATCH)
    assert deep.status_code == 400 and "not valid" in deep.json()["detail"]
    other_id = server.client.patch("/admin/api/campaigns/welcome", content=b'{"id": "other"}',
                                   headers=MERGE_PATCH)
    assert other_id.status_code == 400


def test_two_editors_cannot_overwrite_each_other(server: Tripwire) -> None:
    first, etag = get(server)
    second = dict(first)
    first["name"] = "First editor"
    second["name"] = "Second editor"
    saved = server.client.put("/admin/api/campaigns/welcome", json=first,
                              headers={**BEARER, "If-Match": etag})
    assert saved.status_code == 200
    late = server.client.put("/admin/api/campaigns/welcome", json=second,
                             headers={**BEARER, "If-Match": etag})
    assert late.status_code == 412
    assert late.json()["error"] == "precondition_failed"
    late_patch = server.client.patch("/admin/api/campaigns/welcome", content=b'{"name": "x"}',
                                     headers={**MERGE_PATCH, "If-Match": etag})
    assert late_patch.status_code == 412
    late_delete = server.client.delete("/admin/api/campaigns/welcome",
                                       headers={**BEARER, "If-Match": etag})
    assert late_delete.status_code == 412
    assert get(server)[0]["name"] == "First editor"
    # Create-only: If-None-Match: * refuses to replace an existing campaign.
    exists = server.client.put("/admin/api/campaigns/welcome", json=first,
                               headers={**BEARER, "If-None-Match": "*"})
    assert exists.status_code == 412


def _served_routes() -> set[tuple[str, str]]:
    served: set[tuple[str, str]] = set()
    for mount in ADMIN_API_ROUTES:
        assert isinstance(mount, Mount)
        for route in mount.routes:
            assert isinstance(route, Route) and route.methods
            path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", mount.path + route.path)
            served |= {(path, m.lower()) for m in route.methods if m != "HEAD"}
    return served


def test_the_openapi_document_lists_every_admin_route(server: Tripwire) -> None:
    response = server.client.get("/admin/api/openapi.json", headers=BEARER)
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    listed = {(path, method) for path, item in document["paths"].items() for method in item}
    assert listed == _served_routes()
    schemas = document["components"]["schemas"]
    # Generated from the types the API decodes: a campaign's keys are all there.
    assert {"id", "status", "trigger", "frequency", "action", "variants"} <= set(
        schemas["CampaignSpec"]["properties"])
    assert schemas["Campaign"]["properties"]["stats"]["readOnly"] is True
    every_ref = re.findall(r'"\$ref":\s*"#/components/schemas/(\w+)"', response.text)
    assert every_ref and set(every_ref) <= set(schemas)
    assert server.client.get("/admin/api/openapi.json").status_code == 401


def test_two_dashboard_editors_cannot_overwrite_each_other(server: Tripwire) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            first, second = context.new_page(), context.new_page()
            first.goto(f"{server.url}/admin/login?token={ADMIN_TOKEN}")
            for page in (first, second):
                page.goto(f"{server.url}/admin/campaigns/welcome")
                page.get_by_role("tab", name="Advanced: YAML").click()
            text = first.input_value("#source")
            first.fill("#source", text.replace("name: ", "name: Edited first ", 1))
            first.click("#editor button[type=submit]")
            first.wait_for_selector(".notice.ok:has-text('Saved welcome')")
            second.fill("#source", second.input_value("#source").replace(
                "name: ", "name: Edited second ", 1))
            second.click("#editor button[type=submit]")
            notice = second.wait_for_selector("#problems")
            assert notice is not None and "someone else saved" in notice.inner_text()
            assert "Edited second" in second.input_value("#source")  # their text is kept
        finally:
            browser.close()
    assert get(server)[0]["name"].startswith("Edited first")
