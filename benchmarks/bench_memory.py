"""Resident memory per visitor of `tripwire serve` in memory mode, with the demo's config.

    python -m benchmarks.bench_memory [--visitors 50000] [--recent-events N]

Target (SPEC §10): ≤ 1 KB of resident memory per visitor with the demo's variables. The server
runs `demo_site/tripwire.yaml` as is (its webhooks pointed at the server's own request bin, as
`tripwire demo` does). Each visitor sends what the demo shop's tag sends for a short visit, with
the tag's full context (page, user agent, locale, library): a page view of the home page, a page
view of a product page with its `Product Viewed` event, and a page view of the cart. The figure
is the growth of the server's VmRSS (/proc/PID/status) over the visitors, after a warm-up, divided
by their number: everything the process keeps for them (profiles, the id index, messageId
dedupe and each profile's recent events, as configured), with the allocator's overhead.

Then every visitor comes back for four more messages (home, the product again, home; no cart,
so no campaign fires and no webhook is held): that growth is what each message costs (its
messageId, kept 24 h for dedupe, and its recent-event copy), so the difference between the two
figures is what a profile itself costs. `--recent-events N`
overrides the config's `state.recent_events` (50 by default) to show what that buffer costs.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import yaml

from benchmarks.common import ROOT, free_port, metric_sum, tripwire_process

DEMO_CONFIG = ROOT / "demo_site" / "tripwire.yaml"
DEMO_COLLECTOR = "http://127.0.0.1:8000"  # as written in the demo config
TARGET = 1024  # SPEC §10
STEP_TARGET = 1536  # the cost-per-event work's target on the way there
USER_AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
SHOP = "http://127.0.0.1:8080"
PRODUCTS = [
    ("kettle", "Gooseneck Kettle", 68),
    ("grinder", "Burr Grinder", 149),
    ("beans", "House Blend Beans", 18),
]
MESSAGES_PER_REQUEST = 200


def demo_config(collector: str, recent_events: int | None) -> dict[str, Any]:
    """The demo config, sending to this collector's request bin."""
    config: dict[str, Any] = yaml.safe_load(
        DEMO_CONFIG.read_text(encoding="utf-8").replace(DEMO_COLLECTOR, collector)
    )
    if recent_events is not None:
        config.setdefault("state", {})["recent_events"] = recent_events
    return config


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _message(kind: str, anonymous_id: str, path: str, title: str, **extra: Any) -> dict[str, Any]:
    """A message as the tag builds it (tag/src/tripwire.js `send`)."""
    return {
        "type": kind,
        "messageId": str(uuid.uuid4()),
        "anonymousId": anonymous_id,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "context": {
            "page": {
                "path": path,
                "url": SHOP + path,
                "title": title,
                "referrer": SHOP + "/",
                "search": "",
            },
            "locale": "en-US",
            "timezone": "Europe/Paris",
            "userAgent": USER_AGENT,
            "library": {"name": "tripwire.js", "version": "1.0.0"},
        },
        **extra,
    }


VISITORS = uuid.UUID("5f0c2a7e-0000-4000-8000-000000000000")


def visit(number: int, again: bool = False) -> list[dict[str, Any]]:
    """Visitor `number`'s messages: home, a product (page view and `Product Viewed`), the cart;
    coming back (`again`), the last page is the home page instead of the cart."""
    anonymous_id = str(uuid.uuid5(VISITORS, str(number)))  # the same visitor on every visit
    sku, name, price = PRODUCTS[number % len(PRODUCTS)]
    product = f"/products/{sku}.html"
    home = _message(
        "page", anonymous_id, "/", "Tripwire Coffee", name="Tripwire Coffee", properties={}
    )
    last = (
        _message(
            "page", anonymous_id, "/", "Tripwire Coffee", name="Tripwire Coffee", properties={}
        )
        if again
        else _message("page", anonymous_id, "/cart.html", "Cart", name="Cart", properties={})
    )
    return [
        home,
        _message("page", anonymous_id, product, name, name=name, properties={}),
        _message(
            "track",
            anonymous_id,
            product,
            name,
            event="Product Viewed",
            properties={"sku": sku, "name": name, "price": price},
        ),
        last,
    ]


def send_visitors(
    client: httpx.Client, url: str, first: int, count: int, again: bool = False
) -> int:
    """Send `count` visits in batches; returns the number of messages sent."""
    pending: list[dict[str, Any]] = []
    sent = 0

    def flush() -> None:
        body = {
            "writeKey": "demo-write-key",
            "batch": pending,
            "sentAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        }
        response = client.post(
            url + "/v1/batch", content=json.dumps(body), headers={"Content-Type": "text/plain"}
        )
        if response.status_code != 200 or "rejected" in response.json():
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:300]}")
        pending.clear()

    for number in range(first, first + count):
        pending.extend(visit(number, again))
        if len(pending) >= MESSAGES_PER_REQUEST:
            sent += len(pending)
            flush()
    if pending:
        sent += len(pending)
        flush()
    return sent


class Figures(NamedTuple):
    """What one run measured."""

    first_visit: float  # bytes per new visitor
    second_visit: float  # bytes per returning visitor (four more messages)
    messages: int
    profiles: float


def measure(visitors: int, recent_events: int | None) -> Figures:
    """RSS growth per visitor over a first and a second visit of every visitor."""
    port = free_port()
    config = demo_config(f"http://127.0.0.1:{port}", recent_events)
    with (
        tripwire_process(config, port) as (url, pid),
        httpx.Client(trust_env=False, timeout=60) as client,
    ):
        send_visitors(client, url, 0, 2_000)  # warm-up: first-use allocations, caches
        time.sleep(0.5)
        start = rss(pid)
        sent = send_visitors(client, url, 2_000, visitors)
        time.sleep(1.0)  # let background tasks settle
        first = rss(pid)
        sent += send_visitors(client, url, 2_000, visitors, again=True)
        time.sleep(1.0)
        second = rss(pid)
        profiles = metric_sum(url, "tripwire_profiles")
    return Figures((first - start) / visitors, (second - first) / visitors, sent, profiles)


def main() -> None:
    """Measure and print bytes per visitor against the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=50_000)
    parser.add_argument(
        "--recent-events",
        type=int,
        default=None,
        help="override state.recent_events (the demo config keeps the default, 50)",
    )
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("bench_memory reads /proc/PID/status (Linux only)")
    figures = measure(args.visitors, args.recent_events)
    kept = "50, the default" if args.recent_events is None else str(args.recent_events)
    per_visitor = figures.first_visit
    print(
        f"memory mode, demo config (recent_events: {kept}), {args.visitors:,} visitors, "
        f"{figures.messages:,} messages, {figures.profiles:,.0f} profiles held:"
    )
    print(
        f"  per visitor (first visit, 4 messages): {per_visitor:7,.0f} bytes   "
        f"target ≤ {TARGET} {'OK' if per_visitor <= TARGET else 'OVER'}"
    )
    print(
        f"  target ≤ {STEP_TARGET:,} bytes per visitor (cost per event): "
        + ("met" if per_visitor <= STEP_TARGET else "NOT MET")
    )
    print(
        f"  per visitor coming back (4 messages):  {figures.second_visit:7,.0f} bytes   "
        f"(messageId dedupe for 24 h and kept recent events)"
    )
    profile = per_visitor - figures.second_visit
    print(f"  so a profile itself (state and index):  {profile:7,.0f} bytes")


if __name__ == "__main__":
    main()
