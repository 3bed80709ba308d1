"""Variables and segments changed while running (admin API, dashboard), kept and shared.

Like campaign changes, a variable or segment created, changed or deleted through the admin API
or the dashboard is checked exactly like the config file (the whole config is decoded and
compiled again with it), applied to this process at once and kept: in the data directory in
memory mode (table `definitions`), in Redis in Redis mode (hash `tw:{definitions}` and its
version counter, polled by every process like the campaigns' hash). At every start the kept
changes are applied over the config file, before the kept campaign changes (which may use them).

The backend keeps the changes (`Backend.put_definition`); `LiveConfig.apply_definition` applies
one to the running config. A name that a campaign, segment, variable or the test users use
cannot be deleted: the refusal names who uses it. A variable is computed from events once a
segment, campaign or the test users use it, from the next event on (not from the past).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import msgspec

from collector.config.changes import CampaignChange
from collector.config.schema import (
    PLACEHOLDER,
    ConfigFile,
    VariableSpec,
    campaign_as_written,
    encode_hook,
)
from collector.config.settings import decode_config
from collector.engine.rules import compile_rules
from collector.errors import ConfigError, Conflict

Kind = Literal["variables", "segments"]
KINDS: tuple[Kind, ...] = ("variables", "segments")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")  # like a campaign id
DEFAULT_SIZE = VariableSpec(event="", stat="top").size  # how many values `top` keeps by default


class DefinitionChange(msgspec.Struct, kw_only=True):
    """One variable's or segment's latest change: its definition, or None once deleted."""

    kind: Kind
    name: str
    raw: Any  # the definition as written in the config file (plain data), or None
    updated_at: float


encode_change = msgspec.json.Encoder(enc_hook=encode_hook).encode
decode_change = msgspec.json.Decoder(DefinitionChange).decode
Keep = Callable[[DefinitionChange], Awaitable[None]]  # applies a change and keeps it
# What a backend keeps of the changes made while running: campaigns by id, and the variable
# and segment changes oldest first (`backend.kept_changes`, for `tripwire export`).
KeptChanges = tuple[dict[str, CampaignChange], list[DefinitionChange]]


def in_order(blobs: list[bytes]) -> list[DefinitionChange]:
    """Kept changes decoded, oldest first (a segment after the variable it uses); those another
    version wrote that cannot be read are left out."""
    changes = []
    for blob in blobs:
        try:
            changes.append(decode_change(blob))
        except msgspec.DecodeError:
            continue
    return sorted(changes, key=lambda change: change.updated_at)


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


class Running(Protocol):
    """What the service reads of the running config (`collector.live.LiveConfig`)."""

    config: ConfigFile
    definitions: dict[str, DefinitionChange]  # changes made while running, by `row_key`


class Definitions:
    """The running process's variables and segments: reading them, and changing them through
    the backend (`keep`), which applies each change here and keeps and shares it."""

    def __init__(self, live: Running, keep: Keep) -> None:
        self._live = live
        self._keep = keep

    # -- reading --------------------------------------------------------------------------

    def all(self, kind: Kind) -> dict[str, Any]:
        """Every variable or segment, as written."""
        return as_written(self._live.config, kind)

    def get(self, kind: Kind, name: str) -> Any | None:
        """One variable or segment as written, or None."""
        return self.all(kind).get(name)

    def edited(self, kind: Kind, name: str) -> bool:
        """Whether it was changed while running (it then wins over the config file)."""
        return row_key(kind, name) in self._live.definitions

    # -- writing --------------------------------------------------------------------------

    async def put(self, kind: Kind, name: str, raw: Any) -> bool:
        """Create or replace one; True when it is new. Raises ConfigError (with paths)."""
        if not NAME.match(name):
            raise ConfigError([f"{kind}.{name}: a name is letters, digits and _ . : - starting "
                               "with a letter or _ (at most 128)"])
        if not isinstance(raw, dict):
            noun = "variable" if kind == "variables" else "segment condition"
            raise ConfigError([f"{kind}.{name}: expected a {noun} mapping"])
        new = name not in getattr(self._live.config, kind)
        with_change(self._live.config, kind, name, raw)  # every problem, before anything
        await self._keep(DefinitionChange(kind=kind, name=name, raw=raw, updated_at=time.time()))
        return new

    async def remove(self, kind: Kind, name: str) -> bool:
        """Delete one; False when there was none. Raises Conflict naming who still uses it."""
        config = self._live.config
        if name not in getattr(config, kind):
            return False
        users = users_of(config, kind, name)
        if users:
            noun = "variable" if kind == "variables" else "segment"
            raise Conflict(
                f"{noun} {name!r} is used by {', '.join(users)}: change or delete "
                f"{'it' if len(users) == 1 else 'them'} first"
            )
        await self._keep(DefinitionChange(kind=kind, name=name, raw=None, updated_at=time.time()))
        return True


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

