"""Durations as written in config files: `30m`, `7d`, `10s`, `1.5h`, or plain seconds."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class Duration(float):
    """A length of time in seconds, decoded from `30m`-style strings or numbers."""


def parse_duration(value: Any) -> Duration:
    """Read `30m`, `7d`, `250ms` or a number of seconds; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return Duration(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return Duration(float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"])
    raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 10m, 24h, 7d)")


def format_duration(seconds: float) -> str:
    """A duration as a config file would write it: `7d`, `30m`, `20s`, `1.5s`."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
