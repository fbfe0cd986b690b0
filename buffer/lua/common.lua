-- Shared helpers, prepended to every replay script (buffer/scripts.py).
-- Keys of one run live under the namespace ARGV[1]; every script takes it first.
-- Floats go through fmt(): Redis would format a Lua number with 14 digits only.
local ns = ARGV[1]
local K_STATS = ns .. ':stats'    -- counters (inserts, samples, deletes, evictions, ...)
local K_CONFIG = ns .. ':config'  -- tree base, capacity, selector, alpha, policies
local K_TREE = ns .. ':tree'      -- sum tree: heap index -> sum of leaf values below
local K_SLOTS = ns .. ':slots'    -- leaf slot -> group id
local K_FREE = ns .. ':free'      -- released leaf slots
local K_FIFO = ns .. ':fifo'      -- group id by insertion sequence
local K_BYPRIO = ns .. ':byprio'  -- group id by priority (kept for the lowest_priority remover only)
local K_BYVER = ns .. ':byver'    -- group id by oldest policy version (staleness counts a group's oldest token)
local K_QUARANTINE = ns .. ':quarantine'
local K_LEDGER = ns .. ':ledger'  -- acked, left_<reason>, trained_groups, trained_uses
local LEDGER_TTL_S = 7 * 86400    -- per-group ledger entries outlive the run's audit by days, not forever

local function k_meta(gid) return ns .. ':m:' .. gid end
local function k_payload(gid) return ns .. ':p:' .. gid end
local function k_seen(gid) return ns .. ':seen:' .. gid end
local function k_ledger(gid) return ns .. ':l:' .. gid end  -- t (times trained), v (versions), out (why it left)
local function fmt(x) return string.format('%.17g', x) end
local UNPACK_MAX = 4000  -- Lua 5.1's unpack() takes about 8000 values: longer argument lists go in chunks

-- HMGET of any number of fields (false where a field is missing).
local function hmget_all(key, fields)
  local values = {}
  for first = 1, #fields, UNPACK_MAX do
    local part = redis.call('HMGET', key, unpack(fields, first, math.min(first + UNPACK_MAX - 1, #fields)))
    for i = 1, #part do values[#values + 1] = part[i] end
  end
  return values
end

-- HSET of any number of field/value pairs (a flat list).
local function hset_all(key, pairs)
  for first = 1, #pairs, UNPACK_MAX do  -- UNPACK_MAX is even: no pair is split
    redis.call('HSET', key, unpack(pairs, first, math.min(first + UNPACK_MAX - 1, #pairs)))
  end
end

local cfg = nil
local function load_config()
  local v = redis.call('HMGET', K_CONFIG, 'base', 'capacity', 'selector', 'alpha', 'remover',
    'max_times_sampled', 'max_staleness', 'spi', 'min_size', 'min_diff', 'max_diff', 'dedup_ttl_s',
    'skip_zero_signal')
  if not v[1] then
    return redis.error_reply('namespace ' .. ns .. ' is not initialised on this shard')
  end
  cfg = {
    base = tonumber(v[1]), capacity = tonumber(v[2]), selector = v[3], alpha = tonumber(v[4]),
    by_priority = (v[5] == 'lowest_priority'),  -- K_BYPRIO is kept only for the remover that reads it
    order_key = (v[5] == 'lowest_priority') and K_BYPRIO or K_FIFO,
    max_times = tonumber(v[6]), max_staleness = tonumber(v[7]), spi = tonumber(v[8]),
    min_size = tonumber(v[9]), min_diff = tonumber(v[10]), max_diff = tonumber(v[11]),
    dedup_ttl = tonumber(v[12]), skip_zero_signal = (v[13] == '1'),
  }
  return nil
end

local function leaf_value(p)
  if cfg.selector ~= 'prioritized' then return 1 end
  if p <= 0 then return 0 end  -- zero learning signal: never drawn, whatever alpha is
  return p ^ cfg.alpha
end

local function tree_total()
  return tonumber(redis.call('HGET', K_TREE, 1)) or 0
end

-- Set leaves (slot -> value) and recompute their ancestors from their children (no drift from
-- deltas): one HMGET of the siblings off the changed paths and one HSET of the paths (in chunks
-- past a few thousand nodes), whatever the number of leaves (a Lua call costs about as much as the
-- work it does here).
local function tree_set_leaves(leaves)
  local levels, value, on_path = {{}}, {}, {}
  for slot, leaf in pairs(leaves) do
    local node = cfg.base + slot
    levels[1][#levels[1] + 1], value[node], on_path[node] = node, leaf, true
  end
  if #levels[1] == 0 then return end
  while levels[#levels][1] > 1 do  -- the tree is complete: every leaf is at the same depth
    local parents = {}
    for _, node in ipairs(levels[#levels]) do
      local parent = math.floor(node / 2)
      if not on_path[parent] then parents[#parents + 1], on_path[parent] = parent, true end
    end
    levels[#levels + 1] = parents
  end
  local reads = {}
  for level = 1, #levels - 1 do
    for _, node in ipairs(levels[level]) do
      local sibling = node + 1 - 2 * (node % 2)  -- node xor 1
      if not on_path[sibling] then reads[#reads + 1] = sibling end
    end
  end
  if #reads > 0 then
    local sums = hmget_all(K_TREE, reads)
    for i, node in ipairs(reads) do value[node] = tonumber(sums[i]) or 0 end
  end
  local writes = {}
  for level = 1, #levels do
    for _, node in ipairs(levels[level]) do
      if level > 1 then value[node] = value[2 * node] + value[2 * node + 1] end
      writes[#writes + 1], writes[#writes + 2] = node, fmt(value[node])
    end
  end
  hset_all(K_TREE, writes)
end

-- For each u in us (each in [0, total)): the leaf slot whose cumulative range holds it, and its
-- value. All descents go down together, one HMGET per level that reads only the left children: a
-- right child's sum is its parent's minus the left one's (every value crosses Lua's boundary as a
-- string, which costs more than the rest of the descent). The leaves are read both, exactly.
local function tree_find_many(us, total)
  local nodes, values = {}, {}
  for i = 1, #us do nodes[i], values[i] = 1, total end
  while #us > 0 and nodes[1] < cfg.base do  -- the tree is complete: every descent is at the same depth
    local leaves_next = 2 * nodes[1] >= cfg.base
    local fields = {}
    for i = 1, #us do
      fields[#fields + 1] = 2 * nodes[i]
      if leaves_next then fields[#fields + 1] = 2 * nodes[i] + 1 end
    end
    local sums = hmget_all(K_TREE, fields)
    for i = 1, #us do
      local left, right
      if leaves_next then
        left, right = tonumber(sums[2 * i - 1]) or 0, tonumber(sums[2 * i]) or 0
      else
        left = tonumber(sums[i]) or 0
        right = values[i] - left
        -- An empty subtree computes as 0 or a rounding residue (at most a few ulps of the total, summed
        -- over the levels above): never descend into one. Mass below 1e-12 of the total is never drawn.
        if right <= total * 1e-12 then right = 0 end
      end
      if (us[i] < left and left > 0) or right <= 0 then
        nodes[i], values[i] = 2 * nodes[i], left
      else
        us[i] = us[i] - left
        nodes[i], values[i] = 2 * nodes[i] + 1, right
      end
    end
  end
  for i = 1, #us do nodes[i] = nodes[i] - cfg.base end
  return nodes, values
end

-- What a script changes in the sum tree's leaves and in counters (hash -> field -> increment),
-- written by commit(): a Lua call to Redis costs about as much as the work it does, so a script
-- that stores or removes many groups writes each changed tree path and each counter once.
local function pending()
  return {leaves = {}, counts = {}}
end

local function count(changes, key, field)
  local fields = changes.counts[key]
  if not fields then
    fields = {}
    changes.counts[key] = fields
  end
  fields[field] = (fields[field] or 0) + 1
end

-- Writes `changes` and empties it (a script may commit again after more changes).
local function commit(changes)
  tree_set_leaves(changes.leaves)
  for key, fields in pairs(changes.counts) do
    for field, n in pairs(fields) do redis.call('HINCRBY', key, field, n) end
  end
  changes.leaves, changes.counts = {}, {}
end

-- The consumption ledger: every acknowledged group is counted once as acked, and once more under
-- the reason it left (left_<reason>); until then it is buffered. acked = left + buffered.
local function ledger_acked(gid, changes)
  count(changes, K_LEDGER, 'acked')
  redis.call('HSET', k_ledger(gid), 't', 0)
  redis.call('EXPIRE', k_ledger(gid), LEDGER_TTL_S)
end

local function ledger_left(gid, reason, changes)
  count(changes, K_LEDGER, 'left_' .. reason)
  redis.call('HSET', k_ledger(gid), 'out', reason)
end

-- Removes a stored group (its leaf set to 0 and its counts in `changes`). Returns false for a
-- group id with no metadata, after dropping it from the indexes: an index entry without a group
-- must not stay first in line for eviction forever.
local function remove_item(gid, reason, changes)
  local meta = k_meta(gid)
  local slot = redis.call('HGET', meta, 'slot')
  if slot then
    changes.leaves[tonumber(slot)] = 0
    redis.call('HDEL', K_SLOTS, slot)
    redis.call('RPUSH', K_FREE, slot)  -- at once: a slot lost by a failed script would never come back
  end
  redis.call('DEL', meta, k_payload(gid))
  redis.call('ZREM', K_FIFO, gid)
  if cfg.by_priority then redis.call('ZREM', K_BYPRIO, gid) end
  redis.call('ZREM', K_BYVER, gid)
  if not slot then return false end
  count(changes, K_STATS, 'deletes')
  count(changes, K_STATS, 'evicted_' .. reason)
  ledger_left(gid, reason, changes)
  return true
end

-- Groups whose oldest token is more than max_staleness versions behind the learner.
local function evict_stale(learner_version)
  local cutoff = learner_version - cfg.max_staleness
  local victims = redis.call('ZRANGEBYSCORE', K_BYVER, '-inf', '(' .. cutoff)
  local changes = pending()
  for _, gid in ipairs(victims) do remove_item(gid, 'stale', changes) end
  commit(changes)
  return #victims
end

local function limiter_state()
  local c = redis.call('HMGET', K_STATS, 'inserts', 'samples')
  return {inserts = tonumber(c[1]) or 0, samples = tonumber(c[2]) or 0, size = redis.call('ZCARD', K_FIFO)}
end

local function limiter_reply(status, st)
  return {status, st.inserts, st.samples, st.size}
end
