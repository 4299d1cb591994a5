"""The run store's Lua scripts: each runs atomically on Redis, with a fixed number of
commands per call however many objects it carries (worker/adapters/run_store.py calls them)."""

from __future__ import annotations

from worker.domain.model import RunStatus, TableStatus

# Lua tables of the run statuses whose work may still change something (RunStatus.active), and
# of those that have ended (RunStatus.final).
ACTIVE = "{" + ", ".join(f"['{s}'] = true" for s in RunStatus if s.active) + "}"
FINAL = "{" + ", ".join(f"['{s}'] = true" for s in RunStatus if s.final) + "}"

# Write a run's fields, with the checks first (the checks and the write in one step): unless its
# status is final (update_unless_final), or only while each expected field still holds its value
# (update_if).
#   KEYS: the run's hash, the unfinished set, the ended list; ARGV: run id, "1" when the fields
#   set a status, "1" when that status is final, "1" to refuse a final run, the number of
#   expected fields, then field, value, ... expected, then field, value, ... to write.
#   Returns 1 when written.
UPDATE_CHECKED = f"""
local raw = redis.call('HGET', KEYS[1], 'status')
if not raw then return 0 end
local final = {FINAL}
if ARGV[4] == '1' and final[cjson.decode(raw)] then return 0 end
local expected = tonumber(ARGV[5])
for i = 6, 5 + 2 * expected, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 0 end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6 + 2 * expected))
if ARGV[2] == '1' then
  if ARGV[3] == '1' then
    redis.call('SREM', KEYS[2], ARGV[1])
    redis.call('LPUSH', KEYS[3], ARGV[1])
    redis.call('LTRIM', KEYS[3], 0, 9999)
  else
    redis.call('SADD', KEYS[2], ARGV[1])
  end
end
return 1
"""

# Read a batch of outcomes and, for each one not finished, count one more attempt: one round trip
# (the write-ahead checkpoint of every object of a batch).
#   KEYS: tables; ARGV: table keys. Returns the outcomes in order (nil: not planned).
_FINISHED = "{" + ", ".join(f"['{s}'] = true" for s in TableStatus if s.done) + "}"
BEGIN_ATTEMPTS = f"""
local raw = redis.call('HMGET', KEYS[1], unpack(ARGV))
local finished = {_FINISHED}
local out, writes = {{}}, {{}}
for i = 1, #ARGV do
  local text = raw[i]
  if not text then
    out[i] = false
  else
    local outcome = cjson.decode(text)
    if finished[outcome['status']] then
      out[i] = text
    else
      outcome['attempts'] = (tonumber(outcome['attempts']) or 0) + 1
      out[i] = cjson.encode(outcome)
      writes[#writes + 1] = ARGV[i]
      writes[#writes + 1] = out[i]
    end
  end
end
if #writes > 0 then redis.call('HSET', KEYS[1], unpack(writes)) end
return out
"""


# Write a batch of outcomes, keep the run's per-status counts in step with them (so following a
# run reads a few counters instead of every table), keep the pending set, for a migration count
# the objects as finished in their wave, and mark the run's progress (its updated_at, which the
# reaper reads): one round trip, atomic, with a fixed number of commands per batch.
#   KEYS: tables, counts, pending, the run's record [, the wave's done set, the wave's list]
#   ARGV: ttl, now, 'add' | 'remove' | 'keep' (the pending set), then per object:
#         table key, outcome JSON, status
#   returns {tables pending, finished in the wave, size of the wave} (0, 0 without a wave)
RECORD_OUTCOMES = """
local names, writes, delta = {}, {}, {}
for i = 4, #ARGV, 3 do
  names[#names + 1] = ARGV[i]
  writes[#writes + 1] = ARGV[i]
  writes[#writes + 1] = ARGV[i + 1]
  delta[ARGV[i + 2]] = (delta[ARGV[i + 2]] or 0) + 1
end
local old = redis.call('HMGET', KEYS[1], unpack(names))
for i = 1, #names do
  if old[i] then
    local status = cjson.decode(old[i])['status']
    delta[status] = (delta[status] or 0) - 1
  end
end
redis.call('HSET', KEYS[1], unpack(writes))
for status, n in pairs(delta) do
  if n ~= 0 then redis.call('HINCRBY', KEYS[2], status, n) end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
if ARGV[3] == 'add' then
  redis.call('SADD', KEYS[3], unpack(names))
elseif ARGV[3] == 'remove' then
  redis.call('SREM', KEYS[3], unpack(names))
end
local pending = redis.call('SCARD', KEYS[3])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('HSET', KEYS[4], 'updated_at', ARGV[2]) end
if #KEYS < 6 then return {pending, 0, 0} end
redis.call('SADD', KEYS[5], unpack(names))
redis.call('EXPIRE', KEYS[5], ARGV[1])
return {pending, redis.call('SCARD', KEYS[5]), redis.call('LLEN', KEYS[6])}
"""


# Create a run: its record, its place in the runs index and the unfinished set, and the index of
# the newest run of its kind for its secret. With ARGV[4] "1" only when that index names no run
# that is still unfinished (one key rotation of a secret at a time): its id is returned instead
# and nothing is written.
#   KEYS: the record, the runs index, the unfinished set, the newest-run index; ARGV: run id,
#   created at, ttl, "1" for alone, the run key's prefix, then field, value, ... of the record.
CREATE = f"""
if ARGV[4] == '1' then
  local newest = redis.call('GET', KEYS[4])
  if newest then
    local raw = redis.call('HGET', ARGV[5] .. newest, 'status')
    if raw and not ({FINAL})[cjson.decode(raw)] then return newest end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[3])
return false
"""
