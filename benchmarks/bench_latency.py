"""Trigger to webhook: from an event being accepted to its webhook arriving at a local sink.

Events go out at a steady 500/s, one per request, each firing one webhook. The sender and the
sink live in this process and speak bare HTTP/1.1 (`rawhttp`), so they stay cheap and both
ends read one clock. Two figures are printed: from sending the event to the webhook's arrival
(the ingest request included: an upper bound), and from the collector's answer (event
accepted). The answer waits for the event to be kept (and for the other requests of its turn),
while the webhook may be on its way meanwhile, so the second can be negative; the targets are
judged on the first. Targets (SPEC §10): memory mode p50 ≤ 2 ms, p99 ≤ 10 ms; redis mode
p99 ≤ 20 ms.

    python -m benchmarks.bench_latency [--store redis://127.0.0.1:PORT/0] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import orjson

from benchmarks.common import free_port, tripwire
from benchmarks.rawhttp import Connection, Sink

RATE = int(os.environ.get("BENCH_RATE", "500"))
CONNECTIONS = 16


def config(sink_url: str) -> dict[str, Any]:
    """One campaign firing on every page view, posting the event id."""
    webhook = {"url": sink_url + "/hook", "body": {"event": "#{event_id}"}}
    return {
        "write_keys": ["bench-key"],
        "webhooks": {"allow_private_networks": True},
        "campaigns": [
            {
                "id": "every-view",
                "status": "published",
                "frequency": {"per": "event"},
                "action": {"webhook": webhook},
            }
        ],
    }


class Run:
    """Times of one measured run, by message id."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.accepted: dict[str, float] = {}
        self.arrived: dict[str, float] = {}

    def on_webhook(self, body: bytes, arrived: float) -> None:
        """Note a webhook's arrival."""
        self.arrived[orjson.loads(body)["event"]] = arrived


async def measure(port: int, run: Run, seconds: int, label: str) -> None:
    """Send RATE events per second for `seconds` over keep-alive connections; wait for hooks."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(CONNECTIONS):
        idle.put_nowait(await Connection.open("127.0.0.1", port))

    async def one(message_id: str) -> None:
        body = orjson.dumps(
            {
                "writeKey": "bench-key",
                "messageId": message_id,
                "anonymousId": f"v-{message_id}",
                "context": {"page": {"path": "/"}},
            }
        )
        connection = await idle.get()
        run.sent[message_id] = time.perf_counter()
        status = await connection.post("127.0.0.1", "/v1/page", body)
        run.accepted[message_id] = time.perf_counter()
        idle.put_nowait(connection)
        if status != 200:
            raise RuntimeError(f"ingest answered {status}")

    tasks = []
    start = time.perf_counter()
    for n in range(RATE * seconds):
        delay = start + n / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(f"{label}-{n}")))
    await asyncio.gather(*tasks)
    deadline = time.perf_counter() + 15
    while any(m not in run.arrived for m in run.sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    while not idle.empty():
        idle.get_nowait().close()
    missing = sum(m not in run.arrived for m in run.sent)
    if missing:
        raise RuntimeError(f"{missing} webhooks did not arrive")


def p99(values: list[float]) -> float:
    """The 99th percentile of some latencies."""
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def percentiles(values: list[float]) -> str:
    """p50, p99 and max of latencies in seconds, as milliseconds."""
    ordered = sorted(values)
    return (
        f"p50 {statistics.median(ordered) * 1000:7.2f} ms   p99 {p99(ordered) * 1000:7.2f} ms   "
        f"max {ordered[-1] * 1000:7.2f} ms"
    )


async def main_async(args: argparse.Namespace) -> None:
    """Start the sink, the collector beside it, and measure."""
    warm_up, measured = Run(), Run()
    current = [warm_up]
    sink_port = free_port()
    sink = Sink(lambda body, at: current[0].on_webhook(body, at))
    await sink.start(sink_port)
    port = free_port()
    extra = ["--store", args.store] if args.store else []
    with tripwire(config(f"http://127.0.0.1:{sink_port}"), port, args=extra):
        await measure(port, warm_up, 1, "warm-up")
        current[0] = measured
        await measure(port, measured, args.seconds, "measured")
    await sink.close()
    mode = "redis" if args.store else "memory"
    target = "p50 ≤ 2 ms, p99 ≤ 10 ms" if mode == "memory" else "p99 ≤ 20 ms"
    ids = list(measured.sent)
    print(f"trigger → webhook, {mode} mode, {RATE} events/s, {len(ids)} events ({target}):")
    accepted = [measured.arrived[m] - measured.accepted[m] for m in ids]
    sent = [measured.arrived[m] - measured.sent[m] for m in ids]
    print(f"  sent → received       {percentiles(sent)}")
    print(f"  accepted → received   {percentiles(accepted)}")
    limit = 0.010 if mode == "memory" else 0.020
    verdict = "met" if p99(sent) <= limit else "NOT MET"
    print(f"  target p99 ≤ {limit * 1000:.0f} ms (sent → received): {verdict}")
    if mode == "memory":
        verdict = "met" if statistics.median(sent) <= 0.002 else "NOT MET"
        print(f"  target p50 ≤ 2 ms (sent → received): {verdict}")


def main() -> None:
    """Parse options and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="redis://… to measure redis mode")
    parser.add_argument("--seconds", type=int, default=10)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
