"""`tripwire replay --show-webhooks`: the requests that would have been sent, as on the wire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CONFIG = {
    "write_keys": ["k"],
    "campaigns": [
        {"id": "order", "status": "published", "trigger": {"event": "Order Completed"},
         "frequency": {"per": "event"},
         "action": {"webhook": {"url": "https://hooks.example/orders/#{user_id}",
                                "body": {"revenue": "#{properties.revenue}",
                                         "who": "#{user_id}"}}}},
        {"id": "look", "status": "published", "trigger": {"event": "page"},
         "frequency": {"per": "event"},
         "action": {"webhook": {"method": "GET", "url": "https://hooks.example/seen?src=tw",
                                "headers": {"X-Team": "growth"},
                                "body": {"path": "#{context.page.path}"}}}},
    ],
}
EVENTS = [
    {"type": "track", "event": "Order Completed", "userId": "ada", "messageId": "m1",
     "properties": {"revenue": 42}, "timestamp": "2026-03-02T10:00:00Z"},
    {"type": "page", "anonymousId": "v1", "messageId": "m2",
     "context": {"page": {"path": "/cart"}}, "timestamp": "2026-03-02T10:01:00Z"},
    {"type": "track", "event": "Clicked", "userId": "ada", "messageId": "m3",
     "timestamp": "2026-03-02T10:02:00Z"},
]


def replay(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "tripwire.json"
    config.write_text(json.dumps(CONFIG))
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", "replay", str(events), "--config", str(config),
         *flags], capture_output=True, text=True, timeout=60,
    )


def test_show_webhooks_prints_method_url_and_body(tmp_path: Path) -> None:
    result = replay(tmp_path, "--show-webhooks")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Requests that would have been sent (2):" in out
    assert "POST https://hooks.example/orders/ada\n" in out
    assert '  {"revenue":42,"who":"ada"}\n' in out
    # A GET carries its body in the query string, as delivery sends it; headers are shown.
    assert "GET https://hooks.example/seen?src=tw&path=%2Fcart\n" in out
    assert "  X-Team: growth\n" in out
    assert "Clicked" not in out  # no campaign fired on it: nothing to show


def test_show_webhooks_as_json(tmp_path: Path) -> None:
    result = replay(tmp_path, "--show-webhooks", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    first, second = report["requests"]
    assert (first["campaign_id"], first["method"], first["url"]) == (
        "order", "POST", "https://hooks.example/orders/ada")
    assert first["body"] == {"revenue": 42, "who": "ada"} and first["event_id"] == "m1"
    assert second["url"] == "https://hooks.example/seen?src=tw&path=%2Fcart"
    assert second["body"] is None and second["headers"] == {"X-Team": "growth"}


def test_without_the_flag_no_requests_are_listed(tmp_path: Path) -> None:
    result = replay(tmp_path, "--json")
    assert "requests" not in json.loads(result.stdout)
    assert "would have been sent (" not in replay(tmp_path).stdout
