//! The server-side scripts. Every mutation (put, delete, revoke, expiry) is one atomic script that
//! bumps the namespace's revision counter, applies the change and appends its events to the
//! namespace's stream under the ID `revision-seq`. Because a revision is only ever taken together
//! with at least one event, revisions are contiguous: a gap in the stream IDs a reader sees *is*
//! lost history. Every entry also carries its epoch (field `e`): a new epoch numbers its stream IDs
//! from 1 again, and once they pass a blocked reader's position only the epoch tells them apart
//! from a continuation.
//!
//! KEYS (all under one hash tag, so one cluster slot): 1 revision counter, 2 values (hash),
//! 3 metadata `rev:lease` (hash), 4 key index (zset, lexicographic), 5 lease deadlines (zset, ms),
//! 6 lease TTLs (hash), 7 event stream, 8 lease id counter, 9 epoch.
//! ARGV: 1 the prefix of derived keys (`{ns}:`), 2 the stream's approximate maximum length, then the
//! script's own arguments.
//!
//! Time is the server's (`TIME`), so client clocks never matter. The epoch is created with the
//! namespace's first script: a server that lost its data gets a new, later epoch, and revisions of
//! the old one are recognised as gone.

const PRELUDE: &str = r#"
local K_REV, K_KV, K_META, K_IDX = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_LEASES, K_TTL, K_EVENTS, K_SEQ, K_EPOCH = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local BASE = ARGV[1]
local MAXLEN = ARGV[2]
local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
-- Epochs count tenths of a second since 2023-11-14: a namespace recreated after losing its data
-- gets a later one.
local NOW_EPOCH = math.floor(tonumber(T[1]) * 10 + tonumber(T[2]) / 100000) - 17000000000
local EPOCH = redis.call('GET', K_EPOCH)
if not EPOCH then
  EPOCH = tostring(NOW_EPOCH)
  redis.call('SET', K_EPOCH, EPOCH)
end

-- Starts a new, later epoch: history is dropped (watchers get Compacted and re-list), every lease
-- ends with its keys (their owners get LeaseNotFound and register again at their next heartbeat:
-- a lease id is its epoch and its number, so an old lease cannot carry over), revisions restart
-- at 0. Keys without a lease are kept, at revision 0.
local function start_epoch()
  EPOCH = tostring(math.max(tonumber(EPOCH) + 1, NOW_EPOCH))
  redis.call('SET', K_EPOCH, EPOCH)
  for _, id in ipairs(redis.call('ZRANGE', K_LEASES, 0, -1)) do
    redis.call('DEL', BASE .. 'lk:' .. id, BASE .. 'lease:' .. id)
  end
  redis.call('DEL', K_LEASES, K_TTL, K_EVENTS)
  redis.call('SET', K_REV, 0)
  -- By each key's own label, not the leases' key sets: no key may stay behind labelled with a
  -- lease of the old epoch (it would read as the new epoch's lease of that number).
  local metas = redis.call('HGETALL', K_META)
  for i = 1, #metas, 2 do
    local k, lease = metas[i], string.match(metas[i + 1], '^[0-9]+:(.*)$')
    if lease and lease ~= '' then
      redis.call('HDEL', K_KV, k)
      redis.call('HDEL', K_META, k)
      redis.call('ZREM', K_IDX, k)
    else
      redis.call('HSET', K_META, k, '0:')
    end
  end
end
-- The server process that last ran a script on this namespace (its INFO run_id, new at every start).
-- Another one means the data was restarted from a snapshot or an append-only file, or a replica was
-- promoted: either may be older than what clients saw, with revisions and lease ids that will be
-- handed out a second time. So a new server starts a new epoch.
local RUN_ID = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
local K_RUN = BASE .. 'server'
local SEEN_RUN = redis.call('GET', K_RUN)
if SEEN_RUN ~= RUN_ID then
  if SEEN_RUN then
    start_epoch()
    redis.call('INCR', BASE .. 'restarts')
  end
  redis.call('SET', K_RUN, RUN_ID)
end

-- Local revisions have 30 bits. Before they run out, start a new epoch: history is dropped (watchers
-- re-list), stored revisions restart at 0 and leases of the old epoch end with their keys (their
-- owners re-register).
if tonumber(redis.call('GET', K_REV) or '0') >= 1073741000 then
  start_epoch()
end

local function xadd(rev, seq, key, kind, value)
  if value then
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', MAXLEN, rev .. '-' .. seq, 'e', EPOCH, 'k', key, 't',
      kind, 'v', value)
  else
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', MAXLEN, rev .. '-' .. seq, 'e', EPOCH, 'k', key, 't',
      kind)
  end
end

local function end_lease(id)
  local lk = BASE .. 'lk:' .. id
  local keys = redis.call('SMEMBERS', lk)
  if #keys > 0 then
    table.sort(keys)
    local rev = redis.call('INCR', K_REV)
    for i, k in ipairs(keys) do
      redis.call('HDEL', K_KV, k)
      redis.call('HDEL', K_META, k)
      redis.call('ZREM', K_IDX, k)
      xadd(rev, i - 1, k, 'd', nil)
    end
  end
  redis.call('DEL', lk, BASE .. 'lease:' .. id)
  redis.call('ZREM', K_LEASES, id)
  redis.call('HDEL', K_TTL, id)
end

local function reap(limit)
  local due = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do end_lease(id) end
  return #due
end

-- A live lease of this epoch, or nil. A lease past its deadline is ended here and now.
local function live_lease(epoch, id)
  if epoch ~= EPOCH then return nil end
  local s = redis.call('ZSCORE', K_LEASES, id)
  if not s then return nil end
  if tonumber(s) <= NOW then
    end_lease(id)
    return nil
  end
  return s
end

local function unlink_from_lease(key)
  local meta = redis.call('HGET', K_META, key)
  if meta then
    local old = string.match(meta, '^[0-9]+:(.*)$')
    if old and old ~= '' then redis.call('SREM', BASE .. 'lk:' .. old, key) end
    return old
  end
  return nil
end

-- Writes key = value attached to lease ('' for none; the caller has checked it is live), detached
-- from any previous lease. Returns the revision.
local function write_key(key, value, lease)
  unlink_from_lease(key)
  if lease ~= '' then redis.call('SADD', BASE .. 'lk:' .. lease, key) end
  local rev = redis.call('INCR', K_REV)
  redis.call('HSET', K_KV, key, value)
  redis.call('HSET', K_META, key, rev .. ':' .. lease)
  redis.call('ZADD', K_IDX, 0, key)
  xadd(rev, 0, key, 'p', value)
  return rev
end

-- Deletes an existing key. Returns the revision.
local function delete_key(key)
  unlink_from_lease(key)
  redis.call('HDEL', K_KV, key)
  redis.call('HDEL', K_META, key)
  redis.call('ZREM', K_IDX, key)
  local rev = redis.call('INCR', K_REV)
  xadd(rev, 0, key, 'd', nil)
  return rev
end

reap(100)
"#;

/// ARGV[3] = TTL in ms. Returns {epoch, lease id}.
pub(crate) const GRANT: &str = r#"
local ttl = tonumber(ARGV[3])
local id = redis.call('INCR', K_SEQ)
redis.call('ZADD', K_LEASES, NOW + ttl, id)
redis.call('HSET', K_TTL, id, ttl)
redis.call('SET', BASE .. 'lease:' .. id, ttl, 'PX', ttl)
return {EPOCH, id}
"#;

/// ARGV[3] = epoch, ARGV[4] = lease id. Returns the TTL in ms.
pub(crate) const KEEP_ALIVE: &str = r#"
if not live_lease(ARGV[3], ARGV[4]) then
  return redis.error_reply('LEASE_NOT_FOUND the lease has expired or was revoked')
end
local ttl = tonumber(redis.call('HGET', K_TTL, ARGV[4]))
redis.call('ZADD', K_LEASES, NOW + ttl, ARGV[4])
redis.call('SET', BASE .. 'lease:' .. ARGV[4], ttl, 'PX', ttl)
return ttl
"#;

/// ARGV[3] = epoch, ARGV[4] = lease id.
pub(crate) const REVOKE: &str = r#"
if not live_lease(ARGV[3], ARGV[4]) then
  return redis.error_reply('LEASE_NOT_FOUND the lease has expired or was revoked')
end
end_lease(ARGV[4])
return 1
"#;

/// ARGV[3] = key, ARGV[4] = value, ARGV[5] = lease epoch or '', ARGV[6] = lease id or ''.
/// Returns {epoch, revision}.
pub(crate) const PUT: &str = r#"
local key, lease = ARGV[3], ARGV[6]
if lease ~= '' and not live_lease(ARGV[5], lease) then
  return redis.error_reply('LEASE_NOT_FOUND the lease has expired or was revoked')
end
return {EPOCH, write_key(key, ARGV[4], lease)}
"#;

/// ARGV[3] = key. Returns {epoch, revision or 0}.
pub(crate) const DELETE: &str = r#"
local key = ARGV[3]
if redis.call('HEXISTS', K_KV, key) == 0 then return {EPOCH, 0} end
return {EPOCH, delete_key(key)}
"#;

/// The conditions of conditional writes, shared by [`PUT_IF`], [`DELETE_IF`] and
/// [`PUT_IF_MANY`]: a condition is a kind (`absent`, `rev` or `lease`), its epoch, and its local
/// revision or lease id.
const CONDITION: &str = r#"

-- The key's metadata `rev:lease`, or nil when absent. A key whose lease is past its deadline (not
-- reaped yet) has its lease ended here, exactly as a write with that lease would: it is absent.
local function current_meta(key)
  local meta = redis.call('HGET', K_META, key)
  if not meta then return nil end
  local lease = string.match(meta, '^[0-9]+:(.*)$')
  if lease and lease ~= '' and not live_lease(EPOCH, lease) then
    meta = redis.call('HGET', K_META, key)
  end
  return meta
end

-- Whether the condition (kind, epoch, argument) holds for a key with metadata `meta` (nil: absent).
local function cond_holds(meta, kind, epoch, arg)
  if kind == 'absent' then return meta == nil end
  if meta == nil or epoch ~= EPOCH then return false end
  local rev, lease = string.match(meta, '^([0-9]+):(.*)$')
  if kind == 'rev' then return rev == arg end
  if kind == 'lease' then return lease ~= '' and lease == arg end
  return false
end

-- The reply of a failed condition: {epoch, 0} for an absent key, else {epoch, 0, value, meta}.
local function cond_failed(key, meta)
  if meta == nil then return {EPOCH, 0} end
  return {EPOCH, 0, redis.call('HGET', K_KV, key), meta}
end
"#;

/// [`PUT`] if the [`CONDITION`] holds, checked first (a failed condition never looks at the
/// lease). ARGV[3] = key, ARGV[4] = value, ARGV[5] = lease epoch or '', ARGV[6] = lease id or '',
/// ARGV[7..9] = condition. Returns {epoch, 1, revision}, or the failed condition's reply.
pub(crate) const PUT_IF: &str = r#"
local key, lease = ARGV[3], ARGV[6]
local meta = current_meta(key)
if not cond_holds(meta, ARGV[7], ARGV[8], ARGV[9]) then return cond_failed(key, meta) end
if lease ~= '' and not live_lease(ARGV[5], lease) then
  return redis.error_reply('LEASE_NOT_FOUND the lease has expired or was revoked')
end
return {EPOCH, 1, write_key(key, ARGV[4], lease)}
"#;

/// [`DELETE`] if the [`CONDITION`] holds. ARGV[3] = key, ARGV[4..6] unused, ARGV[7..9] =
/// condition. Returns {epoch, 1, revision} (the current one when the key was absent: nothing to
/// delete), or the failed condition's reply.
pub(crate) const DELETE_IF: &str = r#"
local key = ARGV[3]
local meta = current_meta(key)
if not cond_holds(meta, ARGV[7], ARGV[8], ARGV[9]) then return cond_failed(key, meta) end
if meta == nil then return {EPOCH, 1, redis.call('GET', K_REV) or '0'} end
return {EPOCH, 1, delete_key(key)}
"#;

/// Many [`PUT_IF`]s in one script, each checked and applied on its own: the prelude (the server's
/// time, the restart check, the reaper) runs once for all of them. ARGV[3..] = 7 arguments per
/// write: key, value, lease epoch or '', lease id or '', and the condition's kind, epoch and
/// argument. Returns {epoch, outcome...}, one outcome per write in order: {1, revision} applied,
/// the failed condition's reply without its epoch ({0} or {0, value, meta}), or {2} when the
/// condition held and the lease no longer exists (nothing written).
pub(crate) const PUT_IF_MANY: &str = r#"
local out = {EPOCH}
-- Whether each lease is live, asked once per script: the time does not move within it, and no
-- write here ends a lease.
local live = {}
for i = 3, #ARGV, 7 do
  local key, value, lease_epoch, lease = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local meta = current_meta(key)
  if not cond_holds(meta, ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]) then
    local failed = cond_failed(key, meta)
    table.remove(failed, 1)
    out[#out + 1] = failed
  else
    local ok = true
    if lease ~= '' then
      local id = lease_epoch .. '-' .. lease
      if live[id] == nil then live[id] = live_lease(lease_epoch, lease) ~= nil end
      ok = live[id]
    end
    if ok then
      out[#out + 1] = {1, write_key(key, value, lease)}
    else
      out[#out + 1] = {2}
    end
  end
end
return out
"#;

/// ARGV[3] = key. Returns {epoch} or {epoch, value, meta}.
pub(crate) const GET: &str = r#"
local v = redis.call('HGET', K_KV, ARGV[3])
if not v then return {EPOCH} end
return {EPOCH, v, redis.call('HGET', K_META, ARGV[3])}
"#;

/// ARGV[3], ARGV[4] = ZRANGEBYLEX bounds. Returns {epoch, revision, keys, values, metas}, one
/// consistent snapshot.
pub(crate) const LIST: &str = r#"
local keys = redis.call('ZRANGEBYLEX', K_IDX, ARGV[3], ARGV[4])
local values, metas = {}, {}
for i = 1, #keys, 1000 do
  local chunk = {}
  for j = i, math.min(i + 999, #keys) do chunk[#chunk + 1] = keys[j] end
  local v = redis.call('HMGET', K_KV, unpack(chunk))
  local m = redis.call('HMGET', K_META, unpack(chunk))
  for j = 1, #chunk do
    values[#values + 1] = v[j]
    metas[#metas + 1] = m[j]
  end
end
return {EPOCH, redis.call('GET', K_REV) or '0', keys, values, metas}
"#;

/// Returns {epoch, revision, first retained stream ID or ''}.
pub(crate) const WATCH_START: &str = r#"
local first = redis.call('XRANGE', K_EVENTS, '-', '+', 'COUNT', 1)
local id = ''
if #first > 0 then id = first[1][1] end
return {EPOCH, redis.call('GET', K_REV) or '0', id}
"#;

/// Reaps up to 1000 expired leases. Returns {epoch, how many}.
pub(crate) const REAP: &str = r#"
return {EPOCH, reap(1000)}
"#;

/// ARGV[3] = epoch, ARGV[4] = local revision: discards every event at or below it.
pub(crate) const COMPACT: &str = r#"
if ARGV[3] ~= EPOCH then return 0 end
return redis.call('XTRIM', K_EVENTS, 'MINID', (tonumber(ARGV[4]) + 1) .. '-0')
"#;

/// The full source of a script: the shared prelude, then its body.
pub(crate) fn source(body: &str) -> String {
    format!("{PRELUDE}\n{body}")
}

/// The full source of a conditional script: the shared prelude, the [`CONDITION`], then its body.
pub(crate) fn conditional_source(body: &str) -> String {
    format!("{PRELUDE}\n{CONDITION}\n{body}")
}
