-- ARGV: ns, then five per group: group id, staging key, priority, oldest and newest policy version.
-- The client SETs each payload at its staging key (unique per attempt, with a TTL) in the same
-- pipeline just before: passing 100 KB through Lua's ARGV costs more than all the rest of this script.
-- The groups are taken in order, each as if it were inserted alone, in one script: a Lua call to
-- Redis costs about as much as the work it does, so the limiter's counters and the sum tree are
-- read and written once per batch, not once per group, and so are the counters (`commit`).
-- Stored: the staging key is renamed to the payload key. Not stored: it is deleted.
-- Returns one reply per group, {status, ...}: ok (evicted count) | dup | skip (zero signal) | stale |
-- rewound | blocked (limiter state). Every status but dup and blocked acknowledges the group in the ledger.
local err = load_config()
if err then return err end
local groups = (#ARGV - 1) / 5
local function field(i, k) return ARGV[1 + 5 * (i - 1) + k] end

local stages = {}
for i = 1, groups do stages[i] = field(i, 2) end
if redis.call('EXISTS', unpack(stages)) < groups then  -- checked before anything is written
  for _, stage in ipairs(stages) do
    if redis.call('EXISTS', stage) == 0 then return redis.error_reply('staged payload ' .. stage .. ' is missing') end
  end
end

local learner_version = tonumber(redis.call('HGET', K_STATS, 'learner_version'))
local st = limiter_state()  -- st.size is kept up to date below, not read again per group
local changes, stored = pending(), 0

local function acked_not_stored(gid, stage, counter, reason, reply)
  count(changes, K_STATS, counter)
  ledger_acked(gid, changes)
  ledger_left(gid, reason, changes)
  redis.call('SET', k_seen(gid), 1, 'EX', cfg.dedup_ttl)
  redis.call('DEL', stage)
  return reply
end

local function insert_one(gid, stage, priority, oldest, newest)
  if redis.call('EXISTS', k_seen(gid)) == 1 then
    redis.call('DEL', stage)
    return {'dup'}
  end
  if learner_version and newest > learner_version then
    -- made by weights newer than the learner's: a timeline lost to a restore from a checkpoint
    return acked_not_stored(gid, stage, 'evicted_rewound', 'rewound', {'rewound'})
  end
  -- A zero-signal group teaches nothing: whether the selector stores it is its registry entry's
  -- `stores_zero_signal` (buffer/selectors.py), carried here by the table's settings.
  if cfg.skip_zero_signal and priority <= 0 then
    return acked_not_stored(gid, stage, 'zero_signal_skips', 'zero_signal', {'skip'})
  end
  if learner_version and oldest < learner_version - cfg.max_staleness then
    return acked_not_stored(gid, stage, 'evicted_stale', 'stale', {'stale'})
  end
  if not (st.size + 1 <= cfg.min_size or (st.inserts + 1) * cfg.spi - st.samples <= cfg.max_diff) then
    redis.call('DEL', stage)
    return limiter_reply('blocked', st)
  end

  local evicted = 0
  while st.size >= cfg.capacity do
    local victim = redis.call('ZRANGE', cfg.order_key, 0, 0)[1]
    if victim and remove_item(victim, 'capacity', changes) then
      st.size, evicted = st.size - 1, evicted + 1
    else  -- an index entry without its group (remove_item dropped it), or no entry: count again
      st.size = redis.call('ZCARD', K_FIFO)
      if not victim then break end
    end
  end
  -- a slot and a sequence number are counted out at once: a script that fails later must not hand them out again
  local slot = redis.call('LPOP', K_FREE)
  if not slot then slot = redis.call('HINCRBY', K_STATS, 'next_slot', 1) - 1 end
  local seq = redis.call('HINCRBY', K_STATS, 'seq', 1)
  st.inserts, st.size, stored = st.inserts + 1, st.size + 1, stored + 1

  redis.call('RENAME', stage, k_payload(gid))
  redis.call('PERSIST', k_payload(gid))
  redis.call('HSET', k_meta(gid), 'p', fmt(priority), 'slot', slot, 't', 0, 'v', oldest, 'vmax', newest, 'seq', seq)
  redis.call('HSET', K_SLOTS, slot, gid)
  redis.call('ZADD', K_FIFO, seq, gid)
  if cfg.by_priority then redis.call('ZADD', K_BYPRIO, fmt(priority), gid) end
  redis.call('ZADD', K_BYVER, oldest, gid)
  changes.leaves[tonumber(slot)] = leaf_value(priority)
  redis.call('SET', k_seen(gid), 1, 'EX', cfg.dedup_ttl)
  ledger_acked(gid, changes)
  return {'ok', evicted}
end

local replies = {}
for i = 1, groups do
  replies[i] = insert_one(field(i, 1), field(i, 2), tonumber(field(i, 3)), tonumber(field(i, 4)), tonumber(field(i, 5)))
end
commit(changes)
if stored > 0 then redis.call('HINCRBY', K_STATS, 'inserts', stored) end
return replies
