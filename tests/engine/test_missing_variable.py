""""Why didn't it fire?" names the placeholder a `missing_variable` suppression was missing:
in the user lookup, on the dashboard's user page, in the server's log (once per campaign and
placeholder) and in `tripwire replay`'s report."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.config.settings import decode_config
from collector.tools.replay import run_replay
from tests.support.poll import wait_until
from tests.support.server import ADMIN_TOKEN, Tripwire, run_tripwire

WRITE_KEY = "missing-test-key"
CAMPAIGN: dict[str, Any] = {
    "id": "coupon",
    "name": "Coupon",
    "status": "published",
    "trigger": {"event": "Checkout"},
    "frequency": {"per": "event"},
    "action": {
        "webhook": {
            "url": "https://hooks.example/coupon",
            "body": {"user": "#{user_id}", "code": "#{traits.coupon}"},
        }
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[Tripwire]:
    with run_tripwire({"write_keys": [WRITE_KEY], "campaigns": [CAMPAIGN]}) as running:
        yield running


def test_the_lookup_and_dashboard_name_the_missing_placeholder(server: Tripwire) -> None:
    user = f"u-{uuid.uuid4()}"
    message = {"type": "track", "userId": user, "event": "Checkout"}
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [message]}).raise_for_status()

    view = server.user(user)
    assert view is not None
    decision = view["profile"]["decisions"]["coupon"]
    assert decision["reason"] == "missing_variable"
    assert decision["detail"] == "traits.coupon"

    server.client.post("/admin/login", data={"token": ADMIN_TOKEN})
    page = server.client.get("/admin/users", params={"id": user})
    assert page.status_code == 200
    assert "#{traits.coupon} had no value, no fallback and no default" in page.text

    told = wait_until(
        lambda: [line for line in server.output().splitlines() if "#{traits.coupon}" in line],
        message="the server's log line",
    )
    assert len(told) == 1 and "campaign coupon" in told[0] and "missing_variable" in told[0]
    server.post("/v1/batch", {"writeKey": WRITE_KEY, "batch": [message]}).raise_for_status()
    assert server.user(user)["profile"]["decisions"]["coupon"]["detail"] == "traits.coupon"
    assert sum("#{traits.coupon}" in line for line in server.output().splitlines()) == 1


def test_replay_reports_which_placeholders_were_missing(tmp_path: Path) -> None:
    events = [
        {"type": "track", "userId": "a", "event": "Checkout", "messageId": "m1"},
        {"type": "identify", "userId": "b", "traits": {"coupon": "X"}, "messageId": "m2"},
        {"type": "track", "userId": "b", "event": "Checkout", "messageId": "m3"},
        {"type": "track", "anonymousId": "c", "event": "Checkout", "messageId": "m4"},
    ]
    for second, event in enumerate(events):
        event["timestamp"] = f"2026-01-01T00:00:0{second}Z"
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    config = decode_config({"campaigns": [CAMPAIGN]})

    out = io.StringIO()
    run_replay(str(path), config, as_json=True, out=out)
    table = io.StringIO()
    run_replay(str(path), config, as_json=False, out=table)

    report = json.loads(out.getvalue())["campaigns"]["coupon"]
    assert report["suppressed"] == {"missing_variable": 2}
    assert report["missing_variables"] == {"traits.coupon": 1, "user_id": 1}
    assert "(missing: #{traits.coupon} 1, #{user_id} 1)" in table.getvalue()
