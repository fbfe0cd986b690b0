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
local K_BYPRIO = ns .. ':byprio'  -- group id by priority (lowest_priority remover)
local K_BYVER = ns .. ':byver'    -- group id by oldest policy version (staleness counts a group's oldest token)
local K_QUARANTINE = ns .. ':quarantine'
local K_LEDGER = ns .. ':ledger'  -- acked, left_<reason>, trained_groups, trained_uses
local LEDGER_TTL_S = 7 * 86400    -- per-group ledger entries outlive the run's audit by days, not forever

local function k_meta(gid) return ns .. ':m:' .. gid end
local function k_payload(gid) return ns .. ':p:' .. gid end
local function k_seen(gid) return ns .. ':seen:' .. gid end
local function k_ledger(gid) return ns .. ':l:' .. gid end  -- t (times trained), v (versions), out (why it left)
local function fmt(x) return string.format('%.17g', x) end

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

-- Set a leaf and recompute its ancestors from their children (no drift from deltas):
-- one HMGET of the siblings along the path and one HSET of the path, not two calls per level.
local function tree_set_leaf(slot, value)
  local node = cfg.base + slot
  local siblings = {}
  while node > 1 do
    siblings[#siblings + 1] = node + 1 - 2 * (node % 2)  -- node's sibling: node xor 1
    node = math.floor(node / 2)
  end
  local sums = (#siblings > 0) and redis.call('HMGET', K_TREE, unpack(siblings)) or {}
  node = cfg.base + slot
  local path = {node, fmt(value)}
  for level = 1, #siblings do
    value = value + (tonumber(sums[level]) or 0)
    node = math.floor(node / 2)
    path[#path + 1] = node
    path[#path + 1] = fmt(value)
  end
  redis.call('HSET', K_TREE, unpack(path))
end

-- For each u in us (each in [0, total)): the leaf slot whose cumulative range holds it, and its
-- value. All descents go down together, one HMGET per level (not one per level and draw).
local function tree_find_many(us, total)
  local nodes, values = {}, {}
  for i = 1, #us do nodes[i], values[i] = 1, total end
  while #us > 0 and nodes[1] < cfg.base do  -- the tree is complete: every descent is at the same depth
    local children = {}
    for i = 1, #us do children[2 * i - 1], children[2 * i] = 2 * nodes[i], 2 * nodes[i] + 1 end
    local kids = redis.call('HMGET', K_TREE, unpack(children))
    for i = 1, #us do
      local left, right = tonumber(kids[2 * i - 1]) or 0, tonumber(kids[2 * i]) or 0
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

-- The consumption ledger: every acknowledged group is counted once as acked, and once more under
-- the reason it left (left_<reason>); until then it is buffered. acked = left + buffered.
local function ledger_acked(gid)
  redis.call('HINCRBY', K_LEDGER, 'acked', 1)
  redis.call('HSET', k_ledger(gid), 't', 0)
  redis.call('EXPIRE', k_ledger(gid), LEDGER_TTL_S)
end

local function ledger_left(gid, reason)
  redis.call('HINCRBY', K_LEDGER, 'left_' .. reason, 1)
  redis.call('HSET', k_ledger(gid), 'out', reason)
end

local function remove_item(gid, reason)
  local meta = k_meta(gid)
  local slot = redis.call('HGET', meta, 'slot')
  if not slot then return false end
  tree_set_leaf(tonumber(slot), 0)
  redis.call('HDEL', K_SLOTS, slot)
  redis.call('RPUSH', K_FREE, slot)
  redis.call('DEL', meta, k_payload(gid))
  redis.call('ZREM', K_FIFO, gid)
  redis.call('ZREM', K_BYPRIO, gid)
  redis.call('ZREM', K_BYVER, gid)
  redis.call('HINCRBY', K_STATS, 'deletes', 1)
  redis.call('HINCRBY', K_STATS, 'evicted_' .. reason, 1)
  ledger_left(gid, reason)
  return true
end

-- Groups whose oldest token is more than max_staleness versions behind the learner.
local function evict_stale(learner_version)
  local cutoff = learner_version - cfg.max_staleness
  local victims = redis.call('ZRANGEBYSCORE', K_BYVER, '-inf', '(' .. cutoff)
  for _, gid in ipairs(victims) do remove_item(gid, 'stale') end
  return #victims
end

local function limiter_state()
  local c = redis.call('HMGET', K_STATS, 'inserts', 'samples')
  return {inserts = tonumber(c[1]) or 0, samples = tonumber(c[2]) or 0, size = redis.call('ZCARD', K_FIFO)}
end

local function limiter_reply(status, st)
  return {status, st.inserts, st.samples, st.size}
end
