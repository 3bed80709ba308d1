"""`tripwire serve` refuses what it cannot run with one clear line and a non-zero exit, never a
traceback or a hang: bad files, flags, stores, data directories, durations, networks, hours."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_port

GOOD = "write_keys: [k]\n"

CASES: list[tuple[str, bytes, list[str], str]] = [
    ("config not UTF-8", b'write_keys: [k]\nx: "\xff\xfe"\n', [], "not UTF-8 text"),
    ("config nested 5,000 deep", GOOD.encode() + b"x: " + b"[" * 5000 + b"]" * 5000, [],
     "nested deeper than"),
    ("integer of 5,000 digits", GOOD.encode() + b"priority: " + b"9" * 5000, [],
     "more than 4,300 digits"),
    ("unknown store", GOOD.encode(), ["--store", "foo"], "--store: 'foo'"),
    ("redis port not a number", GOOD.encode(), ["--store", "redis://host:notaport"],
     "the port is not a number"),
    ("unknown timezone", GOOD.encode() + b"timezone: Mars/Olympus\n", [], "unknown timezone"),
    ("port past 65535", GOOD.encode(), ["--port", "70000"], "--port: 70000"),
    ("no workers", GOOD.encode(), ["--workers", "0"], "--workers: 0"),
    ("zero timeout", GOOD.encode() + b"webhooks: {timeout: 0}\n", [],
     "webhooks.timeout: must be more than zero"),
    ("zero header timeout", GOOD.encode() + b"server: {header_timeout: 0s}\n", [],
     "server.header_timeout: must be more than zero"),
    ("network /33", GOOD.encode() + b'webhooks: {allow_list: ["10.0.0.0/33"]}\n', [],
     "webhooks.allow_list[0]"),
    ("hours 24:59", GOOD.encode()
     + b'campaigns: [{id: c, schedule: {hours: "24:59-10:00"}, '
     b'action: {webhook: {url: "https://example.com/"}}}]\n', [],
     "campaigns[0].schedule.hours: invalid hours"),
    ("no write keys", b"campaigns: []\n", [], "write_keys: none"),
    ("data dir is a file", GOOD.encode(), ["--data-dir", "{tmp}/a-file"], "is not a directory"),
    ("a snapshot that is a directory", GOOD.encode(), ["--data-dir", "{tmp}/data"],
     "cannot be read"),
]


def test_worker_refuses_a_redis_url_without_a_port_number(tmp_path: Path) -> None:
    (tmp_path / "tripwire.yaml").write_text(GOOD)
    result = subprocess.run(
        [sys.executable, "-m", "collector.cli", "worker", "--config", "tripwire.yaml",
         "--store", "redis://host:notaport"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "--store: 'redis://host:notaport': the port is not a number from 1 to 65535"
    ]


@pytest.mark.parametrize(("case", "config", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_serve_refuses_with_one_line(
    tmp_path: Path, case: str, config: bytes, args: list[str], message: str
) -> None:
    (tmp_path / "tripwire.yaml").write_bytes(config)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "data" / "snapshot.1").mkdir(parents=True)
    command = [sys.executable, "-m", "collector.cli", "serve", "--config", "tripwire.yaml"]
    command += [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


@pytest.mark.parametrize(
    ("case", "env", "directory", "message"),
    [
        ("timezone from the environment", {"TRIPWIRE_TIMEZONE": "Mars/Olympus"}, None,
         "TRIPWIRE_TIMEZONE: unknown timezone 'Mars/Olympus'"),
        ("legacy state that is a directory", {}, "state.msgpack", "state.msgpack: cannot be read"),
        ("legacy outbox that is a directory", {}, "outbox.msgpack",
         "outbox.msgpack: cannot be read"),
    ],
    ids=lambda value: value if isinstance(value, str) and " " in value else "",
)
def test_serve_refuses_these_with_one_line_and_status_2(
    tmp_path: Path, case: str, env: dict[str, str], directory: str | None, message: str
) -> None:
    (tmp_path / "tripwire.yaml").write_text(GOOD)
    if directory is not None:
        (tmp_path / "data" / directory).mkdir(parents=True)
    command = [sys.executable, "-m", "collector.cli", "serve", "--config", "tripwire.yaml",
               "--data-dir", str(tmp_path / "data"), "--port", str(free_port())]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=30, env={**clean, **env}
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if " INFO " not in line]
    assert len(lines) == 1 and message in lines[0], lines


def test_a_second_serve_on_a_data_directory_in_use_exits_2_naming_the_first(
    tmp_path: Path,
) -> None:
    from tests.support.ports import free_port
    from tests.support.server import run_tripwire

    data = tmp_path / "data"
    with run_tripwire({"write_keys": ["k"]}, data_dir=data) as first:
        (tmp_path / "tripwire.yaml").write_text(GOOD)
        second = subprocess.run(
            [sys.executable, "-m", "collector.cli", "serve", "--config", "tripwire.yaml",
             "--port", str(free_port()), "--data-dir", str(data)],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 2, second.stderr
        (line,) = second.stderr.strip().splitlines()
        assert f"in use by process {first.process.pid}" in line and str(data) in line
        assert first.post("/v1/batch", {"writeKey": "k", "batch": [
            {"type": "page", "anonymousId": "a"}]}).status_code == 200
