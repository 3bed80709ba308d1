"""Ingest throughput of `tripwire serve` (memory mode) next to a bare ASGI app, same run.

Targets (SPEC §10): single-message requests ≥ 0.6 × the bare app's requests/s; 20-message
batches ≥ 2.5 × that figure in messages/s. The server gets core 0, wrk core 1.

On a shared machine, throughput swings with whatever else runs on core 0, so each figure also
comes with the CPU time the server process itself spent per request (or message), read from
/proc/PID/stat around each wrk run, and the ratio those CPU times give: what the throughput
ratio would be with the core to itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import bare_app, free_port, metric_sum, tripwire, wrk


def pipeline_config(sink_url: str) -> dict[str, Any]:
    """20 published campaigns and 10 variables, like a busy real site.

    Every variable is used (the webhooks send them all), as on a real site: the engine only
    maintains variables that some campaign, segment or template reads, so a declared but unused
    variable would cost nothing and the benchmark would not measure 10 variables.
    """
    variables: dict[str, Any] = {
        "viewed_path": {
            "event": "page",
            "field": "context.page.path",
            "stat": "latest",
            "window": "session",
        },
        "page_views": {"event": "page", "stat": "count", "window": "all"},
        "views_7d": {"event": "page", "stat": "count", "window": "7d"},
        "views_today": {"event": "page", "stat": "count", "window": "today"},
        "session_views": {"event": "page", "stat": "count", "window": "session"},
        "first_path": {
            "event": "page",
            "field": "context.page.path",
            "stat": "first",
            "window": "all",
        },
        "distinct_paths": {
            "event": "page",
            "field": "context.page.path",
            "stat": "distinct_count",
            "window": "28d",
        },
        "last_seen_at": {"event": "page", "stat": "last_at", "window": "all"},
        "cart_views": {
            "event": "page",
            "where": {"context": "page.path", "starts_with": "/cart"},
            "stat": "count",
            "window": "session",
        },
        "spent": {
            "event": "Order Completed",
            "field": "properties.revenue",
            "stat": "sum",
            "default": 0,
        },
    }
    campaigns = []
    for i in range(20):
        campaigns.append(
            {
                "id": f"campaign-{i}",
                "status": "published",
                "trigger": {
                    "event": "page",
                    "where": {"context": "page.path", "eq": f"/products/{i}"},
                },
                "target": {"users": "all", "segments": ["engaged"]},
                "frequency": {"per": "user", "max_total": 1},
                "action": {
                    "webhook": {
                        "url": f"{sink_url}/hook/{i}",
                        "method": "POST",
                        "body": {
                            "user": "#{visitor_id}",
                            **{name: f"#{{{name}}}" for name in variables},
                        },
                    }
                },
            }
        )
    return {
        "write_keys": ["bench-key"],
        "webhooks": {"allow_private_networks": True},
        "variables": variables,
        "segments": {"engaged": {"var": "views_7d", "gte": 3}},
        "campaigns": campaigns,
    }


def server_cpu(port: int) -> Callable[[], float] | None:
    """A reader of the CPU seconds used so far by the server on `port` (None without /proc)."""
    marker = f"--port\0{port}\0".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes():
                stat = entry / "stat"
                break
        except OSError:
            continue
    else:
        return None
    ticks = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    return read


def measure(url: str, port: int, seconds: int, batch: int = 1) -> tuple[float, float | None]:
    """(messages/s, server CPU µs per message) for one wrk run."""
    cpu = server_cpu(port)
    before = cpu() if cpu else 0.0
    messages = wrk(url + "/v1/batch", seconds=seconds, batch=batch) * batch
    if cpu is None:
        return messages, None
    return messages, (cpu() - before) / (messages * seconds) * 1e6


def _cpu_text(cpu: float | None, base: float | None, unit: str) -> str:
    if cpu is None or base is None:
        return ""
    return f"   server CPU {cpu:6.1f} µs/{unit} (ratio by CPU {base / cpu:.2f})"


def main() -> None:
    """Measure and print the figures and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    with bare_app(port) as bare:
        wrk(bare + "/v1/batch", seconds=1)  # warm up
        baseline, base_cpu = measure(bare, port, args.seconds)
    port = free_port()
    with (
        bare_app(free_port(), cores="1") as sink,
        tripwire(pipeline_config(sink), port) as url,
    ):
        wrk(url + "/v1/batch", seconds=1)
        single, single_cpu = measure(url, port, args.seconds)
        batched, batched_cpu = measure(url, port, args.seconds, batch=20)
        messages = metric_sum(url, "tripwire_ingest_messages_total", result="accepted")
        fired = metric_sum(url, "tripwire_campaign_decisions_total", outcome="fired")
        considered = metric_sum(url, "tripwire_campaign_decisions_total")
    base_text = f"   server CPU {base_cpu:6.1f} µs/request" if base_cpu is not None else ""
    print(f"bare ASGI app (reads body, 204):        {baseline:10,.0f} requests/s{base_text}")
    print(f"({messages:,.0f} messages; {considered:,.0f} decisions; {fired:,.0f} webhooks fired)")
    print(
        f"tripwire, 1-message requests:           {single:10,.0f} requests/s   "
        f"ratio {single / baseline:.2f} (target ≥ 0.60)"
        + _cpu_text(single_cpu, base_cpu, "request")
    )
    print(
        f"tripwire, 20-message batches:           {batched:10,.0f} messages/s   "
        f"ratio {batched / baseline:.2f} (target ≥ 2.50)"
        + _cpu_text(batched_cpu, base_cpu, "message")
    )


if __name__ == "__main__":
    main()
