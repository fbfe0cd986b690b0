-- ARGV: ns, learner version, then (group id, new priority) pairs: the learner trained on these
-- groups with the weights of that version. Each is recorded in the ledger (times trained and the
-- versions), whether or not it is still stored; the priorities of those still stored are updated.
-- Returns the number of priorities applied.
local err = load_config()
if err then return err end
local version = ARGV[2]
local applied, changes = 0, pending()
for i = 3, #ARGV, 2 do
  local gid, priority = ARGV[i], tonumber(ARGV[i + 1])
  local entry = k_ledger(gid)
  if redis.call('EXISTS', entry) == 1 then
    if redis.call('HINCRBY', entry, 't', 1) == 1 then redis.call('HINCRBY', K_LEDGER, 'trained_groups', 1) end
    redis.call('HSET', entry, 'v', (redis.call('HGET', entry, 'v') or '') .. version .. ' ')
    redis.call('HINCRBY', K_LEDGER, 'trained_uses', 1)
  end
  local slot = redis.call('HGET', k_meta(gid), 'slot')
  if slot then
    redis.call('HSET', k_meta(gid), 'p', fmt(priority))
    if cfg.by_priority then redis.call('ZADD', K_BYPRIO, fmt(priority), gid) end
    changes.leaves[tonumber(slot)] = leaf_value(priority)
    applied = applied + 1
  end
end
commit(changes)
return applied
