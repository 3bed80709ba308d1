"""The data directory's log: group commit, torn frames, compaction, failures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import zlib
from pathlib import Path

import msgspec
import pytest

from collector.errors import Unavailable
from collector.memory import disk as disk_module
from collector.memory.disk import Disk


class Owner:
    """A live mapping kept in a disk table, with a journal and per-key lists."""

    def __init__(self, directory: Path, *, keep: int = 3) -> None:
        self.disk = Disk(directory)
        self.disk.open()
        self.values: dict[str, object] = {}  # bytes, or objects msgpack encodes
        self.table = self.disk.table("things", self.values.get)
        self.journal = self.disk.journal("events", keep=5)
        self.lists = self.disk.lists("recent", keep=keep)

    def put(self, key: str, value: object) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        self.table.mark(key)


async def test_what_was_committed_is_read_back_and_bounded(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.disk.start()
    for n in range(10):
        owner.put(f"k{n}", f"v{n}".encode())
        owner.journal.append(float(n), f"e{n}".encode())
        owner.lists.append("a", f"a{n}".encode())
    owner.put("k3", None)
    owner.lists.reset("b", [b"b1", b"b2"])
    await owner.disk.commit()
    assert owner.disk.commits == 1  # everything staged in one turn: one write
    owner.lists.reset("b", None)
    await owner.disk.commit()
    # no close: as if killed
    again = Owner(tmp_path)
    rows = dict(again.table.rows())
    assert rows == {f"k{n}": f"v{n}".encode() for n in range(10) if n != 3}
    entries = [value for _, value in again.journal.entries()]
    assert entries == [f"e{n}".encode() for n in range(5, 10)]
    assert again.lists.stored() == {"a": [b"a7", b"a8", b"a9"]}


async def test_a_write_scheduled_before_close_does_not_fail_after_it(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.disk.start()
    owner.put("early", b"value")  # schedules a write for the end of this turn
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
    await owner.disk.close()  # in the same turn: close writes it
    owner.put("late", b"value")  # a straggler changes something after close
    await asyncio.sleep(0)  # the write scheduled before close runs now
    assert errors == []
    assert dict(Owner(tmp_path).table.rows()) == {"early": b"value"}


async def test_a_torn_last_frame_is_ignored(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.put("kept", b"yes")
    await owner.disk.commit()
    (segment,) = tmp_path.glob("log.*")
    with segment.open("ab") as out:
        out.write(b"\x10\x00\x00\x00garbage")  # a frame cut short by a crash
    again = Owner(tmp_path)
    assert dict(again.table.rows()) == {"kept": b"yes"}
    again.put("later", b"also")
    await again.disk.commit()
    assert dict(Owner(tmp_path).table.rows()) == {"kept": b"yes", "later": b"also"}


async def test_similar_values_take_a_fraction_of_their_size_on_disk(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.disk.start()
    values = {
        f"visitor-{n}": b'{"campaign-%d": "trigger", "views": %d}' % (n % 20, n) * 20
        for n in range(2000)
    }
    for key, value in values.items():
        owner.put(key, value)
    await owner.disk.commit()
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("log.*"))
    assert on_disk * 5 < sum(len(value) for value in values.values())
    assert dict(Owner(tmp_path).table.rows()) == values


async def test_objects_are_kept_as_msgpack_and_big_integers_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_module, "SEGMENT_BYTES", 512)
    owner = Owner(tmp_path)
    owner.disk.start()
    for round_ in range(30):  # past several segments: compactions fold them into snapshots
        owner.put("plain", {"views": round_, "filler": "x" * 200})
        owner.put("huge", {"views": 2**70 + round_})
        await owner.disk.commit()
    await owner.disk.close()
    assert list(tmp_path.glob("snapshot.*")), "no compaction ran"
    rows = dict(Owner(tmp_path).table.rows())
    assert msgspec.msgpack.decode(rows["plain"]) == {"views": 29, "filler": "x" * 200}
    assert msgspec.json.decode(rows["huge"]) == {"views": 2**70 + 29}


async def test_a_data_dir_of_uncompressed_frames_is_read(tmp_path: Path) -> None:
    # frames as versions before compression wrote them: the records' msgpack, as is
    payload = disk_module._encode([(0, "things", "old", b"value"), (1, "events", 1.0, b"e")])
    header = len(payload).to_bytes(4, "little") + zlib.crc32(payload).to_bytes(4, "little")
    (tmp_path / "log.00000001").write_bytes(header + payload)
    owner = Owner(tmp_path)
    assert dict(owner.table.rows()) == {"old": b"value"}
    assert owner.journal.entries() == [(1.0, b"e")]
    owner.put("new", b"kept")
    await owner.disk.commit()
    assert dict(Owner(tmp_path).table.rows()) == {"old": b"value", "new": b"kept"}


async def test_segments_are_compacted_into_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disk_module, "SEGMENT_BYTES", 4096)
    owner = Owner(tmp_path)
    owner.disk.start()
    for round_ in range(40):
        for n in range(20):
            owner.put(f"k{n}", f"{round_}-{n}".encode() * 10)
        owner.put(f"gone{round_}", b"x")
        owner.put(f"gone{round_}", None)
        owner.journal.append(float(round_), f"e{round_}".encode())
        owner.lists.append("a", f"a{round_}".encode())
        await owner.disk.commit()
    await owner.disk.close()
    assert list(tmp_path.glob("snapshot.*")), "no compaction ran"
    assert len(list(tmp_path.glob("log.*"))) < 40
    again = Owner(tmp_path)
    assert dict(again.table.rows()) == {f"k{n}": f"39-{n}".encode() * 10 for n in range(20)}
    assert [v for _, v in again.journal.entries()] == [f"e{n}".encode() for n in range(35, 40)]
    assert again.lists.stored() == {"a": [b"a37", b"a38", b"a39"]}


async def test_a_failing_write_keeps_what_was_staged_and_recovers(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    owner.disk.start()
    real_write = disk_module.os.write
    failing = True

    def write(fd: int, data: bytes) -> int:
        if failing:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    disk_module.os.write = write  # type: ignore[assignment]
    try:
        owner.put("k", b"v")
        with pytest.raises(Unavailable):
            await owner.disk.commit()
        assert owner.disk.failure == "disk full"
        with pytest.raises(Unavailable):  # refused at once while it fails
            await owner.disk.commit()
        failing = False
        for _ in range(100):
            if owner.disk.failure is None:
                break
            await asyncio.sleep(0.05)
        assert owner.disk.failure is None
    finally:
        disk_module.os.write = real_write  # type: ignore[assignment]
    assert dict(Owner(tmp_path).table.rows()) == {"k": b"v"}


def frame_offsets(segment: Path) -> list[int]:
    """Where each frame of a segment starts."""
    data = segment.read_bytes()
    offsets, offset = [], 0
    while offset + 8 <= len(data):
        offsets.append(offset)
        offset += 8 + int.from_bytes(data[offset : offset + 4], "little")
    return offsets


async def damaged_log(directory: Path) -> Path:
    """A data directory of 30 frames, one key each, with frame 15 damaged in its middle."""
    owner = Owner(directory)
    owner.disk.start()
    for n in range(30):
        owner.put(f"user{n}", f"profile {n}".encode() * 20)
        await owner.disk.commit()
    await owner.disk.close()
    (segment,) = directory.glob("log.*")
    start = frame_offsets(segment)[15]
    data = bytearray(segment.read_bytes())
    data[start + 20] ^= 0xFF  # one flipped byte in frame 15's payload
    segment.write_bytes(bytes(data))
    return segment


async def test_one_damaged_frame_loses_only_its_own_records(tmp_path: Path) -> None:
    await damaged_log(tmp_path)
    rows = dict(Owner(tmp_path).table.rows())
    assert sorted(rows) == sorted(f"user{n}" for n in range(30) if n != 15)
    assert rows["user29"] == b"profile 29" * 20


async def test_compaction_keeps_a_file_it_could_not_read_whole(tmp_path: Path) -> None:
    segment = await damaged_log(tmp_path)
    disk_module.compact(tmp_path, 10**6, {"journals": {}, "lists": {}})
    assert not segment.exists()
    kept = segment.with_name(f"{segment.name}.damaged")
    assert kept.stat().st_size > 0  # the evidence stays, outside what a start reads
    rows = dict(Owner(tmp_path).table.rows())
    assert len(rows) == 29 and "user15" not in rows


async def test_a_failed_compaction_removes_its_partial_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = Owner(tmp_path)
    for n in range(5):
        owner.put(f"k{n}", b"v" * 100)
    await owner.disk.commit()
    await owner.disk.close()
    real_fsync = disk_module.os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_module.os, "fsync", full_disk)
    with pytest.raises(OSError):
        disk_module.compact(tmp_path, 10**6, {"journals": {}, "lists": {}})
    monkeypatch.setattr(disk_module.os, "fsync", real_fsync)
    assert not (tmp_path / "snapshot.tmp").exists()
    assert list(tmp_path.glob("log.*")), "what could not be folded is still there"
    assert len(dict(Owner(tmp_path).table.rows())) == 5


def test_a_second_process_on_the_data_directory_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    owner = Owner(tmp_path)
    program = (
        "import sys\n"
        "from collector.memory.disk import Disk\n"
        "from collector.errors import ConfigError\n"
        "try:\n    Disk(sys.argv[1]).open()\n"
        "except ConfigError as exc:\n    print(exc.problems[0]); sys.exit(2)\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert other.returncode == 2, other.stderr
    assert f"in use by process {os.getpid()}" in other.stdout
    asyncio.run(owner.disk.close())
    again = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert again.returncode == 0, again.stdout + again.stderr
