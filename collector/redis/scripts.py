"""Lua scripts run by the Redis store and outbox; each touches the keys of one shard only.

Arguments are documented at the top of each script. Scripts are loaded once per connection
(`SCRIPT LOAD`) and called by SHA inside pipelines, so a request's scripts cost no extra round
trip; a server that lost them (restart, failover) answers NOSCRIPT and they are loaded again.
"""

from __future__ import annotations

import hashlib
from typing import Final


class Script:
    """A Lua script and its SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# Resolve identities of one shard, refreshing their TTL: one call for all of a request's.
# KEYS: identity entries   ARGV: ttl. Returns each entry's profile key (nil where none).
RESOLVE: Final = Script(
    "resolve",
    """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('GETEX', key, 'EX', ARGV[1]) end
return found
""",
)

# Load profiles of one shard with which of the request's messageIds each has seen: one call for
# all of a request's. KEYS: per profile its hash and its seen set. ARGV: per profile the number
# of merge markers to read, the markers (profile keys), the number of messageIds, the messageIds.
# Returns per profile two lists: its fields v, s, to and one `a:<marker>` per marker; the
# messageIds' scores in its seen set (nil: not seen).
LOAD: Final = Script(
    "load",
    """
local loaded, a = {}, 1
for p = 1, #KEYS / 2 do
  local fields = {'v', 's', 'to'}
  local n = tonumber(ARGV[a])
  for i = 1, n do fields[3 + i] = 'a:' .. ARGV[a + i] end
  a = a + 1 + n
  loaded[2 * p - 1] = redis.call('HMGET', KEYS[2 * p - 1], unpack(fields))
  n = tonumber(ARGV[a])
  local scores = {}
  local i, last = a + 1, a + n
  while i <= last do
    local j = math.min(i + 999, last)
    for _, score in ipairs(redis.call('ZMSCORE', KEYS[2 * p], unpack(ARGV, i, j))) do
      scores[#scores + 1] = score
    end
    i = j + 1
  end
  loaded[2 * p] = scores
  a = last + 1
end
return loaded
""",
)

# Commit the profiles of one shard: for each, its new state, seen messageIds, recent events,
# webhooks, identity links and the A/B results its events counted, only if its version (and that
# of every same-shard profile merged into it) is unchanged. One call carries every profile of a
# request's shard, each judged on its own: a conflict leaves the others written.
COMMIT: Final = Script(
    "commit",
    """
-- ARGV: the number of profiles, then per profile: its number of KEYS, its number of values,
--       its values. KEYS: every profile's keys in turn.
-- A profile's KEYS: profile, recent, seen, outbox stream, outbox live hash,
--       then NLINKS identity keys, then 4 keys (profile, recent, seen, identity) per merged
--       profile, then the results hashes its values name by index, and LAST: the shard's timer
--       set, then 2 keys (total, day) per stop tally
-- A profile's values: version, state, ttl, seen cutoff, recent cap, seen cap, profile key,
--       replace recent (0|1), NLINKS, NMERGED, NMERGED versions, then counted lists:
--       seen (score member pairs), recent blobs, webhooks (id blob pairs), absorbed keys,
--       results (5 values each: index among its KEYS of the campaign's results hash, arm, users
--       assigned, converted, value added), and LAST (read from the end): per stop tally 6
--       values (delivered now, total limit, day limit (-1 = none), other shards' total, other
--       shards' day, day ttl), then the earliest timer due ('' = unchanged, '-' = none left),
--       then the number of stop tallies
-- Returns per profile the new version, 0 on a version conflict, -1 when a stop condition
-- would be exceeded.
local function chunked(cmd, key, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    redis.call(cmd, key, unpack(ARGV, i, j))
    i = j + 1
  end
end
-- One profile: its keys are KEYS[K + 1 .. K + nkeys], its values ARGV[A + 1 .. A + nargs].
local function commit(K, nkeys, A, nargs)
  local nlinks = tonumber(ARGV[A + 9])
  local nmerged = tonumber(ARGV[A + 10])
  local profile = KEYS[K + 1]
  if tonumber(redis.call('HGET', profile, 'v') or '0') ~= tonumber(ARGV[A + 1]) then return 0 end
  local a = A + 11
  for i = 1, nmerged do
    local other = KEYS[K + 5 + nlinks + (i - 1) * 4 + 1]
    if tonumber(redis.call('HGET', other, 'v') or '0') ~= tonumber(ARGV[a]) then return 0 end
    a = a + 1
  end
  local nstops = tonumber(ARGV[A + nargs])
  local timer_due = ARGV[A + nargs - 1]
  local k0 = K + nkeys - 2 * nstops  -- the timer set; the stop tallies follow it
  local s0 = A + nargs - 1 - 6 * nstops
  for i = 0, nstops - 1 do
    local delta = tonumber(ARGV[s0 + 6 * i])
    local total_limit, day_limit = tonumber(ARGV[s0 + 6 * i + 1]), tonumber(ARGV[s0 + 6 * i + 2])
    local total = tonumber(redis.call('GET', KEYS[k0 + 1 + 2 * i]) or '0')
    local day = tonumber(redis.call('GET', KEYS[k0 + 2 + 2 * i]) or '0')
    if total_limit >= 0 and total + tonumber(ARGV[s0 + 6 * i + 3]) + delta > total_limit then
      return -1
    end
    if day_limit >= 0 and day + tonumber(ARGV[s0 + 6 * i + 4]) + delta > day_limit then
      return -1
    end
  end
  for i = 0, nstops - 1 do
    local delta = tonumber(ARGV[s0 + 6 * i])
    local day_key = KEYS[k0 + 2 + 2 * i]
    redis.call('INCRBY', KEYS[k0 + 1 + 2 * i], delta)
    redis.call('INCRBY', day_key, delta)
    redis.call('EXPIRE', day_key, tonumber(ARGV[s0 + 6 * i + 5]))
  end
  local key = ARGV[A + 7]
  if timer_due == '-' then
    redis.call('ZREM', KEYS[k0], key)
  elseif timer_due ~= '' then
    redis.call('ZADD', KEYS[k0], timer_due, key)
  end
  local ttl = tonumber(ARGV[A + 3])
  local version = redis.call('HINCRBY', profile, 'v', 1)
  redis.call('HSET', profile, 's', ARGV[A + 2])
  redis.call('EXPIRE', profile, ttl)
  local recent, seen = KEYS[K + 2], KEYS[K + 3]
  local n = tonumber(ARGV[a])
  a = a + 1
  if n > 0 then chunked('ZADD', seen, a, a + 2 * n - 1) end
  a = a + 2 * n
  redis.call('ZREMRANGEBYSCORE', seen, '-inf', ARGV[A + 4])
  redis.call('ZREMRANGEBYRANK', seen, 0, -tonumber(ARGV[A + 6]) - 1)
  redis.call('EXPIRE', seen, ttl)
  if ARGV[A + 8] == '1' then redis.call('DEL', recent) end
  n = tonumber(ARGV[a])
  a = a + 1
  local cap = tonumber(ARGV[A + 5])
  if n > 0 and cap > 0 then
    chunked('RPUSH', recent, a, a + n - 1)
    redis.call('LTRIM', recent, -cap, -1)
    redis.call('EXPIRE', recent, ttl)
  end
  a = a + n
  n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    local id = ARGV[a]
    if redis.call('HEXISTS', KEYS[K + 5], id) == 0 then
      local entry = redis.call('XADD', KEYS[K + 4], '*', 'e', ARGV[a + 1])
      redis.call('HSET', KEYS[K + 5], id, entry)
    end
    a = a + 2
  end
  n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    redis.call('HSET', profile, 'a:' .. ARGV[a], '1')
    a = a + 1
  end
  n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    local results, arm = KEYS[K + tonumber(ARGV[a])], ARGV[a + 1]
    if ARGV[a + 2] ~= '0' then redis.call('HINCRBY', results, arm .. ':a', ARGV[a + 2]) end
    if ARGV[a + 3] ~= '0' then redis.call('HINCRBY', results, arm .. ':c', ARGV[a + 3]) end
    if ARGV[a + 4] ~= '0' then redis.call('HINCRBYFLOAT', results, arm .. ':v', ARGV[a + 4]) end
    a = a + 5
  end
  for i = 1, nlinks do
    redis.call('SET', KEYS[K + 5 + i], key, 'EX', ttl)
  end
  for i = 1, nmerged do
    local base = K + 5 + nlinks + (i - 1) * 4
    redis.call('DEL', KEYS[base + 1], KEYS[base + 2], KEYS[base + 3])
    redis.call('HSET', KEYS[base + 1], 'v', tonumber(ARGV[A + 10 + i]) + 1, 'to', key)
    redis.call('EXPIRE', KEYS[base + 1], ttl)
    redis.call('SET', KEYS[base + 4], key, 'EX', ttl)
  end
  return version
end
local versions, k, a = {}, 0, 2
for p = 1, tonumber(ARGV[1]) do
  local nkeys, nargs = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  versions[p] = commit(k, nkeys, a + 1, nargs)
  k = k + nkeys
  a = a + 2 + nargs
end
return versions
""",
)

# Freeze a profile that is being merged into one of another shard: from now on it redirects
# to the target, and writers holding its old version conflict. Its data stays until the
# target has absorbed it (CLEAN). Returns 1, or 0 when its version changed.
FREEZE: Final = Script(
    "freeze",
    """
-- KEYS: profile, identity of the profile's own key    ARGV: version, target, ttl
if tonumber(redis.call('HGET', KEYS[1], 'v') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'to', ARGV[2])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
""",
)

# Drop the data of a frozen profile once its target has absorbed it.
CLEAN: Final = Script(
    "clean",
    """
-- KEYS: profile, recent, seen    ARGV: target
if redis.call('HGET', KEYS[1], 'to') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 's')
redis.call('DEL', KEYS[2], KEYS[3])
return 1
""",
)

# Claim the due absence timers of one shard: their scores move a lease ahead, so that no other
# process takes them meanwhile; a process dying holding one leaves it to be claimed again
# after the lease. KEYS: timer set   ARGV: now, lease, limit. Returns the profile keys.
CLAIM_TIMERS: Final = Script(
    "claim_timers",
    """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local until_ = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, key in ipairs(due) do redis.call('ZADD', KEYS[1], until_, key) end
return due
""",
)

# Drop a timer entry whose profile is gone (expired or merged away), unless it was re-armed.
# KEYS: timer set, profile   ARGV: profile key
DROP_TIMER: Final = Script(
    "drop_timer",
    """
if redis.call('HEXISTS', KEYS[2], 's') == 1 and redis.call('HEXISTS', KEYS[2], 'to') == 0 then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
""",
)

# Up to ARGV[2] profiles' states of one shard, from cursor ARGV[4] on, examining at most ARGV[3]
# keys: KEYS[1] is a key of the shard (its timer set), so the script runs on the node holding it
# and reads only keys starting with the shard's profile prefix ARGV[1]. Returns the cursor to go
# on from ("0": done), the keys examined, the node's key count and the states found.
SAMPLE_PROFILES: Final = Script(
    "sample_profiles",
    """
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
""",
)

# --- outbox: KEYS are always Keys.outbox_keys(shard): stream, live, retries, dead, dead order ---

# Enqueue webhooks unless already pending. ARGV: (id, envelope) pairs. Returns how many were new.
PUT: Final = Script(
    "put",
    """
local added = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then
    local entry = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    redis.call('HSET', KEYS[2], ARGV[i], entry)
    added = added + 1
  end
end
return added
""",
)

# Move retries that are due onto the stream. ARGV: now, limit. Returns the next due time or -1.
PROMOTE: Final = Script(
    "promote",
    """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local sep = string.find(member, '\\n', 1, true)
  local id = string.sub(member, 1, sep - 1)
  local entry = redis.call('XADD', KEYS[1], '*', 'e', string.sub(member, sep + 1))
  redis.call('HSET', KEYS[2], id, entry)
  redis.call('ZREM', KEYS[3], member)
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if head[2] then return head[2] end
return '-1'
""",
)

# Settle claimed entries. ARGV: group, then triples (entry id, delivery id, action) where action
# is "ack", "retry" (next two ARGV: due, member) or "dead" (next three: dead at, letter, capacity).
SETTLE: Final = Script(
    "settle",
    """
local i = 2
local done = 0
while i <= #ARGV do
  local entry, id, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local current = redis.call('HGET', KEYS[2], id)
  local acked = redis.call('XACK', KEYS[1], ARGV[1], entry)
  redis.call('XDEL', KEYS[1], entry)
  local owner = acked == 1 and current == entry
  if action == 'ack' then
    if owner then redis.call('HDEL', KEYS[2], id) end
  elseif action == 'retry' then
    if owner then
      redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1])
      redis.call('HSET', KEYS[2], id, 'r')
    end
    i = i + 2
  else
    if owner then
      redis.call('HDEL', KEYS[2], id)
      redis.call('HSET', KEYS[4], id, ARGV[i + 1])
      redis.call('ZADD', KEYS[5], ARGV[i], id)
      local over = redis.call('ZCARD', KEYS[5]) - tonumber(ARGV[i + 2])
      if over > 0 then
        local old = redis.call('ZRANGE', KEYS[5], 0, over - 1)
        redis.call('ZREMRANGEBYRANK', KEYS[5], 0, over - 1)
        redis.call('HDEL', KEYS[4], unpack(old))
      end
    end
    i = i + 3
  end
  if owner then done = done + 1 end
end
return done
""",
)

# Put dead letters back on the stream as fresh deliveries. ARGV: (id, envelope) pairs.
# Returns the ids revived.
REVIVE: Final = Script(
    "revive",
    """
local revived = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[4], id) == 1 and redis.call('HEXISTS', KEYS[2], id) == 0 then
    local entry = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    redis.call('HSET', KEYS[2], id, entry)
    redis.call('HDEL', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    revived[#revived + 1] = id
  end
end
return revived
""",
)

# Hand entries this consumer read but never started back to the stream (clean shutdown).
# ARGV: group, then (entry id, delivery id) pairs.
RELEASE: Final = Script(
    "release",
    """
for i = 2, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local found = redis.call('XRANGE', KEYS[1], entry, entry)
  if found[1] and redis.call('XACK', KEYS[1], ARGV[1], entry) == 1 then
    local fields = found[1][2]
    local fresh = redis.call('XADD', KEYS[1], '*', fields[1], fields[2])
    redis.call('XDEL', KEYS[1], entry)
    if redis.call('HGET', KEYS[2], id) == entry then redis.call('HSET', KEYS[2], id, fresh) end
  end
end
return 1
""",
)

# Reset the idle time of entries this consumer holds, so that nobody takes them over.
# ARGV: group, consumer, then entry ids.
HOLD: Final = Script(
    "hold",
    """
local i = 3
while i <= #ARGV do
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for k = i, math.min(i + 999, #ARGV) do args[#args + 1] = ARGV[k] end
  args[#args + 1] = 'JUSTID'
  redis.call(unpack(args))
  i = i + 1000
end
return 1
""",
)

# Shorten a chain of merge redirects: point a profile that is only a redirect (its data already
# absorbed) straight at the end of its chain. KEYS: profile   ARGV: current target, final target
REDIRECT: Final = Script(
    "redirect",
    """
if redis.call('HGET', KEYS[1], 'to') ~= ARGV[1] or redis.call('HEXISTS', KEYS[1], 's') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'to', ARGV[2])
return 1
""",
)

ALL: Final = (
    RESOLVE, LOAD, COMMIT, FREEZE, CLEAN, REDIRECT, CLAIM_TIMERS, DROP_TIMER, PUT, PROMOTE,
    SETTLE, REVIVE, RELEASE, HOLD, SAMPLE_PROFILES,
)
