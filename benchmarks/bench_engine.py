"""Campaign engine benchmark: microseconds per event, scaling with campaigns, replay speed.

    python benchmarks/bench_engine.py [--events 40000] [--replay-events 100000]

1. 20 published campaigns and 10 variables; every campaign triggers on page views, so each
   page view considers all 20 (segments, schedules, caps, rates, variants, templates).
2. The same 20 plus 980 campaigns triggering on other events: the index must keep the cost
   per event within 1.5x of (1).
3. `tripwire replay` over a generated JSON-lines file: events per second, parsing included.

Times are CPU time of this process (the engine is pure computation), so a busy machine does
not skew them; each engine figure is the best of three passes over fresh users.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.engine.profile import UserState, new_state
from collector.events import Event
from collector.tools.replay import run_replay

START = 1_780_000_000.0
PATHS = [
    "/",
    "/cart",
    "/cart/checkout",
    "/product/1",
    "/product/2",
    "/product/3",
    "/signup",
    "/blog/a",
]

VARIABLES: dict[str, Any] = {
    "viewed_path": {
        "event": "page",
        "field": "context.page.path",
        "stat": "latest",
        "window": "session",
    },
    "cart_views_7d": {
        "event": "page",
        "stat": "count",
        "window": "7d",
        "where": {"context": "page.path", "starts_with": "/cart"},
    },
    "total_spent": {
        "event": "Order Completed",
        "field": "properties.revenue",
        "stat": "sum",
        "default": 0,
    },
    "orders_28d": {"event": "Order Completed", "stat": "count", "window": "28d"},
    "pages_today": {"event": "page", "stat": "count", "window": "today"},
    "pages_session": {"event": "page", "stat": "count", "window": "session"},
    "products_seen": {
        "event": "page",
        "field": "context.page.path",
        "stat": "distinct_count",
        "window": "7d",
        "where": {"context": "page.path", "starts_with": "/product"},
    },
    "biggest_order": {"event": "Order Completed", "field": "properties.revenue", "stat": "max"},
    "last_click": {
        "event": "Clicked",
        "field": "properties.button",
        "stat": "latest",
        "window": "24h",
    },
    "first_seen_at": {"event": "page", "stat": "first_at"},
}
SEGMENTS: dict[str, Any] = {
    "cart_abandoners": {
        "all": [
            {"var": "cart_views_7d", "gte": 2},
            {"not": {"event_count": "Order Completed", "window": "7d", "gt": 0}},
        ]
    },
    "buyers": {"var": "orders_28d", "gte": 1},
    "big_spenders": {"all": [{"segment": "buyers"}, {"var": "total_spent", "gte": 200}]},
    "pro": {"trait": "plan", "eq": "pro"},
}


def _campaign(i: int) -> dict[str, Any]:
    body = {
        "user": "#{visitor_id}",
        "path": "#{viewed_path}",
        "spent": "#{total_spent}",
        "views": "#{pages_session}",
        "seen": "#{products_seen}",
        "at": "#{timestamp}",
        "plan": "#{traits.plan|none}",
        "campaign": "#{campaign_id}",
    }
    spec: dict[str, Any] = {
        "id": f"c{i:02d}",
        "name": f"Campaign {i}",
        "status": "published",
        "trigger": {
            "event": "page",
            "where": {"context": "page.path", "starts_with": PATHS[i % len(PATHS)]},
        },
        "action": {
            "webhook": {
                "url": f"https://hooks.example/{i}?u=#{{visitor_id}}&p=#{{page.path}}",
                "headers": {"X-Campaign": "#{campaign_id}", "X-Key": "k"},
                "body": body,
            }
        },
        "priority": i % 4,
        "exclusive": i % 5 == 0,
        "frequency": {"per": "event"},  # every matching page view decides, renders and fires
    }
    if i % 4 == 1:
        spec["target"] = {"segments": ["cart_abandoners"]}
    if i % 4 == 2:
        spec["frequency"] = {"per": "session", "max_total": 2, "max_per_day": 3}
    if i % 3 == 0:
        spec["rate"] = 50
    if i % 7 == 3:
        spec["schedule"] = {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "08:00-23:00"}
    if i % 6 == 5:
        spec.pop("action")
        spec["variants"] = [
            {"id": "A", "rate": 40, "action": {"webhook": {"url": "https://hooks.example/a"}}},
            {
                "id": "B",
                "rate": 40,
                "action": {"webhook": {"url": "https://hooks.example/b", "body": body}},
            },
        ]
    return spec


def _other_campaign(i: int) -> dict[str, Any]:
    return {
        "id": f"other{i:03d}",
        "status": "published",
        "trigger": {"event": f"Other Event {i % 200}"},
        "frequency": {"per": "event"},
        "action": {
            "webhook": {"url": "https://hooks.example/other", "body": {"u": "#{visitor_id}"}}
        },
    }


def config(campaigns: int) -> dict[str, Any]:
    """A config with 20 page-view campaigns and `campaigns - 20` on other events."""
    listed = [_campaign(i) for i in range(20)] + [_other_campaign(i) for i in range(campaigns - 20)]
    return {
        "timezone": "Asia/Tokyo",
        "variables": VARIABLES,
        "segments": SEGMENTS,
        "test_users": {"trait": "is_test", "eq": True},
        "campaigns": listed,
    }


def messages(count: int, users: int, seed: int = 1) -> list[dict[str, Any]]:
    """Segment-spec messages: mostly page views, with clicks, orders and identifies."""
    rng = random.Random(seed)
    clock = [START + rng.uniform(0, 3600) for _ in range(users)]
    out = []
    for n in range(count):
        u = rng.randrange(users)
        clock[u] += rng.expovariate(1 / 300)
        message: dict[str, Any] = {
            "messageId": f"m{n}",
            "anonymousId": f"anon-{u}",
            "timestamp": clock[u],
        }
        roll = rng.random()
        if roll < 0.8:
            path = rng.choice(PATHS)
            message.update(
                type="page", context={"page": {"path": path, "url": f"https://shop.example{path}"}}
            )
        elif roll < 0.9:
            message.update(
                type="track", event="Clicked", properties={"button": rng.choice(["buy", "help"])}
            )
        elif roll < 0.97:
            message.update(
                type="track",
                event="Order Completed",
                properties={"revenue": rng.randrange(10, 300)},
            )
        else:
            message.update(
                type="identify", userId=f"user-{u}", traits={"plan": rng.choice(["free", "pro"])}
            )
        out.append(message)
    return out


def to_event(message: dict[str, Any]) -> Event:
    kind = message["type"]
    return Event(
        type=kind,
        name=message.get("event", kind),
        message_id=message["messageId"],
        anonymous_id=message["anonymousId"],
        user_id=message.get("userId"),
        properties=message.get("properties", {}),
        traits=message.get("traits", {}),
        context=message.get("context", {}),
        timestamp=message["timestamp"],
        received_at=message["timestamp"],
    )


def time_engine(campaigns: int, events: list[Event]) -> tuple[float, float, int, int]:
    """(µs per event, µs per page view, webhooks, decisions) for one pass over fresh users."""
    engine = Engine(compile_rules(decode_config(config(campaigns))))
    states: dict[str, UserState] = {}
    webhooks = decisions = 0
    page_time = 0.0
    pages = 0
    clock = time.process_time  # CPU time: steady on a busy machine, and the engine never waits
    started = clock()
    for event in events:
        key = event.anonymous_id or ""
        state = states.get(key) or new_state(key, event.timestamp)
        before = clock()
        outcome = engine.process(state, event, event.timestamp)
        if event.type == "page":
            page_time += clock() - before
            pages += 1
        states[key] = outcome.state
        webhooks += len(outcome.webhooks)
        decisions += len(outcome.decisions)
    total = clock() - started
    return total / len(events) * 1e6, page_time / pages * 1e6, webhooks, decisions


def time_replay(count: int) -> tuple[float, int]:
    """(events per second, events) for `tripwire replay` over a generated file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        path.write_text(
            "\n".join(json.dumps(m) for m in messages(count, users=max(1, count // 20), seed=2))
        )
        loaded = decode_config(config(20))
        out = io.StringIO()
        started = time.process_time()
        run_replay(str(path), loaded, as_json=True, out=out)
        elapsed = time.process_time() - started
    report = json.loads(out.getvalue())
    return report["events"] / elapsed, report["events"]


def main() -> None:
    """Run the three measurements and print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--replay-events", type=int, default=100_000)
    args = parser.parse_args()
    events = [to_event(m) for m in messages(args.events, users=2000)]
    time_engine(20, events[:2000])  # warm up
    small = min((time_engine(20, events) for _ in range(3)), key=lambda r: r[0])
    large = min((time_engine(1000, events) for _ in range(3)), key=lambda r: r[0])
    print(
        f"engine, 20 campaigns, 10 variables: {small[0]:7.1f} µs/event"
        f"  {small[1]:7.1f} µs/page view"
        f"  ({small[2]} webhooks, {small[3]} decisions over {len(events)} events)"
    )
    print(
        f"engine, 1000 campaigns (20 on page): {large[0]:7.1f} µs/event"
        f"  {large[1]:7.1f} µs/page view"
        f"  ({large[2]} webhooks, {large[3]} decisions)"
    )
    ratio = large[1] / small[1]
    print(
        f"ratio 1000/20 campaigns per page view: {ratio:.2f}x (target <= 1.5x) "
        f"{'OK' if ratio <= 1.5 else 'OVER'}"
    )
    rate, replayed = time_replay(args.replay_events)
    print(
        f"replay: {rate:,.0f} events/s ({replayed} events, parsing included; "
        f"{1e6 / rate:.1f} µs/event)"
    )


if __name__ == "__main__":
    main()
