"""Variables and segments changed while running (admin API, dashboard), kept and shared.

Like campaign changes, a variable or segment created, changed or deleted through the admin API
or the dashboard is checked exactly like the config file (the whole config is decoded and
compiled again with it), applied to this process at once and kept: in the data directory in
memory mode (table `definitions`), in Redis in Redis mode (hash `tw:{definitions}` and its
version counter, polled by every process like the campaigns' hash). At every start the kept
changes are applied over the config file, before the kept campaign changes (which may use them).

A name that a campaign, segment, variable or the test users use cannot be deleted: the refusal
names who uses it. A variable is computed from events once a segment, campaign or the test
users use it, from the next event on (not from the past).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from collector.config.schema import (
    PLACEHOLDER,
    ConfigFile,
    VariableSpec,
    campaign_as_written,
    encode_hook,
)
from collector.config.settings import Settings, decode_config
from collector.disk import read_table
from collector.engine.rules import compile_rules
from collector.errors import ConfigError, Conflict, Unavailable

if TYPE_CHECKING:
    from collector.runtime import Runtime

log = logging.getLogger("tripwire.definitions")

Kind = Literal["variables", "segments"]
KINDS: tuple[Kind, ...] = ("variables", "segments")
POLL_SECONDS = 0.25
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")  # like a campaign id
REDIS_HASH = "tw:{definitions}"
REDIS_VERSION = "tw:{definitions}:v"
DEFAULT_SIZE = VariableSpec(event="", stat="top").size  # how many values `top` keeps by default


class DefinitionChange(msgspec.Struct, kw_only=True):
    """One variable's or segment's latest change: its definition, or None once deleted."""

    kind: Kind
    name: str
    raw: Any  # the definition as written in the config file (plain data), or None
    updated_at: float


_encode = msgspec.json.Encoder(enc_hook=encode_hook).encode
_decode = msgspec.json.Decoder(DefinitionChange).decode


def _updated_at(blob: bytes) -> float:
    try:
        return _decode(blob).updated_at
    except msgspec.DecodeError:
        return 0.0


def row_key(kind: Kind, name: str) -> str:
    """The key a change is kept under: `variables/NAME` or `segments/NAME`."""
    return f"{kind}/{name}"


def as_written(config: ConfigFile, kind: Kind) -> dict[str, Any]:
    """The config's variables or segments as plain data, as a config file writes them."""
    data: dict[str, Any] = msgspec.to_builtins(getattr(config, kind), enc_hook=encode_hook)
    if kind == "variables":  # unset keys left out, as for campaigns
        return {name: {k: v for k, v in spec.items()
                       if v is not None and not (k == "size" and v == DEFAULT_SIZE)}
                for name, spec in data.items()}
    return data


def with_change(config: ConfigFile, kind: Kind, name: str, raw: Any) -> ConfigFile:
    """The config with one variable or segment set (or removed with None), checked and
    compiled like the config file; raises ConfigError with every problem and its path."""
    data = msgspec.to_builtins(config, enc_hook=encode_hook)
    section = dict(data.get(kind) or {})
    if raw is None:
        section.pop(name, None)
    else:
        section[name] = raw
    data[kind] = section
    return decode_config(data, verify=compile_rules)


def users_of(config: ConfigFile, kind: Kind, name: str) -> list[str]:
    """Who uses a variable or segment: `campaign 'x'`, `segment 'y'`, `variable 'z'`,
    `test_users`."""
    found: list[str] = []
    for campaign in config.campaigns:
        if _mentions(campaign_as_written(campaign), kind, name):
            found.append(f"campaign {campaign.id!r}")
    for other, tree in config.segments.items():
        if not (kind == "segments" and other == name) and _mentions(tree.raw, kind, name):
            found.append(f"segment {other!r}")
    for other, spec in config.variables.items():
        if spec.where is not None and _mentions(spec.where.raw, kind, name):
            found.append(f"variable {other!r}")
    if config.test_users is not None and _mentions(config.test_users.raw, kind, name):
        found.append("test_users")
    return found


def _mentions(value: Any, kind: Kind, name: str) -> bool:
    if isinstance(value, dict):
        if kind == "segments":
            if value.get("segment") == name or value.get("segment_entered") == name:
                return True
            segments = value.get("segments")
            if isinstance(segments, list) and name in segments:
                return True
        elif value.get("var") == name:
            return True
        return any(_mentions(v, kind, name) for v in value.values())
    if isinstance(value, list):
        return any(_mentions(v, kind, name) for v in value)
    if isinstance(value, str) and kind == "variables" and "#{" in value:
        return any(m.group(1).split("|", 1)[0].strip() == name
                   for m in PLACEHOLDER.finditer(value))
    return False


class Definitions:
    """The running process's variables and segments, with the changes kept and shared."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.changes: dict[str, DefinitionChange] = {}
        self._rows = runtime.disk.table("definitions", self._record) if runtime.disk else None
        self._version: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        if self._rows is not None:  # oldest first: a segment after the variable it uses
            for value in sorted((v for _, v in self._rows.rows()), key=_updated_at):
                self._apply_kept(value)

    def _record(self, key: str) -> bytes | None:
        change = self.changes.get(key)
        return None if change is None else _encode(change)

    def _apply_kept(self, blob: bytes) -> None:
        try:
            change = _decode(blob)
            known = self.changes.get(row_key(change.kind, change.name))
            if known is not None and known.updated_at == change.updated_at:
                return
            self._apply(change)
        except Exception:  # written by another version, or no longer valid: the file's stays
            log.exception("cannot apply a kept variable or segment change")

    def _apply(self, change: DefinitionChange) -> None:
        runtime = self._runtime
        config = with_change(runtime.config, change.kind, change.name, change.raw)
        self._install(config)
        self.changes[row_key(change.kind, change.name)] = change

    def _install(self, config: ConfigFile) -> None:
        runtime = self._runtime
        times = {cid: c.updated_at for cid, c in runtime.campaign_changes.items()}
        runtime.engine.rules = compile_rules(config, updated_at=times)
        runtime.config = config

    # -- reading --------------------------------------------------------------------------

    def all(self, kind: Kind) -> dict[str, Any]:
        """Every variable or segment, as written."""
        return as_written(self._runtime.config, kind)

    def get(self, kind: Kind, name: str) -> Any | None:
        """One variable or segment as written, or None."""
        return self.all(kind).get(name)

    def edited(self, kind: Kind, name: str) -> bool:
        """Whether it was changed while running (it then wins over the config file)."""
        return row_key(kind, name) in self.changes

    # -- writing --------------------------------------------------------------------------

    async def put(self, kind: Kind, name: str, raw: Any) -> bool:
        """Create or replace one; True when it is new. Raises ConfigError (with paths)."""
        if not NAME.match(name):
            raise ConfigError([f"{kind}.{name}: a name is letters, digits and _ . : - starting "
                               "with a letter or _ (at most 128)"])
        if not isinstance(raw, dict):
            noun = "variable" if kind == "variables" else "segment condition"
            raise ConfigError([f"{kind}.{name}: expected a {noun} mapping"])
        new = name not in getattr(self._runtime.config, kind)
        with_change(self._runtime.config, kind, name, raw)  # every problem, before anything
        await self._write(DefinitionChange(kind=kind, name=name, raw=raw, updated_at=time.time()))
        return new

    async def remove(self, kind: Kind, name: str) -> bool:
        """Delete one; False when there was none. Raises Conflict naming who still uses it."""
        config = self._runtime.config
        if name not in getattr(config, kind):
            return False
        users = users_of(config, kind, name)
        if users:
            noun = "variable" if kind == "variables" else "segment"
            raise Conflict(
                f"{noun} {name!r} is used by {', '.join(users)}: change or delete "
                f"{'it' if len(users) == 1 else 'them'} first"
            )
        await self._write(DefinitionChange(kind=kind, name=name, raw=None, updated_at=time.time()))
        return True

    async def _write(self, change: DefinitionChange) -> None:
        runtime = self._runtime
        if runtime.redis is not None:
            await runtime.redis.connection.pipeline(
                [("HSET", REDIS_HASH, row_key(change.kind, change.name), _encode(change)),
                 ("INCR", REDIS_VERSION)],
                "storing a variable or segment",
            )
            await self.refresh()
            return
        self._apply(change)
        if self._rows is not None and runtime.disk is not None:
            self._rows.mark(row_key(change.kind, change.name))
            await runtime.disk.commit()

    # -- Redis mode: every process applies everyone's changes ---------------------------------

    async def start(self) -> None:
        """Redis mode: apply the stored changes now and keep polling for more."""
        if self._runtime.redis is None:
            return
        with contextlib.suppress(Unavailable):
            await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tripwire-definitions-sync")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def refresh(self) -> None:
        """Apply every stored change this process has not applied yet (Redis mode)."""
        redis = self._runtime.redis
        if redis is None:
            return
        version = await redis.connection.call("GET", REDIS_VERSION, what="reading definitions")
        if version is None or version == self._version:
            return
        stored = await redis.connection.call("HGETALL", REDIS_HASH, what="reading definitions")
        for blob in sorted(stored.values(), key=_updated_at):
            self._apply_kept(blob)
        self._version = version

    async def _poll(self) -> None:
        while self._task is not None:
            await asyncio.sleep(POLL_SECONDS)
            try:
                await self.refresh()
            except Unavailable:
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("reading variable and segment changes failed")
                await asyncio.sleep(1.0)


def read_changes(settings: Settings) -> list[DefinitionChange]:
    """The kept variable and segment changes, oldest first (for `tripwire export`)."""
    if settings.store == "memory":
        if settings.data_dir is None:
            return []
        blobs = list(read_table(settings.data_dir, "definitions").values())
    else:
        blobs = asyncio.run(_read_redis(settings.store))
    return sorted((_decode(b) for b in blobs), key=lambda c: c.updated_at)


async def _read_redis(url: str) -> list[bytes]:
    from collector.redis.connection import RedisConnection

    connection = RedisConnection(url)
    try:
        stored = await connection.call("HGETALL", REDIS_HASH, what="reading definitions")
    finally:
        await connection.close()
    return list(stored.values())


def apply_to_raw(raw: dict[str, Any], changes: list[DefinitionChange]) -> None:
    """Apply kept changes to a config file's parsed mapping (export), in order."""
    for change in changes:
        section = raw.get(change.kind)
        section = dict(section) if isinstance(section, dict) else {}
        if change.raw is None:
            section.pop(change.name, None)
        else:
            section[change.name] = change.raw
        raw[change.kind] = section

