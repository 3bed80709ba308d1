"""Run a real `tripwire serve` process on a free port, as a user would, and talk to it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.poll import wait_until
from tests.support.ports import free_port

__all__ = ["ADMIN_TOKEN", "METRICS_TOKEN", "Tripwire", "run_tripwire", "stop_process", "wait_until"]

ADMIN_TOKEN = "test-admin-token"
METRICS_TOKEN = "test-metrics-token"


class Tripwire:
    """A running collector: its URL, its process and a client for its APIs."""

    def __init__(
        self, url: str, process: subprocess.Popen[bytes], data_dir: Path, log: Path
    ) -> None:
        self.url = url
        self.process = process
        self.data_dir = data_dir
        self.log = log
        self.client = httpx.Client(base_url=url, timeout=10.0, trust_env=False)

    def post(self, path: str, payload: Any, **kwargs: Any) -> httpx.Response:
        """POST JSON to the collector."""
        return self.client.post(path, json=payload, **kwargs)

    def admin_get(self, path: str) -> httpx.Response:
        """GET an admin API path with the test admin token."""
        return self.client.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def user(self, identity: str) -> dict[str, Any] | None:
        """The admin lookup of a user, or None when unknown."""
        response = self.admin_get(f"/admin/api/users/{identity}")
        return None if response.status_code == 404 else response.raise_for_status().json()

    def metrics(self) -> str:
        """The Prometheus text of /metrics, read with the metrics token."""
        headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        return self.client.get("/metrics", headers=headers).raise_for_status().text

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one Prometheus sample (0 when absent)."""
        text = self.metrics()
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == wanted:
                return float(value)
        return 0.0

    def output(self) -> str:
        """What the process printed so far."""
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_tripwire(
    config: dict[str, Any] | None = None,
    *,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    data_dir: Path | None = None,
    port: int | None = None,
) -> Iterator[Tripwire]:
    """Start `tripwire serve` with this config on a free port; stop it (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory(prefix="tripwire-test-") as tmp:
        work = Path(tmp)
        config_file = work / "tripwire.json"
        config_file.write_text(json.dumps(config or {"write_keys": ["test-key"]}))
        port = port or free_port()
        data = data_dir or work / "data"
        log = work / "server.log"
        command = [
            sys.executable,
            "-m",
            "collector.cli",
            "serve",
            "--config",
            str(config_file),
            "--port",
            str(port),
            "--data-dir",
            str(data),
            *args,
        ]
        full_env = {
            **os.environ,
            "TRIPWIRE_ADMIN_TOKEN": ADMIN_TOKEN,
            "TRIPWIRE_METRICS_TOKEN": METRICS_TOKEN,
            **(env or {}),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        server = Tripwire(f"http://127.0.0.1:{port}", process, data, log)
        try:
            wait_until(lambda: _healthy(server), timeout=20, message=f"tripwire on port {port}")
            yield server
        finally:
            server.client.close()
            stop_process(process)


def _healthy(server: Tripwire) -> bool:
    if server.process.poll() is not None:
        raise AssertionError(f"tripwire exited early:\n{server.output()}")
    try:
        return server.client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
