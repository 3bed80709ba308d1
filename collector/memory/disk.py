"""The data directory: what memory mode keeps, appended to a log before each request is answered.

(Past 500 lines on purpose: the writer, the reader and the compaction process share one frame
format and one set of recovery rules, which must change together.)

Parts of the process register what they keep:

- a `Table` mirrors a live mapping (profiles, pending webhooks, dead letters, campaigns…): a
  change marks its key, and the next commit re-reads the key's current value from its owner and
  writes it (or a deletion when the owner no longer holds the key). A key changed by many
  events between two commits is encoded and written once.
- a `Journal` is an append-only list of entries kept by count or by age (the delivery log,
  dedupe marks).
- a `Lists` keeps a short list per key, bounded to its newest items (each profile's recent
  events): an event appends one item instead of rewriting the list.

`await disk.commit()` returns once everything staged before the call is written: one frame,
one write(2), for everything every concurrent request staged meanwhile (group commit). The
write is handed to the operating system before commit returns, so it survives the process
being killed at any moment; it is not fsynced on the request's path (a power cut may lose the
last moments, never what was compacted). A frame of up to `INLINE_BYTES` is written in the
event loop, where a request-sized write costs a third of a hand-over; a bigger one by a writer
thread, so a burst does not hold the loop.

The log is a series of segments (`log.<n>`); frames carry their length and a CRC, so a frame
torn by a crash is recognised and ignored, and a frame damaged in the middle of a segment is
skipped (logged as an error) with reading resumed at the next frame that checks out: one bad
frame loses only its own records. A frame's records are compressed with Zstandard, snapshots
at level 3 and the log at level -1: the few records of a request or two compress as well as at
level 1 for a third of its CPU (2.3 against 7.2 µs a frame, measured on this pipeline's frames),
frames of many requests come out 6-8 % bigger for 15-30 % less. Profiles repeat each other's
campaign names and field layout, so a frame of many profiles shrinks four- to fivefold, which keeps
the bytes written, the disk used and the compactions few. (Frames of earlier versions, not
compressed, are read as they are.) Past `SEGMENT_BYTES` the writer starts a new segment and a
separate process (`python -m collector.memory.disk compact`, off this process's core and GIL)
folds the old snapshot and the closed segments into a new snapshot (`snapshot.<n>`, fsynced,
then renamed), keeping each key's latest value, and removes what it folded — except a file it
could not read whole, which it keeps as `<name>.damaged` for inspection. A compaction that
fails removes its partial `snapshot.tmp`. A start reads the newest snapshot, then the segments
after it.

One process at a time uses a data directory: `open` locks it (the file `lock`, which names the
holder) and a second process is refused with a `ConfigError` naming the first.

When a write fails (disk full, I/O error) the partial frame is cut off, what was staged is kept,
waiting commits raise `Unavailable` (503, the client retries), `failure` says why, and the
write is retried every second until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import zstandard

from collector.errors import ConfigError, Unavailable

log = logging.getLogger("tripwire.disk")

SEGMENT_BYTES: Final = 64 * 1024 * 1024  # a segment this big is closed and compacted
RETRY_SECONDS: Final = 1.0
# A frame up to this size is compressed and written in the event loop: handing it to the writer
# thread and back (a queue, two wake-ups, the GIL passed twice) cost ~55 µs of CPU in process,
# three times the write itself. Bigger frames (imports, bursts) go to the thread.
INLINE_BYTES: Final = 64 * 1024
_HEADER: Final = 8  # frame: 4-byte length, 4-byte CRC32 of the payload, then the payload
_SNAPSHOT_FRAME: Final = 1 << 20
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"  # how a compressed frame's payload starts
_SEGMENT = re.compile(r"log\.(\d+)")
_SNAPSHOT = re.compile(r"snapshot\.(\d+)")

# record kinds
_SET, _APPEND, _LIST_APPEND, _LIST_SET = 0, 1, 2, 3

T = TypeVar("T")
Source = Callable[[str], object]
"""A key's current value — bytes, or an object msgpack encodes (one pass for a whole frame,
the cheap way for the busiest table) — or None once the key is gone."""
Record = tuple[int, str, Any, Any]
_encode = msgspec.msgpack.Encoder().encode
_encode_json = msgspec.json.Encoder().encode
_decode_records = msgspec.msgpack.Decoder(list[tuple[int, str, Any, msgspec.Raw]]).decode
_decode_bytes = msgspec.msgpack.Decoder(bytes).decode
_decode_items = msgspec.msgpack.Decoder(list[bytes] | None).decode
_BIN: Final = frozenset(b"\xc4\xc5\xc6")  # the first byte of a msgpack bin (bytes) value
_NIL: Final = msgspec.Raw(b"\xc0")  # a deletion
_decompressor = zstandard.ZstdDecompressor()


def check_data_dir(path: str | os.PathLike[str]) -> Path:
    """The data directory, created if missing; ConfigError (one line) when it cannot be used."""
    directory = Path(path)
    where = f"data directory {str(directory)!r}"
    if directory.exists() and not directory.is_dir():
        raise ConfigError([f"{where}: exists and is not a directory"])
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot be created ({exc.strerror or exc})"]) from None
    probe = directory / f".write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise ConfigError([f"{where}: not writable ({exc.strerror or exc})"]) from None
    return directory


def lock_data_dir(directory: Path) -> int:
    """Lock the data directory for this process (its open lock file, to keep open); a
    ConfigError naming the holder when another process has it."""
    path = directory / "lock"
    where = f"data directory {str(directory)!r}"
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot be locked ({exc.strerror or exc})"]) from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(handle, 512, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(handle)
        raise ConfigError(
            [f"{where}: in use by {holder}; stop it, or give this one another --data-dir"]
        ) from None
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:400]
    os.ftruncate(handle, 0)
    os.pwrite(handle, f"process {os.getpid()} ({command})\n".encode(), 0)
    return handle


class Table:
    """Rows mirroring a live mapping, keyed by text; see the module docstring."""

    def __init__(self, disk: Disk, name: str, source: Source) -> None:
        self.name = name
        self._disk = disk
        self._source = source
        self.dirty: set[str] = set()

    def mark(self, key: str) -> None:
        """The value under `key` changed (or went away): write it with the next commit."""
        self.dirty.add(key)
        self._disk.wake()

    def rows(self) -> list[tuple[str, bytes]]:
        """Every stored (key, value), read at start: the bytes the source gave, or the msgpack
        of the object it gave (JSON when msgpack could not carry it: an integer past 64 bits)."""
        return list(self._disk.loaded.tables.pop(self.name, {}).items())

    def stage(self, records: list[Record]) -> None:
        """Add a record per marked key, with its current value."""
        dirty, self.dirty = self.dirty, set()
        source = self._source
        name = self.name
        for key in dirty:
            records.append((_SET, name, key, source(key)))


class Journal:
    """Append-only entries, oldest first, keeping the newest `keep` and those within `max_age`."""

    def __init__(self, disk: Disk, name: str, keep: int | None, max_age: float | None) -> None:
        self.name = name
        self._disk = disk
        self.keep = keep
        self.max_age = max_age
        self.pending: list[Record] = []

    def append(self, at: float, value: bytes) -> None:
        """Add an entry (`at`: its time, for the age limit)."""
        self.pending.append((_APPEND, self.name, at, value))
        self._disk.wake()

    def entries(self) -> list[tuple[float, bytes]]:
        """Every stored (time, value), oldest first, read at start."""
        return list(self._disk.loaded.journals.pop(self.name, ()))


class Lists:
    """A short list per key, keeping each key's newest `keep` items."""

    def __init__(self, disk: Disk, name: str, keep: int) -> None:
        self.name = name
        self._disk = disk
        self.keep = keep
        self.pending: list[Record] = []

    def append(self, key: str, item: bytes) -> None:
        """Add an item to a key's list."""
        self.pending.append((_LIST_APPEND, self.name, key, item))
        self._disk.wake()

    def reset(self, key: str, items: list[bytes] | None) -> None:
        """Replace a key's list (None: remove it)."""
        self.pending.append((_LIST_SET, self.name, key, items))
        self._disk.wake()

    def stored(self) -> dict[str, list[bytes]]:
        """Every stored key's list, oldest item first, read at start."""
        found = self._disk.loaded.lists.pop(self.name, {})
        keep = self.keep
        return {key: list(items)[-keep:] for key, items in found.items() if items}


@dataclass
class Contents:
    """What a data directory holds, folded from its snapshot and segments."""

    tables: dict[str, dict[str, bytes]] = field(default_factory=dict)
    journals: dict[str, deque[tuple[float, bytes]]] = field(default_factory=dict)
    lists: dict[str, dict[str, deque[bytes]]] = field(default_factory=dict)
    damaged: list[Path] = field(default_factory=list)  # files with a frame that did not read


class Disk:
    """The log and its writer; `open` before use, `start` in the event loop, `close` at stop."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.loaded = Contents()
        self._fd: int | None = None
        self._lock: int | None = None  # the open lock file while this process holds it
        self._segment = 0
        self._size = 0
        self._cut_failed = False  # a failed write left bytes that could not be cut off
        self._tables: list[Table] = []
        self._journals: list[Journal] = []
        self._lists: list[Lists] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start: writes are async
        self._scheduled = False  # a write is due at the end of this turn of the event loop
        self._retry: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[None] | None = None  # the write in flight
        # one thread writes, so that a slow disk never holds up the event loop
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tripwire-disk")
        self._compressor = zstandard.ZstdCompressor(level=-1)  # one write at a time uses it
        self._compaction: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the last write failed, until one succeeds
        self.commits = 0

    @property
    def path(self) -> Path:
        """The data directory."""
        return self.directory

    # -- set-up -------------------------------------------------------------------------------

    def open(self) -> None:
        """Check the directory, read what it holds and start a new segment."""
        check_data_dir(self.directory)
        if self._lock is None:
            self._lock = lock_data_dir(self.directory)
        with contextlib.suppress(OSError):
            (self.directory / "snapshot.tmp").unlink()  # a compaction that did not finish
        try:
            snapshot, segments = _files(self.directory)
            self.loaded = fold(snapshot, segments)
            self._segment = max([n for n, _ in segments] + [_number(snapshot), 0]) + 1
            self._open_segment()
        except OSError as exc:
            where = f"data directory {str(self.directory)!r}"
            raise ConfigError([f"{where}: cannot be read ({exc.strerror or exc})"]) from None

    def table(self, name: str, source: Source) -> Table:
        """A keyed table; `source(key)` gives a key's current value, or None once it is gone."""
        table = Table(self, name, source)
        self._tables.append(table)
        return table

    def journal(self, name: str, keep: int | None = None, max_age: float | None = None) -> Journal:
        """An append-only journal keeping its newest `keep` entries, those within `max_age`."""
        journal = Journal(self, name, keep, max_age)
        self._journals.append(journal)
        if name in self.loaded.journals:
            self.loaded.journals[name] = _bounded(self.loaded.journals[name], keep, max_age)
        return journal

    def lists(self, name: str, keep: int) -> Lists:
        """Short lists per key, keeping the newest `keep` items of each."""
        lists = Lists(self, name, keep)
        self._lists.append(lists)
        return lists

    def earlier(self, name: str, kind: type[T]) -> T | None:
        """What a version before the log saved in the file `name` at a clean stop, if the
        directory holds one not yet imported; an unreadable one is set aside as
        `<name>.unreadable`, with an error in the log."""
        path = self.directory / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from None
        try:
            return msgspec.msgpack.decode(data, type=kind)
        except msgspec.DecodeError as exc:
            path.replace(path.with_name(f"{name}.unreadable"))
            log.error("%s cannot be read (%s): set aside as %s.unreadable", path, exc, name)
            return None

    def imported(self, name: str) -> None:
        """An earlier version's file is in the log now: rename it `<name>.imported`."""
        path = self.directory / name
        path.replace(path.with_name(f"{name}.imported"))

    def start(self) -> None:
        """Write from now on in the running event loop, once per turn (group commit)."""
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Write what is staged and close; raises OSError when it cannot be written."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        self._loop = None
        if self._retry is not None:
            self._retry.cancel()
        if self._compaction is not None:
            with contextlib.suppress(Exception):
                await self._compaction
        self._thread.shutdown(wait=True)
        if self._fd is None:
            self._unlock()
            return
        self._flush_now()
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)
        self._unlock()
        if self.failure is not None:
            raise OSError(errno.EIO, f"{self.directory}: unsaved changes: {self.failure}")

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    # -- writing ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was staged: write it at the end of this turn of the event loop."""
        if not self._scheduled and self._loop is not None and self.failure is None:
            self._scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    async def commit(self) -> None:
        """Wait until everything staged so far is written; Unavailable when it cannot be."""
        if self.failure is not None:
            raise Unavailable(f"cannot save to the data directory: {self.failure}", retry_after=5)
        if self._loop is None:  # not started (tools, tests): write now
            self._flush_now()
            if self.failure is not None:
                raise Unavailable(
                    f"cannot save to the data directory: {self.failure}", retry_after=5
                )
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        self.wake()
        await waiter

    def _scheduled_flush(self) -> None:
        """Write what is staged (a big frame in the writer thread), unless a write is in flight
        (then the next one takes it, with whatever else arrives meanwhile: group commit)."""
        self._scheduled = False
        if self._loop is None:
            return  # closed since this was scheduled: `close` wrote what was staged
        if self._writing is not None:
            return  # `_written` schedules the next write
        records, waiters = self._take()
        if not records:
            self._settle(waiters, None)
            return
        payload = _encode_records(records)
        if len(payload) <= INLINE_BYTES:
            error: OSError | None = None
            try:
                self._write(payload)
            except OSError as exc:
                error = exc
            self._written(records, waiters, error)
            return
        self._writing = self._loop.run_in_executor(self._thread, self._write, payload)
        self._writing.add_done_callback(
            lambda done: self._written(records, waiters, done.exception())
        )

    def _written(
        self,
        records: list[Record],
        waiters: list[asyncio.Future[None]],
        error: BaseException | None,
    ) -> None:
        self._writing = None
        self._finish(records, waiters, error)
        if self.failure is not None:
            if self._retry is None and self._loop is not None:
                self._retry = self._loop.call_later(RETRY_SECONDS, self._retry_flush)
            return
        if self._size > SEGMENT_BYTES:
            try:
                self._rotate()
            except OSError as exc:
                log.error("cannot start a new log segment in %s: %s", self.directory, exc)
        if self._waiters or self._staged():
            self.wake()

    def _retry_flush(self) -> None:
        self._retry = None
        self._scheduled_flush()

    def _staged(self) -> bool:
        parts: list[Journal | Lists] = [*self._journals, *self._lists]
        return any(t.dirty for t in self._tables) or any(part.pending for part in parts)

    def _take(self) -> tuple[list[Record], list[asyncio.Future[None]]]:
        """What is staged, as records, and the commits waiting for it."""
        waiters, self._waiters = self._waiters, []
        records: list[Record] = []
        for table in self._tables:
            if table.dirty:  # most of a process's tables change now and then, not every pass
                table.stage(records)
        parts: list[Journal | Lists] = [*self._journals, *self._lists]
        for part in parts:
            if part.pending:
                records.extend(part.pending)
                part.pending = []
        return records, waiters

    def _flush_now(self) -> None:
        """Write what is staged in this thread (before start, at close)."""
        records, waiters = self._take()
        error: BaseException | None = None
        if records:
            try:
                self._write(_encode_records(records))
            except OSError as exc:
                error = exc
        self._finish(records, waiters, error)

    def _finish(
        self,
        records: list[Record],
        waiters: list[asyncio.Future[None]],
        error: BaseException | None,
    ) -> None:
        """After a write: answer its commits; on failure keep its records staged for a retry."""
        if error is not None:
            self._keep_staged(records)
            if self._cut_failed:
                with contextlib.suppress(OSError):
                    self._rotate()  # go on in a fresh segment, after the torn bytes
                    self._cut_failed = False
            if self.failure is None:
                log.error("cannot write to %s: %s; ingest answers 503", self.directory, error)
            self.failure = _describe(error)
            self._settle(
                waiters,
                Unavailable(f"cannot save to the data directory: {self.failure}", retry_after=5),
            )
            return
        if records:
            self.commits += 1
        if self.failure is not None:
            log.warning("writing to %s works again", self.directory)
            self.failure = None
        self._settle(waiters, None)

    @staticmethod
    def _settle(waiters: list[asyncio.Future[None]], error: Exception | None) -> None:
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
                waiter.exception()  # retrieved: its request may have gone meanwhile

    def _write(self, payload: bytes) -> None:
        """Append a frame of `payload`; a failure cuts off what it wrote."""
        if self._fd is None:
            raise OSError(errno.EBADF, "the data directory is closed")
        frame = _frame(payload, self._compressor)
        view = memoryview(frame)
        written = 0
        try:
            while written < len(frame):
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError:
                    self._cut_failed = True
            raise
        self._size += written

    def _keep_staged(self, records: list[Record]) -> None:
        """Put a failed frame's records back (tables re-read their values at the next try)."""
        tables = {table.name: table for table in self._tables}
        parts: list[Journal | Lists] = [*self._journals, *self._lists]
        journals = {part.name: part for part in parts}
        redo: dict[str, list[Record]] = {}
        for record in records:
            if record[0] == _SET:
                tables[record[1]].dirty.add(record[2])
            else:
                redo.setdefault(record[1], []).append(record)
        for name, kept in redo.items():
            part = journals[name]
            part.pending[:0] = kept

    def _open_segment(self) -> None:
        path = self.directory / f"log.{self._segment:08d}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        """Close the segment, start the next one, and compact the closed ones."""
        if self._fd is not None:
            os.close(self._fd)
        closed = self._segment
        self._segment += 1
        try:
            self._open_segment()
        except OSError:
            self._fd = None
            raise
        if self._compaction is None or self._compaction.done():
            self._compaction = asyncio.get_running_loop().create_task(self._compact(closed))

    async def _compact(self, upto: int) -> None:
        """Fold the snapshot and segments up to `upto` into a new snapshot, in another process."""
        limits = {
            "journals": {j.name: [j.keep, j.max_age] for j in self._journals},
            "lists": {part.name: part.keep for part in self._lists},
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "collector.memory.disk",
            "compact",
            str(self.directory),
            str(upto),
            json.dumps(limits),
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await process.communicate()
        if process.returncode != 0:
            with contextlib.suppress(OSError):
                (self.directory / "snapshot.tmp").unlink()  # left if the process was killed
            log.warning("compacting %s failed: %s", self.directory, errors.decode().strip())


# -- reading and compacting (also run as `python -m collector.memory.disk compact DIR UPTO LIMITS`)


def _number(path: Path | None) -> int:
    if path is None:
        return 0
    match = _SNAPSHOT.fullmatch(path.name) or _SEGMENT.fullmatch(path.name)
    return int(match.group(1)) if match else 0


def _files(directory: Path) -> tuple[Path | None, list[tuple[int, Path]]]:
    """The newest snapshot and the segments written after it, oldest first."""
    snapshots: list[tuple[int, Path]] = []
    segments: list[tuple[int, Path]] = []
    for path in directory.iterdir():
        if match := _SNAPSHOT.fullmatch(path.name):
            snapshots.append((int(match.group(1)), path))
        elif match := _SEGMENT.fullmatch(path.name):
            segments.append((int(match.group(1)), path))
    snapshot = max(snapshots)[1] if snapshots else None
    covered = _number(snapshot)
    return snapshot, sorted(s for s in segments if s[0] > covered)


def _frames(path: Path, damaged: list[Path] | None = None) -> Iterator[list[Record]]:
    """The records of each whole frame in a file. A frame that does not check out is skipped
    when a later one does (reading resumes there), and ends the file when none does (a torn
    tail); either way the file is added to `damaged`."""
    data = path.read_bytes()
    offset = 0
    while offset + _HEADER <= len(data):
        payload = _checked(data, offset)
        if payload is None:
            resume = _next_frame(data, offset + 1)
            if resume is None:
                log.warning("%s: ignoring a torn or damaged frame at byte %d", path, offset)
            else:
                log.error(
                    "%s: skipped a damaged frame: bytes %d to %d are lost; reading on",
                    path, offset, resume,
                )
            if damaged is not None:
                damaged.append(path)
            if resume is None:
                return
            offset = resume
            continue
        offset += _HEADER + len(payload)
        if payload[:4] == _ZSTD_MAGIC:
            payload = _decompressor.decompress(payload)
        yield _decode_records(payload)
    if offset != len(data) and damaged is not None:
        damaged.append(path)  # a few bytes short of a frame header: torn


def _checked(data: bytes, offset: int) -> bytes | None:
    """The payload of the frame at `offset`, or None when it is cut short or its CRC is wrong."""
    length = int.from_bytes(data[offset : offset + 4], "little")
    crc = int.from_bytes(data[offset + 4 : offset + 8], "little")
    payload = data[offset + _HEADER : offset + _HEADER + length]
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    return payload


def _next_frame(data: bytes, start: int) -> int | None:
    """Where the next frame that checks out begins, at or after `start` (compressed frames
    only: their payload starts with Zstandard's magic, which finds candidates quickly)."""
    found = data.find(_ZSTD_MAGIC, start + _HEADER)
    while found != -1:
        if _checked(data, found - _HEADER) is not None:
            return found - _HEADER
        found = data.find(_ZSTD_MAGIC, found + 1)
    return None


def fold(snapshot: Path | None, segments: list[tuple[int, Path]]) -> Contents:
    """Everything the snapshot and the segments after it hold: each key's latest value."""
    contents = Contents()
    tables, journals, lists = contents.tables, contents.journals, contents.lists
    paths = ([snapshot] if snapshot else []) + [path for _, path in segments]
    for path in paths:
        for records in _frames(path, contents.damaged):
            for kind, name, key, raw in records:
                if kind == _SET:
                    table = tables.setdefault(name, {})
                    if raw == _NIL:
                        table.pop(key, None)
                    else:
                        table[key] = _stored(raw)
                elif kind == _APPEND:
                    journals.setdefault(name, deque()).append((key, _stored(raw)))
                elif kind == _LIST_APPEND:
                    lists.setdefault(name, {}).setdefault(key, deque()).append(_stored(raw))
                elif kind == _LIST_SET:
                    items = _decode_items(raw)
                    if items is None:
                        lists.setdefault(name, {}).pop(key, None)
                    else:
                        lists.setdefault(name, {})[key] = deque(items)
    return contents


def read_table(directory: str | os.PathLike[str], name: str) -> dict[str, bytes]:
    """One table as a data directory holds it, read without writing (a server may be running)."""
    path = Path(directory)
    if not path.is_dir():
        return {}
    try:
        snapshot, segments = _files(path)
        return fold(snapshot, segments).tables.get(name, {})
    except FileNotFoundError:  # a compaction removed a file meanwhile: read again
        snapshot, segments = _files(path)
        return fold(snapshot, segments).tables.get(name, {})


def _bounded(
    entries: deque[tuple[float, bytes]], keep: int | None, max_age: float | None
) -> deque[tuple[float, bytes]]:
    if max_age is not None:
        cutoff = time.time() - max_age
        while entries and entries[0][0] < cutoff:
            entries.popleft()
    if keep is not None:
        while len(entries) > keep:
            entries.popleft()
    return entries


def compact(directory: Path, upto: int, limits: dict[str, Any]) -> None:
    """Write `snapshot.<upto>` from the newest snapshot and segments up to `upto`, then
    remove what it replaces."""
    snapshot, segments = _files(directory)
    segments = [s for s in segments if s[0] <= upto]
    contents = fold(snapshot, segments)
    records: list[Record] = []
    for name, table in contents.tables.items():
        records.extend((_SET, name, key, value) for key, value in table.items())
    for name, entries in contents.journals.items():
        keep, max_age = limits["journals"].get(name, [None, None])
        records.extend((_APPEND, name, at, value) for at, value in _bounded(entries, keep, max_age))
    for name, per_key in contents.lists.items():
        keep = limits["lists"].get(name)
        for key, items in per_key.items():
            kept = list(items)[-keep:] if keep else list(items)
            if kept:
                records.append((_LIST_SET, name, key, kept))
    partial = directory / "snapshot.tmp"
    try:
        _write_snapshot(partial, records)
        os.replace(partial, directory / f"snapshot.{upto:08d}")
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()  # a full disk must not stay full of a snapshot that never was
        raise
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    damaged = set(contents.damaged)
    for path in ([snapshot] if snapshot else []) + [path for _, path in segments]:
        if path in damaged:  # not read whole: kept for inspection, never read again
            path.replace(path.with_name(f"{path.name}.damaged"))
            log.error("%s could not be read whole: kept as %s.damaged", path, path.name)
        else:
            path.unlink()


def _write_snapshot(partial: Path, records: list[Record]) -> None:
    """Write records as snapshot frames to `partial`, fsynced."""
    compressor = zstandard.ZstdCompressor(level=3)  # off the request path: smaller, slower
    with partial.open("wb") as out:
        frame: list[Record] = []
        size = 0
        for record in records:
            frame.append(record)
            size += len(record[3]) if isinstance(record[3], bytes) else 256
            if size >= _SNAPSHOT_FRAME:
                out.write(_frame(_encode(frame), compressor))
                frame, size = [], 0
        if frame:
            out.write(_frame(_encode(frame), compressor))
        out.flush()
        os.fsync(out.fileno())


def _encode_records(records: list[Record]) -> bytes:
    """The records' msgpack; a value msgpack cannot carry (an integer past 64 bits) as JSON."""
    try:
        return _encode(records)
    except OverflowError:
        return _encode([(kind, name, key, _encodable(value)) for kind, name, key, value in records])


def _encodable(value: object) -> object:
    """The value, or its JSON (as bytes) when msgpack cannot carry it."""
    try:
        _encode(value)
    except OverflowError:
        return _encode_json(value)
    return value


def _stored(raw: msgspec.Raw) -> bytes:
    """A value as written: the bytes a source gave (a msgpack bin), or an object's msgpack."""
    data = bytes(raw)
    return _decode_bytes(data) if data[0] in _BIN else data


def _frame(payload: bytes, compressor: zstandard.ZstdCompressor) -> bytes:
    """A frame: the compressed payload's length and CRC32, then the compressed payload."""
    packed = compressor.compress(payload)
    return len(packed).to_bytes(4, "little") + zlib.crc32(packed).to_bytes(4, "little") + packed


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full"
    if not isinstance(exc, OSError):
        return str(exc) or type(exc).__name__
    return exc.strerror or str(exc) or type(exc).__name__


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "compact":
        sys.exit("usage: python -m collector.memory.disk compact DIR UPTO LIMITS_JSON")
    compact(Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
