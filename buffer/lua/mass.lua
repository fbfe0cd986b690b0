-- ARGV: ns, learner version. Evicts stale groups, then returns {size, mass}: what the client
-- needs to split a sample across shards in proportion to their total priority.
local err = load_config()
if err then return err end
evict_stale(tonumber(ARGV[2]))
return {redis.call('ZCARD', K_FIFO), fmt(tree_total())}
