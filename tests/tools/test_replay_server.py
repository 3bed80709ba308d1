"""`tripwire replay` answers what the running server decides for the same 100,000 events."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.poll import wait_until
from tests.support.server import Tripwire, run_tripwire
from tests.support.sink import Sink

EVENTS = 100_000
USERS = 2_000
START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC).timestamp()
PATHS = ["/", "/products/1", "/products/2", "/cart", "/checkout", "/signup", "/about"]


def config(sink_url: str) -> dict[str, Any]:
    hook = {"webhook": {"url": sink_url + "/hook", "body": {"user": "#{user_id|anon}"}}}
    return {
        "write_keys": ["k"],
        "timezone": "Asia/Tokyo",
        "session_timeout": "30m",
        "webhooks": {"allow_private_networks": True},
        "variables": {
            "cart_views": {
                "event": "page",
                "where": {"context": "page.path", "eq": "/cart"},
                "stat": "count",
                "window": "session",
            },
            "spent_7d": {
                "event": "Order Completed",
                "field": "properties.revenue",
                "stat": "sum",
                "window": "7d",
                "default": 0,
            },
        },
        "segments": {"big_spenders": {"var": "spent_7d", "gte": 100}},
        "campaigns": [
            {
                "id": "cart-twice",
                "status": "published",
                "trigger": {"event": "page", "where": {"context": "page.path", "eq": "/cart"}},
                "target": {"users": "all"},
                "frequency": {"per": "session", "max_total": 1},
                "action": hook,
            },
            {
                "id": "half-of-members",
                "status": "published",
                "trigger": {"event": "Order Completed"},
                "target": {"users": "members"},
                "rate": 50,
                "frequency": {"per": "user", "max_per_day": 1},
                "action": hook,
            },
            {
                "id": "big-spender-ab",
                "status": "published",
                "trigger": {"event": "page"},
                "target": {"segments": ["big_spenders"]},
                "exclusive": True,
                "priority": 2,
                "frequency": {"per": "user", "max_total": 2},
                "variants": [
                    {"id": "a", "rate": 40, "action": hook},
                    {"id": "b", "rate": 40, "action": hook},
                ],
            },
            {
                "id": "office-hours",
                "status": "published",
                "schedule": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-18:00"},
                "exclusive": True,
                "priority": 1,
                "frequency": {"per": "session", "max_total": 1},
                "action": hook,
            },
        ],
    }


def generate(path: Path) -> list[dict[str, Any]]:
    """Deterministic traffic: page views, orders and sign-ups over three days."""
    rng = random.Random(7)
    clock = {u: START + rng.uniform(0, 3 * 86400) for u in range(USERS)}
    messages: list[dict[str, Any]] = []
    for n in range(EVENTS):
        user = rng.randrange(USERS)
        clock[user] += rng.choice([5, 30, 120, 600, 2400, 7200])
        base: dict[str, Any] = {
            "messageId": f"m-{n}",
            "anonymousId": f"anon-{user}",
            "timestamp": datetime.fromtimestamp(clock[user], UTC).isoformat(),
        }
        if user % 3 == 0:
            base["userId"] = f"user-{user}"
        roll = rng.random()
        if roll < 0.85:
            page = rng.choice(PATHS)
            messages.append({**base, "type": "page", "context": {"page": {"path": page}}})
        elif roll < 0.97:
            revenue = rng.choice([10, 40, 90])
            messages.append(
                {
                    **base,
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {"revenue": revenue},
                }
            )
        else:
            messages.append({**base, "type": "identify", "traits": {"plan": "pro"}})
        if n % 2000 == 0:
            messages.append(messages[-1])  # a resent message is a duplicate on both paths
    path.write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    return messages


def server_counts(server: Tripwire) -> dict[str, dict[str, Any]]:
    counts: dict[str, dict[str, Any]] = {}
    for line in server.metrics().splitlines():
        if not line.startswith("tripwire_campaign_decisions_total{"):
            continue
        sample, _, value = line.rpartition(" ")
        labels = dict(part.split("=", 1) for part in sample[sample.index("{") + 1 : -1].split(","))
        campaign, outcome, reason = (
            labels[k].strip('"') for k in ("campaign", "outcome", "reason")
        )
        entry = counts.setdefault(campaign, {"fired": 0, "suppressed": Counter()})
        if outcome == "fired":
            entry["fired"] += int(float(value))
        else:
            entry["suppressed"][reason] += int(float(value))
    return {
        c: {"fired": e["fired"], "suppressed": dict(e["suppressed"])} for c, e in counts.items()
    }


def test_replay_of_100k_events_matches_the_server(tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    messages = generate(events_file)
    with Sink() as sink:
        settings = config(sink.url)
        config_file = tmp_path / "tripwire.json"
        config_file.write_text(json.dumps(settings))
        replayed = subprocess.run(
            [
                sys.executable,
                "-m",
                "collector.cli",
                "replay",
                str(events_file),
                "--json",
                "--config",
                str(config_file),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        report = json.loads(replayed.stdout)
        assert report["events"] == EVENTS and report["duplicates"] == 50

        with run_tripwire(settings) as server:
            for start in range(0, len(messages), 1000):
                response = server.post(
                    "/v1/batch", {"writeKey": "k", "batch": messages[start : start + 1000]}
                )
                assert response.status_code == 200, response.text
            expected = {
                cid: {"fired": c["fired"], "suppressed": c["suppressed"]}
                for cid, c in report["campaigns"].items()
                if c["fired"] or c["suppressed"]
            }
            assert all(entry["fired"] > 0 for entry in expected.values()), expected
            wait_until(
                lambda: server_counts(server) == expected,
                timeout=120,
                message=f"server decisions to equal replay's {expected}",
            )
            wait_until(
                lambda: len(sink.requests) >= report["webhooks"],
                timeout=120,
                message="every fired webhook to arrive",
            )
