"""What keeping everything in the data directory costs ingest, measured two ways in one run.

    python -m benchmarks.bench_durability [--seconds 5] [--messages 60000]

Over HTTP, the figure the target is set on (durability costs ≤ 15 % of ingest throughput):
`tripwire serve` in memory mode with its data directory and the same server keeping nothing
(`benchmarks.serve_keeping_nothing`) run side by side, sharing core 0, each under a wrk of its
own (core 1, with the webhook sink) with `bench_ingest`'s pipeline config (20 campaigns, 10
variables) and 1-message and 20-message requests from 100,000 visitors. Whatever else slows
the machine meanwhile slows both alike, so the ratio of their throughputs holds still where
runs one after the other swing by tens of percent. Each server's messages are counted from
the start of its wrk run until the last webhook they caused is sent (the throughput a site
could keep up; under load the sender yields to ingest). Three rounds; the median is shown,
with the server CPU time per message of each.

In process, the stricter figure: the runtime's ingest path alone (store, engine, outbox,
counters; no HTTP, no JSON), without and with a data directory, committing each request before
it would be answered, 32 requests in flight as under load (their writes are grouped) and then
one at a time, the worst case, where each request pays a write of its own. Without HTTP in the
denominator the same added cost is a larger share. The two runtimes live in one process and
take turns, a chunk of requests each; the figure is the CPU time of the process (the writer
thread included) per message during each one's turns.

On a shared machine the absolute figures swing; both sides swing together, so their ratio is
the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.bench_ingest import pipeline_config, server_cpu
from benchmarks.common import (
    bare_app,
    free_port,
    metric_sum,
    pinned,
    process,
    serve_command,
    wrk,
)
from collector.config.settings import Settings, load_config
from collector.events import Event
from collector.metrics import IngestMetrics
from collector.runtime import Runtime

TARGET = 0.85  # of the throughput kept with the data dir: durability may cost at most 15 %
CHUNK = 50  # in process, groups of requests one runtime takes before the other takes the same
ROUNDS = 3  # over HTTP, side by side this many times; the round of the median ratio is shown


def events(count: int, batch: int, seed: int) -> list[list[Event]]:
    """Page views from 100,000 random visitors, in requests of `batch` messages."""
    rng = random.Random(seed)
    requests: list[list[Event]] = []
    now = time.time()
    for start in range(0, count, batch):
        request = []
        for n in range(start, min(count, start + batch)):
            visitor = rng.randrange(100_000)
            path = f"/products/{n % 50}"
            request.append(
                Event(
                    type="page",
                    name="page",
                    message_id=f"m-{seed}-{n}",
                    anonymous_id=f"visitor-{visitor}",
                    context={"page": {"path": path, "url": f"https://shop.example{path}"}},
                    timestamp=now,
                    received_at=now,
                )
            )
        requests.append(request)
    return requests


def runtime(data_dir: str, keep: bool) -> Runtime:
    """A memory-mode runtime for the pipeline config; `keep=False`: nothing kept (baseline)."""
    config_file = Path(data_dir) / "tripwire.json"
    config_file.write_text(json.dumps(pipeline_config("http://127.0.0.1:9")))
    config = load_config(config_file)
    settings = Settings(
        config=config, data_dir=data_dir if keep else None, deliver_in_process=False
    )
    registry = CollectorRegistry()
    return Runtime(settings, registry, IngestMetrics(registry))


async def alternating(
    requests: list[list[Event]], data_dir: str, parallel: int
) -> tuple[float, float]:
    """CPU seconds per message through Runtime.accept without and with a data dir, `parallel`
    requests at a time. The two runtimes take turns, a chunk of requests each, so whatever
    else slows the machine meanwhile slows both alike."""
    sides = {keep: runtime(data_dir, keep) for keep in (False, True)}
    for collector in sides.values():
        await collector.start()
    spent = dict.fromkeys(sides, 0.0)
    step = parallel * CHUNK
    for chunk in range(0, len(requests), step):
        part = requests[chunk : chunk + step]
        for keep, collector in sides.items():
            began = time.process_time()  # the writer thread's too: each commit is awaited
            for start in range(0, len(part), parallel):
                now = time.time()
                await asyncio.gather(
                    *(collector.accept(request, now) for request in part[start : start + parallel])
                )
            spent[keep] += time.process_time() - began
    for collector in sides.values():
        await collector.stop()
    messages = sum(len(r) for r in requests)
    return spent[False] / messages, spent[True] / messages


@contextlib.contextmanager
def server(config: Path, keep: bool) -> Iterator[tuple[str, int]]:
    """`tripwire serve` on core 0 with a fresh data directory, or keeping nothing: URL, port."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        if keep:
            command = serve_command(config, port, Path(data_dir))
        else:
            command = [
                *pinned("0"),
                sys.executable,
                "-m",
                "benchmarks.serve_keeping_nothing",
                "--config",
                str(config),
                "--port",
                str(port),
            ]
        url = f"http://127.0.0.1:{port}"
        with process(command, url + "/healthz"):
            yield url, port


def drained(url: str, timeout: float = 120.0) -> None:
    """Wait until the server has sent every webhook it queued."""
    deadline = time.monotonic() + timeout
    while metric_sum(url, "tripwire_webhook_queue_depth") > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: webhooks still queued after {timeout:.0f} s")
        time.sleep(0.05)


def sustained(url: str, port: int, seconds: int, batch: int) -> tuple[float, float]:
    """(messages/s, server CPU µs per message) from the start of a wrk run until every webhook
    it caused is sent: under load the sender yields to ingest, and a server that merely put
    its deliveries off would otherwise look faster."""
    cpu = server_cpu(port)
    if cpu is None:
        raise RuntimeError("the server's CPU time cannot be read (no /proc)")
    cpu_before = cpu()
    before = metric_sum(url, "tripwire_ingest_messages_total", result="accepted")
    began = time.monotonic()
    wrk(url + "/v1/batch", seconds=seconds, batch=batch)
    drained(url)
    elapsed = time.monotonic() - began
    messages = metric_sum(url, "tripwire_ingest_messages_total", result="accepted") - before
    return messages / elapsed, (cpu() - cpu_before) / messages * 1e6


def side_by_side(config: Path, seconds: int, batch: int) -> dict[bool, tuple[float, float]]:
    """Both servers at once, sharing core 0, each under a wrk of its own: (messages/s, server
    CPU µs per message) of each, keyed by whether it keeps a data dir. Whatever else slows
    the machine meanwhile slows both alike."""
    with server(config, False) as nothing, server(config, True) as kept:
        sides = {False: nothing, True: kept}
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda side: warm_up(side[0], batch), sides.values()))
            measured = pool.map(lambda side: sustained(*side, seconds, batch), sides.values())
            return dict(zip(sides, measured, strict=True))


def warm_up(url: str, batch: int) -> None:
    """A second of load, and its webhooks sent."""
    wrk(url + "/v1/batch", seconds=1, batch=batch)
    drained(url)


def over_http(seconds: int) -> None:
    """Print messages/s and server CPU per message without and with the data directory."""
    with bare_app(free_port(), cores="1") as sink, tempfile.TemporaryDirectory() as work:
        config = Path(work) / "tripwire.json"
        config.write_text(json.dumps(pipeline_config(sink)))
        for batch in (1, 20):
            rounds = [side_by_side(config, seconds, batch) for _ in range(ROUNDS)]
            rounds.sort(key=lambda sides: sides[True][0] / sides[False][0])
            ratios = ", ".join(f"{sides[True][0] / sides[False][0]:.2f}" for sides in rounds)
            (without, cpu_without), (with_disk, cpu_with) = rounds[len(rounds) // 2].values()
            print(
                f"over HTTP, {batch:2}-message requests: {without:7,.0f} messages/s keeping "
                f"nothing, {with_disk:7,.0f} with the data dir: {with_disk / without:.2f} of "
                f"the throughput (target ≥ {TARGET:.2f}; rounds {ratios}); server CPU "
                f"{cpu_without:.1f} → {cpu_with:.1f} µs/message (×{cpu_with / cpu_without:.2f}): "
                + ("met" if with_disk / without >= TARGET else "NOT MET")
            )


def in_process(messages: int) -> None:
    """Print CPU µs per message without and with the data directory, and their ratio."""
    for parallel in (32, 1):
        for batch in (1, 20):
            with tempfile.TemporaryDirectory() as data_dir:
                asyncio.run(alternating(events(2_000, batch, seed=99), data_dir, parallel))
            with tempfile.TemporaryDirectory() as data_dir:
                requests = events(messages, batch, seed=batch)
                without, with_disk = asyncio.run(alternating(requests, data_dir, parallel))
            print(
                f"in process, {batch:2}-message requests, {parallel:2} at a time: "
                f"{without * 1e6:6.1f} µs/message without a data dir, "
                f"{with_disk * 1e6:6.1f} with one: ×{with_disk / without:.2f}"
            )


def main() -> None:
    """Measure over HTTP, then in process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=60_000)
    args = parser.parse_args()
    over_http(args.seconds)
    in_process(args.messages)


if __name__ == "__main__":
    main()
