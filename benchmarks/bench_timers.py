"""What pending absence timers cost ingest, and how late due timers fire (memory mode).

Two `tripwire serve` processes with the same config (bench_ingest's 20 campaigns and 10
variables, plus an abandoned-cart absence trigger waiting an hour) run side by side on core 0;
one holds 10,000 pending timers (10,000 of wrk's 100,000 visitors added to cart), the other
none. wrk drives them in turn, in alternating order, four rounds each (with two, the same code
read anywhere from 0.88 to 1.14 on a shared machine), and the ratio of their throughputs (and
of the server CPU time per message, steadier on a shared machine) is the cost of the timers.
Target: with timers ≥ 0.95 × without.

The same comparison in this process, without HTTP: the memory store's CPU time per page view
(time.process_time, best of ten passes over 20,000 events), with and without 10,000 pending
timers; the machine's load does not skew it as much as throughput.

Then 1,000 timers with a 3 s wait are armed at once on a fresh server, and for each the time
from its due time to its firing (the decision's time, target: within 1 s) and to its webhook's
arrival at a local receiver are measured.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from benchmarks.bench_ingest import load, pipeline_config
from benchmarks.common import bare_app, free_port, tripwire, wrk
from collector.config.settings import decode_config
from collector.engine.engine import Engine, compile_rules
from collector.events import Event
from collector.memory.store import MemoryStore
from collector.store.pipeline import ingest

PENDING = 10_000
LATE_TIMERS = 1_000
LATE_WAIT = 3.0


def timer_config(sink_url: str, wait: str) -> dict[str, Any]:
    """The ingest benchmark's config plus an absence trigger."""
    config = pipeline_config(sink_url)
    config["campaigns"].append(
        {
            "id": "abandoned",
            "status": "published",
            "trigger": {"after": "Added to Cart", "wait": wait,
                        "unless": {"event": "Order Completed"}},
            "frequency": {"per": "user", "max_total": 1},
            "action": {"webhook": {"url": f"{sink_url}/abandoned",
                                   "body": {"user": "#{visitor_id}"}}},
        }
    )
    return config


def arm(url: str, users: range) -> None:
    """Send `Added to Cart` for every visitor number in `users`, 500 per batch."""
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        numbers = list(users)
        for start in range(0, len(numbers), 500):
            batch = []
            for n in numbers[start : start + 500]:
                batch.append({
                    "type": "track", "event": "Added to Cart", "anonymousId": f"visitor-{n}",
                    "messageId": f"cart-{n}", "properties": {"sku": "grinder"},
                })
            response = client.post("/v1/batch", json={"writeKey": "bench-key", "batch": batch})
            response.raise_for_status()


def pending_timers(url: str, visitor: str) -> int:
    """How many timers the lookup shows for one visitor."""
    response = httpx.get(
        f"{url}/admin/api/users/{visitor}", trust_env=False,
        headers={"Authorization": "Bearer bench-token"},
    )
    return len(response.json()["profile"]["timers"]) if response.status_code == 200 else 0


@contextmanager
def receiver() -> Iterator[tuple[str, dict[str, float]]]:
    """A local HTTP receiver recording when each visitor's webhook arrived."""
    arrivals: dict[str, float] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            arrivals.setdefault(json.loads(body)["user"], time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", arrivals
    finally:
        server.shutdown()


def store_cpu(pending: bool) -> float:
    """CPU µs per page view through a memory store (best of ten), after 10,000 visitors added
    to cart (`pending`: each arming a timer) or did something else (no timer)."""
    config = decode_config(timer_config("http://127.0.0.1:9", "1h"))
    engine = Engine(compile_rules(config))
    store = MemoryStore(lambda: engine, config.state, None)
    now = time.time()

    def event(name: str, n: int, message_id: str) -> Event:
        page = {"path": f"/products/{n % 50}", "url": "https://shop.example/", "title": "P"}
        return Event(
            type="page" if name == "page" else "track", name=name, message_id=message_id,
            anonymous_id=f"visitor-{n}", context={"page": page}, timestamp=now, received_at=now,
        )

    async def run() -> float:
        for n in range(PENDING):
            name = "Added to Cart" if pending else "Added to Wishlist"
            await ingest(store, [event(name, n, f"cart-{n}")], now)
        best = float("inf")
        for attempt in range(10):
            events = [event("page", (i * 7919) % 20_000, f"p{attempt}-{i}") for i in range(20_000)]
            began = time.process_time()
            for item in events:
                await ingest(store, [item], now)
            best = min(best, (time.process_time() - began) / len(events) * 1e6)
        return best

    return asyncio.run(run())


def main() -> None:
    """Measure and print the figures and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    os.environ["TRIPWIRE_ADMIN_TOKEN"] = "bench-token"
    port_a, port_b = free_port(), free_port()
    with (
        bare_app(free_port(), cores="1") as sink,
        tripwire(timer_config(sink, "1h"), port_a) as without,
        tripwire(timer_config(sink, "1h"), port_b) as with_timers,
    ):
        arm(with_timers, range(1, PENDING + 1))
        assert pending_timers(with_timers, "visitor-1") == 1, "timers were not armed"
        for url in (without, with_timers):
            wrk(url + "/v1/batch", seconds=1)  # warm up
        figures: dict[str, list[tuple[float, float | None]]] = {"without": [], "with": []}
        runs = [("without", without, port_a), ("with", with_timers, port_b)]
        for round_ in range(args.rounds):
            for name, url, port in runs if round_ % 2 == 0 else runs[::-1]:  # no order bias
                figures[name].append(load(url, port, args.seconds))
        still = pending_timers(with_timers, "visitor-2")
    rate = {k: sum(r for r, _ in v) / len(v) for k, v in figures.items()}
    cpus = {k: [c for _, c in v if c is not None] for k, v in figures.items()}
    cpu = {k: sum(v) / len(v) if v else None for k, v in cpus.items()}
    print(f"no pending timers:              {rate['without']:10,.0f} requests/s"
          + (f"   server CPU {cpu['without']:6.1f} µs/message" if cpu["without"] else ""))
    print(f"{PENDING:,} pending timers:         {rate['with']:10,.0f} requests/s"
          + (f"   server CPU {cpu['with']:6.1f} µs/message" if cpu["with"] else ""))
    line = f"ratio with/without timers: {rate['with'] / rate['without']:.3f} (target ≥ 0.95)"
    if cpu["with"] and cpu["without"]:
        line += f"   by CPU {cpu['without'] / cpu['with']:.3f}"
    line += f"   ({still} timer still pending for a sampled visitor)"
    print(line + (": met" if rate["with"] / rate["without"] >= 0.95 else ": NOT MET"))
    base, loaded = store_cpu(False), store_cpu(True)
    print(f"memory store, CPU per page view: {base:.1f} µs without timers, {loaded:.1f} µs with "
          f"{PENDING:,} pending: ratio {base / loaded:.3f} (target ≥ 0.95): "
          + ("met" if base / loaded >= 0.95 else "NOT MET"))

    with receiver() as (hooks, arrivals), tripwire(timer_config(hooks, f"{LATE_WAIT}s"),
                                                   free_port()) as url:
        arm(url, range(1, LATE_TIMERS + 1))
        deadline = time.monotonic() + LATE_WAIT + 30
        while len(arrivals) < LATE_TIMERS and time.monotonic() < deadline:
            time.sleep(0.1)
        fired, arrived = lateness(url, arrivals)
    if not fired:
        print("no absence timer fired")
        return
    print(f"{LATE_TIMERS:,} timers due at once, {len(fired):,} fired: " + _spread(fired)
          + " after their due time (target: within 1 s): "
          + ("met" if len(fired) == LATE_TIMERS and max(fired) <= 1.0 else "NOT MET"))
    print(f"  their webhooks arrived at a local receiver: {_spread(arrived)} after due time")


def lateness(url: str, arrivals: dict[str, float]) -> tuple[list[float], list[float]]:
    """Per fired timer: its decision time and its webhook's arrival, less its due time.

    A visitor's only event armed the timer, so its due time is the profile's `first_seen`
    (the server's clock when the event came) plus the wait.
    """
    fired: list[float] = []
    arrived: list[float] = []
    with httpx.Client(base_url=url, trust_env=False, timeout=10,
                      headers={"Authorization": "Bearer bench-token"}) as client:
        for n in range(1, LATE_TIMERS + 1):
            visitor = f"visitor-{n}"
            response = client.get(f"/admin/api/users/{visitor}")
            if response.status_code != 200:
                continue
            profile = response.json()["profile"]
            decision = profile["decisions"].get("abandoned")
            if decision is None or decision["outcome"] != "fired":
                continue
            due = profile["first_seen"] + LATE_WAIT
            fired.append(decision["at"] - due)
            if visitor in arrivals:
                arrived.append(arrivals[visitor] - due)
    return sorted(fired), sorted(arrived)


def _spread(values: list[float]) -> str:
    p50, p99 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms"


if __name__ == "__main__":
    main()
