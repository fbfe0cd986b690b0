-- ARGV: ns, learner version (-1: the latest one a sample call reported).
-- Returns {counters (flat field/value list), size, mass, learner version, staleness histogram,
-- ledger counters (flat field/value list)}
-- where histogram[a + 1] counts groups a versions behind (a = 0..max_staleness) and the last
-- entry those beyond the bound that no sample call has evicted yet.
local err = load_config()
if err then return err end
local lv = tonumber(ARGV[2])
if lv < 0 then lv = tonumber(redis.call('HGET', K_STATS, 'learner_version')) or 0 end
local histogram = {redis.call('ZCOUNT', K_BYVER, lv, '+inf')}
for age = 1, cfg.max_staleness do
  histogram[#histogram + 1] = redis.call('ZCOUNT', K_BYVER, lv - age, lv - age)
end
histogram[#histogram + 1] = redis.call('ZCOUNT', K_BYVER, '-inf', '(' .. (lv - cfg.max_staleness))
return {redis.call('HGETALL', K_STATS), redis.call('ZCARD', K_FIFO), fmt(tree_total()), lv, histogram,
  redis.call('HGETALL', K_LEDGER)}
