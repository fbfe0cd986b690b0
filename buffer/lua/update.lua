-- ARGV: ns, then (group id, priority) pairs. Unknown ids (already evicted) are ignored.
-- Returns the number of priorities applied.
local err = load_config()
if err then return err end
local applied = 0
for i = 2, #ARGV, 2 do
  local gid, priority = ARGV[i], tonumber(ARGV[i + 1])
  local slot = redis.call('HGET', k_meta(gid), 'slot')
  if slot then
    redis.call('HSET', k_meta(gid), 'p', fmt(priority))
    redis.call('ZADD', K_BYPRIO, fmt(priority), gid)
    tree_set_leaf(tonumber(slot), leaf_value(priority))
    applied = applied + 1
  end
end
return applied
