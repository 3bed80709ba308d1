"""Instructions per message through the whole collector, in process, counted by callgrind.

    python -m benchmarks.bench_instructions [--requests 1000]

Timings on a shared machine swing by a fifth from one run to the next; the instructions a
message costs barely do (over four runs, 1-message requests within 1.5 %, 20-message ones
within 6 %), so this is the figure to judge a change by before timing it. The collector's ASGI
app (`create_app`: memory mode with a data directory, `bench_ingest`'s pipeline config of 20
campaigns and 10 variables) is driven in process with `bench_ingest`'s page views from 100,000
visitors, 32 requests in flight, without an HTTP server or a load generator, and without
sending the webhooks (they wait in the outbox). It runs under valgrind's callgrind twice, with
N and then 3N requests after the same warm-up; the difference, divided by the 2N requests'
messages, leaves start-up and warm-up out. For 1-message and 20-message requests (N / 10 of
those).

Instructions are not time: a cache miss or a system call costs none here, and the kernel's
work is not counted. A change that saves instructions saves time; one that saves time in the
kernel (fewer writes, fewer wake-ups) shows only in `bench_ingest`.

    python -m benchmarks.bench_instructions --server [--requests 2000] [--redis]

counts what the in-process drive leaves out, the HTTP server around the app: a real
`tripwire serve` process (same config, data directory, messages) and the bare ASGI app on
uvicorn beside it, each under callgrind, sent N 1-message requests, then N / 10 20-message
ones, over 32 kept-alive connections; the counters are zeroed after the warm-up and read after
the requests. Its webhooks (a few: most visitors are new) go to a sink, another bare app, and
are counted as sent. With `--redis`, `serve` in Redis mode is counted too, against a private
redis-server (Redis's own work is not counted). It takes a minute or two (five with `--redis`)
and is not part of `make bench`. From one run to the next, the same code's memory-mode figure
settles at one of a few levels (1-message requests: 417k or 435-438k instructions; 20-message
ones: 202k, 207k or 216k per message), where Redis mode's stay within 1 %; what picks the level
is not pinned down. Compare the least of a few runs, or the in-process figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_ingest import USERS, pipeline_config
from benchmarks.common import ROOT, UVICORN_FLAGS, bare_app, free_port, redis_server, wait_http
from benchmarks.rawhttp import Connection

IN_FLIGHT = 32
WARM_UP = 1_000  # messages before the counted ones (the recent events' dictionary is trained)
_COLLECTED = re.compile(r"Collected : (\d+)")


def bodies(count: int, batch: int, seed: int) -> list[bytes]:
    """`count` request bodies of `batch` page views each, as `bench_ingest`'s wrk sends them."""
    rng = random.Random(seed)
    out = []
    n = 0
    for _ in range(count):
        parts = []
        for _ in range(batch):
            n += 1
            path = f"/products/{n % 50}"
            parts.append(
                f'{{"type":"page","messageId":"m-{seed}-{n}","anonymousId":"visitor-'
                f'{rng.randrange(1, USERS + 1)}","context":{{"page":{{"path":"{path}",'
                f'"url":"https://shop.example{path}","title":"Product"}}}}}}'
            )
        out.append(('{"writeKey":"bench-key","batch":[' + ",".join(parts) + "]}").encode())
    return out


async def drive(requests: int, batch: int) -> None:
    """Start the app, warm it up, then send `requests` requests, IN_FLIGHT at a time."""
    from collector.app import create_app
    from collector.config.settings import Settings, load_config

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "tripwire.json"
        config.write_text(json.dumps(pipeline_config("http://127.0.0.1:9")))
        settings = Settings(
            config=load_config(config), data_dir=f"{tmp}/data", deliver_in_process=False
        )
        app = create_app(settings)
        lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await lifespan.put({"type": "lifespan.startup"})
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        running = asyncio.create_task(app(scope, lifespan.get, answers.put))
        started = await answers.get()
        if started["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"the app did not start: {started}")
        await send_all(app, bodies(max(1, WARM_UP // batch), batch, seed=1))
        await send_all(app, bodies(requests, batch, seed=2))
        await lifespan.put({"type": "lifespan.shutdown"})
        await running


async def send_all(app: Any, requests: list[bytes]) -> None:
    """POST each body to /v1/batch, IN_FLIGHT at a time; every answer must be a 200."""
    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"text/plain")]

    async def post(body: bytes) -> None:
        scope = {
            "type": "http", "method": "POST", "path": "/v1/batch", "raw_path": b"/v1/batch",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1",
            "root_path": "", "asgi": {"version": "3.0"},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise RuntimeError(f"answered {sent[0]['status']}: {sent[-1].get('body')!r}")

    async def one_at_a_time(share: list[bytes]) -> None:
        for body in share:
            await post(body)

    await asyncio.gather(*(one_at_a_time(requests[i::IN_FLIGHT]) for i in range(IN_FLIGHT)))


def counted(requests: int, batch: int) -> int:
    """The instructions callgrind counts for a whole run of `drive(requests, batch)`."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "benchmarks.bench_instructions", "--drive", str(requests),
        "--batch", str(batch),
    ]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False, timeout=1800
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


async def post_over_http(port: int, requests: list[bytes]) -> None:
    """POST each body to 127.0.0.1:port/v1/batch over IN_FLIGHT kept-alive connections."""
    connections = [await Connection.open("127.0.0.1", port) for _ in range(IN_FLIGHT)]

    async def one_at_a_time(connection: Connection, share: list[bytes]) -> None:
        for body in share:
            status = await connection.post("127.0.0.1", "/v1/batch", body)
            if status not in (200, 204):
                raise RuntimeError(f"answered {status}")

    await asyncio.gather(
        *(one_at_a_time(c, requests[i::IN_FLIGHT]) for i, c in enumerate(connections))
    )
    for connection in connections:
        connection.close()


def counted_server(
    command: list[str], port: int, ready: str, requests: int, batch: int, *, warm: str = ""
) -> int:
    """Instructions a server process spends on `requests` requests of `batch` messages after a
    warm-up, counted by callgrind (zeroed after the warm-up, dumped after the requests).

    `warm`: what the server logs once it is warm. Memory mode trains its recent events'
    dictionary in a thread once 1,000 messages came in: about 95 million instructions, which
    would be counted whenever the training ended after the zeroing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/callgrind.out"
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        log = Path(tmp) / "server.log"
        with log.open("wb") as written:
            server = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
                stdout=subprocess.DEVNULL, stderr=written, env=environment, cwd=ROOT,
            )
        try:
            wait_http(ready, timeout=300)
            asyncio.run(post_over_http(port, bodies(max(1, WARM_UP // batch), batch, seed=1)))
            deadline = time.monotonic() + 300
            while warm not in log.read_text(errors="replace"):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not log {warm!r}:\n{log.read_text()}")
                time.sleep(0.2)
            zero, dump = ["callgrind_control", "-z"], ["callgrind_control", "-d"]
            subprocess.run([*zero, str(server.pid)], check=True, capture_output=True)
            asyncio.run(post_over_http(port, bodies(requests, batch, seed=2)))
            subprocess.run([*dump, str(server.pid)], check=True, capture_output=True)
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(60)
            server.kill()
        dumps = list(Path(tmp).glob("callgrind.out.*"))
        totals = [re.search(r"^summary: (\d+)", p.read_text(), re.M) for p in dumps]
        if not dumps or None in totals:
            raise RuntimeError("callgrind wrote no dump for the requests")
        return sum(int(found.group(1)) for found in totals if found is not None)


def servers(requests: int, redis: bool) -> None:
    """Instructions per message through the bare ASGI app and `tripwire serve`, both sizes."""
    print("instructions per message, real server processes (callgrind; 32 connections):")
    for batch in (1, 20):
        n = max(1, requests // (1 if batch == 1 else 10))
        print(f"  {batch}-message requests:", flush=True)
        port = free_port()
        bare = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:app", "--port", str(port),
                *UVICORN_FLAGS]
        floor = counted_server(bare, port, f"http://127.0.0.1:{port}/", n, batch) / (n * batch)
        print(f"    the bare ASGI app on uvicorn: {floor:9,.0f}", flush=True)
        for name in ("memory mode", "redis mode") if redis else ("memory mode",):
            with contextlib.ExitStack() as stack:
                args = ["--store", stack.enter_context(redis_server())] if "redis" in name else []
                tmp = stack.enter_context(tempfile.TemporaryDirectory())
                sink = stack.enter_context(bare_app(free_port(), cores="1"))
                config = Path(tmp) / "tripwire.json"
                config.write_text(json.dumps(pipeline_config(sink)))
                port = free_port()
                serve = [sys.executable, "-m", "collector.cli", "serve", "--config", str(config),
                         "--port", str(port), "--data-dir", f"{tmp}/data", *args]
                ready = f"http://127.0.0.1:{port}/healthz"
                warm = "" if "redis" in name else "recent events are compressed from now on"
                spent = counted_server(serve, port, ready, n, batch, warm=warm) / (n * batch)
            print(f"    tripwire serve ({name}): {spent:9,.0f} ({spent / floor:.1f}×)", flush=True)


def main() -> None:
    """Count and print instructions per message for both request sizes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000, help="N (1-message requests)")
    parser.add_argument("--server", action="store_true", help="through real server processes")
    parser.add_argument("--redis", action="store_true", help="--server: Redis mode too")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)  # the run callgrind counts
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        import uvloop

        uvloop.run(drive(args.drive, args.batch))
        return
    if args.server:
        servers(args.requests, args.redis)
        return
    print("instructions per message, the whole app in process (callgrind; 32 requests in flight):")
    for batch in (1, 20):
        n = max(1, args.requests // (1 if batch == 1 else 10))
        extra = counted(3 * n, batch) - counted(n, batch)
        per_message = extra / (2 * n * batch)
        print(f"  {batch:2}-message requests: {per_message:9,.0f}", flush=True)


if __name__ == "__main__":
    main()
