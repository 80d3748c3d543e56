-- One batch of a partition, atomically (pipeline.store.redis.RedisStore.commit).
-- Every key is the partition's ({prefix}:{pP}:...): one slot, so this runs on Redis
-- Cluster as on one server.
-- KEYS: meta, due, open, outbox, idx, hist, states
-- ARGV: epoch, clock_ms, shard prefix, payload (CommitPayload.pack: msgpack, one
--       argument), token (written to meta, "" = none and no check), expected tokens*
--       (meta must hold one of them, "" standing for none)
local meta, due, open, outbox, idx, hist, heads = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local epoch = redis.call('HGET', meta, 'epoch')
if epoch ~= ARGV[1] then
  if not epoch or tonumber(epoch) < tonumber(ARGV[1]) then
    -- epochs only grow: a lower one (or none) is Redis having lost the claim
    return redis.error_reply('STALE epoch ' .. tostring(epoch) .. ' < ' .. ARGV[1])
  end
  return redis.error_reply('FENCED epoch ' .. tostring(epoch) .. ' ~= ' .. ARGV[1])
end
local token = ARGV[5]
local held
if token ~= '' then
  held = redis.call('HGET', meta, 'token') or ''
  -- holding this commit's own token: it applied, and this is a resend of it (a client
  -- retry after a lost reply, or a MOVED/ASK redirect); the offsets below answer 0
  local known = held == token
  for x = 6, #ARGV do
    if ARGV[x] == held then known = true end
  end
  if not known then
    return redis.error_reply('STALE commit token ' .. held .. ' is not one this worker wrote last')
  end
end
local shard = ARGV[3]
-- the payload, in the order of CommitPayload's fields (pipeline/store/payload.py)
local p = cmsgpack.unpack(ARGV[4])
local offsets, dropped, logs, states, gone = p[1], p[2], p[3], p[4], p[5]
local dues, undue, checked, entries, since = p[6], p[7], p[8], p[9], p[10]
local outgoing, acked, history, history_min_ms, history_max, at_ms = p[11], p[12], p[13], p[14], p[15], p[16]
if since ~= '' and since ~= (held or redis.call('HGET', meta, 'token') or '') then
  return redis.error_reply('RECHECK index entries: the commit token moved on')
end
for x = 1, #offsets, 2 do
  local stored = redis.call('HGET', meta, 'off:' .. offsets[x])
  if stored and tonumber(stored) >= tonumber(offsets[x + 1]) then
    if token ~= '' then redis.call('HSET', meta, 'token', token) end
    return 0
  end
end
for x = 1, #offsets, 2 do
  redis.call('HSET', meta, 'off:' .. offsets[x], offsets[x + 1])
end
for x = 1, #dropped do
  redis.call('DEL', dropped[x])
end
-- logs: [key, chunk, ...]: one chunk per session per batch (its log items as JSON lines)
for x = 1, #logs, 2 do
  redis.call('RPUSH', logs[x], logs[x + 1])
end
local function chunked(command, key, args, step)
  for y = 1, #args, step do
    redis.call(command, key, unpack(args, y, math.min(y + step - 1, #args)))
  end
end
chunked('HSET', heads, states, 500)
chunked('HDEL', heads, gone, 500)
chunked('ZADD', due, dues, 500)
chunked('ZREM', due, undue, 500)
-- the query indexes: only where a key's open session (or its user) changed; an entry
-- is "<len sid>:<len project>:<sid><project><user>" (keys.index_entry), the lengths in
-- bytes: names may hold any character, so it is cut by length. The writes are gathered
-- and sent once per hash or set.
local function split(entry)
  local _, b, n, m = string.find(entry, '^(%d+):(%d+):')
  local s = b + tonumber(n)
  local q = s + tonumber(m)
  return string.sub(entry, b + 1, s), string.sub(entry, s + 1, q), string.sub(entry, q + 1)
end
local open_set, open_del, idx_set, idx_del = {}, {}, {}, {}
local set_add, set_rem = {}, {}
local function member(sets, key, sid)
  local list = sets[key]
  if not list then list = {}; sets[key] = list end
  list[#list + 1] = sid
end
local function index(entry, add, kid)
  local sid, project, user = split(entry)
  local ref = sid .. ':' .. project
  local sets = add and set_add or set_rem
  if add then
    open_set[#open_set + 1] = ref
    open_set[#open_set + 1] = kid
  else
    open_del[#open_del + 1] = ref
  end
  member(sets, shard .. 'proj:' .. project, sid)
  if user ~= '' then
    member(sets, shard .. 'user:' .. string.len(project) .. ':' .. project .. ':' .. user, sid)
  end
end
for y = 1, #checked, 500 do
  local last = math.min(y + 499, #checked)
  local olds = redis.call('HMGET', idx, unpack(checked, y, last))
  for z = y, last do
    local old, new = olds[z - y + 1] or '', entries[z]
    if old ~= new then
      local kid = checked[z]
      if old ~= '' then index(old, false, kid) end
      if new ~= '' then
        index(new, true, kid)
        idx_set[#idx_set + 1] = kid
        idx_set[#idx_set + 1] = new
      else
        idx_del[#idx_del + 1] = kid
      end
    end
  end
end
-- removals first: a key whose session changed leaves the old one's entries, then the new
-- one's are added (the same ref or set member may be in both)
chunked('HDEL', open, open_del, 500)
for key, sids in pairs(set_rem) do chunked('SREM', key, sids, 500) end
chunked('HSET', open, open_set, 500)
for key, sids in pairs(set_add) do chunked('SADD', key, sids, 500) end
chunked('HDEL', idx, idx_del, 500)
chunked('HSET', idx, idx_set, 500)
if acked > 0 then
  redis.call('LTRIM', outbox, acked, -1)
end
chunked('RPUSH', outbox, outgoing, 500)
for y = 1, #history, 3 do
  redis.call('ZADD', hist, history[y + 1], history[y])
  redis.call('SET', shard .. 'h:' .. history[y], history[y + 2])
end
local function forget(refs)
  for _, ref in ipairs(refs) do
    redis.call('ZREM', hist, ref)
    redis.call('DEL', shard .. 'h:' .. ref)
  end
end
forget(redis.call('ZRANGEBYSCORE', hist, '-inf', '(' .. history_min_ms, 'LIMIT', 0, 1000))
local extra = redis.call('ZCARD', hist) - history_max
if extra > 0 then
  forget(redis.call('ZRANGE', hist, 0, math.min(extra, 1000) - 1))
end
redis.call('HSET', meta, 'clock_ms', ARGV[2])
if at_ms > 0 then redis.call('HSET', meta, 'clock_at_ms', at_ms) end
if token ~= '' then redis.call('HSET', meta, 'token', token) end
return 1
