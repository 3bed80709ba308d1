"""Shared helpers for the benchmarks: free ports, processes, waiting, wrk and its output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
METRICS_TOKEN = "bench-metrics-token"  # the servers started here open /metrics with it
UVICORN_FLAGS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--log-level",
    "warning",
    "--no-access-log",
]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    """Wait until `url` answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            httpx.get(url, timeout=1.0, trust_env=False)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def pinned(cores: str) -> list[str]:
    """A `taskset` prefix pinning a process to some cores, when taskset exists."""
    return ["taskset", "-c", cores] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


@contextlib.contextmanager
def process(
    command: Sequence[str], ready_url: str, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends (taskset execs it: the pid is the server's)."""
    environment = {**os.environ, "TRIPWIRE_METRICS_TOKEN": METRICS_TOKEN, **(env or {})}
    proc = subprocess.Popen(list(command), cwd=ROOT, env=environment)
    try:
        wait_http(ready_url)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def bare_app(port: int, cores: str = "0") -> Iterator[str]:
    """The baseline ASGI app on uvicorn with the collector's settings."""
    command = [
        *pinned(cores),
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.bare_app:app",
        "--port",
        str(port),
        *UVICORN_FLAGS,
    ]
    with process(command, f"http://127.0.0.1:{port}/"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def tripwire(
    config: dict[str, Any], port: int, cores: str = "0", args: Sequence[str] = ()
) -> Iterator[str]:
    """`tripwire serve` with this config: its base URL."""
    with tripwire_process(config, port, cores, args) as (url, _pid):
        yield url


def serve_command(config: Path, port: int, data_dir: Path, cores: str = "0") -> list[str]:
    """The command line of `tripwire serve` on these cores, with this config and data dir."""
    return [
        *pinned(cores),
        sys.executable,
        "-m",
        "collector.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
    ]


@contextlib.contextmanager
def tripwire_process(
    config: dict[str, Any], port: int, cores: str = "0", args: Sequence[str] = ()
) -> Iterator[tuple[str, int]]:
    """`tripwire serve` with this config: its base URL and process id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tripwire.json"
        path.write_text(json.dumps(config))
        command = [*serve_command(path, port, Path(tmp) / "data", cores), *args]
        with process(command, f"http://127.0.0.1:{port}/healthz") as proc:
            yield f"http://127.0.0.1:{port}", proc.pid


WRK_SCRIPT = r"""
-- Each run sends messages no earlier run sent: the messageIds carry the run's token and the
-- visitors are drawn from a generator seeded per run, so no figure rides on the cheap
-- duplicate path.
local counter = 0
local batch = tonumber(os.getenv("BATCH") or "1")
local users = tonumber(os.getenv("USERS") or "10000")
local run = os.getenv("RUN") or "run"
local seed = tonumber(os.getenv("SEED") or "1")
local seeded = false
local thread_id = 0
setup = function(thread) thread_id = thread_id + 1; thread:set("tid", thread_id) end
request = function()
  if not seeded then
    math.randomseed(seed + 7919 * (tid or 0))
    seeded = true
  end
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local user = math.random(users)
    parts[i] = string.format(
      '{"type":"page","messageId":"m-%s-%s-%d","anonymousId":"visitor-%d",' ..
      '"context":{"page":{"path":"/products/%d","url":"https://shop.example/products/%d","title":"Product"}}}',
      run, tostring(tid), counter, user, counter %% 50, counter %% 50)
  end
  local body = '{"writeKey":"bench-key","batch":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/v1/batch", {["Content-Type"] = "text/plain"}, body)
end
"""


def wrk(
    url: str,
    *,
    batch: int = 1,
    seconds: float = 5,
    connections: int = 32,
    cores: str = "1",
    users: int = 100_000,
) -> float:
    """Requests per second that wrk reaches against `url`'s ingest endpoint.

    Every call sends messages of its own: a fresh token in each messageId, and visitors drawn
    (among `users`) by a generator with a fresh seed.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("%%", "%"))
    env = {
        **os.environ,
        "BATCH": str(batch),
        "USERS": str(users),
        "RUN": secrets.token_hex(6),
        "SEED": str(secrets.randbelow(2**31)),
    }
    duration = f"{seconds:g}s"
    result = subprocess.run(
        [*pinned(cores), "wrk", "-t1", f"-c{connections}", f"-d{duration}", "-s", script.name, url],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=seconds + 60,
    )
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests:\n{result.stdout}")
    match = re.search(r"Requests/sec:\s+([0-9.]+)", result.stdout)
    if not match:
        raise RuntimeError(result.stdout + result.stderr)
    return float(match.group(1))


@contextlib.contextmanager
def redis_server(cores: str = "1") -> Iterator[str]:
    """A private redis-server on a free port (never another one), no persistence, on `cores`
    (beside the load generator, off the measured server's core); yields its URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [
            *pinned(cores),
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
            "--logfile",
            str(Path(tmp) / "log"),
        ]
        proc = subprocess.Popen(command)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            deadline = time.monotonic() + 10
            while (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True
                ).stdout.strip()
                != "PONG"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def metric_sum(base_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    text = httpx.get(base_url + "/metrics", headers=headers, trust_env=False).text
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            total += float(value)
    return total
