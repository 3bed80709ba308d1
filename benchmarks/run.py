"""`make bench`: run every benchmark in this folder, each bounded in time, and print its figures.

The durations are shortened from each benchmark's defaults so the whole run takes a few
minutes; run a benchmark alone (`python -m benchmarks.NAME --help`) for longer figures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERDICT = re.compile(r": (met|NOT MET)\b|\b(OK|OVER)$")  # how a benchmark ends a target line
TIMEOUT = 420.0  # seconds one benchmark may take before it is stopped
ARGS: dict[str, list[str]] = {
    "bench_ingest": ["--seconds", "5"],
    "bench_delivery": ["--rounds", "2"],
    "bench_durability": ["--seconds", "3", "--messages", "20000"],
    "bench_instructions": ["--requests", "1000"],
    "bench_latency": ["--seconds", "5"],
    "bench_memory": ["--visitors", "20000"],
    "bench_recovery": ["--visitors", "50000"],
    "bench_redis": ["--latency-only"],  # Redis ingest figures: bench_ingest
    "bench_timers": ["--seconds", "3"],
}


def run(name: str, verdicts: list[str]) -> bool:
    """Run one benchmark as a module from the repository root, echo what it prints and keep
    its target lines (met / not met) in `verdicts`; stop it past TIMEOUT."""
    command = [sys.executable, "-m", f"benchmarks.{name}", *ARGS.get(name, [])]
    print(f"\n== {' '.join(command[2:])} ==", flush=True)
    began = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=HERE.parent, start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    reader = threading.Thread(target=_echo, args=(proc, name, verdicts), daemon=True)
    reader.start()
    try:
        code = proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"{name}: stopped after {TIMEOUT:.0f} s", flush=True)
        return False
    reader.join(5)
    print(f"({name}: {time.monotonic() - began:.0f} s)", flush=True)
    return code == 0


def _echo(proc: subprocess.Popen[str], name: str, verdicts: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if VERDICT.search(line):
            verdicts.append(f"{name}: {line.strip()}")


def main() -> int:
    """Run each `bench_*.py` (or those named on the command line)."""
    names = sys.argv[1:] or [script.stem for script in sorted(HERE.glob("bench_*.py"))]
    verdicts: list[str] = []
    failed = [name for name in names if not run(name, verdicts)]
    print("\n== targets ==")
    for line in verdicts:
        print(line)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
