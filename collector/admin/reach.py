"""Reach: how many known users match a segment or a campaign's target now, bounded in time.

The store gives the profiles (`Store.sample`) for at most REACH_SECONDS: memory mode every
profile this process holds, newest first, yielding to the event loop between slices so ingest
is not held up; Redis mode a sample read with SCAN, shard by shard (a few thousand at most),
with the number of profiles estimated from the share of keys examined. When not every profile
was counted, the answer is an estimate from those that were, and says so.

A draft is counted as it stands in the editor: a segment's condition, or a campaign's target
(`users` and `segments`, optionally in test mode) is compiled against the live config, so
nothing has to be saved first. The same samples feed the pickers (traits seen).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from collector.config.schema import ConfigFile, Target, encode_hook
from collector.config.settings import decode_config
from collector.engine.engine import UserState
from collector.engine.rules import compile_rules
from collector.engine.scope import Scope
from collector.errors import ConfigError
from collector.events import Event

if TYPE_CHECKING:
    from collector.runtime import Runtime

REACH_SECONDS = 1.0
Match = Callable[[UserState], bool]


async def profiles(runtime: Runtime, budget: float = REACH_SECONDS,
                   limit: int | None = None) -> AsyncIterator[tuple[UserState, int]]:
    """Profiles from the store (`Store.sample`: newest first in memory mode, a sample in Redis
    mode) within `budget` seconds; each with the number of profiles the store holds."""
    async for item in runtime.users.sample(time.monotonic() + budget, limit):
        yield item


def matcher(runtime: Runtime, *, condition: Any = None, target: Any = None,
            test_mode: bool = False) -> Match:
    """A test of one profile against a draft condition or target, compiled against the live
    config; raises ConfigError with every problem (paths from `condition` or `target`)."""
    config = runtime.config
    segments: list[str] = []
    users = "all"
    probe = "~reach"
    if condition is not None:
        config = _with_segment(config, probe, condition)
        segments = [probe]
    if target is not None:
        try:
            spec = msgspec.convert(target, Target)
        except msgspec.ValidationError as exc:
            raise ConfigError([f"target: {exc}"]) from None
        unknown = [s for s in spec.segments if s not in config.segments]
        if unknown:
            raise ConfigError([f"target.segments: unknown segment {u!r}" for u in unknown])
        segments += spec.segments
        users = spec.users
    rules = compile_rules(config)
    tests = [rules.segments[name] for name in segments]
    test_users = rules.test_users if test_mode else None
    calendar = rules.calendar
    now = time.time()
    event = Event(type="describe", name="", message_id="", timestamp=now, received_at=now)

    def match(state: UserState) -> bool:
        if users != "all" and (users == "members") != (state.user_id is not None):
            return False
        number = state.session.number if state.session is not None else 1
        scope = Scope(state, event, now, calendar, number)
        if test_mode and (test_users is None or not test_users(scope)):
            return False
        return all(test(scope) for test in tests)

    return match


def _with_segment(config: ConfigFile, name: str, condition: Any) -> ConfigFile:
    data = msgspec.to_builtins(config, enc_hook=encode_hook)
    data["segments"] = {**(data.get("segments") or {}), name: condition}
    data["campaigns"] = []  # only the condition is checked here
    try:
        return decode_config(data, verify=compile_rules)
    except ConfigError as exc:
        prefix = f"segments.{name}"
        raise ConfigError(
            [("condition" + p[len(prefix):]) if p.startswith(prefix) else p for p in exc.problems]
        ) from None


async def count(runtime: Runtime, match: Match) -> dict[str, Any]:
    """How many known users match now: counted, or estimated from a sample (and said so)."""
    started = time.monotonic()
    matched = checked = total = 0
    async for state, known in profiles(runtime):
        total = known
        checked += 1
        if match(state):
            matched += 1
    estimate = checked < total
    users = round(matched * total / checked) if estimate and checked else matched
    return {
        "users": users,
        "matched": matched,
        "checked": checked,
        "known": total,
        "estimate": estimate,
        "seconds": round(time.monotonic() - started, 3),
        "summary": summary(users, matched, checked, total, estimate),
    }


def summary(users: int, matched: int, checked: int, total: int, estimate: bool) -> str:
    """One line for the dashboard: `12 of 40 known users match now`."""
    if not estimate:
        return f"{users} of {total} known user{'s' if total != 1 else ''} match now"
    return (
        f"about {users} of {total} known users match now (an estimate: {matched} of a sample "
        f"of {checked} matched)"
    )
