"""Ingest throughput of `tripwire serve` (memory mode) next to a bare ASGI app, same run.

Targets (SPEC §10): single-message requests ≥ 0.6 × the bare app's requests/s; 20-message
batches ≥ 2.5 × that figure in messages/s. The server gets core 0, wrk core 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import bare_app, free_port, metric_sum, tripwire, wrk


def pipeline_config(sink_url: str) -> dict[str, Any]:
    """20 published campaigns and 10 variables, like a busy real site."""
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
                            "path": "#{viewed_path}",
                            "views": "#{page_views}",
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


def main() -> None:
    """Measure and print the figures and ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with bare_app(free_port()) as bare:
        wrk(bare + "/v1/batch", seconds=1)  # warm up
        baseline = wrk(bare + "/v1/batch", seconds=args.seconds)
    with (
        bare_app(free_port(), cores="1") as sink,
        tripwire(pipeline_config(sink), free_port()) as url,
    ):
        wrk(url + "/v1/batch", seconds=1)
        single = wrk(url + "/v1/batch", seconds=args.seconds)
        batched = wrk(url + "/v1/batch", seconds=args.seconds, batch=20) * 20
        messages = metric_sum(url, "tripwire_ingest_messages_total", result="accepted")
        fired = metric_sum(url, "tripwire_campaign_decisions_total", outcome="fired")
        considered = metric_sum(url, "tripwire_campaign_decisions_total")
    print(f"bare ASGI app (reads body, 204):        {baseline:10,.0f} requests/s")
    print(f"({messages:,.0f} messages; {considered:,.0f} decisions; {fired:,.0f} webhooks fired)")
    print(
        f"tripwire, 1-message requests:           {single:10,.0f} requests/s   "
        f"ratio {single / baseline:.2f} (target ≥ 0.60)"
    )
    print(
        f"tripwire, 20-message batches:           {batched:10,.0f} messages/s   "
        f"ratio {batched / baseline:.2f} (target ≥ 2.50)"
    )


if __name__ == "__main__":
    main()
