"""`tripwire replay`: a generated file of Segment messages gives the per-campaign counts that the
generator itself expects; duplicates and bad lines are skipped; identities are merged."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.config.schema import ConfigFile
from collector.config.settings import decode_config
from collector.engine.campaigns import sticky_bucket
from collector.tools.replay import run_replay
from tests.support.paths import ROOT

START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC).timestamp()
HOOK = {"webhook": {"url": "https://hooks.example/#{campaign_id}", "body": {"u": "#{visitor_id}"}}}
CONFIG = {
    "timezone": "Asia/Tokyo",
    "campaigns": [
        {
            "id": "big-order",
            "status": "published",
            "action": HOOK,
            "frequency": {"per": "event"},
            "trigger": {"event": "Order Completed", "where": {"prop": "revenue", "gt": 100}},
        },
        {
            "id": "cart-once",
            "status": "published",
            "action": HOOK,
            "frequency": {"max_total": 1},
            "trigger": {"event": "page", "where": {"context": "page.path", "starts_with": "/cart"}},
        },
        {
            "id": "half",
            "status": "published",
            "rate": 50,
            "action": HOOK,
            "frequency": {"per": "event"},
            "trigger": {"event": "Clicked"},
        },
        {
            "id": "members",
            "status": "published",
            "action": HOOK,
            "frequency": {"per": "event"},
            "target": {"users": "members"},
            "trigger": {"event": "Clicked"},
        },
        {"id": "draft", "status": "draft", "action": HOOK, "trigger": {"event": "Clicked"}},
    ],
}


def stamp(t: float, style: int) -> Any:
    if style == 0:
        return t
    if style == 1:
        return int(t * 1000)
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def generate(path: Path, users: int, events_per_user: int, seed: int) -> dict[str, Any]:
    """Write a file of messages and return the counts a correct replay must report."""
    rng = random.Random(seed)
    lines: list[str] = []
    fired: Counter[str] = Counter()
    suppressed: dict[str, Counter[str]] = {c["id"]: Counter() for c in CONFIG["campaigns"]}
    carts: set[str] = set()
    total = 0
    for u in range(users):
        anonymous_id = f"anon-{u}"
        member = u % 3 == 0
        in_half = sticky_bucket("half", f"u:member-{u}" if member else f"a:{anonymous_id}") < 5000
        t = START + rng.uniform(0, 86400)
        for n in range(events_per_user):
            t += rng.uniform(1, 600)
            message: dict[str, Any] = {
                "messageId": f"{u}-{n}",
                "anonymousId": anonymous_id,
                "timestamp": stamp(t, rng.randrange(3)),
            }
            if member:
                message["userId"] = f"member-{u}"
            kind = rng.choice(["page", "page", "Clicked", "Order Completed"])
            if kind == "page":
                page = rng.choice(["/", "/cart", "/cart/2", "/product/1"])
                # browser libraries describe the page in context.page, server ones in
                # properties: conditions on context.page see both
                in_context = rng.random() < 0.8
                message.update(
                    type="page",
                    name="Shop",
                    properties={"path": page} if not in_context or rng.random() < 0.5 else {},
                    context={"page": {"path": page}} if in_context else {},
                )
                if page.startswith("/cart"):
                    if anonymous_id in carts:
                        suppressed["cart-once"]["frequency"] += 1
                    else:
                        carts.add(anonymous_id)
                        fired["cart-once"] += 1
                else:
                    suppressed["cart-once"]["trigger"] += 1
            elif kind == "Clicked":
                message.update(type="track", event="Clicked")
                if in_half:
                    fired["half"] += 1
                else:
                    suppressed["half"]["control_group"] += 1
                if member:
                    fired["members"] += 1
                else:
                    suppressed["members"]["target"] += 1
                suppressed["draft"]["status"] += 1
            else:
                revenue = rng.choice([20, 150, "250", 99.5])
                message.update(
                    type="track", event="Order Completed", properties={"revenue": revenue}
                )
                if float(revenue) > 100:
                    fired["big-order"] += 1
                else:
                    suppressed["big-order"]["trigger"] += 1
            total += 1
            lines.append(json.dumps(message))
            if rng.random() < 0.02:
                lines.append(json.dumps(message))  # a retried send: same messageId
    duplicates = len(lines) - total
    lines.insert(len(lines) // 2, "{not json")
    lines.insert(len(lines) // 3, json.dumps({"type": "track", "anonymousId": "x", "timestamp": 1}))
    lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return {
        "events": total,
        "duplicates": duplicates,
        "invalid": 2,
        "timers_pending": 0,
        "users": users,
        "webhooks": sum(fired.values()),
        "campaigns": {
            c["id"]: {
                "fired": fired[c["id"]],
                "suppressed": dict(sorted(suppressed[c["id"]].items())),
            }
            for c in CONFIG["campaigns"]
        },
    }


def config() -> ConfigFile:
    return decode_config(CONFIG)


def test_replay_counts_match_the_generated_expectations(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    expected = generate(path, users=300, events_per_user=20, seed=7)
    out = io.StringIO()
    assert run_replay(str(path), config(), as_json=True, out=out) == 0
    report = json.loads(out.getvalue())
    assert len(report.pop("invalid_lines")) == 2
    assert report == expected
    assert expected["campaigns"]["half"]["fired"] > 0
    assert expected["campaigns"]["half"]["suppressed"]["control_group"] > 0


def test_replay_prints_a_table_and_is_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    expected = generate(path, users=40, events_per_user=10, seed=3)
    outputs = []
    for _ in range(2):
        out = io.StringIO()
        assert run_replay(str(path), config(), as_json=False, out=out) == 0
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]
    text = outputs[0]
    assert text.startswith(
        f"{expected['events']} events ({expected['duplicates']} duplicates skipped, 2 invalid"
    )
    draft = next(line for line in text.splitlines() if line.startswith("draft "))
    clicks = expected["campaigns"]["draft"]["suppressed"]["status"]
    assert draft.split() == ["draft", "0", str(clicks), "status", str(clicks)]


def test_replay_merges_identities(tmp_path: Path) -> None:
    capped = {
        "campaigns": [
            {
                "id": "once",
                "status": "published",
                "frequency": {"max_total": 2},
                "trigger": {"event": "Clicked"},
                "action": {"webhook": {"url": "https://hooks.example/"}},
            }
        ],
    }
    messages = [
        # a member clicks on their phone
        {
            "type": "track",
            "event": "Clicked",
            "userId": "u-1",
            "anonymousId": "phone",
            "timestamp": START,
        },
        # an anonymous visitor clicks on a laptop, then signs in as the same member
        {"type": "track", "event": "Clicked", "anonymousId": "laptop", "timestamp": START + 10},
        {"type": "identify", "userId": "u-1", "anonymousId": "laptop", "timestamp": START + 20},
        # two clicks on the laptop: the merged profile has already fired twice
        {"type": "track", "event": "Clicked", "anonymousId": "laptop", "timestamp": START + 30},
        {"type": "track", "event": "Clicked", "userId": "u-1", "timestamp": START + 40},
        # a click from another anonymous id, which an alias then joins to the member
        {"type": "track", "event": "Clicked", "anonymousId": "tablet", "timestamp": START + 50},
        {"type": "alias", "userId": "u-1", "previousId": "tablet", "timestamp": START + 60},
    ]
    for i, message in enumerate(messages):
        message["messageId"] = f"m{i}"
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(m) for m in messages))
    out = io.StringIO()
    run_replay(str(path), decode_config(capped), as_json=True, out=out)
    report = json.loads(out.getvalue())
    assert report["campaigns"]["once"] == {"fired": 3, "suppressed": {"frequency": 2}}
    assert report["users"] == 1


def test_batches_in_one_line_and_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "batch.jsonl"
    batch = {
        "batch": [
            {
                "type": "track",
                "event": "Clicked",
                "anonymousId": f"a{i}",
                "messageId": f"b{i}",
                "timestamp": "2026-03-02T09:00:00+09:00",
            }
            for i in range(3)
        ]
    }
    path.write_text(json.dumps(batch))
    out = io.StringIO()
    assert run_replay(str(path), config(), as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["campaigns"]["draft"]["suppressed"] == {"status": 3}
    assert (
        run_replay(str(tmp_path / "missing.jsonl"), config(), as_json=True, out=io.StringIO()) == 2
    )
    assert "cannot read" in capsys.readouterr().err


def test_the_example_events_replay_against_the_example_config() -> None:
    root = ROOT
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "replay", str(root / "examples" / "events.jsonl"),
         "--config", str(root / "examples" / "tripwire.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "6 events (0 duplicates skipped, 0 invalid lines), 2 users, 1 webhook would have been sent"
    )
    assert lines[3].split() == ["cart-followup", "1", "2", "not_in_segment", "2"]
