-- ARGV: ns, group id, the payload that failed to decode, quarantine ttl (s).
-- Keeps the bad bytes for inspection, drops the group from sampling, counts it.
local err = load_config()
if err then return err end
local gid = ARGV[2]
redis.call('SET', ns .. ':q:' .. gid, ARGV[3], 'EX', ARGV[4])
redis.call('LPUSH', K_QUARANTINE, gid)
redis.call('LTRIM', K_QUARANTINE, 0, 999)
local changes = pending()
remove_item(gid, 'quarantined', changes)
count(changes, K_STATS, 'quarantined')
commit(changes)
return 1
