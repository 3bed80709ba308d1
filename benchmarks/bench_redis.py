"""Redis mode: ingest throughput with 1 and 2 `serve` workers, trigger-to-webhook latency at
500 events/s, Redis round trips per ingest request by batch size, and how long a campaign
change made through one process takes to reach another (SPEC: within 1 s).

Starts its own redis-server on a free port (no persistence) and never touches another.
Targets (SPEC §10): p99 ≤ 20 ms trigger to webhook; a constant number of round trips per
request whatever its batch size.

    python benchmarks/bench_redis.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or a module

from benchmarks.bench_ingest import pipeline_config
from benchmarks.bench_latency import Run, measure, p99, percentiles
from benchmarks.bench_latency import config as latency_config
from benchmarks.common import (
    ROOT,
    bare_app,
    free_port,
    metric_sum,
    pinned,
    redis_server,
    tripwire,
    wrk,
)
from benchmarks.rawhttp import Sink


def flush(url: str) -> None:
    """Empty the benchmark's Redis between runs."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-cli", "-p", port, "FLUSHALL"], capture_output=True, check=True)


def ingest(url: str, seconds: int) -> list[tuple[str, float]]:
    """Messages/s of 1-message requests and 20-message batches, with 1 and 2 serve workers."""
    figures: list[tuple[str, float]] = []
    with bare_app(free_port(), cores="1") as sink:
        for workers in (1, 2):
            flush(url)
            cores = "0" if workers == 1 else "0,1"
            args = ["--store", url, "--workers", str(workers)]
            with tripwire(pipeline_config(sink), free_port(), cores=cores, args=args) as server:
                wrk(server + "/v1/batch", seconds=1)  # warm up
                single = wrk(server + "/v1/batch", seconds=seconds)
                batched = wrk(server + "/v1/batch", seconds=seconds, batch=20) * 20
                if workers == 1:
                    accepted = metric_sum(
                        server, "tripwire_ingest_messages_total", result="accepted"
                    )
                    figures.append(("  (messages accepted by the measured process)", accepted))
            figures.append((f"{workers} worker(s), 1-message requests (messages/s)", single))
            figures.append((f"{workers} worker(s), 20-message batches (messages/s)", batched))
    return figures


@contextlib.contextmanager
def worker(url: str, config: dict[str, Any], cores: str) -> Iterator[None]:
    """A `tripwire worker` delivering from the benchmark's Redis."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tripwire.json"
        path.write_text(json.dumps(config))
        command = [
            *pinned(cores),
            sys.executable,
            "-m",
            "collector.cli",
            "worker",
            "--config",
            str(path),
            "--store",
            url,
        ]
        process = subprocess.Popen(command, cwd=ROOT)
        try:
            yield
        finally:
            process.terminate()
            process.wait(15)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started in the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def latency(url: str, seconds: int, separate_worker: bool) -> tuple[str, str, float]:
    """Accepted → received and sent → received percentiles at 500 events/s, and the second's
    p99 in seconds (the upper bound the target is judged on, see `bench_latency`)."""
    flush(url)
    warm_up, measured = Run(), Run()
    current = [warm_up]
    sink_port = free_port()
    sink = Sink(lambda body, at: current[0].on_webhook(body, at))
    await sink.start(sink_port)
    port = free_port()
    config = latency_config(f"http://127.0.0.1:{sink_port}")
    with contextlib.ExitStack() as stack:
        if separate_worker:
            stack.enter_context(environment(TRIPWIRE_DELIVER_IN_PROCESS="false"))
            stack.enter_context(worker(url, config, cores="1"))
        stack.enter_context(tripwire(config, port, args=["--store", url]))
        await measure(port, warm_up, 1, "warm-up")
        current[0] = measured
        await measure(port, measured, seconds, "measured")
    await sink.close()
    ids = list(measured.sent)
    accepted = [measured.arrived[m] - measured.accepted[m] for m in ids]
    sent = [measured.arrived[m] - measured.sent[m] for m in ids]
    return percentiles(accepted), percentiles(sent), p99(sent)


def campaign_propagation(url: str, changes: int = 5) -> list[float]:
    """Seconds from a campaign PUT on one `serve` process to its being listed by another."""
    import httpx

    flush(url)
    config = {"write_keys": ["bench-key"]}
    headers = {"Authorization": "Bearer bench-token"}
    took: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(environment(TRIPWIRE_ADMIN_TOKEN="bench-token"))
        first = stack.enter_context(tripwire(config, free_port(), args=["--store", url]))
        second = stack.enter_context(tripwire(config, free_port(), cores="1",
                                              args=["--store", url]))
        client = stack.enter_context(httpx.Client(headers=headers, trust_env=False, timeout=10))
        for n in range(changes):
            campaign = {"status": "published", "trigger": {"event": f"E{n}"},
                        "action": {"webhook": {"url": "https://hooks.example/x"}}}
            started = time.perf_counter()
            client.put(f"{first}/admin/api/campaigns/c{n}", json=campaign).raise_for_status()
            while client.get(f"{second}/admin/api/campaigns/c{n}").status_code != 200:
                if time.perf_counter() - started > 30:
                    raise RuntimeError(f"campaign c{n} never reached the second process")
                time.sleep(0.005)
            took.append(time.perf_counter() - started)
    return took


async def round_trips(url: str) -> dict[int, int]:
    """Round trips one ingest request costs, by batch size (new visitors, one webhook each)."""
    from collector.config.settings import decode_config
    from collector.engine.engine import Engine, compile_rules
    from collector.events import Event
    from collector.redis.connection import RedisConnection
    from collector.redis.store import RedisStore
    from collector.store import pipeline

    flush(url)
    config = decode_config(pipeline_config("http://127.0.0.1:9"))
    engine = Engine(compile_rules(config, updated_at={}))
    connection = RedisConnection(url)
    store = RedisStore(connection, lambda: engine, config.state)
    counts: dict[int, int] = {}
    for size in (1, 1, 20, 100, 500):
        now = time.time()
        batch = [
            Event(
                type="page",
                name="page",
                message_id=uuid.uuid4().hex,
                anonymous_id=uuid.uuid4().hex,
                context={"page": {"path": "/products/1"}},
                timestamp=now,
                received_at=now,
            )
            for _ in range(size)
        ]
        before = connection.round_trips
        await pipeline.ingest(store, batch, now)
        counts[size] = connection.round_trips - before  # the first 1 includes connecting
    await connection.close()
    return counts


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--latency-only", action="store_true", help="skip the ingest figures")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with redis_server() as url:
        results["trips"] = asyncio.run(round_trips(url))
        results["propagation"] = campaign_propagation(url)
        results["ingest"] = [] if args.latency_only else ingest(url, args.seconds)
        results["latency"] = [
            asyncio.run(latency(url, max(args.seconds, 5), separate_worker=separate))
            for separate in (False, True)
        ]
    print("Redis round trips per ingest request, by batch size (target: constant):")
    trips = results["trips"]
    constant = len(set(trips.values())) == 1  # the first 1 (connecting) was measured over
    print(
        "  "
        + "   ".join(f"{size}: {count}" for size, count in trips.items())
        + ("   constant: met" if constant else "   constant: NOT MET")
    )
    took = sorted(results["propagation"])
    print(
        f"Campaign change, one process to another: median {took[len(took) // 2] * 1000:.0f} ms, "
        f"max {took[-1] * 1000:.0f} ms over {len(took)} changes (target ≤ 1000 ms)"
    )
    if results["ingest"]:
        print("Ingest in redis mode (20 campaigns, 10 variables, 100k visitors):")
        for label, value in results["ingest"]:
            print(f"  {label:<55} {value:10,.0f}")
    print("Trigger → webhook, redis mode, 500 events/s (target p99 ≤ 20 ms):")
    for label, (accepted, sent, slowest) in zip(
        ("delivery inside serve", "delivery in a tripwire worker"), results["latency"], strict=True
    ):
        print(f"  {label}:")
        print(f"    accepted → received   {accepted}")
        print(f"    sent → received       {sent}")
        verdict = "met" if slowest <= 0.020 else "NOT MET"
        print(f"    target p99 ≤ 20 ms (sent → received), {label}: {verdict}")


if __name__ == "__main__":
    main()
