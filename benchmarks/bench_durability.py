"""What keeping everything in the data directory costs ingest, same run, same process.

    python -m benchmarks.bench_durability [--messages 60000]

Runs `bench_ingest`'s pipeline config (20 campaigns, 10 variables) through the runtime's ingest
path (store, engine, outbox, counters) twice, in one process: without a data directory, then
with one, committing each request before it would be answered, as `tripwire serve` does. The
requests are 1-message and 20-message batches from 100,000 random visitors, 32 in flight at a
time as under load (their writes are grouped), and then one at a time, the worst case: each
request then pays a write and a hand-over to the writer thread on its own. The figure is the
CPU time of the whole process (the writer thread included) per message, and the ratio
(target: durability costs ≤ 15 % under load).

On a shared machine the absolute figures swing; both runs swing together, so their ratio is the
figure to read. `bench_ingest` measures the whole server over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.bench_ingest import pipeline_config
from collector.config.settings import Settings, load_config
from collector.delivery.outbox import MemoryOutbox
from collector.events import Event
from collector.metrics import IngestMetrics
from collector.runtime import Runtime
from collector.store.memory import MemoryStore

TARGET = 1.15


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
    settings = Settings(config=config, data_dir=data_dir, deliver_in_process=False)
    registry = CollectorRegistry()
    built = Runtime(settings, registry, IngestMetrics(registry))
    if not keep:
        built.disk = None
        built._count_rows = None
        built.outbox = MemoryOutbox()
        built.store = MemoryStore(lambda: built.engine, config.state, None, built.outbox)
    return built


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


def main() -> None:
    """Print CPU µs per message without and with the data directory, and their ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=60_000)
    args = parser.parse_args()
    for parallel in (32, 1):
        for batch in (1, 20):
            requests = events(args.messages, batch, seed=batch)
            with (
                tempfile.TemporaryDirectory() as unused,
                tempfile.TemporaryDirectory() as data_dir,
            ):
                warm_up = events(2_000, batch, seed=99)
                asyncio.run(run(warm_up, unused, keep=False, parallel=parallel))
                without = asyncio.run(run(requests, unused, keep=False, parallel=parallel))
                with_disk = asyncio.run(run(requests, data_dir, keep=True, parallel=parallel))
            ratio = with_disk / without
            target = f" (target ≤ ×{TARGET:.2f})" if parallel > 1 else " (worst case)"
            print(
                f"{batch:2}-message requests, {parallel:2} at a time: "
                f"{without * 1e6:6.1f} µs/message without a data dir, "
                f"{with_disk * 1e6:6.1f} with one: ×{ratio:.2f}{target}"
            )


if __name__ == "__main__":
    main()
