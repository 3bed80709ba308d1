"""Real Redis servers for tests: a single server and a three-master cluster on free loopback ports.

Each server runs from `redis-server` in its own temporary directory, never on the default port:

    with RedisServer() as server:             # --save "" --appendonly no unless aof=True
        server.url                            # redis://127.0.0.1:PORT/0
        server.stop(); server.start()         # same port and directory (data kept with AOF)
        server.kill()                         # SIGKILL, as a crash

    with RedisClusterServers() as cluster:    # three masters, no replicas
        cluster.url                           # any node; clients discover the rest
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support.poll import wait_until
from tests.support.ports import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _answers(port: int) -> bool:
    """True when something on the port answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a free port, in a temporary directory."""

    def __init__(
        self,
        *,
        aof: bool = False,
        port: int | None = None,
        directory: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self._own_dir = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="tripwire-redis-"))
        self.aof = aof
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command_line(self) -> list[str]:
        """The redis-server arguments."""
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        return [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
            *self.extra,
        ]

    def start(self) -> RedisServer:
        """Start (or restart) the server and wait until it answers."""
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        process = self.process
        log = self.directory / "redis.log"
        try:
            wait_until(
                lambda: _answers(self.port),
                message=lambda: f"redis-server: {log.read_text() if log.exists() else ''}",
                give_up=lambda: process.poll() is not None,
            )
        except AssertionError:
            self.kill()
            raise
        return self

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def cli(self, *args: str) -> str:
        """Run one redis-cli command against this server and return its output."""
        out = subprocess.run(
            [REDIS_CLI, "-p", str(self.port), *args], capture_output=True, check=True, timeout=10
        )
        return out.stdout.decode()

    def flush(self) -> None:
        """Forget every key (between tests)."""
        self.cli("FLUSHALL")
        self.cli("SCRIPT", "FLUSH")

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class RedisClusterServers:
    """Three cluster-enabled masters on free ports, joined with `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tripwire-redis-cluster-"))
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            node_dir = self.directory / f"node{index}"
            node_dir.mkdir()
            port = free_port()
            self.nodes.append(
                RedisServer(
                    port=port,
                    directory=node_dir,
                    extra=[
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            )

    @property
    def url(self) -> str:
        """A redis:// URL naming one node (clients find the others)."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        """Start the masters, assign all slots and wait until the cluster is up."""
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        wait_until(
            lambda: all("cluster_state:ok" in node.cli("CLUSTER", "INFO") for node in self.nodes),
            timeout=30, interval=0.05, message="the test cluster to reach cluster_state:ok",
        )
        return self

    def flush(self) -> None:
        """Forget every key on every master."""
        for node in self.nodes:
            node.flush()

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Worker:
    """A running `tripwire worker` process."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        """What the worker printed so far."""
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def run_worker(config: dict[str, Any], store: str, *, args: Sequence[str] = ()) -> Iterator[Worker]:
    """Start `tripwire worker --store STORE` with this config; stop it (SIGTERM) afterwards."""
    with tempfile.TemporaryDirectory(prefix="tripwire-worker-") as tmp:
        work = Path(tmp)
        config_file = work / "tripwire.json"
        config_file.write_text(json.dumps(config))
        log = work / "worker.log"
        command = [
            sys.executable,
            "-m",
            "collector.cli",
            "worker",
            "--config",
            str(config_file),
            "--store",
            store,
            *args,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(process, log)
        try:
            wait_until(
                lambda: "delivering from" in worker.output(),
                timeout=20,
                message=lambda: f"the worker to start:\n{worker.output()}",
                give_up=lambda: process.poll() is not None,
            )
            yield worker
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
