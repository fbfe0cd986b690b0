-- ARGV: ns, group id, staging key, priority, oldest policy version, newest policy version.
-- The client SETs the payload at the staging key (unique per attempt, with a TTL) in the same
-- pipeline just before: passing 100 KB through Lua's ARGV costs more than all the rest of this script.
-- Stored: the staging key is renamed to the payload key. Not stored: it is deleted.
-- Returns {status, ...}: ok (evicted count) | dup | skip (zero signal) | stale | rewound | blocked
-- (limiter state). Every status but dup and blocked acknowledges the group in the ledger.
local err = load_config()
if err then return err end
local gid, stage, priority = ARGV[2], ARGV[3], tonumber(ARGV[4])
local oldest, newest = tonumber(ARGV[5]), tonumber(ARGV[6])
local function reject(reply)
  redis.call('DEL', stage)
  return reply
end
local function acked_not_stored(reason, reply)
  ledger_acked(gid)
  ledger_left(gid, reason)
  redis.call('SET', k_seen(gid), 1, 'EX', cfg.dedup_ttl)
  return reject(reply)
end

if redis.call('EXISTS', stage) == 0 then return redis.error_reply('staged payload ' .. stage .. ' is missing') end
if redis.call('EXISTS', k_seen(gid)) == 1 then return reject({'dup'}) end
local learner_version = tonumber(redis.call('HGET', K_STATS, 'learner_version'))
if learner_version and newest > learner_version then
  -- made by weights newer than the learner's: a timeline lost to a restore from a checkpoint
  redis.call('HINCRBY', K_STATS, 'evicted_rewound', 1)
  return acked_not_stored('rewound', {'rewound'})
end
-- A zero-signal group teaches nothing: whether the selector stores it is its registry entry's
-- `stores_zero_signal` (buffer/selectors.py), carried here by the table's settings.
if cfg.skip_zero_signal and priority <= 0 then
  redis.call('HINCRBY', K_STATS, 'zero_signal_skips', 1)
  return acked_not_stored('zero_signal', {'skip'})
end
if learner_version and oldest < learner_version - cfg.max_staleness then
  redis.call('HINCRBY', K_STATS, 'evicted_stale', 1)
  return acked_not_stored('stale', {'stale'})
end
local st = limiter_state()
if not (st.size + 1 <= cfg.min_size or (st.inserts + 1) * cfg.spi - st.samples <= cfg.max_diff) then
  return reject(limiter_reply('blocked', st))
end

local evicted = 0
while redis.call('ZCARD', K_FIFO) >= cfg.capacity do
  remove_item(redis.call('ZRANGE', cfg.order_key, 0, 0)[1], 'capacity')
  evicted = evicted + 1
end
local slot = redis.call('LPOP', K_FREE)
if not slot then slot = redis.call('HINCRBY', K_STATS, 'next_slot', 1) - 1 end
local seq = redis.call('HINCRBY', K_STATS, 'seq', 1)

redis.call('RENAME', stage, k_payload(gid))
redis.call('PERSIST', k_payload(gid))
redis.call('HSET', k_meta(gid), 'p', fmt(priority), 'slot', slot, 't', 0, 'v', oldest, 'vmax', newest, 'seq', seq)
redis.call('HSET', K_SLOTS, slot, gid)
redis.call('ZADD', K_FIFO, seq, gid)
redis.call('ZADD', K_BYPRIO, fmt(priority), gid)
redis.call('ZADD', K_BYVER, oldest, gid)
tree_set_leaf(tonumber(slot), leaf_value(priority))
redis.call('SET', k_seen(gid), 1, 'EX', cfg.dedup_ttl)
redis.call('HINCRBY', K_STATS, 'inserts', 1)
ledger_acked(gid)
return {'ok', evicted}
