"""The data directory's database: what memory mode keeps, written before each request is answered.

One SQLite database (`<data_dir>/tripwire.db`) in WAL mode. Parts of the process register what
they keep:

- a `Table` mirrors a live mapping (profiles, pending webhooks, dead letters, campaigns…): a
  change marks its key, and the next commit re-reads the key's current value from its owner and
  writes it (or deletes the row when the owner no longer holds the key). A key changed by many
  events between two commits is encoded and written once.
- a `Journal` is an append-only list of entries, bounded by count or pruned by age (dedupe
  marks, the delivery log).

`await disk.commit()` returns once everything staged before the call is written: one transaction
for everything every concurrent request staged meanwhile (group commit). A transaction is
handed to the operating system (write(2) into the WAL) before commit returns, so it survives the
process being killed at any moment; it is not fsynced, so a power cut may lose the last
moments (`synchronous=NORMAL`), never the database's consistency. Checkpoints (the fsyncs) run in
a thread so that requests never wait for the disk itself.

When a write fails (disk full, I/O error) what was staged is kept, waiting commits raise
`Unavailable` (503, the client retries), `failure` says why, and the write is retried every
second until it succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from collector.errors import ConfigError, Unavailable

log = logging.getLogger("tripwire.disk")

DATABASE: Final = "tripwire.db"
RETRY_SECONDS: Final = 1.0
CHECKPOINT_SECONDS: Final = 5.0
CHECKPOINT_WAL_BYTES: Final = 16 * 1024 * 1024

Source = Callable[[str], bytes | None]


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
        """Every stored (key, value)."""
        return self._disk.read(f"SELECT key, value FROM {self.name}")

    def _stage(self) -> tuple[list[tuple[str, bytes]], list[tuple[str]]]:
        dirty, self.dirty = self.dirty, set()
        upserts: list[tuple[str, bytes]] = []
        deletes: list[tuple[str]] = []
        source = self._source
        for key in dirty:
            value = source(key)
            if value is None:
                deletes.append((key,))
            else:
                upserts.append((key, value))
        return upserts, deletes


class Journal:
    """Append-only entries, oldest first, keeping the newest `keep` (or pruned by age)."""

    def __init__(self, disk: Disk, name: str, keep: int | None) -> None:
        self.name = name
        self._disk = disk
        self._keep = keep
        self.pending: list[tuple[float, bytes]] = []
        self.prune_before: float | None = None

    def append(self, at: float, value: bytes) -> None:
        """Add an entry (`at`: its time, for pruning by age)."""
        self.pending.append((at, value))
        self._disk.wake()

    def forget_before(self, at: float) -> None:
        """Drop entries older than `at` with the next commit."""
        self.prune_before = at

    def entries(self) -> list[tuple[float, bytes]]:
        """Every stored (time, value), oldest first."""
        return self._disk.read(f"SELECT at, value FROM {self.name} ORDER BY seq")


class Disk:
    """The database and its writer; `open` before use, `close` at stop."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / DATABASE
        self._db: sqlite3.Connection | None = None
        self._tables: list[Table] = []
        self._journals: list[Journal] = []
        self._waiter: asyncio.Future[None] | None = None
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the last write failed, until one succeeds
        self.commits = 0

    # -- set-up -------------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the database; ConfigError when the data directory is unusable."""
        check_data_dir(self.path.parent)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run in a thread instead
            db.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            raise ConfigError([f"{self.path}: cannot open the database ({exc})"]) from None
        self._db = db

    def table(self, name: str, source: Source) -> Table:
        """A keyed table, created if missing; `source(key)` gives a key's value or None."""
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {name} "
            "(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
        )
        table = Table(self, name, source)
        self._tables.append(table)
        return table

    def journal(self, name: str, keep: int | None = None) -> Journal:
        """An append-only journal, created if missing, keeping its newest `keep` entries."""
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {name} "
            "(seq INTEGER PRIMARY KEY, at REAL NOT NULL, value BLOB NOT NULL)"
        )
        journal = Journal(self, name, keep)
        self._journals.append(journal)
        return journal

    def start(self) -> None:
        """Start the writer and the checkpoints (in the running event loop)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="disk-writer")
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="checkpoint")

    async def close(self) -> None:
        """Write what is staged and close; raises OSError when it cannot be written."""
        for task in (self._writer, self._checkpointer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer = self._checkpointer = None
        if self._db is None:
            return
        self._flush()
        if self.failure is not None:
            raise OSError(errno.EIO, f"{self.path}: unsaved changes: {self.failure}")
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self._db = None

    # -- reading ------------------------------------------------------------------------------

    def read(self, sql: str) -> list[Any]:
        """Rows of a query (used at start, before anything is written)."""
        assert self._db is not None, "open the disk first"
        return self._db.execute(sql).fetchall()

    # -- writing ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something was staged: let the writer run."""
        self._wakeup.set()

    async def commit(self) -> None:
        """Wait until everything staged so far is written; Unavailable when it cannot be."""
        if self.failure is not None:
            raise Unavailable(f"cannot save to the data directory: {self.failure}", retry_after=5)
        if self._writer is None:  # not started (tools, tests): write now
            self._flush()
            self._raise_failure()
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        waiter = self._waiter
        self._wakeup.set()
        await asyncio.shield(waiter)

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise Unavailable(f"cannot save to the data directory: {self.failure}", retry_after=5)

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            self._flush()
            if self.failure is not None:
                await asyncio.sleep(RETRY_SECONDS)
                self._wakeup.set()

    def _flush(self) -> None:
        """One transaction with everything staged; on failure, keep it staged for the retry."""
        db = self._db
        waiter, self._waiter = self._waiter, None
        if db is None:
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        staged = [(table, *table._stage()) for table in self._tables]
        appended = [(journal, journal.pending, journal.prune_before) for journal in self._journals]
        for journal in self._journals:
            journal.pending = []
            journal.prune_before = None
        try:
            db.execute("BEGIN")
            for table, upserts, deletes in staged:
                if upserts:
                    db.executemany(
                        f"INSERT OR REPLACE INTO {table.name} (key, value) VALUES (?, ?)",
                        upserts,
                    )
                if deletes:
                    db.executemany(f"DELETE FROM {table.name} WHERE key = ?", deletes)
            for journal, entries, prune_before in appended:
                self._write_journal(db, journal, entries, prune_before)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            for table, upserts, deletes in staged:  # re-read from the owner at the next try
                table.dirty.update(key for key, _ in upserts)
                table.dirty.update(key for (key,) in deletes)
            for journal, entries, prune_before in appended:
                journal.pending[:0] = entries
                if journal.prune_before is None:
                    journal.prune_before = prune_before
            if self.failure is None:
                log.error("cannot write %s: %s; ingest answers 503 until it can", self.path, exc)
            self.failure = _describe(exc)
            if waiter is not None and not waiter.done():
                waiter.set_exception(
                    Unavailable(f"cannot save to the data directory: {self.failure}", retry_after=5)
                )
                waiter.exception()  # retrieved: a waiter may have gone (client disconnected)
            return
        if self.failure is not None:
            log.warning("writing to %s works again", self.path)
            self.failure = None
        self.commits += 1
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @staticmethod
    def _write_journal(
        db: sqlite3.Connection,
        journal: Journal,
        entries: list[tuple[float, bytes]],
        prune_before: float | None,
    ) -> None:
        name = journal.name
        if entries:
            db.executemany(f"INSERT INTO {name} (at, value) VALUES (?, ?)", entries)
            if journal._keep is not None:
                db.execute(
                    f"DELETE FROM {name} WHERE seq <= (SELECT max(seq) FROM {name}) - ?",
                    (journal._keep,),
                )
        if prune_before is not None:
            first = db.execute(
                f"SELECT seq FROM {name} WHERE at >= ? ORDER BY seq LIMIT 1",
                (prune_before,),
            ).fetchone()
            if first is None:
                db.execute(f"DELETE FROM {name} WHERE at < ?", (prune_before,))
            else:
                db.execute(f"DELETE FROM {name} WHERE seq < ?", (first[0],))

    def _execute(self, sql: str) -> None:
        assert self._db is not None, "open the disk first"
        try:
            self._db.execute(sql)
        except sqlite3.Error as exc:
            raise ConfigError([f"{self.path}: {exc}"]) from None

    async def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database now and then, in a thread (it fsyncs)."""
        wal = self.path.with_name(self.path.name + "-wal")
        checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            last = time.monotonic()
            while True:
                await asyncio.sleep(CHECKPOINT_SECONDS / 5)
                try:
                    size = wal.stat().st_size
                except OSError:
                    continue
                if size < CHECKPOINT_WAL_BYTES and time.monotonic() - last < CHECKPOINT_SECONDS:
                    continue
                if size == 0:
                    continue
                last = time.monotonic()
                try:
                    await asyncio.to_thread(_checkpoint, checkpointer)
                except sqlite3.Error as exc:
                    log.warning("checkpoint of %s failed: %s", self.path, exc)
        finally:
            checkpointer.close()


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, sqlite3.Error) and "full" in text:
        return "disk full"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk full"
    return text or type(exc).__name__
