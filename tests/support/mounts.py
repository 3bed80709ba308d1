"""Small tmpfs mounts, to give a test a disk that fills up or cannot be written at all.

Mounting needs root (CAP_SYS_ADMIN), which the CI machine has. Elsewhere the test is skipped,
saying why; as root a mount that fails is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A fresh tmpfs of `size` (such as "4m") mounted on a temporary directory."""
    path = Path(tempfile.mkdtemp(prefix="tripwire-tmpfs-"))
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        path.rmdir()
        reason = f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}"
        if os.geteuid() == 0:
            raise AssertionError(reason)
        pytest.skip(reason + " (mounting needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def fill(directory: Path) -> Path:
    """Write a file in `directory` until its filesystem is full; return the file."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError:
                break
    with filler.open("ab", buffering=0) as out:  # the last partial chunk
        for _ in range(65536):
            try:
                out.write(b"\0")
            except OSError:
                break
    return filler
