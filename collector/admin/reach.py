"""Reach: how many known users match a segment or a campaign's target now, bounded in time.

Memory mode counts over the profiles this process holds, newest first, for at most
REACH_SECONDS (yielding to the event loop between slices, so ingest is not held up); when the
time runs out before the last profile, the answer is an estimate from the profiles counted.
Redis mode reads a sample of profiles with SCAN (at most SAMPLE_PROFILES, within the same time)
and scales it by the number of profile keys: always an estimate, and said to be one.

A draft is counted as it stands in the editor: a segment's condition, or a campaign's target
(`users` and `segments`, optionally in test mode) is compiled against the live config, so
nothing has to be saved first. The same samples feed the pickers (traits seen).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from collector.config.schema import ConfigFile, Target, encode_hook
from collector.config.settings import decode_config
from collector.engine.engine import UserState
from collector.engine.rules import compile_rules
from collector.engine.scope import Scope
from collector.errors import ConfigError, Unavailable
from collector.events import Event

if TYPE_CHECKING:
    from collector.runtime import Runtime

REACH_SECONDS = 1.0
SAMPLE_PROFILES = 5_000  # Redis mode: profiles read at most
SLICE = 500  # memory mode: profiles between yields to the event loop
_decode_state = msgspec.msgpack.Decoder(UserState).decode
Match = Callable[[UserState], bool]


async def profiles(runtime: Runtime, budget: float = REACH_SECONDS,
                   limit: int | None = None) -> AsyncIterator[tuple[UserState, int]]:
    """Profiles, newest first, within `budget` seconds; each with the total profile count
    (exact in memory mode, the number of profile keys in Redis mode)."""
    deadline = time.monotonic() + budget
    if runtime.redis is not None:
        async for item in _redis_profiles(runtime, deadline, limit or SAMPLE_PROFILES):
            yield item
        return
    users: dict[str, UserState] | None = getattr(runtime.store, "_users", None)
    if users is None:
        return
    keys = list(reversed(users))
    total = len(keys)
    for position, key in enumerate(keys):
        if limit is not None and position >= limit:
            return
        if position % SLICE == SLICE - 1:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0)
        state = users.get(key)
        if state is not None:
            yield state, total


async def _redis_profiles(
    runtime: Runtime, deadline: float, limit: int
) -> AsyncIterator[tuple[UserState, int]]:
    """A sample of profiles, shard by shard; the total is exact when every shard was read
    to its end, else scaled from the share of keys examined (see `_SAMPLE_SCRIPT`)."""
    assert runtime.redis is not None
    connection = runtime.redis.connection
    keys = await connection.names()
    per_shard = max(1, limit // keys.shards)
    states: list[UserState] = []
    total = 0.0
    for shard in range(keys.shards):
        prefix = keys.timers(shard).removesuffix(":t") + ":p:"
        cursor, found, examined, size = "0", 0, 0, 0
        while time.monotonic() < deadline and found < per_shard:
            cursor, seen, size, blobs = await connection.call(
                "EVAL", _SAMPLE_SCRIPT, 1, keys.timers(shard), prefix, per_shard - found,
                SCAN_KEYS, cursor, what="sampling profiles",
            )
            cursor = cursor.decode() if isinstance(cursor, bytes) else str(cursor)
            examined += int(seen)
            found += len(blobs)
            states += [_decode_state(blob) for blob in blobs]
            if cursor == "0":
                break
        finished = cursor == "0"
        total += found if finished or not examined else found * max(int(size), 1) / examined
    known = max(round(total), len(states))
    for state in states:
        yield state, known


SCAN_KEYS = 2_000  # keys one call of the script examines at most
# Profiles of one shard, from where the last call left off: the script runs on the node that
# holds the shard (KEYS[1] is one of its keys) and reads only keys of that shard.
_SAMPLE_SCRIPT = """
local prefix, want, budget, cursor = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local found, examined = {}, 0
repeat
  local reply = redis.call('SCAN', cursor, 'COUNT', 200)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    examined = examined + 1
    if string.sub(key, 1, #prefix) == prefix then
      local state = redis.call('HGET', key, 's')
      if state then found[#found + 1] = state end
    end
  end
until cursor == '0' or #found >= want or examined >= budget
return {cursor, examined, redis.call('DBSIZE'), found}
"""


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


def countable(runtime: Runtime) -> bool:
    """Whether this store's profiles can be gone through (Redis, or the memory store's)."""
    return runtime.redis is not None or getattr(runtime.store, "_users", None) is not None


async def count(runtime: Runtime, match: Match) -> dict[str, Any]:
    """How many known users match now: counted, or estimated from a sample (and said so)."""
    if not countable(runtime):
        raise Unavailable("reach cannot be counted with this store: it does not list profiles")
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
