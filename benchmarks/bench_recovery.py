"""How long memory mode takes to come back after a crash, with 100,000 visitors in its data dir.

    python -m benchmarks.bench_recovery [--visitors 100000]

Target: every visitor's state back in under 5 s. The server runs the demo's config (as
`bench_memory` does); each visitor sends a short visit (home, a product page with its event,
the cart). The server is then killed with SIGKILL, as a crash would, and started again on the
same data directory: the figure is the time from starting the process to its first answer
(startup waits until the state is loaded), next to the load time the server logs itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from benchmarks.bench_memory import VISITORS, demo_config, send_visitors
from benchmarks.common import ROOT, free_port, serve_command, wait_http

ADMIN_TOKEN = "bench-admin-token"

TARGET_SECONDS = 5.0


def serve(config: Path, data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `tripwire serve` on this data directory, its output going to `log`."""
    command = serve_command(config, port, data_dir)
    env = {**os.environ, "TRIPWIRE_ADMIN_TOKEN": ADMIN_TOKEN}
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def main() -> None:
    """Fill a data directory, kill the server, and time the restart."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", type=int, default=100_000)
    parser.add_argument("--keep", help="fill this directory and keep it (to look into it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = work / "tripwire.json"
        config.write_text(json.dumps(demo_config(url, None)))
        data_dir = work / "data"
        log = work / "server.log"
        server = serve(config, data_dir, port, log)
        try:
            wait_http(url + "/healthz")
            began = time.perf_counter()
            with httpx.Client(timeout=60, trust_env=False) as client:
                messages = send_visitors(client, url, 0, args.visitors)
            filled = time.perf_counter() - began
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
        size = sum(f.stat().st_size for f in data_dir.iterdir()) / 1e6
        started = time.perf_counter()
        server = serve(config, data_dir, port, log)
        try:
            wait_http(url + "/healthz", timeout=120)
            ready = time.perf_counter() - started
            with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
                last_visitor = uuid.uuid5(VISITORS, str(args.visitors - 1))
                last = client.get(
                    f"/admin/api/users/{last_visitor}",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        loaded = re.findall(r"loaded (\d+) profiles .* in ([0-9.]+) s", log.read_text())
        print(
            f"{args.visitors:,} visitors ({messages:,} messages) sent in {filled:.1f} s; "
            f"data dir {size:.0f} MB"
        )
        if loaded:
            profiles, seconds = loaded[-1]
            print(f"the restarted server loaded {int(profiles):,} profiles in {seconds} s")
        print(
            f"kill -9, then start to first answer: {ready:.2f} s (target < {TARGET_SECONDS:.0f} s)"
            f"; last visitor found after restart: {last.status_code == 200}: "
            + ("met" if ready < TARGET_SECONDS and last.status_code == 200 else "NOT MET")
        )


if __name__ == "__main__":
    main()
