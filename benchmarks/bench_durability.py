"""What keeping everything in the data directory costs ingest, measured two ways in one run.

    python -m benchmarks.bench_durability [--seconds 5] [--messages 60000]

Over HTTP, the figure the target is set on (durability costs ≤ 15 % of ingest throughput):
`tripwire serve` in memory mode with its data directory, next to the same server keeping
nothing (`benchmarks.serve_keeping_nothing`), each under wrk with `bench_ingest`'s pipeline
config (20 campaigns, 10 variables) and 1-message and 20-message requests from 100,000
visitors. The servers get core 0, wrk and the webhook sink core 1; each pair is run twice,
alternating, and the better run of each kept, so a passing disturbance does not decide the
ratio. Next to the throughput comes the server's CPU time per message and its ratio.

In process, the stricter figure: the runtime's ingest path alone (store, engine, outbox,
counters; no HTTP, no JSON), without and with a data directory, committing each request before
it would be answered, 32 requests in flight as under load (their writes are grouped) and then
one at a time, the worst case, where each request pays a write of its own. Without HTTP in the
denominator the same added cost is a larger share. The figure is the CPU time of the whole
process (the writer thread included) per message.

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
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.bench_ingest import measure, pipeline_config
from benchmarks.common import bare_app, free_port, pinned, process, serve_command, wrk
from collector.config.settings import Settings, load_config
from collector.events import Event
from collector.metrics import IngestMetrics
from collector.runtime import Runtime

TARGET = 0.85  # of the throughput kept with the data dir: durability may cost at most 15 %


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


async def run(requests: list[list[Event]], data_dir: str, keep: bool, parallel: int) -> float:
    """CPU seconds per message through Runtime.accept, `parallel` requests at a time."""
    collector = runtime(data_dir, keep)
    await collector.start()
    messages = sum(len(r) for r in requests)
    began = time.process_time()
    for start in range(0, len(requests), parallel):
        now = time.time()
        await asyncio.gather(
            *(collector.accept(request, now) for request in requests[start : start + parallel])
        )
    spent = time.process_time() - began
    await collector.stop()
    return spent / messages


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


def over_http(seconds: int) -> None:
    """Print messages/s and server CPU per message without and with the data directory."""
    with bare_app(free_port(), cores="1") as sink, tempfile.TemporaryDirectory() as work:
        config = Path(work) / "tripwire.json"
        config.write_text(json.dumps(pipeline_config(sink)))
        for batch in (1, 20):
            best: dict[bool, tuple[float, float | None]] = {}
            for _ in range(2):
                for keep in (False, True):
                    with server(config, keep) as (url, port):
                        wrk(url + "/v1/batch", seconds=1, batch=batch)  # warm up
                        rate, cpu = measure(url, port, seconds, batch)
                    if keep not in best or rate > best[keep][0]:
                        best[keep] = (rate, cpu)
            (without, cpu_without), (with_disk, cpu_with) = best[False], best[True]
            cpu_text = ""
            if cpu_without is not None and cpu_with is not None:
                cpu_text = (
                    f"; server CPU {cpu_without:.1f} → {cpu_with:.1f} µs/message "
                    f"(×{cpu_with / cpu_without:.2f})"
                )
            print(
                f"over HTTP, {batch:2}-message requests: {without:9,.0f} messages/s keeping "
                f"nothing, {with_disk:9,.0f} with the data dir: "
                f"{with_disk / without:.2f} of the throughput "
                f"(target ≥ {TARGET:.2f}){cpu_text}"
            )


def in_process(messages: int) -> None:
    """Print CPU µs per message without and with the data directory, and their ratio."""
    for parallel in (32, 1):
        for batch in (1, 20):
            requests = events(messages, batch, seed=batch)
            with (
                tempfile.TemporaryDirectory() as unused,
                tempfile.TemporaryDirectory() as data_dir,
            ):
                warm_up = events(2_000, batch, seed=99)
                asyncio.run(run(warm_up, unused, keep=False, parallel=parallel))
                without = asyncio.run(run(requests, unused, keep=False, parallel=parallel))
                with_disk = asyncio.run(run(requests, data_dir, keep=True, parallel=parallel))
            ratio = with_disk / without
            print(
                f"in process, {batch:2}-message requests, {parallel:2} at a time: "
                f"{without * 1e6:6.1f} µs/message without a data dir, "
                f"{with_disk * 1e6:6.1f} with one: ×{ratio:.2f}"
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
