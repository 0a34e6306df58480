"""The Lua scripts behind the credential cache (oapi/tokens.py): each one reads and writes one corp's keys
atomically (Redis Cluster safe: every key has the corp's hash tag), so a check and its write cannot be split by
another worker. Kept apart from the cache's Python so each can be read on its own.
"""

from __future__ import annotations

from kit.keys import REGISTRATION_FIELD

DEFAULT_EXPIRES_IN = 7200  # get_channel_token may omit expires_in
# `:gen` outlives any credential it orders; should it expire anyway, the next generation still starts above the
# stored credential's (NEXT_GENERATION).
GENERATION_TTL_MS = 2 * DEFAULT_EXPIRES_IN * 1000

# The registration check every write script starts with. `record` is the corp's registration hash (absent: an
# unchecked cache, as in unit tests); 0 = go ahead, NOT_REGISTERED or REGISTRATION_REPLACED = refuse.
NOT_REGISTERED, REGISTRATION_REPLACED = -1, -2
REGISTERED_CHECK = f"""
local function registered(record, registration)
  if not record then return 0 end
  if redis.call('EXISTS', record) == 0 then return {NOT_REGISTERED} end
  if (redis.call('HGET', record, '{REGISTRATION_FIELD}') or '') ~= registration then return {REGISTRATION_REPLACED} end
  return 0
end
"""

# Write only if nothing newer is there: a refresher whose lock expired mid-fetch must not clobber its successor.
# ARGV[8] = '1' for a credential whose fetch may kill the one before (a ticket): if another fetch began after this
# one (`:gen`, KEYS[2], moved on), either may have killed the other's ticket, so neither is kept: the cached one is
# dropped and `:gen` moved on again, which refuses the other's write too; the next reader fetches alone.
OVERLAPPED = 2
WRITE_IF_NEWER = (
    REGISTERED_CHECK
    + f"""
local refused = registered(KEYS[3], ARGV[7])
if refused ~= 0 then return refused end
if ARGV[8] == '1' and tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then
  redis.call('INCR', KEYS[2])
  redis.call('DEL', KEYS[1])
  return {OVERLAPPED}
end
local cur = redis.call('HGET', KEYS[1], 'gen')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'v', ARGV[2], 'exp', ARGV[3], 'fetched', ARGV[4], 'fp', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""
)

# The next fetch generation (KEYS[2] is `:gen`): above the stored credential's, with a TTL.
NEXT_GENERATION = (
    REGISTERED_CHECK
    + """
local refused = registered(KEYS[3], ARGV[1])
if refused ~= 0 then return refused end
local gen = redis.call('INCR', KEYS[2])
local stored = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if stored >= gen then
  gen = stored + 1
  redis.call('SET', KEYS[2], gen)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return gen
"""
)

# SET key value EX seconds [NX], for the corp's current registration only; 1 if set.
SET_IF_REGISTERED = (
    REGISTERED_CHECK
    + """
local refused = registered(KEYS[2], ARGV[1])
if refused ~= 0 then return refused end
if ARGV[4] == 'nx' then
  if redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3], 'NX') then return 1 end
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
)

# Delete only if the cached credential is still the one that failed; a fresh one from another worker stays.
DELETE_IF_SAME = """
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
