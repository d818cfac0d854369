"""Lua scripts of the Redis broker (kept as Python strings so they ship inside the package).

Each script runs atomically on one shard. Times come from the server's ``TIME``, so every
node judges expiry with the same clock whatever the skew between machines. Offsets are
formatted with ``%d`` because Lua's default number format turns 10^14 into ``1e+14``.

Key layout per channel (``P`` = the broker's prefix):
  ``P:h:CH``  stream of publications, entry ID ``<offset>-0``, fields ``d`` (body), ``t`` (ms)
  ``P:hm:CH`` stream meta hash: ``e`` epoch, ``s`` top offset, ``t`` history TTL in ms
  ``P:p:CH``  presence hash client -> packed ClientInfo
  ``P:pz:CH`` presence zset client -> expiry (ms)
  ``P:pu:CH`` presence hash client -> user
  ``P:pc:CH`` presence hash user -> number of present clients (HLEN = distinct users)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = [
    "HISTORY", "NODES_LIST", "NODES_REGISTER", "PRESENCE_ADD", "PRESENCE_GET", "PRESENCE_REMOVE",
    "PRESENCE_STATS", "PUBLISH", "Script", "ALL",
]


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1 (what EVALSHA names it by)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


_NOW_MS = """
local _t = redis.call('TIME')
local now_ms = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)
"""

# Presence cleanup shared by every presence script: drop clients whose expiry passed and keep
# the per-user counters exact, so presence_stats never has to read the whole presence hash.
_PRESENCE_CLEAN = """
local function user_gone(uc, user)
  if redis.call('HINCRBY', uc, user, -1) <= 0 then
    redis.call('HDEL', uc, user)
  end
end

local function clean(h, z, cu, uc, now, limit)
  local expired
  if limit > 0 then
    expired = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, limit)
  else
    expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  end
  for i = 1, #expired do
    local c = expired[i]
    local u = redis.call('HGET', cu, c)
    if u then
      user_gone(uc, u)
    end
    redis.call('HDEL', h, c)
    redis.call('HDEL', cu, c)
    redis.call('ZREM', z, c)
  end
end

-- Extend a key's life, never shorten it (another node may use a longer TTL).
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
"""

# KEYS: stream, meta. ARGV: pub/sub channel, body, history size, history TTL ms,
# meta TTL s ("0" = never expires), epoch to start when the stream has none.
# Returns {offset, epoch}.
PUBLISH = Script("publish", _NOW_MS + """
local epoch = redis.call('HGET', KEYS[2], 'e')
if not epoch then
  -- A new epoch: entries of an older incarnation (meta expired or evicted) mean nothing now.
  epoch = ARGV[6]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
local top = redis.call('HINCRBY', KEYS[2], 's', 1)
redis.call('HSET', KEYS[2], 't', ARGV[4])
if ARGV[5] ~= '0' then
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
local id = string.format('%d-0', top)
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], id, 'd', ARGV[2], 't', string.format('%d', now_ms))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], 'p' .. string.format('%d', top) .. ':' .. epoch .. ':' .. ARGV[2])
return {top, epoch}
""")

# KEYS: stream, meta. ARGV: epoch to start when missing, meta TTL s ("0" = never),
# since epoch ('' = no check), mode ('0' position only, 'f' XRANGE, 'r' XREVRANGE),
# first ID, second ID, count ('' = all).
# Returns {top, epoch, ok} or {top, epoch, 1, entries}; ok = 0 when since epoch differs.
HISTORY = Script("history", _NOW_MS + """
local meta = redis.call('HMGET', KEYS[2], 'e', 's', 't')
local epoch, top, ttl = meta[1], meta[2], meta[3]
if not epoch then
  epoch = ARGV[1]
  top = 0
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 's', 0)
end
if ARGV[2] ~= '0' then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '' and ARGV[3] ~= epoch then
  return {top, epoch, 0}
end
if ARGV[4] == '0' then
  return {top, epoch, 1}
end
if ttl then
  -- Drop entries older than the history TTL: they are a prefix (times grow with offsets).
  local cutoff = now_ms - tonumber(ttl)
  local count = 1
  while true do
    local batch = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', count)
    if #batch == 0 then
      break
    end
    local live = nil
    local dead = {}
    for i = 1, #batch do
      if tonumber(batch[i][2][4]) > cutoff then
        live = batch[i][1]
        break
      end
      dead[#dead + 1] = batch[i][1]
    end
    if #dead > 0 then
      redis.call('XDEL', KEYS[1], unpack(dead))
    end
    if live then
      break
    end
    count = 100
  end
end
local entries
if ARGV[4] == 'f' then
  if ARGV[7] == '' then
    entries = redis.call('XRANGE', KEYS[1], ARGV[5], ARGV[6])
  else
    entries = redis.call('XRANGE', KEYS[1], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
  end
elseif ARGV[4] == 'r' then
  if ARGV[7] == '' then
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[5], ARGV[6])
  else
    entries = redis.call('XREVRANGE', KEYS[1], ARGV[5], ARGV[6], 'COUNT', ARGV[7])
  end
else
  entries = {}
end
return {top, epoch, 1, entries}
""")

# KEYS: h, z, cu, uc. ARGV: client, user, packed info, TTL ms.
PRESENCE_ADD = Script("presence_add", _NOW_MS + _PRESENCE_CLEAN + """
local ttl = tonumber(ARGV[4])
-- Bounded: a dead node's thousands of clients are swept over several calls, not one long one.
clean(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_ms, 1000)
local old = redis.call('HGET', KEYS[3], ARGV[1])
if old ~= ARGV[2] then
  if old then
    user_gone(KEYS[4], old)
  end
  redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + ttl, ARGV[1])
for i = 1, 4 do
  keep(KEYS[i], ttl)
end
return 1
""")

# KEYS: h, z, cu, uc. ARGV: client.
PRESENCE_REMOVE = Script("presence_remove", _NOW_MS + _PRESENCE_CLEAN + """
clean(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_ms, 1000)
local user = redis.call('HGET', KEYS[3], ARGV[1])
if user then
  user_gone(KEYS[4], user)
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
""")

# KEYS: h, z, cu, uc. Returns HGETALL of the presence hash after removing expired clients.
PRESENCE_GET = Script("presence_get", _NOW_MS + _PRESENCE_CLEAN + """
clean(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_ms, 0)
return redis.call('HGETALL', KEYS[1])
""")

# KEYS: h, z, cu, uc. Returns {clients, users} without reading the presence hash.
PRESENCE_STATS = Script("presence_stats", _NOW_MS + _PRESENCE_CLEAN + """
clean(KEYS[1], KEYS[2], KEYS[3], KEYS[4], now_ms, 0)
return {redis.call('HLEN', KEYS[1]), redis.call('HLEN', KEYS[4])}
""")

_NODES_CLEAN = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for i = 1, #expired do
  redis.call('HDEL', KEYS[1], expired[i])
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
end
"""

# KEYS: info hash, expiry zset. ARGV: node id, info JSON, TTL ms.
NODES_REGISTER = Script("nodes_register", _NOW_MS + _NODES_CLEAN + """
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + ttl, ARGV[1])
for i = 1, 2 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
""")

# KEYS: info hash, expiry zset. Returns the info JSON of every live node.
NODES_LIST = Script("nodes_list", _NOW_MS + _NODES_CLEAN + """
return redis.call('HVALS', KEYS[1])
""")

ALL = (PUBLISH, HISTORY, PRESENCE_ADD, PRESENCE_REMOVE, PRESENCE_GET, PRESENCE_STATS,
       NODES_REGISTER, NODES_LIST)
