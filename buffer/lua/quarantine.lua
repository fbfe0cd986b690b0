-- ARGV: ns, group id, the payload that failed to decode (empty: the payload was missing), quarantine ttl (s).
-- Drops the group from sampling, keeps the bad bytes for inspection and counts it, once: nothing
-- is kept or counted for a group no longer stored (evicted since the draw, or already
-- quarantined by another reader). Returns 1 if this call removed it, else 0.
local err = load_config()
if err then return err end
local gid = ARGV[2]
local changes = pending()
local removed = remove_item(gid, 'quarantined', changes)
if removed then
  redis.call('SET', ns .. ':q:' .. gid, ARGV[3], 'EX', ARGV[4])
  redis.call('LPUSH', K_QUARANTINE, gid)
  redis.call('LTRIM', K_QUARANTINE, 0, 999)
  count(changes, K_STATS, 'quarantined')
end
commit(changes)
return removed and 1 or 0
